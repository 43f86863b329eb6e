"""Data parallelism: each rank trains on its slice of every batch; all end with the same weights.

Every rank shuffles the whole dataset with the same seed (loom.train's shuffle is a pure function of
the seed and the epoch) and takes a contiguous slice of each batch: with B samples over R ranks, the
first B mod R ranks get one more. The step runs inside loom.kernels.batch_split's split, which makes
every reduction over the batch (ops.grad_*, ops.sum_over_batch) the global batch's:

- deterministic mode: each parameter-gradient product, bias sum, norm statistic and loss total is
  all-reduced inside the backward as exact integers at a scale the ranks agree on (an all-reduce max
  first), then rounded once: the bits one device computes for the whole batch (docs/distributed.md);
- fast mode: the gradients are rank-local sums (the loss divides by the global batch), all-reduced
  as floats in buckets of about 25 MB that the gradient arrays live in (PyTorch DDP's
  gradient_as_bucket_view), so the all-reduce copies nothing. A bucket's all-reduce starts as soon
  as the backward has finished every layer it holds (the network's top-level layers, last first)
  and runs on the communicator's own stream while the backward goes on; the optimizer waits for all
  of them. Batch-norm statistics are all-reduced as the forward computes them (synchronized batch
  norm).

The optimizer then makes the same update on every rank. Checkpoints are written by rank 0 only
(loom.train); every rank can resume from one, on any number of ranks.
"""
from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager
from typing import Any

import numpy as np

from .. import backend, batch_invariance, mode
from ..errors import ConfigError, DistributedError
from ..kernels import batch_split

BUCKET_BYTES = 25 << 20         # PyTorch DDP's default bucket_cap_mb


class DataParallel:
    """loom.nn.train.Parallel for one rank of a group (loom.distributed.init())."""

    def __init__(self, group: Any, bucket_bytes: int = BUCKET_BYTES):
        self.group = group
        self.collective = group.collective
        self.rank, self.size = group.rank, group.size
        self.bucket_bytes = int(bucket_bytes)
        self.buckets: _Buckets | None = None
        self.backend = None
        self.net = None

    def start(self, net: Any, fingerprint: bytes) -> None:
        """Check that every rank trains the same network, settings, data and epoch; in fast mode,
        move the gradients into the all-reduce buckets."""
        self.backend = net.backend
        self.group.begin()                  # the watchdog times the start-up's collective too
        problem = None
        try:
            if net.device != self.group.device:
                raise ConfigError("device", f"rank {self.rank}'s network is on {net.device!r}, but the world "
                                            f"communicates on {self.group.device!r}; move it there (net.to)")
            if mode.is_deterministic() and np.dtype(net.config["dtype"]) == np.float64:
                raise ConfigError("dtype", "deterministic data-parallel training needs float32 parameters: float64 "
                                           "gradients have no exact split across ranks; use float32 or fast mode")
            _check_layers(net)
        except ConfigError as exc:          # raised after the collective, so no rank waits for this one
            problem = exc
        xp = self.backend.xp
        words = np.frombuffer(fingerprint[:32].ljust(32, b"\0"), dtype=np.int64)
        table = np.zeros((self.size, words.size + 1), dtype=np.int64)
        table[self.rank, :-1] = words
        table[self.rank, -1] = problem is not None
        world = backend.get(self.group.device)         # the collective's device, whatever net's
        device_table = world.asarray(table)
        self.collective.all_reduce(device_table, "sum")          # an all-gather: the other rows are zeros
        table = world.to_numpy(device_table)
        if problem is not None:
            raise problem
        refused = [r for r in range(self.size) if table[r, -1]]
        if refused:
            raise DistributedError(f"rank(s) {', '.join(map(str, refused))} refused to start (their own errors say "
                                   "why)")
        differ = [r for r in range(self.size) if not np.array_equal(table[r, :-1], table[0, :-1])]
        if differ:
            raise DistributedError(f"rank(s) {', '.join(map(str, differ))} train something other than rank 0 does "
                                   "(another config, weights, settings, data or resume epoch): every rank must "
                                   "start from the same state")
        if not mode.is_deterministic():
            self.net = net
            self.buckets = _Buckets(net, xp, self.bucket_bytes, self.collective)
            net.root.child_done = self.buckets.child_done

    def finish(self) -> None:
        """Training ended on this rank (or failed): the watchdog stops timing."""
        self.group.idle()
        if self.net is not None:
            self.net.root.child_done = None

    def batch(self, idx: np.ndarray) -> tuple[np.ndarray, AbstractContextManager]:
        start, stop = shard(len(idx), self.rank, self.size)
        context = batch_split.split(self.collective, stop - start, len(idx), start)
        if self.buckets is not None:
            self.buckets.reset()
        return idx[start:stop], _timed(self.group, context)

    def reduce_gradients(self, grads: dict) -> None:
        """Fast mode: finish summing every rank's gradients (deterministic mode's are global
        already)."""
        if mode.is_deterministic():
            return
        if self.buckets is None:
            raise DistributedError("reduce_gradients() before start(): the gradients have no buckets")
        self.buckets.finish(grads)

    def gather(self, local: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """Every rank's rows of a per-sample host array, in the batch's order (metrics need them):
        an all-reduce sum of zero-padded rows."""
        start, stop = shard(len(idx), self.rank, self.size)
        full = np.zeros((len(idx),) + local.shape[1:], dtype=local.dtype)
        full[start:stop] = local
        device = self.backend.asarray(full)
        self.collective.all_reduce(device, "sum")
        return self.backend.to_numpy(device)

    def all_max(self, values: np.ndarray) -> np.ndarray:
        """The elementwise maximum over the ranks of a small float64 host array (an epoch's seconds,
        a callback's request to stop)."""
        device = backend.get(self.group.device).asarray(np.asarray(values, dtype=np.float64))
        self.collective.all_reduce(device, "max")
        return backend.get(self.group.device).to_numpy(device)


def shard(n: int, rank: int, size: int) -> tuple[int, int]:
    """[start, stop) of rank's slice of n samples over size ranks: contiguous, the first n mod size
    ranks one longer."""
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


@contextlib.contextmanager
def _timed(group, context):
    """The step's split, with the group's watchdog timing it."""
    group.begin()
    with context:
        yield
    group.end()


def _check_layers(net) -> None:
    """Layers that define a sample's output from other samples (batch_invariance.mixes_rows) would
    see only this rank's samples: they cannot train split."""
    if batch_invariance.mixes_rows(net.config["layers"]):
        raise ConfigError("layers", "a layer mixes the rows of a batch (openfluke_softmax normalize 'batch', "
                                    "openfluke_attention): split across ranks it would see only its rank's samples; "
                                    "train it on one device")


class _Buckets:
    """Fast mode's gradient buckets: flat arrays the gradients are views of (parameters in reverse
    order, as the backward produces them; one dtype per bucket), each all-reduced once the backward
    has finished the top-level layers holding its gradients. NCCL needs every rank to start the same
    collectives in the same order: buckets start in index order only, and the backward finishes
    layers in the same order on every rank."""

    def __init__(self, net, xp, bucket_bytes: int, collective):
        self.net = net
        self.start_one = getattr(collective, "all_reduce_async", collective.all_reduce)
        self.join = getattr(collective, "join", lambda: None)
        owner = {}          # id(layer) -> the top-level layer holding it
        for child in net.root.children.values():
            for _, layer in child.walk():
                owner[id(layer)] = child
        entries = [(layer, name, g) for _, layer in net.root.walk() for name, g in layer.grads.items()]
        groups, current, size, dtype = [], [], 0, None
        for entry in reversed(entries):
            g = entry[2]
            if current and (g.dtype != dtype or size + g.nbytes > bucket_bytes):
                groups.append(current)
                current, size = [], 0
            current.append(entry)
            size += g.nbytes
            dtype = g.dtype
        if current:
            groups.append(current)
        self.flats, self.holders = [], []       # holders[i]: ids of the top-level layers bucket i waits on
        for members in groups:
            flat = xp.empty(sum(g.size for _, _, g in members), dtype=members[0][2].dtype)
            offset = 0
            for layer, name, g in members:
                view = flat[offset:offset + g.size].reshape(g.shape)
                view[...] = g
                layer.grads[name] = view
                offset += g.size
            self.flats.append(flat)
            self.holders.append({id(owner.get(id(layer), layer)) for layer, _, _ in members})
        self.reset()

    def reset(self) -> None:
        """A new step: no layer finished, no bucket started."""
        self.done: set[int] = set()
        self.started = 0

    def child_done(self, child) -> None:
        """The backward finished top-level layer `child`: start every bucket now complete, in order."""
        for _, layer in child.walk():
            layer.settle_grads()        # gradients pending a clear are zeros: write them before sending
        self.done.add(id(child))
        while self.started < len(self.flats) and self.holders[self.started] <= self.done:
            self.start_one(self.flats[self.started], "sum")
            self.started += 1

    def finish(self, grads: dict) -> None:
        """After the backward: start the buckets still waiting (layers the backward skipped hold no
        new gradient, but a bucket may share them), then wait for all."""
        self.net.settle_grads()
        while self.started < len(self.flats):
            self.start_one(self.flats[self.started], "sum")
            self.started += 1
        self.join()
        self.reset()

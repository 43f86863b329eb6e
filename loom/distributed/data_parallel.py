"""Data parallelism: each rank trains on its slice of every batch; all end with the same weights.

Every rank shuffles the whole dataset with the same seed (loom.train's shuffle is a pure function of
the seed and the epoch) and takes a contiguous slice of each batch: with B samples over R ranks, the
first B mod R ranks get one more. The step runs inside loom.kernels.batch_split's split, which makes
every reduction over the batch (ops.grad_*, ops.sum_over_batch) the global batch's:

- deterministic mode: each parameter-gradient product, bias sum, norm statistic and loss total is
  all-reduced inside the backward as exact integers at a scale the ranks agree on (an all-reduce max
  first), then rounded once: the bits one device computes for the whole batch (docs/distributed.md);
- fast mode: the gradients are rank-local sums (the loss divides by the global batch), all-reduced
  as floats after the backward, in buckets of about 25 MB that the gradient arrays live in (PyTorch
  DDP's gradient_as_bucket_view), so the all-reduce copies nothing; batch-norm statistics are
  all-reduced as the forward computes them (synchronized batch norm).

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
        self.buckets: list[Any] = []
        self.backend = None

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
        self.buckets = [] if mode.is_deterministic() else _bucket_gradients(net, xp, self.bucket_bytes)

    def finish(self) -> None:
        """Training ended on this rank (or failed): the watchdog stops timing."""
        self.group.idle()

    def batch(self, idx: np.ndarray) -> tuple[np.ndarray, AbstractContextManager]:
        start, stop = shard(len(idx), self.rank, self.size)
        context = batch_split.split(self.collective, stop - start, len(idx), start)
        return idx[start:stop], _timed(self.group, context)

    def reduce_gradients(self, grads: dict) -> None:
        """Fast mode: sum every rank's gradients (deterministic mode's are global already)."""
        if mode.is_deterministic():
            return
        if self.buckets:
            for flat in self.buckets:
                self.collective.all_reduce(flat, "sum")
            return
        for g in grads.values():        # no buckets (gradients created after start): one by one
            self.collective.all_reduce(g, "sum")

    def gather(self, local: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """Every rank's rows of a per-sample host array, in the batch's order (metrics need them):
        an all-reduce sum of zero-padded rows."""
        start, stop = shard(len(idx), self.rank, self.size)
        full = np.zeros((len(idx),) + local.shape[1:], dtype=local.dtype)
        full[start:stop] = local
        device = self.backend.asarray(full)
        self.collective.all_reduce(device, "sum")
        return self.backend.to_numpy(device)


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


def _bucket_gradients(net, xp, bucket_bytes: int) -> list:
    """Move each gradient array into a flat bucket (parameters in reverse order, as backward
    produces them; one dtype per bucket) and make the layer's gradient a view of it."""
    entries = []
    for _, layer in net.root.walk():
        for name, g in layer.grads.items():
            entries.append((layer, name, g))
    buckets, current, size, dtype = [], [], 0, None
    for entry in reversed(entries):
        g = entry[2]
        if current and (g.dtype != dtype or size + g.nbytes > bucket_bytes):
            buckets.append(current)
            current, size = [], 0
        current.append(entry)
        size += g.nbytes
        dtype = g.dtype
    if current:
        buckets.append(current)
    flats = []
    for members in buckets:
        flat = xp.empty(sum(g.size for _, _, g in members), dtype=members[0][2].dtype)
        offset = 0
        for layer, name, g in members:
            view = flat[offset:offset + g.size].reshape(g.shape)
            view[...] = g
            layer.grads[name] = view
            offset += g.size
        flats.append(flat)
    return flats

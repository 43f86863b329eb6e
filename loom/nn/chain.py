"""Dispatch chains: a whole train step (or an inference forward) recorded once as a CUDA graph and
replayed with one launch per step.

A chain is keyed by everything that changes the device work of a step: the input and target shapes
and dtypes, train/eval mode and the optimizer's phase (accumulation position, first update). The
first step with a new key runs eagerly (kernels compile, lazily created state appears); the second
records the step into a graph, with its own memory pool and static input buffers, and launches it;
later steps copy the batch into the static buffers, upload the step's host values (learning rates,
bias corrections, the RNG counter) and launch. The host-side counters (optimizer steps, the
network's rng_counter) advance exactly as the eager step advances them, so eager and replayed steps
can be mixed freely and give bit-identical results.

The chains of a step function live in one loom.backend.recorder.GraphCache, the recorder LLM decoding
uses too. When a step cannot be recorded (a layer that reads a device value on the host),
deterministic mode raises DeterminismError naming the step, its shapes and the reason: the caller
asked for a recorded chain ("strict by default", loom/fallback.py). With strict=False, or in fast
mode, that key runs eagerly from then on instead (the same bits, slower), the reason is kept in
`eager_reasons` and logged once on the "loom" logger. On the CPU every step is eager: there is
nothing to record, so nothing is refused.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .. import mixed_precision, mode, rng
from ..backend import Array
from ..backend.recorder import GraphCache
from ..errors import ShapeError
from ..kernels import batch_split, ops
from .built_network import BuiltNetwork

if TYPE_CHECKING:
    from .losses import Loss
    from .optim import Optimizer


class _Scalars:
    """Per-step host values that a recorded graph reads from device memory: one device vector per
    dtype, whose elements are handed to the step as 0-d views and refreshed before each launch."""

    def __init__(self, backend, values: list):
        self.backend = backend
        xp = backend.xp
        self.dtypes = sorted({d for d, _ in values}, key=str)
        self.index = []
        counts = dict.fromkeys(self.dtypes, 0)
        for d, _ in values:
            self.index.append((d, counts[d]))
            counts[d] += 1
        self.device = {d: xp.zeros(counts[d], dtype=d) for d in self.dtypes}
        self.last = None

    def views(self):
        return [self.device[d][i] for d, i in self.index]

    def upload(self, values: list) -> None:
        if values == self.last:
            return                                   # constant values (e.g. plain SGD): nothing to copy
        for d in self.dtypes:
            self.backend.copy_into(self.device[d], np.array([v for vd, v in values if vd == d], dtype=d))
        self.last = values


def _bind_plan(plan, views) -> dict:
    """The plan with its float entries replaced, in order, by device views."""
    it = iter(views)
    return {name: {k: next(it) if isinstance(v, float) else v for k, v in vals.items()}
            for name, vals in plan.items()}


def _shape(shape, dtype) -> str:
    return f"{list(shape)} {dtype}"


def _describe_train(key) -> str:
    return f"a train step on input {_shape(key[0], key[1])} and targets {_shape(key[2], key[3])}"


def _describe_forward(key) -> str:
    mask = "" if key[2] is None else f" with an attention mask {list(key[2])}"
    return f"a forward pass on input {_shape(key[0], key[1])}{mask}"


class TrainStep:
    """One training step — forward, loss, backward, optimizer update — as a dispatch chain:

        step = TrainStep(net, loss, opt)
        value = step(x, y)          # the loss as a 0-d device array (valid until the next call)

    x and y may be host (NumPy) or device arrays. `total` accumulates value * batch on the device
    (float64, the sum train() logs as the epoch loss); reset it with reset_total().
    strict: in deterministic mode a step that cannot be recorded raises DeterminismError; with
    strict=False it runs eagerly instead (the same bits, slower) and is logged once, as in fast mode.
    """

    def __init__(self, net: BuiltNetwork, loss: Loss, optimizer: Optimizer, cache_size: int = 4, strict: bool = True):
        self.net, self.loss, self.opt = net, loss, optimizer
        self.cache = GraphCache(cache_size, _describe_train, strict)
        self.grads = net.gradients()
        self.total = net.backend.xp.zeros((), dtype=np.float64)
        self.pred = None
        # a data-parallel world's gradient all-reduce, between backward and the update (fast mode's
        # buckets; deterministic mode reduces inside the gradient products: loom.distributed)
        self.reduce_gradients = None

    @property
    def eager_reasons(self) -> dict:
        return dict(self.cache.eager_reasons)

    def reset_total(self) -> None:
        self.total.fill(0)

    def __call__(self, x: Array, y: Array, checked: bool = True, eager: bool = False) -> Array:
        """Run one step on batch (x, y). checked=False skips the data checks (input ids, class-id
        targets) the caller has already made, e.g. once over a whole dataset. eager=True runs this
        step eagerly, neither recorded nor replayed (the same bits): what Telemetry's hooks need."""
        net = self.net
        net.check_spec(x)
        if len(y) != x.shape[0]:
            raise ShapeError(f"targets have {len(y)} rows but the batch has {x.shape[0]}")
        if checked:
            net.check_ids(x)
            self.loss.check_target(y, net.output_spec.shape[-1] if net.output_spec.shape else 1)
        if eager or not net.backend.graphs:
            return self._eager(x, y)
        split = batch_split.current()       # a rank's slice: its place in the batch is recorded too
        key = (tuple(x.shape), str(x.dtype), tuple(y.shape), str(y.dtype), net.training, self.opt.phase(),
               mode.name(), mixed_precision.current(), None if split is None else (split.total, split.offset))
        entry = self.cache.lookup(key, lambda: _RecordedStep(self, x, y))
        if entry is None:
            return self._eager(x, y)
        return entry.run(x, y)

    def _eager(self, x, y):
        net, B = self.net, self.net.backend
        xb, yb = B.asarray(x), B.asarray(y)
        pred = net.forward_unchecked(xb)
        value, grad = self.loss(pred, yb, checked=False)
        self._finish(pred, value, grad, None, x.shape[0])
        return value

    def _finish(self, pred, value, grad, plan, n) -> None:
        """Everything after the loss (shared by the eager and the recorded step)."""
        net = self.net
        net.zero_grad()
        net.backward(grad, input_grad=False)
        if self.reduce_gradients is not None:
            self.reduce_gradients(self.grads)
        self.opt.step(self.grads, scalars=plan)
        self.total += value.astype(np.float64) * ops.count_over_batch(n)   # value: the global batch's mean
        self.pred = pred


class _RecordedStep:
    """A train step recorded for one key: static buffers, scalar slots and the graph."""

    def __init__(self, owner: TrainStep, x, y):
        net, opt = owner.net, owner.opt
        B, xp = net.backend, net.backend.xp
        self.owner = owner
        self.x = xp.empty(x.shape, dtype=x.dtype)
        self.y = xp.empty(y.shape, dtype=y.dtype)
        plan = opt.plan()
        self.scalars = _Scalars(B, opt.plan_values(plan))
        bound = _bind_plan(plan, self.scalars.views())
        self.counter = xp.zeros(2, dtype=np.uint32) if net.training and net.uses_noise() else None
        n = x.shape[0]

        def body():
            pred = net.forward_unchecked(self.x, counter=self.counter)
            value, grad = owner.loss(pred, self.y, checked=False)
            owner._finish(pred, value, grad, bound, n)
            return pred, value
        with net.recording(), opt.recording():      # recording takes no step: the counters stay
            self.graph, (self.pred, self.value) = B.record(body)

    def run(self, x, y):
        owner, net, opt = self.owner, self.owner.net, self.owner.opt
        B = net.backend
        B.copy_into(self.x, x)
        B.copy_into(self.y, y)
        self.scalars.upload(opt.plan_values(opt.plan()))
        if self.counter is not None:
            B.copy_into(self.counter, rng.counter_words(net.rng_counter))
        self.graph.launch()
        if net.training:
            net.rng_counter += 1
        opt.advance()
        net.note_forward(x.shape[0])
        owner.pred = self.pred
        return self.value


class InferenceChain:
    """Eval-mode forward passes as dispatch chains (Network.compile()); returns a fresh copy of the
    output each call, so results never change under the caller when the graph runs again.
    strict: as TrainStep's."""

    def __init__(self, net: BuiltNetwork, cache_size: int = 4, strict: bool = True):
        self.net = net
        self.cache_size, self.strict = cache_size, strict
        self.cache = GraphCache(cache_size, _describe_forward, strict)

    @property
    def eager_reasons(self) -> dict:
        return dict(self.cache.eager_reasons)

    def __call__(self, x: Array, attention_mask: Array | None = None) -> Array:
        net = self.net
        net.check_spec(x)
        mask = None if attention_mask is None else net.check_mask(attention_mask, x.shape[0])
        net.check_ids(x)
        key = (tuple(x.shape), str(x.dtype), None if mask is None else tuple(mask.shape), mode.name(),
               mixed_precision.current())
        entry = self.cache.lookup(key, lambda: _RecordedForward(net, x, mask))
        if entry is None:
            return net.forward_unchecked(net.backend.asarray(x), mask)
        return entry.run(x, mask)


class _RecordedForward:
    def __init__(self, net, x, mask):
        xp = net.backend.xp
        self.net = net
        self.x = xp.empty(x.shape, dtype=x.dtype)
        self.mask = None if mask is None else xp.empty(mask.shape, dtype=mask.dtype)
        self.graph, self.y = net.backend.record(lambda: net.forward_unchecked(self.x, self.mask))

    def run(self, x, mask):
        B = self.net.backend
        B.copy_into(self.x, x)
        if mask is not None:
            B.copy_into(self.mask, mask)
        self.graph.launch()
        self.net.note_forward(x.shape[0])
        return self.y.copy()

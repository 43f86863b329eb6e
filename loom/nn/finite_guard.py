"""Training stops at the first non-finite loss, naming the batch and the layer that produced it.

Checking a loss value costs nothing on the CPU, so there every batch is checked as it finishes. On
a GPU reading a value waits for the device, so the running epoch total is read at most every
half second and at the end of the epoch. Either way, once a non-finite value is seen, training is
replayed from a host copy of the state (weights, buffers, optimizer state, RNG counter) taken at the
start of an epoch: training is deterministic, so the replay reaches exactly the weights each batch
saw, finds the first batch whose loss is not finite, and runs that batch through
Network.check_finite layer by layer, before its update.

The copy is taken at the start of an epoch once the training since the last copy has taken at least
_COPY_RATIO times as long as that copy did, so it never costs more than about 1/_COPY_RATIO of the
training time (on a GPU, a device-to-host transfer of the state can take as long as a short epoch);
a replay then starts from an older epoch, which only a failure pays for.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from ..backend import Array
from ..errors import NumericError
from . import optim
from .chain import TrainStep

if TYPE_CHECKING:
    from .losses import Loss
    from .network import Network

_EVERY = 0.5      # seconds between reads of the running total on a device
_COPY_RATIO = 50  # training time between two copies of the state, in multiples of the last copy's time


class Guard:
    def __init__(self, net: Network, opt: optim.Optimizer, loss: Loss, strict: bool, every: int | None = None):
        """every: on a device, read the running total every `every` batches instead of every half
        second: the ranks of a data-parallel world must all check (and fail) at the same batch."""
        self.net, self.opt, self.loss, self.strict = net, opt, loss, strict
        self.every = every
        self.host = net.backend.host
        self.snapshot: dict[str, Any] | None = None

    def start(self, epoch: int, order_of: Callable[[int], np.ndarray], bs: int, X: np.ndarray, Y: np.ndarray) -> None:
        """An epoch begins: `order_of(e)` is epoch e's sample order. Copies the state to the host when
        the training since the last copy took long enough (_COPY_RATIO)."""
        self.epoch, self.order_of, self.bs, self.X, self.Y = epoch, order_of, bs, X, Y
        now = time.perf_counter()
        if self.snapshot is None or now - self.copied >= _COPY_RATIO * self.copy_s:
            self.snapshot, self.snapshot_epoch = self._state(), epoch
            self.copied = time.perf_counter()
            self.copy_s = self.copied - now
        self.good = -1                          # the last batch known to have a finite loss
        self.read = time.perf_counter()

    def after(self, b: int, value: Array, total: Array) -> None:
        """Called after batch b's step with its loss value and the epoch's running total."""
        if self.host:
            if not math.isfinite(float(value)):
                self._fail(b, b)
            self.good = b
        elif self.every is not None:
            if (b + 1) % self.every == 0:
                self.check_total(b, float(total))
        elif time.perf_counter() - self.read >= _EVERY:
            self.check_total(b, float(total))
            self.read = time.perf_counter()

    def check_total(self, b: int, total: float) -> None:
        """The running total after batch b: not finite means some batch since the last check was not."""
        if not math.isfinite(total):
            self._fail(self.good + 1, b)
        self.good = b

    def check_parameters(self) -> None:
        """After an epoch: the last update is followed by no loss that would show it broke a weight."""
        found = self.net.check_finite()
        if found is not None:
            raise NumericError(f"training stopped: after epoch {self.epoch + 1} parameter {found.where} holds "
                               f"{found.nan} NaN and {found.inf} Inf values (its last update overflowed). Lower "
                               "the learning rate, or pass allow_nonfinite=True (loom train --allow-nonfinite)")

    # --- replay ------------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        net = self.net
        return {"net": {k: net.backend.to_numpy(v).copy() for k, v in net.state_dict().items()},
                "opt": self.opt.state_dict(), "rng": net.rng_counter}

    def _restore(self, state: dict[str, Any], opt: optim.Optimizer) -> None:
        self.net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        self.net.rng_counter = state["rng"]

    def _batches(self, epoch: int) -> list[tuple[np.ndarray, np.ndarray]]:
        order = self.order_of(epoch)
        return [(self.X[idx], self.Y[idx]) for idx in (order[i:i + self.bs] for i in range(0, len(order), self.bs))]

    def _fail(self, lo: int, hi: int) -> None:
        """Replay the epoch up to batch hi; raise NumericError for the first non-finite batch in [lo, hi]."""
        with np.errstate(all="ignore"):          # the replay reaches the same overflow on purpose
            self._replay(lo, hi)

    def _replay(self, lo: int, hi: int) -> None:
        opt = self.opt
        self._restore(self.snapshot, opt)
        step = TrainStep(self.net, self.loss, opt, strict=self.strict)
        for epoch in range(self.snapshot_epoch, self.epoch):         # finished epochs since the copy
            for x, y in self._batches(epoch):
                step(x, y, checked=False)
        batches = self._batches(self.epoch)
        for x, y in batches[:lo]:
            step(x, y, checked=False)
        for j in range(lo, hi + 1):
            before = self._state()
            x, y = batches[j]
            if math.isfinite(float(step(x, y, checked=False))):
                continue
            self._restore(before, opt)
            found = self.net.check_finite(self.net.backend.asarray(x))
            if found is not None and found.type == "parameter":
                cause = (f"the update before it left parameter {found.where} with {found.nan} NaN and "
                         f"{found.inf} Inf values (the gradients overflowed)")
            elif found is not None:
                cause = f"first at {found}"
            elif y.dtype.kind == "f" and not np.all(np.isfinite(y)):
                cause = "its targets hold NaN or infinity"
            else:
                cause = f"every layer's output is finite, so the loss {self.loss.name} itself overflowed"
            raise NumericError(f"training stopped: the loss of epoch {self.epoch + 1}, batch {j + 1} is "
                               f"not finite; {cause}. Lower the learning rate or check the data, or pass "
                               "allow_nonfinite=True (loom train --allow-nonfinite) to train on regardless")
        raise NumericError(f"training stopped: the loss of epoch {self.epoch + 1} became non-finite between "
                           f"batches {lo + 1} and {hi + 1}, but replaying them gave finite losses (fast mode "
                           "on a GPU is not reproducible); pass allow_nonfinite=True to train on regardless")

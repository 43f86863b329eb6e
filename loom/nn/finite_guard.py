"""Training stops at the first non-finite loss, naming the batch and the layer that produced it.

Checking a loss value costs nothing on the CPU, so there every batch is checked as it finishes. On
a GPU reading a value waits for the device, so the running epoch total is read at most every
half second and at the end of the epoch. Either way, once a non-finite value is seen, the epoch is
replayed from a host copy of the state taken at its start: training is deterministic, so the replay
reaches exactly the weights each batch saw, finds the first batch whose loss is not finite, and runs
that batch through Network.check_finite layer by layer, before its update.
"""
from __future__ import annotations

import math
import time
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


class Guard:
    def __init__(self, net: Network, opt: optim.Optimizer, loss: Loss, strict: bool):
        self.net, self.opt, self.loss, self.strict = net, opt, loss, strict
        self.host = net.backend.host

    def start(self, epoch: int, order: np.ndarray, bs: int, X: np.ndarray, Y: np.ndarray) -> None:
        """Remember the state at the start of an epoch (host copies) and its batches."""
        self.epoch, self.order, self.bs, self.X, self.Y = epoch, order, bs, X, Y
        self.snapshot = self._state()
        self.good = -1                          # the last batch known to have a finite loss
        self.read = time.perf_counter()

    def after(self, b: int, value: Array, total: Array) -> None:
        """Called after batch b's step with its loss value and the epoch's running total."""
        if self.host:
            if not math.isfinite(float(value)):
                self._fail(b, b)
            self.good = b
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

    def _batch(self, j: int) -> tuple[np.ndarray, np.ndarray]:
        idx = self.order[j * self.bs:(j + 1) * self.bs]
        return self.X[idx], self.Y[idx]

    def _fail(self, lo: int, hi: int) -> None:
        """Replay the epoch up to batch hi; raise NumericError for the first non-finite batch in [lo, hi]."""
        with np.errstate(all="ignore"):          # the replay reaches the same overflow on purpose
            self._replay(lo, hi)

    def _replay(self, lo: int, hi: int) -> None:
        opt = self.opt
        self._restore(self.snapshot, opt)
        step = TrainStep(self.net, self.loss, opt, strict=self.strict)
        for j in range(lo):
            step(*self._batch(j), checked=False)
        for j in range(lo, hi + 1):
            before = self._state()
            x, y = self._batch(j)
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

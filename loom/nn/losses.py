"""Loss functions: the value and dL/dpred from one call, with PyTorch's definitions.

    loss = build("cross_entropy")        # or {"type": "cross_entropy", "label_smoothing": 0.1}
    value, grad = loss(pred, target)     # value: 0-d array of pred's dtype; grad: like pred

Every loss computes a pointwise term (one per element, or one per row for the class losses), then
reduces: "sum" adds them, "mean" divides by their count (elements, or non-ignored rows), and kl_div
alone also has "batchmean" (sum / pred.shape[0]). A mean over nothing (an empty batch, every row
ignored) is NaN with a zero gradient, as in PyTorch. Targets are cast to pred's dtype, so float32 in
gives float32 out. NaN in pred propagates; nothing is clamped.

Transcendentals and reductions go through `kernels.ops` (so deterministic mode covers them);
structural operations (where, maximum, abs, take_along_axis) use the array module.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np

from .. import backend
from .. import config as configs
from ..backend import Array
from ..config import number, one_of
from ..errors import ConfigError, ShapeError
from ..kernels import batch_split, ops

REGISTRY: dict[str, type[Loss]] = {}


def register(name: str) -> Callable[[type[Loss]], type[Loss]]:
    """Class decorator: the loss class that builds configs of this `type`."""
    def deco(cls):
        cls.name = name
        REGISTRY[name] = cls
        return cls
    return deco


def build(spec: str | dict | Loss) -> Loss:
    """A loss from its type name, its config dict ({"type": ..., keys}) or an existing loss."""
    if isinstance(spec, Loss):
        return spec
    spec, name = configs.resolve_type(spec, "loss", REGISTRY, "loss")
    return REGISTRY[name](**{k: v for k, v in spec.items() if k != "type"})


# --- config checkers (each takes (value, path), returns the canonical value or raises) ------------

def _class_index(v, path):
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(path, f"expected an integer or null, got {v!r}")
    return v


def _optional_positive(v, path):
    return None if v is None else number(0, lo_open=True)(v, path)


_REDUCTION = ("reduction", one_of("mean", "sum"), "mean")


class Loss(ABC):
    """Base: parses keys against KEYS [(key, checker, default)], keeps the canonical config."""
    name = "loss"
    KEYS: tuple = (_REDUCTION,)
    CLASS_IDS = False       # integer targets are class ids along pred's last axis (cross_entropy, nll)

    def __init__(self, **keys: Any):
        known = [k for k, _, _ in self.KEYS]
        for key in keys:
            if key not in known:
                raise ConfigError(f"loss.{key}", f"unknown key for loss {self.name!r}; "
                                                 f"expected one of type, {', '.join(known)}")
        self._config = {"type": self.name}
        for key, check, default in self.KEYS:
            value = check(keys[key], f"loss.{key}") if key in keys else default
            self._config[key] = value
            setattr(self, key, value)

    @property
    def config(self) -> dict:
        return dict(self._config)

    def __repr__(self) -> str:
        keys = ", ".join(f"{k}={v!r}" for k, v in self._config.items() if k != "type")
        return f"{type(self).__name__}({keys})"

    def __call__(self, pred: Array, target: Array, checked: bool = True) -> tuple[Array, Array]:
        """(value, dL/dpred). checked=False skips the data-dependent target checks (class ids in
        range), which synchronize with the device: a recorded train step checks its targets with
        check_target() before they are copied in."""
        xp = backend.of(pred).xp
        if pred.dtype.kind != "f":
            raise ShapeError(f"{self.name}: pred must be a floating-point array, got dtype {pred.dtype}")
        self._checked = checked
        try:
            return self.compute(pred, xp.asarray(target), xp)
        finally:
            self._checked = True

    def check_target(self, target: Array, n_classes: int) -> None:
        """The checks __call__ skips when checked=False: class ids inside [0, n_classes) (or equal to
        ignore_index). Other targets need no data-dependent check."""
        if self.CLASS_IDS and target.dtype.kind in "iu":
            self._check_ids(target, n_classes, backend.of(target).xp)

    @abstractmethod
    def compute(self, pred: Array, target: Array, xp: ModuleType) -> tuple[Array, Array]:
        """(value, grad) for validated pred and target."""

    def reduce(self, pointwise: Array, grad: Array, count: int | Array, xp: ModuleType) -> tuple[Array, Array]:
        """(value, dL/dpred) from the pointwise losses and their unreduced derivatives: "sum" adds,
        every other reduction ("mean", "batchmean") divides by `count`. In a data-parallel world
        (loom.kernels.batch_split) the total and the count are the global batch's: each rank's
        gradient rows are then the ones one device computes for the whole batch."""
        dtype = grad.dtype
        total = ops.sum_over_batch(pointwise)
        if self.reduction == "sum":
            return xp.asarray(total, dtype=dtype), grad
        if not isinstance(count, int):    # counted on the device (rows not ignored): no synchronization
            n = count.astype(dtype)
            split = batch_split.current()
            if split is not None:            # the ranks' counts added: integers, exact
                total_count = count.astype(np.float64).reshape(1)
                split.collective.all_reduce(total_count, "sum")
                n = total_count[0].astype(dtype)
            with np.errstate(invalid="ignore"):      # PyTorch: a mean over nothing is NaN (0 / 0), its gradient zero
                value = xp.asarray(total / n, dtype=dtype)
            return value, xp.where(n > 0, grad / xp.where(n > 0, n, 1), 0).astype(dtype)
        count = ops.count_over_batch(count)
        if count == 0:
            return xp.full((), math.nan, dtype=dtype), xp.zeros_like(grad)
        n = xp.full((), count, dtype=dtype)
        return xp.asarray(total / n, dtype=dtype), grad / n

    # --- target checks shared by the subclasses ----------------------------------------------------

    def same_shape_target(self, pred: Array, target: Array, xp: ModuleType) -> Array:
        """An elementwise target: pred's shape, any real dtype, cast to pred's dtype."""
        if tuple(target.shape) != tuple(pred.shape):
            raise ShapeError(f"{self.name}: target shape {tuple(target.shape)} does not match pred; "
                             f"expected {tuple(pred.shape)}")
        if target.dtype.kind not in "biuf":
            raise ShapeError(f"{self.name}: target must be a real numeric array, got dtype {target.dtype}")
        return target.astype(pred.dtype, copy=False)

    def class_ids(self, pred: Array, target: Array, xp: ModuleType,
                  ignore_index: int | None = None) -> tuple[Array, Array, int | Array]:
        """Integer class ids over pred's last axis: (ids safe to index with, rows kept, count kept)."""
        if pred.ndim == 0 or pred.shape[-1] == 0:
            raise ShapeError(f"{self.name}: pred needs a class axis (last) of length >= 1, "
                             f"got shape {tuple(pred.shape)}")
        expected = tuple(pred.shape[:-1])
        if tuple(target.shape) != expected:
            raise ShapeError(f"{self.name}: class-id target shape {tuple(target.shape)} does not match "
                             f"pred {tuple(pred.shape)}; expected {expected}")
        if target.dtype.kind not in "iu":
            raise ShapeError(f"{self.name}: class ids must be integers, got dtype {target.dtype} "
                             f"(expected an integer array of shape {expected})")
        if getattr(self, "_checked", True):
            self._check_ids(target, pred.shape[-1], xp)
        if ignore_index is None:
            return target.astype(xp.int64), xp.ones(expected, dtype=bool), math.prod(expected)
        keep = target != ignore_index
        ids = xp.where(keep, target, 0).astype(xp.int64)
        return ids, keep, ops.sum(keep.astype(xp.int64))

    def _check_ids(self, target, n_classes, xp) -> None:
        ignore_index = getattr(self, "ignore_index", None)
        bad = (target < 0) | (target >= n_classes)
        if ignore_index is not None:
            bad &= target != ignore_index
        if bool(xp.any(bad)):
            where = tuple(int(i) for i in xp.argwhere(bad)[0])
            raise ShapeError(f"{self.name}: class id {int(target[where])} at target index {list(where)} is "
                             f"out of range; expected 0 <= id < {n_classes}"
                             + ("" if ignore_index is None else f" or the ignore_index {ignore_index}"))


def _onehot(ids, n_classes, xp):
    """Boolean [..., C]: True at each row's class id."""
    return xp.arange(n_classes) == ids[..., None]


def _log_softmax(x, xp):
    """log softmax over the last axis, shifted by the row max so that exp never overflows."""
    z = x - xp.max(x, axis=-1, keepdims=True)
    return z - ops.log(ops.sum(ops.exp(z), axis=-1, keepdims=True))


# --- regression ------------------------------------------------------------------------------------

@register("mse")
class MSE(Loss):
    """(pred - target)^2 per element."""

    def compute(self, pred: Array, target: Array, xp: ModuleType) -> tuple[Array, Array]:
        r = pred - self.same_shape_target(pred, target, xp)
        return self.reduce(r * r, 2 * r, r.size, xp)


@register("mae")
class MAE(Loss):
    """|pred - target| per element; the gradient is sign(r), 0 at r == 0 (as torch)."""

    def compute(self, pred: Array, target: Array, xp: ModuleType) -> tuple[Array, Array]:
        r = pred - self.same_shape_target(pred, target, xp)
        return self.reduce(xp.abs(r), xp.sign(r), r.size, xp)


@register("huber")
class Huber(Loss):
    """0.5 r^2 where |r| < delta, else delta (|r| - 0.5 delta) (torch's HuberLoss)."""
    KEYS = (_REDUCTION, ("delta", number(0, lo_open=True), 1.0))

    def compute(self, pred: Array, target: Array, xp: ModuleType) -> tuple[Array, Array]:
        r = pred - self.same_shape_target(pred, target, xp)
        a = xp.abs(r)
        d = self.delta
        pointwise = xp.where(a < d, 0.5 * r * r, d * (a - 0.5 * d))
        return self.reduce(pointwise, xp.clip(r, -d, d), r.size, xp)


# --- classification --------------------------------------------------------------------------------

@register("cross_entropy")
class CrossEntropy(Loss):
    """-sum_c q_c log softmax(pred)_c per row, q = (1 - eps) target + eps / C.

    target: integer class ids of shape pred.shape[:-1] (rows equal to ignore_index contribute nothing
    and are not counted by "mean"), or float probabilities / one-hot of pred's shape (ignore_index
    does not apply to them, as in torch).
    """
    CLASS_IDS = True
    KEYS = (_REDUCTION,
            ("label_smoothing", number(0, 1, hi_open=True), 0.0),
            ("ignore_index", _class_index, None))

    def compute(self, pred: Array, target: Array, xp: ModuleType) -> tuple[Array, Array]:
        if pred.ndim >= 1 and tuple(target.shape) == tuple(pred.shape):
            return self._probabilities(pred, target, xp)
        return self._class_ids(pred, target, xp)

    def _class_ids(self, pred, target, xp):
        ids, keep, count = self.class_ids(pred, target, xp, self.ignore_index)
        n_classes = pred.shape[-1]
        eps = self.label_smoothing
        logp = _log_softmax(pred, xp)
        row = -xp.take_along_axis(logp, ids[..., None], axis=-1)[..., 0]
        if eps:
            row = (1 - eps) * row - (eps / n_classes) * ops.sum(logp, axis=-1)
        grad = ops.exp(logp) - eps / n_classes                     # softmax - q
        grad = xp.where(_onehot(ids, n_classes, xp), grad - (1 - eps), grad)
        row = xp.where(keep, row, 0)
        grad = xp.where(keep[..., None], grad, 0)
        return self.reduce(row, grad, count, xp)

    def _probabilities(self, pred, target, xp):
        if target.dtype.kind != "f":
            raise ShapeError(f"{self.name}: probability targets of shape {tuple(target.shape)} must be "
                             f"floating point, got dtype {target.dtype} (class ids have shape "
                             f"{tuple(pred.shape[:-1])})")
        q = target.astype(pred.dtype, copy=False)
        n_classes = pred.shape[-1]
        if self.label_smoothing:
            q = (1 - self.label_smoothing) * q + self.label_smoothing / n_classes
        logp = _log_softmax(pred, xp)
        row = -ops.sum(q * logp, axis=-1)
        # d/dx of -sum_c q_c log p_c is p * sum(q) - q: targets need not sum to one.
        grad = ops.exp(logp) * ops.sum(q, axis=-1, keepdims=True) - q
        return self.reduce(row, grad, row.size, xp)


@register("nll")
class NLL(Loss):
    """-pred[target] per row: pred holds log-probabilities over the last axis (torch's nll_loss)."""
    CLASS_IDS = True
    KEYS = (_REDUCTION, ("ignore_index", _class_index, None))

    def compute(self, pred: Array, target: Array, xp: ModuleType) -> tuple[Array, Array]:
        ids, keep, count = self.class_ids(pred, target, xp, self.ignore_index)
        row = xp.where(keep, -xp.take_along_axis(pred, ids[..., None], axis=-1)[..., 0], 0)
        pick = _onehot(ids, pred.shape[-1], xp) & keep[..., None]
        return self.reduce(row, -pick.astype(pred.dtype), count, xp)


@register("binary_cross_entropy")
class BinaryCrossEntropy(Loss):
    """From logits x, per element: max(x, 0) - x t + log1p(e^-|x|); with pos_weight p (torch's
    BCEWithLogitsLoss): (1 - t) x + (1 + (p - 1) t) (log1p(e^-|x|) + max(-x, 0))."""
    KEYS = (_REDUCTION, ("pos_weight", _optional_positive, None))

    def compute(self, pred: Array, target: Array, xp: ModuleType) -> tuple[Array, Array]:
        t = self.same_shape_target(pred, target, xp)
        log1p_exp = ops.log1p(ops.exp(-xp.abs(pred)))     # never overflows
        if self.pos_weight is None:
            pointwise = xp.maximum(pred, 0) - pred * t + log1p_exp
            grad = ops.sigmoid(pred) - t
        else:
            w = 1 + (self.pos_weight - 1) * t
            pointwise = (1 - t) * pred + w * (log1p_exp + xp.maximum(-pred, 0))
            grad = (1 - t) - w * ops.sigmoid(-pred)
        return self.reduce(pointwise, grad, pred.size, xp)


@register("kl_div")
class KLDiv(Loss):
    """t (log t - pred) per element, 0 where t == 0 (torch's KLDivLoss: pred log-probabilities,
    target probabilities). "mean" divides by the element count, "batchmean" by pred.shape[0]."""
    KEYS = (("reduction", one_of("mean", "sum", "batchmean"), "mean"),)

    def compute(self, pred: Array, target: Array, xp: ModuleType) -> tuple[Array, Array]:
        t = self.same_shape_target(pred, target, xp)
        t_log_t = t * ops.log(xp.where(t > 0, t, 1))               # 0 log 0 = 0
        t_log_t = xp.where(t < 0, xp.full((), math.nan, dtype=t.dtype), t_log_t)   # as torch's xlogy
        pointwise = t_log_t - t * pred
        if self.reduction != "batchmean":
            return self.reduce(pointwise, -t, pred.size, xp)
        if pred.ndim == 0:
            raise ShapeError(f"{self.name}: reduction 'batchmean' needs a batch axis, got a 0-d pred")
        return self.reduce(pointwise, -t, pred.shape[0], xp)


NAMES: tuple[str, ...] = tuple(REGISTRY)

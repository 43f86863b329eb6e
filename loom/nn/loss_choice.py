"""Which loss fits which targets: the default loss chosen from the output and the targets, and the
check that a loss given by the user can learn anything from them.

A loss that cannot fit its targets must fail before training, not train silently: cross-entropy over
a single output is a softmax of one class (always 1, loss always 0), and a regression loss against
class ids of a different shape has nothing to compare.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError, ShapeError
from . import losses


def _shape(a: np.ndarray) -> str:
    return f"{a.dtype} {_batched(a.shape[1:])}"


def _batched(shape: Sequence[int]) -> str:
    return f"[N{''.join(f', {d}' for d in shape)}]"


def _classes(out_shape: Sequence[int]) -> int:
    return int(out_shape[-1]) if len(out_shape) else 1


def _whole(Y: np.ndarray) -> bool:
    """Integer class ids: an integer dtype, or floats that are all whole numbers (as .npz files saved
    from float arrays and CSV files give them)."""
    if Y.dtype.kind in "iu":
        return True
    return Y.dtype.kind == "f" and Y.size > 0 and bool(np.all(np.isfinite(Y) & (Y == np.round(Y))))


def _probability_rows(Y: np.ndarray) -> bool:
    """True when every row of Y is one-hot or a probability distribution over the last axis."""
    if Y.size == 0 or Y.dtype.kind != "f" or not np.all(np.isfinite(Y)):
        return False
    if np.any(Y < 0) or np.any(Y > 1):
        return False
    return bool(np.all(np.abs(Y.sum(axis=-1, dtype=np.float64) - 1) <= 1e-5))


def infer(Y: np.ndarray, out_shape: Sequence[int]) -> tuple[str, str]:
    """(loss name, why) for targets Y [N, ...] and a network output of shape out_shape (no batch):
    integer class ids over a class axis, or one-hot / probability rows -> cross_entropy; numbers of
    the output's shape -> mse. Raises ConfigError("loss") when the targets fit neither."""
    out_shape, C = tuple(out_shape), _classes(out_shape)
    rows = tuple(Y.shape[1:])
    if _whole(Y) and rows == out_shape[:-1] and C > 1:
        return "cross_entropy", f"integer class ids {_shape(Y)} for {C} outputs"
    if rows == out_shape and C > 1 and _probability_rows(Y):
        return "cross_entropy", f"one-hot or probability rows {_shape(Y)}"
    if Y.dtype.kind in "iuf" and (rows == out_shape or (rows == () and out_shape == (1,))):
        return "mse", f"numeric targets {_shape(Y)} of the output's shape {list(out_shape)}"
    raise ConfigError("loss", f"no default loss fits targets {_shape(Y)} and the network's output "
                              f"{list(out_shape)}: class ids need shape {_batched(out_shape[:-1])}, regression "
                              f"targets {_batched(out_shape)}; choose a loss "
                              f"(one of {', '.join(losses.NAMES)})")


def fit_targets(loss: losses.Loss, Y: np.ndarray, out_shape: Sequence[int]) -> np.ndarray:
    """Y as `loss` takes it (a [N] column of numbers for a single output becomes [N, 1]), after
    checking that the loss can learn from it; ConfigError("loss") naming the loss, the targets and
    the loss that would fit otherwise."""
    out_shape = tuple(out_shape)
    if not loss.CLASS_IDS and Y.ndim == 1 and out_shape == (1,):
        Y = Y.reshape(-1, 1)
    if loss.CLASS_IDS and Y.dtype.kind == "f" and tuple(Y.shape[1:]) == out_shape[:-1] and _whole(Y):
        Y = Y.astype(np.int64)                     # whole-number floats of the class-id shape are ids
    problem = _problem(loss, Y, out_shape)
    if problem is None:
        return Y
    try:
        better, _ = infer(Y, out_shape)
        hint = f"; use {better}" + (" (or binary_cross_entropy for 0/1 labels)" if better == "mse" else "")
    except ConfigError:
        hint = ""
    raise ConfigError("loss", f"{loss.name} cannot learn from targets {_shape(Y)} with the network's output "
                              f"{list(out_shape)}: {problem}{hint}")


def _problem(loss: losses.Loss, Y: np.ndarray, out_shape: tuple[int, ...]) -> str | None:
    if loss.name in ("cross_entropy", "nll") and _classes(out_shape) == 1:
        return ("a single output is a single class: every class id is 0 (cross_entropy's softmax is always 1), "
                "so the targets teach nothing")
    if loss.name == "cross_entropy" and Y.dtype.kind == "f" and tuple(Y.shape[1:]) == out_shape:
        if np.any(Y < 0):
            return "probability targets must not be negative"
    rows = tuple(Y.shape[1:])
    if not loss.CLASS_IDS and rows != out_shape:
        return f"{loss.name} compares each output with a target, so targets need shape {_batched(out_shape)}"
    if loss.CLASS_IDS and rows != out_shape and rows != out_shape[:-1]:
        return (f"targets need shape {_batched(out_shape[:-1])} (class ids) or {_batched(out_shape)} "
                "(one-hot or probability rows)")
    sample = Y[:4]
    pred = np.zeros((len(sample), *out_shape), dtype=np.float64)
    try:
        loss(pred, sample)
    except ShapeError as exc:
        return str(exc)
    return None

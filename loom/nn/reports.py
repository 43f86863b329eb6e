"""Evaluation reports (a printed summary and JSON export) and training-curve plots over the metrics
of loom/nn/metric_functions.py. Public as loom.nn.metrics.evaluate and loom.nn.metrics.plot_history.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from numpy.typing import ArrayLike

from .. import atomic
from ..errors import ConfigError, LoomError, ShapeError
from .metric_functions import (
    WORST_K,
    Deviation,
    _fmt,
    _jsonable,
    _mean,
    _numeric,
    _paired,
    _prf_counts,
    _probabilities,
    _scores,
    _table,
    _true_rank,
    confusion_matrix,
    deviation,
    deviation_lines,
    precision_recall_f1,
)

CONFUSION_MAX_CLASSES = 1024     # evaluate() skips the [C, C] matrix above this


class Logged(Protocol):
    """What plot_history reads of loom.train's History: its per-epoch logs."""
    logs: dict[str, list[float]]


class _Report:
    """Shared by the two reports, which define to_dict() and summary()."""

    def __str__(self) -> str:
        return self.summary()

    def to_json(self, path: str | Path) -> list[str]:
        """Write the report as valid JSON (a NaN metric as null); returns where NaN became null."""
        return atomic.write_json(path, self.to_dict())


@dataclass
class RegressionReport(_Report):
    samples: int
    outputs: int             # values per sample
    mae: float
    mse: float
    rmse: float
    deviation: Deviation

    def to_dict(self) -> dict:
        return _jsonable({"task": "regression", "samples": self.samples, "outputs": self.outputs,
                          "mae": self.mae, "mse": self.mse, "rmse": self.rmse,
                          "deviation": self.deviation.to_dict()})

    def summary(self) -> str:
        out = ["=== Regression report ===", f"Samples            : {self.samples}",
               f"Outputs per sample : {self.outputs}", f"MAE                : {_fmt(self.mae, 6)}",
               f"RMSE               : {_fmt(self.rmse, 6)}"]
        return "\n".join(out + deviation_lines(self.deviation))


@dataclass
class ClassificationReport(_Report):
    samples: int
    classes: int
    correct: int
    accuracy: float
    top5: float | None                 # only when classes > 5
    confusion: np.ndarray | None       # None when classes > CONFUSION_MAX_CLASSES
    prf: dict                          # precision_recall_f1() of the predictions
    worst: list[dict]                  # index, label, predicted, p_true
    input: str                         # "probabilities" or "logits"
    nonfinite_rows: int
    labels: list[str] | None = None    # class names (a model's "labels"), shown instead of ids

    def to_dict(self) -> dict:
        return _jsonable({
            "task": "classification", "samples": self.samples, "classes": self.classes,
            "accuracy": self.accuracy, "top5": self.top5, "input": self.input,
            "nonfinite_rows": self.nonfinite_rows, "labels": self.labels,
            "confusion_matrix": self.confusion,
            "per_class": {m: self.prf[m] for m in ("precision", "recall", "f1", "support")},
            "macro": self.prf["macro"], "weighted": self.prf["weighted"], "worst": self.worst})

    def summary(self) -> str:
        f4 = lambda v: f"{v:.4f}"  # noqa: E731
        out = ["=== Classification report ===", f"Samples        : {self.samples}",
               f"Classes        : {self.classes}",
               f"Input read as  : {self.input}" + (" (softmax applied)" if self.input == "logits" else ""),
               f"Accuracy       : {f4(self.accuracy)}  ({self.correct}/{self.samples})"]
        if self.top5 is not None:
            out.append(f"Top-5 accuracy : {f4(self.top5)}")
        out += [f"Macro F1       : {f4(self.prf['macro']['f1'])}",
                f"Weighted F1    : {f4(self.prf['weighted']['f1'])}"]
        if self.nonfinite_rows:
            out.append(f"WARNING        : {self.nonfinite_rows} rows hold NaN/Inf scores (NaN read as -inf)")
        p = self.prf
        name = (lambda c: str(c)) if self.labels is None else (lambda c: self.labels[c])  # noqa: E731
        rows = [[name(c), f4(p["precision"][c]), f4(p["recall"][c]), f4(p["f1"][c]), str(p["support"][c])]
                for c in range(self.classes)] if self.classes <= 30 else []
        rows += [[a, f4(p[a]["precision"]), f4(p[a]["recall"]), f4(p[a]["f1"]), str(self.samples)]
                 for a in ("macro", "weighted")]
        out += ["", "Per class" + ("" if self.classes <= 30 else " (rows in to_dict(); averages here)") + ":"]
        out += _table(["class", "precision", "recall", "f1", "support"], rows)
        if self.confusion is not None and self.classes <= 20:
            out += ["", "Confusion matrix (rows = true class, columns = predicted):"]
            out += _table(["true\\pred"] + [name(c) for c in range(self.classes)],
                          [[name(i)] + [str(v) for v in row] for i, row in enumerate(self.confusion.tolist())])
        rows = [[str(r + 1), str(w["index"]), name(w["label"]), name(w["predicted"]), f4(w["p_true"])]
                for r, w in enumerate(self.worst)]
        out += ["", f"Worst {len(rows)} samples (lowest probability of the true class):"]
        out += _table(["rank", "index", "true", "predicted", "p(true)"], rows)
        return "\n".join(out)


def _classification(pred, target, k: int, labels: list[str] | None = None) -> ClassificationReport:
    raw = _numeric(pred, "pred")
    s, y, label_shape = _scores(raw, target)
    n, classes = s.shape
    rank = _true_rank(s, y)
    predicted = np.argmax(s, axis=1)          # NaN already read as -inf; first maximum wins
    if classes <= CONFUSION_MAX_CLASSES:
        cm = confusion_matrix(predicted, y, classes)
        prf = precision_recall_f1(cm)
    else:                                     # same numbers from O(C) counts, without the [C, C] matrix
        cm = None
        prf = _prf_counts(np.bincount(y[predicted == y], minlength=classes),
                          np.bincount(predicted, minlength=classes), np.bincount(y, minlength=classes))
    probs, is_prob = _probabilities(s)
    p_true = probs[np.arange(n), y]
    order = np.argsort(p_true, kind="stable")[:k]
    index = (lambda i: int(i)) if len(label_shape) <= 1 else \
        (lambda i: [int(v) for v in np.unravel_index(i, label_shape)])
    worst = [{"index": index(i), "label": int(y[i]), "predicted": int(predicted[i]),
              "p_true": float(p_true[i])} for i in order]
    correct = int((rank < 1).sum())
    return ClassificationReport(
        samples=n, classes=classes, correct=correct, accuracy=correct / n,
        top5=int((rank < 5).sum()) / n if classes > 5 else None, confusion=cm, prf=prf, worst=worst,
        input="probabilities" if is_prob else "logits",
        nonfinite_rows=int((~np.isfinite(raw.reshape(-1, classes))).any(1).sum()),
        labels=None if labels is None else list(labels))


def evaluate(pred: ArrayLike, target: ArrayLike, task: str | None = None, k: int = WORST_K,
             labels: list[str] | None = None) -> _Report:
    """A full report. task=None infers: pred with one more axis than target (of at least 2 classes)
    and integer labels (an integer dtype, or floats that are all whole numbers, as CSV files give) is
    classification; anything else regression. `labels`: class names (one per class) that a
    classification report shows instead of ids."""
    if task is None:
        p, t = np.asarray(pred), np.asarray(target)
        whole = t.dtype.kind in "iu" or (t.dtype.kind == "f" and bool(np.all(np.isfinite(t) & (t == np.round(t)))))
        task = "classification" if p.ndim == t.ndim + 1 and p.shape[-1] >= 2 and whole else "regression"
    if task == "classification":
        report = _classification(pred, target, k, labels)
        if labels is not None and len(labels) != report.classes:
            raise ShapeError(f"labels: {len(labels)} class names for {report.classes} classes")
        return report
    if task == "regression":
        p, t = _paired(pred, target)
        err = np.abs(p - t)
        m = _mean(err ** 2)
        return RegressionReport(samples=p.shape[0], outputs=p.size // p.shape[0], mae=_mean(err), mse=m,
                                rmse=math.sqrt(m), deviation=deviation(p, t, k))
    raise ConfigError("task", f"expected 'classification', 'regression' or None, got {task!r}")


# ---------------------------------------------------------------- training curves

def plot_history(history: dict[str, list[float]] | Logged, path: str | Path) -> None:
    """Training curves as a PNG: one panel per quantity ("loss", each metric), its "val_" twin on the
    same axes, epochs on x. Needs the `plot` extra (matplotlib); written atomically."""
    history = getattr(history, "logs", history)      # loom.train's History holds its dict in .logs
    if not isinstance(history, dict) or not history:
        raise ShapeError(f"history: expected a non-empty dict of name -> list of floats, got {history!r}")
    curves = {}
    for name, values in history.items():
        if isinstance(values, (list, tuple)):     # null in history.json: an epoch whose value was NaN
            values = [math.nan if x is None else x for x in values]
        v = np.asarray(values)
        if v.ndim != 1 or v.size == 0 or v.dtype.kind not in "biuf":
            raise ShapeError(f"history[{name!r}]: expected a non-empty list of numbers, got {values!r}")
        curves[str(name)] = v.astype(np.float64)
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError as e:
        raise LoomError("plot_history needs matplotlib: pip install 'loom[plot]'") from e
    panels = []
    for name in curves:
        base = name[4:] if name.startswith("val_") and name[4:] in curves else name
        if base not in panels:
            panels.append(base)
    panels.sort(key=lambda b: b != "loss")          # loss first, the rest in history order
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(4.5 * cols, 3.2 * rows), dpi=100)
    FigureCanvasAgg(fig)
    for i, base in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        for name in (base, "val_" + base):
            if name in curves:
                ax.plot(np.arange(1, len(curves[name]) + 1), curves[name], marker="o", markersize=3,
                        label=name)
        ax.set_title(base)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic.write_bytes(path, buf.getvalue())

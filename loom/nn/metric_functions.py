"""Evaluation metrics on host NumPy arrays: classification scores, regression errors and the
deviation metric (7 buckets, quality score, worst samples, its text summary). Public through
loom/nn/metrics.py, which re-exports them with reports.py's evaluate and plot_history; reports.py
builds on them, so they live below both.

Every function is a pure function of its arrays. Sums over samples use `math.fsum` (exact, then
rounded once), so a metric does not depend on the order or batching of the samples it sums.
Definitions: docs/evaluation.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from ..errors import ConfigError, ShapeError

EPS = 1e-9                       # below this |target|, deviation uses the absolute error
WORST_K = 10
BUCKET_EDGES = (10.0, 20.0, 30.0, 40.0, 50.0, 100.0)
BUCKETS = ("0-10%", "10-20%", "20-30%", "30-40%", "40-50%", "50-100%", "100%+")
PROB_ATOL = 1e-3                 # rows summing to 1 within this are read as probabilities
_CHUNK = 1 << 22                 # elements per chunk when ranking scores


# ---------------------------------------------------------------- input checks

def _numeric(x, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype.kind not in "biuf":
        raise ShapeError(f"{name}: expected a numeric array, got dtype {a.dtype}")
    return a


def _labels(x, name: str = "labels") -> np.ndarray:
    """Integer class labels as int64. Floats are accepted only when every value is a whole number."""
    a = _numeric(x, name)
    if a.dtype.kind in "iu":
        return a.astype(np.int64)
    if a.dtype.kind == "f":
        bad = ~np.isfinite(a) | (a != np.round(a))
        if not bad.any():
            return a.astype(np.int64)
        where = np.unravel_index(int(np.argmax(bad)), a.shape)
        raise ShapeError(f"{name}: expected integer class labels, got {a[where].item()!r} at index "
                         f"{tuple(int(i) for i in where)} (dtype {a.dtype})")
    raise ShapeError(f"{name}: expected integer class labels, got dtype {a.dtype}")


def _check_range(y: np.ndarray, classes: int, name: str) -> None:
    bad = (y < 0) | (y >= classes)
    if bad.any():
        i = int(np.argmax(bad.reshape(-1)))
        raise ShapeError(f"{name}: expected class indices in [0, {classes}), got {int(y.reshape(-1)[i])} "
                         f"at flat index {i}")


def _scores(scores, labels):
    """-> scores [n, C] float64 (NaN read as -inf), labels [n] int64, label shape.
    `labels` may also be one-hot / soft targets shaped like `scores` (argmax taken)."""
    s = _numeric(scores, "scores").astype(np.float64)
    if s.ndim < 1:
        raise ShapeError("scores: expected shape [..., classes], got a scalar")
    raw = np.asarray(labels)
    y = np.argmax(raw, axis=-1) if raw.shape == s.shape and s.ndim >= 2 else _labels(raw)
    if y.shape != s.shape[:-1]:
        raise ShapeError(f"labels: expected shape {s.shape[:-1]} (scores {s.shape} without the class "
                         f"axis) or {s.shape} (one-hot), got {raw.shape}")
    classes = s.shape[-1]
    if classes < 2:
        raise ShapeError(f"scores: expected at least 2 classes on the last axis, got shape {s.shape}")
    if y.size == 0:
        raise ShapeError(f"labels: expected at least one sample, got shape {y.shape}")
    _check_range(y, classes, "labels")
    s = np.where(np.isnan(s), -np.inf, s).reshape(-1, classes)
    return s, y.reshape(-1).astype(np.int64), y.shape


def _paired(pred, target):
    """Regression pair -> float64 arrays of one shape, batch first. A trailing size-1 axis on one side
    is tolerated ([N, 1] vs [N]); anything else that differs is a ShapeError."""
    p = np.atleast_1d(_numeric(pred, "pred")).astype(np.float64)
    t = np.atleast_1d(_numeric(target, "target")).astype(np.float64)
    if p.shape != t.shape:
        if p.shape == t.shape + (1,) or t.shape == p.shape + (1,):
            t = t.reshape(p.shape)
        else:
            raise ShapeError(f"target: expected shape {p.shape} (same as pred), got {t.shape}")
    if p.shape[0] == 0 or p.size == 0:
        raise ShapeError(f"pred: expected at least one sample with at least one value, got shape {p.shape}")
    return p, t


def _mean(values) -> float:
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    return math.fsum(values.tolist()) / values.size


# ---------------------------------------------------------------- classification

def _true_rank(s: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Rank of the true class in each row, 0 = best. A class with an equal score and a lower index
    ranks ahead (ties toward the lower class index, like np.argmax)."""
    n, classes = s.shape
    rank = np.empty(n, dtype=np.int64)
    idx = np.arange(classes)
    step = max(1, _CHUNK // classes)
    for a in range(0, n, step):
        sc, yc = s[a:a + step], y[a:a + step]
        true = sc[np.arange(len(yc)), yc][:, None]
        rank[a:a + step] = (sc > true).sum(1) + ((sc == true) & (idx < yc[:, None])).sum(1)
    return rank


def top_k_accuracy(scores: ArrayLike, labels: ArrayLike, k: int) -> float:
    """Fraction of samples whose true class is among the k highest scores (ties toward the lower
    class index). k >= classes gives 1.0."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError("k", f"expected an integer >= 1, got {k!r}")
    s, y, _ = _scores(scores, labels)
    return int((_true_rank(s, y) < k).sum()) / len(y)


def accuracy(logits_or_probs: ArrayLike, labels: ArrayLike) -> float:
    """Fraction of samples whose argmax over the last axis equals the integer label."""
    return top_k_accuracy(logits_or_probs, labels, 1)


def confusion_matrix(pred_labels: ArrayLike, labels: ArrayLike, classes: int) -> np.ndarray:
    """int64 [classes, classes]; cm[i, j] counts samples of true class i predicted as j. `pred_labels`
    are integer labels shaped like `labels`, or scores with one more (class) axis."""
    if isinstance(classes, bool) or not isinstance(classes, (int, np.integer)) or classes < 1:
        raise ConfigError("classes", f"expected an integer >= 1, got {classes!r}")
    p = np.asarray(pred_labels)
    y = _labels(labels)
    if p.ndim == y.ndim + 1 and p.dtype.kind == "f":
        s, y, _ = _scores(p, y)
        p = np.argmax(s, axis=1)
        if s.shape[1] != classes:
            raise ShapeError(f"pred_labels: expected {classes} classes on the last axis, got {s.shape[1]}")
    else:
        p = _labels(p, "pred_labels")
        if p.shape != y.shape:
            raise ShapeError(f"pred_labels: expected shape {y.shape} (same as labels), got {p.shape}")
    _check_range(y, classes, "labels")
    _check_range(p, classes, "pred_labels")
    flat = y.reshape(-1) * classes + p.reshape(-1)
    return np.bincount(flat, minlength=classes * classes).astype(np.int64).reshape(classes, classes)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def precision_recall_f1(cm: ArrayLike) -> dict:
    """Per-class precision, recall, F1 and support from a confusion matrix (rows = true), with macro
    and support-weighted averages. 0 where a ratio is undefined (sklearn's zero_division=0); the macro
    average runs over the classes that occur as a true or a predicted label (sklearn's default)."""
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.dtype.kind not in "iu":
        raise ShapeError(f"cm: expected a square integer matrix [classes, classes], got shape "
                         f"{cm.shape} dtype {cm.dtype}")
    tp = np.diag(cm).astype(np.int64)
    return _prf_counts(tp, cm.sum(0).astype(np.int64), cm.sum(1).astype(np.int64))


def _prf_counts(tp, predicted, support) -> dict:
    """precision_recall_f1 from the diagonal and the column/row sums (no [C, C] matrix needed)."""
    tp, predicted, support = (np.asarray(a, dtype=np.int64) for a in (tp, predicted, support))
    precision, recall = _ratio(tp, predicted), _ratio(tp, support)
    f1 = _ratio(2 * tp, support + predicted)          # = 2PR/(P+R), and 0 when tp = 0
    seen = (support + predicted) > 0
    total = int(support.sum())
    out = {"precision": precision, "recall": recall, "f1": f1, "support": support,
           "accuracy": int(tp.sum()) / total if total else 0.0}
    for avg, w in (("macro", seen.astype(np.float64)), ("weighted", support.astype(np.float64))):
        wsum = math.fsum(w.tolist())
        out[avg] = {m: (math.fsum((out[m] * w).tolist()) / wsum if wsum else 0.0)
                    for m in ("precision", "recall", "f1")}
    return out


def _probabilities(s: np.ndarray) -> tuple[np.ndarray, bool]:
    """Rows already in [0, 1] summing to 1 are probabilities; anything else gets a stable softmax."""
    if np.isfinite(s).all() and s.min() >= 0 and s.max() <= 1 \
            and np.all(np.abs(s.sum(1) - 1) <= PROB_ATOL):
        return s, True
    with np.errstate(invalid="ignore", over="ignore"):
        e = np.exp(s - s.max(1, keepdims=True))
        p = e / e.sum(1, keepdims=True)
    return np.nan_to_num(p, nan=0.0), False


# ---------------------------------------------------------------- regression and deviation

def _abs_err(pred, target) -> np.ndarray:
    p, t = _paired(pred, target)
    return np.abs(p - t)


def mae(pred: ArrayLike, target: ArrayLike) -> float:
    return _mean(_abs_err(pred, target))


def mse(pred: ArrayLike, target: ArrayLike) -> float:
    return _mean(_abs_err(pred, target) ** 2)


def rmse(pred: ArrayLike, target: ArrayLike) -> float:
    return math.sqrt(mse(pred, target))


def _number(x):
    """A Python float (or list of floats) for reports."""
    x = np.asarray(x, dtype=np.float64)
    return float(x.reshape(-1)[0]) if x.size == 1 else x.reshape(-1).tolist()


def _jsonable(x):
    """Python scalars/lists only; non-finite floats become None (strict JSON has no NaN)."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    return x


@dataclass
class Deviation:
    """The deviation metric: per-sample percent deviation, its 7 buckets, quality score, worst samples."""
    per_sample: np.ndarray   # [N] float64, percent (NaN where pred or target was non-finite)
    pred: np.ndarray         # [N, ...] float64
    target: np.ndarray
    k: int = WORST_K

    @property
    def samples(self) -> int:
        return len(self.per_sample)

    @property
    def mean(self) -> float:
        """Average deviation in percent (NaN if any sample's deviation is NaN)."""
        return _mean(self.per_sample)

    @property
    def score(self) -> float:
        """Quality score 0-100: mean of max(0, 100 - deviation); a NaN sample scores 0."""
        d = self.per_sample
        return _mean(np.where(np.isnan(d), 0.0, np.maximum(0.0, 100.0 - d)))

    def _bucket_of(self) -> np.ndarray:
        # side="right": a value on an edge goes to the bucket above ([a, b)); NaN sorts past 100
        return np.searchsorted(np.array(BUCKET_EDGES), self.per_sample, side="right")

    @property
    def buckets(self) -> list[dict]:
        counts = np.bincount(self._bucket_of(), minlength=len(BUCKETS))
        return [{"range": name, "count": int(c), "percent": 100.0 * int(c) / self.samples}
                for name, c in zip(BUCKETS, counts)]

    @property
    def failures(self) -> int:
        """Samples in the 100%+ bucket (deviation >= 100 or NaN)."""
        return self.buckets[-1]["count"]

    def samples_in_bucket(self, name: str) -> np.ndarray:
        if name not in BUCKETS:
            raise ConfigError("bucket", f"expected one of {list(BUCKETS)}, got {name!r}")
        return np.flatnonzero(self._bucket_of() == BUCKETS.index(name))

    def worst_samples(self, k: int | None = None) -> list[dict]:
        """The k samples with the largest deviation, largest first (NaN first; ties by index)."""
        k = self.k if k is None else k
        key = np.where(np.isnan(self.per_sample), np.inf, self.per_sample)
        order = np.argsort(-key, kind="stable")[:k]
        return [{"index": int(i), "prediction": _number(self.pred[i]), "target": _number(self.target[i]),
                 "deviation": float(self.per_sample[i])} for i in order]

    @property
    def worst(self) -> list[dict]:
        return self.worst_samples()

    def to_dict(self) -> dict:
        return _jsonable({"samples": self.samples, "mean_deviation": self.mean, "quality_score": self.score,
                          "failures": self.failures, "buckets": self.buckets, "worst": self.worst})

    def summary(self) -> str:
        return "\n".join(deviation_lines(self))


def _fmt(v, digits: int = 4) -> str:
    if isinstance(v, list):
        shown = ", ".join(_fmt(x, digits) for x in v[:4])
        return f"[{shown}{', ...' if len(v) > 4 else ''}]"
    return "nan" if v is None or not math.isfinite(v) else f"{v:.{digits}g}"


def _table(header: list[str], rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    return [indent + "  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in [header] + rows]


def deviation_lines(d: Deviation) -> list[str]:
    pct = lambda v: "nan" if not math.isfinite(v) else f"{v:.2f}%"  # noqa: E731
    out = [f"Quality score      : {d.score:.2f}/100", f"Average deviation  : {pct(d.mean)}",
           f"Failures (>= 100%) : {d.failures} ({100.0 * d.failures / d.samples:.1f}%)", "",
           "Deviation distribution:"]
    for b in d.buckets:
        bar = "█" * int(round(b["percent"] / 2))
        out.append(f"  {b['range']:>7}: {b['count']:>6} samples ({b['percent']:5.1f}%) {bar}".rstrip())
    rows = [[str(r + 1), str(w["index"]), _fmt(w["target"]), _fmt(w["prediction"]), pct(w["deviation"])]
            for r, w in enumerate(d.worst)]
    out += ["", f"Worst {len(rows)} samples (largest deviation):"]
    out += _table(["rank", "index", "target", "prediction", "deviation"], rows)
    out += ["", "Samples by bucket (first indices):"]
    for name in BUCKETS:
        idx = d.samples_in_bucket(name)
        if len(idx):
            more = f" ... ({len(idx) - 5} more)" if len(idx) > 5 else ""
            out.append(f"  {name:>7}: {idx[:5].tolist()}{more}")
    return out


def deviation(pred: ArrayLike, target: ArrayLike, k: int = WORST_K) -> Deviation:
    """Per element: 100 * |pred - target| / |target|, or 100 * |pred - target| where |target| < EPS;
    per sample: the mean over its output elements (all axes after the first)."""
    p, t = _paired(pred, target)
    err, mag = np.abs(p - t), np.abs(t)
    with np.errstate(invalid="ignore"):
        dev = np.where(mag >= EPS, err * 100.0 / np.where(mag >= EPS, mag, 1.0), err * 100.0)
    per_sample = dev.reshape(len(dev), -1).mean(axis=1)
    return Deviation(per_sample, p, t, k)


def top5(scores: ArrayLike, labels: ArrayLike) -> float:
    return top_k_accuracy(scores, labels, 5)


# name -> fn(pred, target) -> float, for loom.train(metrics=[...])
METRICS = {"accuracy": accuracy, "top5": top5, "mae": mae, "rmse": rmse, "mse": mse}

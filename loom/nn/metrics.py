"""Evaluation metrics on host NumPy arrays: classification scores, regression errors and the
deviation metric (7 buckets, quality score, worst samples), from loom/nn/metric_functions.py; full
reports and training curves from loom/nn/reports.py, as metrics.evaluate and metrics.plot_history.

Every function is a pure function of its arrays. Sums over samples use `math.fsum` (exact, then
rounded once), so a metric does not depend on the order or batching of the samples it sums.
Definitions: docs/evaluation.md.
"""
from __future__ import annotations

from .metric_functions import (
    BUCKET_EDGES,
    BUCKETS,
    EPS,
    METRICS,
    PROB_ATOL,
    WORST_K,
    Deviation,
    accuracy,
    confusion_matrix,
    deviation,
    mae,
    mse,
    precision_recall_f1,
    rmse,
    top5,
    top_k_accuracy,
)
from .reports import evaluate, plot_history

__all__ = ["BUCKET_EDGES", "BUCKETS", "EPS", "METRICS", "PROB_ATOL", "WORST_K", "Deviation", "accuracy",
           "confusion_matrix", "deviation", "evaluate", "mae", "mse", "plot_history", "precision_recall_f1", "rmse",
           "top5", "top_k_accuracy"]

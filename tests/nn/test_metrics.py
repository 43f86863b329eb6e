"""Evaluation metrics: values against hand-computed examples and written-out sklearn formulas, the
deviation metric's buckets and score, reports (summary, JSON, atomic write) and training-curve plots."""
import json
import math
import os
import sys

import numpy as np
import pytest

import loom
from loom import atomic
from loom.nn import metrics, reports

RNG = np.random.default_rng(1234)


# ------------------------------------------------------------ accuracy / top-k

def test_accuracy_hand_example_logits_probs_and_one_hot():
    logits = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 5.0], [4.0, 0.0, 1.0]])
    labels = np.array([0, 1, 1, 2])       # right, right, wrong, wrong
    assert metrics.accuracy(logits, labels) == 0.5
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert metrics.accuracy(probs, labels) == 0.5
    assert metrics.accuracy(logits, np.eye(3)[labels]) == 0.5                # one-hot targets
    assert metrics.accuracy(logits, labels.astype(np.float32)) == 0.5        # whole-number floats
    # [N, T, C] scores with [N, T] labels: every position is a sample
    assert metrics.accuracy(logits.reshape(2, 2, 3), labels.reshape(2, 2)) == 0.5


def test_accuracy_ties_go_to_lower_index_and_nan_reads_as_minus_inf():
    s = np.array([[1.0, 1.0, 0.0]])
    assert metrics.accuracy(s, [0]) == 1.0
    assert metrics.accuracy(s, [1]) == 0.0
    s = np.array([[np.nan, 1.0, 0.0]])
    assert metrics.accuracy(s, [1]) == 1.0
    assert metrics.accuracy(s, [0]) == 0.0


def test_top_k_ties_toward_lower_class_index():
    s = np.array([[0.5, 0.5, 0.5, 0.1]])
    assert metrics.top_k_accuracy(s, [1], 2) == 1.0     # ranks: 0, 1, 2, 3
    assert metrics.top_k_accuracy(s, [2], 2) == 0.0     # class 2 ties with 0 and 1 but comes after them
    assert metrics.top_k_accuracy(s, [2], 3) == 1.0
    assert metrics.top_k_accuracy(s, [3], 4) == 1.0
    assert metrics.top_k_accuracy(s, [3], 10) == 1.0    # k >= classes
    for bad in (0, -1, 1.5, True):
        with pytest.raises(loom.ConfigError):
            metrics.top_k_accuracy(s, [0], bad)


def _top_k_reference(scores, labels, k):
    # sort each row by descending score; a stable sort keeps equal scores in class-index order
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float(np.mean([labels[i] in order[i] for i in range(len(labels))]))


def test_top_k_matches_stable_sort_reference_with_many_ties():
    s = RNG.integers(0, 4, size=(300, 9)).astype(np.float64)     # small integers: ties everywhere
    y = RNG.integers(0, 9, size=300)
    for k in range(1, 10):
        assert metrics.top_k_accuracy(s, y, k) == _top_k_reference(s, y, k), k
    assert metrics.METRICS["top5"](s, y) == _top_k_reference(s, y, 5)
    assert metrics.METRICS["accuracy"](s, y) == _top_k_reference(s, y, 1)


def test_classification_input_validation_names_expected_and_got():
    s = np.zeros((4, 3))
    with pytest.raises(loom.ShapeError, match=r"expected shape \(4,\).*got \(5,\)"):
        metrics.accuracy(s, np.zeros(5, dtype=int))
    with pytest.raises(loom.ShapeError, match=r"expected integer class labels, got 0\.5"):
        metrics.accuracy(s, [0, 1, 0.5, 2])
    with pytest.raises(loom.ShapeError, match=r"expected class indices in \[0, 3\), got 3"):
        metrics.accuracy(s, [0, 1, 3, 2])
    with pytest.raises(loom.ShapeError, match=r"got -1"):
        metrics.accuracy(s, [0, -1, 1, 2])
    with pytest.raises(loom.ShapeError, match="at least 2 classes"):
        metrics.accuracy(np.zeros((4, 1)), [0, 0, 0, 0])
    with pytest.raises(loom.ShapeError, match="numeric"):
        metrics.accuracy(s, ["a", "b", "c", "d"])


# ------------------------------------------------------------ confusion matrix, precision/recall/F1

def test_confusion_matrix_known_case_from_labels_and_scores():
    y = np.array([0, 0, 1, 2, 2, 2])
    p = np.array([0, 1, 1, 2, 0, 2])
    want = np.array([[1, 1, 0], [0, 1, 0], [1, 0, 2]])
    cm = metrics.confusion_matrix(p, y, 3)
    assert cm.dtype == np.int64 and cm.shape == (3, 3)
    np.testing.assert_array_equal(cm, want)
    np.testing.assert_array_equal(metrics.confusion_matrix(np.eye(3)[p] * 5.0, y, 3), want)
    # streaming: matrices of batches add up to the matrix of the whole
    np.testing.assert_array_equal(metrics.confusion_matrix(p[:2], y[:2], 3)
                                  + metrics.confusion_matrix(p[2:], y[2:], 3), want)
    with pytest.raises(loom.ShapeError, match=r"expected class indices in \[0, 3\), got 3"):
        metrics.confusion_matrix([0, 3], [0, 1], 3)
    with pytest.raises(loom.ShapeError, match=r"expected shape \(2,\).*got \(3,\)"):
        metrics.confusion_matrix([0, 1, 2], [0, 1], 3)


def _prf_reference(y_true, y_pred):
    """sklearn's precision_recall_fscore_support(zero_division=0), written out: labels = those present
    in y_true or y_pred; macro = plain mean over them; weighted = support-weighted mean."""
    labels = sorted(set(y_true) | set(y_pred))
    per = {}
    for c in labels:
        tp = sum(t == c and p == c for t, p in zip(y_true, y_pred))
        fp = sum(t != c and p == c for t, p in zip(y_true, y_pred))
        fn = sum(t == c and p != c for t, p in zip(y_true, y_pred))
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        per[c] = (prec, rec, f1, tp + fn)
    macro = [sum(per[c][i] for c in labels) / len(labels) for i in range(3)]
    n = sum(per[c][3] for c in labels)
    weighted = [sum(per[c][i] * per[c][3] for c in labels) / n for i in range(3)]
    return per, macro, weighted


def _check_prf(got, y_true, y_pred):
    per, macro, weighted = _prf_reference(list(y_true), list(y_pred))
    for c, (prec, rec, f1, sup) in per.items():
        assert got["precision"][c] == pytest.approx(prec, abs=1e-12)
        assert got["recall"][c] == pytest.approx(rec, abs=1e-12)
        assert got["f1"][c] == pytest.approx(f1, abs=1e-12)
        assert got["support"][c] == sup
    for avg, ref in (("macro", macro), ("weighted", weighted)):
        assert [got[avg][m] for m in ("precision", "recall", "f1")] == pytest.approx(ref, abs=1e-12)


def test_precision_recall_f1_hand_example_with_a_class_never_predicted():
    y = [0, 0, 1, 1, 2, 2]
    p = [0, 1, 1, 1, 0, 1]            # class 2 is never predicted
    r = metrics.precision_recall_f1(metrics.confusion_matrix(p, y, 3))
    # by hand: class 0 P=1/2 R=1/2; class 1 P=2/4 R=1; class 2 P=0 (0/0) R=0
    np.testing.assert_allclose(r["precision"], [0.5, 0.5, 0.0])
    np.testing.assert_allclose(r["recall"], [0.5, 1.0, 0.0])
    np.testing.assert_allclose(r["f1"], [0.5, 2 / 3, 0.0])
    np.testing.assert_array_equal(r["support"], [2, 2, 2])
    assert r["macro"]["f1"] == pytest.approx((0.5 + 2 / 3) / 3)
    assert r["accuracy"] == 0.5
    _check_prf(r, y, p)


def test_precision_recall_f1_matches_sklearn_formulas_on_random_data():
    for _ in range(5):
        y = RNG.integers(0, 6, size=80)
        p = np.where(RNG.random(80) < 0.5, y, RNG.integers(0, 6, size=80))
        p[p == 5] = 4                                 # class 5 is never predicted
        y[y == 3] = 2                                 # class 3 never occurs: out of the macro average
        p[p == 3] = 2
        r = metrics.precision_recall_f1(metrics.confusion_matrix(p, y, 7))
        _check_prf(r, y, p)
    with pytest.raises(loom.ShapeError, match="square integer matrix"):
        metrics.precision_recall_f1(np.zeros((2, 3), dtype=int))


# ------------------------------------------------------------ regression

def test_mae_mse_rmse_hand_values_and_shapes():
    pred, target = np.array([1.0, 2.0, 3.0]), np.array([1.0, 4.0, 0.0])
    assert metrics.mae(pred, target) == 5 / 3
    assert metrics.mse(pred, target) == 13 / 3
    assert metrics.rmse(pred, target) == math.sqrt(13 / 3)
    assert metrics.METRICS["mae"](pred[:, None], target) == 5 / 3       # [N, 1] vs [N] is one shape
    assert set(metrics.METRICS) == {"accuracy", "top5", "mae", "rmse", "mse"}
    with pytest.raises(loom.ShapeError, match=r"expected shape \(3,\).*got \(4,\)"):
        metrics.mae(pred, np.zeros(4))
    with pytest.raises(loom.ShapeError, match=r"expected shape \(3, 2\).*got \(2, 3\)"):
        metrics.rmse(np.zeros((3, 2)), np.zeros((2, 3)))


def test_sums_do_not_depend_on_sample_order():
    # values over 16 orders of magnitude: a plain float sum rounds differently in another order
    p = RNG.normal(size=10_001) * 10.0 ** RNG.integers(-8, 8, 10_001)
    t = RNG.normal(size=10_001)
    for _ in range(3):
        perm = RNG.permutation(len(p))
        assert metrics.mae(p[perm], t[perm]) == metrics.mae(p, t)
        assert metrics.rmse(p[perm], t[perm]) == metrics.rmse(p, t)
        assert metrics.deviation(p[perm], t[perm]).mean == metrics.deviation(p, t).mean


# ------------------------------------------------------------ deviation

def test_deviation_buckets_at_exact_boundaries():
    target = np.full(11, 10.0)
    pred = np.array([10.0, 9.5, 11.0, 12.0, 13.0, 14.0, 15.0, 19.5, 20.0, 40.0, 5.0])
    #        deviation: 0    5    10    20    30    40    50    95   100   300   50
    d = metrics.deviation(pred, target)
    np.testing.assert_array_equal(d.per_sample, [0, 5, 10, 20, 30, 40, 50, 95, 100, 300, 50])
    counts = {b["range"]: b["count"] for b in d.buckets}
    assert counts == {"0-10%": 2, "10-20%": 1, "20-30%": 1, "30-40%": 1, "40-50%": 1,
                      "50-100%": 3, "100%+": 2}
    assert [b["range"] for b in d.buckets] == list(metrics.BUCKETS)
    assert d.buckets[0]["percent"] == 100 * 2 / 11
    np.testing.assert_array_equal(d.samples_in_bucket("10-20%"), [2])
    np.testing.assert_array_equal(d.samples_in_bucket("50-100%"), [6, 7, 10])
    np.testing.assert_array_equal(d.samples_in_bucket("100%+"), [8, 9])
    assert d.failures == 2
    with pytest.raises(loom.ConfigError):
        d.samples_in_bucket("10-20")


def test_deviation_quality_score_mean_and_worst_order():
    target = np.array([10.0, 10.0, 10.0, 10.0, 10.0])
    pred = np.array([12.0, 30.0, 10.0, 15.0, 30.0])     # 20, 200, 0, 50, 200
    d = metrics.deviation(pred, target, k=4)
    assert d.score == (80 + 0 + 100 + 50 + 0) / 5
    assert d.mean == (20 + 200 + 0 + 50 + 200) / 5
    worst = d.worst
    assert [w["index"] for w in worst] == [1, 4, 3, 0]     # largest first, ties by index
    assert worst[0] == {"index": 1, "prediction": 30.0, "target": 10.0, "deviation": 200.0}
    assert [w["index"] for w in d.worst_samples(2)] == [1, 4]


def test_deviation_zero_target_rule_and_per_sample_mean_over_outputs():
    # |target| < 1e-9: the deviation is 100 * |error| (an absolute error read as a fraction)
    d = metrics.deviation(np.array([0.5, 1e-10, 3.0]), np.array([0.0, 0.0, 2.0]))
    np.testing.assert_allclose(d.per_sample, [50.0, 1e-8, 50.0])
    # several outputs per sample: the mean of the element deviations
    d = metrics.deviation(np.array([[1.5, 2.0], [0.0, 3.0]]), np.array([[1.0, 2.0], [1.0, 1.0]]))
    np.testing.assert_array_equal(d.per_sample, [25.0, 150.0])
    assert d.worst[0]["prediction"] == [0.0, 3.0] and d.worst[0]["target"] == [1.0, 1.0]
    with pytest.raises(loom.ShapeError, match=r"expected shape \(2, 2\).*got \(3, 2\)"):
        metrics.deviation(np.zeros((2, 2)), np.zeros((3, 2)))


def test_deviation_nan_is_a_failure_scores_zero_and_ranks_worst():
    d = metrics.deviation(np.array([1.0, np.nan, 2.0]), np.array([1.0, 1.0, 1.0]))
    assert d.failures == 2                         # the NaN and the 100% sample
    assert d.score == 100 / 3
    assert math.isnan(d.mean)
    assert d.worst[0]["index"] == 1
    assert d.to_dict()["mean_deviation"] is None   # strict JSON
    json.dumps(d.to_dict(), allow_nan=False)


# ------------------------------------------------------------ evaluate() and reports

def test_evaluate_infers_the_task():
    logits = RNG.normal(size=(12, 4))
    assert metrics.evaluate(logits, RNG.integers(0, 4, 12)).to_dict()["task"] == "classification"
    assert metrics.evaluate(logits, RNG.normal(size=(12, 4))).to_dict()["task"] == "regression"
    # whole-number float labels (as read from CSV) with a class axis: classification
    assert metrics.evaluate(logits, np.array([0.0, 3.0] * 6)).to_dict()["task"] == "classification"
    # same shapes, or a single output column: regression, whatever the dtype
    assert metrics.evaluate(RNG.normal(size=12), RNG.normal(size=12)).to_dict()["task"] == "regression"
    assert metrics.evaluate(logits, np.ones((12, 4), dtype=int)).to_dict()["task"] == "regression"
    assert metrics.evaluate(logits[:, :1], np.ones(12, dtype=int)).to_dict()["task"] == "regression"
    with pytest.raises(loom.ShapeError, match=r"target: expected shape \(12, 4\).*got \(12,\)"):
        metrics.evaluate(logits, RNG.normal(size=12))      # fractional targets are not labels
    r = metrics.evaluate(logits, np.zeros(12, dtype=np.float32), task="classification")
    assert r.to_dict()["task"] == "classification"
    with pytest.raises(loom.ConfigError, match="task"):
        metrics.evaluate(logits, np.zeros(12, dtype=int), task="ranking")
    with pytest.raises(loom.ShapeError, match=r"expected integer class labels"):
        metrics.evaluate(logits, RNG.normal(size=12), task="classification")
    with pytest.raises(loom.ShapeError, match=r"expected shape \(12,\).*got \(11,\)"):
        metrics.evaluate(logits, np.zeros(11, dtype=int), task="classification")


def test_classification_report_values_and_worst_samples():
    logits = np.array([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0], [1000.0, 0.0, 0.0]])
    labels = np.array([0, 1, 0, 2])
    r = metrics.evaluate(logits, labels)
    assert r.input == "logits" and r.samples == 4 and r.classes == 3 and r.top5 is None
    assert r.accuracy == 0.5 and r.correct == 2
    np.testing.assert_array_equal(r.confusion, [[1, 0, 1], [0, 1, 0], [1, 0, 0]])
    # stable softmax: p(true) of the last row is exp(-1000) ~ 0, no overflow
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p_true = p[np.arange(4), labels]
    assert [w["index"] for w in r.worst] == list(np.argsort(p_true, kind="stable"))
    assert [w["p_true"] for w in r.worst] == pytest.approx(sorted(p_true))
    assert r.worst[0] == {"index": 3, "label": 2, "predicted": 0, "p_true": pytest.approx(0.0)}
    # probabilities are read as such (no second softmax)
    rp = metrics.evaluate(p, labels)
    assert rp.input == "probabilities"
    assert [w["p_true"] for w in rp.worst] == pytest.approx(sorted(p_true))
    # top-5 appears from 6 classes; worst keeps k = 10
    big = metrics.evaluate(RNG.normal(size=(50, 8)), RNG.integers(0, 8, 50))
    assert big.top5 is not None and len(big.worst) == 10


def test_classification_report_without_confusion_matrix_for_many_classes(monkeypatch):
    s, y = RNG.normal(size=(60, 7)), RNG.integers(0, 7, 60)
    full = metrics.evaluate(s, y)
    monkeypatch.setattr(reports, "CONFUSION_MAX_CLASSES", 3)
    lean = metrics.evaluate(s, y)
    assert lean.confusion is None and full.confusion is not None
    assert json.dumps(lean.to_dict()["macro"]) == json.dumps(full.to_dict()["macro"])
    assert lean.to_dict()["per_class"] == full.to_dict()["per_class"]


def test_summary_contains_the_key_numbers():
    logits = np.array([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    text = metrics.evaluate(logits, np.array([0, 1, 2, 2])).summary()
    assert "Accuracy       : 0.7500  (3/4)" in text
    assert "Samples        : 4" in text
    cm_at = text.index("Confusion matrix")
    cm_rows = [line.split() for line in text[cm_at:].splitlines()[2:5]]
    assert cm_rows == [["0", "1", "0", "0"], ["1", "0", "1", "0"], ["2", "1", "0", "1"]]
    assert "macro" in text and "weighted" in text and "p(true)" in text
    reg = metrics.evaluate(np.array([12.0, 30.0, 10.0, 15.0]), np.array([10.0, 10.0, 10.0, 10.0]))
    text = str(reg)
    assert "Quality score      : 57.50/100" in text               # (80 + 0 + 100 + 50) / 4
    assert "Average deviation  : 67.50%" in text
    assert "Failures (>= 100%) : 1 (25.0%)" in text
    assert "10-20%:      0 samples (  0.0%)\n" in text       # 20% deviation sits in 20-30%
    assert "20-30%:      1 samples ( 25.0%) ████████████\n" in text
    assert "1      1      10          30    200.00%" in text    # worst sample first
    assert "MAE                : 6.75" in text


def test_to_dict_is_json_and_round_trips():
    for r in (metrics.evaluate(RNG.normal(size=(30, 7)), RNG.integers(0, 7, 30)),
              metrics.evaluate(RNG.normal(size=(30, 2)), RNG.normal(size=(30, 2))),
              metrics.evaluate(np.array([1.0, np.nan]), np.array([1.0, 2.0]))):
        d = r.to_dict()
        assert json.loads(json.dumps(d, allow_nan=False)) == d
    d = metrics.evaluate(np.array([[2.0, 1.0], [0.0, 1.0]]), np.array([0, 0])).to_dict()
    assert d["accuracy"] == 0.5 and d["confusion_matrix"] == [[1, 1], [0, 0]]
    assert d["per_class"]["support"] == [2, 0] and type(d["per_class"]["precision"][0]) is float


def test_to_json_writes_atomically(tmp_path, monkeypatch):
    r = metrics.evaluate(np.array([1.0, 2.0]), np.array([1.0, 1.0]))
    path = tmp_path / "eval.json"
    r.to_json(path)
    assert json.loads(path.read_text()) == r.to_dict()
    path.write_text("old")

    def broken_replace(src, dst):
        raise OSError("disk gone")
    monkeypatch.setattr(atomic.os, "replace", broken_replace)   # the shared writer in loom/atomic.py
    with pytest.raises(OSError, match="disk gone"):
        r.to_json(path)
    assert path.read_text() == "old"                 # the old file is untouched
    assert os.listdir(tmp_path) == ["eval.json"]     # and no temp file is left behind
    monkeypatch.undo()
    r.to_json(str(path))
    assert json.loads(path.read_text()) == r.to_dict()
    assert os.listdir(tmp_path) == ["eval.json"]


# ------------------------------------------------------------ plot_history

HISTORY = {"loss": [1.0, 0.6, 0.4], "val_loss": [1.1, 0.7, 0.5],
           "accuracy": [0.5, 0.7, 0.8], "val_accuracy": [0.4, 0.6, 0.7], "mae": [3.0, 2.0, 1.0]}


def test_plot_history_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib (the 'plot' extra) is not installed")
    path = tmp_path / "curves.png"
    metrics.plot_history(HISTORY, path)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"

    class History:                  # what loom.train returns: the dict lives in .logs
        logs = HISTORY
    metrics.plot_history(History(), path)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    assert os.listdir(tmp_path) == ["curves.png"]


def test_plot_history_without_matplotlib_says_how_to_install(tmp_path, monkeypatch):
    for mod in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg", "matplotlib.ticker"):
        monkeypatch.setitem(sys.modules, mod, None)      # makes `import` raise ImportError
    with pytest.raises(loom.LoomError, match=r"pip install 'loom\[plot\]'"):
        metrics.plot_history(HISTORY, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_plot_history_rejects_bad_history(tmp_path):
    with pytest.raises(loom.ShapeError, match="history"):
        metrics.plot_history({}, tmp_path / "x.png")
    with pytest.raises(loom.ShapeError, match=r"history\['loss'\]"):
        metrics.plot_history({"loss": []}, tmp_path / "x.png")


def test_classification_report_shows_class_names():
    from loom.nn import metrics as m
    pred = np.array([[2.0, 0.1, 0.3], [0.1, 3.0, 0.2], [0.2, 0.1, 1.0], [1.0, 0.2, 0.1]])
    report = m.evaluate(pred, np.array([0, 1, 2, 1]), labels=["setosa", "versicolor", "virginica"])
    text = report.summary()
    assert "versicolor" in text and "virginica" in text
    assert report.to_dict()["labels"] == ["setosa", "versicolor", "virginica"]
    with pytest.raises(loom.ShapeError, match="labels: 2 class names for 3 classes"):
        m.evaluate(pred, np.array([0, 1, 2, 1]), labels=["a", "b"])

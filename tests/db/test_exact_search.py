"""loom.db.search: the filtered, certified exact search against a reference that scores every row
with loom.kernels.exact.sum (rounded to float64 then float32, ties to the smaller id), across
metrics, block boundaries, threshold pruning, many equal scores (the one-query path) and sums that
sit on a float32 rounding boundary (where the float64 shortcut must defer to exact.sum)."""
import numpy as np
import pytest

from loom import backend
from loom.db import VectorStore, search
from loom.errors import NumericError
from loom.kernels import exact

BE = backend.get("cpu")


def reference(matrix, ids, queries, k, metric):
    """Every row scored exactly, the best k by (score, id)."""
    out_ids, out_scores = [], []
    for q in queries.astype(np.float64):
        rows = matrix.astype(np.float64)
        terms = (rows - q) ** 2 if metric == "l2" else rows * q
        s = exact.sum(terms, axis=1).astype(np.float32)
        order = np.lexsort((ids, s if metric == "l2" else -s))[:k]
        out_ids.append(ids[order])
        out_scores.append(s[order])
    return np.array(out_ids), np.array(out_scores)


def run(matrix, ids, queries, k, metric):
    if metric == "cosine":
        matrix, queries = search.normalize(np, matrix), search.normalize(np, queries)
    got = search.search(BE, matrix, search.norms(np, matrix), ids, queries, k, metric)
    want = reference(matrix, ids, queries, min(k, len(matrix)), metric)
    assert np.array_equal(got[0][:, :want[0].shape[1]], want[0])
    assert np.array_equal(got[1][:, :want[1].shape[1]].view(np.int32), want[1].view(np.int32))
    return got


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 5 queries and 64 rows, so every path runs many times on small data."""
    monkeypatch.setattr(search, "blocks", lambda be: (5, 5 * 64))


@pytest.mark.parametrize("metric", ["dot", "cosine", "l2"])
def test_random_rows_match_reference(metric, small_blocks):
    rng = np.random.default_rng(3)
    matrix = rng.standard_normal((700, 12), dtype=np.float32) * rng.uniform(0.1, 3, (700, 1)).astype(np.float32)
    ids = rng.permutation(10_000)[:700].astype(np.int64)
    run(matrix, ids, rng.standard_normal((13, 12), dtype=np.float32), 9, metric)


@pytest.mark.parametrize("metric", ["dot", "cosine", "l2"])
def test_ties_go_to_the_smaller_id(metric, small_blocks):
    rng = np.random.default_rng(4)
    matrix = np.round(rng.standard_normal((600, 6))).astype(np.float32)   # many equal rows and scores
    ids = np.arange(600, dtype=np.int64)[::-1].copy()
    run(matrix, ids, np.round(rng.standard_normal((11, 6))).astype(np.float32), 7, metric)


def test_threshold_pruning_runs(monkeypatch, small_blocks):
    """Prune often (the threshold rises mid-stream): same answer."""
    calls = []
    prune = search._prune
    monkeypatch.setattr(search, "_prune", lambda *a: calls.append(1) or prune(*a))
    rng = np.random.default_rng(5)
    run(rng.standard_normal((3000, 8), dtype=np.float32), np.arange(3000, dtype=np.int64),
        rng.standard_normal((7, 8), dtype=np.float32), 3, "dot")
    assert len(calls) > 1


@pytest.mark.parametrize("metric", ["dot", "l2"])
def test_many_equal_scores_search_alone(monkeypatch, small_blocks, metric):
    """Every row the same: each query keeps every row, passes DENSE and is searched alone."""
    monkeypatch.setattr(search, "DENSE", 100)
    monkeypatch.setattr(search, "REFINE_CHUNK", 64)
    alone = []
    one = search._alone
    monkeypatch.setattr(search, "_alone", lambda *a: alone.append(1) or one(*a))
    rng = np.random.default_rng(6)
    matrix = np.tile(rng.standard_normal((1, 5), dtype=np.float32), (900, 1))
    matrix[::97] += 1                                    # a few rows score otherwise
    ids = rng.permutation(900).astype(np.int64)
    got = run(matrix, ids, rng.standard_normal((4, 5), dtype=np.float32), 6, metric)
    assert alone
    assert len(set(got[0][0].tolist())) == 6


def test_fewer_rows_than_k_are_padded():
    rng = np.random.default_rng(7)
    matrix = rng.standard_normal((3, 4), dtype=np.float32)
    ids, scores = search.search(BE, matrix, search.norms(np, matrix), np.arange(3, dtype=np.int64),
                                rng.standard_normal((2, 4), dtype=np.float32), 5, "l2")
    assert (ids[:, 3:] == -1).all() and np.isposinf(scores[:, 3:]).all()
    assert sorted(ids[0, :3].tolist()) == [0, 1, 2]


def test_rounding_boundary_defers_to_exact_sum(monkeypatch):
    """Sums on or a hair off a float32 midpoint: the float64 sum's interval straddles it, so exact.sum
    decides for those rows (and only those), giving the exact sum rounded to float64 then float32."""
    half_ulp = 2.0 ** -24
    terms = np.array([[1.0, half_ulp, 2.0 ** -80, -(2.0 ** -80), 2.0 ** -90],
                      [1.0, half_ulp, -(2.0 ** -90), 0.0, 0.0],
                      [1.0, 0.25, 0.5, 0.125, 0.0]])
    matrix = terms.astype(np.float32)           # scores are the dot product with a ones query
    assert np.array_equal(matrix.astype(np.float64), terms)
    q = np.ones((1, 5), dtype=np.float32)
    want = exact.sum(terms, axis=1).astype(np.float32)
    deferred = []
    real = exact.sum
    monkeypatch.setattr(exact, "sum", lambda x, **kw: deferred.append(len(x)) or real(x, **kw))
    got = search._exact_scores(BE, matrix, q, np.zeros(3, dtype=np.int64), np.arange(3), "dot")
    assert np.array_equal(got.view(np.int32), want.view(np.int32))
    assert deferred == [2]
    assert got.tolist() == [1.0, 1.0, 1.875]     # 1 + 2^-24 (+-2^-90) is 1 + 2^-24 in float64: ties to even


def test_huge_components_are_refused(tmp_path):
    with VectorStore.open(tmp_path / "s", dim=3, metric="dot") as s:
        with pytest.raises(NumericError, match=r"2\^50.*index \[0, 2\]|index \[0, 2\].*2\^50"):
            s.add([1], np.array([[1.0, 2.0, 3e15]], dtype=np.float32))
        s.add([1], np.ones((1, 3), dtype=np.float32))
        with pytest.raises(NumericError, match="queries"):
            s.search(np.array([0, -1e16, 0], dtype=np.float32), 1)

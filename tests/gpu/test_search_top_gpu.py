"""The one-pass GPU selection of loom.db.search (backend/cuda/search.py: threshold, collect, top,
probe_scores) against NumPy on fresh random inputs, and the searches built on it against the CPU's
answers bit for bit: overflowing and uncertified queries included."""
import numpy as np
import pytest

from loom import backend
from loom.db import search
from loom.db.ivf import IVFIndex

pytestmark = pytest.mark.gpu
cupy = pytest.importorskip("cupy")


def _cuda():
    return backend.get("cuda")


def _np_threshold(values, k, bound):
    """search._threshold of the k-th largest value (-inf below k values or at a k-th of -inf)."""
    if values.size < k:
        return np.float32(-np.inf)
    sk = np.sort(values)[::-1][k - 1]
    if sk == -np.inf:
        return np.float32(-np.inf)
    return search._threshold(np, np.float64(sk), np.float64(bound))


def _queries(rng, m, dim=24):
    """Queries of small integers: their norms are exact in any order of the sum, so the kernel's
    bound is search._bound's to the bit."""
    return rng.integers(-3, 4, (m, dim)).astype(np.float32)


@pytest.mark.parametrize("metric", ["dot", "l2"])
@pytest.mark.parametrize("shape,k", [((1, 1), 1), ((300, 7), 5), ((4096, 3), 40), ((20000, 2), 1)])
def test_threshold_of_columns_is_numpys(shape, k, metric):
    rng = np.random.default_rng(shape[0])
    x = rng.standard_normal(shape).astype(np.float32)
    x[rng.random(shape) < 0.1] *= -1e30                           # both signs, wide exponents
    x[::5] = 0.0
    x[1::7] = -0.0
    q = _queries(rng, shape[1])
    bound = search._bound(np, q, 2.5, metric)
    th = _cuda().search.threshold(cupy.asarray(x), None, cupy.asarray(q), cupy.asarray(np.float64(2.5)),
                                  metric == "l2", k).get()
    want = np.array([_np_threshold(x[:, i], k, bound[i]) for i in range(shape[1])], dtype=np.float32)
    assert th.tobytes() == want.tobytes()


def test_threshold_of_segments_is_numpys():
    rng = np.random.default_rng(7)
    lengths = np.array([0, 1, 3, 10, 500, 4097, 2, 60])
    x = rng.standard_normal(lengths.sum()).astype(np.float32)
    x[rng.random(x.size) < 0.3] = -np.inf                        # invalid rows
    seg = np.r_[0, np.cumsum(lengths)].astype(np.int64)
    q = _queries(rng, len(lengths), 300)
    bound = search._bound(np, q, 0.75, "dot")
    th = _cuda().search.threshold(cupy.asarray(x), cupy.asarray(seg), cupy.asarray(q),
                                  cupy.asarray(np.float64(0.75)), False, 3).get()
    want = np.array([_np_threshold(x[seg[i]:seg[i + 1]], 3, bound[i]) for i in range(len(lengths))],
                    dtype=np.float32)
    assert th.tobytes() == want.tobytes()


def test_collect_keeps_exactly_the_finite_scores_at_or_over_the_threshold():
    rng = np.random.default_rng(2)
    s = rng.standard_normal((50000, 6)).astype(np.float32)
    s[rng.random(s.shape) < 0.01] = -np.inf
    th = np.quantile(s[np.isfinite(s).all(axis=1)], 0.99, axis=0).astype(np.float32)
    th[5] = -np.inf                                               # everything finite: an overflow
    s[3] = th                                                     # equal to the threshold: kept
    rows, count = _cuda().search.collect(cupy.asarray(s), cupy.asarray(th))
    rows, count = rows.get(), count.get()
    cap = _cuda().search.CAPACITY
    for q in range(6):
        want = np.flatnonzero((s[:, q] >= th[q]) & np.isfinite(s[:, q]))
        assert count[q] == want.size
        if want.size <= cap:
            assert sorted(rows[q, :count[q]].tolist()) == want.tolist()
    assert count[5] > cap


def test_collect_segments_maps_entries_to_their_rows():
    rng = np.random.default_rng(3)
    seg = np.array([0, 0, 5, 900, 1000], dtype=np.int64)
    s = rng.standard_normal(1000).astype(np.float32)
    srow = rng.permutation(10 ** 6)[:1000].astype(np.int64)
    th = np.array([0, -np.inf, 1.0, 0.5], dtype=np.float32)
    rows, count = _cuda().search.collect_segments(cupy.asarray(s), cupy.asarray(srow), cupy.asarray(seg),
                                                  cupy.asarray(th))
    for q in range(4):
        part = s[seg[q]:seg[q + 1]]
        want = sorted(srow[seg[q]:seg[q + 1]][part >= th[q]].tolist())
        assert sorted(rows.get()[q, :count.get()[q]].tolist()) == want


@pytest.mark.parametrize("metric", ["dot", "l2"])
def test_top_ranks_by_exact_score_then_id(metric):
    """Candidates with repeated rows (equal scores: ties to the smaller id) and more candidates than k."""
    rng = np.random.default_rng(4)
    matrix = rng.standard_normal((3000, 40)).astype(np.float32)
    matrix[100:140] = matrix[99]
    ids = rng.permutation(10 ** 5)[:3000].astype(np.int64)
    q = np.concatenate([rng.standard_normal((3, 40)), matrix[99:100]]).astype(np.float32)
    counts = np.array([0, 5, 700, 60], dtype=np.uint32)
    cap = _cuda().search.CAPACITY
    rows = np.zeros((4, cap), dtype=np.int64)
    for i, c in enumerate(counts):
        rows[i, :c] = rng.permutation(3000)[:c] if i != 3 else np.arange(90, 150)
    k = 12
    got_ids, got_scores, status = _cuda().search.top(cupy.asarray(matrix), cupy.asarray(q), cupy.asarray(ids),
                                                    cupy.asarray(rows), cupy.asarray(counts), k, metric == "l2")
    assert status.tolist() == [0, 0, 0, 0]
    cpu = backend.get("cpu")
    for i, c in enumerate(counts):
        want_ids, want_scores = search.rescore(cpu, matrix, ids, q[i:i + 1], rows[i:i + 1, :c] if c else
                                               np.full((1, 1), -1), k, metric)
        assert got_ids[i].tolist() == want_ids[0].tolist()
        assert got_scores[i].tobytes() == want_scores[0].tobytes()


def test_top_reports_overflow_and_uncertified_queries():
    matrix = np.array([[1.0, 2.0 ** -24, 0.0], [1.0, 0.0, 0.0]], dtype=np.float32)   # 1 + 2^-24: a midpoint
    q = np.ones((3, 3), dtype=np.float32)
    cap = _cuda().search.CAPACITY
    rows = np.zeros((3, cap), dtype=np.int64)
    rows[1, :2] = [1, 0]
    counts = np.array([1, 2, cap + 1], dtype=np.uint32)
    _, _, status = _cuda().search.top(cupy.asarray(matrix), cupy.asarray(q), cupy.arange(2, dtype=cupy.int64),
                                     cupy.asarray(rows), cupy.asarray(counts), 1, False)
    assert status.tolist() == [1, 1, 2]


@pytest.mark.parametrize("metric", ["cosine", pytest.param("dot", marks=pytest.mark.smoke), "l2"])
def test_one_pass_search_is_the_cpus_with_overflows_and_midpoints(metric):
    """The one-pass path (one GEMM block) with a query whose ties overflow the slots and one whose
    scores are float32 midpoints: those go the general way; every answer is the CPU's, bit for bit."""
    rng = np.random.default_rng(5)
    v = rng.standard_normal((40000, 16)).astype(np.float32)
    v[5000:8000] = 4 * v[4999]                                   # 3,000 equal rows of the largest norm
    v[9000, :] = 0
    v[9000, :2] = [16.0, 2.0 ** -20]                             # . [1, 1, 0, ..]: 16 + 2^-20, a midpoint
    q = np.concatenate([rng.standard_normal((6, 16)).astype(np.float32), v[5000:5001],
                        np.eye(1, 16, dtype=np.float32) + np.eye(1, 16, 1, dtype=np.float32)])
    ids = rng.permutation(10 ** 6)[:len(v)].astype(np.int64)
    if metric == "cosine":
        v, q = search.normalize(np, v), search.normalize(np, q)
    calls = []
    real = search._top_on_device

    def spy(*args):
        out = real(*args)
        calls.append(None if out is None else out[2].tolist())
        return out
    want = search.search(backend.get("cpu"), v, search.norms(np, v), ids, q, 9, metric)
    dv = cupy.asarray(v)
    mp = pytest.MonkeyPatch()
    mp.setattr(search, "_top_on_device", spy)
    try:
        got = search.search(_cuda(), dv, search.norms(cupy, dv), cupy.asarray(ids), cupy.asarray(q), 9, metric)
    finally:
        mp.undo()
    assert calls and calls[0] is not None and 6 in calls[0]       # the tied query was left over
    assert metric != "dot" or 7 in calls[0]                       # so was the uncertified one
    assert got[0].tolist() == want[0].tolist()
    assert got[1].tobytes() == want[1].tobytes()


def _probed_truth(cpu_store_rows, ids, q, lists, assign, k, metric, allowed=None):
    """Each query's exact top k over the rows of its probed lists (the CPU's exact search)."""
    cpu = backend.get("cpu")
    out_ids, out_scores = [], []
    for i in range(q.shape[0]):
        rows = np.flatnonzero(np.isin(assign, lists[i]) & (True if allowed is None else allowed))
        a, b = search.search(cpu, cpu_store_rows, search.norms(np, cpu_store_rows), ids, q[i:i + 1], k, metric,
                             rows)
        out_ids.append(a[0])
        out_scores.append(b[0])
    return np.stack(out_ids), np.stack(out_scores)


@pytest.mark.parametrize("metric", ["cosine", "dot", "l2"])
def test_probed_search_is_the_exact_top_k_of_the_probed_lists(metric):
    """The GPU IVF path: the exact top k of each query's probed lists, with rows added after the
    list copy (pending), removed rows, and a filter."""
    rng = np.random.default_rng(6)
    centres = rng.standard_normal((30, 24)).astype(np.float32) * 3
    v = (centres[rng.integers(0, 30, 12000)] + rng.standard_normal((12000, 24))).astype(np.float32)
    q = (centres[rng.integers(0, 30, 40)] + rng.standard_normal((40, 24))).astype(np.float32)
    if metric == "cosine":
        v, q = search.normalize(np, v), search.normalize(np, q)
    ids = rng.permutation(10 ** 6)[:len(v)].astype(np.int64)
    be = _cuda()
    dv = cupy.asarray(v)
    index = IVFIndex.train(be, dv[:11000], metric, 32, seed=1)
    index.candidates(dv[:11000], cupy.asarray(q[:1]), 1, 1)        # the list copy, then pending rows
    index.add_rows(dv[11000:])
    allowed = rng.random(len(v)) < 0.8
    k, nprobe = 10, 4
    dq = cupy.asarray(q)
    lists = cupy.asnumpy(index._probes(dq, nprobe).reshape(len(q), nprobe))
    assign = cupy.asnumpy(index.assign)
    for mask in (None, allowed):
        got = search.probed(be, index, dv, search.norms(cupy, dv), cupy.asarray(ids), dq, k, nprobe, metric,
                            None if mask is None else cupy.asarray(mask))
        want = _probed_truth(v, ids, q, lists, assign, k, metric, mask)
        assert got[0].tolist() == want[0].tolist()
        assert got[1].tobytes() == want[1].tobytes()


def test_probed_search_searches_overflowing_queries_over_their_probed_rows():
    """3,000 equal rows in one list: the query on them overflows the slots and is searched exactly
    over its probed rows (ties to the smaller id), like every other query."""
    rng = np.random.default_rng(8)
    v = rng.standard_normal((9000, 8)).astype(np.float32)
    v[:3000] = v[0] * 3
    q = np.concatenate([v[:1], rng.standard_normal((3, 8)).astype(np.float32)])
    ids = rng.permutation(10 ** 5)[:len(v)].astype(np.int64)
    be = _cuda()
    dv = cupy.asarray(v)
    index = IVFIndex.train(be, dv, "dot", 8, seed=2)
    got = search.probed(be, index, dv, search.norms(cupy, dv), cupy.asarray(ids), cupy.asarray(q), 5, 2, "dot")
    lists = cupy.asnumpy(index._probes(cupy.asarray(q), 2).reshape(len(q), 2))
    want = _probed_truth(v, ids, q, lists, cupy.asnumpy(index.assign), 5, "dot")
    assert got[0].tolist() == want[0].tolist()
    assert got[1].tobytes() == want[1].tobytes()
    assert got[0][0].tolist() == np.sort(ids[:3000])[:5].tolist()

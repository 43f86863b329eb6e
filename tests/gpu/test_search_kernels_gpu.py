"""backend/cuda/search.py's kernels against loom.db.search's array-module path on fresh random inputs:
the same candidate set, the same score bits, the uncertified sums settled exactly."""
import numpy as np
import pytest

from loom import backend
from loom.db import search

pytestmark = pytest.mark.gpu
cupy = pytest.importorskip("cupy")


def _cpu_above(s, th, start):
    c, q = np.nonzero(s >= th[None, :])
    return sorted(zip(q.tolist(), (c + start).tolist(), s[c, q].view(np.int32).tolist()))


@pytest.mark.parametrize("shape", [(1, 1), (37, 5), (4099, 16), (20001, 3)])
def test_above_finds_exactly_the_entries_at_or_over_the_threshold(shape):
    rng = np.random.default_rng(shape[0])
    s = rng.standard_normal(shape).astype(np.float32)
    s[rng.random(shape) < 0.01] = np.nan
    th = np.quantile(np.nan_to_num(s), 0.97, axis=0).astype(np.float32)
    s[0, :] = th                                   # equal to the threshold: kept
    kernels = backend.get("cuda").search
    qi, r, sc = kernels.above(cupy.asarray(s), cupy.asarray(th), 1000, s.size)
    got = sorted(zip(qi.get().tolist(), r.get().tolist(), sc.get().view(np.int32).tolist()))
    assert got == _cpu_above(s, th, 1000)


def test_above_grows_its_buffer_when_most_entries_pass():
    s = np.random.default_rng(1).standard_normal((70000, 4)).astype(np.float32)
    th = np.full(4, -np.inf, dtype=np.float32)
    qi, r, sc = backend.get("cuda").search.above(cupy.asarray(s), cupy.asarray(th), 0, s.size)
    assert qi.size == s.size
    assert sorted(zip(qi.get().tolist(), r.get().tolist())) == [(q, c) for q in range(4) for c in range(70000)]


@pytest.mark.parametrize("metric", ["dot", "l2"])
@pytest.mark.parametrize("dim", [1, 7, 33, 384])
def test_exact_scores_are_the_array_paths_bits(metric, dim):
    rng = np.random.default_rng(dim)
    m = rng.standard_normal((300, dim)).astype(np.float32)
    m[::7] *= np.float32(2.0 ** 60)                 # wide exponents: cancellation in the sums
    m[::11] *= np.float32(2.0 ** -70)
    q = rng.standard_normal((9, dim)).astype(np.float32)
    qi = rng.integers(0, 9, 5000)
    r = rng.integers(0, 300, 5000)
    cpu, cuda = backend.get("cpu"), backend.get("cuda")
    want = search._exact_scores(cpu, m, q, qi, r, metric)
    got = search._exact_scores(cuda, cupy.asarray(m), cupy.asarray(q), cupy.asarray(qi), cupy.asarray(r), metric)
    assert got.get().tobytes() == want.tobytes()


@pytest.mark.smoke
def test_uncertified_sums_are_settled_exactly():
    """1 + 2^-24 is halfway between two float32s: no interval around a float64 sum certifies it,
    exact.sum rounds it to even (1.0); 1 + 2^-24 + 2^-52 (within the bound of the midpoint too) rounds up."""
    m = np.array([[1.0, 2.0 ** -24, 0.0], [1.0, 2.0 ** -24, 2.0 ** -52]], dtype=np.float32)
    q = np.ones((1, 3), dtype=np.float32)
    kernels = backend.get("cuda").search
    out, unsure = kernels.exact_scores(cupy.asarray(m), cupy.asarray(q), cupy.zeros(2, dtype=np.int64),
                                       cupy.arange(2, dtype=np.int64), False)
    assert unsure.get().tolist() == [0, 1]
    cuda = backend.get("cuda")
    got = search._exact_scores(cuda, cupy.asarray(m), cupy.asarray(q), cupy.zeros(2, dtype=np.int64),
                               cupy.arange(2, dtype=np.int64), "dot").get()
    assert got.tolist() == [1.0, float(np.nextafter(np.float32(1), np.float32(2)))]


def test_above_gives_up_past_its_limit():
    s = cupy.zeros((100000, 4), dtype=np.float32)
    th = cupy.zeros(4, dtype=np.float32)
    assert backend.get("cuda").search.above(s, th, 0, 399999) is None
    assert backend.get("cuda").search.above(s, th, 0, 400000)[0].size == 400000


@pytest.mark.parametrize("metric", ["dot", "l2"])
def test_blocks_keeping_too_many_rows_send_their_queries_alone(monkeypatch, metric):
    """KEPT low: a block of equal rows overflows it, its heaviest queries are searched alone; the
    CPU's ids and score bits all the same. Small GROUPS: blocks' thresholds from group maxima."""
    monkeypatch.setattr(search, "KEPT", 2000)
    monkeypatch.setattr(search, "GROUPS", 64 * 32)
    monkeypatch.setattr(search, "blocks", lambda be: (64, 64 * 1024))
    rng = np.random.default_rng(5)
    v = rng.standard_normal((5000, 16)).astype(np.float32)
    v[100:3100] = v[99]
    q = np.concatenate([rng.standard_normal((30, 16)), v[99:100] * 3, v[99:100]]).astype(np.float32)
    ids = rng.permutation(10 ** 6)[:len(v)].astype(np.int64)
    want = search.search(backend.get("cpu"), v, search.norms(np, v), ids, q, 5, metric)
    dv = cupy.asarray(v)
    got = search.search(backend.get("cuda"), dv, search.norms(cupy, dv), cupy.asarray(ids), cupy.asarray(q), 5,
                        metric)
    assert got[0].tolist() == want[0].tolist()
    assert got[1].tobytes() == want[1].tobytes()


@pytest.mark.parametrize("w,m,groups", [(11, 1, 5), (1001, 7, 64), (4099, 16, 4096), (70000, 3, 1000)])
def test_group_max_is_the_maximum_of_each_interleaved_group(w, m, groups):
    s = np.random.default_rng(w).standard_normal((w, m)).astype(np.float32)
    s[-1] = 1e30                                    # past the last whole group: not counted
    rows = w // groups * groups
    want = s[:rows].reshape(-1, groups, m).max(axis=0)
    got = backend.get("cuda").search.group_max(cupy.asarray(s), groups, 1).get()
    assert got.tobytes() == want.tobytes()


@pytest.mark.parametrize("w,m,groups,slices", [(1001, 7, 64, 3), (70000, 3, 1000, 70), (70000, 2, 100, None)])
def test_group_max_in_slices_is_the_maximum_of_each_part_of_a_group(w, m, groups, slices):
    s = np.random.default_rng(w).standard_normal((w, m)).astype(np.float32)
    depth = w // groups
    got = backend.get("cuda").search.group_max(cupy.asarray(s), groups, slices).get()
    parts = got.shape[0] // groups
    per = -(-depth // parts)
    assert got.shape == (parts * groups, m) and (parts - 1) * per < depth
    rows = s[:depth * groups].reshape(depth, groups, m)
    want = np.concatenate([rows[j * per:(j + 1) * per].max(axis=0) for j in range(parts)])
    assert got.tobytes() == want.tobytes()


def test_k_above_the_group_count_selects_from_the_scores_themselves(monkeypatch):
    """k larger than a block's group maxima: the threshold from the scores (no group can stand for
    k rows); the CPU's answer all the same."""
    monkeypatch.setattr(search, "GROUPS", 64)
    monkeypatch.setattr(search, "blocks", lambda be: (8, 8 * 4096))
    rng = np.random.default_rng(9)
    v = rng.standard_normal((9000, 12)).astype(np.float32)
    q = rng.standard_normal((4, 12)).astype(np.float32)
    ids = np.arange(len(v), dtype=np.int64)
    want = search.search(backend.get("cpu"), v, search.norms(np, v), ids, q, 300, "dot")
    dv = cupy.asarray(v)
    got = search.search(backend.get("cuda"), dv, search.norms(cupy, dv), cupy.asarray(ids), cupy.asarray(q), 300,
                        "dot")
    assert got[0].tolist() == want[0].tolist()
    assert got[1].tobytes() == want[1].tobytes()

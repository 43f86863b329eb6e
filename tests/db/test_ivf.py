"""loom.db.ivf (IVF-Flat) and loom.db.kmeans: recall against brute force in float64, exact-safe and deterministic k-means,
rows added and removed the way the store moves them, filters, files (round trip in another row order,
corrupt, truncated and mismatched), bad arguments."""
import numpy as np
import pytest

from loom.backend.cpu import CPU
from loom.db.ivf import IVFIndex
from loom.db.search import normalize
from loom.errors import ConfigError, FormatError

METRICS = ["cosine", "dot", "l2"]


def clustered(n, m, dim=32, centers=100, seed=0):
    """n rows and m queries drawn around the same centres."""
    rng = np.random.default_rng(seed)
    middle = 3 * rng.standard_normal((centers, dim))
    x = middle[rng.integers(0, centers, n + m)] + rng.standard_normal((n + m, dim))
    return x[:n].astype(np.float32), x[n:].astype(np.float32)


def stored(x, metric):
    """Rows as the store holds them (cosine: normalized)."""
    return normalize(np, x) if metric == "cosine" else x


def exact_scores(matrix, queries, metric):
    """float64 scores [m, n], larger better."""
    s = queries.astype(np.float64) @ matrix.astype(np.float64).T
    return 2 * s - (matrix.astype(np.float64) ** 2).sum(axis=1) if metric == "l2" else s


def top(scores, k, rows=None):
    """The k best row numbers per query (ties to the smaller row), among `rows` when given."""
    out = []
    for s in scores:
        r = np.arange(len(s)) if rows is None else rows
        out.append(r[np.lexsort((r, -s[r]))[:k]])
    return np.array(out)


def refined(cands, scores, k):
    """Each query's k best candidates by float64 score: what the store's exact refinement returns."""
    out = []
    for c, s in zip(cands, scores):
        c = c[c >= 0]
        out.append(c[np.lexsort((c, -s[c]))[:k]])
    return out


def recall(found, truth):
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / len(t) for f, t in zip(found, truth)]))


@pytest.fixture(scope="module")
def data():
    return clustered(20000, 200)


@pytest.mark.parametrize("metric", METRICS)
def test_recall_against_brute_force(data, metric):
    x, q = (stored(a, metric) for a in data)
    index = IVFIndex.train(CPU, x, metric, 64)
    scores = exact_scores(x, q, metric)
    truth = top(scores, 10)
    cands = index.candidates(x, q, 10, 8)
    assert cands.shape == (200, 36) and cands.dtype == np.int64
    assert recall(refined(cands, scores, 10), truth) >= 0.9
    every = index.candidates(x, q, 10, 64)
    assert recall(refined(every, scores, 10), truth) == 1.0
    assert (index.candidates(x, q, 10, 10**6) == every).all()      # nprobe past nlist: every list


@pytest.mark.parametrize("metric", METRICS)
def test_training_is_deterministic_and_assignment_exact(data, metric):
    x = stored(data[0][:8000], metric)
    a = IVFIndex.train(CPU, x, metric, 40, iters=5, seed=3)
    b = IVFIndex.train(CPU, x.copy(), metric, 40, iters=5, seed=3)
    assert a.centroids.dtype == np.float32 and a.centroids.shape == (40, 32)
    assert a.centroids.tobytes() == b.centroids.tobytes() and (a.assign == b.assign).all()
    other = IVFIndex.train(CPU, x, metric, 40, iters=5, seed=4)
    assert other.centroids.tobytes() != a.centroids.tobytes()
    # every row in the list of its best centroid by float64 scores (ties to the lower number)
    assert (a.assign == top(exact_scores(a.centroids, x, metric), 1)[:, 0]).all()
    if metric == "cosine":
        np.testing.assert_allclose(np.linalg.norm(a.centroids, axis=1), 1, rtol=1e-6)


class WideGemm:
    """The CPU backend with another GEMM (float64, rounded once): other float32 scores, within bounds."""
    xp = np

    def matmul(self, a, b):
        return (a.astype(np.float64) @ b.astype(np.float64)).astype(np.float32)

    def to_numpy(self, x):
        return np.asarray(x)


@pytest.mark.parametrize("metric", METRICS)
def test_centroids_do_not_depend_on_the_gemm_or_the_block_size(data, metric, monkeypatch):
    from loom.db import kmeans
    x = stored(data[0][:6000], metric)
    a = IVFIndex.train(CPU, x, metric, 30, iters=4)
    monkeypatch.setattr(kmeans, "ASSIGN_ROWS", 1000)
    b = IVFIndex.train(WideGemm(), x, metric, 30, iters=4)
    assert a.centroids.tobytes() == b.centroids.tobytes() and (a.assign == b.assign).all()


def test_near_ties_are_decided_exactly():
    # x.c1 = 1 + 2^-30 rounds to 1 = x.c0 in float32: the GEMM sees a tie, the exact score does not
    centroids = np.array([[1, 0], [1, 1], [1, 0]], dtype=np.float32)
    index = IVFIndex(CPU, "dot", centroids)
    index.add_rows(np.array([[1, 2.0 ** -30], [1, -2.0 ** -30], [1, 0], [0, 1]], dtype=np.float32))
    assert index.assign.tolist() == [1, 0, 0, 1]      # exact ties (row 2: c0 = c2 = c1) to the lower number
    # x.c0 = 16 > x.c1 = 8, but float32 sums lose the ones next to 2^24 (OpenBLAS: x.c0 = 0)
    cancel = IVFIndex(CPU, "dot", np.array([[1] * 32, [0, 1, 0, 0] * 8], dtype=np.float32))
    cancel.add_rows(np.array([[2.0 ** 24, 1, 1, -2.0 ** 24] * 8], dtype=np.float32))
    assert cancel.assign.tolist() == [0]
    l2 = IVFIndex(CPU, "l2", np.array([[1, 0], [0, 1]], dtype=np.float32))
    l2.add_rows(np.array([[0, 0], [0.5, 0.5], [1, 2.0 ** -24]], dtype=np.float32))
    assert l2.assign.tolist() == [0, 0, 0]


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_empty_lists_are_refilled(metric):
    # 200 distinct rows, each 20 times: the initial draw repeats rows, so lists start empty
    base = np.random.default_rng(3).standard_normal((200, 8)).astype(np.float32)
    x = stored(np.repeat(base, 20, axis=0), metric)
    a = IVFIndex.train(CPU, x, metric, 100)
    assert (a.list_sizes() > 0).all() and np.isfinite(a.centroids).all()
    assert a.centroids.tobytes() == IVFIndex.train(CPU, x, metric, 100).centroids.tobytes()


class Store:
    """The store's row bookkeeping: rows appended at the end, a removed row replaced by the last."""

    def __init__(self, x):
        self.matrix, self.ids = x.copy(), np.arange(len(x))

    def add(self, v, index):
        self.ids = np.r_[self.ids, np.arange(len(v)) + self.ids.max() + 1]
        self.matrix = np.concatenate([self.matrix, v])
        index.add_rows(v)

    def remove(self, i, index):
        r, last = int(np.flatnonzero(self.ids == i)[0]), len(self.ids) - 1
        self.matrix[r], self.ids[r] = self.matrix[last], self.ids[last]
        self.matrix, self.ids = self.matrix[:last], self.ids[:last]
        index.remove_row(r, last)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_added_and_removed_rows_follow_the_store(data, metric):
    x, q = (stored(a, metric) for a in data)
    rng = np.random.default_rng(5)
    store = Store(x[:12000])
    index = IVFIndex.train(CPU, store.matrix, metric, 48)
    index.candidates(store.matrix, q, 10, 6)                       # the list copy exists from here
    # few changes (pending rows and tombstones), then many (the copy is rebuilt)
    fresh_rows = iter(x[12000:])
    for added, removed in ((150, 80), (6000, 3000), (40, 500)):
        store.add(np.array([next(fresh_rows) for _ in range(added)]), index)
        for i in rng.choice(store.ids, removed, replace=False):
            store.remove(int(i), index)
        fresh = IVFIndex(CPU, metric, index.centroids)
        fresh.add_rows(store.matrix)
        assert index.n == len(store.ids) and (index.assign == fresh.assign).all()
        cands = index.candidates(store.matrix, q, 10, 6)
        assert ((cands >= -1) & (cands < len(store.ids))).all()
        for c in cands:                                            # no row twice
            assert len(set(c[c >= 0].tolist())) == (c >= 0).sum()
        scores = exact_scores(store.matrix, q, metric)
        want = refined(fresh.candidates(store.matrix, q, 10, 6), scores, 10)
        assert [a.tolist() for a in refined(cands, scores, 10)] == [a.tolist() for a in want]
        every = index.candidates(store.matrix, q, 10, 48)
        assert recall(refined(every, scores, 10), top(scores, 10)) == 1.0


def test_filtered_rows_are_never_returned(data):
    x, q = data
    index = IVFIndex.train(CPU, x, "dot", 32)
    allowed = np.random.default_rng(6).random(len(x)) < 0.3
    scores = exact_scores(x, q, "dot")
    cands = index.candidates(x, q, 10, 32, allowed=allowed)
    assert allowed[cands[cands >= 0]].all()
    assert recall(refined(cands, scores, 10), top(scores, 10, np.flatnonzero(allowed))) == 1.0
    few = np.zeros(len(x), dtype=bool)
    few[[5, 17, 12345]] = True
    got = index.candidates(x, q[:3], 10, 32, allowed=few)
    assert (np.sort(got[:, :3], axis=1) == [5, 17, 12345]).all() and (got[:, 3:] == -1).all()


def test_save_and_load_in_another_row_order(tmp_path, data):
    x, q = data
    index = IVFIndex.train(CPU, x, "l2", 32)
    ids = np.random.default_rng(7).choice(10**12, len(x), replace=False)
    index.save(tmp_path / "i.ivf", ids)
    order = np.random.default_rng(8).permutation(len(x))
    back = IVFIndex.load(CPU, tmp_path / "i.ivf", ids[order], dim=32, metric="l2")
    assert back.metric == "l2" and back.centroids.tobytes() == index.centroids.tobytes()
    assert (back.assign == index.assign[order]).all()
    got = back.candidates(x[order], q, 10, 4)
    want = index.candidates(x, q, 10, 4)
    scores = exact_scores(x, q, "l2")
    assert ([a.tolist() for a in refined(np.where(got >= 0, order[got], -1), scores, 10)]
            == [a.tolist() for a in refined(want, scores, 10)])


def test_bad_files_raise_format_error(tmp_path, data):
    x = data[0][:2000]
    index = IVFIndex.train(CPU, x, "cosine", 8)
    ids = np.arange(len(x)) * 3
    path = tmp_path / "i.ivf"
    index.save(path, ids)
    good = path.read_bytes()

    def fails(blob, match, **kw):
        bad = tmp_path / "bad.ivf"
        bad.write_bytes(blob)
        with pytest.raises(FormatError, match=match) as err:
            IVFIndex.load(CPU, bad, kw.pop("store_ids", ids), **kw)
        assert str(bad) in str(err.value)

    fails(good[:-5], "truncated")
    fails(good[:20], "truncated")
    fails(good + b"\0", "trailing")
    fails(b"NOTANIVF" + good[8:], "not a Loom IVF index")
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 1
    fails(bytes(flipped), "checksum")
    fails(good, "id 6001 of the store is not in it", store_ids=np.r_[ids[:-1], 6001])
    fails(good, "holds 2000 ids, the store 1999", store_ids=ids[:-1])
    fails(good, "not in it", store_ids=np.r_[ids, 7])
    fails(good, "metric cosine, but the store has metric l2", metric="l2")
    fails(good, "dim 32, but the store has dim 16", dim=16)
    assert IVFIndex.load(CPU, path, ids[::-1]).assign.tolist() == index.assign[::-1].tolist()


def test_bad_arguments_raise_config_error(data):
    x, q = data[0][:500], data[1]
    for kwargs, where, value in (({"nlist": 0}, "nlist", "0"), ({"nlist": 501}, "nlist", "501"),
                                 ({"nlist": 8.0}, "nlist", "8.0"), ({"metric": "cos"}, "metric", "'cos'"),
                                 ({"sample": 4}, "sample", "4"), ({"iters": -1}, "iters", "-1"),
                                 ({"seed": "x"}, "seed", "'x'")):
        args = {"metric": "l2", "nlist": 8, **kwargs}
        with pytest.raises(ConfigError, match=value) as err:
            IVFIndex.train(CPU, x, args.pop("metric"), args.pop("nlist"), **args)
        assert err.value.path == where
    index = IVFIndex.train(CPU, x, "l2", 8)
    for kwargs, where in (({"nprobe": 0}, "nprobe"), ({"k": 0}, "k"), ({"nprobe": True}, "nprobe"),
                          ({"keep": 3}, "keep")):
        args = {"k": 5, "nprobe": 2, **kwargs}
        with pytest.raises(ConfigError, match=str(kwargs[where])) as err:
            index.candidates(x, q, **args)
        assert err.value.path == where


def test_sums_updated_by_moved_rows_equal_sums_anew():
    from loom.db import kmeans
    x = (np.random.default_rng(9).standard_normal((5000, 12)) * np.logspace(-3, 3, 12)).astype(np.float32)
    labels = [np.random.default_rng(s).integers(0, 20, 5000) for s in range(3)]
    kept = kmeans._Sums(CPU, x)
    for lab in labels:
        assert kept.by_label(lab, 20).tobytes() == kmeans._Sums(CPU, x).by_label(lab, 20).tobytes()

"""VectorStore.build_index and search(exact=False): probing every list gives exact search's answer,
fewer lists a high recall; the index follows adds, deletes and upserts, is saved and reopened
(rows written after a save are assigned again), and bad use raises typed errors."""
import os
import shutil

import numpy as np
import pytest

from loom.db import VectorStore
from loom.errors import ConfigError, FormatError, StoreError


def clustered(n, dim, seed):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((32, dim)).astype(np.float32) * 3
    return (centres[rng.integers(0, 32, n)] + rng.standard_normal((n, dim))).astype(np.float32)


@pytest.fixture
def store(tmp_path):
    with VectorStore.open(tmp_path / "s", dim=16, metric="l2") as s:
        s.add(range(4000), clustered(4000, 16, 1), metadata=[{"g": i % 5} for i in range(4000)])
        yield s


def same(a, b):
    assert a[0].tolist() == b[0].tolist()
    assert a[1].tobytes() == b[1].tobytes()


@pytest.mark.parametrize("metric", ["cosine", "dot", "l2"])
def test_every_list_probed_is_exact_search(tmp_path, metric):
    with VectorStore.open(tmp_path / metric, dim=16, metric=metric) as s:
        s.add(range(3000), clustered(3000, 16, 2))
        s.build_index(nlist=20)
        q = clustered(25, 16, 3)
        same(s.search(q, 10, exact=False, nprobe=20), s.search(q, 10))


def test_recall_with_few_probes(store):
    store.build_index(nlist=32, nprobe=4)
    q = clustered(200, 16, 4)
    exact_ids, _ = store.search(q, 10)
    ids, scores = store.search(q, 10, exact=False)
    assert np.mean([len(np.intersect1d(a, b)) / 10 for a, b in zip(ids, exact_ids)]) > 0.9
    assert (np.diff(scores, axis=1) >= 0).all()          # l2: ascending, exact scores


def test_index_follows_writes(store):
    store.build_index(nlist=16)
    more = clustered(500, 16, 5)
    store.add(range(10_000, 10_500), more)
    store.delete(range(0, 4000, 3))
    store.upsert(range(1, 300, 3), clustered(100, 16, 6))
    q = np.concatenate([more[:5], clustered(10, 16, 7)])
    same(store.search(q, 8, exact=False, nprobe=16), store.search(q, 8))
    assert store.search(more[0], 1, exact=False)[0].tolist() == [10_000]


def test_index_saved_and_stale_file_reassigned(tmp_path):
    path = tmp_path / "s"
    x = clustered(3000, 16, 8)
    with VectorStore.open(path, dim=16, metric="dot") as s:
        s.add(range(2000), x[:2000])
        s.build_index(nlist=12, nprobe=3)
        shutil.copy(path / "ivf.index", tmp_path / "old.index")
        s.add(range(2000, 3000), x[2000:])
        s.delete(range(0, 100))
        q = clustered(10, 16, 9)
        want = s.search(q, 5, exact=False)
    with VectorStore.open(path) as s:                     # saved on close: the same lists
        assert s.index is not None and not s.index.reassigned
        same(s.search(q, 5, exact=False), want)
    shutil.copy(tmp_path / "old.index", path / "ivf.index")   # as if killed before the save
    with VectorStore.open(path, readonly=True) as r:
        assert r.index.reassigned and r.index.nlist == 12
        same(r.search(q, 5, exact=False), want)
        same(r.search(q, 5, exact=False, nprobe=12), r.search(q, 5))


def test_filters_with_the_index(store):
    store.build_index(nlist=16, nprobe=4)
    q = clustered(20, 16, 10)
    ids, _ = store.search(q, 10, filter={"g": {"in": [1, 3]}}, exact=False)
    assert set((ids[ids >= 0] % 5).tolist()) <= {1, 3}
    few = {"g": 2, "$and": [{"g": {"<": 3}}]}
    store.delete([i for i in range(4000) if i % 5 == 2 and i > 200])     # a selective filter: exact
    same(store.search(q, 10, filter=few, exact=False), store.search(q, 10, filter=few))


def test_bad_use(store, tmp_path):
    with pytest.raises(StoreError, match="build_index"):
        store.search(np.zeros(16), 3, exact=False)
    with pytest.raises(ConfigError, match="nlist"):
        store.build_index(nlist=5000)
    with pytest.raises(ConfigError, match="nprobe"):
        store.build_index(nlist=8, nprobe=0)
    store.build_index(nlist=8)
    with pytest.raises(ConfigError, match="nprobe"):
        store.search(np.zeros(16), 3, exact=False, nprobe=-1)
    store.drop_index()
    assert store.index is None and not os.path.exists(os.path.join(store.path, "ivf.index"))
    with pytest.raises(StoreError, match="build_index"):
        store.search(np.zeros(16), 3, exact=False)


def test_corrupt_index_file_is_named(tmp_path):
    path = tmp_path / "s"
    with VectorStore.open(path, dim=4, metric="l2") as s:
        s.add(range(50), clustered(50, 4, 11))
        s.build_index(nlist=4)
    data = bytearray((path / "ivf.index").read_bytes())
    data[-3] ^= 0xFF
    (path / "ivf.index").write_bytes(bytes(data))
    with pytest.raises(FormatError, match="ivf.index.*checksum"):
        VectorStore.open(path)
    (path / "ivf.index").write_bytes(bytes(data[:30]))
    with pytest.raises(FormatError, match="truncated"):
        VectorStore.open(path, readonly=True)


def test_single_adds_and_deletes_grow_the_index_in_place(store):
    """One vector at a time (the index's row arrays grow by doubling), interleaved with deletes."""
    store.build_index(nlist=16)
    more = clustered(40, 16, 12)
    for i, v in enumerate(more):
        store.add(20_000 + i, v)
        if i % 3 == 0:
            store.delete(i)
    assert store.index.n == len(store)
    q = np.concatenate([more[::7], clustered(5, 16, 13)])
    same(store.search(q, 6, exact=False, nprobe=16), store.search(q, 6))

"""loom.db.VectorStore: writes, reads and exact search against brute force in float64 (ties to the
smaller id), metadata filters, persistence and compaction, the writer's lock and readers, bad input and
corrupt files, and durability under kill -9 at random moments."""
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from loom import engine
from loom.db import VectorStore
from loom.errors import ConfigError, FormatError, NotFoundError, NumericError, ShapeError, StoreError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def brute(v, q, k, metric, ids):
    """The k best ids by float64 scores (cosine on the normalized float32 rows), ties to smaller id."""
    v, q = v.astype(np.float64), q.astype(np.float64)
    if metric == "cosine":
        v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-300)
        q = q / np.linalg.norm(q)
    s = -((v - q) ** 2).sum(axis=1) if metric == "l2" else v @ q
    order = np.lexsort((ids, -s))[:k]
    return ids[order], s[order]


@pytest.fixture
def store(tmp_path):
    with VectorStore.open(tmp_path / "s", dim=16, metric="dot") as s:
        yield s


@pytest.mark.parametrize("metric", ["cosine", "dot", "l2"])
def test_search_matches_brute_force(tmp_path, metric):
    rng = np.random.default_rng(1)
    v = rng.standard_normal((3000, 24)).astype(np.float32)
    ids = rng.permutation(10**6)[:3000]
    with VectorStore.open(tmp_path / metric, dim=24, metric=metric) as s:
        s.add(ids, v)
        queries = rng.standard_normal((7, 24)).astype(np.float32)
        got_ids, got_scores = s.search(queries, 10)
        assert got_ids.shape == (7, 10) and got_ids.dtype == np.int64 and got_scores.dtype == np.float32
        for i, q in enumerate(queries):
            want_ids, want_scores = brute(v, q, 10, metric, ids)
            assert got_ids[i].tolist() == want_ids.tolist()
            expect = -want_scores if metric == "l2" else want_scores
            np.testing.assert_allclose(got_scores[i], expect, rtol=1e-6, atol=1e-6)
        one_ids, one_scores = s.search(queries[3], 4)
        assert one_ids.tolist() == got_ids[3, :4].tolist() and one_scores.shape == (4,)


def test_ties_go_to_the_smaller_id_and_short_results_are_padded(store):
    rng = np.random.default_rng(2)
    base = rng.standard_normal(16).astype(np.float32)
    store.add([50, 7, 30, 9, 100], np.stack([base] * 4 + [-base]))
    ids, scores = store.search(base, 3)
    assert ids.tolist() == [7, 9, 30] and len(set(scores.tolist())) == 1
    ids, scores = store.search(base, 8)
    assert ids.tolist() == [7, 9, 30, 50, 100, -1, -1, -1]
    assert np.isneginf(scores[5:]).all()


def test_near_ties_many_equal_rows(tmp_path):
    """2,000 identical rows and one slightly better: the certification fails and the full re-search
    must still give the exact order."""
    rng = np.random.default_rng(3)
    base = rng.standard_normal(16).astype(np.float32)
    v = np.repeat(base[None], 2001, axis=0)
    v[1234] = np.nextafter(v[1234], np.float32(np.inf) * np.sign(v[1234]))   # a hair longer: a better dot
    with VectorStore.open(tmp_path / "t", dim=16, metric="dot") as s:
        s.add(np.arange(2001)[::-1], v)             # row r has id 2000 - r
        ids, _ = s.search(base, 3)
    assert ids.tolist() == [2000 - 1234, 0, 1]


def test_writes_reads_metadata_and_reopen(tmp_path):
    rng = np.random.default_rng(4)
    v = rng.standard_normal((20, 16)).astype(np.float32)
    with VectorStore.open(tmp_path / "s", dim=16, metric="l2") as s:
        s.add(range(20), v, metadata=[{"n": i, "tag": "odd" if i % 2 else "even"} for i in range(20)])
        s.upsert([3, 25], v[:2] * 2, metadata=[{"n": 99}, None])
        assert s.delete([4, 5, 12345]) == 2
        assert len(s) == 19
    with VectorStore.open(tmp_path / "s") as s:
        assert len(s) == 19 and s.metric == "l2" and s.dim == 16
        got, meta = s.get([3, 25, 0])
        assert got.tobytes() == np.concatenate([v[:2] * 2, v[:1]]).tobytes()
        assert meta == [{"n": 99}, None, {"n": 0, "tag": "even"}]
        with pytest.raises(NotFoundError, match="id 4 "):
            s.get([1, 4])
        assert s.ids().tolist() == sorted(set(range(20)) - {4, 5} | {25})


def test_filters(store):
    rng = np.random.default_rng(5)
    v = rng.standard_normal((200, 16)).astype(np.float32)
    meta = [{"year": 1590 + i % 30, "genre": ["comedy", "tragedy", "history"][i % 3], "nested": {"act": i % 5}}
            if i % 7 else None for i in range(200)]
    store.add(range(200), v, metadata=meta)
    q = rng.standard_normal(16).astype(np.float32)
    cases = [({"genre": "tragedy"}, lambda m: m["genre"] == "tragedy"),
             ({"year": {">=": 1600, "<": 1605}}, lambda m: 1600 <= m["year"] < 1605),
             ({"genre": {"in": ["comedy", "history"]}, "nested.act": {"!=": 2}},
              lambda m: m["genre"] != "tragedy" and m["nested"]["act"] != 2),
             ({"$or": [{"year": 1590}, {"genre": {"not in": ["comedy", "tragedy"]}}]},
              lambda m: m["year"] == 1590 or m["genre"] == "history"),
             ({"$not": {"genre": "comedy"}}, lambda m: m["genre"] != "comedy")]
    for predicate, keep in cases:
        # $not matches what its filter does not, vectors without metadata included
        allowed = np.array([i for i, m in enumerate(meta) if (keep(m) if m is not None else "$not" in predicate)])
        want, _ = brute(v[allowed], q, 10, "dot", allowed)
        assert store.search(q, 10, filter=predicate)[0].tolist() == want.tolist(), predicate
    assert store.search(q, 3, filter={"genre": "opera"})[0].tolist() == [-1, -1, -1]
    for bad, where in (({"year": {"~": 3}}, "filter.year"), ({"a b": 1}, "filter.a b"), ([], "filter"),
                       ({"x": {"in": []}}, "filter.x.in"), ({"x": [1]}, "filter.x.=="),
                       ({"x') OR 1=1 --": 1}, "filter.x')")):
        with pytest.raises(ConfigError, match=f"^{__import__('re').escape(where)}"):
            store.search(q, 3, filter=bad)


def test_bad_input(store, tmp_path):
    v = np.ones((2, 16), np.float32)
    with pytest.raises(ShapeError, match="dimension 16"):
        store.add([1, 2], np.ones((2, 15), np.float32))
    bad = v.copy()
    bad[1, 3] = np.nan
    with pytest.raises(NumericError, match=r"\[1, 3\]"):
        store.add([1, 2], bad)
    with pytest.raises(ConfigError, match="id 5 appears more than once"):
        store.add([5, 5], v)
    store.add([1, 2], v)
    with pytest.raises(ConfigError, match="id 2 is already in the store"):
        store.add([3, 2], v)
    assert len(store) == 2                          # nothing of the refused batch
    for ids in ([-1, 4], [1.5, 4], [True, 4], [2**63, 4]):
        with pytest.raises(ConfigError, match=r"ids\[0\]"):
            store.add(ids, v)
    for k in (0, -3, 2.0, True):
        with pytest.raises(ConfigError, match="^k:"):
            store.search(v[0], k)
    with pytest.raises(ConfigError, match="metric"):
        VectorStore.open(tmp_path / "m", dim=4, metric="hamming")
    with pytest.raises(ConfigError, match="dim"):
        VectorStore.open(tmp_path / "n")
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.search(v[0], 1)
    with pytest.raises(ConfigError, match="has dim 16, got 8"):
        VectorStore.open(store.path, dim=8)


def test_one_writer_many_readers(tmp_path):
    path = tmp_path / "s"
    v = np.random.default_rng(6).standard_normal((10, 8)).astype(np.float32)
    with VectorStore.open(path, dim=8) as writer:
        writer.add(range(5), v[:5])
        with pytest.raises(StoreError, match="another writer"):
            VectorStore.open(path)
        with VectorStore.open(path, readonly=True) as reader, VectorStore.open(path, readonly=True) as other:
            writer.add(range(5, 10), v[5:])
            assert len(reader) == 5 and len(other) == 5          # the state when they opened
            reader.refresh()
            assert len(reader) == 10
            with pytest.raises(StoreError, match="read-only"):
                reader.add([11], v[:1])
    with VectorStore.open(path) as again:                       # the lock went with the writer
        assert len(again) == 10


def test_compaction_reclaims_and_keeps_everything(tmp_path):
    rng = np.random.default_rng(7)
    v = rng.standard_normal((500, 16)).astype(np.float32)
    q = rng.standard_normal(16).astype(np.float32)
    with VectorStore.open(tmp_path / "s", dim=16, metric="dot") as s:
        s.add(range(500), v, metadata=[{"i": i} for i in range(500)])
        s.delete(range(0, 500, 2))
        s.upsert([1], v[:1])
        before = s.search(q, 20)
        folder = tmp_path / "s" / "segments"
        size = sum(f.stat().st_size for f in folder.iterdir())
        reclaimed = s.compact()
        assert reclaimed > 0 and sum(f.stat().st_size for f in folder.iterdir()) == size - reclaimed
        assert s.compact() == 0
    with VectorStore.open(tmp_path / "s") as s:
        after = s.search(q, 20)
        assert after[0].tolist() == before[0].tolist() and after[1].tobytes() == before[1].tobytes()
        got, meta = s.get([1, 3, 499])
        assert got.tobytes() == np.stack([v[0], v[3], v[499]]).tobytes()
        assert meta == [None, {"i": 3}, {"i": 499}]         # the upsert replaced 1's metadata too


def test_corrupt_and_truncated_segments(tmp_path):
    path = tmp_path / "s"
    with VectorStore.open(path, dim=4) as s:
        s.add(range(10), np.arange(40, dtype=np.float32).reshape(10, 4) + 1)
    seg = next((path / "segments").iterdir())
    data = bytearray(seg.read_bytes())
    data[36 * 3 + 25] ^= 0x40                       # a bit of record 3's vector
    seg.write_bytes(bytes(data))
    with pytest.raises(FormatError, match=r"id 3 at byte 108 is corrupt \(checksum mismatch\)"):
        VectorStore.open(path)
    seg.write_bytes(bytes(data[:36 * 9 + 10]))
    with pytest.raises(FormatError, match="truncated"):
        VectorStore.open(path)


def test_capture_from_a_unit_and_an_array(tmp_path):
    rng = np.random.default_rng(8)
    v = rng.standard_normal((6, 4)).astype(np.float32)
    with VectorStore.open(tmp_path / "s", dim=4, metric="dot") as s, \
            engine.boot(device="cpu", registers=4, globals=64, dtype=np.float32) as unit:
        unit.write(8, v.reshape(-1), buffer="globals")
        s.capture(unit, 8, 6, range(6))
        s.capture(v, 2, 3, [10, 11, 12])
        got, _ = s.get([0, 5, 10, 12])
        assert got.tobytes() == np.stack([v[0], v[5], v[2], v[4]]).tobytes()
        with pytest.raises(ConfigError, match="outside"):
            s.capture(v, 4, 3, [20, 21, 22])


CHILD = r"""
import sys, numpy as np
from loom.db import VectorStore
path, seed = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(seed)
s = VectorStore.open(path, dim=8, metric="dot")
print("open", flush=True)
live = sorted(s.ids().tolist())
nxt = max(live, default=-1) + 1
while True:
    op = rng.random()
    if op < 0.6 or not live:
        ids = list(range(nxt, nxt + int(rng.integers(1, 20))))
        print("begin add", *ids, flush=True)
        s.add(ids, np.tile(np.array(ids, np.float32)[:, None], (1, 8)), metadata=[{"v": i} for i in ids])
        nxt += len(ids)
        live += ids
    elif op < 0.75:
        i = int(rng.choice(live))
        print("begin upsert", i, flush=True)
        s.upsert([i], np.full((1, 8), -i, np.float32), metadata=[{"v": -i}])
    elif op < 0.95:
        ids = sorted(int(i) for i in rng.choice(live, min(len(live), 5), replace=False))
        print("begin delete", *ids, flush=True)
        s.delete(ids)
        live = sorted(set(live) - set(ids))
    else:
        print("begin compact", flush=True)
        s.compact()
    print("done", flush=True)
"""


def test_acknowledged_writes_survive_kill_9(tmp_path):
    """A child adds, upserts, deletes and compacts in a loop, saying what it starts and when it is
    acknowledged; killed at random moments, again and again, the store reopens with every acknowledged
    change and nothing else but the one operation in flight (all of it or none), every vector checked,
    and search still matches brute force."""
    path = str(tmp_path / "s")
    state: dict[int, float] = {}                    # id -> the value each of its vector's entries holds
    rng = random.Random(9)
    env = dict(os.environ, PYTHONPATH=REPO)
    acknowledged_ops = 0
    for round_ in range(8):
        child = subprocess.Popen([sys.executable, "-c", CHILD, path, str(round_)], stdout=subprocess.PIPE,
                                 env=env, text=True)
        # (the kill waits for the child's start-up, however slow the machine, then a random moment of its loop)
        assert child.stdout.readline() == "open\n", f"round {round_}: the child did not open the store"
        time.sleep(0.3 + rng.random() * 1.5)
        child.send_signal(signal.SIGKILL)
        out, _ = child.communicate()
        pending = None
        for line in out.splitlines():
            if line == "done":
                op, ids = pending
                acknowledged_ops += 1
                if op == "add":
                    state.update({i: float(i) for i in ids})
                elif op == "upsert":
                    state[ids[0]] = float(-ids[0])
                elif op == "delete":
                    for i in ids:
                        del state[i]
                pending = None
            else:
                _, op, *ids = line.split()
                pending = (op, [int(i) for i in ids])
        with VectorStore.open(path, readonly=True) as s:
            present = set(s.ids().tolist())
            op, ids = pending if pending else ("none", [])
            missing, extra = set(state) - present, present - set(state)
            assert not missing or (op == "delete" and missing == set(ids)), (round_, op, missing)
            assert not extra or (op == "add" and extra == set(ids)), (round_, op, extra)
            got, meta = s.get(sorted(present))
            for i, row, m in zip(sorted(present), got, meta):
                want = state.get(i, float(i))
                if op == "upsert" and i == ids[0] and row[0] == -i:
                    want = float(-i)                  # the upsert in flight committed
                assert (row == want).all() and m == {"v": want}, (round_, i, row, m)
                state[i] = want
            for i in missing:
                del state[i]
            q = np.arange(1, 9, dtype=np.float32)
            found, _ = s.search(q, 5)
            keys = sorted(state)
            want = [keys[j] for j in np.lexsort((keys, [-state[i] for i in keys]))[:5]]
            assert found[:len(want)].tolist() == want
    assert acknowledged_ops > 20, f"only {acknowledged_ops} operations were acknowledged"

"""StoreCollective (loom/distributed/store_collective.py): all-reduce equal bit for bit to NumPy's
reduction in rank order on every rank, broadcast, checks that refuse mismatched calls, and keys of
finished calls cleaned up."""
import sys
from functools import reduce
from pathlib import Path

import numpy as np
import pytest

from loom.distributed.launch import spawn
from loom.distributed.store_collective import StoreCollective
from loom.errors import DistributedError

from .worlds import on_threads, world

RANKS_MAIN = str(Path(__file__).with_name("ranks_main.py"))


def test_all_reduce_over_three_processes_is_numpy_in_rank_order(tmp_path):
    assert spawn([sys.executable, RANKS_MAIN, "collective", str(tmp_path)], 3, timeout=60.0, grace=2.0) == [0, 0, 0]
    ranks = [np.load(tmp_path / f"rank{r}.npz") for r in range(3)]
    for dtype in ("float32", "float64", "int64", "int32"):
        for op, fn in (("sum", np.add), ("max", np.maximum)):
            inputs = [saved[f"in_{op}_{dtype}"] for saved in ranks]
            want = reduce(fn, inputs)                  # ((x0 op x1) op x2)
            for r, saved in enumerate(ranks):
                got = saved[f"out_{op}_{dtype}"]
                assert got.dtype == np.dtype(dtype) and got.shape == (7, 37)
                assert got.tobytes() == want.tobytes(), f"rank {r}: all_reduce {op} {dtype}"
    for saved in ranks:
        assert saved["broadcast"].tolist() == (np.arange(6.0) * 2).tolist()   # root 1's array
        assert saved["num_keys"] <= 3 * 3            # 200 calls left at most a few calls' keys behind


def test_all_reduce_in_threads_matches_the_rank_order_fold():
    rng = np.random.default_rng(5)
    inputs = [(rng.standard_normal(1000) * 10.0 ** rng.integers(-6, 7, 1000)).astype(np.float32) for _ in range(3)]
    with world(3) as stores:
        def rank(s):
            x = inputs[s.rank].copy()
            StoreCollective(s, s.rank, 3).all_reduce(x, "sum")
            return x
        results = on_threads(stores, rank)
    want = (inputs[0] + inputs[1]) + inputs[2]
    assert all(r.tobytes() == want.tobytes() for r in results)


def test_broadcast_non_contiguous_and_other_dtypes():
    with world(3) as stores:
        def rank(s):
            coll = StoreCollective(s, s.rank, 3)
            a = np.full((4, 6), s.rank, dtype=np.uint8)[:, ::2]     # a strided view, filled in place
            coll.broadcast(a, root=2)
            b = np.array(s.rank * 1.5, dtype=np.float16)
            coll.broadcast(b)
            coll.barrier()
            return a, b
        for a, b in on_threads(stores, rank):
            assert (a == 2).all() and a.shape == (4, 3) and float(b) == 0.0


def test_ranks_that_disagree_raise_naming_each_call():
    with world(2) as stores:
        shapes = [(3,), (4,)]
        results = on_threads(stores, lambda s: StoreCollective(s, s.rank, 2).all_reduce(
            np.zeros(shapes[s.rank], np.float32), "sum"))
        for exc in results:
            assert isinstance(exc, DistributedError)
            assert ("disagree on collective call #1: rank 0: all_reduce(op 'sum', shape (3,), dtype float32); "
                    "rank 1: all_reduce(op 'sum', shape (4,), dtype float32)") in str(exc)

        def mixed(s):
            coll = StoreCollective(s, s.rank, 2)
            if s.rank == 0:
                coll.all_reduce(np.zeros(2, np.int64), "max")
            else:
                coll.broadcast(np.zeros(2, np.int64), root=1)
        for exc in on_threads(stores, mixed):
            assert isinstance(exc, DistributedError) and "broadcast(root 1, shape (2,), dtype int64)" in str(exc)


def test_bad_arguments_raise_before_any_communication():
    with world(1) as (s,):
        coll = StoreCollective(s, 0, 1)
        with pytest.raises(ValueError, match="all_reduce op 'mean' is not one of"):
            coll.all_reduce(np.zeros(3, np.float32), "mean")
        with pytest.raises(TypeError, match="does not support dtype float16"):
            coll.all_reduce(np.zeros(3, np.float16), "sum")
        with pytest.raises(TypeError, match="takes a NumPy array, got list"):
            coll.all_reduce([1.0], "sum")
        frozen = np.zeros(3)
        frozen.flags.writeable = False
        with pytest.raises(ValueError, match="read-only"):
            coll.all_reduce(frozen, "sum")
        with pytest.raises(ValueError, match="broadcast root 1 is not a rank"):
            coll.broadcast(np.zeros(3), root=1)
        with pytest.raises(ValueError, match="does not match its store"):
            StoreCollective(s, 0, 2)
        x = np.arange(4, dtype=np.int32)
        coll.all_reduce(x, "sum")                      # a world of one: the identity
        assert x.tolist() == [0, 1, 2, 3]
        coll.close()
        with pytest.raises(DistributedError, match="closed"):
            coll.barrier()


def test_a_missing_rank_is_named_on_timeout():
    with world(3) as stores:
        results = on_threads(stores[:2], lambda s: StoreCollective(s, s.rank, 3, timeout=0.5).all_reduce(
            np.ones(2), "sum"))
        assert all(isinstance(e, DistributedError) and "ranks [2] of 3 did not arrive" in str(e) for e in results)

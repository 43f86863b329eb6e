"""The child program of the tests of loom.distributed: `python ranks_main.py SCENARIO [ARGS]`, run as
every rank of a world by spawn() (which sets RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), except
`serve PORT`, which the tests start by hand as a lone rank 0 to kill it. Exits 0 when its checks pass."""
import os
import signal
import sys
import time
from pathlib import Path


def _store(timeout: float = 10.0):
    from loom.distributed.store import Store
    return Store(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), int(os.environ["RANK"]),
                 int(os.environ["WORLD_SIZE"]), timeout=timeout)


def _write_pid(folder: str, rank: int) -> None:
    """This rank's pid in folder/RANK.pid, written whole (loom.atomic): a test that sees the file may read it at once."""
    from loom.atomic import write_bytes
    write_bytes(Path(folder, f"{rank}.pid"), str(os.getpid()).encode())


def env(rank: int, size: int, args: list[str]) -> int:
    assert os.environ["LOCAL_RANK"] == str(rank) and os.environ["LOCAL_WORLD_SIZE"] == str(size)
    assert os.environ["MASTER_ADDR"] == "127.0.0.1" and int(os.environ["MASTER_PORT"]) > 0
    assert os.environ.get("LOOM_TEST_EXTRA") in (None, "yes")
    print(f"hello from rank {rank} of {size}")
    print(f"err line {rank}", file=sys.stderr)
    return 0


def fail(rank: int, size: int, args: list[str]) -> int:
    _write_pid(args[0], rank)
    if rank == 1:
        time.sleep(0.3)
        return 3
    time.sleep(60)
    return 0


def hang(rank: int, size: int, args: list[str]) -> int:
    _write_pid(args[0], rank)
    if rank == size - 1:
        time.sleep(60)
    return 0


def sigkill(rank: int, size: int, args: list[str]) -> int:
    if rank == 1:
        time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)
    return 0


def store(rank: int, size: int, args: list[str]) -> int:
    with _store() as s:
        s.set(f"key/{rank}", str(rank).encode())
        for _ in range(3):
            s.barrier("start")
        assert s.exchange("who", f"r{rank}".encode()) == [f"r{r}".encode() for r in range(size)]
        s.add("counter", rank + 1)
        s.barrier("added")
        assert int(s.get("counter")) == size * (size + 1) // 2
        assert s.get(f"key/{(rank + 1) % size}") == str((rank + 1) % size).encode()
        s.barrier("end")
    return 0


def collective(rank: int, size: int, args: list[str]) -> int:
    """All-reduce random data of every supported dtype; save inputs and outputs for the test to check."""
    import numpy as np

    from loom.distributed.store_collective import StoreCollective
    rng = np.random.default_rng(1000 + rank)
    saved = {}
    with _store() as s:
        coll = StoreCollective(s, rank, size)
        for dtype in ("float32", "float64", "int64", "int32"):
            for op in ("sum", "max"):
                if dtype.startswith("float"):    # magnitudes that differ per rank make the order matter
                    x = (rng.standard_normal((7, 37)) * 10.0 ** rng.integers(-3, 4, (7, 37))).astype(dtype)
                else:
                    x = rng.integers(-2**30, 2**30, (7, 37)).astype(dtype)
                saved[f"in_{op}_{dtype}"] = x.copy()
                coll.all_reduce(x, op)
                saved[f"out_{op}_{dtype}"] = x
        b = np.arange(6, dtype=np.float64) * (rank + 1)
        coll.broadcast(b, root=1)
        saved["broadcast"] = b
        for i in range(200):                     # many calls: keys of finished calls must not pile up
            y = np.array([rank + i], dtype=np.int64)
            coll.all_reduce(y, "sum")
            assert y[0] == size * i + size * (size - 1) // 2, (i, y)
        saved["num_keys"] = np.array(s.num_keys())
        coll.barrier()
        np.savez(Path(args[0], f"rank{rank}.npz"), **saved)
        coll.close()
        s.barrier("end")
    return 0


def serve(port: int) -> int:
    from loom.distributed.store import Store
    Store("127.0.0.1", port, 0, 2, timeout=10.0)
    print("ready", flush=True)
    time.sleep(60)
    return 0


if __name__ == "__main__":
    scenario, rest = sys.argv[1], sys.argv[2:]
    if scenario == "serve":
        sys.exit(serve(int(rest[0])))
    sys.exit(globals()[scenario](int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), rest))

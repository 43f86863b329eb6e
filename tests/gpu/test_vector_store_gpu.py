"""loom.db.VectorStore on the GPU: vectors in GPU memory, the CPU store's ids and score bits for every
metric (ties, filters and the full re-search included), and capture from a CUDA unit and a CuPy array
without the host."""
import numpy as np
import pytest

from loom import engine
from loom.db import VectorStore

pytestmark = pytest.mark.gpu
cupy = pytest.importorskip("cupy")


@pytest.mark.parametrize("metric", ["cosine", "dot", "l2"])
def test_gpu_store_gives_the_cpu_stores_answers(tmp_path, metric):
    rng = np.random.default_rng(1)
    v = rng.standard_normal((70000, 32)).astype(np.float32)      # more than one block of rows
    v[100:400] = v[99]                                            # a run of exact ties
    meta = [{"g": i % 3} for i in range(len(v))]
    with VectorStore.open(tmp_path / metric, dim=32, metric=metric) as cpu:
        cpu.add(range(len(v)), v, metadata=meta)
    with VectorStore.open(tmp_path / metric, readonly=True) as cpu, \
            VectorStore.open(tmp_path / metric, device="cuda", readonly=True) as gpu:
        assert isinstance(gpu._matrix, cupy.ndarray)
        queries = np.concatenate([rng.standard_normal((9, 32)).astype(np.float32), v[99:100]])
        for kwargs in ({}, {"filter": {"g": {"in": [0, 2]}}}):
            a, b = cpu.search(queries, 12, **kwargs), gpu.search(queries, 12, **kwargs)
            assert a[0].tolist() == b[0].tolist(), kwargs
            assert a[1].tobytes() == b[1].tobytes(), kwargs


def test_capture_from_a_cuda_unit_and_a_cupy_array(tmp_path):
    rng = np.random.default_rng(2)
    v = rng.standard_normal((5, 8)).astype(np.float32)
    with VectorStore.open(tmp_path / "s", dim=8, metric="dot", device="cuda") as s, \
            engine.boot(device="cuda", registers=4, globals=64, dtype=np.float32) as unit:
        unit.write(0, cupy.asarray(v.reshape(-1)), buffer="globals")
        s.capture(unit, 0, 5, range(5))
        s.capture(cupy.asarray(v), 1, 2, [7, 8])
        got, _ = s.get([0, 4, 7, 8])
        assert got.tobytes() == np.stack([v[0], v[4], v[1], v[2]]).tobytes()
        assert s.search(v[4], 1)[0].tolist() == [4]


@pytest.mark.parametrize("metric", ["cosine", pytest.param("dot", marks=pytest.mark.smoke), "l2"])
def test_every_search_path_gives_the_cpus_bits(monkeypatch, metric):
    """Small blocks (many blocks, prunes and a first threshold per block of queries) and a low
    DENSE (queries searched alone): the CPU's ids and score bits."""
    from loom import backend
    from loom.db import search
    monkeypatch.setattr(search, "blocks", lambda be: (7, 7 * 256))
    monkeypatch.setattr(search, "DENSE", 300)
    rng = np.random.default_rng(3)
    v = rng.standard_normal((6000, 24)).astype(np.float32)
    v[1000:2500] = v[999]                                        # 1,500 equal rows: dense queries
    q = np.concatenate([rng.standard_normal((20, 24)).astype(np.float32), v[999:1000] * 2])
    ids = rng.permutation(10 ** 6)[:len(v)].astype(np.int64)
    if metric == "cosine":
        v, q = search.normalize(np, v), search.normalize(np, q)
    want = search.search(backend.get("cpu"), v, search.norms(np, v), ids, q, 11, metric)
    dv = cupy.asarray(v)
    got = search.search(backend.get("cuda"), dv, search.norms(cupy, dv), cupy.asarray(ids), cupy.asarray(q), 11,
                        metric)
    assert got[0].tolist() == want[0].tolist()
    assert got[1].tobytes() == want[1].tobytes()


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_gpu_index_is_the_cpus(tmp_path, metric):
    """build_index on the GPU: the CPU's centroids and lists, bit for bit; search(exact=False) the
    CPU's answers, and every list probed is exact search."""
    rng = np.random.default_rng(4)
    centres = rng.standard_normal((40, 32)).astype(np.float32) * 2
    v = (centres[rng.integers(0, 40, 20000)] + rng.standard_normal((20000, 32))).astype(np.float32)
    q = (centres[rng.integers(0, 40, 30)] + rng.standard_normal((30, 32))).astype(np.float32)
    with VectorStore.open(tmp_path / "c", dim=32, metric=metric) as cpu, \
            VectorStore.open(tmp_path / "g", dim=32, metric=metric, device="cuda") as gpu:
        for s in (cpu, gpu):
            s.add(range(len(v)), v)
            s.build_index(nlist=64, nprobe=6)
        assert cupy.asnumpy(gpu.index.centroids).tobytes() == cpu.index.centroids.tobytes()
        assert cupy.asnumpy(gpu.index.assign).tolist() == cpu.index.assign.tolist()
        a, b = cpu.search(q, 10, exact=False), gpu.search(q, 10, exact=False)
        assert a[0].tolist() == b[0].tolist() and a[1].tobytes() == b[1].tobytes()
        c = gpu.search(q, 10, exact=False, nprobe=64)
        d = gpu.search(q, 10)
        assert c[0].tolist() == d[0].tolist() and c[1].tobytes() == d[1].tobytes()

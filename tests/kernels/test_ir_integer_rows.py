"""The IR's integer rows for compute kernels: floordiv (//), mod (%) and popcount. NumPy's lowering
against Python's integers, then the CUDA C lowering (compiled for the host) and the numba lowering
against NumPy's bits, on fresh random inputs with every edge (0, -1, MIN, MAX)."""
import cuda_host
import numpy as np
import pytest

from loom.backend.cpu import jit as cpu_jit
from loom.kernels import ir
from loom.kernels.ir import lower_cuda, lower_numba, lower_numpy

TYPES = (ir.I32, ir.I64, ir.U32, ir.U64)


def _inputs(t: ir.Type, n: int, rng) -> tuple[np.ndarray, np.ndarray]:
    info = np.iinfo(t.dtype)
    a = rng.integers(info.min, info.max, n, dtype=t.dtype, endpoint=True)
    b = rng.integers(info.min, info.max, n, dtype=t.dtype, endpoint=True)
    b[: n // 3] = rng.integers(-9 if t.kind == "int" else 0, 10, n // 3).astype(t.dtype)   # small divisors
    edges = np.array([0, 1, 2, 7, info.max, info.max - 1, info.min, info.min + 1] + ([-1, -2, -7] if t.kind == "int" else []),
                     dtype=object)
    grid = np.array([(x, y) for x in edges for y in edges], dtype=object)
    a[: len(grid)] = grid[:, 0].astype(t.dtype)
    b[: len(grid)] = grid[:, 1].astype(t.dtype)
    return a, b


def _body(b, x, y):
    return x // y, x % y, b.popcount(x)


def _python(t: ir.Type, a: int, b: int) -> tuple[int, int, int]:
    """Python's floor division and modulo (the IR's meaning), with x // 0 == x % 0 == 0, wrapped to t."""
    bits = t.bits
    q, r = (0, 0) if b == 0 else (a // b, a % b)
    wrap = (lambda v: (v + 2 ** (bits - 1)) % 2 ** bits - 2 ** (bits - 1)) if t.kind == "int" else (lambda v: v % 2 ** bits)
    return wrap(q), wrap(r), bin(a % 2 ** bits).count("1")


@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
def test_numpy_lowering_is_python_integer_arithmetic(t):
    fn = ir.function(f"rows_{t.name}", [t, t], _body)
    a, b = _inputs(t, 3000, np.random.default_rng())
    q, r, c = lower_numpy.evaluate(fn, a, b)
    want = np.array([_python(t, int(x), int(y)) for x, y in zip(a, b)], dtype=object)
    for got, column in zip((q, r, c), want.T):
        assert got.dtype == t.dtype
        assert np.array_equal(got, column.astype(t.dtype))


@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
def test_folding_gives_the_evaluated_bits(t):
    a, b = _inputs(t, 200, np.random.default_rng())
    for x, y in zip(a[:150], b[:150]):
        fn = ir.function("folded", [], lambda bld: _body(bld, bld.const(x, t), bld.const(y, t)))
        assert all(r.is_const for r in fn.results)
        expect = _python(t, int(x), int(y))
        assert [int(r.const_value()) for r in fn.results] == [int(np.array(e).astype(t.dtype)) for e in expect]


@pytest.fixture(scope="module")
def host_rows(tmp_path_factory):
    if cuda_host.COMPILER is None:
        pytest.skip("g++ not available")
    fns = {t.name: ir.function(f"rows_{t.name}", [t, t], _body) for t in TYPES}
    lib = cuda_host.build([lower_cuda.elementwise_kernel(f, f.name) for f in fns.values()],
                          tmp_path_factory.mktemp("rows"), stem="rows")
    return fns, lib


@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
def test_cuda_c_lowering_gives_numpys_bits(host_rows, t):
    fns, lib = host_rows
    fn = fns[t.name]
    a, b = _inputs(t, 50_000, np.random.default_rng())
    got = cuda_host.call(lib, fn.name, [a, b], [t.dtype] * 3)
    for g, w in zip(got, lower_numpy.evaluate(fn, a, b)):
        assert np.array_equal(g, w)


@pytest.mark.skipif(not cpu_jit.available(), reason="numba is not installed (the loom[cpu] extra)")
@pytest.mark.parametrize("t", TYPES, ids=lambda t: t.name)
def test_numba_lowering_gives_numpys_bits(t, tmp_path, monkeypatch):
    monkeypatch.setenv("LOOM_CACHE_DIR", str(tmp_path))
    fn = ir.function(f"rows_{t.name}", [t, t], _body)
    a, b = _inputs(t, 50_000, np.random.default_rng())
    for g, w in zip(lower_numba.evaluate(fn, a, b), lower_numpy.evaluate(fn, a, b)):
        assert g.dtype == w.dtype
        assert np.array_equal(g, w)


def test_floats_have_no_floor_division_and_popcount_takes_integers():
    with pytest.raises(TypeError, match="floordiv does not take f32"):
        ir.function("f", [ir.F32, ir.F32], lambda b, x, y: x // y)
    with pytest.raises(TypeError, match="popcount does not take f64"):
        ir.function("f", [ir.F64], lambda b, x: b.popcount(x))

"""The numba lowering of the kernel IR (lower_numba): every op, and every mathlib function, gives the
NumPy lowering's bits on fresh random inputs with specials; the generated module is cached on disk
by the hash of its text."""
import numpy as np
import pytest
from test_ir import _all_ops
from test_mathlib import BITS, DTYPES, NAMES, _bit_test_inputs

from loom.backend.cpu import jit as cpu_jit
from loom.kernels import ir, mathlib
from loom.kernels.ir import lower_numba, lower_numpy

pytestmark = pytest.mark.skipif(not cpu_jit.available(), reason="numba is not installed (the loom[cpu] extra)")


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("LOOM_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "loom_cache"))


def _random_f64(rng, n):
    x = rng.integers(0, 2 ** 64, n, dtype=np.uint64).view(np.float64)
    x[: n // 2] = rng.normal(0, 1e3, n // 2)
    x[::97] = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 2.5, -2.5, 5e-324, 3e9, -1e19])[
        np.arange(x[::97].size) % 10]
    return x


def test_every_op_gives_the_numpy_lowerings_bits():
    fn = ir.function("all_ops", [ir.F64, ir.F64], _all_ops)
    rng = np.random.default_rng()
    x = _random_f64(rng, 100_000)
    y = rng.permutation(x)
    got, want = lower_numba.evaluate(fn, x, y), lower_numpy.evaluate(fn, x, y)
    for g, w, bits in zip(got, want, (np.uint64, np.uint32)):
        assert g.dtype == w.dtype
        assert np.array_equal(np.isnan(g), np.isnan(w))       # NaN payloads are not the IR's meaning
        keep = ~np.isnan(w)
        assert np.array_equal(g[keep].view(bits), w[keep].view(bits))


def test_integer_edges_wrap_saturate_and_mask_as_numpy_does():
    def body(b, x, s):
        i32, u32 = x.convert(ir.I32), x.convert(ir.U32)
        k = s.convert(ir.I32)
        return (i32 * 65537 + i32, -u32, b.abs(i32), i32 << k, i32 >> k, u32 >> k.bitcast(ir.U32),
                ~u32, (x.convert(ir.U64) - 1).convert(ir.F32), (i32 < 0) ^ (u32 > 7), x.convert(ir.I64))
    fn = ir.function("edges", [ir.F64, ir.F64], body)
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, -1.5, 3e9, -3e9, 2.0 ** 31, -(2.0 ** 31), 1e19, -1e19,
                  2.0 ** 63, 4294967295.0, 7.9, -7.9] * 5)
    s = np.arange(x.size, dtype=np.float64) - 40        # shift amounts beyond the width: masked
    for g, w in zip(lower_numba.evaluate(fn, x, s), lower_numpy.evaluate(fn, x, s)):
        assert g.dtype == w.dtype and np.array_equal(g, w, equal_nan=g.dtype.kind == "f"), (g, w)


def test_broadcasting_and_shapes_follow_numpy():
    fn = ir.function("f", [ir.F32, ir.F32], lambda b, x, y: b.sqrt(b.abs(x)) * y - x / (y + 1.5))
    rng = np.random.default_rng()
    x = rng.normal(size=(30, 7)).astype(np.float32)[:, ::-1]        # not contiguous
    y = rng.normal(size=(1, 7)).astype(np.float32)
    got, want = lower_numba.evaluate(fn, x, y), lower_numpy.evaluate(fn, x, y)
    assert got.shape == (30, 7) and np.array_equal(got.view(np.uint32), want.view(np.uint32))
    assert lower_numba.evaluate(fn, np.zeros((0, 7), np.float32), y).shape == (0, 7)
    assert lower_numba.evaluate(fn, np.float32(2.0), np.float32(3.0)).shape == ()
    with pytest.raises(TypeError, match="argument 1 has dtype float64"):
        lower_numba.evaluate(fn, x, y.astype(np.float64))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", NAMES)
def test_mathlib_functions_give_the_numpy_lowerings_bits(name, dtype):
    args = _bit_test_inputs(dtype, mathlib.FUNCTIONS[name]["arity"], np.random.default_rng(), n=20_000)
    fn = mathlib.function(name, dtype)
    got, want = lower_numba.evaluate(fn, *args), lower_numpy.evaluate(fn, *args)
    bad = np.nonzero(got.view(BITS[dtype]) != want.view(BITS[dtype]))[0]
    assert bad.size == 0, (name, [a[bad[0]] for a in args], got[bad[0]], want[bad[0]])


def test_mathlib_evaluate_uses_the_compiled_loop_and_loom_jit_0_the_ufuncs(monkeypatch):
    x = np.linspace(-30, 30, 1001, dtype=np.float32)
    from loom.backend.cpu import CPUElementwise
    calls = []
    real = CPUElementwise.run
    monkeypatch.setattr(CPUElementwise, "run", lambda *a: calls.append(1) or real(*a))
    compiled = mathlib.evaluate("silu", x)
    assert calls
    monkeypatch.setenv("LOOM_JIT", "0")
    assert np.array_equal(mathlib.evaluate("silu", x).view(np.uint32), compiled.view(np.uint32))
    assert len(calls) == 1


def test_the_module_is_cached_by_its_text_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("LOOM_CACHE_DIR", str(tmp_path))
    fn = ir.function("twice_plus_third", [ir.F64], lambda b, x: x * 2.0 + 1.0 / 3.0)
    text = lower_numba.source(fn)
    assert text == lower_numba.source(ir.function("twice_plus_third", [ir.F64], lambda b, x: x * 2.0 + 1.0 / 3.0))
    assert "cache=True" in text and "fastmath=False" in text
    y = lower_numba.evaluate(fn, np.array([1.0, -0.0]))
    assert np.array_equal(y, np.array([2.0, 0.0]) + 1.0 / 3.0)
    files = list((tmp_path / "ir_numba").glob("loom_ir_*.py"))
    assert len(files) == 1 and files[0].read_text() == text


def test_an_unwritable_cache_directory_compiles_in_memory(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("LOOM_CACHE_DIR", str(blocker))
    fn = ir.function("in_memory_only", [ir.F32], lambda b, x: x * 3.0 - 0.25)
    x = np.arange(5, dtype=np.float32)
    assert np.array_equal(lower_numba.evaluate(fn, x), x * np.float32(3) - np.float32(0.25))

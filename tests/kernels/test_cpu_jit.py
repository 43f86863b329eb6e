"""loom.backend.cpu.gemv: the numba-compiled x @ W.T for few rows of x (fast mode, CPU).

Every covered type on fresh random codes and random scales of both signs and varied magnitudes,
against a float64 product with the reference dequantization (the `gguf` package where installed,
else loom's own, which test_gguf_quants proves bit-exact with it), and against the NumPy path;
the float16 decoder on all 65,536 patterns; NaN/inf scales; dispatch (LOOM_JIT=0, deterministic
mode, row limit); read-only and odd-shaped inputs; threads and fork."""
import multiprocessing
import sys
import threading

import numpy as np
import pytest

pytest.importorskip("numba")

import loom  # noqa: E402
from loom import backend  # noqa: E402
from loom.backend.cpu import dequant as cpu_dequant  # noqa: E402
from loom.backend.cpu import gemv as cpu_jit  # noqa: E402  (the block loops; jit.py loads them)
from loom.kernels import ops  # noqa: E402
from loom.kernels.exact import fixed  # noqa: E402
from loom.kernels.quant import gemv as gguf_gemv
from loom.kernels.quant import gguf as gq  # noqa: E402
from loom.kernels.quant.block import BlockQuantized  # noqa: E402

TYPES = list(cpu_jit.TYPES)
SCALES = {"Q8_0": (0,), "Q4_0": (0,), "Q5_0": (0,), "Q4_1": (0, 2), "Q5_1": (0, 2)}   # float16 fields


@pytest.fixture(autouse=True)
def jit_enabled(monkeypatch):
    """These tests are about the JIT: a LOOM_JIT=0 in the environment (a run proving the fallback
    elsewhere) must not turn their dispatch checks off; test_dispatch sets it itself."""
    monkeypatch.delenv("LOOM_JIT", raising=False)


def random_weight(qtype, rows, cols, rng):
    """Random codes; scales (and offsets) of random sign and magnitude 1e-4 .. 10; F16/BF16 values
    of varied magnitude."""
    block, size = gq.BLOCKS[qtype]
    if qtype in ("F16", "BF16"):
        values = rng.standard_normal((rows, cols)) * 10.0 ** rng.uniform(-4, 1, (rows, 1))
        values = values.astype(np.float32)
        raw = values.astype(np.float16) if qtype == "F16" else (values.view(np.uint32) >> 16).astype(np.uint16)
        return BlockQuantized(raw.view(np.uint8).reshape(rows, -1), qtype, (rows, cols))
    raw = rng.integers(0, 256, (rows, cols // block * size), dtype=np.uint8)
    blocks = raw.reshape(-1, size)
    for at in SCALES[qtype]:
        scales = rng.choice([-1, 1], len(blocks)) * 10.0 ** rng.uniform(-4, 1, len(blocks))
        blocks[:, at:at + 2] = scales.astype(np.float16).view(np.uint8).reshape(-1, 2)
    return BlockQuantized(raw, qtype, (rows, cols))


def reference_values(w):
    try:
        import gguf
    except ImportError:
        return w.dequantize().astype(np.float64)
    with np.errstate(all="ignore"):
        return gguf.quants.dequantize(w.data, gguf.GGMLQuantizationType[w.qtype]).astype(np.float64)


def jit_product(w, x):
    out = np.empty((x.shape[0], w.shape[0]), np.float32)
    cpu_jit.matmul_t(x, w.data, w.qtype, out)
    return out


def numpy_path(w, x, monkeypatch):
    """The fallback: gguf_gemv for the block types, decoded blocks and BLAS for F16/BF16."""
    with monkeypatch.context() as m, loom.deterministic(False):
        m.setenv("LOOM_JIT", "0")
        return w.matmul_t(x)


def assert_close(got, x, dense):
    """Within 1e-5 of each output's scale sum_k |x_k| |w_k| (float32 sums in another order)."""
    want = x.astype(np.float64) @ dense.T
    bound = 1e-5 * (np.abs(x).astype(np.float64) @ np.abs(dense).T) + 1e-30
    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.all(np.abs(got - want) <= bound), np.max(np.abs(got - want) / bound)


@pytest.mark.parametrize("qtype", TYPES)
def test_products_match_the_reference_and_the_numpy_path(qtype, monkeypatch):
    rng = np.random.default_rng(TYPES.index(qtype))
    for rows, cols in ((37, 32), (96, 96), (37, 576)):
        w = random_weight(qtype, rows, cols, rng)
        dense = reference_values(w)
        assert np.all(np.isfinite(dense)) and np.std(dense) > 0
        for m in (1, 2, 3, 16):
            x = (rng.standard_normal((m, cols)) * 10.0 ** rng.uniform(-2, 2, (m, 1))).astype(np.float32)
            got = jit_product(w, x)
            assert_close(got, x, dense)
            assert_close(numpy_path(w, x, monkeypatch), x, dense)      # the fallback, same contract
            with loom.deterministic(False):                           # and the dispatch reaches it
                assert np.array_equal(w.matmul_t(x), got)


def test_float16_decoder_on_every_pattern():
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    got, want = cpu_jit.decode_f16(bits), bits.view(np.float16).astype(np.float32)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan)
    assert np.array_equal(got.view(np.uint32)[~nan], want.view(np.uint32)[~nan])   # subnormals, +-0, inf


@pytest.mark.parametrize("rows", [1, 2])        # one row of x takes the factored block sums
@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "F16"])
def test_extreme_scales_and_values_propagate(qtype, rows):
    """Subnormal, inf and NaN float16 scales (or F16 values) give the dequantized product's
    NaN/inf pattern, and its values elsewhere."""
    rng = np.random.default_rng(5)
    w = random_weight(qtype, 12, 64, rng)
    specials = np.array([1, 0x8001, 0x03FF, 0x7C00, 0xFC00, 0x7E00], np.uint16)   # subnormals, +-inf, NaN
    as_bytes = specials.view(np.uint8).reshape(-1, 2)
    if qtype == "F16":
        w.data[:6, 0:2] = as_bytes
    else:
        size = gq.BLOCKS[qtype][1]
        w.data.reshape(12, -1, size)[:6, 1, 0:2] = as_bytes
    dense = reference_values(w)
    x = rng.uniform(0.5, 1.5, (rows, 64)).astype(np.float32)
    got = jit_product(w, x)
    with np.errstate(invalid="ignore"):
        want = x.astype(np.float64) @ dense.T
    assert np.array_equal(np.isnan(got), np.isnan(want)) and np.isnan(want).any()
    finite = np.isfinite(want)
    assert np.array_equal(got[~finite & ~np.isnan(want)], want[~finite & ~np.isnan(want)].astype(np.float32))
    assert_close(got[:, finite.all(axis=0)], x, dense[finite.all(axis=0)])


def test_dispatch_follows_mode_env_and_row_limit(monkeypatch):
    w = random_weight("Q4_1", 37, 96, np.random.default_rng(2))
    calls = []
    real = cpu_jit.matmul_t
    monkeypatch.setattr(cpu_jit, "matmul_t", lambda *a: calls.append(a[0].shape) or real(*a))
    x = np.random.default_rng(3).standard_normal((20, 96)).astype(np.float32)
    with loom.deterministic(False):
        w.matmul_t(x[:16])
        w.matmul_t(x[:17])                                   # > MAX_ROWS: decoded blocks and BLAS
        monkeypatch.setenv("LOOM_JIT", "0")
        assert not cpu_jit.available()
        fallback = w.matmul_t(x[:3])
        want = np.empty((3, 37), np.float32)
        gguf_gemv.matmul_t(x[:3], w.data, "Q4_1", want, np)
        assert np.array_equal(fallback, want)                # exactly the NumPy path's bits
        monkeypatch.setenv("LOOM_JIT", "1")
        assert cpu_jit.available()
    assert calls == [(16, 96)]


CPU = backend.get("cpu")


@pytest.mark.parametrize("qtype", TYPES)
def test_deterministic_mode_never_calls_the_jit(qtype, monkeypatch):
    def refuse(*args):
        raise AssertionError("cpu_jit used in deterministic mode")
    monkeypatch.setattr(cpu_jit, "matmul_t", refuse)
    w = random_weight(qtype, 37, 64, np.random.default_rng(4))
    x = np.random.default_rng(5).standard_normal((2, 64)).astype(np.float32)
    for rule in ("weight", "matmul"):           # a decoder's products, and an encoder's (the exact GEMM)
        got = w.matmul_t(x, rule)
        want = fixed.matmul_t(CPU, x, w.dequantize()) if rule == "weight" else ops.matmul(x, w.dequantize().T)
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), rule


def test_memory_maps_strided_x_and_empty_shapes():
    rng = np.random.default_rng(6)
    w = random_weight("Q4_1", 37, 64, rng)
    frozen = w.data.copy()
    frozen.flags.writeable = False                           # as a weight memory-mapped from a file
    wide = rng.standard_normal((3, 128)).astype(np.float32)
    x = wide[:, ::2]                                         # not contiguous
    got = np.empty((3, 37), np.float32)
    cpu_jit.matmul_t(x, frozen, "Q4_1", got)
    assert_close(got, x, reference_values(w))
    assert np.array_equal(got, jit_product(w, np.ascontiguousarray(x)))
    for rows, cols, m in ((0, 64, 2), (5, 0, 2), (5, 64, 0)):
        w = BlockQuantized(np.zeros((rows, gq.row_nbytes("Q8_0", cols)), np.uint8), "Q8_0", (rows, cols))
        assert np.array_equal(jit_product(w, np.ones((m, cols), np.float32)), np.zeros((m, rows), np.float32))


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0", "Q4_1"])
def test_one_row_dots_on_strided_and_long_rows(qtype):
    """The one-row vector dots (loom/backend/cpu/row_dots.py) read a row from its own start: W's rows at
    a stride wider than a row (a column slice of a wider array), and byte-strided rows (copied first),
    keep the product's bound (not the contiguous weight's bits: each array layout is its own numba
    specialization, whose reassociated sums may differ in the last bits); so do rows of 4,096 blocks."""
    rng = np.random.default_rng(11)
    w = random_weight(qtype, 21, 160, rng)
    x = rng.standard_normal((1, 160)).astype(np.float32)
    wide = np.zeros((21, w.data.shape[1] + 7), np.uint8)
    wide[:, 3:3 + w.data.shape[1]] = w.data
    for data in (wide[:, 3:3 + w.data.shape[1]], np.repeat(w.data, 2, axis=1)[:, ::2]):
        assert not data.flags.c_contiguous and np.array_equal(data, w.data)
        got = np.empty((1, 21), np.float32)
        cpu_jit.matmul_t(x, data, qtype, got)
        assert_close(got, x, reference_values(w))
    long = random_weight(qtype, 3, 32 * 4096, rng)
    x = rng.standard_normal((1, 32 * 4096)).astype(np.float32)
    assert_close(jit_product(long, x), x, reference_values(long))


@pytest.mark.parametrize("qtype", ["Q4_1", "Q8_0", "BF16"])
def test_no_rows_of_x_read_nothing(qtype):
    """x with no rows: an empty product. The one-row paths' block sums must not read x[0] (the loops are
    unchecked: with rows of 4M values a read of x[0] lands far outside any allocation)."""
    cols = 1 << 22
    data = np.zeros((1, gq.row_nbytes(qtype, cols)), np.uint8)
    out = np.empty((0, 1), np.float32)
    cpu_jit.matmul_t(np.empty((0, cols), np.float32), data, qtype, out)
    assert out.shape == (0, 1)


def test_threads_share_the_kernels():
    rng = np.random.default_rng(7)
    w = random_weight("Q5_1", 96, 128, rng)
    xs = [rng.standard_normal((1, 128)).astype(np.float32) for _ in range(4)]
    want = [jit_product(w, x) for x in xs]
    results = {}

    def work(i):
        with loom.deterministic(False):
            results[i] = [w.matmul_t(xs[i]) for _ in range(20)]
    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(4):
        assert all(np.array_equal(y, want[i]) for y in results[i])


_FORK_W = None


def _child_product(x):
    with loom.deterministic(False):
        return cpu_jit.available(), _FORK_W.matmul_t(x)


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
def test_forked_children_still_compute(monkeypatch):
    """GNU OpenMP aborts a forked child that starts threads after its parent did: such a child
    must fall back to the NumPy path rather than die."""
    global _FORK_W
    rng = np.random.default_rng(8)
    _FORK_W = random_weight("Q4_1", 37, 64, rng)
    x = rng.standard_normal((1, 64)).astype(np.float32)
    jit_product(_FORK_W, x)                                  # the parent has run the kernels
    with multiprocessing.get_context("fork").Pool(1) as pool:
        jit_in_child, got = pool.apply_async(_child_product, (x,)).get(timeout=120)
    assert jit_in_child == (cpu_jit.jit._state.get("layer") != "omp")
    assert_close(got, x, reference_values(_FORK_W))


@pytest.mark.parametrize("qtype", list(cpu_dequant.TYPES))
def test_compiled_decoder_gives_the_array_codes_bits(qtype):
    """Random bytes (NaN, inf and subnormal scales and offsets among them): the compiled decoder
    (loom/backend/cpu/dequant.py, behind BlockQuantized.dequantize) gives gguf.py's bits, NaN
    payloads included; blocks whose d q + m could keep either NaN's payload go to the array code."""
    rng = np.random.default_rng(7)
    block, size = gq.check_type(qtype)
    for rows, cols in ((1, 32), (5, 96), (64, 576)):
        raw = rng.integers(0, 256, (rows, cols // block * size), dtype=np.uint8)
        want = gq.dequantize(raw, qtype, (rows, cols))
        got = BlockQuantized(raw, qtype, (rows, cols)).dequantize()
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), (qtype, rows, cols)
        clean = raw.reshape(-1, size).copy()
        clean[:, 0:2] = np.frombuffer(np.float16(0.25).tobytes(), np.uint8)    # finite scales only
        clean = clean.reshape(rows, -1)
        out = np.empty((rows, cols), np.float32)
        assert cpu_dequant.dequantize(clean, qtype, out)                      # the compiled loop itself
        assert np.array_equal(out.view(np.uint32), gq.dequantize(clean, qtype, (rows, cols)).view(np.uint32))

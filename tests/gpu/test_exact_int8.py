"""The slice scheme on int8 tensor cores (loom/backend/cuda/exact_int8.py) gives the float64 slices'
bits, which the CPU's give too: the residues' GEMMs, the Chinese-remainder reconstruction and its
one rounding to float64, and whole products, forced onto the int8 path at small sizes and taken
by default at a large one."""
import math

import numpy as np
import pytest

from loom import backend
from loom.kernels import exact

from .cpu_gpu import same_bits

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("deterministic_mode")]

cupy = pytest.importorskip("cupy")


@pytest.fixture
def int8():
    from loom.backend.cuda import exact_int8 as cuda_exact_int8
    return cuda_exact_int8


def test_int8_gemm_sums_exactly():
    rng = np.random.default_rng(0)
    cuda = backend.get("cuda")
    a = rng.integers(-128, 128, (3, 48, 4096), dtype=np.int8)
    bt = rng.integers(-128, 128, (3, 32, 4096), dtype=np.int8)
    a[0, 0], bt[0, 0] = -128, -128                          # the largest sum: 4096 * 2^14
    got = cuda.blas.gemm_int8(cuda.asarray(a), cuda.asarray(bt))
    want = np.matmul(a.astype(np.int64), bt.astype(np.int64).transpose(0, 2, 1))
    assert want[0, 0, 0] == 4096 << 14
    np.testing.assert_array_equal(cupy.asnumpy(got), want)


def test_int8_gemm_names_bad_operands():
    cuda = backend.get("cuda")
    with pytest.raises(ValueError, match="divisible by 16"):
        cuda.blas.gemm_int8(cupy.zeros((1, 16, 20), np.int8), cupy.zeros((1, 16, 20), np.int8))


def test_reconstruction_rounds_once_to_nearest_even(int8):
    """G from its residues, rounded to float64, against Python's correctly rounded float(int): ties
    both ways, sticky bits beyond the 64 kept, the 2^64 boundary, the ends of the balanced range."""
    product = math.prod(int8.MODULI)
    rng = np.random.default_rng(1)
    values = [0, 1, -1, 2 ** 53 + 1, 2 ** 64 - 1, 2 ** 64, 2 ** 64 + 1, -(2 ** 64), product // 2 - 1,
              -(product // 2), 2 ** 70, -(2 ** 70)]
    for e in range(54, 71):                                 # float64's ulp at 2^e is 2^(e - 52)
        base = 1 << e
        half = 1 << (e - 53)
        values += [base + half, base + 3 * half, base + half + 1, base + 3 * half - 1, -(base + half),
                   base + (1 << (e - 52)) * 12345 + half, (base | (base - 1)) if e < 70 else base - 1]
    values += [int(v) for v in rng.integers(-(2 ** 62), 2 ** 62, 200)]
    values += [int(v) << int(s) for v, s in zip(rng.integers(-(2 ** 62), 2 ** 62, 300), rng.integers(0, 9, 300))]
    values = [v for v in values if -(product // 2) <= v < product // 2]
    residues = np.array([[v % p for v in values] for p in int8.MODULI], dtype=np.int64)
    residues[:, ::2] -= np.array(int8.MODULI, dtype=np.int64)[:, None]     # any representative will do
    got = cupy.asnumpy(int8.crt_to_double(cupy.asarray(residues)))
    want = np.array([float(v) for v in values])
    bad = np.nonzero(got.view(np.int64) != want.view(np.int64))[0]
    assert bad.size == 0, [(values[i], got[i], want[i]) for i in bad[:5]]


def _operands(rng, m, k, n):
    a = (rng.standard_normal((m, k)) * np.exp2(rng.integers(-30, 31, (m, k)))).astype(np.float32)
    b = (rng.standard_normal((k, n)) * np.exp2(rng.integers(-12, 13, (k, n)))).astype(np.float32)
    a[3] = 0                                                # a zero row
    a[5, :] = rng.standard_normal(k).astype(np.float32)     # a plain one
    b[:, 2] = np.float32(2.0 ** -140)                       # a column of subnormals
    # the largest |G|: rows and columns of one magnitude just below a power of two (h rounds up to
    # 2^bits_a, B = 2^24 - 1), of one sign, so G = +-K (2^(2 bits_a) - 2^(bits_a - 7)) (2^24 - 1)
    top = np.float32(1 - 2.0 ** -24)
    a[6], a[7], b[:, 3], b[:, 4] = top, -top, top, -top
    return a, b


def _spy(int8, monkeypatch) -> list:
    calls = []
    original = int8.matmul_narrow
    monkeypatch.setattr(int8, "matmul_narrow", lambda *args: calls.append(1) or original(*args))
    return calls


@pytest.mark.parametrize("panel_rows", [None, 32], ids=["one panel", "panels of 32 rows"])
@pytest.mark.parametrize("m, k, n", [(64, 4096, 48), (32, 8192, 16), (48, 16384, 32), (16, 2064, 80)])
def test_forced_int8_products_give_the_cpu_bits(m, k, n, panel_rows, int8, monkeypatch):
    monkeypatch.setattr(int8, "MIN_WORK", 0)
    if panel_rows:
        monkeypatch.setattr(int8, "PANEL_BYTES", len(int8.MODULI) * (k + 4 * n) * panel_rows)
    calls = _spy(int8, monkeypatch)
    rng = np.random.default_rng(m + k + n)
    cuda = backend.get("cuda")
    a, b = _operands(rng, m, k, n)
    cpu = exact.matmul(a, b)
    assert cpu[6, 3] == cpu[7, 4] == -cpu[6, 4] == np.float32(k * float(a[6, 0]) ** 2)    # the largest |G|, both signs
    same_bits(exact.matmul(cuda.asarray(a), cuda.asarray(b)), cpu, f"int8 {m}x{k}x{n}")
    assert calls, "the int8 path did not run"
    at, bt = np.ascontiguousarray(a.T), np.ascontiguousarray(b.T)     # transposed views, as dense layers use
    same_bits(exact.matmul(cuda.asarray(at).T, cuda.asarray(bt).T), cpu, "int8 transposed views")
    ar, br = a[:, ::-1], b[::-1]                            # negative strides (the same K, reversed)
    same_bits(exact.matmul(cuda.asarray(a)[:, ::-1], cuda.asarray(b)[::-1]), exact.matmul(ar, br), "int8 reversed")
    a[1, 7], a[2, 0], b[-1, 4] = np.nan, -np.inf, np.inf    # special values: patched as the float64 path does
    same_bits(exact.matmul(cuda.asarray(a), cuda.asarray(b)), exact.matmul(a, b), "int8 specials")
    # float16 operands and result: the unguarded path (the caller patches specials itself)
    h = (rng.standard_normal((m, k)) * 8).astype(np.float16)
    g = (rng.standard_normal((k, n)) * 8).astype(np.float16)
    h[0, 1] = np.inf
    calls.clear()
    same_bits(exact.matmul(cuda.asarray(h), cuda.asarray(g)), exact.matmul(h, g), "int8 float16")
    assert calls


def test_shapes_the_int8_path_declines_keep_the_bits(int8, monkeypatch):
    """K not a multiple of 16 (the int8 GEMM's alignment): the float64 slices, the same bits."""
    monkeypatch.setattr(int8, "MIN_WORK", 0)
    calls = _spy(int8, monkeypatch)
    rng = np.random.default_rng(3)
    cuda = backend.get("cuda")
    a, b = _operands(rng, 32, 2056, 16)
    same_bits(exact.matmul(cuda.asarray(a), cuda.asarray(b)), exact.matmul(a, b), "declined")
    assert not calls


def test_a_large_product_takes_the_int8_path_by_default(int8, monkeypatch):
    calls = _spy(int8, monkeypatch)
    rng = np.random.default_rng(7)
    cuda = backend.get("cuda")
    a = rng.standard_normal((4096, 4096), dtype=np.float32)
    b = rng.standard_normal((4096, 4096), dtype=np.float32)
    got = exact.matmul(cuda.asarray(a), cuda.asarray(b))
    assert calls, "a 4096^3 product did not take the int8 path"
    same_bits(got, exact.matmul(a, b), "int8 default")


@pytest.mark.smoke
def test_int8_products_replay_from_a_recorded_graph(int8, monkeypatch):
    """Recorded into a dispatch chain (panels freed and reallocated inside the capture) and replayed on
    new operands, the int8 path gives the CPU's bits for those operands."""
    monkeypatch.setattr(int8, "MIN_WORK", 0)
    monkeypatch.setattr(int8, "PANEL_BYTES", len(int8.MODULI) * (4096 + 4 * 48) * 32)
    calls = _spy(int8, monkeypatch)
    cuda = backend.get("cuda")
    a, b = _operands(np.random.default_rng(11), 64, 4096, 48)
    da, db = cuda.asarray(a), cuda.asarray(b)
    same_bits(exact.matmul(da, db), exact.matmul(a, b), "eager")    # compiles the kernels first
    graph, recorded = cuda.record(lambda: exact.matmul(da, db))
    a2, b2 = _operands(np.random.default_rng(12), 64, 4096, 48)
    da[...], db[...] = cuda.asarray(a2), cuda.asarray(b2)
    graph.launch()
    cuda.synchronize()
    same_bits(recorded, exact.matmul(a2, b2), "replayed on new operands")
    assert len(calls) == 2


def test_int8_chunks_of_a_long_product_give_the_cpu_bits(int8, monkeypatch):
    """K > 2^14 looped over chunks (products too large to slice whole): each chunk, a column slice of
    the operands with the whole rows' scales, runs on the int8 path with a float64 result, and the
    chunks add up in order as the float64 slices' do."""
    from loom.backend.cuda import exact_slices
    monkeypatch.setattr(int8, "MIN_WORK", 0)
    monkeypatch.setattr(exact_slices, "_CHUNKS_AT_ONCE_BYTES", 0)
    calls = _spy(int8, monkeypatch)
    rng = np.random.default_rng(5)
    cuda = backend.get("cuda")
    k = 2 * (1 << 14) + 4096                                  # two whole chunks and a short one
    a, b = _operands(rng, 32, k, 16)
    same_bits(exact.matmul(cuda.asarray(a), cuda.asarray(b)), exact.matmul(a, b), "int8 chunks")
    assert len(calls) == 3

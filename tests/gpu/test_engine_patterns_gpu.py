"""The one-call patterns (loom.sum, loom.sort, ...: loom/engine/patterns.py, sorting.py, histogram.py) on
CuPy arrays: the CPU path's bits (which tests/engine/test_patterns.py checks against NumPy) in
deterministic mode, for every dtype, on empty, length-1, odd and large inputs with both zeros, NaNs
(of both signs) and infinities, on non-contiguous views too; results stay on the GPU; and sums and
sorts of more than 2^31 elements where the GPU has the memory."""
from fractions import Fraction

import numpy as np
import pytest
from pattern_values import ALL, FLOATS, INTS, values

import loom

from .cpu_gpu import host, same_bits

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("deterministic_mode")]
cupy = pytest.importorskip("cupy")

SIZES = [0, 1, 2, 17, 1000, 65537]
BIG = 1 << 31


def on_both(fn, x, *args, **kwargs):
    """(result on the GPU, result on the CPU) of fn over x (and any array arguments), checking that the
    GPU's results are CuPy arrays."""
    gpu = fn(cupy.asarray(x), *args, **kwargs)
    cpu = fn(x, *args, **kwargs)
    for g in gpu if isinstance(gpu, tuple) else (gpu,):
        assert isinstance(g, cupy.ndarray), type(g)
    return gpu, cpu


def check(fn, x, what, *args, **kwargs):
    gpu, cpu = on_both(fn, x, *args, **kwargs)
    if isinstance(gpu, tuple):
        for i, (g, c) in enumerate(zip(gpu, cpu)):
            same_bits(g, c, f"{what} [{i}]")
    else:
        same_bits(gpu, cpu, what)


def free_bytes():
    cupy.get_default_memory_pool().free_all_blocks()
    return cupy.cuda.runtime.memGetInfo()[0]


def needs(nbytes, what):
    have = free_bytes()
    if have < nbytes:
        pytest.skip(f"{what} needs about {nbytes / 2**30:.0f} GiB of free GPU memory, {have / 2**30:.0f} GiB free")


@pytest.fixture
def release():
    yield
    cupy.get_default_memory_pool().free_all_blocks()


# --- reductions ------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ALL)
@pytest.mark.parametrize("n", SIZES)
def test_reductions_give_the_cpus_bits(dtype, n):
    rng = np.random.default_rng(n)
    x = values(rng, n, dtype)
    for name in ("sum", "mean"):
        check(getattr(loom, name), x, f"{name} {dtype.__name__} n={n}")
    if n:
        for name in ("min", "max", "argmin", "argmax"):
            fn = getattr(loom, name)
            check(fn, x, f"{name} {dtype.__name__} n={n}")
            check(lambda a: fn(a[::-1]), x, f"{name} of a reversed view")
    m = values(rng, 6 * n, dtype).reshape(6, n)
    for axis in (0, 1, None):
        for name in ("sum", "mean") + (("min", "max", "argmin", "argmax") if n else ()):
            check(getattr(loom, name), m, f"{name} axis {axis}", axis=axis, keepdims=True)
    check(lambda a: loom.sum(a.T, axis=0), m, "sum of a transposed view")


@pytest.mark.smoke
def test_sum_is_exact_on_wide_ranges():
    rng = np.random.default_rng(3)
    for dtype in (np.float32, np.float64):
        x = (rng.standard_normal((33, 70001)) * np.exp2(rng.integers(-60, 60, (33, 70001)))).astype(dtype)
        check(loom.sum, x, f"sum {dtype.__name__} rows", axis=1)
        check(loom.sum, x, f"sum {dtype.__name__} all")
        check(loom.mean, x, f"mean {dtype.__name__} columns", axis=0)


def test_nan_and_zero_rules_hold_on_the_gpu():
    x = cupy.asarray(np.array([3.0, np.nan, -1.0, np.nan, -0.0]))
    assert int(loom.argmin(x)) == 1 == int(loom.argmax(x))          # the first NaN (CuPy's own may differ)
    z = cupy.asarray(np.array([0.0, -0.0, 0.0], np.float32))
    assert bool(cupy.signbit(loom.min(z))) and not bool(cupy.signbit(loom.max(z)))
    assert int(loom.argmin(z)) == 0 == int(loom.argmax(z))
    with pytest.raises(loom.ShapeError, match="empty"):
        loom.min(cupy.zeros((3, 0)), axis=1)


def test_sum_in_fast_mode_is_close():
    x = np.random.default_rng(4).standard_normal((40, 3000)).astype(np.float32)
    with loom.deterministic(False):
        np.testing.assert_allclose(host(loom.sum(cupy.asarray(x), axis=1)), np.sum(x, axis=1), rtol=1e-5, atol=1e-4)


# --- sort, argsort, topk ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ALL)
@pytest.mark.parametrize("n", SIZES)
def test_sorts_give_the_cpus_bits(dtype, n):
    x = values(np.random.default_rng(n + 1), n, dtype)
    for descending in (False, True):
        check(loom.argsort, x, f"argsort {dtype.__name__} n={n}", descending=descending)
        check(loom.sort, x, f"sort {dtype.__name__} n={n}", descending=descending)
    same_bits(loom.argsort(cupy.asarray(x)), np.argsort(x, kind="stable"), "argsort against NumPy")
    m = values(np.random.default_rng(n + 2), 5 * n, dtype).reshape(5, n)
    for axis in (0, 1, None):
        check(loom.argsort, m, f"argsort axis {axis}", axis=axis)
        check(loom.sort, m, f"sort axis {axis}", axis=axis, descending=True)
    check(loom.sort, np.asfortranarray(m), "sort of a Fortran-order array", axis=1)


def test_sort_keeps_zeros_and_nans_in_input_order():
    """A GPU radix sort on the raw floats would put -0 before +0 and negative NaNs first."""
    x = np.array([1.0, np.nan, 0.0, -0.0, -np.inf, 0.0, -0.0, np.nan, np.inf], np.float32)
    x[7] = -x[7]
    want = np.argsort(x, kind="stable")
    assert host(loom.argsort(cupy.asarray(x))).tolist() == want.tolist() == [4, 2, 3, 5, 6, 0, 8, 1, 7]
    same_bits(loom.sort(cupy.asarray(x)), x[want], "sort: each zero keeps its sign")
    x[1] = np.frombuffer(np.uint32(0x7FC00123).tobytes(), np.float32)[0]    # a payload of its own
    got = host(loom.sort(cupy.asarray(x), descending=True)).view(np.uint32)
    assert got.tolist() == x[host(loom.argsort(cupy.asarray(x), descending=True))].view(np.uint32).tolist()
    for dtype in ALL:
        same_bits(loom.argsort(cupy.ones(70000, dtype=dtype)), np.arange(70000), f"all equal {dtype.__name__}")


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int32, np.uint64, np.bool_])
@pytest.mark.parametrize("n, ks", [(1, [0, 1]), (17, [0, 2, 17]), (1000, [1, 124, 125, 1000]),
                                   (1000003, [1, 10, 1000, 200000])])
def test_topk_gives_the_cpus_bits(dtype, n, ks):
    x = values(np.random.default_rng(n + 3), n, dtype)
    for k in ks:
        for largest in (True, False):
            check(loom.topk, x, f"topk {dtype.__name__} n={n} k={k} largest={largest}", k, largest=largest)
    m = values(np.random.default_rng(n + 4), 3 * n, dtype).reshape(3, n)
    check(loom.topk, m, "topk rows", ks[-1] // 2 + 1 if n > 1 else n, axis=1)
    check(loom.topk, m, "topk columns", 2 if n else 0, axis=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16])
def test_large_sorts_give_the_cpus_bits(dtype, release):
    x = values(np.random.default_rng(5), (1 << 24) + 3, dtype)
    check(loom.argsort, x, f"argsort 2^24+3 {dtype.__name__}")
    check(loom.sort, x, "sort 2^24+3", descending=True)


# --- scans -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ALL)
@pytest.mark.parametrize("n", SIZES)
def test_scans_give_the_cpus_bits(dtype, n):
    x = values(np.random.default_rng(n + 6), n, dtype)
    for op in ("sum", "min", "max"):
        for inclusive in (True, False):
            check(loom.scan, x, f"scan {op} {dtype.__name__} n={n} inclusive={inclusive}", op, inclusive=inclusive)
    m = values(np.random.default_rng(n + 7), 4 * n, dtype).reshape(4, n)
    for op in ("sum", "min", "max"):
        for axis in (0, 1, None):
            check(loom.scan, m, f"scan {op} axis {axis}", op, axis=axis)


def test_sum_scan_is_exact_then_rounded_once():
    rng = np.random.default_rng(8)
    n = 3001
    x = rng.choice([-1.0, 1.0], n) * (1 + rng.random(n)) * np.exp2(rng.integers(-30, 0, n))
    total, want = Fraction(0), []
    for v in x.tolist():
        total += Fraction(v)
        want.append(float(total))                   # float(Fraction) rounds correctly to float64
    same_bits(loom.scan(cupy.asarray(x)), np.array(want), "exact prefix sums")


def test_large_scans_give_the_cpus_bits(release):
    x = values(np.random.default_rng(9), 3 * (1 << 22) + 1, np.float32)
    for op in ("sum", "min", "max"):
        check(loom.scan, x, f"scan {op} 3 * 2^22 + 1", op)


# --- histogram -------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [*INTS, *FLOATS, np.bool_])
def test_histogram_gives_numpys_bins(dtype):
    x = values(np.random.default_rng(10), 100003, dtype, specials=False)
    for bins in (1, 10, 257) if dtype == np.float16 else (1, 10, 257, 4096):
        gpu, cpu = on_both(loom.histogram, x, bins)
        want = np.histogram(x.astype(np.uint8) if dtype == np.bool_ else x, bins)
        same_bits(gpu[0], cpu[0], "counts")
        same_bits(gpu[1], cpu[1], "edges")
        same_bits(cpu[0], want[0].astype(np.int64), "counts against NumPy")
        same_bits(cpu[1], want[1], "edges against NumPy")
    if dtype in FLOATS:
        x[::3] = np.nan
        for rng_range in ((-3, 5), (0.7, 1.0), (np.float64(-0.1), 10)):
            check(loom.histogram, x, f"histogram range {rng_range}", 33, range=rng_range)
        edges = np.array([-20, -1.5, 0, 0, 0.25, 3, 3, 40])
        check(loom.histogram, x, "histogram given edges", edges)
        x[::3] = np.linspace(-1, 1, x[::3].size).astype(dtype)       # values on the edges
        check(loom.histogram, x, "histogram on the edges", 20, range=(-1, 1))


def test_histogram_of_edge_cases():
    for x in (np.zeros(0), np.array([2.5], np.float32), np.full(9, 3, np.int64), np.full(5, -0.0)):
        check(loom.histogram, x, f"histogram {x}", 4)
    with pytest.raises(loom.ShapeError, match="not finite"):
        loom.histogram(cupy.asarray([1.0, np.nan]), 4)


# --- map and matmul --------------------------------------------------------------------------------

MAP_UNARY = ["exp", "log", "log1p", "expm1", "tanh", "sigmoid", "softplus", "silu", "erf", "gelu", "gelu_tanh",
             "sin", "cos", "abs", "neg", "square", "sqrt", "reciprocal", "floor", "ceil", "trunc", "rint", "relu"]


@pytest.mark.parametrize("op", MAP_UNARY)
@pytest.mark.parametrize("dtype", [*FLOATS, np.int32, np.int8])
def test_map_gives_the_cpus_bits(op, dtype):
    x = values(np.random.default_rng(11), 10001, dtype)
    if dtype in FLOATS:
        with np.errstate(over="ignore"):
            x[:20] = np.array([0, -0.0, 1e-30, -1e-30, 1e30, -1e30, 88, -88, 709, -709, 0.5, -0.5, 1, -1, 1e-8, -1e-8,
                               20, -20, np.nan, np.inf]).astype(dtype)
    if op in ("log", "log1p", "sqrt"):
        x = np.abs(x)
    check(loom.map, x, f"map {op} {np.dtype(dtype).name}", op)


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div", "maximum", "minimum", "pow"])
@pytest.mark.parametrize("dtype", [*FLOATS, np.int16, np.uint8])
def test_map_with_a_scalar_gives_the_cpus_bits(op, dtype):
    x = values(np.random.default_rng(12), 10001, dtype)
    for s in (2, 3.5, -0.0, np.float64(0.1)) if op != "pow" or dtype in FLOATS else (2, 3):
        check(loom.map, x, f"map {op} {s} {np.dtype(dtype).name}", op, s)


@pytest.mark.parametrize("shape", [((64, 784), (784, 256)), ((3, 40, 17), (17, 9)), ((5,), (5, 7)),
                                   ((33, 5000), (5000, 3))])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matmul_gives_the_cpus_bits(shape, dtype):
    rng = np.random.default_rng(13)
    a, b = rng.standard_normal(shape[0]).astype(dtype), rng.standard_normal(shape[1]).astype(dtype)
    gpu = loom.matmul(cupy.asarray(a), cupy.asarray(b))
    assert isinstance(gpu, cupy.ndarray)
    same_bits(gpu, loom.matmul(a, b), f"matmul {shape}")
    with pytest.raises(loom.BackendError, match="move one"):
        loom.matmul(cupy.asarray(a), b)


# --- more than 2^31 elements -----------------------------------------------------------------------

def _round_fraction(value: Fraction, dtype) -> np.generic:
    """value rounded correctly to dtype (to nearest, ties to even)."""
    dtype = np.dtype(dtype)
    near = dtype.type(float(value))
    cands = [np.nextafter(near, dtype.type(-np.inf)), near, np.nextafter(near, dtype.type(np.inf))]
    odd = lambda c: int(np.asarray(c).view(f"u{dtype.itemsize}")) & 1
    return min(cands, key=lambda c: (abs(Fraction(float(c)) - value), odd(c)))


def _pattern(n, dtype, chunk=1 << 27):
    """x[i] = 1 + ((i mod 13) - 6) / 4 built chunk by chunk on the GPU (multiples of 1/4 in [-0.5, 2.5]),
    and its exact sum as a Fraction: full cycles of 13 add 13 each."""
    x = cupy.empty(n, dtype=dtype)
    for start in range(0, n, chunk):
        i = cupy.arange(start, min(n, start + chunk), dtype=np.int64)
        x[start:start + i.size] = (1 + ((i % 13) - 6) * 0.25).astype(dtype)
        del i
    r = n % 13
    total = Fraction(13 * (n // 13)) + sum(Fraction(1) + Fraction(j - 6, 4) for j in range(r))
    return x, total


def test_sum_mean_and_argmax_beyond_2_31_elements(release):
    n = BIG + 4099
    needs(3 * 4 * n, "a float32 sum of 2^31 + 4099 elements")
    x, total = _pattern(n, np.float32)
    picks = [5, BIG - 1, BIG + 17, n - 1]
    news = [2.25, -1.75, 2.5, 0.5]
    for p, v in zip(picks, news):
        total += Fraction(v) - Fraction(float(x[p]))
        x[p] = v
    x[BIG + 17] = 3.0                                       # the only maximum, past index 2^31
    total += Fraction(3.0) - Fraction(2.5)
    got = loom.sum(x)
    want = _round_fraction(total, np.float32)                # the exact sum, rounded once: the CPU's bits
    assert host(got).view(np.uint32) == np.asarray(want).view(np.uint32), (host(got), want, total)
    same_bits(loom.mean(x), np.asarray(np.float32(want) / np.float32(n)), "mean: sum / n in float32")
    assert int(loom.argmax(x)) == BIG + 17 and float(loom.max(x)) == 3.0
    assert int(loom.argmin(x)) == BIG - 1 and float(loom.min(x)) == -1.75
    del x


def test_integer_sum_beyond_2_31_elements(release):
    n = BIG + 977
    needs(2 * n + (1 << 30), "an int8 sum of 2^31 + 977 elements")
    x = cupy.full(n, 3, dtype=np.int8)
    x[BIG + 5] = -128
    got = loom.sum(x)
    assert got.dtype == np.int64 and int(got) == 3 * (n - 1) - 128


def test_sort_beyond_2_31_elements(release):
    """float16 keys with many ties, both zeros and NaNs: loom.sort's values are a sorted permutation
    of x's (every bit pattern as often), NaNs last; loom.argsort is a permutation, sorted and stable.
    Together these fix the one answer NumPy's stable sort gives."""
    n = BIG + 1001
    # peak inside argsort: x, its keys, CuPy's copy of them, the int64 indices and thrust's double
    # buffers of both, about 24 bytes an element
    needs(28 * n, "a stable sort of 2^31 + 1001 float16 values")
    x = cupy.empty(n, dtype=np.float16)
    chunk = 1 << 27
    for start in range(0, n, chunk):
        r = cupy.random.RandomState(start).standard_normal(min(chunk, n - start), dtype=np.float32)
        x[start:start + r.size] = (r * 100).astype(np.float16)
        del r
    x[7], x[BIG + 3], x[n - 2] = np.nan, -0.0, np.nan
    x[0], x[BIG + 11] = 0.0, -np.nan

    def patterns(a):
        """How often each of the 2^16 bit patterns occurs in a (chunk by chunk: int32 copies stay small)."""
        counts = cupy.zeros(1 << 16, dtype=np.int64)
        for start in range(0, a.size, chunk):
            counts += cupy.bincount(a[start:start + chunk].view(np.uint16).astype(np.int32), minlength=1 << 16)
        return counts

    s = loom.sort(x)
    nans = int(cupy.isnan(x).sum())
    assert bool(cupy.isnan(s[n - nans:]).all()) and not bool(cupy.isnan(s[:n - nans]).any())
    body = s[:n - nans]
    assert bool((body[1:] >= body[:-1]).all()), "sort: not ascending"
    assert bool((patterns(s) == patterns(x)).all()), "sort: not a permutation of the values"
    del s, body

    order = loom.argsort(x)
    assert order.dtype == np.int64 and order.shape == (n,)
    seen = cupy.zeros(n, dtype=bool)
    seen[order] = True
    assert bool(seen.all()), "argsort: not a permutation"
    del seen
    v = x[order]
    same = (v[1:] == v[:-1]) | (cupy.isnan(v[1:]) & cupy.isnan(v[:-1]))
    assert bool((~same | (order[1:] > order[:-1])).all()), "argsort: equal keys out of input order"
    del same
    body = v[:n - nans]
    assert bool((body[1:] >= body[:-1]).all()), "argsort: not ascending"

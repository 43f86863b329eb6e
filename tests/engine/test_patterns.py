"""The one-call patterns (loom.sum, loom.sort, ...: loom/engine/patterns.py, sorting.py, histogram.py) on
the CPU against NumPy: seeded random inputs of every supported dtype, empty arrays, length 1, lengths
that are not powers of two (up to 1000003), all-equal keys, both zeros, NaN and infinities; exact
references for the deterministic sums and scans; and bad input."""
import math
import re
import warnings
from fractions import Fraction

import numpy as np
import pytest
from pattern_values import ALL, FLOATS, INTS, values

import loom
from loom.engine import order_keys, patterns
from loom.errors import BackendError, ConfigError, ShapeError
from loom.kernels import mathlib

SIZES = [0, 1, 2, 17, 1000]
BAD = [np.array([1 + 2j]), np.array(["a", "b"]), np.array([object()], dtype=object),
       np.array(["2024-01-01"], dtype="datetime64[D]")]


@pytest.fixture(autouse=True)
def _deterministic():
    with loom.deterministic(True):
        yield


def bits(a):
    a = np.asarray(a)
    return a.view(f"u{a.dtype.itemsize}") if a.dtype.kind == "f" else a


def same(got, want, what=""):
    """The same dtype, shape and values; floats the same bits, NaN payloads aside."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape, f"{what}: {got.dtype}{got.shape} vs {want.dtype}{want.shape}"
    if got.dtype.kind == "f":
        assert np.array_equal(np.isnan(got), np.isnan(want)), what
        got, want = np.where(np.isnan(got), 0, got).astype(got.dtype), np.where(np.isnan(want), 0, want).astype(got.dtype)
    assert np.array_equal(bits(got), bits(want)), f"{what}: {got} vs {want}"


def equal(got, want, what=""):
    """Equal values (-0 == +0) and NaN where NumPy has NaN, same dtype and shape."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape, f"{what}: {got.dtype}{got.shape} vs {want.dtype}{want.shape}"
    assert np.array_equal(got, want, equal_nan=got.dtype.kind == "f"), f"{what}: {got} vs {want}"


def descending_argsort(x, axis=-1):
    """NumPy's stable order reversed, equal values still in input order: argsort of the reversed axis."""
    n = x.shape[axis]
    flipped = np.flip(x, axis=axis)
    return n - 1 - np.flip(np.argsort(flipped, axis=axis, kind="stable"), axis=axis)


# --- the top level ---------------------------------------------------------------------------------

def test_patterns_are_exported_at_the_top_level():
    for name in ("sum", "min", "max", "mean", "argmin", "argmax", "map", "scan", "sort", "argsort", "topk",
                 "histogram", "matmul", "prime_count", "primes"):
        assert name in loom.__all__ and callable(getattr(loom, name)), name
    assert loom.sum is patterns.sum and loom.sort is patterns.sort
    assert loom.prime_count(100) == 25 and list(loom.primes(10, 30)) == [11, 13, 17, 19, 23, 29]


def test_lists_and_scalars_become_numpy_arrays():
    assert isinstance(loom.sort([3, 1, 2]), np.ndarray)
    equal(loom.sort([3.0, 1.0, 2.0]), np.array([1.0, 2.0, 3.0]))
    equal(loom.sum([1, 2, 3]), np.asarray(np.sum([1, 2, 3])))
    equal(loom.max(4.5), np.asarray(4.5))
    with pytest.raises(BackendError, match="no backend owns"):
        loom.sum({1, 2})


@pytest.mark.parametrize("fn", [loom.sum, loom.mean, loom.min, loom.max, loom.argmin, loom.argmax, loom.sort,
                                loom.argsort, lambda x: loom.topk(x, 1), loom.scan, loom.histogram,
                                lambda x: loom.map(x, "exp"), lambda x: loom.matmul(x, x)])
@pytest.mark.parametrize("x", BAD, ids=lambda x: str(x.dtype))
def test_unsupported_dtypes_are_named(fn, x):
    with pytest.raises(ShapeError, match=re.escape(str(x.dtype))):
        fn(x)


# --- sum and mean ----------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("n", [*SIZES, 1000003])
def test_sum_is_exact_rounded_once_and_order_independent(dtype, n):
    rng = np.random.default_rng(n)
    top = 0 if dtype == np.float16 else 8                           # float16 sums stay finite
    x = (rng.standard_normal(n) * np.exp2(rng.integers(-8, top, n))).astype(dtype)
    got = loom.sum(x)
    assert isinstance(got, np.ndarray) and got.dtype == dtype and got.shape == ()
    # a float64 sum within 2^-40 relative, so the rounding to a narrow dtype is one ulp away at most
    want = math.fsum(x.astype(np.float64).tolist())
    assert abs(float(got) - want) <= np.spacing(np.abs(got).astype(dtype)) + 1e-300, (got, want)
    same(loom.sum(rng.permutation(x)), got, "shuffled")
    same(loom.sum(x[::-1].copy()), got, "reversed")


def test_sum_of_float_specials_follows_ieee():
    same(loom.sum(np.array([1.0, np.inf, 2.0])), np.asarray(np.inf))
    same(loom.sum(np.array([1.0, np.inf, -np.inf], np.float32)), np.asarray(np.float32(np.nan)))
    same(loom.sum(np.array([np.nan, 1.0])), np.asarray(np.nan))
    same(loom.sum(np.zeros(0, np.float32)), np.asarray(np.float32(0)))


@pytest.mark.parametrize("dtype", [np.bool_, *INTS])
def test_integer_sums_match_numpy_exactly(dtype):
    x = values(np.random.default_rng(1), 1000, dtype)
    equal(loom.sum(x), np.asarray(np.sum(x)))
    m = x[:999].reshape(27, 37)
    equal(loom.sum(m, axis=0), np.sum(m, axis=0))
    equal(loom.sum(m, axis=(0, 1), keepdims=True), np.sum(m, axis=(0, 1), keepdims=True))
    equal(loom.sum(np.zeros(0, dtype)), np.asarray(np.sum(np.zeros(0, dtype))))


@pytest.mark.parametrize("axis", [0, 1, -1, (0, 2), None, ()])
@pytest.mark.parametrize("keepdims", [False, True])
def test_sum_and_mean_axes_like_numpy(axis, keepdims):
    x = np.random.default_rng(2).standard_normal((5, 7, 3)).astype(np.float32)
    got, want = loom.sum(x, axis=axis, keepdims=keepdims), np.sum(x, axis=axis, keepdims=keepdims)
    assert got.shape == np.shape(want) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    got, want = loom.mean(x, axis=axis, keepdims=keepdims), np.mean(x, axis=axis, keepdims=keepdims)
    assert got.shape == np.shape(want) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # each row's bits do not depend on its batch-mates
    if axis == -1:
        same(loom.sum(x[2:3], axis=-1), loom.sum(x, axis=-1)[2:3])


def test_sum_in_fast_mode_is_numpy_sum():
    x = np.random.default_rng(3).standard_normal((40, 30)).astype(np.float32)
    with loom.deterministic(False):
        np.testing.assert_allclose(loom.sum(x, axis=1), np.sum(x, axis=1), rtol=1e-6)
        np.testing.assert_allclose(loom.mean(x), np.mean(x), rtol=1e-6)


@pytest.mark.parametrize("dtype", ALL)
def test_mean_dtypes_like_numpy(dtype):
    x = values(np.random.default_rng(4), 999, dtype, specials=False)
    got, want = loom.mean(x), np.mean(x)
    assert got.dtype == np.asarray(want).dtype
    rtol = {np.float16: 1e-3, np.float32: 1e-6}.get(dtype, 1e-12)
    np.testing.assert_allclose(float(got), float(want), rtol=rtol, atol=1e-12)
    assert np.isnan(loom.mean(np.zeros(0, dtype)))
    with pytest.warns(RuntimeWarning, match="empty"), np.errstate(invalid="ignore"):
        assert np.isnan(np.mean(np.zeros(0, dtype)))


# --- min, max, argmin, argmax ----------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ALL)
@pytest.mark.parametrize("n", [1, 2, 17, 1000])
def test_min_max_argmin_argmax_match_numpy(dtype, n):
    rng = np.random.default_rng(n)
    for specials in (False, True):
        x = values(rng, n, dtype, specials)
        for name in ("min", "max", "argmin", "argmax"):
            equal(getattr(loom, name)(x), np.asarray(getattr(np, name)(x)), f"{name} {x}")
        m = values(rng, 6 * n, dtype, specials).reshape(6, n)
        for axis in (0, 1, None):
            for name in ("min", "max", "argmin", "argmax"):
                equal(getattr(loom, name)(m, axis=axis, keepdims=True),
                      getattr(np, name)(m, axis=axis, keepdims=True), f"{name} axis {axis}")


def test_nan_and_zeros_in_min_max():
    x = np.array([3.0, np.nan, -1.0, np.nan])
    assert np.isnan(loom.min(x)) and np.isnan(loom.max(x))
    assert loom.argmin(x) == 1 == loom.argmax(x) == np.argmin(x)
    # one answer for the zeros on every backend: IEEE 754-2019 minimum and maximum
    for z in (np.array([0.0, -0.0]), np.array([-0.0, 0.0, 0.0])):
        for dtype in FLOATS:
            assert np.signbit(loom.min(z.astype(dtype))) and not np.signbit(loom.max(z.astype(dtype)))
            assert loom.argmin(z.astype(dtype)) == 0 == loom.argmax(z.astype(dtype))
    # min and max give the canonical quiet NaN, whatever NaN came in
    weird = np.array([1.0, -np.nan, 2.0], np.float32)
    weird[1] = np.frombuffer(np.uint32(0xFFC01234).tobytes(), np.float32)[0]
    assert bits(loom.min(weird)) == 0x7FC00000 == bits(loom.max(weird))
    same(loom.min(np.array([-np.inf, np.inf])), np.asarray(-np.inf))
    same(loom.max(np.array([-np.inf, np.inf])), np.asarray(np.inf))


@pytest.mark.parametrize("name", ["min", "max", "argmin", "argmax"])
def test_empty_reductions_raise_like_numpy(name):
    fn = getattr(loom, name)
    for shape, axis in (((0,), None), ((0, 3), 0), ((3, 0), 1), ((0, 0), 1)):
        with pytest.raises(ShapeError, match="empty"):
            fn(np.zeros(shape), axis=axis)
        with pytest.raises(ValueError):                 # as NumPy raises
            getattr(np, name)(np.zeros(shape), axis=axis)
    equal(fn(np.zeros((0, 3)), axis=1), getattr(np, name)(np.zeros((0, 3)), axis=1))


def test_bad_axes():
    x = np.zeros((2, 3))
    with pytest.raises(ShapeError, match="axis 2"):
        loom.sum(x, axis=2)
    with pytest.raises(ShapeError, match="repeats"):
        loom.sum(x, axis=(0, 0))
    with pytest.raises(ConfigError, match="axis"):
        loom.argmin(x, axis=1.0)
    with pytest.raises(ShapeError, match="axis -3"):
        loom.sort(x, axis=-3)


# --- sort and argsort ------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ALL)
@pytest.mark.parametrize("n", SIZES)
def test_sort_and_argsort_match_numpy_stable(dtype, n):
    rng = np.random.default_rng(n + 7)
    x = values(rng, n, dtype)
    want = np.argsort(x, kind="stable")
    equal(loom.argsort(x), want)
    same(loom.sort(x), x[want])
    assert loom.argsort(x).dtype == np.int64
    down = descending_argsort(x)
    equal(loom.argsort(x, descending=True), down)
    same(loom.sort(x, descending=True), x[down])


@pytest.mark.parametrize("dtype", ALL)
def test_sort_along_axes(dtype):
    rng = np.random.default_rng(9)
    x = values(rng, 6 * 35, dtype).reshape(6, 35)
    for axis in (0, 1, -1):
        want = np.argsort(x, axis=axis, kind="stable")
        equal(loom.argsort(x, axis=axis), want)
        same(loom.sort(x, axis=axis), np.take_along_axis(x, want, axis=axis))
        down = descending_argsort(x, axis=axis)
        equal(loom.argsort(x, axis=axis, descending=True), down)
        same(loom.sort(x, axis=axis, descending=True), np.take_along_axis(x, down, axis=axis))
    equal(loom.argsort(x, axis=None), np.argsort(x, axis=None, kind="stable"))
    same(loom.sort(x.T, axis=None), np.sort(x.T, axis=None, kind="stable"))


@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.float16])
def test_sort_of_a_million_and_three(dtype):
    x = values(np.random.default_rng(5), 1000003, dtype)
    want = np.argsort(x, kind="stable")
    equal(loom.argsort(x), want)
    same(loom.sort(x), x[want])


def test_sort_order_of_nan_zeros_and_ties():
    x = np.array([1.0, np.nan, -0.0, 0.0, -np.inf, -0.0, np.nan, np.inf, 1.0])
    assert loom.argsort(x).tolist() == [4, 2, 3, 5, 0, 8, 7, 1, 6]
    same(loom.sort(x), x[[4, 2, 3, 5, 0, 8, 7, 1, 6]])               # each zero keeps its sign
    assert loom.argsort(x, descending=True).tolist() == [1, 6, 7, 0, 8, 2, 3, 5, 4]
    for dtype in ALL:
        equal(loom.argsort(np.full(999, 1, dtype)), np.arange(999))        # all equal: input order
    neg_nan = np.array([1.0, np.nan, 2.0], np.float32)
    neg_nan[1] = -neg_nan[1]                                        # sign bit set: still last, as NumPy
    assert loom.argsort(neg_nan).tolist() == [0, 2, 1] == np.argsort(neg_nan, kind="stable").tolist()


@pytest.mark.parametrize("dtype", FLOATS)
def test_sort_keeps_every_bit_in_argsorts_order(dtype):
    """sort sorts keys alone and puts zeros and NaNs back: the same bits, NaN payloads and zero signs
    included, as gathering by the stable argsort, along either axis, both directions."""
    rng = np.random.default_rng(11)
    x = values(rng, 6 * 501, dtype).reshape(6, 501)
    ut = np.dtype(f"u{x.itemsize}")
    nan_bits = x.view(ut)[np.isnan(x)]
    x.view(ut)[np.isnan(x)] = nan_bits ^ rng.integers(1, 7, nan_bits.size).astype(ut)   # distinct payloads
    for axis in (0, 1, None):
        for descending in (False, True):
            got = loom.sort(x, axis=axis, descending=descending)
            flat = x.reshape(-1) if axis is None else x
            order = loom.argsort(x, axis=axis, descending=descending)
            want = np.take_along_axis(flat, order, axis=0 if axis is None else axis)
            assert got.view(ut).tolist() == want.view(ut).tolist(), (axis, descending)


def test_sort_of_0d_arrays():
    with pytest.raises(ShapeError, match="axis=None"):
        loom.sort(np.float32(3))
    equal(loom.sort(np.float32(3), axis=None), np.array([3], np.float32))


# --- topk ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ALL)
@pytest.mark.parametrize("n, ks", [(1, [0, 1]), (17, [0, 1, 2, 16, 17]), (1000, [1, 5, 124, 125, 126, 999]),
                                   (1000003, [10])])
def test_topk_is_the_first_k_of_the_stable_sort(dtype, n, ks):
    x = values(np.random.default_rng(n), n, dtype)
    for largest in (True, False):
        order = descending_argsort(x) if largest else np.argsort(x, kind="stable")
        for k in ks:
            v, i = loom.topk(x, k, largest=largest)
            equal(i, order[:k], f"k {k} largest {largest}")
            same(v, x[order[:k]])


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_topk_along_axes(axis):
    x = values(np.random.default_rng(6), 40 * 200, np.float32).reshape(40, 200)
    x[3] = 1.0                                                      # a row of ties
    for k in (1, 3, 39, 40) if axis == 0 else (1, 3, 25, 26, 199, 200):
        for largest in (True, False):
            order = descending_argsort(x, axis=axis) if largest else np.argsort(x, axis=axis, kind="stable")
            want = np.take(order, np.arange(k), axis=axis)
            v, i = loom.topk(x, k, axis=axis, largest=largest)
            equal(i, want, f"axis {axis} k {k}")
            same(v, np.take_along_axis(x, want, axis=axis))


def test_topk_nan_is_the_largest():
    x = np.array([2.0, np.nan, 5.0, np.nan, -1.0])
    assert loom.topk(x, 3)[1].tolist() == [1, 3, 2]
    assert loom.topk(x, 3, largest=False)[1].tolist() == [4, 0, 2]


@pytest.mark.parametrize("k", [-1, 6, 1.5, True, "2", None])
def test_topk_rejects_bad_k(k):
    with pytest.raises(ConfigError, match="k"):
        loom.topk(np.arange(5.0), k)


# --- scan ------------------------------------------------------------------------------------------

def _round_fraction(value: Fraction, dtype) -> np.generic:
    """value rounded correctly to dtype (to nearest, ties to even)."""
    dtype = np.dtype(dtype)
    near = dtype.type(float(value))
    cands = [np.nextafter(near, dtype.type(-np.inf)), near, np.nextafter(near, dtype.type(np.inf))]
    return min(cands, key=lambda c: (abs(Fraction(float(c)) - value), int(bits(c)) & 1))


@pytest.mark.parametrize("dtype, low", [(np.float64, -30), (np.float32, -18)])
def test_sum_scan_is_each_prefix_exact_and_rounded_once(dtype, low):
    """Values within the scheme's grid (2^low of the largest, n = 1000): every prefix sum is the exact
    sum rounded once; np.cumsum rounds after each addition and differs."""
    rng = np.random.default_rng(11)
    n = 1000
    x = (rng.choice([-1.0, 1.0], n) * (1 + rng.random(n)) * np.exp2(rng.integers(low, 0, n))).astype(dtype)
    total, want = Fraction(0), []
    for v in x.tolist():
        total += Fraction(v)
        want.append(_round_fraction(total, dtype))
    got = loom.scan(x)
    same(got, np.array(want, dtype))
    assert not np.array_equal(got, np.cumsum(x))
    same(loom.scan(x, inclusive=False), np.concatenate([[dtype(0)], np.array(want[:-1], dtype)]))


@pytest.mark.parametrize("dtype", FLOATS)
def test_sum_scan_specials_and_shapes(dtype):
    x = np.array([1.0, np.inf, 2.0, -np.inf, 3.0], dtype)
    with np.errstate(invalid="ignore"):
        same(loom.scan(x), np.cumsum(x))
    m = np.random.default_rng(12).standard_normal((7, 33)).astype(dtype)
    for axis in (0, 1):
        np.testing.assert_allclose(loom.scan(m, axis=axis).astype(np.float64),
                                   np.cumsum(m.astype(np.float64), axis=axis), rtol=2e-3, atol=2e-2)
    same(loom.scan(m, axis=None), loom.scan(m.reshape(-1)))
    same(loom.scan(m[2:3]), loom.scan(m)[2:3])                      # a row's bits: its own business
    for n in (0, 1):
        same(loom.scan(np.ones(n, dtype)), np.ones(n, dtype))
        same(loom.scan(np.ones(n, dtype), inclusive=False), np.zeros(n, dtype))
    with loom.deterministic(False):
        same(loom.scan(m), np.cumsum(m, axis=-1))


@pytest.mark.parametrize("dtype", [np.bool_, *INTS])
def test_integer_sum_scan_matches_numpy(dtype):
    x = values(np.random.default_rng(13), 1000, dtype)
    equal(loom.scan(x), np.cumsum(x))
    want = np.cumsum(x)
    equal(loom.scan(x, inclusive=False), np.concatenate([np.zeros(1, want.dtype), want[:-1]]))


@pytest.mark.parametrize("dtype", ALL)
@pytest.mark.parametrize("op", ["min", "max"])
@pytest.mark.parametrize("n", SIZES)
def test_min_max_scans_match_numpy_accumulate(dtype, op, n):
    x = values(np.random.default_rng(n + 14), n, dtype)
    ufunc = np.minimum if op == "min" else np.maximum
    with np.errstate(invalid="ignore"):
        want = ufunc.accumulate(x) if n else x.copy()
    equal(loom.scan(x, op), want)
    identity = {"min": np.inf, "max": -np.inf}[op] if dtype in FLOATS else (
        (op == "min") if dtype == np.bool_ else getattr(np.iinfo(dtype), "max" if op == "min" else "min"))
    equal(loom.scan(x, op, inclusive=False), np.concatenate([np.array([identity], dtype), want[:-1]])[:n])
    m = values(np.random.default_rng(n + 15), 3 * n, dtype).reshape(3, n)
    with np.errstate(invalid="ignore"):
        equal(loom.scan(m, op, axis=0), ufunc.accumulate(m, axis=0) if n else m)


def test_min_max_scan_zeros_and_nan():
    x = np.array([0.0, -0.0, 0.0, 1.0, np.nan, -5.0])
    got = loom.scan(x, "min")
    assert np.signbit(got[:3]).tolist() == [False, True, True] and np.isnan(got[4:]).all()
    got = loom.scan(-x, "max")
    assert np.signbit(got[:3]).tolist() == [True, False, False] and np.isnan(got[4:]).all()


@pytest.mark.parametrize("dtype", [np.uint8, np.int64, np.uint32])
def test_the_doubling_scan_equals_accumulate(dtype):
    """The scan CuPy runs (no minimum.accumulate there), checked here on NumPy."""
    rng = np.random.default_rng(16)
    for n in (1, 2, 3, 31, 32, 33, 1000):
        keys = values(rng, 4 * n, dtype).reshape(4, n)
        for ufunc in (np.minimum, np.maximum):
            equal(order_keys.doubling_scan(ufunc, keys), ufunc.accumulate(keys, axis=-1))


def test_scan_bad_input():
    with pytest.raises(ConfigError, match="sum, min, max"):
        loom.scan(np.ones(3), "prod")
    with pytest.raises(ShapeError, match="axis=None"):
        loom.scan(np.float64(2))


# --- histogram -------------------------------------------------------------------------------------

def _same_histogram(got, want):
    equal(got[0], want[0].astype(np.int64), "counts")
    same(got[1], want[1], "edges")


@pytest.mark.parametrize("dtype", [*INTS, *FLOATS, np.bool_])
def test_histogram_matches_numpy(dtype):
    rng = np.random.default_rng(17)
    x = values(rng, 10007, dtype, specials=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Converting input from bool", RuntimeWarning)   # NumPy's, for bool
        for bins in (1, 7, 10, 64, 1000):
            _same_histogram(loom.histogram(x, bins), np.histogram(x, bins))
        x2 = x.reshape(1, -1)
        _same_histogram(loom.histogram(x2, 5), np.histogram(x2, 5))


@pytest.mark.parametrize("rng_range", [(0.7, 1.0), (-3, 5), (np.float64(0.7), 1), (np.float32(-1.5), np.float32(2.25)),
                                       (0, 0)])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.int32, np.uint8])
def test_histogram_with_a_range(rng_range, dtype):
    x = values(np.random.default_rng(18), 5000, dtype)
    if dtype in FLOATS:
        x[::7] = np.float32(0.7)                          # values on edges (rounded to dtype)
    _same_histogram(loom.histogram(x, 13, range=rng_range), np.histogram(x, 13, range=rng_range))


def test_histogram_values_on_the_edges():
    for dtype in FLOATS:
        edges = np.linspace(-1, 1, 11).astype(dtype)
        x = np.repeat(edges, 3)
        _same_histogram(loom.histogram(x, 10), np.histogram(x, 10))
        _same_histogram(loom.histogram(x, edges), np.histogram(x, edges))
    x = np.random.default_rng(19).standard_normal(100000).astype(np.float32) * 1e-3 + 1000
    _same_histogram(loom.histogram(x, 99), np.histogram(x, 99))     # edges a few ulp apart
    with pytest.raises(ValueError, match="Too many bins"):
        np.histogram(x, 999)
    with pytest.raises(ConfigError, match="too many bins"):         # a ValueError too
        loom.histogram(x, 999)


@pytest.mark.parametrize("edges", [[0, 1, 2, 3], [-2.5, -0.1, 0, 0, 0.3, 7], [1], [], np.array([0.5, 0.5, 1.0], np.float32),
                                   [0, 10, 10]])
def test_histogram_with_given_edges(edges):
    x = values(np.random.default_rng(20), 4000, np.float64)
    x[::5] = 0.5
    x[1::5] = 10
    _same_histogram(loom.histogram(x, edges), np.histogram(x, edges))
    xi = values(np.random.default_rng(21), 400, np.int8)
    _same_histogram(loom.histogram(xi, edges), np.histogram(xi, edges))


def test_histogram_of_few_values():
    for x in (np.zeros(0), np.zeros(0, np.int16), np.array([2.5]), np.full(10, 3, np.int64), np.full(7, -0.0)):
        _same_histogram(loom.histogram(x, 4), np.histogram(x, 4))
    x = np.array([1.0, np.nan, 2.0])
    _same_histogram(loom.histogram(x, 3, range=(0, 3)), np.histogram(x, 3, range=(0, 3)))


def test_histogram_bad_input():
    x = np.arange(10.0)
    for bins in (0, -3, "auto", 2.5, [[1, 2]], [3, 1, 2]):
        with pytest.raises(ConfigError, match="bins"):
            loom.histogram(x, bins)
    for rng_range in ((3, 1), (0, np.inf), (1,)):
        with pytest.raises(ConfigError, match="range"):
            loom.histogram(x, 4, range=rng_range)
    with pytest.raises(ShapeError, match="not finite"):
        loom.histogram(np.array([1.0, np.nan]), 4)
    with pytest.raises(ConfigError, match="too many bins"):
        loom.histogram(np.array([1.0, 1.0 + 2**-52]), 100)


# --- map -------------------------------------------------------------------------------------------

TRANSCENDENTAL = ["exp", "log", "log1p", "expm1", "tanh", "sigmoid", "softplus", "silu", "erf", "gelu",
                  "gelu_tanh", "sin", "cos"]
NUMPY = {"exp": np.exp, "log": np.log, "log1p": np.log1p, "expm1": np.expm1, "tanh": np.tanh, "sin": np.sin,
         "cos": np.cos, "sigmoid": lambda x: 1 / (1 + np.exp(-x)), "softplus": lambda x: np.logaddexp(0, x),
         "silu": lambda x: x / (1 + np.exp(-x)), "erf": np.vectorize(math.erf),
         "gelu": lambda x: 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2))),
         "gelu_tanh": lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))}


@pytest.mark.parametrize("op", TRANSCENDENTAL)
@pytest.mark.parametrize("dtype", FLOATS)
def test_map_transcendentals(op, dtype):
    rng = np.random.default_rng(22)
    x = (rng.standard_normal(1001) * 3).astype(dtype)
    if op in ("log", "log1p"):
        x = np.abs(x)
    got = loom.map(x, op)
    assert got.dtype == dtype
    work = np.float32 if dtype == np.float16 else dtype
    same(got, mathlib.evaluate(op, x.astype(work)).astype(dtype), "deterministic: Loom's math library")
    want = NUMPY[op](x.astype(np.float64))
    tol = {np.float16: 2e-3, np.float32: 3e-6, np.float64: 1e-13}[dtype]
    np.testing.assert_allclose(got.astype(np.float64), want, rtol=tol, atol=tol)
    with loom.deterministic(False):
        np.testing.assert_allclose(loom.map(x, op).astype(np.float64), want, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype, out", [(np.int8, np.float16), (np.uint8, np.float16), (np.bool_, np.float16),
                                        (np.int16, np.float32), (np.int32, np.float64), (np.uint64, np.float64)])
def test_map_of_integers_has_numpys_dtype(dtype, out):
    x = values(np.random.default_rng(23), 50, dtype) % 5
    got = loom.map(x.astype(dtype), "exp")
    assert got.dtype == out == np.exp(x.astype(dtype)).dtype
    np.testing.assert_allclose(got.astype(np.float64), np.exp(x.astype(np.float64)), rtol=2e-3)


EXACT = {"abs": np.abs, "neg": np.negative, "square": np.square, "sqrt": np.sqrt, "reciprocal": lambda x: 1 / x,
         "floor": np.floor, "ceil": np.ceil, "trunc": np.trunc, "rint": np.rint}


@pytest.mark.parametrize("op", list(EXACT) + ["relu"])
@pytest.mark.parametrize("dtype", [*FLOATS, np.int8, np.int32, np.uint16])
def test_map_exact_unary_ops_are_numpys_bits(op, dtype):
    x = values(np.random.default_rng(24), 1000, dtype)
    if dtype in INTS and op in ("reciprocal",):
        x[x == 0] = 1
    with np.errstate(all="ignore"):
        want = EXACT[op](x) if op != "relu" else np.where(x > 0, x, np.where(np.isnan(x), x, 0)).astype(x.dtype) \
            if dtype in FLOATS else np.where(x > 0, x, 0).astype(x.dtype)
    got = loom.map(x, op)
    same(got, want, op)


def test_relu_of_zeros_and_nan():
    got = loom.map(np.array([-0.0, 0.0, np.nan, -1.0, 2.0]), "relu")
    assert bits(got[:2]).tolist() == [0, 0] and np.isnan(got[2]) and got[3:].tolist() == [0.0, 2.0]


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div", "maximum", "minimum", "pow"])
@pytest.mark.parametrize("dtype", [*FLOATS, np.int8, np.int64, np.uint8])
@pytest.mark.parametrize("s", [2, 3.5, -0.0, np.float64(0.1)])
def test_map_with_a_scalar_is_numpys_bits(op, dtype, s):
    x = values(np.random.default_rng(25), 1000, dtype)
    fn = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.true_divide, "maximum": np.maximum,
          "minimum": np.minimum, "pow": np.power}[op]
    with np.errstate(all="ignore"):
        want = fn(x, s)
    got = loom.map(x, op, s)
    if op == "pow" and want.dtype.kind == "f":          # Loom's pow in deterministic mode: close to NumPy's
        assert got.dtype == want.dtype
        finite = np.isfinite(want) & (np.abs(want) < np.finfo(want.dtype).max / 4)
        np.testing.assert_allclose(got[finite], want[finite], rtol=2e-3 if dtype == np.float16 else 1e-6)
        with loom.deterministic(False):
            same(loom.map(x, op, s), want)
    elif op in ("maximum", "minimum"):                 # NumPy's float16 loop picks x on ties, the others s
        equal(got, want, f"{op} {s}")
    else:
        same(got, want, f"{op} {s}")


def test_map_maximum_and_minimum_of_zeros_and_nan():
    """On a tie (-0 and +0) the scalar, for every float type (NumPy's float32 and float64 loops; its
    float16 loop picks x); a NaN on either side is the result."""
    x = np.array([0.0, -0.0, np.nan, 1.0])
    for dtype in FLOATS:
        for op in ("maximum", "minimum"):
            got = loom.map(x.astype(dtype), op, -0.0)
            assert np.signbit(got[:2]).all() and np.isnan(got[2]), (dtype, op)
            assert np.isnan(loom.map(x.astype(dtype), op, np.nan)).all()


def test_map_bad_input():
    x = np.ones(3)
    with pytest.raises(ConfigError, match="exp, expm1"):
        loom.map(x, "exp2")
    with pytest.raises(ConfigError, match="operand"):
        loom.map(x, "exp", 2.0)
    with pytest.raises(ConfigError, match="operand"):
        loom.map(x, "mul")
    with pytest.raises(ConfigError, match="operand"):
        loom.map(x, "mul", np.ones(3))
    with pytest.raises(ConfigError, match="operand"):
        loom.map(np.arange(3, dtype=np.int8), "add", 1000)
    with pytest.raises(ConfigError, match="operand"):
        loom.map(np.arange(3), "pow", -1)
    with pytest.raises(ShapeError, match="bool"):
        loom.map(np.ones(3, bool), "neg")
    assert set(patterns.MAP_OPS) >= {"exp", "relu", "mul", "pow", "sigmoid"}


# --- matmul ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32])
def test_matmul(dtype):
    rng = np.random.default_rng(26)
    a = (rng.standard_normal((5, 33, 17)) * 4).astype(dtype)
    b = (rng.standard_normal((17, 9)) * 4).astype(dtype)
    got = loom.matmul(a, b)
    assert got.dtype == dtype and got.shape == (5, 33, 9)
    np.testing.assert_allclose(got, np.matmul(a, b), rtol=1e-5, atol=1e-4)
    same(loom.matmul(a[1], b), got[1])                  # batch-invariant bits
    with pytest.raises(ShapeError, match="at least one dimension"):
        loom.matmul(np.float32(2), b)

"""exact.fixed, the integer products of spec 4: each row's integers follow the definition
(checked with exact rational arithmetic: the finest scale, ties to even, the spill past 32767), every
entry is the exact integer sum rounded once (Python integers and fractions), zeros are +0, overflow and
subnormal results round as IEEE does, inf and NaN rows take IEEE's values, a row's bits do not depend on
the other rows, and the int8 planes rebuild the sums exactly in int32 up to K = 2^15 - 1."""
from fractions import Fraction

import numpy as np
import pytest

from loom import backend
from loom.errors import ShapeError
from loom.kernels.exact import fixed

RNG = np.random.default_rng(20261126)
BE = backend.get("cpu")


def _wide_rows(rows, k, spread=20):
    """Random rows of every magnitude range: normal values times 2^[-spread, spread], a few zeros."""
    x = RNG.standard_normal((rows, k)) * np.exp2(RNG.integers(-spread, spread + 1, (rows, k)))
    x[RNG.random((rows, k)) < 0.05] = 0.0
    return x.astype(np.float32)


def _integers(row):
    """(e, q) of the definition for one finite row, from fractions: the least e whose rounding of
    the largest magnitude stays within 32767."""
    values = [Fraction(float(v)) for v in row]
    top = max(abs(v) for v in values)
    if top == 0:
        return 0, [0] * len(values)
    e = -200
    while True:
        q = [round(v * Fraction(2) ** (15 - e)) for v in values]      # round(): ties to even
        if max(abs(i) for i in q) <= 32767:
            return e, q
        e += 1


def _round32(x: Fraction) -> np.float32:
    """x rounded once to float32 (to nearest, ties to even, +0 for zero, inf past the threshold)."""
    if x == 0:
        return np.float32(0.0)
    if abs(x) >= 2 ** 128 - 2 ** 103:
        return np.float32(np.inf if x > 0 else -np.inf)
    with np.errstate(over="ignore"):
        c = np.float32(float(x))
    near = [v for v in (np.nextafter(c, np.float32(-np.inf)), c, np.nextafter(c, np.float32(np.inf)))
            if np.isfinite(v)]
    return min(near, key=lambda v: (abs(Fraction(float(v)) - x), int(np.array(v).view(np.uint32)) & 1))


def _reference(x, w):
    rows = [_integers(r) for r in x]
    cols = [_integers(r) for r in w]
    out = np.empty((len(rows), len(cols)), np.float32)
    for i, (ex, qx) in enumerate(rows):
        for j, (ew, qw) in enumerate(cols):
            s = sum(a * b for a, b in zip(qx, qw))
            out[i, j] = _round32(Fraction(s) * Fraction(2) ** (ex + ew - 30))
    return out


def _bits(a):
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def test_each_rows_integers_follow_the_definition():
    x = _wide_rows(6, 40)
    x[1] = 0.0
    x[2, 0] = np.float32(2.0 ** -140)                        # a subnormal row
    x[2, 1:] = 0.0
    x[3, :3] = [np.float32(1.0), -np.float32(1.0), np.float32(0.5)]      # largest a power of two
    x[3, 3:] = 0.0
    x[4] = np.float32(1.0 - 2.0 ** -20)                      # rounds to 32768 at the first scale: spills
    x[4, 1] = np.float32(-0.75)
    x[5] = 0.0
    x[5, :3] = [23 * 2.0 ** -15, -25 * 2.0 ** -15, 1.0]     # e = 1: q = 11.5 and -12.5, to even
    e = fixed.row_exponents(np, x)
    q = fixed.to_integers(np, x, e)
    for row, ei, qi in zip(x, e, q):
        want_e, want_q = _integers(row)
        assert int(ei) == want_e
        assert qi.tolist() == want_q
    assert int(e[4]) == 1 and np.abs(q[4]).max() == 16384            # the spilled row
    assert q[5, :2].tolist() == [12, -12]


@pytest.mark.parametrize("m, n, k", [(1, 7, 33), (5, 9, 64), (3, 4, 300)])
def test_every_entry_is_the_exact_integer_sum_rounded_once(m, n, k):
    x, w = _wide_rows(m, k), _wide_rows(n, k, spread=8)
    got = fixed.matmul_t(BE, x, w)
    assert got.dtype == np.float32 and got.shape == (m, n)
    np.testing.assert_array_equal(_bits(got), _bits(_reference(x, w)))
    # the caller's exponents give the same bits
    np.testing.assert_array_equal(_bits(fixed.matmul_t(BE, x, w, fixed.row_exponents(np, w))), _bits(got))


def test_zero_sums_are_positive_and_results_reach_both_ends_of_float32():
    x = np.array([[1.0, 1.0, -0.0, 0.0], [-0.0, -0.0, -0.0, -0.0], [2.0 ** 100, 2.0 ** 100, 0, 0],
                  [2.0 ** -70, 3 * 2.0 ** -72, 0, 0]], np.float32)
    w = np.array([[1.0, -1.0, 5.0, 2.0], [-1.0, 1.0, -1.0, 1.0], [2.0 ** 60, 2.0 ** 60, 0, 0],
                  [2.0 ** -70, 2.0 ** -71, 0, 0]], np.float32)
    got = fixed.matmul_t(BE, x, w)
    want = _reference(x, w)
    np.testing.assert_array_equal(_bits(got), _bits(want))
    assert _bits(got[0, 0]) == 0 and _bits(got[1, 2]) == 0            # exact zeros are +0
    assert np.isinf(got[2, 2]) and got[2, 2] > 0                      # 2^161 overflows
    assert 0 < got[3, 3] < np.finfo(np.float32).tiny                  # a subnormal result


def test_inf_and_nan_rows_take_ieees_values_and_leave_the_others():
    x, w = _wide_rows(4, 16), _wide_rows(5, 16)
    x[1, 3], w[2, 7], w[4, 0] = np.inf, np.nan, -np.inf
    x[3, 0], x[3, 1:] = np.inf, 0.0
    w[0, 0] = 0.0
    with np.errstate(invalid="ignore"):
        got = fixed.matmul_t(BE, x, w)
    assert np.isnan(got[:, 2]).all()
    assert np.isnan(got[3, 0])                                         # inf * 0
    assert np.isinf(got[1, [0, 1, 3]]).all() and np.isinf(got[0, 4])
    clean = [0, 2]
    np.testing.assert_array_equal(_bits(got[np.ix_(clean, [0, 1, 3])]),
                                  _bits(_reference(x[clean], w[[0, 1, 3]])))


def test_a_rows_bits_do_not_depend_on_the_other_rows():
    x, w = _wide_rows(12, 200), _wide_rows(30, 200, spread=6)
    together = fixed.matmul_t(BE, x, w)
    for i in (0, 5, 11):
        alone = fixed.matmul_t(BE, x[i:i + 1], w)
        np.testing.assert_array_equal(_bits(alone[0]), _bits(together[i]))
    x2 = np.concatenate([x[:3], np.full((2, 200), 3e38, np.float32), np.zeros((1, 200), np.float32)])
    np.testing.assert_array_equal(_bits(fixed.matmul_t(BE, x2, w)[:3]), _bits(together[:3]))


@pytest.mark.parametrize("k", [1000, (1 << 15) - 1])
def test_the_int8_planes_rebuild_the_sums_in_int32(k):
    """q = 256 hi + lo with hi int8 and lo uint8; the four plane products, each in int32 (no overflow up
    to K = 2^15 - 1 even at the extremes), give S = 65536 HH + 256 (HL + LH) + LL exactly."""
    x, w = _wide_rows(3, k, spread=3), _wide_rows(4, k, spread=3)
    x[0] = 1.0                                                         # q = 32767 throughout: the extremes
    w[0] = -1.0
    w[1] = np.float32(1.0 - 2.0 ** -9)                                 # lo planes of 255
    ex, ew = fixed.row_exponents(np, x), fixed.row_exponents(np, w)
    qx, qw = fixed.to_integers(np, x, ex), fixed.to_integers(np, w, ew)
    (xh, xl), (wh, wl) = fixed.planes(np, qx), fixed.planes(np, qw)
    assert np.array_equal(256 * xh.astype(np.int64) + xl, qx.astype(np.int64))

    def product(a, b):                                                 # an int32 accumulator, checked
        s = a.astype(np.int64) @ b.astype(np.int64).T
        assert np.abs(s).max() < 2 ** 31
        return s
    s = 65536 * product(xh, wh) + 256 * (product(xh, wl) + product(xl, wh)) + product(xl, wl)
    assert np.array_equal(s, qx.astype(np.int64) @ qw.astype(np.int64).T)
    np.testing.assert_array_equal(_bits(fixed.finish(np, s.astype(np.float64), ex, ew)),
                                  _bits(fixed.matmul_t(BE, x, w)))


def test_long_products_are_exact():
    k = 3 * (1 << 14) + 5
    x, w = _wide_rows(2, k, spread=4), _wide_rows(3, k, spread=4)
    ex, ew = fixed.row_exponents(np, x), fixed.row_exponents(np, w)
    s = fixed.to_integers(np, x, ex).astype(np.int64) @ fixed.to_integers(np, w, ew).astype(np.int64).T
    want = [[_round32(Fraction(int(s[i, j])) * Fraction(2) ** int(ex[i] + ew[j] - 30)) for j in range(3)]
            for i in range(2)]
    np.testing.assert_array_equal(_bits(fixed.matmul_t(BE, x, w)), _bits(np.array(want, np.float32)))


def test_bad_shapes_are_refused():
    with pytest.raises(ShapeError, match=r"x \[M, K\] and w \[N, K\]"):
        fixed.matmul_t(BE, np.ones((2, 3), np.float32), np.ones((3, 2), np.float32))

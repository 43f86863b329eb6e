"""exact_rounded: every entry of a float32 product is the exact dot product rounded once (to nearest,
ties to even), on both CPU forms (numba's loops and the NumPy passes), checked against exact rational
arithmetic on inputs chosen to land on float32's midpoints, subnormals, overflow and signed zeros."""
from fractions import Fraction

import numpy as np
import pytest
from rounded_cases import CASES, doubtful
from rounded_cases import case as _case

from loom.backend.cpu import rounded as rounded_jit
from loom.kernels import exact

RNG = np.random.default_rng(20261121)
_BIG = Fraction(2 ** 128 - 2 ** 103)          # from here on, float32 rounds to inf


def _round(x: Fraction) -> np.float32:
    """x rounded to the nearest float32, ties to the even significand: by comparing distances."""
    if x == 0:
        return np.float32(0.0)
    if abs(x) >= _BIG:
        return np.float32(np.inf if x > 0 else -np.inf)
    with np.errstate(over="ignore"):
        c = np.float32(float(x))
        near = [v for v in (np.nextafter(c, np.float32(-np.inf)), c, np.nextafter(c, np.float32(np.inf)))
                if np.isfinite(v)]
    best = min(near, key=lambda v: (abs(Fraction(float(v)) - x), int(np.array(v).view(np.uint32)) & 1))
    return np.float32(-0.0) if best == 0 and x < 0 else best


def _reference(a, b):
    out = np.empty(a.shape[:-1] + b.shape[-1:], np.float32)
    for i in range(a.shape[0]):
        for j in range(b.shape[1]):
            out[i, j] = _round(sum((Fraction(float(x)) * Fraction(float(y)) for x, y in zip(a[i], b[:, j])),
                                   Fraction(0)))
    return out


def _bits(x):
    return np.ascontiguousarray(x).view(np.uint32).tolist()




@pytest.mark.parametrize("name", CASES)
def test_every_entry_is_the_exact_dot_product_rounded_once(name, cpu_path):
    a, b = _case(name)
    with np.errstate(over="ignore"):
        got = exact.matmul(a, b)
        assert got.dtype == np.float32 and _bits(got) == _bits(_reference(a, b))
        if name != "normal":                   # these reach the exact sums, not only the certified path
            assert doubtful(a, b).sum() > 0


@pytest.mark.parametrize("name", ["wide", "integers", "midpoints"])
def test_both_cpu_forms_agree_on_transposed_operands(name, monkeypatch):
    a, b = _case(name)
    want = _bits(_reference(a, b))
    for jit in ("0", "1"):
        monkeypatch.setenv("LOOM_JIT", jit)
        # F-ordered views, as x.T @ dy and x @ W.T pass them
        got = exact.matmul(np.asfortranarray(a), np.asfortranarray(b))
        assert _bits(got) == want, jit


def test_each_later_stage_is_reached_and_rounds_correctly():
    """The compensated sum certifies what the GEMM's bound cannot on random data; entries with no
    nonzero product are +0 (through the masks when many); midpoints need the exact sum."""
    if not rounded_jit.available():
        pytest.skip("numba is not installed (the loom[cpu] extra)")
    a = RNG.standard_normal((40, 4096)).astype(np.float32)
    b = RNG.standard_normal((4096, 40)).astype(np.float32)
    entries = np.argwhere(doubtful(a, b))
    assert len(entries) > 0
    for i, j in entries:
        got, certain = rounded_jit._dot2(a, b, i, j)
        assert certain and _bits(np.float32(got)) == _bits(_reference(a[i:i + 1], b[:, j:j + 1])[0, 0])
    m, mid = _case("midpoints")
    assert not rounded_jit._dot2(m, mid, 0, 0)[1]               # 2^24 + 1 + 2^-30: too close to call
    s, t = _case("sparse")
    assert rounded_jit._MASKED_FROM < (s.astype(np.float64) @ t == 0).sum() < s.shape[0] * t.shape[1]


def test_zero_results_are_positive_and_tiny_negative_results_are_negative_zero(cpu_path):
    a = np.array([[1.0, -1.0], [-0.0, 0.0], [-2.0 ** -100, 0.0], [0.0, 0.0]], np.float32)
    b = np.array([[1.0, 1.0], [-0.0, 2.0 ** -100]], np.float32).T.copy()
    got = exact.matmul(a, b)
    assert _bits(got) == _bits(_reference(a, b))
    assert np.signbit(got[2, 0]) and not np.signbit(got[0, 0]) and not np.signbit(got[1, 0])


def test_batched_vector_and_half_precision_products_round_each_entry(cpu_path):
    a = RNG.standard_normal((3, 5, 30)).astype(np.float32)
    b = RNG.standard_normal((30, 7)).astype(np.float32)
    got = exact.matmul(a, b)
    assert _bits(got) == _bits(np.stack([_reference(x, b) for x in a]))
    v = RNG.standard_normal(30).astype(np.float32)
    assert _bits(exact.matmul(v, b)) == _bits(_reference(v[None], b)[0])
    assert _bits(exact.matmul(a[0], v)) == _bits(_reference(a[0], v[:, None])[:, 0])
    h = a[0].astype(np.float16)
    got16 = exact.matmul(h, b.astype(np.float16))
    assert got16.dtype == np.float16
    want16 = _reference(h.astype(np.float32), b.astype(np.float16).astype(np.float32)).astype(np.float16)
    assert got16.view(np.uint16).tolist() == want16.view(np.uint16).tolist()


def test_special_values_follow_ieee_and_leave_other_entries_alone(cpu_path):
    a, b = _case("integers")
    a, b = a.copy(), b.copy()
    a[2, 5], b[7, 4], a[3, 0] = np.inf, np.nan, -np.inf
    got = exact.matmul(a, b)
    with np.errstate(invalid="ignore"):
        ieee = a.astype(np.float64) @ b.astype(np.float64)
    special = ~np.isfinite(ieee)
    assert np.array_equal(np.isnan(got), np.isnan(ieee)) and np.array_equal(got[special & ~np.isnan(ieee)],
                                                                              ieee[special & ~np.isnan(ieee)])
    clean = np.ones_like(special)
    clean[[2, 3], :], clean[:, 4] = False, False
    want = _reference(np.nan_to_num(a, posinf=0, neginf=0), np.nan_to_num(b))    # the other entries' values
    assert _bits(got[clean]) == _bits(want[clean])


@pytest.mark.parametrize("shapes", [((2, 3, 2048), (2048, 4)), ((3, 2048), (2, 2048, 4)),
                                    ((2, 3, 2048), (2, 2048, 4)), ((2, 1, 3, 2048), (2, 2048, 5))])
def test_stacked_products_round_each_entry(shapes, cpu_path):
    """Stacks at the longest K the rounded scheme takes: a stack against a matrix (folded into one
    matrix product), two stacks, and broadcast batch axes; every entry against exact arithmetic."""
    a, b = RNG.standard_normal(shapes[0]).astype(np.float32), RNG.standard_normal(shapes[1]).astype(np.float32)
    got = exact.matmul(a, b)
    batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    a_all, b_all = np.broadcast_to(a, batch + a.shape[-2:]), np.broadcast_to(b, batch + b.shape[-2:])
    for index in np.ndindex(*batch):
        assert _bits(got[index]) == _bits(_reference(a_all[index], b_all[index])), index




def test_stacks_of_transposed_operands_and_specials_agree_on_both_cpu_forms(monkeypatch):
    """Attention's shapes (q k^T with k^T a transposed view, then p v) with an inf and a NaN in one
    matrix of the stack: the compiled loops, one matrix at a time, against the NumPy passes."""
    q = RNG.standard_normal((3, 40, 64)).astype(np.float32)
    k = RNG.standard_normal((3, 50, 64)).astype(np.float32)
    q[1, 7, 3], k[2, 11, 5] = np.inf, np.nan
    v = RNG.standard_normal((3, 50, 64)).astype(np.float32)
    results = {}
    for jit in ("1", "0"):
        monkeypatch.setenv("LOOM_JIT", jit)
        scores = exact.matmul(q, k.transpose(0, 2, 1))
        results[jit] = (scores, exact.matmul(np.nan_to_num(scores, nan=0.5, posinf=2.0), v))
    for got, want in zip(results["1"], results["0"]):
        assert np.array_equal(np.isnan(got), np.isnan(want))
        assert _bits(np.nan_to_num(got, nan=0)) == _bits(np.nan_to_num(want, nan=0))


def test_many_open_entries_are_settled_together_with_the_exact_bits(monkeypatch):
    """Operands of few significant bits (bfloat16 values, integers) leave many entries on float32
    midpoints; the NumPy passes settle them together (rounded._sums_without_error: sums shown exact,
    partial sums past float64's reach too) and only the rest one by one, with the exact bits."""
    from loom.kernels.exact import rounded
    monkeypatch.setenv("LOOM_JIT", "0")
    ints = RNG.integers(-(1 << 12), 1 << 12, (48, 64)).astype(np.float32)
    ints_b = RNG.integers(-(1 << 12), 1 << 12, (64, 40)).astype(np.float32)
    bf16 = (RNG.standard_normal((48, 64)).astype(np.float32).view(np.uint32) & 0xFFFF0000).view(np.float32)
    bf16_b = (RNG.standard_normal((64, 40)).astype(np.float32).view(np.uint32) & 0xFFFF0000).view(np.float32)
    wide, wide_b = ints.copy(), ints_b.copy()
    wide[:, 0], wide[:, 1], wide_b[1] = 2.0 ** 60, -(2.0 ** 60), wide_b[0]    # partial sums past 2^53, cancelling
    slow = []
    one = rounded._round_float32
    monkeypatch.setattr(rounded, "_round_float32", lambda p: slow.append(1) or one(p))
    for a, b in ((ints, ints_b), (bf16, bf16_b), (wide, wide_b)):
        open_ = int(doubtful(a, b).sum())
        assert open_ > 64
        slow.clear()
        assert _bits(exact.matmul(a, b)) == _bits(_reference(a, b))
        assert len(slow) < open_ / 4

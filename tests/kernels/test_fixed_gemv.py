"""The CPU's compiled loops for the integer scheme of decoder weight products (backend/cpu/fixed_gemv.py):
the integer sums, scaled and rounded by BlockQuantized, give exact.fixed's bits for every
type they take and 1 to 16 rows of x, the rows' exponents are fixed.row_exponents', and rows holding inf
or NaN take IEEE's values through the decoded path."""
import numpy as np
import pytest
from quant_rows import random_rows

pytest.importorskip("numba")

import loom  # noqa: E402
from loom import backend  # noqa: E402
from loom.backend.cpu import fixed_gemv  # noqa: E402
from loom.kernels.exact import fixed  # noqa: E402
from loom.kernels.quant.block import BlockQuantized  # noqa: E402

CPU = backend.get("cpu")


@pytest.mark.parametrize("qtype", fixed_gemv.TYPES)
@pytest.mark.parametrize("m", [1, 5, 16])
def test_integer_sums_give_the_schemes_bits(qtype, m):
    rng = np.random.default_rng(m + len(qtype))
    rows, cols = 37, 576
    data = random_rows(qtype, rows, cols, rng, scale=0.01, plain=0.05)
    w = BlockQuantized(data, qtype, (rows, cols))
    x = rng.standard_normal((m, cols)).astype(np.float32)
    x[0] *= 3e4
    assert fixed_gemv.supports(qtype, m)
    ew, bad = fixed_gemv.w_exponents(data, qtype, cols)
    dense = w.dequantize()
    assert np.array_equal(ew, fixed.row_exponents(np, dense)) and not bad.any()
    with loom.deterministic(True):
        got = w.matmul_t(x)
    assert np.array_equal(got.view(np.uint32), fixed.matmul_t(CPU, x, dense).view(np.uint32))


def test_rows_holding_inf_or_nan_take_ieees_values():
    rng = np.random.default_rng(3)
    rows, cols = 9, 64
    values = rng.standard_normal((rows, cols)).astype(np.float32)
    values[2, 5], values[4, 0] = np.inf, np.nan
    w = BlockQuantized(values.view(np.uint8).reshape(rows, -1), "F32", (rows, cols))
    x = rng.standard_normal((2, cols)).astype(np.float32)
    _, bad = fixed_gemv.w_exponents(w.data, "F32", cols)
    assert bad.tolist() == [False, False, True, False, True] + [False] * 4
    with loom.deterministic(True), np.errstate(invalid="ignore"):
        got = w.matmul_t(x)
        want = fixed.matmul_t(CPU, x, values)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    assert not np.isfinite(got[:, [2, 4]]).any() and np.isfinite(got[:, [0, 1, 3]]).all()


def test_one_row_sums_round_ties_to_even_and_take_the_largest_integers():
    """The one-row sums (row_dots' integer intrinsics) round each scaled value to its integer with ties to
    even, as fixed.to_integers does: a Q8_0 row whose second block's values scale to odd multiples of
    0.5 (its scale is the first's times 2^-8), and integers of +-32767 in both x and W."""
    rng = np.random.default_rng(5)
    cols = 256
    codes = rng.integers(-127, 128, (3, cols), dtype=np.int8)
    codes[:, 0], codes[1, 1] = 127, -127                   # the row maxima: integers of magnitude 32767
    blocks = np.zeros((3, cols // 32, 34), np.uint8)
    for r, scale in enumerate((1.5, 0.75, 3.0)):
        d = np.array([scale * 2.0 ** (-8 * (b % 2)) for b in range(cols // 32)], np.float16)
        blocks[r, :, :2] = d.view(np.uint8).reshape(-1, 2)
        blocks[r, :, 2:] = codes[r].view(np.uint8).reshape(-1, 32)
    data = blocks.reshape(3, -1)
    w = BlockQuantized(data, "Q8_0", (3, cols))
    dense = w.dequantize()
    ties = (np.ldexp(dense.astype(np.float64), (15 - fixed.row_exponents(np, dense))[:, None]) % 1) == 0.5
    assert ties.sum() > 50                                  # many values sit on a tie
    x = rng.standard_normal((1, cols)).astype(np.float32)
    x[0, 7] = -40.0                                         # x's largest magnitude: integer -32767 or so
    with loom.deterministic(True):
        got = w.matmul_t(x)
    assert np.array_equal(got.view(np.uint32), fixed.matmul_t(CPU, x, dense).view(np.uint32))


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q8_0"])
def test_one_row_sums_over_the_float16_scales_range(qtype):
    """The one-row sums fold each row's 2^(15 - e) into its blocks' float16 scales and sum int16 products in int64:
    the scheme's bits for rows whose scales are float16 subnormals (2^-24: 2^(15 - e) far above 1), near float16's
    largest (values past 2^15: 2^(15 - e) below 1), mixed within a row, and offsets m of both signs (Q4_1)."""
    rng = np.random.default_rng(len(qtype))
    cols, nb = 320, 10
    width = {"Q4_0": 18, "Q4_1": 20, "Q8_0": 34}[qtype]
    rows = 6
    blocks = rng.integers(0, 256, (rows, nb, width), dtype=np.uint8)
    exponents = {0: (-24, -24), 1: (-20, -14), 2: (10, 15), 3: (-24, 15), 4: (-8, -2), 5: (0, 0)}
    for r, (lo, hi) in exponents.items():
        d = (np.exp2(rng.integers(lo, hi + 1, nb)) * rng.uniform(1, 2, nb) * rng.choice([-1, 1], nb)).astype(np.float16)
        blocks[r, :, :2] = d.view(np.uint8).reshape(-1, 2)
        if qtype == "Q4_1":
            m = np.clip(d.astype(np.float32) * rng.uniform(-8, 8, nb), -6e4, 6e4).astype(np.float16)
            blocks[r, :, 2:4] = m.view(np.uint8).reshape(-1, 2)
    data = blocks.reshape(rows, -1)
    w = BlockQuantized(data, qtype, (rows, cols))
    dense = w.dequantize()
    assert np.isfinite(dense).all() and (np.abs(dense) < 2.0 ** -14).any() and (np.abs(dense) > 2.0 ** 15).any()
    x = rng.standard_normal((1, cols)).astype(np.float32)
    x[0, 3] = 50.0                                          # x's largest magnitude: integer 32767 or so
    with loom.deterministic(True):
        got = w.matmul_t(x)
    assert np.array_equal(got.view(np.uint32), fixed.matmul_t(CPU, x, dense).view(np.uint32))

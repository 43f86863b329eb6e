"""The CPU's compiled loops for the integer scheme of decoder weight products (backend/cpu/fixed_gemv.py):
the integer sums, scaled and rounded by BlockQuantized, give exact.fixed's bits for every
type they take and 1 to 16 rows of x, the rows' exponents are fixed.row_exponents', and rows holding inf
or NaN take IEEE's values through the decoded path."""
import numpy as np
import pytest
from quant_rows import float32_edges, random_rows

pytest.importorskip("numba")

import loom  # noqa: E402
from loom import backend  # noqa: E402
from loom.backend.cpu import fixed_gemv  # noqa: E402
from loom.kernels.exact import fixed  # noqa: E402
from loom.kernels.quant.block import BlockQuantized  # noqa: E402

CPU = backend.get("cpu")


@pytest.mark.parametrize("qtype", fixed_gemv.TYPES)
@pytest.mark.parametrize("m", [1, 5, 16, 17, 70])
def test_integer_sums_give_the_schemes_bits(qtype, m):
    rng = np.random.default_rng(m + len(qtype))
    rows, cols = 37, 576
    data = random_rows(qtype, rows, cols, rng, scale=0.01, plain=0.05)
    w = BlockQuantized(data, qtype, (rows, cols))
    x = rng.standard_normal((m, cols)).astype(np.float32)
    x[0] *= 3e4
    assert fixed_gemv.supports(qtype, m) if m <= fixed_gemv.MAX_ROWS else CPU.quant.fixed_wide(qtype, cols)
    ew, bad = fixed_gemv.w_exponents(data, qtype, cols)
    dense = w.dequantize()
    assert np.array_equal(ew, fixed.row_exponents(np, dense)) and not bad.any()
    with loom.deterministic(True):
        got = w.matmul_t(x)
    assert np.array_equal(got.view(np.uint32), fixed.matmul_t(CPU, x, dense).view(np.uint32))


def test_the_compiled_loops_take_k_below_the_schemes_bound():
    assert fixed_gemv.MAX_K == fixed.MAX_K
    assert CPU.quant.fixed_wide("Q8_0", fixed.MAX_K - 32) and not CPU.quant.fixed_wide("Q8_0", fixed.MAX_K)


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


FINITE_F16 = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
FINITE_F16 = FINITE_F16[np.isfinite(FINITE_F16.view(np.float16))]
WIDTHS = {"Q4_0": 18, "Q4_1": 20, "Q8_0": 34}


def _f16(value):
    return np.array([value], np.float16).view(np.uint8)


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q8_0"])
def test_one_row_sums_over_the_float16_scales_range(qtype):
    """The one-row sums fold each row's 2^(15 - e) into its blocks' float16 scales and sum int16 products in int64:
    the scheme's bits for scales drawn from every finite float16 (subnormal ones: 2^(15 - e) up to 2^38; the
    largest: values past 2^15, 2^(15 - e) below 1), offsets of both signs (Q4_1), rows at the ends of that range
    (65,504 with zero codes and an offset of 2^-24; 65,504 times -128), all-zero rows, a rounding fma (a large d
    and a subnormal m) and x at several scales."""
    rng = np.random.default_rng(len(qtype))
    rows, nb = 24, 10
    blocks = rng.integers(0, 256, (rows, nb, WIDTHS[qtype]), dtype=np.uint8)
    blocks[:, :, :2] = rng.choice(FINITE_F16, (rows, nb)).view(np.uint8).reshape(rows, nb, 2)
    codes = 4 if qtype == "Q4_1" else 2
    if qtype == "Q4_1":
        blocks[:, :, 2:4] = rng.choice(FINITE_F16, (rows, nb)).view(np.uint8).reshape(rows, nb, 2)
        blocks[0, :, :2], blocks[0, :, 2:4], blocks[0, :, 4:] = _f16(65504), _f16(2.0 ** -24), 0
        blocks[1, :, :2], blocks[1, :, 2:4] = _f16(32800), _f16(3 * 2.0 ** -24)
    blocks[2, :, :2], blocks[2, :, codes:] = _f16(65504), 0x80 if qtype == "Q8_0" else 0
    blocks[3, :, :2], blocks[3, :, codes:] = _f16(65504), 0x88 if qtype == "Q4_0" else 0      # (Q4_1: m's)
    if qtype == "Q4_1":
        blocks[3, :, 2:4] = 0
    data = blocks.reshape(rows, -1)
    w = BlockQuantized(data, qtype, (rows, nb * 32))
    dense = w.dequantize()
    assert np.isfinite(dense).all() and (np.abs(dense) < 2.0 ** -14).any() and (np.abs(dense) > 2.0 ** 15).any()
    for scale in (1.0, 2.0 ** -140, 2.0 ** 90):
        x = rng.standard_normal((1, nb * 32)).astype(np.float32)
        x[0, 3] = 50.0
        x *= np.float32(scale)
        with loom.deterministic(True):
            got = w.matmul_t(x)
        assert np.array_equal(got.view(np.uint32), fixed.matmul_t(CPU, x, dense).view(np.uint32)), (qtype, scale)


def test_one_row_sums_take_the_largest_integers_everywhere():
    """Every integer of W and x at +-32767 (W's values 31 * 1,057 = 32,767, x's 32,767 / 32,768): the largest pair of
    products, 2 * 32767^2, summed in int32."""
    cols = 64
    blocks = np.zeros((2, cols // 32, 34), np.uint8)
    blocks[:, :, :2] = _f16(1057.0)
    blocks[0, :, 2:], blocks[1, :, 2:] = 31, np.array(-31, np.int8).view(np.uint8)
    w = BlockQuantized(blocks.reshape(2, -1), "Q8_0", (2, cols))
    x = np.full((1, cols), -32767 / 32768, np.float32)
    dense = w.dequantize()
    assert (np.abs(fixed.to_integers(np, dense, fixed.row_exponents(np, dense))) == 32767).all()
    assert (np.abs(fixed.to_integers(np, x, fixed.row_exponents(np, x))) == 32767).all()
    with loom.deterministic(True):
        got = w.matmul_t(x)
    assert np.array_equal(got.view(np.uint32), fixed.matmul_t(CPU, x, dense).view(np.uint32))


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q8_0"])
def test_one_row_of_a_block_type_with_inf_or_nan_scales_takes_ieees_values(qtype):
    rng = np.random.default_rng(1)
    blocks = rng.integers(0, 256, (5, 4, WIDTHS[qtype]), dtype=np.uint8)
    blocks[:, :, :2] = _f16(0.01)
    if qtype == "Q4_1":
        blocks[:, :, 2:4] = _f16(-0.05)
    blocks[1, 2, :2], blocks[3, 0, :2] = _f16(np.nan), _f16(np.inf)
    w = BlockQuantized(blocks.reshape(5, -1), qtype, (5, 128))
    x = rng.standard_normal((1, 128)).astype(np.float32)
    with loom.deterministic(True), np.errstate(all="ignore"):
        got = w.matmul_t(x)
        want = fixed.matmul_t(CPU, x, w.dequantize())
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    assert not np.isfinite(got[0, [1, 3]]).any() and np.isfinite(got[0, [0, 2, 4]]).all()


@pytest.mark.parametrize("qtype", ["Q4_1", "F32"])
def test_a_prompts_rows_read_w_in_place_in_bands(qtype, monkeypatch):
    """x of more than MAX_ROWS rows (a prompt's): W's integers a band of rows at a time (bands of CHUNK rows here,
    and a last one shorter), one float64 GEMM each; the scheme's bits, and IEEE's values where x holds inf or NaN
    (the array code's patch)."""
    monkeypatch.setattr(fixed_gemv, "BAND_BYTES", 16 * 8 * 64)
    rng = np.random.default_rng(7)
    rows, cols = 53, 64
    data = random_rows(qtype, rows, cols, rng, scale=0.01, plain=0.05)
    w = BlockQuantized(data, qtype, (rows, cols))
    assert CPU.quant.fixed_wide(qtype, cols) and w.exact_in_place()
    x = (rng.standard_normal((40, cols)) * np.exp(rng.uniform(-20, 20, (40, 1)))).astype(np.float32)
    dense = w.dequantize()
    with loom.deterministic(True):
        got = w.matmul_t(x)
    assert np.array_equal(got.view(np.uint32), fixed.matmul_t(CPU, x, dense).view(np.uint32))
    x[3, 5], x[9, 0] = np.inf, np.nan
    with loom.deterministic(True), np.errstate(invalid="ignore"):
        got = w.matmul_t(x)
        want = fixed.matmul_t(CPU, x, dense)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


def test_a_prompts_rows_at_float32s_edges():
    """x of 40 rows and W at float32's edges (overflowing, subnormal, zero and cancelling rows; inf and NaN in both,
    so the array code patches IEEE's values in), K = 140 (not a multiple of 32), x in Fortran order and W a strided
    slice of its stored rows: the scheme's bits."""
    rng = np.random.default_rng(11)
    x, values = float32_edges(40, 24, 140, rng)
    stored = np.ascontiguousarray(np.repeat(values, 2, axis=0)).view(np.uint8)[::2]     # (rows 0, 2, 4, ...)
    w = BlockQuantized(stored, "F32", values.shape)
    finite = np.isfinite(x).all(axis=1)
    for rows in (x, x[finite], np.asfortranarray(x[finite])):
        with loom.deterministic(True), np.errstate(all="ignore"):
            got = w.matmul_t(rows)
            want = fixed.matmul_t(CPU, np.ascontiguousarray(rows), values)
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    clean = np.delete(values, [5, 8], axis=0)                   # (no inf or NaN in W: the compiled path itself)
    w = BlockQuantized(np.ascontiguousarray(clean).view(np.uint8), "F32", clean.shape)
    with loom.deterministic(True), np.errstate(all="ignore"):
        got = w.matmul_t(x[finite])
    assert np.array_equal(got.view(np.uint32), fixed.matmul_t(CPU, x[finite], clean).view(np.uint32))

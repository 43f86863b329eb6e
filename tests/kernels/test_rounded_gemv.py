"""loom.backend.cpu.rounded_gemv: deterministic mode's compiled x @ W.T from stored rows, and its
stacked products, bit for bit against the exact GEMM (exact.matmul on the dequantized weight).

Every covered type, K from one block to ROUNDED_MAX_K, x of 1, 3 and 16 rows, on weights built to
reach every stage: rows whose products cancel exactly (the exact integer sum), rows that cancel
but for one product 2^-20 of its size (the compensated sum), random rows (the first stage); then
the correctly rounded cases of tests/rounded_cases.py (midpoints, subnormals, overflow) as F32
weights; inf and NaN in x and in W (scales, values); zero rows; extreme float16 scales against
gguf_quants' decoding; the dispatch from BlockQuantized.matmul_t and exact.matmul."""
import math

import numpy as np
import pytest
from rounded_cases import CASES, case

import loom
from loom.backend.cpu import jit as cpu_jit
from loom.backend.cpu import rounded_gemv as gemv
from loom.kernels import exact
from loom.kernels.exact import dispatch as exact_dispatch
from loom.kernels.exact import rounded as exact_rounded
from loom.kernels.quant import gguf as gq
from loom.kernels.quant.block import BlockQuantized

TYPES = list(gemv.TYPES)
BLOCK_TYPES = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"]
# per block type: the code of a zero value where value = d (code - zero) (Q4_1, Q5_1: m = -zero d)
ZERO_CODE = {"Q8_0": 0, "Q4_0": 8, "Q4_1": 8, "Q5_0": 16, "Q5_1": 16}


@pytest.fixture(autouse=True)
def jit(monkeypatch):
    """These tests are about the compiled loops: a LOOM_JIT=0 in the environment must not turn them
    off (the dispatch test sets it itself); without numba they skip, saying so."""
    monkeypatch.delenv("LOOM_JIT", raising=False)
    if not gemv.available():
        pytest.skip(f"the compiled loops do not run here: {cpu_jit.unavailable_reason()}")


def bits(a):
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def assert_same_bits(got, want):
    """Equal bits everywhere, NaN where NaN (payloads aside, as exact.py's tests compare them)."""
    assert got.dtype == np.float32 and got.shape == want.shape
    nan = np.isnan(want)
    np.testing.assert_array_equal(np.isnan(got), nan)
    np.testing.assert_array_equal(bits(got)[~nan], bits(want)[~nan])


def reference(x, w: BlockQuantized):
    with loom.deterministic(True), np.errstate(all="ignore"):
        return exact.matmul(x, w.dequantize().T)       # 2-D: the float64 GEMM and rounded_jit's stages


def product(x, w: BlockQuantized):
    """(out, stage counts) from the module directly (any number of rows)."""
    out = np.empty((x.shape[0], w.shape[0]), np.float32)
    with np.errstate(all="ignore"):
        counts = gemv.matmul_t(x, w.data, w.qtype, out, exact_rounded.error_factor(x.shape[1]))
    return out, counts


# --- weights ------------------------------------------------------------------------------------------

def pack_blocks(qtype, codes, d, m=None):
    """Stored rows from codes [rows, K] (value order) and float32 scales d (and offsets m) [rows, K/32]."""
    rows, k = codes.shape
    nb = k // 32
    size = gq.BLOCKS[qtype][1]
    blocks = np.zeros((rows, nb, size), np.uint8)
    blocks[..., 0:2] = d.astype(np.float16).view(np.uint8).reshape(rows, nb, 2)
    at = 2
    if m is not None:
        blocks[..., 2:4] = m.astype(np.float16).view(np.uint8).reshape(rows, nb, 2)
        at = 4
    c = codes.reshape(rows, nb, 32)
    if qtype == "Q8_0":
        blocks[..., 2:] = c.astype(np.int8).view(np.uint8)
    else:
        if qtype in ("Q5_0", "Q5_1"):
            fifth = ((c >> 4) & 1).astype(np.uint32) << np.arange(32, dtype=np.uint32)
            blocks[..., at:at + 4] = fifth.sum(axis=-1).astype(np.uint32)[..., None].view(np.uint8)
            at += 4
        low = c & 15
        blocks[..., at:] = (low[..., :16] | (low[..., 16:] << 4)).astype(np.uint8)
    return BlockQuantized(blocks.reshape(rows, -1), qtype, (rows, k))


def pack_values(qtype, values):
    """F16, BF16 or F32 rows of float32 values (BF16: truncated; the tests want its values, not rounding)."""
    v = np.ascontiguousarray(values, dtype=np.float32)
    raw = {"F16": lambda: v.astype(np.float16).view(np.uint16),
           "BF16": lambda: (v.view(np.uint32) >> 16).astype(np.uint16),
           "F32": lambda: v}[qtype]()
    return BlockQuantized(raw.view(np.uint8).reshape(v.shape[0], -1), qtype, v.shape)


def staged_weight(qtype, k, rng, rows_each=8):
    """3 * rows_each rows: exact pairs (value 2j + 1 = -value 2j) with pair 0 zero; the same with
    pair 0 nonzero; random. With staged_x's first row the first give exact zeros, the second sums
    2^-20 of one product."""
    n = 3 * rows_each
    if qtype in BLOCK_TYPES:
        zero = ZERO_CODE[qtype]
        lo, hi = (-127, 128) if qtype == "Q8_0" else (1, 2 * zero)    # codes whose negation is a code
        codes = rng.integers(-128, 128, (n, k)) if qtype == "Q8_0" else rng.integers(0, 2 * zero, (n, k))
        codes[:2 * rows_each, 0::2] = rng.integers(lo, hi, (2 * rows_each, k // 2))
        codes[:2 * rows_each, 1::2] = 2 * zero - codes[:2 * rows_each, 0::2]   # d (c' - zero) = -d (c - zero)
        codes[:rows_each, 0:2] = zero
        first = codes[rows_each:2 * rows_each, 0]
        first[first == zero] = zero + 1
        codes[rows_each:2 * rows_each, 1] = 2 * zero - first
        nb = k // 32
        d = rng.choice([-1, 1], (n, nb)) * 10.0 ** rng.uniform(-4, 1, (n, nb))
        d = d.astype(np.float16).astype(np.float32)
        if qtype in ("Q4_1", "Q5_1"):
            m = -zero * d                                        # exact: d (c - zero)
            m[2 * rows_each:] = (rng.standard_normal((rows_each, nb)) * np.abs(d[2 * rows_each:]) * 8)
            return pack_blocks(qtype, codes, d, m)
        return pack_blocks(qtype, codes, d)
    values = (rng.standard_normal((n, k)) * 10.0 ** rng.uniform(-3, 2, (n, 1))).astype(np.float32)
    if qtype == "BF16":
        values = (values.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)
    elif qtype == "F16":
        values = values.astype(np.float16).astype(np.float32)
    values[:2 * rows_each, 1::2] = -values[:2 * rows_each, 0::2]
    values[:rows_each, 0:2] = 0
    return pack_values(qtype, values)


def staged_x(m, k, rng):
    """Row 0: pairs of equal values, pair 0's second 2^-20 larger; the other rows random."""
    x = rng.standard_normal((m, k)).astype(np.float32)
    x[0, 1::2] = x[0, 0::2]
    x[0, 1] = x[0, 0] * np.float32(1 + 2.0 ** -20)
    return x


# --- products ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("k", [32, 576, 1536, 2048])
@pytest.mark.parametrize("qtype", TYPES)
def test_every_stage_gives_the_exact_gemm_bits(qtype, k):
    rng = np.random.default_rng([k, TYPES.index(qtype)])
    w = staged_weight(qtype, k, rng)
    reached = np.zeros(2, np.int64)
    for m in (1, 3, 16):
        x = staged_x(m, k, rng)
        got, counts = product(x, w)
        assert_same_bits(got, reference(x, w))
        reached += counts
    assert reached[0] > 0 and reached[1] > 0, reached      # the compensated sum, then the exact one


@pytest.mark.parametrize("name", CASES)
def test_correctly_rounded_cases_as_f32_weights(name):
    """tests/rounded_cases.py's operands (midpoints, subnormals, overflow, signed zeros): b's
    columns as F32 weight rows."""
    a, b = case(name)
    w = pack_values("F32", b.T)
    got, counts = product(a, w)
    assert_same_bits(got, reference(a, w))
    if name in ("integers", "midpoints", "subnormal", "overflow"):
        assert counts[1] > 0


@pytest.mark.parametrize("qtype", TYPES)
def test_inf_nan_and_zero_rows(qtype):
    """inf and NaN in x, in W's values or scales, and all-zero rows on either side: IEEE's values
    where a row holds inf or NaN, +0 where no product is nonzero, exact.matmul's bits elsewhere."""
    rng = np.random.default_rng(TYPES.index(qtype))
    k = 96
    w = staged_weight(qtype, k, rng, rows_each=4)
    data = w.data.copy()
    if qtype in BLOCK_TYPES:
        halves = data.view(np.uint16)
        per_block = gq.BLOCKS[qtype][1] // 2
        halves[1, 0] = 0x7C00                                    # d = inf, block 0 of row 1
        halves[2, per_block] = 0xFC00                            # d = -inf, block 1 of row 2
        halves[3, 2 * per_block] = 0x7E00                        # d = NaN, block 2 of row 3
        data[5] = 0                                              # d = 0 (and m = 0): a zero row
    else:
        values = w.dequantize()
        values[1, 3], values[2, 40], values[3, 7], values[3, 8] = np.inf, -np.inf, np.nan, np.inf
        values[5] = 0
        data = pack_values(qtype, values).data
    w = BlockQuantized(data, qtype, w.shape)
    x = rng.standard_normal((5, k)).astype(np.float32)
    x[1, 10], x[2, 20], x[2, 21], x[3, 0] = np.inf, -np.inf, np.inf, np.nan
    x[4] = 0
    got, _ = product(x, w)
    want = reference(x, w)
    assert_same_bits(got, want)
    assert np.isnan(want).any() and np.isinf(want).any()
    for i in range(len(x)):                                      # one row of x (Q4_1: decoded in the sum)
        assert_same_bits(product(x[i:i + 1], w)[0], want[i:i + 1])
    zero = got[4][np.isfinite(want[4])]
    assert zero.size and not bits(zero).any()                    # +0, not -0


def test_extreme_scales_decode_exactly():
    """float16 scales from subnormal to 65504, offsets of other exponents (Q4_1: float32(d q) + m
    rounds there, and must round as NumPy does, without a fused multiply-add), against
    gguf_quants.dequantize's bits, through the products with one-hot rows of x."""
    rng = np.random.default_rng(7)
    k = 64
    for qtype in BLOCK_TYPES:
        codes = rng.integers(-128, 128, (32, k)) if qtype == "Q8_0" else rng.integers(0, 2 * ZERO_CODE[qtype], (32, k))
        exps = rng.integers(-24, 15, (32, 2))                     # |d| < 2^16: finite
        d = (rng.choice([-1, 1], (32, 2)) * np.exp2(exps) * rng.uniform(1, 2, (32, 2))).astype(np.float16)
        m = (rng.choice([-1, 1], (32, 2)) * np.exp2(rng.integers(-24, 16, (32, 2)))).astype(np.float16)
        w = pack_blocks(qtype, codes, d.astype(np.float32), m.astype(np.float32) if qtype in ("Q4_1", "Q5_1") else None)
        x = np.eye(k, dtype=np.float32)                          # entry (j, r): W[r, j] (a zero: +0)
        for rows in (x[:16], x[16:32], x[32:48], x[48:]):
            got, _ = product(rows, w)
            assert_same_bits(got, reference(rows, w))
        for j in (0, 17, 31, 40, 63):                            # one row of x
            assert_same_bits(product(x[j:j + 1], w)[0], reference(x[j:j + 1], w))
        dense = rng.standard_normal((4, k)).astype(np.float32)   # every value's rounding in the sums
        for j in range(4):
            assert_same_bits(product(dense[j:j + 1], w)[0], reference(dense[j:j + 1], w))
        got, _ = product(x[:16], w)
        values = w.dequantize()[:, :16].T
        np.testing.assert_array_equal(bits(got), bits(np.where(values == 0, np.float32(0), values)))  # -0: +0


def test_block_bounds_hold_every_product_sum():
    """The block types' first stage bounds sum |x_k| |w_k| by each block's largest |w| its scales
    allow (_decode's wb) times the block's sum of |x| (_bound): never below the exact sum, for every
    code (the extremes included), scales from subnormal to 65504 with offsets of either sign, and x
    of mixed magnitudes; inf and NaN scales give a bound that is not finite."""
    rng = np.random.default_rng(59)
    k = 256
    f16 = cpu_jit.f16_table()
    for qtype in BLOCK_TYPES:
        top = 2 * ZERO_CODE[qtype] if qtype != "Q8_0" else 128
        codes = rng.integers(-128, 128, (8, k)) if qtype == "Q8_0" else rng.integers(0, top, (8, k))
        codes[:, :32] = -128 if qtype == "Q8_0" else top - 1          # a block of extreme codes
        codes[:, 32:64] = 0
        d = (rng.choice([-1, 1], (8, k // 32)) * np.exp2(rng.integers(-24, 15, (8, k // 32)))
             * rng.uniform(1, 2, (8, k // 32))).astype(np.float16)
        m = (rng.choice([-1, 1], (8, k // 32)) * np.exp2(rng.integers(-24, 16, (8, k // 32)))).astype(np.float16)
        has_m = qtype in ("Q4_1", "Q5_1")
        w = pack_blocks(qtype, codes, d.astype(np.float32), m.astype(np.float32) if has_m else None)
        values = w.dequantize().astype(np.float64)
        x = (rng.standard_normal((3, k)) * np.exp2(rng.integers(-30, 30, (3, k)))).astype(np.float32)
        xb = np.abs(x.astype(np.float64)).reshape(3, -1, 32).sum(axis=2)
        u16, i8 = w.data.view(np.uint16), w.data.view(np.int8)
        buffer, wb = np.empty(k, np.float32), np.empty(k // 32)
        for r in range(8):
            gemv._decode(gemv._KINDS[qtype], w.data, u16, i8, r, f16, buffer, 16, wb)
            assert bits(buffer).tolist() == bits(values[r].astype(np.float32)).tolist()
            for i in range(3):
                exact_sum = math.fsum(np.abs(x[i].astype(np.float64) * values[r]))
                assert gemv._bound(wb, xb, i) >= exact_sum > 0, (qtype, r, i)
        scales = w.data.copy().view(np.uint16)
        scales[0, 0] = np.float16(np.inf).view(np.uint16)                     # block 0's d of row 0
        scales[1, 0] = np.float16(np.nan).view(np.uint16)
        for r in (0, 1):
            gemv._decode(gemv._KINDS[qtype], scales.view(np.uint8), scales, scales.view(np.int8), r, f16, buffer,
                         16, wb)
            assert not np.isfinite(gemv._bound(wb, xb, 0))


# --- dispatch ------------------------------------------------------------------------------------------

def test_quantized_matmul_t_dispatch(monkeypatch):
    """Deterministic mode sends an encoder's products (rule "matmul") of x of at most MAX_ROWS rows with K
    <= ROUNDED_MAX_K here; longer x, longer K, LOOM_JIT=0, a decoder's products (the integer "weight"
    rule) and fast mode do not come; the bits are the same either way."""
    rng = np.random.default_rng(11)
    calls = []
    real = gemv.matmul_t
    monkeypatch.setattr(gemv, "matmul_t", lambda x2, *a: calls.append(x2.shape) or real(x2, *a))
    long_k = exact_dispatch.ROUNDED_MAX_K + 32
    w = staged_weight("Q4_1", 256, rng)
    w_long = staged_weight("Q4_1", long_k, rng, rows_each=2)
    x = rng.standard_normal((gemv.MAX_ROWS + 1, 256)).astype(np.float32)
    with loom.deterministic(True):
        fast_path = w.matmul_t(x[:gemv.MAX_ROWS], "matmul")
        general = w.matmul_t(x, "matmul")                        # MAX_ROWS + 1 rows: the float64 GEMM
        w_long.matmul_t(rng.standard_normal((1, long_k)).astype(np.float32), "matmul")
        w.matmul_t(x[:3])                                        # the weight rule: exact.fixed
        monkeypatch.setenv("LOOM_JIT", "0")
        unjitted = w.matmul_t(x[:3], "matmul")
        monkeypatch.delenv("LOOM_JIT")
    with loom.deterministic(False):
        w.matmul_t(x[:3])
    assert calls == [(gemv.MAX_ROWS, 256)]
    assert_same_bits(fast_path, general[:gemv.MAX_ROWS])
    assert_same_bits(unjitted, fast_path[:3])


def test_attention_stacks(monkeypatch):
    """exact.matmul on stacks of a few rows (a decode step's q k^T against a cache's keys, and p v)
    comes here in both of b's layouts, with the bits of each batch entry's 2-D product; more rows
    do not."""
    rng = np.random.default_rng(12)
    cache = rng.standard_normal((1, 3, 40, 64)).astype(np.float32)
    keys = cache[:, :, :25]                                       # [B, KV, n, D], a view
    q = rng.standard_normal((1, 3, 3, 64)).astype(np.float32)
    p = rng.standard_normal((1, 3, 3, 25)).astype(np.float32)
    q[0, 1, 2, 5], keys[0, 2, 7, 1], p[0, 0, 1, 3] = np.inf, np.nan, -np.inf
    calls = []
    real = gemv.matmul_stack
    monkeypatch.setattr(gemv, "matmul_stack", lambda a, b, f: calls.append(a.shape) or real(a, b, f))
    with loom.deterministic(True), np.errstate(all="ignore"):
        for a, b in ((q, keys.transpose(0, 1, 3, 2)), (p, keys), (q[:, :, :1], keys.transpose(0, 1, 3, 2))):
            got = exact.matmul(a, b)
            want = np.stack([exact.matmul(a[0, g], np.ascontiguousarray(b[0, g])) for g in range(3)])[None]
            assert_same_bits(got, want)
        many = rng.standard_normal((1, 3, gemv.MAX_ROWS + 1, 64)).astype(np.float32)
        exact.matmul(many, keys.transpose(0, 1, 3, 2))
    assert calls == [(1, 3, 3, 64), (1, 3, 3, 25), (1, 3, 1, 64)]

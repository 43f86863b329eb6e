"""GGML block dequantization: bit-exact with the `gguf` package's reference dequantizers on fresh
random bytes (every type, several seeds, many rows, chunk boundaries), round trips through its
quantizers, golden blocks decoded by hand, ggml's C loops for Q4_K/Q6_K, and bad input."""
import numpy as np
import pytest

from loom import FormatError, ShapeError
from loom.kernels.quant import gguf as gq

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as T  # noqa: E402

TYPES = list(gq.BLOCKS)


def assert_same_bits(got, want):
    """Bitwise equal, except that any NaN matches any NaN (payloads depend on operand order)."""
    got, want = np.asarray(got), np.asarray(want, dtype=np.float32)
    assert got.dtype == np.float32 and got.shape == want.shape
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan)
    assert np.array_equal(got.view(np.uint32)[~nan], want.view(np.uint32)[~nan])


def reference(raw, qtype):
    with np.errstate(all="ignore"):
        return gguf.quants.dequantize(raw, T[qtype])


def random_raw(rng, qtype, rows, blocks_per_row):
    block, size = gq.BLOCKS[qtype]
    return rng.integers(0, 256, (rows, blocks_per_row * size), dtype=np.uint8), blocks_per_row * block


def test_tables_match_the_gguf_package():
    for name, (block, size) in gq.BLOCKS.items():
        assert gguf.GGML_QUANT_SIZES[T[name]] == (block, size)
        assert gq.TYPE_IDS[name] == int(T[name])


@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_bytes_match_reference(qtype, seed):
    rng = np.random.default_rng(seed * 100 + TYPES.index(qtype))
    for rows, blocks in ((1, 1), (5, 3), (17, 7)):
        raw, cols = random_raw(rng, qtype, rows, blocks)
        assert_same_bits(gq.dequantize(raw, qtype, (rows, cols)), reference(raw, qtype))


@pytest.mark.parametrize("qtype", TYPES)
def test_chunk_boundaries(qtype, monkeypatch):
    """The CPU decodes cache-sized chunks of blocks; odd chunk sizes must not change a bit."""
    rng = np.random.default_rng(7)
    raw, cols = random_raw(rng, qtype, 13, 5)
    want = reference(raw, qtype)
    block = gq.BLOCKS[qtype][0]
    for chunk_blocks in (1, 3, 64):
        monkeypatch.setattr(gq, "CPU_CHUNK_VALUES", chunk_blocks * block)
        assert_same_bits(gq.dequantize(raw, qtype, (13, cols)), want)


@pytest.mark.parametrize("qtype", ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"])
def test_k_quants_with_realistic_scales(qtype):
    """Random codes under finite, moderate float16 super-block scales (random bytes mostly give
    huge or NaN scales): the products then cover ordinary rounding."""
    rng = np.random.default_rng(3)
    raw, cols = random_raw(rng, qtype, 9, 4)
    blocks = raw.reshape(-1, gq.BLOCKS[qtype][1])
    offsets = {"Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}[qtype]
    for at in offsets:
        scales = (rng.random(len(blocks)) * 0.01 + 1e-4).astype(np.float16)
        blocks[:, at:at + 2] = scales.view(np.uint8).reshape(-1, 2)
    got = gq.dequantize(raw, qtype, (9, cols))
    assert np.all(np.isfinite(got))
    assert_same_bits(got, reference(raw, qtype))


@pytest.mark.parametrize("qtype", ["F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"])
def test_quantize_round_trip(qtype):
    rng = np.random.default_rng(11)
    values = (rng.standard_normal((6, 128)) * rng.uniform(0.01, 10, (6, 1))).astype(np.float32)
    values[0, :32] = 0                      # an all-zero block (scale 0)
    raw = gguf.quants.quantize(values, T[qtype]).view(np.uint8).reshape(6, -1)
    got = gq.dequantize(raw, qtype, values.shape)
    assert_same_bits(got, reference(raw, qtype))
    tolerance = {"F16": 1e-3, "BF16": 1e-2, "Q8_0": 1e-2, "Q5_0": 0.07, "Q5_1": 0.04}.get(qtype, 0.15)
    assert np.max(np.abs(got - values)) <= tolerance * np.max(np.abs(values))


def test_every_float16_and_bfloat16_value():
    bits = np.arange(65536, dtype=np.uint16).view(np.uint8)
    assert_same_bits(gq.dequantize(bits, "F16", (65536,)), bits.view(np.float16).astype(np.float32))
    assert_same_bits(gq.dequantize(bits, "BF16", (65536,)), reference(bits, "BF16"))


def half(x) -> bytes:
    return np.float16(x).tobytes()


def test_golden_blocks():
    q8 = half(0.5) + np.arange(-16, 16, dtype=np.int8).tobytes()
    assert gq.dequantize(np.frombuffer(q8, np.uint8), "Q8_0", (32,)).tolist() == [0.5 * i for i in range(-16, 16)]
    nibbles = bytes((j % 16) | ((15 - j % 16) << 4) for j in range(16))      # low j, high 15 - j
    codes = [j for j in range(16)] + [15 - j for j in range(16)]
    q40 = np.frombuffer(half(2.0) + nibbles, np.uint8)
    assert gq.dequantize(q40, "Q4_0", (32,)).tolist() == [2.0 * (c - 8) for c in codes]
    q41 = np.frombuffer(half(0.25) + half(-1.0) + nibbles, np.uint8)
    assert gq.dequantize(q41, "Q4_1", (32,)).tolist() == [0.25 * c - 1.0 for c in codes]
    high = (0xA5A5A5A5).to_bytes(4, "little")                               # bit j: 5th bit of value j
    q50 = np.frombuffer(half(1.0) + high + nibbles, np.uint8)
    fifth = [(0xA5A5A5A5 >> j) & 1 for j in range(32)]
    assert gq.dequantize(q50, "Q5_0", (32,)).tolist() == [c + 16 * h - 16 for c, h in zip(codes, fifth)]


def c_loop_q4_k(block: bytes) -> list:
    """ggml-quants.c dequantize_row_q4_K, element by element in float32."""
    f32 = np.float32
    d, dmin = (f32(np.frombuffer(block[i:i + 2], np.float16)[0]) for i in (0, 2))
    sc, q = block[4:16], block[16:]

    def scale_min(j):
        if j < 4:
            return sc[j] & 63, sc[j + 4] & 63
        return (sc[j + 4] & 0xF) | ((sc[j - 4] >> 6) << 4), (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4)
    out = []
    for chunk in range(4):
        (s1, m1), (s2, m2) = scale_min(2 * chunk), scale_min(2 * chunk + 1)
        qs = q[32 * chunk:32 * chunk + 32]
        out += [d * f32(s1) * f32(b & 0xF) - dmin * f32(m1) for b in qs]
        out += [d * f32(s2) * f32(b >> 4) - dmin * f32(m2) for b in qs]
    return out


def c_loop_q6_k(block: bytes) -> list:
    """ggml-quants.c dequantize_row_q6_K, element by element in float32."""
    f32 = np.float32
    ql, qh, sc = block[:128], block[128:192], np.frombuffer(block[192:208], np.int8)
    d = f32(np.frombuffer(block[208:210], np.float16)[0])
    out = [None] * 256
    for half_ in range(2):
        l_, h_, s_ = ql[64 * half_:], qh[32 * half_:], sc[8 * half_:]
        for l in range(32):
            codes = ((l_[l] & 0xF) | ((h_[l] & 3) << 4), (l_[l + 32] & 0xF) | (((h_[l] >> 2) & 3) << 4),
                     (l_[l] >> 4) | (((h_[l] >> 4) & 3) << 4), (l_[l + 32] >> 4) | (((h_[l] >> 6) & 3) << 4))
            for k, c in enumerate(codes):
                out[128 * half_ + 32 * k + l] = d * f32(s_[l // 16 + 2 * k]) * f32(c - 32)
    return out


@pytest.mark.parametrize("qtype, loop", [("Q4_K", c_loop_q4_k), ("Q6_K", c_loop_q6_k)])
def test_against_ggml_c_loops(qtype, loop):
    rng = np.random.default_rng(5)
    raw, cols = random_raw(rng, qtype, 3, 1)
    at = 208 if qtype == "Q6_K" else 0
    raw[:, at:at + 2] = np.array([0.003, -0.02, 0.5], np.float16).view(np.uint8).reshape(3, 2)
    if qtype == "Q4_K":
        raw[:, 2:4] = np.array([0.001, 0.004, -0.1], np.float16).view(np.uint8).reshape(3, 2)
    want = np.array([loop(bytes(row)) for row in raw], np.float32)
    assert_same_bits(gq.dequantize(raw, qtype, (3, cols)), want)


def test_shapes_and_out():
    rng = np.random.default_rng(2)
    raw, cols = random_raw(rng, "Q4_1", 6, 2)
    want = reference(raw, "Q4_1")
    assert_same_bits(gq.dequantize(raw.reshape(-1), "Q4_1", (2, 3, cols)), want.reshape(2, 3, cols))
    out = np.full(6 * cols, np.nan, np.float32)
    got = gq.dequantize(raw, "Q4_1", (6, cols), out=out)
    assert np.shares_memory(got, out)
    assert_same_bits(out.reshape(6, cols), want)
    assert gq.dequantize(np.zeros(0, np.uint8), "Q8_0", (0, 64)).shape == (0, 64)
    assert gq.row_nbytes("Q6_K", 512) == 420 and gq.row_nbytes("BF16", 3) == 6


def test_bad_input():
    raw = np.zeros(34, np.uint8)
    with pytest.raises(FormatError, match="'Q9_9'.*supported: F32"):
        gq.dequantize(raw, "Q9_9", (32,))
    with pytest.raises(ShapeError, match="needs 68 bytes, got 34"):
        gq.dequantize(raw, "Q8_0", (2, 32))
    with pytest.raises(ShapeError, match="20 is not a multiple"):
        gq.dequantize(raw, "Q8_0", (20,))
    with pytest.raises(ShapeError, match="uint8"):
        gq.dequantize(raw.view(np.int8), "Q8_0", (32,))
    with pytest.raises(ShapeError, match="out must be"):
        gq.dequantize(raw, "Q8_0", (32,), out=np.empty(31, np.float32))
    with pytest.raises(ShapeError, match="out must be"):
        gq.dequantize(raw, "Q8_0", (32,), out=np.empty(32, np.float64))

"""GGML block types (the tensor encodings of GGUF files) and their dequantizers.

A quantized row of `cols` values is cols / block_size blocks of type_size bytes. Every block
carries float16 scales followed by packed integer codes; value = scale * code (+ offset):

    type  values/block  bytes  layout (byte offsets)                       value
    Q8_0   32   34  d f16 @0, q int8[32] @2                                 q * d
    Q4_0   32   18  d @0, qs[16] @2: value j<16 low nibble of qs[j],        d * (q - 8)
                    value 16+j high nibble
    Q4_1   32   20  d @0, m @2, qs[16] @4 (nibbles as Q4_0)                 d * q + m
    Q5_0   32   22  d @0, qh u32 @2 (bit j = 5th bit of value j), qs @6     d * (q - 16)
    Q5_1   32   24  d @0, m @2, qh @4, qs @8                                d * q + m
    Q2_K  256   84  scales[16] @0 (low nibble scale, high nibble min),      d*sc * q - dmin*mn
                    qs[64] @16 (2 bits; half h, shift s, byte j -> value
                    128h + 32s + j), d @80, dmin @82; 16 groups of 16
    Q3_K  256  110  hmask[32] @0 (bit b of byte j -> value 32b + j),        d*sc * (q - 4 + 4*hbit)
                    qs[64] @32 (2 bits, as Q2_K), scales[12] @96 (16
                    6-bit scales, minus 32), d @108; 16 groups of 16
    Q4_K  256  144  d @0, dmin @2, scales[12] @4 (8 6-bit scales and 8      d*sc * q - dmin*mn
                    6-bit mins), qs[128] @16 (32-byte chunk c: low nibbles
                    group 2c, high nibbles group 2c+1); 8 groups of 32
    Q5_K  256  176  as Q4_K, qh[32] @16 (bit g of byte j: 5th bit of group  d*sc * q - dmin*mn
                    g, value j), qs[128] @48
    Q6_K  256  210  ql[128] @0 (half h: 64 bytes, low then high nibbles),   d*sc * (q - 32)
                    qh[64] @128 (2 bits: half h, shift s, byte j -> value
                    128h + 32s + j), scales int8[16] @192, d @208
    F32/F16/BF16 are plain little-endian arrays (block size 1).

Results are bit-exact with the reference dequantizers of the `gguf` package: each value goes
through the same float32 operations in the same order (e.g. Q4_K's (d * sc) * q - dmin * mn), so
even the roundings agree. Decoding is vectorised over all blocks (Python loops only run over the
few bit positions of a code); on the CPU it runs over chunks of blocks so that its temporaries stay
small whatever the tensor size. Every function takes the array module `xp` (NumPy or CuPy) and
uses only operations both provide.
"""
from __future__ import annotations

import math
from types import ModuleType

import numpy as np

from ... import backend
from ...backend import Array
from ...errors import FormatError, ShapeError

QK_K = 256
BLOCKS: dict[str, tuple[int, int]] = {   # type name -> (values per block, bytes per block)
    "F32": (1, 4), "F16": (1, 2), "BF16": (1, 2),
    "Q8_0": (32, 34), "Q4_0": (32, 18), "Q4_1": (32, 20), "Q5_0": (32, 22), "Q5_1": (32, 24),
    "Q2_K": (QK_K, 84), "Q3_K": (QK_K, 110), "Q4_K": (QK_K, 144), "Q5_K": (QK_K, 176), "Q6_K": (QK_K, 210),
}
# byte offsets of each block's float16 scale fields (d, and dmin or m where the type has one)
SCALE_FIELDS: dict[str, tuple[int, ...]] = {
    "Q8_0": (0,), "Q4_0": (0,), "Q5_0": (0,), "Q4_1": (0, 2), "Q5_1": (0, 2), "Q2_K": (80, 82), "Q3_K": (108,),
    "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}
# ggml's type ids (ggml.h, enum ggml_type) for the types above
TYPE_IDS: dict[str, int] = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q5_0": 6, "Q5_1": 7, "Q8_0": 8,
                            "Q2_K": 10, "Q3_K": 11, "Q4_K": 12, "Q5_K": 13, "Q6_K": 14, "BF16": 30}
# On the CPU, blocks are decoded in chunks of about this many values, which bounds the decode's
# temporaries (about 1.5 bytes per value) for large tensors such as a 28M-value embedding. Measured
# on this machine (a [1536, 2048] tensor): chunks of 2^16 values or more run within 5% of one pass
# over the whole tensor; 2^14 is 25-95% slower (per-chunk call overhead).
CPU_CHUNK_VALUES = 1 << 17


def check_type(qtype: str) -> tuple[int, int]:
    """(values per block, bytes per block) of `qtype`, or FormatError listing the supported types."""
    if qtype not in BLOCKS:
        raise FormatError(f"unsupported GGML tensor type {qtype!r}; supported: {', '.join(BLOCKS)}")
    return BLOCKS[qtype]


def row_nbytes(qtype: str, cols: int) -> int:
    """Bytes of one row of `cols` values (cols must be a whole number of blocks)."""
    block, size = check_type(qtype)
    if cols % block:
        raise ShapeError(f"a {qtype} row holds whole blocks of {block} values; {cols} is not a multiple")
    return cols // block * size


def dequantize(raw: Array, qtype: str, shape: tuple[int, ...], xp: ModuleType = np,
               out: Array | None = None) -> Array:
    """float32 array of `shape` from `raw`, the uint8 bytes (any shape) of rows of `qtype` blocks.
    `out` (float32, C-contiguous, `shape`'s size) receives the values when given."""
    shape = tuple(int(s) for s in shape)
    block, size = check_type(qtype)
    count = math.prod(shape)
    cols = shape[-1] if shape else 1
    nbytes = row_nbytes(qtype, cols) * (count // cols) if cols else 0
    if raw.dtype != np.uint8:
        raise ShapeError(f"{qtype} data must be uint8 bytes, got {raw.dtype}")
    if raw.size != nbytes:
        raise ShapeError(f"{qtype} x {list(shape)} needs {nbytes} bytes, got {raw.size}")
    if out is None:
        out = xp.empty(count, dtype=np.float32)
    elif out.dtype != np.float32 or out.size != count or not out.flags.c_contiguous:
        raise ShapeError(f"out must be a C-contiguous float32 array of {count} values, got "
                         f"{out.dtype}{list(out.shape)}")
    if count == 0:
        return out.reshape(shape)
    blocks = xp.ascontiguousarray(raw).reshape(-1, size)
    values = out.reshape(-1, block)
    decode = _DECODERS[qtype]
    step = max(1, CPU_CHUNK_VALUES // block) if backend.of(blocks).host else len(blocks)   # a GPU: one launch
    with np.errstate(invalid="ignore", over="ignore"):    # NaN and inf scales decode as IEEE says
        for start in range(0, len(blocks), step):
            decode(blocks[start:start + step], values[start:start + step], xp)
    return out.reshape(shape)


# --- decoders: blocks uint8 [n, bytes per block] -> out float32 [n, values per block] --------------

def _half(blocks, offset: int, xp):
    """The float16 field at byte `offset` of every block, as float32 [n, 1]. Every block size is
    even and every float16 field sits at an even offset, so the blocks view as uint16 columns."""
    return blocks.view(xp.uint16)[:, offset // 2].view(xp.float16).astype(xp.float32)[:, None]


def _f32(blocks, out, xp):
    out[...] = blocks.reshape(-1).view(xp.float32).reshape(out.shape)


def _f16(blocks, out, xp):
    out[...] = blocks.reshape(-1).view(xp.float16).reshape(out.shape)


def _bf16(blocks, out, xp):
    bits = out.view(xp.uint32)
    bits[...] = blocks.reshape(-1).view(xp.uint16).reshape(out.shape)
    xp.left_shift(bits, 16, out=bits)       # bfloat16 is the high half of a float32


def _q8_0(blocks, out, xp):
    out[...] = blocks[:, 2:].view(xp.int8)
    out *= _half(blocks, 0, xp)


def _nibbles(qs, n_groups: int, xp):
    """uint8 [n, 2 * len] codes from packed bytes [n, len]: for each of `n_groups` consecutive
    byte groups, the low nibbles of the group, then its high nibbles."""
    n, length = qs.shape
    q = xp.empty((n, n_groups, 2, length // n_groups), dtype=np.uint8)
    grouped = qs.reshape(n, n_groups, length // n_groups)
    xp.bitwise_and(grouped, 0x0F, out=q[:, :, 0])
    xp.right_shift(grouped, 4, out=q[:, :, 1])
    return q.reshape(n, 2 * length)


def _bits(packed, n_fields: int, width: int, xp):
    """uint8 [n, groups, n_fields, len] fields of `width` bits from bytes [n, groups, len]: field f
    of byte j is bits [f*width, (f+1)*width)."""
    q = xp.empty(packed.shape[:2] + (n_fields, packed.shape[2]), dtype=np.uint8)
    for f in range(n_fields):
        xp.right_shift(packed, f * width, out=q[:, :, f])
    xp.bitwise_and(q, (1 << width) - 1, out=q)
    return q


def _high_bits32(blocks, offset: int, xp):
    """uint8 [n, 32]: bit j of the little-endian uint32 at byte `offset` (Q5_0/Q5_1's 5th bits)."""
    packed = xp.ascontiguousarray(blocks[:, offset:offset + 4])
    return xp.unpackbits(packed.reshape(-1), bitorder="little").reshape(len(blocks), 32)


def _scale_code(out, q, scale, offset=None):
    """out = scale * q (+ offset): q's codes converted exactly to float32 first."""
    out[...] = q
    out *= scale
    if offset is not None:
        out += offset


def _q4_0(blocks, out, xp):
    q = _nibbles(blocks[:, 2:], 1, xp)
    q += 248                                # q - 8 as int8 (wraps mod 256)
    _scale_code(out, q.view(xp.int8), _half(blocks, 0, xp))


def _q4_1(blocks, out, xp):
    _scale_code(out, _nibbles(blocks[:, 4:], 1, xp), _half(blocks, 0, xp), _half(blocks, 2, xp))


def _q5_0(blocks, out, xp):
    q = _nibbles(blocks[:, 6:], 1, xp)
    q |= _high_bits32(blocks, 2, xp) << 4
    q += 240                                # q - 16 as int8
    _scale_code(out, q.view(xp.int8), _half(blocks, 0, xp))


def _q5_1(blocks, out, xp):
    q = _nibbles(blocks[:, 8:], 1, xp)
    q |= _high_bits32(blocks, 4, xp) << 4
    _scale_code(out, q, _half(blocks, 0, xp), _half(blocks, 2, xp))


def _q2_k(blocks, out, xp):
    n = len(blocks)
    scales = blocks[:, :16]
    dl = _half(blocks, 80, xp) * (scales & 0x0F).astype(xp.float32)     # [n, 16]
    ml = _half(blocks, 82, xp) * (scales >> 4).astype(xp.float32)
    q = _bits(blocks[:, 16:80].reshape(n, 2, 32), 4, 2, xp)             # [n, half, shift, 32]
    _scale_code(out.reshape(n, 16, 16), q.reshape(n, 16, 16), dl[:, :, None])
    out.reshape(n, 16, 16)[...] -= ml[:, :, None]


def _k_scales_3(scales, xp):
    """Q3_K's 16 signed scales from 12 bytes: low 4 bits from bytes 0..7 (low nibbles give
    scales 0..7, high nibbles 8..15), high 2 bits of scale k from byte 8 + k % 4, shift 2 (k // 4)."""
    n = len(scales)
    low = _nibbles(scales[:, :8], 1, xp)                                # [n, 16]
    high = _bits(scales[:, None, 8:12], 4, 2, xp).reshape(n, 16)        # field k//4 of byte k%4
    return ((low | (high << 4)).view(xp.int8) - 32).astype(xp.float32)


def _q3_k(blocks, out, xp):
    n = len(blocks)
    dl = _half(blocks, 108, xp) * _k_scales_3(blocks[:, 96:108], xp)     # [n, 16]
    q = _bits(blocks[:, 32:96].reshape(n, 2, 32), 4, 2, xp).reshape(n, QK_K)
    hbit = _bits(blocks[:, None, 0:32], 8, 1, xp).reshape(n, QK_K)
    q |= hbit << 2
    q += 252                                # q - 4 (+ 4 where the high bit is set), as int8
    _scale_code(out.reshape(n, 16, 16), q.view(xp.int8).reshape(n, 16, 16), dl[:, :, None])


def _k_scales_4(scales, xp):
    """Q4_K/Q5_K's 8 scales and 8 mins (6 bits each) from 12 bytes: groups 0..3 in the low 6 bits
    of bytes 0..3 (scales) and 4..7 (mins); groups 4..7 from the nibbles of bytes 8..11 (low:
    scales, high: mins) with their top 2 bits in the top bits of bytes 0..3 / 4..7."""
    d, m, md = scales[:, 0:4], scales[:, 4:8], scales[:, 8:12]
    sc = xp.concatenate([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], axis=1)
    mn = xp.concatenate([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], axis=1)
    return sc.astype(xp.float32), mn.astype(xp.float32)


def _k_dequant(blocks, out, q, xp):
    """Q4_K/Q5_K: out = (d * sc) * q - dmin * mn over 8 groups of 32 codes."""
    n = len(blocks)
    sc, mn = _k_scales_4(blocks[:, 4:16], xp)
    d = (_half(blocks, 0, xp) * sc)[:, :, None]
    dm = (_half(blocks, 2, xp) * mn)[:, :, None]
    _scale_code(out.reshape(n, 8, 32), q.reshape(n, 8, 32), d)
    out.reshape(n, 8, 32)[...] -= dm


def _q4_k(blocks, out, xp):
    _k_dequant(blocks, out, _nibbles(blocks[:, 16:144], 4, xp), xp)


def _q5_k(blocks, out, xp):
    n = len(blocks)
    q = _nibbles(blocks[:, 48:176], 4, xp)
    q |= _bits(blocks[:, None, 16:48], 8, 1, xp).reshape(n, QK_K) << 4
    _k_dequant(blocks, out, q, xp)


def _q6_k(blocks, out, xp):
    n = len(blocks)
    d = _half(blocks, 208, xp) * blocks[:, 192:208].view(xp.int8).astype(xp.float32)   # [n, 16]
    q = _nibbles(blocks[:, 0:128], 2, xp)                                # [n, 256]
    q |= _bits(blocks[:, 128:192].reshape(n, 2, 32), 4, 2, xp).reshape(n, QK_K) << 4
    q += 224                                # q - 32 as int8
    _scale_code(out.reshape(n, 16, 16), q.view(xp.int8).reshape(n, 16, 16), d[:, :, None])


_DECODERS = {"F32": _f32, "F16": _f16, "BF16": _bf16, "Q8_0": _q8_0, "Q4_0": _q4_0, "Q4_1": _q4_1,
             "Q5_0": _q5_0, "Q5_1": _q5_1, "Q2_K": _q2_k, "Q3_K": _q3_k, "Q4_K": _q4_k, "Q5_K": _q5_k,
             "Q6_K": _q6_k}

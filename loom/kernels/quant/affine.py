"""Quantization: float arrays <-> every type of loom/dtypes.py, and exact integer matmul on the codes.

Rules (docs/dtypes.md has the full table). Everything is computed in float64 and rounds half to even.
Saturation clamps to the representable range: nothing wraps, nothing becomes inf.
- float64/float32/float16/bfloat16: a correctly rounded, saturating cast (inf -> +-max, NaN stays).
- fp8_e4m3, fp8_e5m2, fp4_e2m1: scale = amax / finite_max, q = saturating cast of x / scale.
- signed intN: symmetric, scale = amax / qmax with qmax = 2^(N-1) - 1, q = clip(rint(x/scale), +-qmax).
- unsigned uintN: affine, [min(x,0), max(x,0)] maps onto [0, 2^N - 1] through a zero point.
- ternary: Ternary Weight Networks; binary: XNOR-Net (sign, scale = mean|x|).
Scales are float32 (1 where the range is all zero; one float32 up where rounding down would clip
the tensor's own extreme by over half a step), one per tensor (shape ()) or one per channel along
`axis` (shape [1, .., C, .., 1]). Scaled types reject NaN and inf inputs with ConfigError.

ml_dtypes casts float64 through float32, which double-rounds (1 + 2^-4 + 2^-40 becomes 1.0 in
float8_e4m3fn), so float rounding here is done in float64 arithmetic first (`round_to`); the cast
afterwards is exact. Sums that decide a scale (ternary, binary) use math.fsum: correctly rounded, so
independent of summation order.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from ... import dtypes
from ...errors import ConfigError, ShapeError


def activation_type(dtype: str | dtypes.DType) -> str:
    """The type activations entering an integer qmatmul are quantized to, per row (and so in QAT):
    int8 for weights of 8 bits or fewer, int16 for wider ones, whose own precision would otherwise
    be lost to the activations'."""
    return "int8" if _row(dtype).bits <= 8 else "int16"
_PER = ("tensor", "channel")
_F32_TINY = float(np.finfo(np.float32).smallest_subnormal)


def _row(dtype, path: str = "quantize") -> dtypes.DType:
    """The table row of a quantized type, which must be usable here (dtypes.require: ml_dtypes' types
    need ml_dtypes; their stand-ins would turn values into zero bytes)."""
    return dtypes.require(dtype.name if isinstance(dtype, dtypes.DType) else dtype, path)


def is_integer(dtype: str | dtypes.DType) -> bool:
    """True for the types whose matmul runs on integer codes (int*, uint*, ternary, binary)."""
    return _row(dtype).kind != "float"


def _float_row(dtype, path: str) -> dtypes.DType:
    """The table row of a float output type given by Loom name or numpy dtype."""
    if isinstance(dtype, str) and dtype in dtypes.TABLE:
        row = dtypes.TABLE[dtype]
    else:
        try:
            row = next(r for r in dtypes.TABLE.values() if r.numpy == np.dtype(dtype))
        except (TypeError, StopIteration):
            row = None
    if row is None or not row.is_float:
        raise ConfigError(path, f"output dtype must be a float type, got {dtype!r}")
    dtypes.require(row.name, path)
    return row


def _below(q: int) -> float:
    """The largest float64 <= q (2**63 - 1 rounds up to 2**63 as a float, which would overflow)."""
    f = float(q)
    return float(np.nextafter(f, 0.0)) if f > q else f


def round_to(x: ArrayLike, dtype: DTypeLike) -> np.ndarray:
    """float64 values rounded half-to-even to float type `dtype`, saturating at +-finite max (NaN stays
    NaN). Rounds to `nmant + 1` significant bits (fewer in the subnormal range) with exact float64
    scaling by powers of two, so the final cast only moves already representable values."""
    row = _float_row(dtype, "round_to")
    v = np.clip(np.asarray(x, dtype=np.float64), -row.fmax, row.fmax)
    if row.numpy in (np.float64, np.float32, np.float16):   # NumPy's own casts round correctly
        return v.astype(row.numpy)
    _, e = np.frexp(v)                                       # |v| in [2^(e-1), 2^e)
    k = np.maximum(e - 1, row.minexp) - row.nmant           # exponent of one unit in the last place
    return np.ldexp(np.rint(np.ldexp(v, -k)), k).astype(row.numpy)


@dataclass(eq=False)
class AffineQuantized:
    """A quantized tensor: value = (q - zero_point) * scale.

    q: codes in the type's numpy dtype, full shape. scale: float32, shape () or broadcastable per
    channel, or None (plain float casts). zero_point: same shape as scale, unsigned types only, in the
    unsigned container of the type's width (uint8 for uint2/uint4), or None."""
    dtype: str
    q: np.ndarray
    scale: np.ndarray | None = None
    zero_point: np.ndarray | None = None

    def __post_init__(self):
        row = _row(self.dtype, "AffineQuantized.dtype")
        if self.q.dtype != row.numpy:
            raise ShapeError(f"AffineQuantized {self.dtype}: q must be {row.numpy}, got {self.q.dtype}")
        for name, arr, want in (("scale", self.scale, np.dtype(np.float32)),
                                ("zero_point", self.zero_point, _zp_dtype(row))):
            if arr is None:
                continue
            if arr.dtype != want:
                raise ShapeError(f"AffineQuantized {self.dtype}: {name} must be {want}, got {arr.dtype}")
            try:
                ok = np.broadcast_shapes(arr.shape, self.q.shape) == self.q.shape
            except ValueError:
                ok = False
            if not ok:
                raise ShapeError(f"AffineQuantized {self.dtype}: {name} shape {list(arr.shape)} does not broadcast "
                                 f"to {list(self.q.shape)}")
        if (self.zero_point is not None) != (row.kind == "uint"):
            raise ShapeError(f"AffineQuantized {self.dtype}: zero_point is required for unsigned types only")
        if (self.scale is None) != (row.kind == "float" and row.bits > 8):
            raise ShapeError(f"AffineQuantized {self.dtype}: scale is "
                             f"{'not used' if self.scale is not None else 'required'} for this type")
        if self.zero_point is not None and self.zero_point.shape != self.scale.shape:
            raise ShapeError(f"AffineQuantized {self.dtype}: zero_point and scale shapes differ")

    @property
    def shape(self) -> tuple[int, ...]:
        return self.q.shape

    @property
    def ndim(self) -> int:
        return self.q.ndim

    @property
    def nbytes(self) -> int:
        """Bytes of the packed codes plus the scales and zero points."""
        return (dtypes.packed_size(self.q.size, self.dtype)
                + sum(a.nbytes for a in (self.scale, self.zero_point) if a is not None))

    def dequantize(self, dtype: DTypeLike = "float32") -> np.ndarray:
        return dequantize(self, dtype)


def _zp_dtype(row: dtypes.DType) -> np.dtype:
    # int32 cannot hold uint32's or uint64's zero points; the unsigned container of the same width can.
    return np.dtype(f"u{max(1, row.bits // 8)}")


# --- quantize ------------------------------------------------------------------------------------

def _as_float64(x, path: str) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype not in dtypes.FLOAT_NUMPY:
        raise ConfigError(path, f"input must be a float array, got {a.dtype}")
    return a.astype(np.float64)


def _channel_axis(x: np.ndarray, per: str, axis) -> int | None:
    if per not in _PER:
        raise ConfigError("quantize", f"per must be one of {list(_PER)}, got {per!r}")
    if per == "tensor":
        return None
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or not -x.ndim <= axis < x.ndim:
        raise ConfigError("quantize", f"axis {axis!r} is not an axis of a {x.ndim}-d array")
    return int(axis) % x.ndim


def _rows(a: np.ndarray, axis: int | None) -> np.ndarray:
    """a as [channels, elements per channel] (one row for per-tensor)."""
    return a.reshape(1, -1) if axis is None else np.moveaxis(a, axis, 0).reshape(a.shape[axis], -1)


def _param_shape(v: np.ndarray, ndim: int, axis: int | None) -> np.ndarray:
    """Per-channel values [C] as the broadcastable scale shape; per-tensor as shape ()."""
    if axis is None:
        return v.reshape(())
    shape = [1] * ndim
    shape[axis] = v.size
    return v.reshape(shape)


def _scale(num: np.ndarray, den) -> np.ndarray:
    """float32(num / den); 1 where num is 0; the smallest float32 above 0 where it underflows."""
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(num == 0, 1.0, num / np.asarray(den, dtype=np.float64)).astype(np.float32)
    if not np.isfinite(s).all():
        raise ConfigError("quantize", "the value range is too large for a float32 scale")
    return np.where(s == 0, np.float32(_F32_TINY), s).astype(np.float32)


def _no_clip(s: np.ndarray, clips: np.ndarray) -> np.ndarray:
    """The next float32 up where the float32 scale would clip the tensor's own extreme by more than
    half a step (`clips`): signed types with 2^23 or more levels when the scale rounded down, and
    unsigned ones when the zero point's rounding adds to that. Then no value errs by > scale/2."""
    return np.where(clips, np.nextafter(s, np.float32(np.inf)), s).astype(np.float32)


def _mean_abs(a: np.ndarray, axis: int | None, where=None) -> tuple[np.ndarray, np.ndarray]:
    """(exact-sum mean of |a| over each channel [C], counts [C]); `where` selects the elements."""
    rows = _rows(np.abs(a), axis)
    keep = np.ones_like(rows, dtype=bool) if where is None else _rows(where, axis)
    sums = np.array([math.fsum(r[k].tolist()) for r, k in zip(rows, keep)], dtype=np.float64)
    counts = keep.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), 0.0), counts


def _reduce(fn, x: np.ndarray, axis: int | None) -> np.ndarray:
    return fn(_rows(x, axis), axis=1, initial=0.0)        # initial=0: empty tensors, and min(x, 0)


def quantize(x: ArrayLike, dtype: str, per: str = "tensor", axis: int = 0) -> AffineQuantized:
    """x (any float array) as an AffineQuantized of `dtype`; per="channel" gives one scale per index of `axis`."""
    row = _row(dtype)
    x = _as_float64(x, "quantize")
    ax = _channel_axis(x, per, axis)
    if row.is_float and row.bits > 8:
        return AffineQuantized(row.name, round_to(x, row.name))
    if not np.isfinite(x).all():
        bad = np.flatnonzero(~np.isfinite(x.reshape(-1)))
        raise ConfigError("quantize", f"{row.name} needs finite input; {bad.size} NaN/inf values, "
                                      f"the first at flat index {int(bad[0])}")
    shaped = lambda v: _param_shape(np.asarray(v), x.ndim, ax)  # noqa: E731
    if row.is_float:
        s = shaped(_scale(_reduce(np.max, np.abs(x), ax), row.fmax))
        return AffineQuantized(row.name, round_to(x / s.astype(np.float64), row.name), s)
    top = _below(row.qmax) if row.kind in ("int", "uint") else None
    if row.kind == "int":
        amax = _reduce(np.max, np.abs(x), ax)
        s = _scale(amax, row.qmax)
        s = shaped(_no_clip(s, amax / s - row.qmax > 0.5))
        q = np.clip(np.rint(x / s.astype(np.float64)), -top, top)
        return AffineQuantized(row.name, q.astype(np.int64).astype(row.numpy), s)
    if row.kind == "uint":
        lo, hi = _reduce(np.min, x, ax), _reduce(np.max, x, ax)
        s = _scale(hi - lo, row.qmax)
        zp = np.clip(np.rint(-lo / s), 0, top)
        s = shaped(_no_clip(s, (hi / s + zp - row.qmax > 0.5) | (-lo / s - zp > 0.5)))
        s64 = s.astype(np.float64)
        zp = np.clip(np.rint(-shaped(lo) / s64), 0, top)
        q = np.clip(np.rint(x / s64) + zp, 0, top)
        return AffineQuantized(row.name, q.astype(np.uint64).astype(row.numpy), s,
                       zp.astype(np.uint64).astype(_zp_dtype(row)))
    if row.kind == "ternary":                   # TWN: threshold 0.7 * mean|x|, scale = mean of the kept
        mean, _ = _mean_abs(x, ax)
        keep = np.abs(x) > 0.7 * shaped(mean)
        kept_mean, counts = _mean_abs(x, ax, keep)
        s = shaped(_scale(np.where(counts > 0, kept_mean, 0.0), 1.0))
        return AffineQuantized(row.name, (np.sign(x) * keep).astype(np.int8), s)
    mean, _ = _mean_abs(x, ax)                  # binary (XNOR-Net); -0.0 >= 0, so it maps to +1
    return AffineQuantized(row.name, np.where(x >= 0, 1, -1).astype(np.int8), shaped(_scale(mean, 1.0)))


def _centered(qt: AffineQuantized) -> np.ndarray:
    """float64 of q - zero_point: the difference is formed exactly (uint64 too), then rounded once."""
    if qt.zero_point is None:
        return qt.q.astype(np.float64)
    q, z = qt.q.astype(np.uint64), qt.zero_point.astype(np.uint64)
    with np.errstate(over="ignore"):            # the branch np.where discards may wrap
        return np.where(q >= z, (q - z).astype(np.float64), -(z - q).astype(np.float64))


def dequantize(qt: AffineQuantized, dtype: DTypeLike = "float32") -> np.ndarray:
    """(q - zero_point) * scale in float64, rounded once to `dtype` (a Loom name or numpy dtype)."""
    v = _centered(qt)
    if qt.scale is not None:
        v = v * qt.scale.astype(np.float64)
    return round_to(v, _float_row(dtype, "dequantize").name)


def fake_quantize(x: ArrayLike, dtype: str, per: str = "tensor", axis: int = 0) -> np.ndarray:
    """dequantize(quantize(x)) in x's dtype: the forward of quantization-aware training."""
    x = np.asarray(x)
    return dequantize(quantize(x, dtype, per, axis), x.dtype)


def ste_mask(x: ArrayLike, dtype: str, per: str = "tensor", axis: int = 0, qt: AffineQuantized | None = None) -> np.ndarray:
    """Straight-through-estimator gradient mask in x's dtype: 1 where quantize(x) kept the value
    inside the representable range, 0 where it clipped or saturated (or x is NaN or inf). Floats:
    |x / scale| <= finite max + half an ulp there (what rounds to the max is not saturated).
    Scales computed from x itself cover x, so for scaled types this is all ones in practice.
    ternary and binary use the hard-tanh STE of BinaryConnect/XNOR-Net: 1 where |x| <= 1.
    qt: quantize(x, dtype, per, axis) when the caller already has it (saves quantizing twice)."""
    x = np.asarray(x)
    row, v = _row(dtype), _as_float64(x, "ste_mask")
    if row.kind in ("ternary", "binary"):
        _channel_axis(v, per, axis)
        keep = np.abs(v) <= 1.0
    elif row.is_float:                          # past max + half an ulp a value is clamped, not rounded
        top = row.fmax + 2.0 ** (math.floor(math.log2(row.fmax)) - row.nmant - 1)
        qt = qt if qt is not None or row.bits > 8 else quantize(v, row.name, per, axis)
        u = v if row.bits > 8 else v / qt.scale.astype(np.float64)
        with np.errstate(invalid="ignore"):
            keep = np.isfinite(u) & (np.abs(u) <= top)
    else:
        qt = qt if qt is not None else quantize(v, row.name, per, axis)
        u = v / qt.scale.astype(np.float64)
        if row.kind == "int":
            keep = np.abs(np.rint(u)) <= row.qmax
        else:
            c = np.rint(u) + qt.zero_point.astype(np.float64)
            keep = (c >= 0) & (c <= _below(row.qmax))
    return keep.astype(x.dtype)


# --- matmul on quantized weights -----------------------------------------------------------------

def _as_2d(w: AffineQuantized) -> tuple[AffineQuantized, np.ndarray]:
    """w as [out, in] (trailing axes flattened) and its scale as [out] float64; the scale must be
    per tensor or per output channel (axis 0) so it factors out of every dot product."""
    if w.ndim < 2:
        raise ShapeError(f"quantized weight must be [out, in, ...], got shape {list(w.shape)}")
    out = w.shape[0]
    for a in (w.scale, w.zero_point):
        if a is not None and a.ndim and any(d != 1 for d in a.shape[1:]):
            raise ShapeError(f"qmatmul needs a per-tensor or per-output-channel scale, got shape "
                             f"{list(a.shape)} for weight {list(w.shape)}")
    flat = lambda a: None if a is None else a.reshape(a.shape[:1] + (1,) if a.ndim else ())  # noqa: E731
    w2 = AffineQuantized(w.dtype, w.q.reshape(out, -1), flat(w.scale), flat(w.zero_point))
    sw = np.ones(out) if w.scale is None else np.broadcast_to(w.scale.astype(np.float64).reshape(-1), (out,))
    return w2, sw


def _idot(xi: np.ndarray, d: np.ndarray, maxabs: int) -> np.ndarray:
    """Exact int64 xi @ d.T for |d| <= maxabs. Float64 BLAS when every partial sum stays below 2^53
    (then each is an exact integer, in any order), else int64 matmul (checked not to overflow)."""
    bound = xi.shape[1] * int(np.abs(xi).max(initial=0)) * maxabs
    if bound < 2**53:
        return (xi.astype(np.float64) @ d.T.astype(np.float64)).astype(np.int64)
    if bound >= 2**62:
        raise ShapeError(f"qmatmul: inner dimension {xi.shape[1]} is too large to accumulate exactly in int64")
    return xi @ d.T


def _hilo_to_f64(h: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """float64 of h * 2^32 + lo, correctly rounded (one rounding of the exact integer)."""
    h = h + (lo >> 32)                       # carry so that 0 <= lo < 2^32
    lo = lo & 0xFFFFFFFF
    a = h.astype(np.float64)                 # rounded high part ...
    r = (h - a.astype(np.int64)) * 2**32 + lo   # ... and the exact rest, small enough for float64
    return np.ldexp(a, 32) + r.astype(np.float64)   # both exact: the sum rounds once


def _exact_acc(xi: np.ndarray, w: AffineQuantized) -> np.ndarray:
    """float64 of the exact integer sums xi @ (q - zero_point).T, correctly rounded."""
    row = _row(w.dtype)
    if row.bits < 64:
        d = w.q.astype(np.int64)
        if w.zero_point is not None:
            d = d - w.zero_point.astype(np.int64)
        return _idot(xi, d, int(np.abs(d).max(initial=0))).astype(np.float64)
    # 64-bit codes: split into a high half (signed for int64) and an unsigned low 32-bit half,
    # accumulate each exactly, subtract the zero point's halves times the row sums, combine once.
    if xi.shape[1] * int(np.abs(xi).max(initial=0)) * 2**33 >= 2**62:
        raise ShapeError(f"qmatmul: inner dimension {xi.shape[1]} is too large for 64-bit weights")
    q = w.q
    hi = (q.astype(np.uint64) >> np.uint64(32)).astype(np.int64) if row.kind == "uint" else q >> 32
    lo = (q.astype(np.uint64) & np.uint64(0xFFFFFFFF)).astype(np.int64)
    h, low = _idot(xi, hi, 2**32), _idot(xi, lo, 2**32)
    if w.zero_point is not None:
        z = np.broadcast_to(w.zero_point.reshape(-1), (q.shape[0],)).astype(np.uint64)
        rs = xi.sum(axis=1)[:, None]
        h = h - rs * (z >> np.uint64(32)).astype(np.int64)[None, :]
        low = low - rs * (z & np.uint64(0xFFFFFFFF)).astype(np.int64)[None, :]
    return _hilo_to_f64(h, low)


def qmatmul(x: ArrayLike, w: AffineQuantized, out_dtype: DTypeLike | None = None) -> np.ndarray:
    """y = x @ dequant(w).T for a weight [out, in, ...] (trailing axes flattened) and x [..., in].

    Integer types: each row of x is quantized to int8 (quantize(x, "int8", per="channel") on the 2-D
    view), the integer codes are multiplied and summed exactly, and y = acc * scale_x * scale_w in
    float64, rounded once to out_dtype: the same bits on any BLAS, thread split or machine.
    Float types: float64 x @ float64 dequant(w).T, rounded once to out_dtype (default: x's dtype)."""
    x = np.asarray(x)
    if x.dtype not in dtypes.FLOAT_NUMPY:
        raise ConfigError("qmatmul", f"x must be a float array, got {x.dtype}")
    w2, sw = _as_2d(w)
    k = w2.shape[1]
    if x.ndim < 1 or x.shape[-1] != k:
        raise ShapeError(f"qmatmul: x {list(x.shape)} does not match weight {list(w.shape)} (in = {k})")
    out = _float_row(x.dtype if out_dtype is None else out_dtype, "qmatmul").name
    x2 = x.reshape(-1, k)
    if not is_integer(w.dtype):
        y = x2.astype(np.float64) @ dequantize(w2, "float64").T
    else:
        xq = quantize(x2, activation_type(w.dtype), per="channel", axis=0)
        acc = _exact_acc(xq.q.astype(np.int64), w2)
        y = acc * xq.scale.astype(np.float64).reshape(-1, 1) * sw[None, :]
    return round_to(y, out).reshape(x.shape[:-1] + (w2.shape[0],))


def split_rows(w: AffineQuantized, parts: int) -> list[AffineQuantized]:
    """w as [out, in*...] split into `parts` equal row blocks (grouped convolution), scales with them."""
    w2, _ = _as_2d(w)
    if w2.shape[0] % parts:
        raise ShapeError(f"split_rows: {w2.shape[0]} rows do not split into {parts} parts")
    n = w2.shape[0] // parts
    cut = lambda a, i: a if a is None or a.ndim == 0 or a.shape[0] == 1 else a[i * n:(i + 1) * n]  # noqa: E731
    return [AffineQuantized(w.dtype, w2.q[i * n:(i + 1) * n], cut(w2.scale, i), cut(w2.zero_point, i))
            for i in range(parts)]


def take_rows(w: AffineQuantized, ids: ArrayLike, dtype: DTypeLike = "float32") -> np.ndarray:
    """Dequantized rows w[ids] (an embedding lookup) without dequantizing the whole table."""
    ids = np.asarray(ids)
    pick = lambda a: a if a is None or a.ndim == 0 or a.shape[0] == 1 else a[ids]  # noqa: E731
    return dequantize(AffineQuantized(w.dtype, w.q[ids], pick(w.scale), pick(w.zero_point)), dtype)


# --- storage -------------------------------------------------------------------------------------

def packed_bytes(qt: AffineQuantized) -> np.ndarray:
    """The codes as stored: 1-D uint8 (packed types) or little-endian bytes (the rest)."""
    return dtypes.pack(qt.q, qt.dtype)


def to_storage(qt: AffineQuantized) -> dict[str, np.ndarray]:
    """Arrays a file can hold: "q" (packed uint8 for sub-byte types, else the codes in their own
    dtype and shape), "scale" and "zero_point" when present. from_storage inverts it exactly."""
    out = {"q": packed_bytes(qt) if _row(qt.dtype).packed else qt.q}
    out.update({k: v for k, v in (("scale", qt.scale), ("zero_point", qt.zero_point)) if v is not None})
    return out


def from_storage(arrays: dict[str, np.ndarray], dtype: str, shape: Sequence[int]) -> AffineQuantized:
    """The AffineQuantized of `dtype` and `shape` from to_storage's arrays (FormatError on a size mismatch)."""
    row, q = _row(dtype, "from_storage"), np.asarray(arrays["q"])
    if row.packed:
        q = dtypes.unpack(q, row.name, shape)
    elif q.dtype != row.numpy or q.shape != tuple(shape):
        raise ShapeError(f"from_storage: q is {q.dtype}{list(q.shape)}, expected {row.numpy}{list(shape)}")
    get = lambda k: None if arrays.get(k) is None else np.asarray(arrays[k])  # noqa: E731
    return AffineQuantized(row.name, q, get("scale"), get("zero_point"))

"""The one table of numeric types Loom knows, and the bit packing of the sub-byte ones.

Each row ties a Loom name to its in-memory NumPy/ml_dtypes dtype (the dtype of *unpacked* values),
its safetensors name, its C enum value (loom.h's LoomDType), its storage bits per element and its
kind. Networks compute in float32/float64; integer types appear as inputs (token ids); every type
can hold quantized weights (see loom/kernels/quant/affine.py for the rules that map floats onto each type).

Packing (docs/dtypes.md has the table and worked bytes). Types of 8 bits or more are stored as their
little-endian bytes. Sub-byte types (fp4_e2m1, int4, uint4, int2, uint2, ternary, binary) are packed
into uint8 and stored as safetensors "U8":
- flatten in C order; element i goes into byte i // per_byte at bit offset (i % per_byte) * bits,
  least-significant bits first (per_byte = 8 // bits); the last byte is zero-padded;
- stored codes: two's complement for int4/int2, plain binary for uint4/uint2, the E2M1 bit pattern
  (sign bit highest) for fp4_e2m1, ternary 0b00 = 0, 0b01 = +1, 0b11 = -1 (0b10 is invalid),
  binary bit 1 = +1, bit 0 = -1;
- packed length is exactly ceil(n * bits / 8); unpack rejects any other length, an invalid ternary
  code and non-zero padding bits with FormatError.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from .errors import BackendError, ConfigError, FormatError

try:
    import ml_dtypes
except ImportError:         # Pyodide ships no ml_dtypes: its types get stand-ins (_missing) and require() says so
    ml_dtypes = None


@dataclass(frozen=True)
class DType:
    name: str            # Loom's name, as written in configs
    numpy: np.dtype      # in-memory representation of unpacked values
    safetensors: str     # safetensors header name (sub-byte types: "U8", packed)
    c_enum: int          # value in loom.h's LoomDType; stable, never reused
    bits: int            # storage bits per element
    kind: str            # "float" | "int" | "uint" | "ternary" | "binary"
    qmin: int | None = None     # integer kinds: smallest and largest code value
    qmax: int | None = None
    fmax: float | None = None   # float kinds: largest finite value
    nmant: int | None = None    # float kinds: stored mantissa bits (precision is nmant + 1)
    minexp: int | None = None   # float kinds: exponent of the smallest normal number

    @property
    def packed(self) -> bool:
        """True when several elements share a byte (bits < 8)."""
        return self.bits < 8

    @property
    def per_byte(self) -> int:
        return 8 // self.bits if self.packed else 1

    @property
    def storage(self) -> np.dtype:
        """dtype of the stored array: uint8 for packed types, else the in-memory dtype."""
        return np.dtype(np.uint8) if self.packed else self.numpy

    @property
    def is_float(self) -> bool:
        return self.kind == "float"


def _ml(attr: str, name: str, itemsize: int) -> np.dtype:
    """ml_dtypes' type `attr`, or where ml_dtypes is missing a stand-in of its size that no real
    array has (so nothing matches it) and whose name says what is missing."""
    if ml_dtypes is not None:
        return np.dtype(getattr(ml_dtypes, attr))
    return np.dtype([(f"{name} needs ml_dtypes", f"V{itemsize}")])


# finfo of the float types and iinfo of the integer types (ml_dtypes' own values; tests/test_dtypes.py
# checks them against ml_dtypes where it is installed): the table needs them without ml_dtypes too
def _float(name, dtype, st, enum, bits, fmax, nmant, minexp):
    return DType(name, np.dtype(dtype), st, enum, bits, "float", fmax=float(fmax), nmant=nmant, minexp=minexp)


def _ieee(name, np_type, st, enum):
    info = np.finfo(np_type)
    return _float(name, np_type, st, enum, info.bits, info.max, int(info.nmant), int(info.minexp))


def _int(name, dtype, st, enum, bits, lo=None, hi=None):
    if lo is None:
        info = np.iinfo(dtype)
        lo, hi = int(info.min), int(info.max)
    return DType(name, np.dtype(dtype), st, enum, bits, "uint" if lo == 0 else "int", qmin=lo, qmax=hi)


# Order matters for of_array: the first row with a numpy dtype wins, so the plain int8 row comes
# before ternary and binary, which also live in int8 when unpacked.
_ROWS = [
    _ieee("float64", np.float64, "F64", 0),
    _ieee("float32", np.float32, "F32", 1),
    _ieee("float16", np.float16, "F16", 2),
    _float("bfloat16", _ml("bfloat16", "bfloat16", 2), "BF16", 3, 16, 3.3895313892515355e38, 7, -126),
    _float("fp8_e4m3", _ml("float8_e4m3fn", "fp8_e4m3", 1), "F8_E4M3", 4, 8, 448.0, 3, -6),
    _float("fp8_e5m2", _ml("float8_e5m2", "fp8_e5m2", 1), "F8_E5M2", 5, 8, 57344.0, 2, -14),
    _float("fp4_e2m1", _ml("float4_e2m1fn", "fp4_e2m1", 1), "U8", 6, 4, 6.0, 1, 0),
    _int("int64", np.int64, "I64", 7, 64),
    _int("int32", np.int32, "I32", 8, 32),
    _int("int16", np.int16, "I16", 9, 16),
    _int("int8", np.int8, "I8", 10, 8),
    _int("int4", _ml("int4", "int4", 1), "U8", 11, 4, -8, 7),
    _int("int2", _ml("int2", "int2", 1), "U8", 12, 2, -2, 1),
    _int("uint64", np.uint64, "U64", 13, 64),
    _int("uint32", np.uint32, "U32", 14, 32),
    _int("uint16", np.uint16, "U16", 15, 16),
    _int("uint8", np.uint8, "U8", 16, 8),
    _int("uint4", _ml("uint4", "uint4", 1), "U8", 17, 4, 0, 15),
    _int("uint2", _ml("uint2", "uint2", 1), "U8", 18, 2, 0, 3),
    DType("ternary", np.dtype(np.int8), "U8", 19, 2, "ternary", qmin=-1, qmax=1),
    DType("binary", np.dtype(np.int8), "U8", 20, 1, "binary", qmin=-1, qmax=1),
]
TABLE: dict[str, DType] = {row.name: row for row in _ROWS}
BY_C_ENUM: dict[int, DType] = {row.c_enum: row for row in _ROWS}
# In-memory dtypes of the float rows, and the ml_dtypes ones (NumPy reports most of those as kind
# "V", but float8_e5m2 as "f": test membership here, never dtype.kind).
MISSING = frozenset(row.name for row in _ROWS if row.numpy.names is not None)    # stand-ins: no ml_dtypes
# (no stand-in is a float or an ml_dtypes type: nothing may take an array of one for data)
FLOAT_NUMPY = frozenset(row.numpy for row in _ROWS if row.is_float and row.name not in MISSING)
ML_DTYPES = frozenset(row.numpy for row in _ROWS if row.numpy.type.__module__.startswith("ml_dtypes"))


def require(name: str, where: str) -> DType:
    """The row of type `name`, which must be usable here: its values need ml_dtypes where the type
    is one of ml_dtypes' (bfloat16, fp8, fp4, int4, int2, uint4, uint2); BackendError otherwise."""
    row = get(name, where)
    if row.name in MISSING:
        raise BackendError(f"{where}: {row.name} values need the ml_dtypes package, which is not installed "
                           f"here (pip install ml_dtypes; Pyodide has none)")
    return row

# Types a network may compute in (its "dtype" key).
COMPUTE = ("float32", "float64")
# Types a network input may have besides the compute type (integer ids for embedding).
INPUT = ("float32", "float64", "int64", "int32")


def get(name: str, path: str = "dtype") -> DType:
    if not isinstance(name, str) or name not in TABLE:
        raise ConfigError(path, f"unknown dtype {name!r}; expected one of {sorted(TABLE)}")
    return TABLE[name]


def of_array(array: Any) -> str:
    """Loom name of an array's dtype (raises ConfigError for types outside the table).

    int8 arrays are "int8": ternary and binary share that in-memory dtype and are never inferred."""
    for row in _ROWS:
        if row.numpy == array.dtype:
            return row.name
    raise ConfigError("", f"dtype {array.dtype} is not a Loom type")


def packed_size(count: int, name: str) -> int:
    """Bytes that `count` elements of type `name` occupy in storage: ceil(count * bits / 8)."""
    return -(-count * get(name).bits // 8)


# --- packing -------------------------------------------------------------------------------------

def _codes(values: np.ndarray, row: DType) -> np.ndarray:
    """The uint8 storage code of every element of a sub-byte type (flattened), after checking that
    every value is exactly representable: packing never rounds or wraps."""
    a = np.asarray(values)
    if a.dtype.kind not in "iuf" and a.dtype not in ML_DTYPES:
        raise ConfigError("pack", f"cannot pack a {a.dtype} array as {row.name}")
    v = a.reshape(-1).astype(np.float64)        # exact for every value a sub-byte type can hold
    if row.kind == "float":                     # fp4: the value must be one of the 15 E2M1 values
        c = v.astype(row.numpy)
        bad = ~(c.astype(np.float64) == v)
        codes = c.view(np.uint8) & 0x0F         # ml_dtypes keeps the 4-bit pattern in the low nibble
    else:
        allowed = (v == np.rint(v)) & (v >= row.qmin) & (v <= row.qmax)
        if row.kind == "binary":
            allowed &= v != 0
        bad = ~allowed
        if row.kind == "binary":
            codes = (v > 0).astype(np.uint8)
        else:                                   # two's complement low bits (ternary: int2 codes)
            codes = np.where(allowed, v, 0).astype(np.int64).astype(np.uint8) & ((1 << row.bits) - 1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ConfigError("pack", f"element {i} = {v[i]!r} is not a {row.name} value "
                                  f"(C-order index of a {a.shape} array)")
    return codes.astype(np.uint8)


def pack(values: ArrayLike, name: str) -> np.ndarray:
    """Storage bytes (1-D uint8) of `values` as type `name` (see the module docstring for the layout).

    Values must be exactly representable in the type; a value that would round, wrap or change sign
    raises ConfigError naming its index. Types of 8 bits or more give their little-endian bytes."""
    row = require(name, "pack")
    a = np.asarray(values)
    if not row.packed:
        if a.dtype != row.numpy:
            with np.errstate(invalid="ignore", over="ignore"):   # a bad cast is caught just below
                c = a.astype(row.numpy)
                same = c.astype(a.dtype) == a
            if a.dtype in FLOAT_NUMPY:
                same |= np.isnan(a.astype(np.float64)) & np.isnan(c.astype(np.float64))
            if row.kind in ("int", "uint") and a.dtype.kind in "iu":
                same &= (c < 0) == (a < 0)      # uint64 2**64-1 -> int64 -1 round-trips otherwise
            if not same.all():
                i = int(np.flatnonzero(~same.reshape(-1))[0])
                raise ConfigError("pack", f"element {i} = {a.reshape(-1)[i]!r} of a {a.dtype} array "
                                          f"is not exactly representable as {row.name}")
            a = c
        # Reinterpret as unsigned integers of the same width so byte order is explicit for every
        # type, ml_dtypes ones included.
        k = row.numpy.itemsize
        u = np.ascontiguousarray(a).reshape(-1).view(np.dtype(f"u{k}"))
        return u.astype(np.dtype(f"<u{k}"), copy=False).view(np.uint8)
    codes = _codes(a, row)
    per = row.per_byte
    padded = np.zeros(-(-codes.size // per) * per, np.uint8)
    padded[:codes.size] = codes
    shifts = (np.arange(per, dtype=np.uint8) * row.bits).astype(np.uint8)
    # Fields never overlap, so a sum is the same as a bitwise or; uint64 avoids overflow on the way.
    return (padded.reshape(-1, per).astype(np.uint64) << shifts).sum(axis=1).astype(np.uint8)


def _shape(shape) -> tuple[int, ...]:
    s = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    if not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 0 for d in s):
        raise ConfigError("unpack", f"shape must be non-negative integers, got {shape!r}")
    return tuple(int(d) for d in s)


def unpack(packed: bytes | bytearray | memoryview | np.ndarray, name: str,
           shape: int | Sequence[int]) -> np.ndarray:
    """Values of type `name` (in the row's numpy dtype, with `shape`) from their storage bytes.

    `packed` is bytes-like or a uint8 array. Its length must be exactly ceil(n * bits / 8); a wrong
    length, a ternary code 0b10 or non-zero padding bits raise FormatError. For types of 8 bits or
    more the result may be a view of `packed`."""
    row = require(name, "unpack")
    shape = _shape(shape)
    n = math.prod(shape)
    if isinstance(packed, (bytes, bytearray, memoryview)):
        buf = np.frombuffer(packed, np.uint8)
    else:
        buf = np.asarray(packed)
        if buf.dtype != np.uint8:
            raise FormatError(f"{row.name}: packed data must be uint8, got {buf.dtype}")
        buf = np.ascontiguousarray(buf).reshape(-1)
    need = packed_size(n, row.name)
    if buf.size != need:
        raise FormatError(f"{row.name} x {list(shape)}: needs {need} packed bytes, got {buf.size}")
    if not row.packed:
        k = row.numpy.itemsize
        u = buf.view(np.dtype(f"<u{k}")).astype(np.dtype(f"=u{k}"), copy=False)
        return u.view(row.numpy).reshape(shape)
    per, mask = row.per_byte, (1 << row.bits) - 1
    shifts = (np.arange(per, dtype=np.uint8) * row.bits).astype(np.uint8)
    codes = ((buf[:, None] >> shifts) & mask).reshape(-1)
    if codes[n:].any():
        raise FormatError(f"{row.name} x {list(shape)}: padding bits of the last byte "
                          f"(byte {need - 1}) are not zero")
    codes = codes[:n]
    if row.kind == "float":
        return codes.view(row.numpy).reshape(shape)
    if row.kind == "binary":
        return np.where(codes == 1, 1, -1).astype(np.int8).reshape(shape)
    if row.kind == "ternary" and (codes == 0b10).any():
        i = int(np.flatnonzero(codes == 0b10)[0])
        raise FormatError(f"ternary x {list(shape)}: element {i} (byte {i // per}) has the invalid "
                          f"code 0b10")
    vals = codes.astype(np.int16)
    if row.kind in ("int", "ternary"):          # sign-extend two's complement
        vals = np.where(vals >= 1 << (row.bits - 1), vals - (1 << row.bits), vals)
    return vals.astype(row.numpy).reshape(shape)

"""GGUF (llama.cpp's model file) reading, memory-mapped and validated against malformed files.

Layout (little-endian; versions 2 and 3 share it, version 1 had 32-bit counts):

    "GGUF"  u32 version  u64 tensor_count  u64 kv_count
    kv_count x    string key, u32 value type, value
    tensor_count x string name, u32 n_dims, u64 dims[n_dims] (innermost first), u32 ggml type,
                  u64 offset (from the start of the data section, a multiple of the alignment)
    padding to `general.alignment` (a u32 power of two, default 32), then the data section

A string is a u64 byte length and UTF-8 bytes. Value types: 0 u8, 1 i8, 2 u16, 3 i16, 4 u32, 5 i32,
6 f32, 7 bool (one byte, 0 or 1), 8 string, 9 array (u32 element type, u64 count, elements, which
may themselves be arrays), 10 u64, 11 i64, 12 f64.

Metadata values become Python int/float/bool/str; arrays of numbers or bools become NumPy arrays,
arrays of strings (and of arrays) lists. Tensor shapes are in NumPy order (GGUF dims reversed).
Every check raises FormatError naming the byte offset (and the tensor); no count or length is
trusted before it is checked against the bytes left in the file, so nothing larger than the file
is ever allocated. Big-endian GGUF files are rejected.
"""
from __future__ import annotations

import math
import mmap
import os
import struct
from dataclasses import dataclass

import numpy as np

from ..errors import FormatError, LoomError
from ..kernels.quant import gguf as gguf_quants
from ..kernels.quant.block import BlockQuantized

MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4            # GGML_MAX_DIMS
MAX_NESTING = 64        # arrays of arrays: far beyond any real file, short of Python's recursion limit
_TYPE_NAMES = {v: k for k, v in gguf_quants.TYPE_IDS.items()}
# ggml types Loom does not decode, named in the error (ggml.h)
_OTHER_TYPES = {9: "Q8_1", 15: "Q8_K", 16: "IQ2_XXS", 17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL",
                21: "IQ3_S", 22: "IQ2_S", 23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64",
                29: "IQ1_M", 34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4"}
# value type -> (NumPy dtype, name); 8 (string) and 9 (array) are handled on their own
_SCALARS = {0: (np.dtype("u1"), "uint8"), 1: (np.dtype("i1"), "int8"), 2: (np.dtype("<u2"), "uint16"),
            3: (np.dtype("<i2"), "int16"), 4: (np.dtype("<u4"), "uint32"), 5: (np.dtype("<i4"), "int32"),
            6: (np.dtype("<f4"), "float32"), 7: (np.dtype("u1"), "bool"), 10: (np.dtype("<u8"), "uint64"),
            11: (np.dtype("<i8"), "int64"), 12: (np.dtype("<f8"), "float64")}
STRING, ARRAY = 8, 9
_MIN_KV_BYTES = 8 + 4 + 1        # empty key, type, the smallest value
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 4 + 8


@dataclass(frozen=True)
class TensorInfo:
    name: str
    qtype: str              # a key of gguf_quants.BLOCKS
    shape: tuple            # NumPy order (GGUF's dims reversed)
    offset: int             # absolute byte offset of the data in the file
    nbytes: int


class _Reader:
    """A cursor over the file's bytes; every read checks that the bytes exist."""

    def __init__(self, buf, size: int):
        self.buf, self.size, self.pos = buf, size, 0

    def take(self, n: int, what: str) -> int:
        start = self.pos
        if n > self.size - start:
            raise FormatError(f"{what} at offset {start} needs {n} bytes, but the file ends at offset {self.size}")
        self.pos = start + n
        return start

    def u32(self, what: str) -> int:
        return struct.unpack_from("<I", self.buf, self.take(4, what))[0]

    def u64(self, what: str) -> int:
        return struct.unpack_from("<Q", self.buf, self.take(8, what))[0]

    def string(self, what: str) -> str:
        at = self.pos
        n = self.u64(f"length of {what}")
        if n > self.size - self.pos:
            raise FormatError(f"{what} at offset {at}: length {n} runs past the end of the file "
                              f"({self.size - self.pos} bytes left)")
        start = self.take(n, what)
        try:
            return bytes(self.buf[start:start + n]).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise FormatError(f"{what} at offset {at} is not valid UTF-8 (byte {start + exc.start})") from None

    def count(self, what: str, min_item_bytes: int) -> int:
        """A u64 count of items of at least `min_item_bytes` each, checked against the bytes left."""
        at = self.pos
        n = self.u64(what)
        left = self.size - self.pos
        if n * min_item_bytes > left:
            raise FormatError(f"{what} {n} at offset {at} is impossible: {n} items of at least "
                              f"{min_item_bytes} bytes exceed the {left} bytes left in the file")
        return n

    def value(self, vtype: int, what: str, depth: int = 0):
        at = self.pos
        if vtype in _SCALARS:
            dtype, tname = _SCALARS[vtype]
            start = self.take(dtype.itemsize, f"{tname} value of {what}")
            v = np.frombuffer(self.buf, dtype=dtype, count=1, offset=start)[0]
            if vtype == 7:
                if v > 1:
                    raise FormatError(f"bool value of {what} at offset {at} is {int(v)}, not 0 or 1")
                return bool(v)
            return float(v) if dtype.kind == "f" else int(v)
        if vtype == STRING:
            return self.string(f"string value of {what}")
        if vtype == ARRAY:
            return self.array(what, depth)
        raise FormatError(f"{what}: unknown value type {vtype} at offset {at - 4}; known: 0..12")

    def array(self, what: str, depth: int):
        at = self.pos
        if depth >= MAX_NESTING:
            raise FormatError(f"{what}: arrays nested more than {MAX_NESTING} deep at offset {at}")
        etype = self.u32(f"array element type of {what}")
        if etype in _SCALARS:
            dtype, tname = _SCALARS[etype]
            n = self.count(f"{tname} array length of {what}", dtype.itemsize)
            start = self.take(n * dtype.itemsize, f"{tname} array of {what}")
            values = np.frombuffer(self.buf, dtype=dtype, count=n, offset=start).copy()
            if etype == 7:
                if n and values.max() > 1:
                    bad = int(np.argmax(values > 1))
                    raise FormatError(f"bool {bad} of array {what} at offset {start + bad} is {values[bad]}, "
                                      "not 0 or 1")
                return values.astype(bool)
            return values.astype(dtype.newbyteorder("="))
        if etype == STRING:
            n = self.count(f"string array length of {what}", 8)
            return [self.string(f"string {i} of array {what}") for i in range(n)]
        if etype == ARRAY:
            n = self.count(f"array-of-arrays length of {what}", 12)
            return [self.array(f"{what}[{i}]", depth + 1) for i in range(n)]
        raise FormatError(f"{what}: unknown array element type {etype} at offset {at}; known: 0..12")


class GGUFFile:
    """A GGUF file, memory-mapped: metadata and tensor infos are read at once, tensor data on
    demand. Use as a context manager or call close(); arrays already handed out stay valid."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = os.fspath(path)
        with open(self.path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size == 0:
                raise FormatError(f"{self.path}: empty file")
            self._map = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            self._parse(_Reader(self._map, size))
        except FormatError as exc:
            self.close()
            raise FormatError(f"{self.path}: {exc}") from None

    def _parse(self, r: _Reader) -> None:
        magic = bytes(r.buf[r.take(4, "magic"):4])
        if magic != MAGIC:
            raise FormatError(f"bad magic {magic!r} at offset 0, expected {MAGIC!r}")
        version = r.u32("version")
        if version not in SUPPORTED_VERSIONS:
            if version & 0xFFFF == 0 and int.from_bytes(version.to_bytes(4, "little"), "big") in SUPPORTED_VERSIONS:
                raise FormatError("big-endian GGUF file (version field at offset 4); only little-endian "
                                  "files are supported")
            raise FormatError(f"unsupported GGUF version {version} at offset 4; supported: "
                              f"{', '.join(map(str, SUPPORTED_VERSIONS))}")
        self.version = version
        n_tensors = r.count("tensor count", _MIN_TENSOR_INFO_BYTES)
        n_kv = r.count("metadata count", _MIN_KV_BYTES)
        self.metadata: dict[str, object] = {}
        self._types: dict[str, tuple] = {}          # key -> (value type, array element type, offset)
        for i in range(n_kv):
            at = r.pos
            key = r.string(f"metadata key {i}")
            if key in self.metadata:
                raise FormatError(f"metadata key {key!r} at offset {at} appears twice")
            vtype = r.u32(f"value type of {key!r}")
            etype = struct.unpack_from("<I", r.buf, r.pos)[0] if vtype == ARRAY and r.size - r.pos >= 4 else None
            self.metadata[key] = r.value(vtype, repr(key))
            self._types[key] = (vtype, etype, at)
        self.alignment = self._alignment()
        infos = [self._tensor_info(r, i) for i in range(n_tensors)]
        self.data_offset = -(-r.pos // self.alignment) * self.alignment
        self.tensors: dict[str, TensorInfo] = {}
        for name, qtype, shape, rel, at in infos:
            self.tensors[name] = self._check_tensor(name, qtype, shape, rel, at, r.size)
        self._check_overlaps()

    def _alignment(self) -> int:
        if "general.alignment" not in self.metadata:
            return DEFAULT_ALIGNMENT
        value = self.metadata["general.alignment"]
        vtype, _, at = self._types["general.alignment"]
        if vtype != 4 or value == 0 or value & (value - 1):
            raise FormatError(f"general.alignment (key at offset {at}) must be a uint32 power of two, got "
                              f"{value!r} of value type {vtype}")
        return value

    def _tensor_info(self, r: _Reader, i: int):
        at = r.pos
        name = r.string(f"name of tensor {i}")
        n_dims = r.u32(f"dimension count of tensor {name!r}")
        if n_dims > MAX_DIMS:
            raise FormatError(f"tensor {name!r} at offset {at}: {n_dims} dimensions, at most {MAX_DIMS}")
        dims = [r.u64(f"dimension {d} of tensor {name!r}") for d in range(n_dims)]
        type_at = r.pos
        type_id = r.u32(f"type of tensor {name!r}")
        if type_id not in _TYPE_NAMES:
            known = _OTHER_TYPES.get(type_id)
            raise FormatError(f"tensor {name!r}: unsupported tensor type id {type_id}"
                              f"{f' ({known})' if known else ''} at offset {type_at}; supported: "
                              + ", ".join(f"{n} ({i})" for n, i in gguf_quants.TYPE_IDS.items()))
        rel = r.u64(f"data offset of tensor {name!r}")
        return name, _TYPE_NAMES[type_id], tuple(reversed(dims)), rel, at

    def _check_tensor(self, name, qtype, shape, rel, at, size) -> TensorInfo:
        if name in self.tensors:
            raise FormatError(f"tensor {name!r} (info at offset {at}) appears twice")
        block, block_bytes = gguf_quants.BLOCKS[qtype]
        cols = shape[-1] if shape else 1
        if cols % block:
            raise FormatError(f"tensor {name!r} (info at offset {at}): {qtype} rows hold whole blocks of "
                              f"{block} values, but its innermost dimension is {cols}")
        # Python integers cannot overflow; compare against the file before anything is allocated
        nbytes = math.prod(shape) // block * block_bytes
        if rel % self.alignment:
            raise FormatError(f"tensor {name!r} (info at offset {at}): data offset {rel} is not a multiple "
                              f"of the alignment {self.alignment}")
        start = self.data_offset + rel
        if start + nbytes > size:
            raise FormatError(f"tensor {name!r} (info at offset {at}): {qtype} x {list(shape)} needs bytes "
                              f"{start}..{start + nbytes}, past the end of the {size}-byte file")
        return TensorInfo(name, qtype, shape, start, nbytes)

    def _check_overlaps(self) -> None:
        end, last = self.data_offset, None
        for info in sorted(self.tensors.values(), key=lambda t: (t.offset, t.nbytes)):
            if info.offset < end:
                raise FormatError(f"tensor {info.name!r} at offset {info.offset} overlaps tensor {last!r}, "
                                  f"which ends at offset {end}")
            end, last = info.offset + info.nbytes, info.name

    # --- access -----------------------------------------------------------------------------------

    def value_type(self, key: str) -> tuple[int, int | None]:
        """(GGUF value type, element type of an array or None) of metadata `key`."""
        return self._types[key][:2]

    def info(self, name: str) -> TensorInfo:
        if name not in self.tensors:
            raise FormatError(f"{self.path}: no tensor {name!r}")
        return self.tensors[name]

    def raw(self, name: str) -> np.ndarray:
        """The stored bytes of tensor `name`, uint8 [*shape[:-1], row bytes], a read-only view."""
        info = self.info(name)
        if self._map is None:
            raise FormatError(f"{self.path}: the file is closed")
        byte_shape = info.shape[:-1] + (gguf_quants.row_nbytes(info.qtype, info.shape[-1]),) if info.shape \
            else (info.nbytes,)
        if info.nbytes == 0:
            return np.empty(byte_shape, dtype=np.uint8)
        data = np.frombuffer(self._map, dtype=np.uint8, count=info.nbytes, offset=info.offset)
        return data.reshape(byte_shape)

    def array(self, name: str) -> np.ndarray:
        """Tensor `name` dequantized to a new float32 array of its shape."""
        info = self.info(name)
        try:
            return gguf_quants.dequantize(self.raw(name), info.qtype, info.shape)
        except LoomError as exc:
            raise FormatError(f"{self.path}: tensor {name!r}: {exc}") from None

    def weight(self, name: str) -> np.ndarray | BlockQuantized:
        """F32 tensors as read-only float32 views of the file; other 2-D tensors as BlockQuantized
        (kept in their stored form); other shapes dequantized to float32."""
        info = self.info(name)
        if info.qtype == "F32":
            return self.raw(name).view(np.float32).reshape(info.shape)
        if len(info.shape) == 2:
            return BlockQuantized(self.raw(name), info.qtype, info.shape)
        return self.array(name)

    def close(self) -> None:
        m, self._map = getattr(self, "_map", None), None
        if m is not None:
            try:
                m.close()
            except BufferError:     # arrays handed out still view the map; it closes with them
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read(path: str | os.PathLike[str]) -> GGUFFile:
    """Open and validate a GGUF file (see GGUFFile)."""
    return GGUFFile(path)

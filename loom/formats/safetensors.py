"""safetensors read and write, validated against malformed and hostile files.

Layout: an 8-byte little-endian header length N, N bytes of UTF-8 JSON
{"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ..., "__metadata__": {str: str}},
then the data buffer, the tensors packed back to back with no gaps or overlaps. Reads are
memory-mapped: `load` returns read-only arrays viewing the file. Every check raises FormatError
naming the tensor and the byte offset; nothing is read outside the file and nothing larger than the
file is allocated.

Sub-byte types (ml_dtypes int4, uint4, int2, uint2, float4_e2m1fn arrays) are stored packed as U8
(loom.dtypes.pack: little-endian bit order) and listed in __metadata__["loom.packed"] as JSON
{name: {"dtype": loom type, "shape": [...]}}; reading unpacks them (a copy, not a view), and
readers without Loom see plain U8 bytes.
"""
from __future__ import annotations

import json
import math
import mmap
import os
import struct

import numpy as np
from numpy.typing import DTypeLike

from .. import atomic, dtypes
from ..errors import FormatError, LoomError

MAX_HEADER = 100 * 1024 * 1024  # bytes; the reference implementation's limit

# safetensors name -> element dtype, from loom.dtypes' table (its byte-or-wider types), plus BOOL
DTYPES: dict[str, np.dtype] = {
    **{row.safetensors: row.numpy.newbyteorder("<") for row in dtypes.TABLE.values() if not row.packed},
    "BOOL": np.dtype("bool"),
}
_NAMES = {dt: name for name, dt in DTYPES.items()}
PACKED_KEY = "loom.packed"
# numpy dtype -> Loom type for the types stored packed (ternary and binary share int8 with int8, so
# they are written packed only through the model file, which records their type itself)
_PACKED = {row.numpy: row.name for row in dtypes.TABLE.values() if row.packed and row.kind not in ("ternary", "binary")}


def dtype_name(dtype: DTypeLike) -> str:
    dt = np.dtype(dtype).newbyteorder("<") if np.dtype(dtype).byteorder == ">" else np.dtype(dtype)
    for name, known in DTYPES.items():
        if known == dt:
            return name
    raise FormatError(f"dtype {dtype} has no safetensors equivalent")


# --- writing ---------------------------------------------------------------------------------------

def dumps(tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> bytes:
    """The safetensors bytes of `tensors` (written in the given order) with optional string metadata."""
    header: dict = {}
    metadata = dict(metadata or {})
    bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise FormatError(f"metadata values must be strings; offending keys: {bad}")
    if PACKED_KEY in metadata:
        raise FormatError(f"metadata key {PACKED_KEY!r} is reserved for Loom's packed sub-byte tensors")
    packed = {}
    offset, blobs = 0, []
    for name, array in tensors.items():
        if not isinstance(name, str) or name == "__metadata__":
            raise FormatError(f"invalid tensor name {name!r}")
        a = np.asarray(array)
        a = a if a.flags.c_contiguous else a.copy(order="C")   # (ascontiguousarray would make 0-d arrays 1-d)
        if a.dtype in _PACKED:
            packed[name] = {"dtype": _PACKED[a.dtype], "shape": list(a.shape)}
            blob = dtypes.pack(a, _PACKED[a.dtype]).tobytes()
            header[name] = {"dtype": "U8", "shape": [len(blob)], "data_offsets": [offset, offset + len(blob)]}
            offset += len(blob)
            blobs.append(blob)
            continue
        blob = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": dtype_name(a.dtype), "shape": list(a.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    if packed:
        metadata[PACKED_KEY] = json.dumps(packed, separators=(",", ":"))
    if metadata:
        header = {"__metadata__": metadata, **header}
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-(8 + len(text)) % 8)   # data starts 8-byte aligned, as the reference writer does
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def save(path: str | os.PathLike[str], tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """Write atomically: a temp file in the same folder, fsync, then rename over `path`."""
    atomic.write_bytes(path, dumps(tensors, metadata))


# --- reading ---------------------------------------------------------------------------------------

def parse_header(buf: bytes | memoryview | mmap.mmap, size: int) -> tuple[dict, dict, int]:
    """Validate the header of a safetensors buffer of `size` bytes.
    Returns (entries in file order, metadata, start of the data buffer)."""
    if size < 8:
        raise FormatError(f"file is {size} bytes, too short for the 8-byte header length")
    (n,) = struct.unpack("<Q", bytes(buf[:8]))
    if n > MAX_HEADER:
        raise FormatError(f"header length {n} at offset 0 exceeds the {MAX_HEADER}-byte limit")
    if 8 + n > size:
        raise FormatError(f"header length {n} at offset 0 runs past the end of the {size}-byte file")
    try:
        text = bytes(buf[8:8 + n]).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FormatError(f"header is not valid UTF-8 (byte {8 + exc.start})") from None

    def no_duplicates(pairs):
        seen = {}
        for k, v in pairs:
            if k in seen:
                raise FormatError(f"header names {k!r} twice")
            seen[k] = v
        return seen
    try:
        header = json.loads(text, object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as exc:
        raise FormatError(f"header is not valid JSON: {exc.msg} at offset {8 + exc.pos}") from None
    if not isinstance(header, dict):
        raise FormatError("header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise FormatError("__metadata__ must be an object of strings")
    start, data_size = 8 + n, size - 8 - n
    entries, spans = {}, []
    for name, info in header.items():
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise FormatError(f"tensor {name!r}: expected exactly dtype, shape and data_offsets")
        dt = DTYPES.get(info["dtype"]) if isinstance(info["dtype"], str) else None
        if dt is None:
            raise FormatError(f"tensor {name!r}: unknown dtype {info['dtype']!r}")
        if dt.names is not None:        # an ml_dtypes type where ml_dtypes is missing (loom.dtypes)
            dtypes.require(next(r.name for r in dtypes.TABLE.values() if r.safetensors == info["dtype"]),
                           f"tensor {name!r} ({info['dtype']})")
        shape, offs = info["shape"], info["data_offsets"]
        if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
            raise FormatError(f"tensor {name!r}: shape must be a list of non-negative integers, got {shape!r}")
        if not isinstance(offs, list) or len(offs) != 2 or not all(_is_count(o) for o in offs) or offs[0] > offs[1]:
            raise FormatError(f"tensor {name!r}: data_offsets must be [begin, end] with 0 <= begin <= end, got {offs!r}")
        if offs[1] > data_size:
            raise FormatError(f"tensor {name!r}: data ends at offset {start + offs[1]}, past the end of the "
                              f"{size}-byte file")
        expected = math.prod(shape) * dt.itemsize
        if offs[1] - offs[0] != expected:
            raise FormatError(f"tensor {name!r}: {info['dtype']} x {shape} needs {expected} bytes, "
                              f"data_offsets give {offs[1] - offs[0]} (at offset {start + offs[0]})")
        entries[name] = (dt, tuple(shape), offs[0], offs[1])
        spans.append((offs[0], offs[1], name))
    spans.sort()
    cursor = 0
    for begin, end, name in spans:
        if begin != cursor:
            what = "overlaps the previous tensor" if begin < cursor else "leaves a gap before it"
            raise FormatError(f"tensor {name!r} at offset {start + begin} {what}")
        cursor = end
    if cursor != data_size:
        raise FormatError(f"{data_size - cursor} bytes after the last tensor (offset {start + cursor}) belong to no tensor")
    return entries, metadata, start


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def loads(data: bytes) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Tensors (read-only views of `data`) and metadata from safetensors bytes."""
    entries, metadata, start = parse_header(memoryview(data), len(data))
    return _unpack({name: _view(data, start, *e) for name, e in entries.items()}, metadata)


def load(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Memory-map a file: returns read-only arrays backed by the file, and the metadata."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            raise FormatError(f"{os.fspath(path)}: empty file")
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        entries, metadata, start = parse_header(mm, size)
        return _unpack({name: _view(mm, start, *e) for name, e in entries.items()}, metadata)
    except FormatError as exc:
        mm.close()
        raise FormatError(f"{os.fspath(path)}: {exc}") from None


def _unpack(tensors: dict, metadata: dict) -> tuple[dict, dict]:
    """Unpack the sub-byte tensors listed under PACKED_KEY (which is removed from the metadata)."""
    if PACKED_KEY not in metadata:
        return tensors, metadata
    metadata = dict(metadata)
    try:
        listed = json.loads(metadata.pop(PACKED_KEY))
    except json.JSONDecodeError as exc:
        raise FormatError(f"__metadata__[{PACKED_KEY!r}] is not valid JSON ({exc.msg})") from None
    if not isinstance(listed, dict):
        raise FormatError(f"__metadata__[{PACKED_KEY!r}] must be an object of name -> {{dtype, shape}}")
    for name, info in listed.items():
        if name not in tensors:
            raise FormatError(f"packed tensor {name!r} is listed in the metadata but not in the file")
        raw = tensors[name]
        if not isinstance(info, dict) or info.get("dtype") not in _PACKED.values():
            raise FormatError(f"packed tensor {name!r}: unknown packed type {info!r}")
        if raw.dtype != np.uint8 or raw.ndim != 1:
            raise FormatError(f"packed tensor {name!r}: stored as {raw.dtype}{list(raw.shape)}, expected 1-D U8")
        shape = info.get("shape")
        if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
            raise FormatError(f"packed tensor {name!r}: shape must be a list of non-negative integers, got {shape!r}")
        try:
            tensors[name] = dtypes.unpack(raw, info["dtype"], shape)
        except LoomError as exc:
            raise FormatError(f"packed tensor {name!r}: {exc}") from None
    return tensors, metadata


def _view(buf, start, dt, shape, begin, end):
    if begin == end:                     # an empty tensor may sit at the very end of the buffer
        return np.zeros(shape, dtype=dt)
    return np.frombuffer(buf, dtype=dt, count=math.prod(shape), offset=start + begin).reshape(shape)

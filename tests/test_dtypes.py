"""The type table and the bit packing of loom/dtypes.py (layout documented in docs/dtypes.md)."""
import math

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import loom
from loom import dtypes
from loom.formats import safetensors

NAMES = ["float64", "float32", "float16", "bfloat16", "fp8_e4m3", "fp8_e5m2", "fp4_e2m1",
         "int64", "int32", "int16", "int8", "int4", "int2",
         "uint64", "uint32", "uint16", "uint8", "uint4", "uint2", "ternary", "binary"]
SUB_BYTE = ["fp4_e2m1", "int4", "int2", "uint4", "uint2", "ternary", "binary"]
RNG = np.random.default_rng(20240611)


# --- the table -----------------------------------------------------------------------------------

def test_table_has_the_21_types_with_stable_enums():
    assert list(dtypes.TABLE) == NAMES
    enums = {n: r.c_enum for n, r in dtypes.TABLE.items()}
    assert len(set(enums.values())) == 21
    # the values loom.h already published
    assert (enums["float64"], enums["float32"], enums["int64"], enums["int32"]) == (0, 1, 7, 8)
    assert enums == dict(zip(NAMES, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20]))
    assert all(dtypes.BY_C_ENUM[r.c_enum] is r for r in dtypes.TABLE.values())
    assert dtypes.COMPUTE == ("float32", "float64")
    assert dtypes.INPUT == ("float32", "float64", "int64", "int32")


def test_rows_agree_with_numpy_ml_dtypes_and_safetensors():
    bits = {"fp4_e2m1": 4, "int4": 4, "uint4": 4, "int2": 2, "uint2": 2, "ternary": 2, "binary": 1}
    for name, row in dtypes.TABLE.items():
        assert row.bits == bits.get(name, row.numpy.itemsize * 8), name
        assert row.packed == (name in SUB_BYTE)
        if row.packed:
            assert row.safetensors == "U8" and row.storage == np.uint8
        else:        # the safetensors reader maps the name back to the same in-memory dtype
            assert safetensors.DTYPES[row.safetensors] == row.numpy, name
        if row.kind == "float":
            assert row.fmax == float(ml_dtypes.finfo(row.numpy).max) and row.qmin is None
        elif row.kind in ("int", "uint"):
            info = ml_dtypes.iinfo(row.numpy)
            assert (row.qmin, row.qmax) == (int(info.min), int(info.max)), name
    assert dtypes.TABLE["fp8_e4m3"].numpy == ml_dtypes.float8_e4m3fn
    assert dtypes.TABLE["int4"].numpy == ml_dtypes.int4 and dtypes.TABLE["uint2"].numpy == ml_dtypes.uint2
    assert dtypes.TABLE["ternary"].numpy == np.int8 and dtypes.TABLE["ternary"].kind == "ternary"
    assert (dtypes.TABLE["int64"].qmax, dtypes.TABLE["uint64"].qmax) == (2**63 - 1, 2**64 - 1)


def test_get_and_of_array():
    assert dtypes.get("bfloat16").numpy == ml_dtypes.bfloat16
    with pytest.raises(loom.ConfigError, match="int9"):
        dtypes.get("int9")
    with pytest.raises(loom.ConfigError, match="layers.0.dtype"):
        dtypes.get("float8", "layers.0.dtype")
    assert dtypes.of_array(np.zeros(2, np.int8)) == "int8"          # never ternary/binary
    assert dtypes.of_array(np.zeros(2, ml_dtypes.int4)) == "int4"
    assert dtypes.of_array(np.zeros(2, np.float16)) == "float16"
    with pytest.raises(loom.ConfigError, match="complex"):
        dtypes.of_array(np.zeros(2, np.complex64))


# --- packing -------------------------------------------------------------------------------------

def random_values(name, shape):
    """Values over the type's whole range; for floats every bit pattern (NaN and inf included)."""
    row = dtypes.TABLE[name]
    if row.kind == "float":
        if row.bits == 4:
            return RNG.integers(0, 16, shape).astype(np.uint8).view(row.numpy)
        k = row.numpy.itemsize
        info = np.iinfo(np.dtype(f"u{k}"))
        return RNG.integers(0, int(info.max), shape, dtype=np.dtype(f"u{k}"), endpoint=True).view(row.numpy)
    if row.kind == "binary":
        return RNG.choice(np.array([-1, 1], np.int8), shape)
    if row.kind == "ternary":
        return RNG.choice(np.array([-1, 0, 1], np.int8), shape)
    container = np.dtype(np.int64 if row.kind == "int" else np.uint64)
    return RNG.integers(row.qmin, row.qmax, shape, dtype=container, endpoint=True).astype(row.numpy)


def same_bits(a, b):
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return np.array_equal(a.view(f"u{a.dtype.itemsize}"), b.view(f"u{b.dtype.itemsize}"))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(0,), (1,), (7,), (3, 5), (2, 3, 9), (64,)])
def test_pack_unpack_round_trip(name, shape):
    v = random_values(name, shape)
    p = dtypes.pack(v, name)
    n = math.prod(shape)
    assert p.dtype == np.uint8 and p.ndim == 1
    assert p.size == dtypes.packed_size(n, name) == math.ceil(n * dtypes.TABLE[name].bits / 8)
    back = dtypes.unpack(p, name, shape)
    assert back.dtype == dtypes.TABLE[name].numpy and same_bits(back, v), name
    assert np.array_equal(dtypes.pack(back, name), p)
    assert same_bits(dtypes.unpack(p.tobytes(), name, shape), v)       # bytes are accepted too


@settings(max_examples=150, deadline=None)
@given(name=st.sampled_from(SUB_BYTE), data=st.data())
def test_pack_round_trip_property(name, data):
    row = dtypes.TABLE[name]
    if row.kind == "float":
        pool = sorted({float(c) for c in np.arange(16, dtype=np.uint8).view(row.numpy).astype(np.float64)})
    elif row.kind == "binary":
        pool = [-1, 1]
    else:
        pool = list(range(row.qmin, row.qmax + 1))
    vals = data.draw(st.lists(st.sampled_from(pool), max_size=40))
    p = dtypes.pack(np.array(vals, np.float64), name)         # plain float values pack when exact
    back = dtypes.unpack(p, name, len(vals))
    assert back.astype(np.float64).tolist() == [float(v) for v in vals]


# Golden bytes: element i at bits (i % per_byte) * bits of byte i // per_byte, LSB first.
GOLDEN = [
    ("int4", [1, -1, 7, -8, 3], [0xF1, 0x87, 0x03]),              # two's complement nibbles
    ("uint4", [15, 0, 9], [0x0F, 0x09]),
    ("int2", [1, -1, -2, 0, 1], [0b00_10_11_01, 0b01]),
    ("uint2", [1, 2, 3, 0, 3], [0x39, 0x03]),                       # 1 | 2<<2 | 3<<4 | 0<<6
    ("ternary", [1, -1, 0, 1, -1], [0x4D, 0x03]),                   # 01, 11, 00, 01 | 11
    ("binary", [1, -1, -1, 1, 1, 1, -1, 1, -1, 1], [0xB9, 0x02]),    # bit 1 = +1
    ("fp4_e2m1", [0.5, -6.0, 1.5, 0.0, -0.5], [0xF1, 0x03, 0x09]),  # 0b0001, 0b1111, 0b0011, 0, 0b1001
    ("int16", [1, -2], [0x01, 0x00, 0xFE, 0xFF]),                   # wide types: little-endian bytes
    ("bfloat16", [1.0, -2.0], [0x80, 0x3F, 0x00, 0xC0]),
    ("fp8_e4m3", [1.0, -448.0], [0x38, 0xFE]),
    ("uint32", [0x01020304], [4, 3, 2, 1]),
]


@pytest.mark.parametrize("name,values,expected", GOLDEN, ids=[g[0] for g in GOLDEN])
def test_golden_bit_order(name, values, expected):
    v = np.array(values, dtype=dtypes.TABLE[name].numpy)
    assert dtypes.pack(v, name).tolist() == expected
    back = dtypes.unpack(bytes(expected), name, len(values))
    assert back.astype(np.float64).tolist() == [float(x) for x in values]


@pytest.mark.parametrize("name", NAMES)
def test_unpack_rejects_wrong_lengths(name):
    p = dtypes.pack(random_values(name, (9,)), name)
    for bad in (p[:-1], np.concatenate([p, p[:1]]), p[:0]):
        with pytest.raises(loom.FormatError, match=f"needs {p.size} packed bytes, got {bad.size}"):
            dtypes.unpack(bad, name, (9,))
    with pytest.raises(loom.FormatError, match="uint8"):
        dtypes.unpack(p.astype(np.int16), name, (9,))


def test_unpack_rejects_invalid_ternary_code_and_dirty_padding():
    with pytest.raises(loom.FormatError, match="element 5 .*0b10"):
        dtypes.unpack(bytes([0b01_00_11_01, 0b00_00_10_00]), "ternary", 6)
    with pytest.raises(loom.FormatError, match="padding"):
        dtypes.unpack(bytes([0x00, 0xF0]), "int4", 3)       # element 3 would sit in the padding
    with pytest.raises(loom.FormatError, match="padding"):
        dtypes.unpack(bytes([0b10]), "binary", 1)


@pytest.mark.parametrize("name,bad", [("int4", 8), ("int4", -9), ("uint2", 4), ("uint2", -1),
                                      ("ternary", 2), ("binary", 0), ("int2", 0.5), ("fp4_e2m1", 2.5),
                                      ("fp4_e2m1", float("nan")), ("int8", 128), ("uint64", -1),
                                      ("float32", 0.1), ("int64", 2.0**63)])
def test_pack_never_rounds_or_wraps(name, bad):
    values = np.array([0, 1, bad, 1], dtype=np.float64 if isinstance(bad, float) else np.int64)
    if name == "binary":
        values[[0, 1, 3]] = 1
    with pytest.raises(loom.ConfigError, match="element 2"):
        dtypes.pack(values, name)


def test_pack_of_uint64_max_as_int64_is_refused():
    with pytest.raises(loom.ConfigError, match="element 0"):
        dtypes.pack(np.array([2**64 - 1], np.uint64), "int64")
    assert dtypes.pack(np.array([2**64 - 1], np.uint64), "uint64").tolist() == [255] * 8


def test_the_tables_ml_dtypes_constants_are_ml_dtypes_own():
    """The table writes out finfo/iinfo of ml_dtypes' types (it is built without ml_dtypes too)."""
    import ml_dtypes
    for name, attr in (("bfloat16", "bfloat16"), ("fp8_e4m3", "float8_e4m3fn"), ("fp8_e5m2", "float8_e5m2"),
                       ("fp4_e2m1", "float4_e2m1fn")):
        info, row = ml_dtypes.finfo(getattr(ml_dtypes, attr)), dtypes.TABLE[name]
        assert (row.bits, row.fmax, row.nmant, row.minexp) == (info.bits, float(info.max), info.nmant, info.minexp)
        assert row.numpy == np.dtype(getattr(ml_dtypes, attr))
    for name in ("int4", "int2", "uint4", "uint2"):
        info, row = ml_dtypes.iinfo(getattr(ml_dtypes, name)), dtypes.TABLE[name]
        assert (row.qmin, row.qmax, row.numpy) == (info.min, info.max, np.dtype(getattr(ml_dtypes, name)))


def test_without_ml_dtypes_loom_runs_and_its_types_say_what_is_missing(tmp_path):
    """As under Pyodide: ml_dtypes unimportable. Loom imports, trains a float32 network, reads and
    writes float32 model files; bfloat16 values (pack, a BF16 safetensors tensor) are a BackendError
    naming ml_dtypes."""
    import subprocess
    import sys

    from loom.formats import safetensors
    bf16 = tmp_path / "bf16.safetensors"
    safetensors.save(bf16, {"w": np.ones(3, dtypes.TABLE["bfloat16"].numpy)})
    code = f"""
import sys
sys.modules["ml_dtypes"] = None                 # import ml_dtypes raises ImportError
import numpy as np, loom
from loom import dtypes
from loom.errors import BackendError
from loom.formats import safetensors
net = loom.Network.from_config({{"loom": 1, "input": {{"shape": [4]}}, "layers": [{{"type": "dense", "units": 2}}]}})
loom.train(net, np.ones((8, 4), np.float32), np.zeros(8, np.int64), epochs=1, verbose=False)
loom.from_bytes(net.to_bytes())
print(sorted(dtypes.MISSING))
for call in (lambda: dtypes.pack([1.0], "bfloat16"), lambda: safetensors.load({str(bf16)!r}),
             lambda: net.quantize("bfloat16"), lambda: net.quantize("int4"), lambda: net.quantize("fp8_e4m3")):
    try:
        call()
        print("no error")
    except BackendError as exc:
        print("error:", exc)
net.save({str(tmp_path / "float.loom")!r})
from loom.cli.main import main
print("convert exit", main(["convert", {str(tmp_path / "float.loom")!r}, {str(tmp_path / "q.loom")!r},
                            "--dtype", "bfloat16"]))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == str(sorted(["bfloat16", "fp8_e4m3", "fp8_e5m2", "fp4_e2m1", "int4", "int2", "uint4", "uint2"]))
    assert lines[1].startswith("error: pack: bfloat16 values need the ml_dtypes package")
    assert lines[2].startswith("error: tensor 'w' (BF16): bfloat16 values need the ml_dtypes package")
    for line, name in zip(lines[3:6], ("bfloat16", "int4", "fp8_e4m3")):
        assert line.startswith("error: ") and f"{name} values need the ml_dtypes package" in line, line
    assert lines[6] == "convert exit 3" and not (tmp_path / "q.loom").exists()
    assert "bfloat16 values need the ml_dtypes package" in out.stderr

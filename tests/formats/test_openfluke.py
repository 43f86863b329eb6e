"""openfluke welvet import (loom/formats/openfluke.py): models built by welvet itself, saved as JSON wire
and .entity, converted, and compared with welvet's own outputs; hand-written golden files; and
malformed, truncated and unsupported input.

welvet (PyPI, 0.80, a Go shared library behind ctypes) is fetched at test time into the test-data
cache (tests/datacache.py) and runs in a subprocess: a Go panic aborts its whole process. Without the
package index, or on a platform welvet ships no library for, the comparison tests skip and say why.
"""
from __future__ import annotations

import base64
import json
import os
import platform
import struct
import subprocess
import sys
import zlib

import datacache
import numpy as np
import pytest

import loom
from loom.errors import FormatError
from loom.formats import openfluke

WELVET = "welvet==0.80.0"
# sha256 of the members the tests load (the Linux x86-64 library; other platforms are not pinned)
PINNED = {"welvet/__init__.py": "4beb61b65fb0dce54401527c7edabba0670ffee88fac5e13b05184f43965ea15",
          "welvet/utils.py": "5f1cb8d28087752f36c2e38bc44d9db6d5339aeedc38152fcaa7714d009a4741",
          "welvet/linux_amd64/welvet.so": "0f6c07067d5244040cdad5384b193530636075a8fa1de1857219f78c3fe133ba"}
RTOL = 1e-5
# kmeans outputs softmax(-distance / temperature 0.3): float32 distance sums in welvet's order and
# Loom's differ by an ulp or two, which the 1/temperature scale amplifies; welvet draws fresh random
# weights each run, so the error varies from run to run (a clean-clone CI run once saw 1.16e-5).
RTOL_KMEANS = 5e-5
DTYPES = list(openfluke.BITS)


def _library_member():
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine().lower())
    if sys.platform.startswith("linux") and arch:
        return f"welvet/linux_{arch}/welvet.so"
    if sys.platform == "darwin" and arch:
        return f"welvet/macos_{arch}/welvet.dylib"
    pytest.skip(f"welvet ships no library this test loads for {sys.platform} {platform.machine()}")


@pytest.fixture(scope="module")
def welvet_site():
    """A folder holding the welvet package (its Python files and this platform's library)."""
    members = ["welvet/__init__.py", "welvet/utils.py", _library_member()]
    paths = [datacache.fetch_package_file(WELVET, m, PINNED.get(m)) for m in members]
    return str(paths[0].parents[1])


# --- the welvet side: build, save twice, reload each file, run forward ------------------------------

RUNNER = r'''
import json, os, sys
import welvet
jobs = json.load(open(sys.argv[1]))
out = {}
for job in jobs:
    net = welvet.Network.deserialize(json.dumps(job["spec"]))   # no weights: welvet draws them
    net.serialize()              # welvet's first save after quantizing records a stale scale
    wire = net.serialize()
    entity = net.serialize_entity()
    paths = {"wire": os.path.join(job["dir"], job["name"] + ".json"),
             "entity": os.path.join(job["dir"], job["name"] + ".entity")}
    open(paths["wire"], "w").write(wire)
    open(paths["entity"], "wb").write(entity)
    res = {"paths": paths}
    for kind, again in (("wire", welvet.Network.deserialize(wire)),
                        ("entity", welvet.Network.deserialize_entity(entity))):
        res[kind] = [again.forward_polymorphic(x["data"], x["shape"]) for x in job["inputs"]]
    out[job["name"]] = res
json.dump(out, open(sys.argv[2], "w"))
'''


def L(**keys):
    return {"activation": "Linear", "dtype": "float32", **keys}


def grid(*layers, **dims):
    spec = {"id": "test", "depth": 1, "rows": 1, "cols": 1, "layers_per_cell": len(layers), "layers": []}
    spec.update(dims)
    for i, layer in enumerate(layers):
        spec["layers"].append({"z": 0, "y": 0, "x": 0, "l": i, **layer})
    return spec


def Dn(i, o, act="Linear", **keys):
    return L(type="Dense", input_height=i, output_height=o, activation=act, **keys)


RES = {"type": "Residual", "activation": "Linear", "dtype": "float32"}


def seq(*layers):
    return L(type="Sequential", sequential_layers=list(layers))


def par(mode, *layers):
    return L(type="Parallel", combine_mode=mode, parallel_branches=list(layers))


# one layer of every weighted type: (wire layer, per-sample input shape, batch, token vocabulary)
def one_layer(kind, dtype="float32", act="Linear"):
    k = dict(dtype=dtype, activation=act)
    return {
        "dense": (L(type="Dense", input_height=10, output_height=6, **k), (10,), 3, None),
        "swiglu": (L(type="SwiGLU", input_height=10, output_height=12, **k), (10,), 3, None),
        "rmsnorm": (L(type="RMSNorm", input_height=10, **k), (10,), 3, None),
        "layernorm": (L(type="LayerNorm", input_height=10, **k), (10,), 3, None),
        "cnn1": (L(type="CNN1", input_channels=2, input_height=5, filters=3, kernel_size=3, stride=1, padding=1,
                   output_height=5, **k), (2, 5), 3, None),
        "cnn2": (L(type="CNN2", input_channels=2, input_height=5, input_width=5, filters=3, kernel_size=3, stride=2,
                   padding=1, output_height=3, output_width=3, **k), (2, 5, 5), 3, None),
        "cnn3": (L(type="CNN3", input_channels=2, input_depth=3, input_height=3, input_width=3, filters=2,
                   kernel_size=2, stride=1, output_depth=2, output_height=2, output_width=2, **k), (2, 3, 3, 3), 3, None),
        "rnn": (L(type="RNN", input_height=5, output_height=4, seq_length=3, **k), (3, 5), 3, None),
        "lstm": (L(type="LSTM", input_height=5, output_height=4, seq_length=3, **k), (3, 5), 3, None),
        "embedding": (L(type="Embedding", vocab_size=12, embedding_dim=5, seq_length=4, **k), (4,), 3, 12),
        # welvet's kmeans and attention treat the whole batch as one sample / one sequence: batch 1
        "kmeans": (L(type="KMeans", input_height=10, num_clusters=4, kmeans_temperature=0.3, **k), (10,), 1, None),
        "kmeans_features": (L(type="KMeans", input_height=10, num_clusters=4, output_mode="features", **k), (10,), 1, None),
        "mha": (L(type="MultiHeadAttention", d_model=8, num_heads=2, num_kv_heads=1, head_dim=4, seq_length=5, **k),
                (5, 8), 1, None),
    }[kind]


KINDS = ["dense", "swiglu", "rmsnorm", "layernorm", "cnn1", "cnn2", "cnn3", "rnn", "lstm", "embedding",
         "kmeans", "kmeans_features", "mha"]
SOFTMAXES = [("Standard", {}), ("Temperature", {"temperature": 0.5}), ("Grid", {"softmax_rows": 2, "softmax_cols": 3}),
             ("Grid", {"softmax_rows": 3, "softmax_cols": 4}), ("Grid", {}),
             ("Hierarchical", {"softmax_rows": 2, "softmax_cols": 3}), ("Masked", {}), ("Sparse", {}),
             ("Entmax", {}), ("Entmax", {"entmax_alpha": 1.2}), ("Entmax", {"entmax_alpha": 1.0}),
             ("Entmax", {"entmax_alpha": 2.5}), ("Adaptive", {}), ("Mixture", {"temperature": 2.0})]


def _cases():
    """name -> (wire spec without weights, [(per-sample shape, batch, vocabulary, scale, offset)] per call)."""
    cases = {}
    for kind in KINDS:
        for dtype in DTYPES:
            layer, shape, batch, vocab = one_layer(kind, dtype)
            cases[f"{kind}-{dtype}"] = (grid(layer), [(shape, batch, vocab, 1.0, 0.0)])
        layer, shape, batch, vocab = one_layer(kind, act="Tanh")
        cases[f"{kind}-tanh"] = (grid(layer), [(shape, batch, vocab, 1.0, 0.0)])
    for i, (variant, keys) in enumerate(SOFTMAXES):
        cases[f"softmax-{variant}-{i}"] = (grid(Dn(5, 6), L(type="Softmax", input_height=6, softmax_type=variant, **keys)),
                                           [((5,), 3, None, 3.0, 0.0)])
    cases["mlp-activations"] = (grid(Dn(12, 16, "ReLU"), Dn(16, 8, "Silu"), Dn(8, 7, "GELU"), Dn(7, 6, "Tanh"),
                                     Dn(6, 5, "Sigmoid"), Dn(5, 4, "LeakyReLU")), [((12,), 3, None, 2.0, 0.0)])
    cases["dense-cancellation"] = (grid(Dn(40, 6)), [((40,), 4, None, 1e4, 0.0)])
    for dtype, keys in (("float64", {}), ("int8", {}), ("float32", {"tile_size": 16}),
                        ("float32", {"tile_size": 4, "use_tiling": True}), ("int4", {"tile_size": 16, "use_tiling": True})):
        tag = "-".join(f"{k}{v}" for k, v in keys.items())
        cases[f"dense-bits-{dtype}-{tag}"] = (grid(Dn(40, 6, dtype=dtype, **keys)), [((40,), 4, None, 1e4, 0.0)])
    cases["layernorm-offset"] = (grid(L(type="LayerNorm", input_height=16)), [((16,), 3, None, 1.0, 300.0)])
    cases["mha-rope-base"] = (grid(L(type="MultiHeadAttention", d_model=8, num_heads=2, head_dim=4, seq_length=6,
                                     rope_freq_base=500.0)), [((6, 8), 1, None, 1.0, 0.0)] * 3)
    cases["mha-batch"] = (grid(one_layer("mha")[0]), [((5, 8), 2, None, 1.0, 0.0)])
    cases["embedding-mha"] = (grid(L(type="Embedding", vocab_size=12, embedding_dim=8, seq_length=4),
                                   L(type="MultiHeadAttention", d_model=8, num_heads=2, head_dim=4, seq_length=4)),
                              [((4,), 1, 12, 1.0, 0.0)] * 2)
    cases["rnn-dense"] = (grid(one_layer("rnn")[0], Dn(12, 3, "ReLU")), [((3, 5), 3, None, 1.0, 0.0)])
    cases["cnn-dense"] = (grid(one_layer("cnn2")[0], Dn(27, 4)), [((2, 5, 5), 3, None, 1.0, 0.0)])
    cases["grid-2x2"] = (grid(Dn(6, 5, "ReLU", y=0, x=0, l=0), Dn(5, 4, y=0, x=1, l=0), Dn(4, 4, "Tanh", y=1, x=0, l=0),
                              Dn(4, 3, y=1, x=1, l=0), rows=2, cols=2, layers_per_cell=1), [((6,), 3, None, 1.0, 0.0)])
    cases["disabled"] = (grid(Dn(6, 5), {**Dn(5, 5, "Tanh"), "is_disabled": True}, Dn(5, 3)), [((6,), 3, None, 1.0, 0.0)])
    cases["top-level-residual"] = (grid(Dn(6, 6), RES, Dn(6, 3)), [((6,), 3, None, 1.0, 0.0)])
    cases["sequential-residual"] = (grid(seq(Dn(6, 6, "Tanh"), RES, Dn(6, 4))), [((6,), 3, None, 1.0, 0.0)])
    cases["sequential-residual-sizes-differ"] = (grid(seq(Dn(6, 4, "Tanh"), RES, Dn(4, 4))), [((6,), 3, None, 1.0, 0.0)])
    cases["sequential-residual-first"] = (grid(seq(RES, Dn(6, 4))), [((6,), 3, None, 1.0, 0.0)])
    for mode in ("concat", "add", "avg", "grid_scatter", ""):
        cases[f"parallel-{mode or 'default'}"] = (
            grid(Dn(6, 6), par(mode, Dn(6, 4, "ReLU"), seq(Dn(6, 5), Dn(5, 4, "Tanh")), Dn(6, 4))),
            [((6,), 3, None, 1.0, 0.0)])
    cases["parallel-residual-branch"] = (grid(par("concat", Dn(6, 4), RES)), [((6,), 3, None, 1.0, 0.0)])
    cases["parallel-in-sequential"] = (grid(seq(Dn(6, 6), par("add", Dn(6, 6), Dn(6, 6, "Silu")), RES, Dn(6, 2))),
                                       [((6,), 3, None, 1.0, 0.0)])
    return cases


CASES = _cases()


def _inputs(name, calls):
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    out = []
    for shape, batch, vocab, scale, offset in calls:
        if vocab:
            x = rng.integers(0, vocab, size=(batch, *shape)).astype(np.int64)
        else:
            x = (rng.normal(size=(batch, *shape)) * scale + offset).astype(np.float32)
        out.append(x)
    return out


@pytest.fixture(scope="module")
def welvet_runs(welvet_site, tmp_path_factory):
    """Every case built, saved and run by welvet in one subprocess: name -> (inputs, results)."""
    work = tmp_path_factory.mktemp("welvet")
    inputs = {name: _inputs(name, calls) for name, (_, calls) in CASES.items()}
    jobs = [{"name": name, "spec": spec, "dir": str(work),
             "inputs": [{"data": [float(v) for v in x.ravel()], "shape": list(x.shape)} for x in inputs[name]]}
            for name, (spec, _) in CASES.items()]
    (work / "jobs.json").write_text(json.dumps(jobs))
    (work / "runner.py").write_text(RUNNER)
    env = dict(os.environ, PYTHONPATH=welvet_site)
    proc = subprocess.run([sys.executable, str(work / "runner.py"), str(work / "jobs.json"), str(work / "out.json")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"welvet failed:\n{proc.stderr[-4000:]}"
    results = json.loads((work / "out.json").read_text())
    return {name: (inputs[name], results[name]) for name in CASES}


def _check(welvet_runs, name):
    inputs, res = welvet_runs[name]
    for kind in ("wire", "entity"):
        net = openfluke.load(res["paths"][kind])
        for x, want in zip(inputs, res[kind]):
            want = np.asarray(want, dtype=np.float32)        # welvet prints float32 values
            got = np.asarray(net(x), dtype=np.float32)
            assert got.size == want.size, f"{name} ({kind}): {got.shape} values, welvet gives {want.size}"
            got = got.reshape(-1)
            err = np.max(np.abs(got.astype(np.float64) - want)) / max(np.max(np.abs(want)), 1e-30)
            rtol = RTOL_KMEANS if name.startswith("kmeans") else RTOL
            assert err <= rtol, f"{name} ({kind}): relative error {err:.3g}"
    return net


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_every_layer_type_and_dtype_matches_welvet(welvet_runs, kind, dtype):
    _check(welvet_runs, f"{kind}-{dtype}")


@pytest.mark.parametrize("kind", KINDS)
def test_activation_field_is_applied_where_welvet_applies_it(welvet_runs, kind):
    _check(welvet_runs, f"{kind}-tanh")


MATRIX = {f"{k}-{d}" for k in KINDS for d in DTYPES + ["tanh"]} | {"mha-batch"}


@pytest.mark.parametrize("name", [n for n in CASES if n not in MATRIX])
def test_structures_softmaxes_and_numerics_match_welvet(welvet_runs, name):
    _check(welvet_runs, name)


@pytest.mark.parametrize("name", ["dense-cancellation"] + [n for n in CASES if n.startswith("dense-bits-")])
def test_dense_is_bit_exact_with_float64_blocks(welvet_runs, name):
    """welvet's dense sums in float64 over tiles of tile_size inputs (8 when unset), rounding to
    float32 after each tile; openfluke_dense's accumulate_block reproduces its bits, Loom's exact GEMM
    (dense) does not."""
    (x,), res = welvet_runs[name]
    want = np.asarray(res["wire"][0], np.float32).reshape(x.shape[0], -1)
    cfg, state = openfluke.convert(res["paths"]["wire"])
    assert cfg["layers"][0]["type"] == "openfluke_dense"
    assert cfg["layers"][0]["accumulate_block"] == CASES[name][0]["layers"][0].get("tile_size", 8)
    assert np.array_equal(openfluke.load(res["paths"]["wire"])(x), want)
    if name == "dense-cancellation":
        del cfg["layers"][0]["accumulate_block"]
        cfg["layers"][0]["type"] = "dense"
        plain = loom.Network.from_config(cfg)
        plain.load_state_dict(state)
        assert not np.array_equal(plain(x), want)


def test_welvet_attention_runs_a_batch_as_one_sequence_and_so_does_the_converted_net(welvet_runs):
    """welvet's KV cache runs on across the samples of a batch (sample 1 attends to sample 0, at
    positions T..2T-1); the converted attention is openfluke_attention (span "batch"), which does the
    same. With the core multi_head_attention (per sample) the second sample differs."""
    (x,), res = welvet_runs["mha-batch"]
    want = np.asarray(res["wire"][0], np.float32).reshape(x.shape)
    net = openfluke.load(res["paths"]["wire"])
    assert [layer.get("span") for layer in net.config["layers"] if layer["type"] == "openfluke_attention"] == ["batch"]
    y = net(x)
    assert np.max(np.abs(y - want)) <= RTOL * np.max(np.abs(want))
    cfg = net.config
    for layer in cfg["layers"]:
        if layer["type"] == "openfluke_attention":
            del layer["span"]
            layer["type"] = "multi_head_attention"
    per_sample = loom.Network.from_config(cfg)
    per_sample.load_state_dict(net.state_dict())
    y1 = per_sample(x)
    assert np.max(np.abs(y1[0] - want[0])) <= RTOL * np.max(np.abs(want[0]))
    assert np.max(np.abs(y1[1] - want[1])) > 1e-3 * np.max(np.abs(want[1]))


def test_softmax_normalizes_the_whole_batch_like_welvet(welvet_runs):
    (x,), res = welvet_runs["softmax-Standard-0"]
    net = _check(welvet_runs, "softmax-Standard-0")
    y = net(x)
    assert net.config["layers"][-1]["type"] == "openfluke_softmax"
    assert net.config["layers"][-1]["normalize"] == "batch"
    assert abs(float(y.sum()) - 1.0) < 1e-5 and abs(float(y[0].sum()) - 1.0) > 1e-3


def test_converted_models_save_and_reload(welvet_runs, tmp_path):
    inputs, res = welvet_runs["parallel-in-sequential"]
    net = openfluke.load(res["paths"]["entity"])
    net.save(tmp_path / "m.loom")
    again = loom.load(tmp_path / "m.loom")
    assert np.array_equal(again(inputs[0]), net(inputs[0]))
    assert again.config["metadata"]["converted_from"] == "welvet"


# --- golden files, written by hand as welvet writes them --------------------------------------------

W1 = np.array([1, -2, 3, 0.5, 0.25, -1], np.float32)          # dense 3 -> 2, float32, ReLU
Q2 = np.array([2, -4, 127, -128], np.int8)                    # dense 2 -> 2, int8, scale 0.5


def golden_wire() -> dict:
    return {"id": "network", "depth": 1, "rows": 1, "cols": 1, "layers_per_cell": 2, "layers": [
        {"z": 0, "y": 0, "x": 0, "l": 0, "type": "Dense", "activation": "ReLU", "dtype": "float32",
         "input_height": 3, "output_height": 2, "seq_length": 1, "softmax_type": "Standard",
         "weights": base64.b64encode(W1.tobytes()).decode(), "native": True, "scale": 1},
        {"z": 0, "y": 0, "x": 0, "l": 1, "type": "Dense", "activation": "Linear", "dtype": "int8",
         "input_height": 2, "output_height": 2, "seq_length": 1, "softmax_type": "Standard",
         "weights": base64.b64encode(Q2.tobytes()).decode(), "native": True, "scale": 0.5}]}


def entity_bytes(header: dict, payload: bytes, version=1, flags=0) -> bytes:
    text = json.dumps(header, separators=(",", ":")).encode()
    return openfluke.MAGIC + struct.pack("<HHQ", version, flags, len(text)) + text + payload


def golden_entity() -> bytes:
    network = golden_wire()
    for layer in network["layers"]:
        for key in ("weights", "native", "scale"):
            del layer[key]
    blobs = [{"path": "layers.0", "offset": 0, "length": 24, "dtype": "float32", "scale": 1, "native": True},
             {"path": "layers.1", "offset": 24, "length": 4, "dtype": "int8", "scale": 0.5, "native": True}]
    return entity_bytes({"format_version": 1, "network": network, "blobs": blobs}, W1.tobytes() + Q2.tobytes())


GOLDEN_CONFIG = [{"type": "openfluke_dense", "units": 2, "activation": "relu", "bias": False, "accumulate_block": 8},
                 {"type": "openfluke_dense", "units": 2, "activation": "linear", "bias": False, "accumulate_block": 8}]


@pytest.mark.parametrize("source", ["wire", "entity"])
def test_golden_files(source, tmp_path):
    data = json.dumps(golden_wire()).encode() if source == "wire" else golden_entity()
    path = tmp_path / ("m.json" if source == "wire" else "m.entity")
    path.write_bytes(data)
    for src in (path, str(path), data):
        cfg, state = openfluke.convert(src)
        assert cfg["layers"] == GOLDEN_CONFIG and cfg["input"] == {"shape": [3], "dtype": "float32"}
        assert np.array_equal(state["layers.0.weight"], W1.reshape(2, 3))
        assert np.array_equal(state["layers.1.weight"], [[1, -2], [63.5, -64]])
    net = openfluke.load(path)
    assert np.array_equal(net(np.ones((1, 3), np.float32)), [[2, 127]])   # relu([2, -0.25]) = [2, 0]


def test_packed_dtypes_decode_as_welvet_packs_them():
    def dec(dtype, raw, scale=1.0):
        values, s = openfluke.decode(bytes(raw), {"dtype": dtype, "native": True, "scale": scale}, "t")
        return list(values * np.float32(s))
    assert dec("int4", [0x7F, 0x80], 0.5) == [3.5, -0.5, -4.0, 0.0]            # high nibble first
    assert dec("uint4", [0xF1]) == [15, 1]
    assert dec("int2", [0b01111000]) == [1, -1, -2, 0]
    assert dec("ternary", [0b01110000]) == [1, -1, 0, 0]
    assert dec("binary", [0b10100000], 0.25) == [0.25, -0.25, 0.25] + [-0.25] * 5
    assert dec("fp4", [0x29]) == [1.0, -0.75]
    assert dec("fp8e4m3", [0x38, 0xB8], 2.0) == [2.0, -2.0]                   # 1.0, -1.0 times the scale
    assert dec("fp8e5m2", [0x3C, 0x7C]) == [1.0, float("inf")]
    assert dec("bfloat16", [0x80, 0x3F]) == [1.0]
    assert dec("uint16", [0x01, 0x01], 0.5) == [128.5]


# --- malformed input ----------------------------------------------------------------------------------

def _wire_error(mutate, match):
    spec = golden_wire()
    mutate(spec)
    with pytest.raises(FormatError, match=match):
        openfluke.load(json.dumps(spec).encode())


@pytest.mark.parametrize("mutate, match", [
    (lambda s: s.pop("depth"), r"depth: expected a positive integer"),
    (lambda s: s.update(rows="1"), r"rows: expected a positive integer, got \"1\""),
    (lambda s: s.update(extra=1), r"extra: unknown key for a welvet network"),
    (lambda s: s.update(layers=[]), r"layers: expected a non-empty list"),
    (lambda s: s["layers"][1].update(l=5), r"layers\[1\]: cell \(z=0, y=0, x=0, l=5\) lies outside the 1x1x1x2 grid"),
    (lambda s: s["layers"][1].update(l=0), r"layers\[1\]: cell \(z=0, y=0, x=0, l=0\) is already taken by layers\[0\]"),
    (lambda s: s["layers"].pop(), r"grid cell \(z=0, y=0, x=0, l=1\) has no layer"),
    (lambda s: s["layers"][0].update(type="Hopfield"),
     r"layers\[0\] \(z=0, y=0, x=0, l=0\): unknown welvet layer type 'Hopfield'"),
    (lambda s: s["layers"][0].update(type="ConvTransposed2D"), r"ConvTransposed2D' has no Loom import yet"),
    (lambda s: s["layers"][0].update(activation="Swish"), r"layers\[0\] .*\.activation: unknown welvet activation 'Swish'"),
    (lambda s: s["layers"][0].update(dtype="float8"), r"layers\[0\]\.dtype: unknown welvet dtype 'float8'"),
    (lambda s: s["layers"][0].update(input_height=-3), r"layers\[0\]\.input_height: expected a non-negative integer, got -3"),
    (lambda s: s["layers"][0].update(input_height=4), r"layers\[0\] .*: Dense needs 8 float32 weights, the file holds 6"),
    (lambda s: s["layers"][0].update(output_height=0), r"output_height: Dense needs a positive output_height"),
    (lambda s: s["layers"][0].update(weights="not base64!"), r"layers\[0\]\.weights: invalid base64"),
    (lambda s: s["layers"][0].update(weights="AAAA"), r"layers\[0\]\.weights: 3 bytes is not a whole number of float32 values"),
    (lambda s: s["layers"][0].pop("weights"), r"layers\[0\] .*: Dense layer has no weights"),
    (lambda s: s["layers"][1].update(scale=0), r"layers\[1\]\.weights: int8 weights need a positive scale, got 0"),
    (lambda s: s["layers"][1].update(native=False), r"a float32 master blob \(native false\) for a int8 layer"),
    (lambda s: s["layers"][0].update(native="yes"), r"layers\[0\]\.native: expected true or false"),
    (lambda s: s["layers"][0].update(colour="red"), r"layers\[0\]\.colour: unknown key for a welvet layer"),
    (lambda s: s["layers"][0].pop("type"), r"layers\[0\]\.type: missing required key"),
    (lambda s: s["layers"][1].update(input_height=3, weights=base64.b64encode(bytes(6)).decode()),
     r"layers\[1\] .*: Dense reads input_height values per row \[3\] but receives per-sample shape \[2\]"),
])
def test_malformed_wire_names_the_json_path(mutate, match):
    _wire_error(mutate, match)


def test_invalid_json_names_line_column_and_offset():
    text = json.dumps(golden_wire(), indent=1)
    broken = text.replace('"rows": 1', '"rows": 1,,', 1)
    with pytest.raises(FormatError, match=r"invalid JSON at line 4 column \d+ \(byte offset \d+\)"):
        openfluke.load(broken.encode())
    for bad in (b"[1, 2]", b"\xff\xfe{}", b"{\"depth\": NaN}"):
        with pytest.raises(FormatError):
            openfluke.load(bad)


def test_every_truncation_of_a_wire_file_is_a_format_error():
    data = json.dumps(golden_wire()).encode()
    for n in range(len(data)):
        with pytest.raises(FormatError):
            openfluke.read(data[:n])


def test_every_truncation_of_an_entity_file_is_a_format_error():
    data = golden_entity()
    for n in range(len(data)):
        with pytest.raises(FormatError):
            openfluke.load(data[:n])
    openfluke.load(data)


def _entity(mutate_header=None, payload=None, **fields):
    data = golden_entity()
    hlen = struct.unpack_from("<Q", data, 12)[0]
    header = json.loads(data[20:20 + hlen])
    if mutate_header:
        mutate_header(header)
    return entity_bytes(header, data[20 + hlen:] if payload is None else payload, **fields)


@pytest.mark.parametrize("data, match", [
    (b"ENTITY\0", r"shorter than its 20-byte fixed header"),
    (b"ENTITY\0X" + bytes(40), r"bytes 0\.\.8 are .*, not the \.entity magic"),
    (_entity(version=2), r"byte offset 8: unsupported \.entity version 2"),
    (_entity(flags=3), r"byte offset 10: unknown \.entity flags 0x0003"),
    (openfluke.MAGIC + struct.pack("<HHQ", 1, 0, 10 ** 6) + b"{}", r"byte offset 12: header length 1000000 runs past the end"),
    (openfluke.MAGIC + struct.pack("<HHQ", 1, 0, 5) + b"{\"a\":", r"header: invalid JSON at line 1 column 6 \(byte offset 25\)"),
    (_entity(lambda h: h.update(format_version=3)), r"header\.format_version: expected 1, got 3"),
    (_entity(lambda h: h.update(extra=True)), r"header\.extra: unknown key"),
    (_entity(lambda h: h.pop("blobs")), r"header\.blobs: expected a list"),
    (_entity(lambda h: h["blobs"][1].update(offset=26)),
     r"header\.blobs\[1\]: bytes \d+\.\.\d+ run past the end of the file \(\d+ bytes; truncated\?\)"),
    (_entity(lambda h: h["blobs"][1].update(length=-1)), r"header\.blobs\[1\]\.length: expected a non-negative integer"),
    (_entity(lambda h: h["blobs"][1].update(path="layers.7")),
     r"header\.blobs\[1\]: blob 'layers\.7' belongs to no weighted layer"),
    (_entity(lambda h: h["blobs"][1].update(path="weights")), r"header\.blobs\[1\]\.path: expected \"layers\.<index>"),
    (_entity(lambda h: h["blobs"][1].update(path="layers.0")), r"header\.blobs\[1\]\.path: blob 'layers\.0' appears twice"),
    (_entity(lambda h: h["blobs"][1].update(dtype="int16")),
     r"header\.blobs\[1\]\.dtype: blob is int16 but layer layers\[1\] is int8"),
    (_entity(lambda h: h["blobs"][1].update(scale="big")), r"header\.blobs\[1\]\.scale: expected a finite number"),
    (_entity(lambda h: h["blobs"].pop()), r"layers\[1\] .*: Dense layer has no weights"),
    (_entity(lambda h: h["network"]["layers"][0].update(weights="AAAA")),
     r"layers\[0\]\.weights: an \.entity header carries no inline weights"),
])
def test_malformed_entity_names_the_byte_offset_or_header_path(data, match):
    with pytest.raises(FormatError, match=match):
        openfluke.load(data)


def test_deep_nesting_is_a_format_error():
    inner = '{"type": "Dense", "input_height": 2, "output_height": 2}'
    for _ in range(3000):
        inner = '{"type": "Sequential", "sequential_layers": [' + inner + ']}'
    text = ('{"id": "x", "depth": 1, "rows": 1, "cols": 1, "layers_per_cell": 1, "layers": ['
            + inner[:-1] + ', "z": 0, "y": 0, "x": 0, "l": 0}]}')
    with pytest.raises(FormatError, match="nested too deeply"):
        openfluke.load(text)


def test_unreadable_sources():
    with pytest.raises(FormatError, match="cannot read"):
        openfluke.load("/nonexistent/model.entity")
    with pytest.raises(FormatError, match="expected a path, bytes or JSON text"):
        openfluke.load(3.5)


# --- welvet semantics Loom cannot (or need not) reproduce: clear errors, never a partial import ---------

def _one(*layers, **dims):
    spec = grid(*layers, **dims)
    for layer in spec["layers"]:
        _fill(layer)
    return json.dumps(spec).encode()


def _fill(layer):
    """Give a weighted layer the right number of float32 weights (zeros)."""
    counts = {"Dense": lambda s: s["input_height"] * s["output_height"],
              "MultiHeadAttention": lambda s: 4 * s["d_model"] ** 2 + 4 * s["d_model"],
              "CNN1": lambda s: s["filters"] * s["input_channels"] * s["kernel_size"],
              "Embedding": lambda s: s["vocab_size"] * s["embedding_dim"]}
    if layer["type"] in counts:
        layer["weights"] = base64.b64encode(np.zeros(counts[layer["type"]](layer), np.float32).tobytes()).decode()
        layer.update(native=True, scale=1)
    for child in layer.get("sequential_layers", []) + layer.get("parallel_branches", []):
        _fill(child)


@pytest.mark.parametrize("data, match", [
    (_one(Dn(4, 4), L(type="Softmax", input_height=4, softmax_type="Gumbel")), r"Gumbel softmax adds unseeded random noise"),
    (_one(Dn(4, 4), L(type="Softmax", input_height=4, softmax_type="Fancy")), r"unknown softmax_type 'Fancy'"),
    (_one(Dn(4, 4), par("filter", Dn(4, 2), Dn(4, 2))), r"combine filter: welvet does not save the filter gate"),
    (_one(Dn(4, 4), par("multiply", Dn(4, 2), Dn(4, 2))), r"unknown combine_mode 'multiply'"),
    (_one(Dn(4, 4), par("add", Dn(4, 2), Dn(4, 3))), r"combine add needs branch outputs of one size, got \[2, 3\]"),
    (_one(L(type="MultiHeadAttention", d_model=4, num_heads=1, head_dim=4, seq_length=600)),
     r"exceeds welvet's 512-entry KV cache"),
    (_one(L(type="MultiHeadAttention", d_model=6, num_heads=2, head_dim=3, seq_length=2)), r"head_dim 3 is odd"),
    (_one(L(type="CNN1", input_channels=1, input_height=5, filters=1, kernel_size=3, stride=1, output_height=4)),
     r"output_height is 4, but kernel 3, stride 1, padding 0 on 5 positions give 3"),
    (_one(L(type="CNN1", input_channels=1, input_height=5, filters=1, kernel_size=3, output_height=3)),
     r"stride: CNN1 needs a positive stride, got 0"),
    (_one(Dn(4, 4), L(type="Embedding", vocab_size=5, embedding_dim=2)), r"embedding must be the first layer"),
    (_one(seq(Dn(4, 4), RES, RES)), r"a residual right after a residual"),
    (_one(seq(Dn(4, 4), {**Dn(4, 4), "is_disabled": True})), r"disabled layers inside parallel/sequential"),
    (_one({**Dn(4, 4), "is_disabled": True}, RES), r"no layer to infer the input shape from; pass input_shape"),
    (_one({**Dn(4, 4), "meta_observed_layer": Dn(4, 4)}), r"metacognition layers are not supported"),
])
def test_unsupported_welvet_semantics_raise_format_errors(data, match):
    with pytest.raises(FormatError, match=match):
        openfluke.load(data)


def test_input_shape_override_and_inference():
    data = _one(Dn(6, 2))
    assert openfluke.convert(data)[0]["input"]["shape"] == [6]
    cfg, _ = openfluke.convert(data, input_shape=[2, 3])        # welvet reads the 6 values flat
    assert cfg["input"]["shape"] == [2, 3] and cfg["layers"][0] == {"type": "flatten"}
    with pytest.raises(FormatError, match=r"receives per-sample shape \[5\]"):
        openfluke.convert(data, input_shape=[5])
    with pytest.raises(FormatError, match="input_shape must be a non-empty list of positive sizes"):
        openfluke.convert(data, input_shape=[0])
    cfg, _ = openfluke.convert(_one(L(type="Embedding", vocab_size=5, embedding_dim=2, seq_length=3)))
    assert cfg["input"] == {"shape": [3], "dtype": "int64"}

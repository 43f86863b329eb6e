"""`loom convert --from welvet IN OUT`, run as a user runs it: a subprocess, its output and exit codes."""
import base64
import json
import pathlib
import struct
import subprocess
import sys

import numpy as np

import loom

ROOT = pathlib.Path(__file__).resolve().parents[2]


def loom_cli(*args):
    return subprocess.run([sys.executable, "-m", "loom", *args], capture_output=True, text=True, cwd=ROOT)


W = np.array([1, -2, 3, 0.5, 0.25, -1], np.float32)      # dense 3 -> 2, no bias, as welvet stores it


def wire_model(**layer):
    spec = {"id": "network", "depth": 1, "rows": 1, "cols": 1, "layers_per_cell": 2, "layers": [
        {"z": 0, "y": 0, "x": 0, "l": 0, "type": "Dense", "activation": "Tanh", "dtype": "float32",
         "input_height": 3, "output_height": 2, "weights": base64.b64encode(W.tobytes()).decode(),
         "native": True, "scale": 1},
        {"z": 0, "y": 0, "x": 0, "l": 1, "type": "Softmax", "activation": "Linear", "dtype": "float32",
         "input_height": 2, "softmax_type": "Standard"}]}
    spec["layers"][0].update(layer)
    return json.dumps(spec)


def entity_model():
    spec = json.loads(wire_model())
    for key in ("weights", "native", "scale"):
        del spec["layers"][0][key]
    header = json.dumps({"format_version": 1, "network": spec, "blobs": [
        {"path": "layers.0", "offset": 0, "length": 24, "dtype": "float32", "scale": 1, "native": True}]}).encode()
    return b"ENTITY\0\0" + struct.pack("<HHQ", 1, 0, len(header)) + header + W.tobytes()


def expected(x):
    z = np.tanh(x @ W.reshape(2, 3).T)
    e = np.exp(z - z.max())
    return e / e.sum()                       # welvet's softmax normalizes the whole batch


def test_convert_wire_and_entity(tmp_path):
    x = np.array([[1, 2, 3], [-1, 0.5, 2]], np.float32)
    for name, data in (("m.json", wire_model().encode()), ("m.entity", entity_model())):
        src, out = tmp_path / name, tmp_path / (name + ".loom")
        src.write_bytes(data)
        run = loom_cli("convert", "--from", "welvet", str(src), str(out))
        assert run.returncode == 0, run.stderr
        assert str(out) in run.stdout
        net = loom.load(out)
        np.testing.assert_allclose(net(x), expected(x), rtol=1e-6)
        assert net.config["metadata"]["converted_from"] == "welvet"


def test_input_shape_option(tmp_path):
    src, out = tmp_path / "m.json", tmp_path / "m.loom"
    src.write_text(wire_model())
    run = loom_cli("convert", "--from", "welvet", str(src), str(out), "--input-shape", "3,1")
    assert run.returncode == 0, run.stderr
    assert loom.load(out).input_spec.shape == (3, 1)


def test_bad_input_exits_3_with_one_line(tmp_path):
    cases = {"missing.json": None, "bad.json": b'{"id": 1,', "type.json": wire_model(type="Hopfield").encode(),
             "short.entity": b"ENTITY\0\0\1\0", "shape.json": None}
    runs = {}
    for name, data in cases.items():
        src = tmp_path / name
        if data is not None:
            src.write_bytes(data)
        args = ["convert", "--from", "welvet", str(src), str(tmp_path / "out.loom")]
        if name == "shape.json":
            src.write_text(wire_model())
            args += ["--input-shape", "2,x"]
        runs[name] = run = loom_cli(*args)
        assert run.returncode == 3, (name, run.stderr)
        assert len(run.stderr.strip().splitlines()) == 1 and run.stderr.startswith("loom: error: "), run.stderr
        assert not (tmp_path / "out.loom").exists()
    assert "Hopfield" in runs["type.json"].stderr       # the unknown layer type is named (the run above)


def test_usage_errors_exit_2(tmp_path):
    src = tmp_path / "m.json"
    src.write_text(wire_model())
    for args in (["convert"], ["convert", str(src), "o.loom"], ["convert", "--from", "welvet", str(src)],
                 ["convert", "--from", "onnx", str(src), "o.loom"]):
        run = loom_cli(*args)
        assert run.returncode == 2, (args, run.stderr)
        assert len(run.stderr.strip().splitlines()) == 1 and run.stderr.startswith("loom: usage error"), run.stderr


def test_convert_dtype_quantizes_a_loom_model(tmp_path):
    cfg = {"loom": 1, "input": {"shape": [6]}, "layers": [{"type": "dense", "units": 4, "activation": "relu"},
                                                          {"type": "dense", "units": 3}]}
    net = loom.Network.from_config(cfg, seed=2)
    net.save(tmp_path / "f.loom")
    r = loom_cli("convert", str(tmp_path / "f.loom"), "--dtype", "int4", "--out", str(tmp_path / "q.loom"))
    assert r.returncode == 0, r.stderr
    q = loom.load(tmp_path / "q.loom")
    assert q.config["quantization"] == {"dtype": "int4", "per": "channel"}
    x = np.random.default_rng(0).standard_normal((5, 6)).astype(np.float32)
    assert np.array_equal(q(x), net.quantize("int4")(x))
    bad = loom_cli("convert", str(tmp_path / "f.loom"), "--dtype", "int9", "--out", str(tmp_path / "x.loom"))
    assert bad.returncode == 3 and "int9" in bad.stderr and bad.stderr.count("\n") == 1
    usage = loom_cli("convert", str(tmp_path / "f.loom"))
    assert usage.returncode == 2 and "--dtype" in usage.stderr

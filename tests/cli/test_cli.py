"""The `loom` command, run as a user runs it: a subprocess, checking output and exit codes."""
import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def loom(*args):
    return subprocess.run([sys.executable, "-m", "loom", *args], capture_output=True, text=True, cwd=ROOT)


def test_demo_trains_saves_and_reloads_bit_identically(tmp_path):
    out = loom("demo", "--out", str(tmp_path / "demo"))
    assert out.returncode == 0, out.stderr
    assert "digits-convnet" in out.stdout and "total parameters" in out.stdout
    assert "epoch 12/12 loss" in out.stderr                    # progress on stderr
    accuracy = float(re.search(r"held-out accuracy: ([0-9.]+)%", out.stdout).group(1))
    assert accuracy >= 95.0
    assert "predictions on the held-out images are bit-identical" in out.stdout
    assert (tmp_path / "demo" / "digits.loom").stat().st_size > 0


@pytest.fixture(scope="module")
def info_json():
    """`loom info --json`, run once for the two tests that read it (each run is a fresh interpreter)."""
    return loom("info", "--json")


def test_info_json(info_json):
    out = info_json
    assert out.returncode == 0
    data = json.loads(out.stdout)
    assert data["devices"]["cpu"] == "ok" and "conv2d" in data["layer_types"]


def test_usage_errors_exit_2_with_one_line():
    runs = {}
    for args in (["frobnicate"], ["demo", "--epochs", "many"], [], ["train"], ["run", "m.loom"]):
        runs[tuple(args)] = out = loom(*args)
        assert out.returncode == 2, args
    out = runs["frobnicate",]                  # its stderr, from the run above (no second start-up)
    assert len(out.stderr.strip().splitlines()) == 1 and out.stderr.startswith("loom: usage error")


def test_bad_input_exits_3_and_debug_shows_traceback():
    out = loom("demo", "--epochs", "0")
    assert out.returncode == 3
    assert out.stderr.strip() == "loom: error: --epochs: expected a positive integer, got 0"
    debug = loom("--debug", "demo", "--epochs", "0")
    assert debug.returncode == 3 and "Traceback" in debug.stderr


def test_packaged_demo_config_is_the_example():
    packaged = (ROOT / "loom" / "cli" / "digits-convnet.json").read_text()
    assert packaged == (ROOT / "examples" / "digits-convnet.json").read_text()
    from loom import config
    assert config.dumps(config.loads(packaged)) == packaged


def _write_data(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    x = rng.normal(size=(300, 4)) + np.eye(3, 4)[y] * 3
    np.savez(tmp_path / "data.npz", x=x, y=y)
    with open(tmp_path / "data.csv", "w") as fh:
        fh.write("a,b,c,d,label\n")
        for row, label in zip(x, y):
            fh.write(",".join(f"{v:.6f}" for v in row) + f",{label}\n")
    cfg = {"loom": 1, "name": "cli-mlp", "input": {"shape": [4]},
           "layers": [{"type": "dense", "units": 16, "activation": "relu"}, {"type": "dense", "units": 3}],
           "training": {"optimizer": {"type": "adam", "lr": 0.01}, "metrics": ["accuracy"]}}
    (tmp_path / "net.json").write_text(json.dumps(cfg))
    return x, y


def test_train_eval_run(tmp_path):
    x, y = _write_data(tmp_path)
    out = loom("train", str(tmp_path / "net.json"), "--data", str(tmp_path / "data.npz"), "--epochs", "5",
               "--validation", "0.2", "--out", str(tmp_path / "run"))
    assert out.returncode == 0, out.stderr
    assert "trained 5 epochs" in out.stdout and "epoch 5/5" in out.stderr
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert len(history["loss"]) == 5 and history["val_accuracy"][-1] > 0.9
    model = str(tmp_path / "run" / "model.loom")

    out = loom("eval", model, "--data", str(tmp_path / "data.csv"), "--target", "label",
               "--json", str(tmp_path / "report.json"))
    assert out.returncode == 0, out.stderr
    assert "accuracy" in out.stdout.lower()
    assert json.loads((tmp_path / "report.json").read_text())

    np.save(tmp_path / "x.npy", x.astype(np.float32))
    out = loom("run", model, "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npy"))
    assert out.returncode == 0, out.stderr
    import loom as L
    assert np.array_equal(np.load(tmp_path / "y.npy"), L.load(model)(x.astype(np.float32)))

    # resume from the checkpoint to 7 epochs
    out = loom("train", str(tmp_path / "net.json"), "--data", str(tmp_path / "data.csv"), "--epochs", "7",
               "--resume", str(tmp_path / "run" / "checkpoint.loom"), "--out", str(tmp_path / "run2"), "--quiet")
    assert out.returncode == 0, out.stderr
    assert "trained 7 epochs" in out.stdout
    assert len(json.loads((tmp_path / "run2" / "history.json").read_text())["loss"]) == 7


def test_cli_bad_inputs_exit_3(tmp_path):
    _write_data(tmp_path)
    (tmp_path / "bad.csv").write_text("1,2,x,4,0\n")
    cases = [
        (["train", str(tmp_path / "missing.json"), "--data", str(tmp_path / "data.npz"), "--out", str(tmp_path / "o")],
         "cannot read config file"),
        (["train", str(tmp_path / "net.json"), "--data", str(tmp_path / "bad.csv"), "--out", str(tmp_path / "o")],
         "line 1, column 3: 'x' is not a number"),
        (["train", str(tmp_path / "net.json"), "--data", str(tmp_path / "nope.npz"), "--out", str(tmp_path / "o")],
         "no such file"),
        (["run", str(tmp_path / "net.json"), "--input", str(tmp_path / "data.npz"), "--output", str(tmp_path / "y.npy")],
         "error"),
    ]
    for args, message in cases:
        out = loom(*args)
        assert out.returncode == 3, (args, out.stderr)
        assert message in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_info_lists_accelerations(info_json):
    data = json.loads(info_json.stdout)
    assert set(data["accelerations"]) == {"numba", "cuda_graphs", "decode_graphs", "int8_exact_gemm",
                                          "kquant_kernels"}
    out = subprocess.run([sys.executable, "-m", "loom", "info"], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "LOOM_JIT": "0"})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("accelerations"))
    rows = dict(line.split(None, 1) for line in lines[start + 1:start + 6])
    assert list(rows) == ["numba", "cuda_graphs", "decode_graphs", "int8_exact_gemm", "kquant_kernels"]
    assert rows["numba"] == "inactive: LOOM_JIT=0"
    assert rows["kquant_kernels"].startswith("inactive: GPU only")

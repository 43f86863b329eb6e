"""The Loom model file: bit-identical round trips, malformed files, atomic saves under SIGKILL."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from catalogue import SAMPLES, config

import loom
from loom import FormatError
from loom.formats import safetensors


@pytest.mark.parametrize("name, layers, shape, idt", SAMPLES, ids=[s[0] for s in SAMPLES])
def test_round_trip_is_bit_identical(tmp_path, name, layers, shape, idt):
    net = loom.Network.from_config(config(layers, shape, idt, seed=5))
    rng = np.random.default_rng(0)
    for p in net.parameters().values():          # trained-looking weights, not the init draws
        p[...] += rng.normal(size=p.shape).astype(p.dtype) * 0.01
    net.save(tmp_path / "m.loom")
    for back in (loom.load(tmp_path / "m.loom"), loom.from_bytes(net.to_bytes())):
        assert back.config == net.config
        for k, v in net.state_dict().items():
            assert back.state_dict()[k].dtype == v.dtype and back.state_dict()[k].tobytes() == v.tobytes(), k
        x = rng.integers(0, 10, (3, *shape)) if idt else rng.normal(size=(3, *shape)).astype(np.float32)
        assert np.array_equal(back(x), net(x))


def _net(seed=0):
    return loom.Network.from_config(config([{"type": "dense", "units": 3}, {"type": "batch_norm"}], [4], seed=seed))


def test_malformed_model_files(tmp_path):
    good_tensors, good_meta = safetensors.loads(_net().to_bytes())
    cases = [
        ({**good_meta, "format": "other"}, good_tensors, "not a Loom model file"),
        ({**good_meta, "format_version": "9"}, good_tensors, "unsupported model file version '9'"),
        ({**good_meta, "config": '{"loom": 1}'}, good_tensors, "the stored config is invalid: input: missing"),
        (good_meta, {k: v for k, v in good_tensors.items() if k != "layers.0.bias"}, r"missing \['layers.0.bias'\]"),
        (good_meta, {**good_tensors, "layers.0.bias": np.zeros(4, np.float32)}, "tensor 'layers.0.bias' is float32\\[4\\]"),
        (good_meta, {**good_tensors, "layers.0.bias": np.zeros(3, np.float64)}, "tensor 'layers.0.bias' is float64\\[3\\]"),
    ]
    for meta, tensors, message in cases:
        with pytest.raises(FormatError, match=message):
            loom.from_bytes(safetensors.dumps(tensors, meta))
    with pytest.raises(FormatError, match="is a directory without model.safetensors"):
        loom.load(tmp_path)
    (tmp_path / "t.loom").write_bytes(_net().to_bytes()[:-3])
    with pytest.raises(FormatError, match="t.loom"):
        loom.load(tmp_path / "t.loom")


def test_directory_form_round_trip(tmp_path):
    net = _net(3)
    x = np.random.default_rng(5).standard_normal((4, 4)).astype(np.float32)
    net.save(f"{tmp_path}/m/")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    assert loom.Network.from_config(tmp_path / "m" / "config.json").config == net.config
    again = loom.load(tmp_path / "m")
    assert np.array_equal(again(x), net(x))
    _net(4).save(tmp_path / "m")                      # an existing directory is saved into, not over
    assert not np.array_equal(loom.load(tmp_path / "m")(x), net(x))


_WRITER = """
import sys, loom
sys.path.insert(0, "tests")
from formats.test_loomfile import _net
nets = [_net(0), _net(1)]
print("ready", flush=True)
i = 0
while True:
    nets[i % 2].save(sys.argv[1])
    i += 1
"""


def test_killed_saves_leave_the_old_or_the_new_file(tmp_path):
    path = tmp_path / "m.loom"
    _net(0).save(path)
    expected = [_net(0).to_bytes(), _net(1).to_bytes()]
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for trial in range(8):
        child = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], cwd=root, stdout=subprocess.PIPE)
        assert child.stdout.readline().strip() == b"ready"
        time.sleep(0.02 + 0.013 * trial)
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert path.read_bytes() in expected          # whole, never torn
        loom.load(path)

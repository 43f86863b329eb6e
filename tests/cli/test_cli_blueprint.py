"""`loom info MODEL [--blueprint]` and `loom plot TELEMETRY.json`, run in-process through main()."""
from __future__ import annotations

import json

import numpy as np
import pytest
from cli_run import loom as run

import loom
from loom.nn.telemetry import Telemetry

CFG = {"loom": 1, "name": "cli-bp", "input": {"shape": [4]},
       "layers": [{"type": "parallel", "combine": "grid_scatter",
                   "grid": {"rows": 1, "cols": 2, "positions": [[0, 1, 0], [0, 0, 0]]},
                   "branches": [{"type": "dense", "units": 3}, {"type": "dense", "units": 3, "activation": "relu"}]},
                  {"type": "flatten"}, {"type": "dense", "units": 2}]}


def test_blueprint_of_a_config_and_of_a_model_file(capsys, tmp_path):
    cfg = tmp_path / "net.json"
    cfg.write_text(json.dumps(CFG))
    code, out, err = run(capsys, "info", cfg, "--blueprint")
    assert code == 0, err
    doc = json.loads(out)
    assert doc == loom.Network.from_config(CFG).blueprint()
    assert [c["grid_position"] for c in doc["layers"][0]["children"]] == [[0, 1, 0], [0, 0, 0]]
    net = loom.Network.from_config(CFG)
    net.save(tmp_path / "m.loom")
    code, out, _ = run(capsys, "info", tmp_path / "m.loom", "--blueprint")
    assert code == 0 and json.loads(out) == doc
    code, out, _ = run(capsys, "info", tmp_path / "m.loom", "--json")         # --json with a model: the same
    assert code == 0 and json.loads(out) == doc
    code, out, _ = run(capsys, "info", cfg)                                     # without: the summary table
    assert code == 0 and out.strip() == net.summary().strip()


@pytest.mark.parametrize("argv, message", [
    (["info", "--blueprint"], "--blueprint: needs a MODEL"),
    (["info", "missing.json", "--blueprint"], "missing.json"),
    (["info", "missing.loom", "--blueprint"], "missing.loom"),
])
def test_bad_input_exits_3_with_one_line(capsys, tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, *argv)
    assert code == 3 and out == "" and message in err and len(err.strip().splitlines()) == 1


def test_an_invalid_config_names_its_key(capsys, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**CFG, "layers": [{"type": "dense", "units": 0}]}))
    code, _, err = run(capsys, "info", bad, "--blueprint")
    assert code == 3 and "layers[0].units" in err


def test_plot_of_a_telemetry_file(capsys, tmp_path):
    net = loom.Network.from_config(CFG)
    tel = Telemetry(net)
    for i in range(3):
        with tel.step():
            y = net(np.full((2, 4), i, np.float32))
            net.backward(np.ones_like(y))
    tel.to_json(tmp_path / "tel.json")
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"loom_telemetry": 1, "steps": [0], "activations": {}, "gradients": {"w": []}}))
    code, _, err = run(capsys, "plot", broken)
    assert code == 3 and "broken.json" in err and "gradients['w']" in err
    pytest.importorskip("matplotlib")
    code, out, err = run(capsys, "plot", tmp_path / "tel.json", "--out", tmp_path / "activity.png")
    assert code == 0, err
    assert out.strip() == f"wrote {tmp_path / 'activity.png'}"
    assert (tmp_path / "activity.png").read_bytes()[:4] == b"\x89PNG"

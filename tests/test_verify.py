"""loom verify: every layer sample, optimizer and the demo get a row; a changed bit anywhere is a
MISMATCH with exit code 1; the JSON parses; the CLI runs end to end as a user runs it."""
import json
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
from catalogue import SAMPLES, config

import loom
from loom import backend, batch_invariance, rng
from loom import verify as verifier
from loom.cli.main import main
from loom.nn import optim

ROOT = pathlib.Path(__file__).resolve().parents[1]
NO_CUDA = backend.available()["cuda"] != "ok"


def _rows(table: str) -> dict[str, str]:
    """check name -> mark, from the printed table."""
    rows = {}
    for line in table.splitlines():
        m = re.match(r"^(\S.*?\S)\s{2,}(?:[0-9a-f]{16}|ERROR|-)(?:\s{2,}(?:[0-9a-f]{16}|ERROR|-))*\s{2,}(=|MISMATCH)$",
                     line)
        if m:
            rows[m.group(1)] = m.group(2)
    return rows


def test_the_table_has_every_sample_parameter_optimizer_and_the_demo():
    report = verifier.verify(["cpu"], steps=3)
    rows = _rows(report.table())
    assert list(rows) == report.checks and set(rows.values()) == {"="}
    for name, layers, shape, idt in SAMPLES:
        net = loom.Network.from_config(config(layers, shape, idt))
        expected = {f"{name}  forward"} | ({f"{name}  grad input"} if idt is None else set())
        expected |= {f"{name}  grad {k.removeprefix('layers.0.')}" for k in net.parameters()}
        expected |= {f"{name}  buffer {k.removeprefix('layers.0.')}" for k in net.buffers()}
        expected |= set() if batch_invariance.mixes_rows(layers) else {f"{name}  batch-invariant"}
        assert {r for r in rows if r.split("  ")[0] == name} == expected, name
    for kind in optim.TYPES:
        assert f"{kind}  step" in rows
    assert "demo  weights after 3 steps" in rows and "demo  loss history" in rows
    assert report.summary() == f"{len(rows)} checks, 1 backend: all agree bit-for-bit"


def test_a_changed_bit_is_a_mismatch_exit_1_and_the_json_says_which(monkeypatch, capsys, tmp_path):
    """Lion is nudged by one ulp in this process only: the cpu:1thread subprocess runs the real one."""
    real = optim.Lion.update

    def nudged(self, p, g, state, hp, s):
        real(self, p, g, state, hp, s)
        p.reshape(-1)[0] = np.nextafter(p.reshape(-1)[0], np.float32(np.inf))
    monkeypatch.setattr(optim.Lion, "update", nudged)
    out_file = tmp_path / "verify.json"
    code = main(["verify", "--device", "cpu", "--steps", "2", "--sample", "dense", "--json", str(out_file)])
    out = capsys.readouterr().out
    assert code == 1
    rows = _rows(out)
    assert rows.pop("lion  step") == "MISMATCH"
    assert rows and set(rows.values()) == {"="}
    assert out.rstrip().endswith(f"{len(rows) + 1} checks, 2 backends: 1 mismatch")

    data = json.loads(out_file.read_text())
    assert data["mode"] == "deterministic" and data["backends"] == ["cpu", "cpu:1thread"]
    assert data["all_agree"] is False
    by_check = {c["check"]: c for c in data["checks"]}
    assert set(by_check) == {*rows, "lion  step"}
    lion = by_check.pop("lion  step")
    assert not lion["agree"] and lion["fingerprints"]["cpu"] != lion["fingerprints"]["cpu:1thread"]
    for check in by_check.values():
        fps = check["fingerprints"]
        assert check["agree"] and re.fullmatch("[0-9a-f]{64}", fps["cpu"]) and fps["cpu"] == fps["cpu:1thread"]


def test_a_check_that_raises_is_an_error_and_never_agrees(monkeypatch):
    real = verifier._optimizer_step

    def broken(device, kind):
        if kind == "sgd":
            raise RuntimeError("boom")
        return real(device, kind)
    monkeypatch.setattr(verifier, "_optimizer_step", broken)
    report = verifier.verify(["cpu"], steps=1, samples=["dense"])
    assert report.mismatches == ["sgd  step"]
    table = report.table()
    assert _rows(table)["sgd  step"] == "MISMATCH" and "ERROR" in table
    assert "error on cpu: sgd  step: RuntimeError: boom" in table


def test_fingerprints_see_the_last_bit_the_dtype_and_the_shape():
    w = rng.Generator(0, "test").normal((3, 4), dtype=np.float32)
    flipped = w.copy()
    flipped.view(np.uint32)[2, 3] ^= 1
    assert verifier.fingerprint(flipped) != verifier.fingerprint(w)
    assert verifier.fingerprint(w.copy()) == verifier.fingerprint(w)
    assert verifier.fingerprint(w.T) == verifier.fingerprint(np.ascontiguousarray(w.T))
    assert verifier.fingerprint(w.reshape(4, 3)) != verifier.fingerprint(w)
    assert verifier.fingerprint(w.view(np.int32)) != verifier.fingerprint(w)
    assert verifier.fingerprint(np.float32(-0.0)) != verifier.fingerprint(np.float32(0.0))

    net = loom.Network.from_config(config([{"type": "dense", "units": 3}], [4]))
    before = verifier.combined(net.state_dict())
    net.parameters()["layers.0.weight"].view(np.uint32)[-1, -1] ^= 1     # live array: the net changes
    assert verifier.combined(net.state_dict()) != before


@pytest.mark.parametrize("steps", [1, 3, 7, 12, 50])
def test_the_demo_runs_exactly_the_requested_steps(steps):
    samples, epochs = verifier.demo_plan(steps, 32)
    assert samples % 32 == 0 and samples // 32 * epochs == steps
    assert samples <= 32 * verifier.DEMO_BATCHES_PER_EPOCH


def test_fast_mode_is_named_and_does_not_leak(capsys):
    code = main(["verify", "--fast", "--device", "cpu", "--steps", "1", "--sample", "dense"])
    out = capsys.readouterr().out
    assert code in (0, 1)      # fast mode may disagree across thread counts; the subprocess ran in fast mode
    assert out.startswith("loom verify: fast mode")
    assert loom.is_deterministic()


def test_bad_arguments(capsys, tmp_path):
    assert main(["verify", "--steps", "0"]) == 3
    unwritable = str(tmp_path / "missing" / "v.json")
    assert main(["verify", "--device", "cpu", "--steps", "1", "--sample", "dense", "--json", unwritable]) == 3
    assert main(["verify", "--sample", "nosuch"]) == 3
    assert "unknown catalogue sample 'nosuch'" in capsys.readouterr().err
    assert main(["verify", "--device", "tpu"]) == 2


@pytest.mark.skipif(not NO_CUDA, reason="this machine has a GPU")
def test_cuda_asked_for_without_a_gpu_is_an_error(capsys):
    assert main(["verify", "--device", "cuda", "--sample", "dense", "--steps", "1"]) == 3
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("loom: error:")


def test_the_command_end_to_end(tmp_path):
    """`loom verify` as a user runs it, with its defaults: every backend here agrees bit-for-bit."""
    out = subprocess.run([sys.executable, "-m", "loom", "verify", "--json", str(tmp_path / "v.json")],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr
    assert out.stdout.startswith("loom verify: deterministic mode, demo trained 50 steps")
    rows = _rows(out.stdout)
    data = json.loads((tmp_path / "v.json").read_text())
    assert [c["check"] for c in data["checks"]] == list(rows)
    assert data["all_agree"] and all(c["agree"] for c in data["checks"])
    assert "demo  weights after 50 steps" in rows
    if NO_CUDA:
        assert re.search(r"^  cuda +unavailable: ", out.stdout, re.M) and "cuda" in data["unavailable"]
        assert data["backends"] == ["cpu", "cpu:1thread"]
    else:
        assert data["backends"] == ["cpu", "cpu:1thread", "cuda"]
    assert out.stdout.rstrip().endswith(f"{len(rows)} checks, {len(data['backends'])} backends: all agree bit-for-bit")


def test_a_batch_dependent_row_is_a_mismatch(monkeypatch):
    """A sample whose row changes with its batch-mates reads ERROR in its batch-invariant row."""
    def mixing(net, x, where, seed=0):
        raise loom.DeterminismError(f"{where}: the output of a sample run alone differs")
    monkeypatch.setattr(batch_invariance, "check_network", mixing)
    report = verifier.verify(["cpu"], steps=1, samples=["dense"])
    assert report.mismatches == ["dense  batch-invariant"]
    assert "run alone differs" in report.errors()[0]

"""The `loom` command, run as a user runs it: a subprocess, checking output and exit codes."""
import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def loom(*args):
    return subprocess.run([sys.executable, "-m", "loom", *args], capture_output=True, text=True, cwd=ROOT)


def test_demo_runs_and_is_reproducible():
    first, second = loom("demo"), loom("demo")
    assert first.returncode == 0, first.stderr
    assert "digits-convnet" in first.stdout and "total parameters" in first.stdout
    assert "weights and fingerprint identical" in first.stdout
    fingerprint = [line for line in first.stdout.splitlines() if "fingerprint (SHA-256" in line]
    assert len(fingerprint) == 1 and len(fingerprint[0].split()[-1]) == 64
    assert first.stdout == second.stdout


def test_info_json():
    out = loom("info", "--json")
    assert out.returncode == 0
    data = json.loads(out.stdout)
    assert data["devices"]["cpu"] == "ok" and "conv2d" in data["layer_types"]


def test_usage_errors_exit_2_with_one_line():
    for args in (["frobnicate"], ["demo", "--batch", "many"], []):
        out = loom(*args)
        assert out.returncode == 2, args
    out = loom("frobnicate")
    assert len(out.stderr.strip().splitlines()) == 1 and out.stderr.startswith("loom: usage error")


def test_bad_input_exits_3_and_debug_shows_traceback():
    out = loom("demo", "--batch", "0")
    assert out.returncode == 3
    assert out.stderr.strip() == "loom: error: --batch: expected a positive integer, got 0"
    debug = loom("--debug", "demo", "--batch", "0")
    assert debug.returncode == 3 and "Traceback" in debug.stderr


def test_packaged_demo_config_is_the_example():
    packaged = (ROOT / "loom" / "cli" / "digits-convnet.json").read_text()
    assert packaged == (ROOT / "examples" / "digits-convnet.json").read_text()
    from loom import config
    assert config.dumps(config.loads(packaged)) == packaged

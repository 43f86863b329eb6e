"""`loom bench engine` (loom/cli/bench.py over loom/engine/bench.py), run in-process on the CPU with
small sizes: the report and the JSON carry every measurement; a missing GPU or a bad suite is one line."""
from __future__ import annotations

import json

from cli_run import loom

from loom import backend
from loom.errors import BackendError


def test_bench_engine_on_the_cpu_reports_every_measurement(capsys, tmp_path):
    code, out, err = loom(capsys, "bench", "engine", "--device", "cpu", "--quick", "--json", tmp_path / "b.json")
    assert code == 0, err
    assert "us per dispatch replayed" in out and "overlap" in out
    for op in ("copy", "loom.sum deterministic", "loom.scan fast", "loom.sort", "numpy.sort"):
        assert f"| {op} |" in out
    results = json.loads((tmp_path / "b.json").read_text())
    assert results["dispatch"]["dispatches"] == 200 and results["dispatch"]["us_per_dispatch"] > 0
    assert results["swarm"]["units"] == 16 and results["swarm"]["overlap"] > 0
    assert {r["op"] for r in results["patterns"]} >= {"copy", "loom.sum fast", "numpy.cumsum"}


def test_bad_suite_and_missing_gpu_are_one_line(capsys, monkeypatch):
    code, out, err = loom(capsys, "bench", "kernels")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "engine" in err

    def no_gpu(name):
        raise BackendError("device 'cuda' needs CuPy: pip install 'loom[cuda]' (cupy-cuda12x)")
    monkeypatch.setattr(backend, "get", no_gpu)
    code, out, err = loom(capsys, "bench", "engine")
    assert code == 3 and err.strip() == "loom: error: device 'cuda' needs CuPy: pip install 'loom[cuda]' (cupy-cuda12x)"


def test_bench_online_prints_the_table_and_writes_the_page(capsys, tmp_path):
    page = tmp_path / "docs" / "online.md"
    code, out, err = loom(capsys, "bench", "online", "--ticks", 30, "--seeds", 1, "--archs", "dense,rnn",
                          "--streams", "abrupt,grid", "--modes", "NormalBP,StepTweenChain", "--markdown", page,
                          "--json", tmp_path / "o.json")
    assert code == 0, err
    assert "abrupt: accuracy (mean ± std over 1 seeds, 30 ticks)" in out and f"wrote {page}" in out
    assert "grid       rnn" in err                      # progress, one line per network and stream
    text = page.read_text()
    assert "## Conclusions" in text and "## Grid agents: goals reached per 1000 ticks" in text
    assert ("loom bench online --ticks 30 --seeds 1 --archs dense,rnn --streams abrupt,grid "
            "--modes NormalBP,StepTweenChain\n") in text
    results = json.loads((tmp_path / "o.json").read_text())
    assert len(results["runs"]) == 8 and results["meta"]["device"] == "cpu"


def test_bench_online_bad_arguments(capsys, tmp_path):
    code, out, err = loom(capsys, "bench", "online", "--ticks", 0)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--ticks" in err
    code, out, err = loom(capsys, "bench", "online", "--ticks", 10, "--modes", "StepBP,Hebbian", "--markdown", "-")
    assert code == 3 and err.strip().startswith("loom: error:") and "'Hebbian'" in err
    assert len(err.strip().splitlines()) == 1

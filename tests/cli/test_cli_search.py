"""`loom search` (loom/cli/search.py), run in-process: one line per generation, the best config
written and reproducible; one-line errors (exit 3 for a bad value, naming the flag; exit 2 for usage)."""
from __future__ import annotations

import json

import pytest
from cli_run import loom

from loom.nn import Network

ARGS = ["search", "--budget", "4000", "--population", "3", "--generations", "2", "--epochs", "1",
        "--limit", "200", "--seed", "1"]


def test_search_prints_generations_and_writes_the_best(capsys, tmp_path):
    outs = []
    for name in ("a.json", "b.json"):
        code, out, err = loom(capsys, *ARGS, "--out", tmp_path / name)
        assert code == 0, err
        lines = out.splitlines()
        assert [line.split(":")[0] for line in lines[:2]] == ["generation 0", "generation 1"]
        assert lines[2].startswith("best: accuracy") and lines[3] == f"wrote {tmp_path / name}"
        outs.append(out)
    assert outs[0] == outs[1].replace("b.json", "a.json")
    best = json.loads((tmp_path / "a.json").read_text())
    assert best == json.loads((tmp_path / "b.json").read_text())
    net = Network.from_config(best)
    assert net.root.param_count() <= 4000 and net.output_spec.shape == (10,)


@pytest.mark.parametrize("argv, flag", [
    (["--budget", "0"], "--budget"),
    (["--budget", "100"], "--budget"),                  # below flatten + dense (650)
    (["--budget", "5000", "--population", "0"], "--population"),
    (["--budget", "5000", "--generations", "0"], "--generations"),
    (["--budget", "5000", "--epochs", "0"], "--epochs"),
    (["--budget", "5000", "--seed", "-1"], "--seed"),
    (["--budget", "5000", "--limit", "2"], "--limit"),
])
def test_bad_values_are_one_line(capsys, argv, flag):
    code, out, err = loom(capsys, "search", *argv)
    assert code == 3 and len(err.splitlines()) == 1 and err.startswith(f"loom: error: {flag}:"), err


def test_usage_errors(capsys, tmp_path):
    for argv in (["search"], ["search", "--budget", "x"], ["search", "--budget", "10", "--nope"]):
        code, out, err = loom(capsys, *argv)
        assert code == 2 and err.startswith("loom: usage error:"), err
    code, out, err = loom(capsys, "search", "--budget", "5000", "--out", tmp_path)
    assert code == 3 and "--out" in err

"""Determinism spec stability: this machine's CPU fingerprints equal the golden file's, bit for bit.

tests/golden/spec{N}.json pins deterministic mode's bits (loom/spec.py says what it covers). A change
of any of them fails here, naming the checks, and is allowed only as a deliberate spec bump
(docs/determinism.md, "Spec stability"). tests/gpu/test_spec_cuda.py checks the GPU against the same file.
"""
import json
import pathlib
import re

import pytest
from catalogue import SAMPLES, config

import loom
from loom import spec
from loom.nn import losses, optim

GOLDEN = pathlib.Path(__file__).resolve().parent / "golden" / f"spec{spec.SPEC}.json"


@pytest.fixture(scope="module")
def golden() -> dict:
    assert GOLDEN.is_file(), f"{GOLDEN} is missing: write it with `python -m loom.spec --write {GOLDEN}`"
    return json.loads(GOLDEN.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def cpu_fingerprints() -> dict:
    return spec.fingerprints("cpu")


def test_cpu_fingerprints_equal_the_golden_file(golden, cpu_fingerprints):
    changed, added = spec.compare(golden["fingerprints"], cpu_fingerprints)
    assert not changed and not added, spec.explain(changed, added, "cpu", str(GOLDEN.relative_to(GOLDEN.parents[2])))


def test_the_golden_file_is_this_spec_and_well_formed(golden):
    assert list(golden) == ["spec", "fingerprints"]
    assert golden["spec"] == spec.SPEC, (f"{GOLDEN.name} says spec {golden['spec']}, loom.spec.SPEC is {spec.SPEC}")
    names = list(golden["fingerprints"])
    assert names == sorted(names)
    assert all(re.fullmatch("[0-9a-f]{64}", v) for v in golden["fingerprints"].values())
    assert GOLDEN.read_text(encoding="utf-8") == spec.dumps(golden)       # as the generator writes it


def test_loom_exports_the_spec_number():
    assert loom.DETERMINISM_SPEC == spec.SPEC


def test_the_spec_covers_every_sample_loss_optimizer_and_model(golden):
    names = set(golden["fingerprints"])
    for name, layers, shape, idt in SAMPLES:
        assert f"{name}  forward" in names
        if loom.Network.from_config(config(layers, shape, idt)).parameters():
            for opt in spec.TRAIN_OPTIMIZERS:
                assert {f"{name}  {opt} {spec.TRAIN_STEPS} steps",
                        f"{name}  {opt} {spec.TRAIN_STEPS} steps loss history"} <= names, name
    assert {f"{kind}  step" for kind in optim.TYPES} <= names
    assert {f"loss {n}  {what}" for n in losses.NAMES for what in ("value", "grad")} <= names
    assert f"demo  weights after {spec.DEMO_STEPS} steps" in names and "demo  loss history" in names
    for arch in spec.DECODERS:
        assert {f"llm {arch}  {what}" for what in ("logits", "decode logits", "greedy ids", "sampled ids")} <= names
    assert {"encoder bert  embeddings", "encoder bert  mean states"} <= names


def test_a_changed_bit_is_named_and_asks_for_a_spec_bump(golden, cpu_fingerprints):
    got = dict(cpu_fingerprints)
    got["adam  step"] = "0" * 64
    del got["llm llama  logits"]
    got["new layer  forward"] = "1" * 64
    changed, added = spec.compare(golden["fingerprints"], got)
    assert changed == ["adam  step", "llm llama  logits"] and added == ["new layer  forward"]
    text = spec.explain(changed, added, "cpu", "tests/golden/spec1.json")
    assert "  adam  step" in text and "bump the spec" in text and "CHANGELOG" in text
    assert "new layer  forward" in text


def test_write_refuses_to_overwrite_changed_bits(tmp_path, golden, cpu_fingerprints, monkeypatch, capsys):
    path = tmp_path / f"spec{spec.SPEC}.json"
    stale = {"spec": spec.SPEC, "fingerprints": {**cpu_fingerprints, "dense  forward": "0" * 64}}
    path.write_text(spec.dumps(stale), encoding="utf-8")
    monkeypatch.setattr(spec, "fingerprints", lambda device="cpu": dict(cpu_fingerprints))
    assert spec.main(["--write", str(path)]) == 1
    assert "'dense  forward'" in capsys.readouterr().err
    assert spec.main(["--write", str(path), "--force"]) == 0
    assert json.loads(path.read_text(encoding="utf-8")) == golden
    assert spec.main(["--check", str(path)]) == 0

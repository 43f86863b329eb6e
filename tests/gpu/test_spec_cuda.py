"""Determinism spec stability on the GPU: the cuda fingerprints of every spec check (loom/spec.py)
equal the golden file's, which the CPU wrote; so the GPU matches the CPU and the spec at once."""
import json
import pathlib

import pytest

from loom import spec

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("deterministic_mode")]

GOLDEN = pathlib.Path(__file__).resolve().parents[1] / "golden" / f"spec{spec.SPEC}.json"


@pytest.mark.smoke
def test_cuda_fingerprints_equal_the_golden_file():
    golden = json.loads(GOLDEN.read_text(encoding="utf-8"))
    assert golden["spec"] == spec.SPEC
    got = spec.fingerprints("cuda")
    errors = [f"{n}: {v}" for n, v in got.items() if v.startswith("error")]
    changed, added = spec.compare(golden["fingerprints"], got)
    assert not changed and not added, (spec.explain(changed, added, "cuda", f"tests/golden/{GOLDEN.name}")
                                       + "".join(f"\nerror on {e}" for e in errors))

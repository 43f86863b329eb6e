"""loom.info()["accelerations"]: which optional accelerations run in this process and mode, and why
the others do not (read from the flags their code paths check)."""
import pytest

import loom
from loom.info import accelerations, info

NAMES = ["numba", "cuda_graphs", "decode_graphs", "int8_exact_gemm", "kquant_kernels"]
NO_GPU = "device 'cuda' needs CuPy: pip install 'loom[cuda]' (cupy-cuda12x)"


def test_info_lists_every_acceleration():
    acc = info()["accelerations"]
    assert list(acc) == NAMES
    for entry in acc.values():
        assert set(entry) == {"what", "active", "reason"} and entry["what"]
        assert entry["active"] == (entry["reason"] is None)


@pytest.mark.parametrize("deterministic", [True, False])
def test_without_a_gpu_the_gpu_accelerations_say_why(deterministic):
    with loom.deterministic(deterministic):
        acc = accelerations(NO_GPU)
    for name in ("cuda_graphs", "decode_graphs", "int8_exact_gemm"):
        assert acc[name] == {"what": acc[name]["what"], "active": False, "reason": NO_GPU}, name
    kq = acc["kquant_kernels"]
    assert not kq["active"] and "GPU only: the CPU decodes Q2_K" in kq["reason"]


def test_loom_jit_0_turns_numba_off(monkeypatch):
    monkeypatch.setenv("LOOM_JIT", "0")
    assert accelerations(NO_GPU)["numba"]["reason"] == "LOOM_JIT=0"
    monkeypatch.setenv("LOOM_JIT", "1")
    from loom.backend.cpu import jit as cpu_jit
    assert accelerations(NO_GPU)["numba"]["active"] == cpu_jit.available()

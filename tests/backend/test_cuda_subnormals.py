"""loom/backend/cuda/subnormals.py wraps CuPy's compiler so that no kernel is built with -ftz=true;
checked here against a stand-in for cupy.cuda.compiler (the GPU tests check real kernels). Where that
fails, the CUDA backend refuses deterministic mode and logs once in fast mode (stand-in CuPy modules)."""
import sys
import types

import pytest

import loom
from loom import backend
from loom.backend import cuda
from loom.backend.cuda import subnormals as cuda_subnormals


def _fake_compiler():
    calls = []

    def nvrtc(source, options=(), arch=None, filename="kern.cu"):
        calls.append(("nvrtc", tuple(options)))
        return "ptx"

    def cached(source, options, arch, cache_dir, extra_source=None):
        calls.append(("key", tuple(options)))
        # as CuPy does: its own flag after the caller's, then the NVRTC call with all of them
        return compiler._compile_using_nvrtc_no_warning(source, tuple(options) + ("-ftz=true",), arch, "x.cu")

    compiler = types.SimpleNamespace(_compile_with_cache_cuda=cached, _compile_using_nvrtc_no_warning=nvrtc)
    return compiler, calls


def test_kernels_compile_without_flush_to_zero_and_under_their_own_cache_key():
    compiler, calls = _fake_compiler()
    assert cuda_subnormals.install(compiler)
    assert compiler._compile_with_cache_cuda("src", ("--fmad=false",), 90, None) == "ptx"
    (_, key), (_, sent) = calls
    assert key == ("--fmad=false", cuda_subnormals.MARKER)
    assert "-ftz=true" not in sent and "--fmad=false" in sent


def test_install_is_idempotent_and_leaves_other_compiles_alone():
    compiler, calls = _fake_compiler()
    assert cuda_subnormals.install(compiler) and cuda_subnormals.install(compiler)
    compiler._compile_with_cache_cuda("src", (), 90, None)
    assert calls[0][1].count(cuda_subnormals.MARKER) == 1
    compiler._compile_using_nvrtc_no_warning("src", ("-ftz=true",))      # not through the cache: untouched
    assert calls[-1][1] == ("-ftz=true",)


def test_unknown_compiler_internals_are_reported():
    assert not cuda_subnormals.install(types.SimpleNamespace())


def _fake_cupy():
    runtime = types.SimpleNamespace(getDeviceCount=lambda: 1)
    return types.SimpleNamespace(__version__="99.0", cuda=types.SimpleNamespace(runtime=runtime, compiler=None))


@pytest.mark.parametrize("installs, keeps, words", [(False, True, "compiler internals"),
                                                    (True, False, "gave 0")])
def test_import_remembers_why_subnormals_flush(monkeypatch, installs, keeps, words):
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy())
    monkeypatch.setattr(cuda_subnormals, "install", lambda compiler: installs)
    monkeypatch.setattr(cuda_subnormals, "check", lambda cupy: keeps)
    monkeypatch.setattr(cuda, "_FLUSHES", None)
    cuda._import_cupy()
    assert words in cuda._FLUSHES


@pytest.fixture
def flushing_gpu(monkeypatch):
    """A CUDA backend (a stand-in object) of a process where CuPy still flushes subnormals."""
    gpu = object()
    monkeypatch.setattr(cuda, "_CUDA", gpu)
    monkeypatch.setattr(cuda, "_FLUSHES", "a float32 subnormal (1e-40) times 1 on the GPU gave 0")
    return gpu


def test_deterministic_mode_refuses_a_flushing_gpu(flushing_gpu, loom_log):
    for obtain in (cuda.get, lambda: backend.get("cuda")):
        with pytest.raises(loom.DeterminismError) as err:
            obtain()
        assert "CuPy flushes float32 subnormals to zero (a float32 subnormal (1e-40)" in str(err.value)
    assert backend.available()["cuda"].startswith("device 'cuda' in deterministic mode: CuPy flushes")
    assert loom_log() == []


def test_fast_mode_uses_a_flushing_gpu_and_logs_once(flushing_gpu, loom_log):
    with loom.deterministic(False):
        assert cuda.get() is flushing_gpu and backend.get("cuda") is flushing_gpu
        assert backend.available()["cuda"] == "ok"
    assert loom_log() == [("CuPy flushes float32 subnormals to zero in this process (a float32 subnormal "
                           "(1e-40) times 1 on the GPU gave 0)")]


def test_a_gpu_that_keeps_subnormals_is_not_checked_again(monkeypatch, loom_log):
    gpu = object()
    monkeypatch.setattr(cuda, "_CUDA", gpu)
    monkeypatch.setattr(cuda, "_FLUSHES", None)
    assert cuda.get() is gpu and loom_log() == []

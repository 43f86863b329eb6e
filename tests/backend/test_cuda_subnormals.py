"""loom/backend/cuda_subnormals.py wraps CuPy's compiler so that no kernel is built with -ftz=true;
checked here against a stand-in for cupy.cuda.compiler (the GPU tests check real kernels)."""
import types

from loom.backend import cuda_subnormals


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

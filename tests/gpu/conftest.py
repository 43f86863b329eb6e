"""GPU tests run only where CuPy finds an NVIDIA GPU (the device machine); elsewhere they skip.

The suite runs in tiers of one device call each (under ten minutes): TIERS gives every module here its
tier marker, added to each test it collects, so `pytest -m gpu_llm tests/gpu` runs one tier; and every
module marks one cheap test `smoke`, so `pytest -m "gpu and smoke" tests/gpu` touches them all in under
three minutes. tests/test_gpu_tiers.py checks both on the CPU; the minutes are in ARCHITECTURE.md."""
import pathlib

import pytest

import loom
from loom import backend

REASON = backend.available()["cuda"]
HERE = pathlib.Path(__file__).resolve().parent

# Each test module's tier: a marker registered in pyproject.toml, one device call's worth of tests.
TIERS = {
    # gpu_llm: decoders CPU == GPU, the batching engine, decode and prefill graphs
    "test_batching_gpu.py": "gpu_llm",
    "test_flash_attention_gpu.py": "gpu_llm",
    "test_llm_cuda.py": "gpu_llm",
    "test_paged_decode_graph.py": "gpu_llm",
    "test_paged_decode_graph_exact.py": "gpu_llm",
    "test_exact_decode_split.py": "gpu_llm",
    "test_exact_decode_group.py": "gpu_llm",
    "test_int_attention_gpu.py": "gpu_llm",
    "test_int_decode_gpu.py": "gpu_llm",
    "test_device_sampling.py": "gpu_llm",
    "test_sliced_gemv_gpu.py": "gpu_llm",
    "test_exact_tiles_gpu.py": "gpu_llm",
    "test_exact_rows_gpu.py": "gpu_llm",
    "test_fixed_gpu.py": "gpu_llm",
    "test_fixed_planes_gemv_gpu.py": "gpu_llm",
    "test_fixed_tiled_gpu.py": "gpu_llm",
    "test_paged_prefill_graph.py": "gpu_llm",
    "test_tensor_core_products.py": "gpu_llm",
    # gpu_kernels: single kernels against NumPy or float64 references
    "test_cuda_gemv.py": "gpu_kernels",
    "test_half_gemv_gpu.py": "gpu_kernels",
    "test_paged_attention_gpu.py": "gpu_kernels",
    "test_prefill_kernels_gpu.py": "gpu_kernels",
    "test_fused_kernels.py": "gpu_kernels",
    "test_fused_exact.py": "gpu_kernels",
    "test_flash_exact_gpu.py": "gpu_kernels",
    "test_scan_kernel_gpu.py": "gpu_kernels",
    "test_window_kernels.py": "gpu_kernels",
    # gpu_exact: deterministic mode's bits, exact GEMMs and sums, the spec's fingerprints
    "test_deterministic_bits.py": "gpu_exact",
    "test_batch_invariance_cuda.py": "gpu_exact",
    "test_exact_int8.py": "gpu_exact",
    "test_exact_reductions.py": "gpu_exact",
    "test_spec_cuda.py": "gpu_exact",
    # gpu_nn: networks on the GPU, fast-mode layers, dispatch chains, training, distributed
    "test_cuda_agrees_with_cpu.py": "gpu_nn",
    "test_dispatch_chains.py": "gpu_nn",
    "test_online_gpu.py": "gpu_nn",
    "test_tween_gpu.py": "gpu_nn",
    "test_train_guard_cuda.py": "gpu_nn",
    "test_telemetry_cuda.py": "gpu_nn",
    "test_freeze_gpu.py": "gpu_nn",
    "test_train_steps_record_gpu.py": "gpu_nn",
    "test_bf16_products_gpu.py": "gpu_nn",
    "test_recurrent_gpu.py": "gpu_nn",
    "test_distributed_gpu.py": "gpu_nn",
    # gpu_engine: compute-engine units and chains, the GPU sieve, LMO (pi(2^64): 110 s)
    "test_engine_gpu.py": "gpu_engine",
    "test_lmo_gpu.py": "gpu_engine",
    "test_bucket_sieve_gpu.py": "gpu_engine",
    # gpu_sort_search: one-call patterns, radix sorts, vector search, the vector store
    "test_engine_patterns_gpu.py": "gpu_sort_search",
    "test_radix_sort_gpu.py": "gpu_sort_search",
    "test_sort_ties_gpu.py": "gpu_sort_search",
    "test_search_kernels_gpu.py": "gpu_sort_search",
    "test_search_top_gpu.py": "gpu_sort_search",
    "test_vector_store_gpu.py": "gpu_sort_search",
}


@pytest.hookimpl(tryfirst=True)      # the tier markers go on before -m deselects by them
def pytest_collection_modifyitems(config, items):
    """Every test of a module here gets its tier marker; every gpu test skips where CUDA is not usable.
    (This hook sees the whole session's items: the tiers go only on this folder's.)"""
    skip = None if REASON == "ok" else pytest.mark.skip(reason=f"no CUDA device: {REASON}")
    here: dict = {}
    for item in items:
        path = item.path
        if path not in here:
            here[path] = path.resolve().parent == HERE
        if here[path] and path.name in TIERS:
            item.add_marker(TIERS[path.name])
        if skip is not None and "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def spy(monkeypatch):
    """spy(module, names): a list that records, in order, which of module's functions `names` are
    called during the test (they still run). Proves a fused kernel ran rather than a fallback."""
    def install(module, names):
        called = []
        for name in names:
            real = getattr(module, name)

            def wrapper(*args, _real=real, _name=name, **kwargs):
                called.append(_name)
                return _real(*args, **kwargs)
            monkeypatch.setattr(module, name, wrapper)
        return called
    return install


@pytest.fixture
def deterministic_mode():
    """Deterministic mode for the whole test, whatever an earlier test left set (modules that prove
    CPU == GPU bits name it in their pytestmark)."""
    with loom.deterministic(True):
        yield

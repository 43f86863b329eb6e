"""The planes' pipelined kernel for decode batches over long rows (loom/backend/cuda/quant_fixed_planes_tiled.py):
the CPU's integer scheme's bits (loom.kernels.exact.fixed) and the decoder's array code's epilogues, for every
fragment count of x, K split over every cluster size, evenly and not, a block's chunks fewer than its stages,
rows of x and W at float32's edges, and where the dispatch sends products."""
import numpy as np
import pytest
from quant_rows import exact_reference, float32_edges

from loom import backend, fallback
from loom.errors import ShapeError
from loom.kernels.exact import fixed

from .cpu_gpu import host, same_bits
from .test_fixed_gpu import UNWRITTEN, _epilogue_case

cupy = pytest.importorskip("cupy")
from loom.backend.cuda import quant_fixed, quant_fixed_planes  # noqa: E402  (imports cupy)
from loom.backend.cuda import quant_fixed_planes_tiled as tiled  # noqa: E402

pytestmark = pytest.mark.gpu
CPU = backend.get("cpu")


@pytest.fixture(autouse=True)
def _hopper():
    if int(cupy.cuda.Device().compute_capability) < 90:
        pytest.skip("the tiled kernel's clusters need compute capability 9.0")


VARIANTS = ["wgmma", "mma.sync"]


def _tiled_only(monkeypatch, variant):
    """Products of up to 64 rows over any K below 2^16 take the tiled kernel (not cuBLAS's GEMM where the
    dispatch measured that faster), its products on wgmma or on mma.sync for every one (not where the dispatch
    measured each faster): every shape it compiles for, held to the same bits."""
    if variant == "wgmma" and not tiled._hopper():
        pytest.skip("wgmma is sm_90a code: compute capability 9.0 alone")
    monkeypatch.setattr(tiled, "ROWS", tiled.MAX_ROWS)
    monkeypatch.setattr(tiled, "SHORT_K", tiled.MAX_K)
    monkeypatch.setattr(tiled, "WGMMA", variant == "wgmma")
    monkeypatch.setattr(tiled, "WG_ALL", True)


@pytest.mark.parametrize("variant", [pytest.param("wgmma", marks=pytest.mark.smoke), "mma.sync"])
@pytest.mark.parametrize("qtype", ["BF16", "Q4_1"])
@pytest.mark.parametrize("m, cols, rows", [(8, 2048, 300), (17, 4864, 84), (33, 576, 1100), (64, 8192, 136),
                                           (48, 2048, 72), (1, 1024, 40), (5, 64, 40)])
@pytest.mark.parametrize("epilogue", ["none", "residual", "swiglu and bias"])
def test_the_tiled_kernel_gives_the_cpus_bits(variant, qtype, m, cols, rows, epilogue, monkeypatch):
    """One to four fragments of x (1, 5, 8, 17, 33, 48, 64 rows: not multiples of 16 too), K from one chunk (fewer
    than the stages) to 128, split as dispatched (76 chunks: unevenly), output rows not a multiple of a tile's,
    the epilogues, on wgmma (whose 128-value chunks leave a last half chunk at K = 64 and 576) and on mma.sync;
    against the CPU's integer scheme and the decoder's array code."""
    _tiled_only(monkeypatch, variant)
    swiglu = epilogue.startswith("swiglu")
    assert tiled.takes(m, cols, (2 if swiglu else 1) * rows, swiglu)

    def run(d, x, out, tables, stored, **epilogue_args):
        weight = quant_fixed_planes.w_planes(d, qtype, stored, cols, tables)
        quant_fixed_planes.product(d, qtype, x, out, weight, backend.get("cuda").blas, **epilogue_args)
    out, want = _epilogue_case(qtype, m, cols, rows, epilogue, np.random.default_rng(m + cols + rows), run)
    same_bits(out, want, f"{qtype}, {m} x {cols}, {rows} rows, {epilogue}")


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("split", [1, 2, 4, 8])
@pytest.mark.parametrize("m, cols, swiglu", [(40, 1024, False), (16, 4864, True), (64, 320, False)])
def test_every_split_of_k_gives_the_same_bits(variant, split, m, cols, swiglu, monkeypatch):
    """K over 1, 2, 4 and 8 blocks of a cluster, forced (4,864: 76 chunks of mma.sync's 64 values, 38 of wgmma's
    128, the last block's share shorter; 320: five chunks, or two and a half, some blocks none at 8), on rows of x
    and W at float32's edges (inf and NaN entries take IEEE's value, by one thread), SwiGLU's gate and up rows too
    (an up row alone among them), with a residual where not SwiGLU; the CPU's bits and the array code's epilogue."""
    _tiled_only(monkeypatch, variant)
    monkeypatch.setattr(tiled, "splits", lambda tiles, chunks: split)
    rng = np.random.default_rng(split + cols)
    rows = 72
    stored = 2 * rows if swiglu else rows
    x, w = float32_edges(m, stored, cols, rng)
    if swiglu:
        w[rows + 20, 7] = np.inf            # (an up row holding inf under a finite gate row)
    residual = None if swiglu else rng.standard_normal((m, rows)).astype(np.float32)
    data = cupy.asarray(w.view(np.uint8))
    weight = quant_fixed_planes.w_planes(data, "F32", stored, cols, quant_fixed.w_exponents(data, "F32", stored, cols))
    out = cupy.full((m, rows), UNWRITTEN, dtype=np.float32)
    quant_fixed_planes.product(data, "F32", cupy.asarray(x), out, weight, backend.get("cuda").blas, swiglu=swiglu,
                               residual=None if residual is None else cupy.asarray(residual))
    with np.errstate(over="ignore", invalid="ignore"):
        want = exact_reference(x, w, None, None, residual, swiglu, product=lambda a, b: fixed.matmul_t(CPU, a, b))
    same_bits(host(out), want, f"K = {cols} over {split} blocks, at float32's edges")


def test_the_dispatch_sends_decode_batches_here(monkeypatch):
    """quant_fixed_planes.product: 16 rows over K = 2,048 and 576 and 64 over 576 take the tiled kernel; 64 rows
    over 2,048, 16 over 4,096 and 8 over 608 (not whole 64-value chunks) cuBLAS's GEMM. Over K = 2,048, W's stored
    rows decide as well: 64 rows take the kernel against a SwiGLU gate_up's (not another product's of as many
    rows), 16 rows leave an lm_head's to cuBLAS, except where the kernel's products run on wgmma (which also takes
    Qwen2-0.5B's gate_up, 9,728 stored rows)."""
    wide, lm_head = tiled.LONG_WIDE_STORED, tiled.LONG_MAX_STORED + 16
    assert tiled.takes(64, 2048, wide, True) and not tiled.takes(64, 2048, wide) and tiled.takes(16, 2048, wide)
    assert tiled.takes(16, 2048, tiled.LONG_MAX_STORED) and not tiled.takes(64, 2048, lm_head)
    assert tiled.takes(64, 576, 128256) and not tiled.takes(16, 4096, wide)
    # on compute capability 9.0 the products run on wgmma for a SwiGLU's of WG_SWIGLU_STORED stored rows or more (any
    # rows, K <= 4,096), an lm_head's at up to 16 rows over K <= 2,048, which the kernel then takes (before, cuBLAS), and
    # at any rows over K <= SHORT_K;
    # on mma.sync for the rest
    hopper, swiglu_wg = tiled._hopper(), tiled.WG_SWIGLU_STORED
    assert not tiled.takes(64, 2048, swiglu_wg - 16, True) and tiled.takes(16, 2048, lm_head) == hopper
    assert tiled.takes(64, 2048, swiglu_wg, True) == hopper and tiled.wgmma_takes(64, 896, 9728, True) == hopper
    assert not tiled.wgmma_takes(1, 576, 3072, True) and tiled.wgmma_takes(64, 2048, wide, True) == hopper
    assert not tiled.wgmma_takes(16, 2048, wide) and not tiled.wgmma_takes(64, 2048, lm_head)
    assert tiled.wgmma_takes(16, 4096, wide, True) == hopper and not tiled.wgmma_takes(16, 8192, wide, True)
    assert not tiled.wgmma_takes(16, 4096, lm_head)
    # (an lm_head's over K <= SHORT_K, which the kernel takes at any rows: on wgmma at any rows, Qwen2-0.5B's)
    assert tiled.wgmma_takes(64, 896, 151936) == hopper and tiled.takes(64, 896, 151936)
    calls = []
    monkeypatch.setattr(tiled, "product", lambda *a, **k: calls.append(a[0].shape))
    rng = np.random.default_rng(3)
    for m, cols in ((16, 2048), (16, 576), (64, 576), (64, 2048), (16, 4096), (8, 608)):
        data = cupy.asarray(rng.standard_normal((40, cols)).astype(np.float32).view(np.uint8))
        weight = quant_fixed_planes.w_planes(data, "F32", 40, cols, quant_fixed.w_exponents(data, "F32", 40, cols))
        out = cupy.zeros((m, 40), dtype=np.float32)
        quant_fixed_planes.product(data, "F32", cupy.asarray(rng.standard_normal((m, cols)).astype(np.float32)), out,
                                   weight, backend.get("cuda").blas)
    assert calls == [(32, 2048), (32, 576), (128, 576)]          # (x's planes: 2 x 16 fragment rows)


@pytest.mark.parametrize("planes_shape, m", [((32, 2048), 17), ((160, 576), 64), ((32, 2080), 8), ((48, 576), 8)])
def test_the_tiled_kernel_refuses_shapes_it_does_not_compile_for(planes_shape, m):
    """More rows than x's planes hold, more than four fragments, K not whole 64-value chunks, a planes array of
    an odd fragment count: a ShapeError naming the shape, before any launch."""
    xp = cupy.zeros(planes_shape, dtype=np.int8)
    with pytest.raises(ShapeError, match=r"tiled kernel.*got planes"):
        tiled.product(xp, None, None, None, None, None, None, "BF16", None, (), m, 40, False, False)


def test_a_wgmma_form_that_does_not_compile_leaves_the_products_to_mma_sync(monkeypatch, caplog):
    """sm_90a through CuPy rests on NVRTC behaviour no documentation promises (compile.arch_module): where the wgmma
    form does not compile, the product runs on mma.sync with the same bits, says so once on the "loom" logger, and
    the dispatch stops choosing wgmma."""
    if not tiled._hopper():
        pytest.skip("wgmma is sm_90a code: compute capability 9.0 alone")
    _tiled_only(monkeypatch, "wgmma")

    def refuse(code, options, arch):
        raise cupy.cuda.compiler.CompileException("ptxas fatal: sm_90a refused (planted)", code, "planted.cu", options)
    monkeypatch.setattr(tiled, "arch_module", refuse)
    monkeypatch.setattr(tiled, "_WGMMA_FAILED", [])
    monkeypatch.setattr(fallback, "_reported", set())
    tiled._module.cache_clear()             # (else a wgmma module compiled by another test is found)
    try:
        def run(d, x, out, tables, stored, **epilogue_args):
            weight = quant_fixed_planes.w_planes(d, "BF16", stored, 576, tables)
            quant_fixed_planes.product(d, "BF16", x, out, weight, backend.get("cuda").blas, **epilogue_args)
        with caplog.at_level("WARNING", logger="loom"):
            out, want = _epilogue_case("BF16", 33, 576, 300, "swiglu and bias", np.random.default_rng(9), run)
    finally:
        tiled._module.cache_clear()
    same_bits(out, want, "mma.sync after the wgmma form failed to compile")
    assert tiled._WGMMA_FAILED and "planted" in tiled._WGMMA_FAILED[0]
    notices = [r.getMessage() for r in caplog.records if "did not compile" in r.getMessage()]
    assert len(notices) == 1 and "mma.sync" in notices[0] and "planted" in notices[0]
    assert not tiled.wgmma_takes(16, 2048, tiled.LONG_WIDE_STORED, True)

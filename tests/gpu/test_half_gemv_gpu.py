"""The 16-byte-load product for F16/BF16 rows and one or two rows of x (loom/backend/cuda/half_gemv.py,
reached through quant.gemv) against a float64 reference: every prologue and epilogue, rows not a
multiple of 256 values, an 8B model's longest row (14,336: 57 KiB of x in shared memory), one, two and
several warps a row, plain and overlapped launches."""
import numpy as np
import pytest
from quant_rows import gemv_reference, random_rows

from loom.kernels.quant import gguf as gguf_quants

cupy = pytest.importorskip("cupy")
from loom.backend.cuda import half_gemv  # noqa: E402  (imports cupy)
from loom.backend.cuda import quant as cuda_quant  # noqa: E402

pytestmark = pytest.mark.gpu
RNG = np.random.default_rng(20261124)


@pytest.mark.parametrize("qtype", ["BF16", "F16"])
@pytest.mark.parametrize("m", [1, 2])
@pytest.mark.parametrize("rows, cols", [(96, 32), (96, 4128), (1100, 800), (8200, 288), (64, 14336)])
@pytest.mark.parametrize("pro, epi", [("none", "none"), ("norm", "residual"), ("norm", "swiglu"), ("none", "bias")])
@pytest.mark.parametrize("resident", [None, 3])          # 3: every block loops over many groups of rows
def test_half_gemv_matches_float64_reference(qtype, m, rows, cols, pro, epi, resident, monkeypatch):
    monkeypatch.setattr(half_gemv, "MIN_VALUES", 0)          # the small weights of a test take this kernel too
    assert half_gemv.supports(qtype, m, cols, rows)
    if resident is not None:
        monkeypatch.setattr(half_gemv, "_resident", lambda kernel, shared: resident)
    stored = 2 * rows if epi == "swiglu" else rows
    data = random_rows(qtype, stored, cols, RNG, scale=0.01, plain=0.05)
    w = gguf_quants.dequantize(data, qtype, (stored, cols)).astype(np.float64)
    x = RNG.standard_normal((m, cols)).astype(np.float32)
    norm = (1 + 0.2 * RNG.standard_normal(cols)).astype(np.float32) if pro == "norm" else None
    bias = RNG.standard_normal(stored).astype(np.float32) if epi in ("bias", "swiglu") else None
    residual = RNG.standard_normal((m, rows)).astype(np.float32) if epi == "residual" else None
    want = gemv_reference(x, w, norm, 1e-5, bias, residual, epi == "swiglu")
    dev = {k: None if v is None else cupy.asarray(v) for k, v in dict(norm=norm, bias=bias).items()}
    results = []
    for overlap in (False, True):
        out = cupy.asarray(residual) if residual is not None else cupy.full((m, rows), np.nan, cupy.float32)
        cuda_quant.gemv(cupy.asarray(data), qtype, cupy.asarray(x), out, eps=1e-5,
                        residual=out if residual is not None else None, swiglu=epi == "swiglu", overlap=overlap, **dev)
        results.append(cupy.asnumpy(out))
    scale = np.abs(x).max() * np.abs(w).sum(axis=1).max() * (1 if norm is None else np.abs(norm).max() * 4)
    np.testing.assert_allclose(results[0], want, rtol=1e-5, atol=1e-5 * scale)
    np.testing.assert_array_equal(results[1], results[0])


def test_half_gemv_limits():
    assert half_gemv.supports("BF16", 1, 4096, 4096) and half_gemv.supports("F16", 2, 2048, 2048)
    assert not half_gemv.supports("BF16", 3, 4096, 4096)    # three rows of x: the general kernel
    assert not half_gemv.supports("Q8_0", 1, 4096, 4096)
    assert not half_gemv.supports("BF16", 2, 32768, 4096)   # x past shared memory
    assert not half_gemv.supports("BF16", 1, 576, 3072)     # a small weight: the general kernel


@pytest.mark.parametrize("wpr", [1, 2, 4, 8])
@pytest.mark.parametrize("m", [1, 2])
@pytest.mark.parametrize("rows, cols, epi", [(1101, 4128, "residual"), pytest.param(37, 800, "swiglu", marks=pytest.mark.smoke),
                                             (5, 14336, "bias")])
def test_every_warps_per_row_with_a_partial_last_group(wpr, m, rows, cols, epi, monkeypatch):
    """Forced warps a row and 3 resident blocks: rows not filling the last group, rows not a multiple of 256
    values; the output sits between guard values that must stay untouched."""
    monkeypatch.setattr(half_gemv, "MIN_VALUES", 0)
    monkeypatch.setattr(half_gemv, "_resident", lambda kernel, shared: 3)
    monkeypatch.setattr(half_gemv, "pick_wpr", lambda rows, cols, resident: wpr)
    stored = 2 * rows if epi == "swiglu" else rows
    data = random_rows("BF16", stored, cols, RNG, scale=0.01, plain=0.05)
    w = gguf_quants.dequantize(data, "BF16", (stored, cols)).astype(np.float64)
    x = RNG.standard_normal((m, cols)).astype(np.float32)
    norm = (1 + 0.2 * RNG.standard_normal(cols)).astype(np.float32)
    bias = RNG.standard_normal(stored).astype(np.float32) if epi != "residual" else None
    residual = RNG.standard_normal((m, rows)).astype(np.float32) if epi == "residual" else None
    want = gemv_reference(x, w, norm, 1e-5, bias, residual, epi == "swiglu")
    guard = 64
    buffer = cupy.full(m * rows + 2 * guard, 7.0, cupy.float32)
    out = buffer[guard:guard + m * rows].reshape(m, rows)
    if residual is not None:
        out[...] = cupy.asarray(residual)
    cuda_quant.gemv(cupy.asarray(data), "BF16", cupy.asarray(x), out, norm=cupy.asarray(norm), eps=1e-5,
                    bias=None if bias is None else cupy.asarray(bias), residual=out if residual is not None else None,
                    swiglu=epi == "swiglu", overlap=True)
    got = cupy.asnumpy(buffer)
    assert (got[:guard] == 7).all() and (got[-guard:] == 7).all()
    scale = np.abs(x).max() * np.abs(w).sum(axis=1).max() * np.abs(norm).max() * 4
    np.testing.assert_allclose(got[guard:-guard].reshape(m, rows), want, rtol=1e-5, atol=1e-5 * scale)


def test_pick_wpr_fills_the_gpu_and_keeps_warps_short():
    assert half_gemv.pick_wpr(576, 576, 528) == 4            # a small model's rows: more warps a row fill the GPU
    assert half_gemv.pick_wpr(128256, 4096, 528) == 1        # many rows: one warp a row, no cross-warp sums
    assert half_gemv.pick_wpr(4096, 14336, 528) >= 2         # no warp walks more than 32 steps of a row
    assert half_gemv.pick_wpr(100, 40000, 528) == 8

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
    assert half_gemv.supports(qtype, m, cols)
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
    assert not half_gemv.supports("BF16", 3, 256)          # three rows of x: the general kernel
    assert not half_gemv.supports("Q8_0", 1, 256)
    assert not half_gemv.supports("BF16", 2, 32768)        # x past shared memory

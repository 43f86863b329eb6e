"""Deterministic mode's decode products over K > ROUNDED_MAX_K (backend/cuda/quant_slices.py): the slice
scheme straight from the stored rows gives the CPU's exact GEMM of the decoded weight bit for bit, for
every stored type, one to MAX_ROWS rows of x, K just past the rounded scheme's, uneven and at the
longest unchunked K, with the norm prologue and every epilogue, and where rows are huge, tiny, zero,
infinite or NaN."""
import numpy as np
import pytest
from quant_rows import exact_reference, float32_edges, random_rows

from loom.kernels import exact
from loom.kernels.exact import dispatch as exact_dispatch
from loom.kernels.quant.block import BlockQuantized

from .cpu_gpu import host, same_bits

cupy = pytest.importorskip("cupy")
from loom.backend.cuda import quant as cuda_quant  # noqa: E402  (imports cupy)
from loom.backend.cuda import quant_slices  # noqa: E402

pytestmark = pytest.mark.gpu


def _run(data, qtype, x, rows, cols, norm=None, bias=None, residual=None, swiglu=False, eps=1e-5):
    """quant_slices' row maxima, slices and product of x [m, cols] (on the host) with stored rows `data`."""
    m = x.shape[0]
    d, xd = cupy.asarray(data), cupy.asarray(x)
    bits = exact.narrow_bits(cols)
    wmax = quant_slices.row_maxima(d, qtype, d.shape[0], cols)
    slices, xmax = cupy.empty((m, 2 * cols), dtype=np.float32), cupy.empty(m, dtype=np.float32)
    normed = None if norm is None else cupy.empty_like(xd)
    quant_slices.slice_rows(xd, slices, xmax, bits, norm=None if norm is None else cupy.asarray(norm), normed=normed,
                            eps=eps)
    out = cupy.empty((m, rows), dtype=np.float32)
    if residual is not None:
        out[...] = cupy.asarray(residual)
    quant_slices.gemv(d, qtype, slices, xmax, xd if normed is None else normed, wmax, out, bits,
                      bias=None if bias is None else cupy.asarray(bias), residual=None if residual is None else out,
                      swiglu=swiglu)
    return host(out), host(wmax)


def _check(qtype, m, cols, epilogue, rows):
    assert exact_dispatch.matmul_scheme(np.float32, cols) == exact_dispatch.SLICES_2X1 and cols % 256 == 0
    rng = np.random.default_rng(cols + m + len(qtype))
    swiglu = epilogue == "swiglu"
    stored_rows = 2 * rows if swiglu else rows
    data = random_rows(qtype, stored_rows, cols, rng, scale=0.01, plain=0.05)
    w = BlockQuantized(data, qtype, (stored_rows, cols)).dequantize()
    x = rng.standard_normal((m, cols)).astype(np.float32)
    x[0] *= 3e4 if m > 1 else 1.0                        # rows of other scales: their own slices
    bias = rng.standard_normal(stored_rows).astype(np.float32)
    residual = rng.standard_normal((m, rows)).astype(np.float32) if epilogue == "residual" else None
    norm = (1 + 0.1 * rng.standard_normal(cols)).astype(np.float32) if epilogue == "norm" else None
    got, wmax = _run(data, qtype, x, rows, cols, norm=norm, bias=bias, residual=residual, swiglu=swiglu)
    same_bits(wmax, np.abs(w).max(axis=1), f"{qtype} row maxima")
    same_bits(got, exact_reference(x, w, norm, bias, residual, swiglu), f"{qtype} sliced product")


@pytest.mark.parametrize("qtype", [pytest.param("F32", marks=pytest.mark.smoke)]
                         + [t for t in cuda_quant.TYPES if t != "F32"])
@pytest.mark.parametrize("m, cols, epilogue", [(1, 2304, "residual"), (3, 4864, "swiglu"), (16, 2560, "norm")])
def test_sliced_products_give_the_exact_gemm_bits(qtype, m, cols, epilogue):
    _check(qtype, m, cols, epilogue, rows=48)


@pytest.mark.parametrize("rows_per_warp", [2, 4])
@pytest.mark.parametrize("qtype, m, cols, epilogue", [("BF16", 1, 4864, "residual"), ("Q4_K", 2, 2304, "swiglu"),
                                                      ("Q8_0", 1, 8192, "norm"), ("F32", 3, 2560, "residual")])
def test_sliced_products_with_rows_of_w_in_groups(monkeypatch, rows_per_warp, qtype, m, cols, epilogue):
    """A warp taking 2 or 4 rows of W at once (the last group short: 47 rows) gives each row's bits."""
    monkeypatch.setattr(quant_slices, "ROWS_PER_WARP", rows_per_warp)
    _check(qtype, m, cols, epilogue, rows=47)


@pytest.mark.parametrize("cols, rows_per_warp", [(2080, None), (quant_slices.MAX_K, None), (2080, 4)])
def test_sliced_products_at_the_edges_of_their_scheme_and_of_float32(monkeypatch, cols, rows_per_warp):
    """K just past ROUNDED_MAX_K and the longest unchunked K; rows of x and W at float32's extremes,
    zero rows, and rows holding inf or NaN (IEEE's special values, as the exact GEMM's patch), also
    where a warp's group of rows of W mixes them with plain ones."""
    monkeypatch.setattr(quant_slices, "ROWS_PER_WARP", rows_per_warp)
    rng = np.random.default_rng(cols)
    rows, m = 40, 9
    # (x's row 1 overflows: inf from the recombination; row 2 subnormal: its slices at a tiny scale)
    x, w = float32_edges(m, rows, cols, rng)
    bias = rng.standard_normal(rows).astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        got, wmax = _run(w.view(np.uint8), "F32", x, rows, cols, bias=bias)
        want = exact_reference(x, w, None, bias, None, False)
    same_bits(wmax, np.abs(w).max(axis=1), "F32 row maxima with specials")
    same_bits(got, want, "sliced product at the edges")
    assert np.isinf(got[1]).any() and np.isnan(got[4]).any() and np.isnan(got[:, 8]).all()


def test_unsupported_sliced_products_say_why():
    assert quant_slices.MAX_K == 1 << exact_dispatch.CHUNK_BITS      # (the backend keeps its own copy)
    assert "IQ2_XS" in quant_slices.unsupported("IQ2_XS", 1, 4096)
    assert "17 rows" in quant_slices.unsupported("Q8_0", 17, 4096)
    assert "4100" in quant_slices.unsupported("Q8_0", 1, 4100)
    assert "chunks" in quant_slices.unsupported("Q8_0", 1, quant_slices.MAX_K + 32)
    assert quant_slices.unsupported("Q4_K", 16, quant_slices.MAX_K) is None

"""Deterministic mode's batched products on the float64 tensor cores (backend/cuda/quant_tiles.py): for
many rows of x at once they give the CPU's exact GEMM of the decoded weight bit for bit, in both of the
dispatch table's schemes (rounded: K <= 2048; slices: 2048 < K <= 2^14), for every stored type, rows of x
past one tile and not a multiple of it, with every epilogue, and where rows are huge, tiny, zero,
cancelling, infinite or NaN; and each row has the bits it has alone (quant_exact's one-row kernel)."""
import numpy as np
import pytest
from quant_rows import exact_reference, float32_edges, random_rows

from loom.kernels import exact
from loom.kernels.exact import dispatch as exact_dispatch
from loom.kernels.exact import rounded as exact_rounded
from loom.kernels.quant.block import BlockQuantized

from .cpu_gpu import host, same_bits

cupy = pytest.importorskip("cupy")
from loom.backend.cuda import quant as cuda_quant  # noqa: E402  (imports cupy)
from loom.backend.cuda import quant_exact, quant_slices, quant_tiles  # noqa: E402

pytestmark = pytest.mark.gpu


def _tiles(data, qtype, x, rows, cols, bias=None, residual=None, swiglu=False, splits=None):
    """quant_tiles' product of x [m, cols] (host) with stored rows `data`, in the scheme K = cols takes, K
    summed in `splits` parts (None: the device's choice, several for these small products)."""
    m = x.shape[0]
    d, xd = cupy.asarray(data), cupy.asarray(x)
    out = cupy.empty((m, rows), dtype=np.float32)
    if residual is not None:
        out[...] = cupy.asarray(residual)
    kw = dict(bias=None if bias is None else cupy.asarray(bias), residual=None if residual is None else out,
              swiglu=swiglu, splits=splits)
    if exact_dispatch.matmul_scheme(np.float32, cols) == exact_dispatch.ROUNDED:
        wnorm = quant_tiles.row_norms(d, qtype, d.shape[0], cols)
        quant_tiles.gemm(d, qtype, xd, wnorm, out, exact_rounded.error_factor(cols), **kw)
    else:
        bits = exact.narrow_bits(cols)
        wmax = quant_slices.row_maxima(d, qtype, d.shape[0], cols)
        slices, xmax = cupy.empty((m, 2 * cols), dtype=np.float32), cupy.empty(m, dtype=np.float32)
        quant_slices.slice_rows(xd, slices, xmax, bits)
        quant_tiles.sliced_gemm(d, qtype, slices, xmax, xd, wmax, out, bits, **kw)
    return host(out)


def random_product(qtype, m, cols, rows, epilogue, small, rng):
    """A product's operands: W's stored rows `data` (2 x rows for SwiGLU) and their decoded values w, x [m,
    cols] with rows of other scales (0 large, `small` tiny), and the epilogue's bias or residual (None where
    it has none)."""
    stored_rows = 2 * rows if epilogue == "swiglu" else rows
    data = random_rows(qtype, stored_rows, cols, rng, scale=0.01, plain=0.05)
    w = BlockQuantized(data, qtype, (stored_rows, cols)).dequantize()
    x = rng.standard_normal((m, cols)).astype(np.float32)
    x[0] *= 3e4
    x[small] *= 1e-3
    bias = rng.standard_normal(stored_rows).astype(np.float32) if epilogue != "residual" else None
    residual = rng.standard_normal((m, rows)).astype(np.float32) if epilogue == "residual" else None
    return data, w, x, bias, residual


@pytest.mark.parametrize("qtype", [pytest.param("BF16", marks=pytest.mark.smoke)]
                         + [t for t in cuda_quant.TYPES if t != "BF16"])
@pytest.mark.parametrize("m, cols, epilogue, splits", [(70, 768, "residual", None), (17, 1536, "swiglu", 1),
                                                       (64, 2304, "bias", None), (33, 4864, "swiglu", 1)])
def test_tile_products_give_the_exact_gemm_bits(qtype, m, cols, epilogue, splits):
    rng = np.random.default_rng(cols + m + len(qtype))
    rows = 80                                            # a tile and a part of one
    swiglu = epilogue == "swiglu"
    data, w, x, bias, residual = random_product(qtype, m, cols, rows, epilogue, 5, rng)
    got = _tiles(data, qtype, x, rows, cols, bias=bias, residual=residual, swiglu=swiglu, splits=splits)
    same_bits(got, exact_reference(x, w, None, bias, residual, swiglu), f"{qtype} tile product, {m} x {cols}")


@pytest.mark.parametrize("cols, splits", [(256, None), (2048, 1), (2048, 5), (2080, 3), (quant_tiles.MAX_K, None)])
def test_tile_products_at_the_edges_of_float32(cols, splits):
    """Rows of x and W at float32's extremes, zero and cancelling rows, rows holding inf or NaN, and
    entries built to sit on a float32 midpoint (the rounded scheme settles them); 70 rows of x."""
    rng = np.random.default_rng(cols)
    rows, m = 72, 70
    x, w = float32_edges(m, rows, cols, rng)
    x[66, 9] = -np.inf                                    # (specials in the tiles past the first)
    w[70, 0] = np.inf
    # a midpoint: 1 + 2^-24 exactly, from two products and a cancelling pair
    x[8] = 0.0
    w[11] = 0.0
    x[8, :4] = [1.0, 2.0 ** -12, 3.0, 3.0]
    w[11, :4] = [1.0, 2.0 ** -12, 1e-8, -1e-8]
    bias = rng.standard_normal(rows).astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        got = _tiles(w.view(np.uint8), "F32", x, rows, cols, bias=bias, splits=splits)
        want = exact_reference(x, w, None, bias, None, False)
    same_bits(got, want, f"tile product at the edges, K = {cols}")
    assert np.isinf(got[1]).any() and np.isnan(got[4]).any() and np.isnan(got[:, 8]).all()


@pytest.mark.parametrize("cols", [576, 2560])
def test_a_row_has_its_bits_alone_in_any_tile(cols):
    """Row 40 of a 100-row product (K in one part), the same row alone through quant_exact / quant_slices'
    one-row kernels and through the tiles as a product of one row (K split): the same bits (batch
    invariance)."""
    rng = np.random.default_rng(5)
    rows = 96
    data = random_rows("Q4_1", rows, cols, rng)
    x = rng.standard_normal((100, cols)).astype(np.float32)
    many = _tiles(data, "Q4_1", x, rows, cols, splits=1)
    one = _tiles(data, "Q4_1", x[40:41], rows, cols)
    d, xd = cupy.asarray(data), cupy.asarray(x[40:41])
    out = cupy.empty((1, rows), dtype=np.float32)
    if cols <= exact_dispatch.ROUNDED_MAX_K:
        quant_exact.gemv(d, "Q4_1", xd, out, exact_rounded.error_factor(cols))
    else:
        bits = exact.narrow_bits(cols)
        slices, xmax = cupy.empty((1, 2 * cols), dtype=np.float32), cupy.empty(1, dtype=np.float32)
        quant_slices.slice_rows(xd, slices, xmax, bits)
        quant_slices.gemv(d, "Q4_1", slices, xmax, xd, quant_slices.row_maxima(d, "Q4_1", rows, cols), out, bits)
    same_bits(many[40], one[0], "row 40 of 100 against the row alone")
    same_bits(one[0], host(out)[0], "the tiles against the one-row kernel")


def test_row_norms_and_unsupported_products():
    rng = np.random.default_rng(2)
    data = random_rows("Q8_0", 40, 512, rng)
    w = BlockQuantized(data, "Q8_0", (40, 512)).dequantize().astype(np.float64)
    norms = host(quant_tiles.row_norms(cupy.asarray(data), "Q8_0", 40, 512))
    np.testing.assert_allclose(norms, np.sqrt((w * w).sum(axis=1)), rtol=1e-14)
    assert "IQ2_XS" in quant_tiles.unsupported("IQ2_XS", 4096)
    assert "4100" in quant_tiles.unsupported("Q8_0", 4100)
    assert "chunks" in quant_tiles.unsupported("Q8_0", quant_tiles.MAX_K + 32, sliced=True)
    assert quant_tiles.unsupported("Q4_K", quant_tiles.MAX_K, sliced=True) is None


@pytest.mark.parametrize("qtype", ["Q4_K", "BF16"])
@pytest.mark.parametrize("cols", [1536, 2048, 2304, 4864, quant_tiles.MAX_K + 256])
def test_deterministic_products_of_any_rows_read_the_stored_weight(qtype, cols, monkeypatch):
    """BlockQuantized.matmul_t in deterministic mode on the GPU (a prompt chunk's products): 1, 4 rows
    (the one-row kernels), 5, 37 and 300 rows (the tiles), x C-contiguous, a strided view or misaligned
    (copied), give the CPU's bits without decoding the weight; its row norms or maxima are made once and
    kept; past one chunk of K (no tile kernel) the decoded blocks' exact GEMM gives them."""
    import loom
    rng = np.random.default_rng(cols + len(qtype))
    rows = 70
    data = random_rows(qtype, rows, cols, rng, scale=0.01)
    cpu_w, gpu_w = BlockQuantized(data, qtype, (rows, cols)), BlockQuantized(cupy.asarray(data), qtype, (rows, cols))
    in_place = cols <= quant_tiles.MAX_K
    assert gpu_w.exact_in_place() == in_place
    decoding = BlockQuantized._by_blocks

    def gpu_decoded(weight, *args):            # the block kernels, never the decoded blocks (the CPU's may)
        assert weight is cpu_w or not in_place, "the GPU's weight was decoded"
        return decoding(weight, *args)
    monkeypatch.setattr(BlockQuantized, "_by_blocks", gpu_decoded)
    big = rng.standard_normal((300, cols + 8)).astype(np.float32)
    big[3] *= 1e4
    kept = None
    with loom.deterministic(True):
        for m in (1, 4, 5, 37, 300):
            for layout in ("contiguous", "strided", "misaligned"):
                x = np.ascontiguousarray(big[:m, 8:])
                if layout == "strided":
                    xd = cupy.asarray(big)[:m, 8:]
                elif layout == "misaligned":         # C-contiguous, 4 bytes past a 16-byte boundary
                    xd = cupy.empty(m * cols + 1, dtype=np.float32)[1:].reshape(m, cols)
                    xd[...] = cupy.asarray(x)
                    assert xd.flags.c_contiguous and xd.data.ptr % 16
                else:
                    xd = cupy.asarray(x)
                same_bits(host(gpu_w.matmul_t(xd)), cpu_w.matmul_t(x), f"{qtype}, {m} x {cols}, {layout}")
                if kept is None and gpu_w.tables:
                    kept = {name: table.data.ptr for name, table in gpu_w.tables.items()}
    want = {"row_norms"} if cols <= exact_dispatch.ROUNDED_MAX_K else {"row_maxima"} if in_place else set()
    assert set(gpu_w.tables) == want
    assert {name: table.data.ptr for name, table in gpu_w.tables.items()} == (kept or {})   # made once


def _prompt_product(data, qtype, x, rows, cols, monkeypatch):
    """quant_tiles.product of x [m, cols] (host) with the backend's cuBLAS handle, as prompt chunks take
    it; asserts that it took cuBLAS's float64 GEMM (m >= DGEMM_ROWS; any size of W here)."""
    import loom
    monkeypatch.setattr(quant_tiles, "DGEMM_VALUES", 0)
    taken = []
    dgemm = quant_tiles._dgemm
    monkeypatch.setattr(quant_tiles, "_dgemm", lambda *a: taken.append(1) or dgemm(*a))
    d, xd = cupy.asarray(data), cupy.asarray(x)
    out = cupy.empty((x.shape[0], rows), dtype=np.float32)
    rounded = exact_dispatch.matmul_scheme(np.float32, cols) == exact_dispatch.ROUNDED
    assert quant_tiles.product(d, qtype, xd, out, {}, exact_rounded.error_factor(cols) if rounded else None,
                               None if rounded else exact.narrow_bits(cols), blas=loom.backend.get("cuda").blas)
    assert taken == [1]
    return host(out)


@pytest.mark.parametrize("qtype", [pytest.param("BF16", marks=pytest.mark.smoke)]
                         + [t for t in cuda_quant.TYPES if t != "BF16"])
@pytest.mark.parametrize("cols", [768, 4864])
def test_prompt_sized_products_take_the_float64_gemm_with_the_exact_bits(qtype, cols, monkeypatch):
    """From DGEMM_ROWS rows of x, W decoded to float64 and cuBLAS's float64 GEMM (any summation order:
    the rounded scheme's bound holds for any, the slices' integer sums are exact in any), then the
    tiles' finishing kernel: the exact GEMM's bits, in both schemes, for every stored type."""
    rng = np.random.default_rng(cols + len(qtype))
    rows, m = 80, quant_tiles.DGEMM_ROWS + 37
    data = random_rows(qtype, rows, cols, rng, scale=0.01, plain=0.05)
    w = BlockQuantized(data, qtype, (rows, cols)).dequantize()
    x = rng.standard_normal((m, cols)).astype(np.float32)
    x[0] *= 3e4                                          # rows of other scales
    x[5] *= 1e-3
    got = _prompt_product(data, qtype, x, rows, cols, monkeypatch)
    same_bits(got, exact_reference(x, w, None, None, None, False), f"{qtype} float64 GEMM product, {m} x {cols}")


@pytest.mark.parametrize("cols", [2048, 2080])
def test_the_float64_gemm_path_at_the_edges_of_float32(cols, monkeypatch):
    """As test_tile_products_at_the_edges_of_float32, through the float64 GEMM: extreme, zero,
    cancelling, infinite and NaN rows, and an entry on a float32 midpoint (settled)."""
    rng = np.random.default_rng(cols + 1)
    rows, m = 72, quant_tiles.DGEMM_ROWS + 6
    x, w = float32_edges(m, rows, cols, rng)
    x[m - 3, 9] = -np.inf
    w[70, 0] = np.inf
    x[8] = 0.0
    w[11] = 0.0
    x[8, :4] = [1.0, 2.0 ** -12, 3.0, 3.0]
    w[11, :4] = [1.0, 2.0 ** -12, 1e-8, -1e-8]
    with np.errstate(over="ignore", invalid="ignore"):
        got = _prompt_product(w.view(np.uint8), "F32", x, rows, cols, monkeypatch)
        want = exact_reference(x, w, None, None, None, False)
    same_bits(got, want, f"float64 GEMM product at the edges, K = {cols}")
    assert np.isinf(got[1]).any() and np.isnan(got[4]).any() and np.isnan(got[:, 8]).all()

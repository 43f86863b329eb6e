"""Deterministic mode's products of a few rows of x (batched decode steps, 1 to quant_rows.ROWS_MAX rows)
with each warp's W fragments loaded straight into registers (backend/cuda/quant_rows.py): the CPU's exact
GEMM of the decoded weight bit for bit, in both schemes, for every stored type (the nibble types give a
lane its values in another order), for every shape of the kernel's grid (x fragments 1 and 2, W fragments
1, 2 and 4, output rows past a block and not a multiple of one), every epilogue, and rows at float32's
extremes; and the bits of the tiles (quant_tiles, K split) for the same product."""
import numpy as np
import pytest
from quant_rows import exact_reference, float32_edges, random_rows

from loom.kernels.exact import dispatch as exact_dispatch

from .cpu_gpu import same_bits
from .test_exact_tiles_gpu import _tiles, random_product

cupy = pytest.importorskip("cupy")
from loom.backend.cuda import quant as cuda_quant  # noqa: E402  (imports cupy)
from loom.backend.cuda import quant_rows, quant_tiles  # noqa: E402

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("qtype", [pytest.param("BF16", marks=pytest.mark.smoke)]
                         + [t for t in cuda_quant.TYPES if t != "BF16"])
@pytest.mark.parametrize("m, cols, epilogue", [(5, 576, "residual"), (16, 1536, "swiglu"), (17, 2048, "bias"),
                                               (64, 2080, "swiglu"), (33, 4864, "residual"), (40, 576, "bias")])
def test_row_products_give_the_exact_gemm_bits(qtype, m, cols, epilogue):
    if qtype in cuda_quant.K_LAYOUTS:
        cols = -(-cols // 256) * 256                     # (whole super-blocks)
    rng = np.random.default_rng(cols + m + len(qtype))
    rows = 84                                            # past ten blocks of 8 outputs, not a multiple of 16
    swiglu = epilogue == "swiglu"
    data, w, x, bias, residual = random_product(qtype, m, cols, rows, epilogue, m - 1, rng)
    assert quant_rows.takes(m, rows, qtype)
    got = _tiles(data, qtype, x, rows, cols, bias=bias, residual=residual, swiglu=swiglu)
    want = exact_reference(x, w, None, bias, residual, swiglu)
    same_bits(got, want, f"{qtype} row product, {m} x {cols}, {epilogue}")
    split = _tiles(data, qtype, x, rows, cols, bias=bias, residual=residual, swiglu=swiglu, splits=3)
    same_bits(got, split, f"{qtype} row product against the tiles, K in 3 parts")


# (rows of x, output rows as a function of the device's multiprocessors, SwiGLU, K, stored type, the grid
# shape quant_rows.shape gives: x fragments, W fragments a warp); "few" outputs leave W fragments of 2 less
# than a block a multiprocessor on any device, so the shape keeps 1
FEW = 4
GRIDS = {"plain, W fragments 4": (32, lambda sms: 32 * sms, False, 512, "BF16", (1, 4)),
         "block type, W fragments 2": (32, lambda sms: 16 * sms, False, 512, "Q4_1", (1, 2)),
         "W fragments 1": (12, lambda sms: FEW * sms + 3, False, 512, "Q8_0", (1, 1)),
         "SwiGLU, W fragments 4": (16, lambda sms: 16 * sms, True, 512, "F16", (1, 4)),
         "SwiGLU, W fragments 2": (16, lambda sms: 300, True, 512, "Q4_0", (1, 2)),
         "four groups of x rows, 50 rows": (50, lambda sms: 4 * sms, False, 768, "Q5_1", (1, 2)),
         "sliced, x fragments 1": (8, lambda sms: FEW * sms + 3, False, 2080, "Q4_1", (1, 1)),
         "sliced, x fragments 2": (20, lambda sms: FEW * sms + 3, False, 2080, "Q8_0", (2, 1)),
         "sliced, x fragments 2, W fragments 2": (24, lambda sms: 8 * sms, False, 2080, "BF16", (2, 2))}


@pytest.mark.parametrize("case", list(GRIDS))
def test_every_grid_shape_gives_the_same_bits(case):
    """Each grid shape the kernel takes (x fragments 1 and 2, W fragments 1, 2 and 4, several groups of x
    rows, the nibble types' order among them), sized by the device's multiprocessors so that the shape is the one
    named: the tiles' bits (K in one part)."""
    m, rows_of, swiglu, cols, qtype, shape = GRIDS[case]
    rows = rows_of(quant_rows._multiprocessors())
    sliced = exact_dispatch.matmul_scheme(np.float32, cols) != exact_dispatch.ROUNDED
    assert quant_rows.takes(m, rows, qtype) and quant_rows.shape(m, rows, sliced, swiglu, qtype)[:2] == shape
    rng = np.random.default_rng(rows + m)
    stored = 2 * rows if swiglu else rows
    data = random_rows(qtype, stored, cols, rng)
    x = rng.standard_normal((m, cols)).astype(np.float32)
    got = _tiles(data, qtype, x, rows, cols, swiglu=swiglu)
    same_bits(got, _tiles(data, qtype, x, rows, cols, swiglu=swiglu, splits=1), f"{case}: grid {shape}")


@pytest.mark.parametrize("cols", [256, 2080])
def test_row_products_at_the_edges_of_float32(cols):
    """float32_edges' rows (extremes, zeros, cancelling rows, inf and NaN) and a product built to sit on a
    float32 midpoint (the rounded scheme settles it), 40 rows of x."""
    rng = np.random.default_rng(cols)
    rows, m = 72, 40
    x, w = float32_edges(m, rows, cols, rng)
    x[33, 9] = -np.inf
    w[70, 0] = np.inf
    x[8] = 0.0
    w[11] = 0.0
    x[8, :4] = [1.0, 2.0 ** -12, 3.0, 3.0]
    w[11, :4] = [1.0, 2.0 ** -12, 1e-8, -1e-8]
    assert quant_rows.takes(m, rows, "F32")
    with np.errstate(over="ignore", invalid="ignore"):
        got = _tiles(w.view(np.uint8), "F32", x, rows, cols)
        want = exact_reference(x, w, None, None, None, False)
    same_bits(got, want, f"row product at the edges, K = {cols}")
    assert np.isinf(got[1]).any() and np.isnan(got[4]).any() and np.isnan(got[:, 8]).all()
    assert quant_tiles.unsupported("F32", cols) is None


def test_grid_shapes_follow_the_rows(monkeypatch):
    """16 rows of x a block (one fragment rounded, two sliced); W fragments as many as still give every
    multiprocessor a block, 4 only for plain types in the rounded scheme; SwiGLU pairs them (the rule
    alone, for an H100's 132 multiprocessors). Past 32 rows the tiles take the wide products."""
    monkeypatch.setattr(quant_rows, "_multiprocessors", lambda: 132)
    assert quant_rows.shape(16, 64 * 132, False, False, "BF16") == (1, 4, 2 * 132)
    assert quant_rows.shape(16, 64 * 132, False, False, "Q4_1") == (1, 2, 4 * 132)
    assert quant_rows.shape(64, 64 * 132, False, False, "BF16")[:2] == (1, 4)
    assert quant_rows.shape(40, 64 * 132, True, False, "BF16")[:2] == (2, 2)
    assert quant_rows.shape(5, 576, False, False, "BF16") == (1, 1, 72)
    assert quant_rows.shape(5, 576, False, True, "BF16") == (1, 2, 72)
    assert quant_rows.takes(32, 49152, "Q8_0") and quant_rows.takes(64, 8192, "BF16")
    assert not quant_rows.takes(33, 8193, "BF16") and not quant_rows.takes(33, 3073, "Q4_1")
    assert quant_rows.takes(64, 3072, "Q4_K") and not quant_rows.takes(65, 576, "F16")
    assert not quant_rows.takes(0, 576, "BF16")

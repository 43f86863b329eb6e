"""The one-row integer products on the weights' int8 planes (backend/cuda/quant_fixed_planes_gemv.py, spec 4): the
CPU's bits (exact.fixed) for every stored type, 1 to 4 rows of x, K on both sides of 2048 and past 2^14 (x's planes
made by each block or by their own launch), every split of a row over warps, blocks taking several groups of rows,
the epilogues and the norm, float32's edges (inf and NaN rows take IEEE's value from the stored weight); the
backend's and the decode graphs' dispatch to it."""
import numpy as np
import pytest
from quant_rows import exact_reference, float32_edges, random_rows

from loom import backend
from loom.errors import ShapeError
from loom.kernels.exact import fixed
from loom.kernels.quant.block import BlockQuantized

from .cpu_gpu import host, same_bits
from .test_fixed_gpu import _epilogue_case, _norm_case

cupy = pytest.importorskip("cupy")
from loom.backend.cuda import quant as cuda_quant  # noqa: E402  (imports cupy)
from loom.backend.cuda import quant_fixed, quant_fixed_planes, quant_fixed_planes_gemv  # noqa: E402

pytestmark = pytest.mark.gpu
CPU = backend.get("cpu")
UNWRITTEN = 1234.5                  # (finite: an entry a kernel leaves unwritten fails the bit comparison)


def _force(monkeypatch, source):
    """x's planes made by each block ("block") or by their own launch ("launch"); None: as dispatched."""
    if source is not None:
        monkeypatch.setattr(quant_fixed_planes_gemv, "x_source", lambda m, k, rows: source)


def _planes_gemv(data, qtype, x, out_rows=None, **kw):
    """The planes' gemv of host x with stored rows `data` (host), its output on the host."""
    rows, cols = data.shape[0], x.shape[1]
    d = cupy.asarray(data)
    weight = quant_fixed_planes.w_planes(d, qtype, rows, cols, quant_fixed.w_exponents(d, qtype, rows, cols))
    out = cupy.full((x.shape[0], out_rows or rows), UNWRITTEN, dtype=np.float32)
    quant_fixed_planes.gemv(d, qtype, x if isinstance(x, cupy.ndarray) else cupy.asarray(x), out, weight, **kw)
    return host(out)


def _case(qtype, m, cols, rows, seed):
    """(stored rows, their values, x [m, K]): K rounded up to whole blocks of qtype, x's first row scaled up by 3e4
    and some of its last row's entries down by 1e-6."""
    if qtype in cuda_quant.K_LAYOUTS:
        cols = -(-cols // 256) * 256
    rng = np.random.default_rng(seed)
    data = random_rows(qtype, rows, cols, rng, scale=0.01, plain=0.05)
    w = BlockQuantized(data, qtype, (rows, cols)).dequantize()
    x = rng.standard_normal((m, cols)).astype(np.float32)
    x[0] *= 3e4
    x[-1, ::7] *= 1e-6
    return data, w, x


@pytest.mark.parametrize("qtype", [pytest.param("BF16", marks=pytest.mark.smoke)]
                         + [t for t in cuda_quant.TYPES if t != "BF16"])
@pytest.mark.parametrize("m, cols", [(1, 576), (2, 2048), (3, 2048), (4, 4864), (1, 8192), (2, 16896)])
def test_planes_products_give_the_cpus_bits(qtype, m, cols):
    data, w, x = _case(qtype, m, cols, 84, cols + m + len(qtype))
    same_bits(_planes_gemv(data, qtype, x), fixed.matmul_t(CPU, x, w), f"{qtype} planes product, {m} x {x.shape[1]}")


@pytest.mark.parametrize("qtype", ["Q4_1", "BF16"])
@pytest.mark.parametrize("wpr", [1, 2, 4, 8])
@pytest.mark.parametrize("m, cols, source", [(1, 576, "block"), (2, 2048, "block"), (1, 96, "block"),
                                             (4, 2080, "launch"), (3, 16896, "launch")])
def test_every_split_of_a_row_over_warps_gives_the_same_bits(qtype, wpr, m, cols, source, monkeypatch):
    """WPR warps sharing a row (a warp's step: 512 values; K = 96 leaves most lanes of one step idle), output rows
    not a multiple of a block's."""
    _force(monkeypatch, source)
    monkeypatch.setattr(quant_fixed_planes_gemv, "warps_per_row", lambda rows, k: wpr)
    data, w, x = _case(qtype, m, cols, 37, wpr + m + cols)
    same_bits(_planes_gemv(data, qtype, x), fixed.matmul_t(CPU, x, w), f"{qtype}, {wpr} warps a row, {m} x {cols}")


@pytest.mark.parametrize("cols, source", [(576, "block"), (2048, "block"), (1024, "launch")])
@pytest.mark.parametrize("swiglu", [False, True])
def test_blocks_taking_several_groups_of_rows_give_the_same_bits(cols, source, swiglu, monkeypatch):
    """A grid smaller than the output's groups of rows (one row of x: each block takes every grid-th group), with
    a norm where the blocks make x's planes."""
    _force(monkeypatch, source)
    monkeypatch.setattr(quant_fixed, "_multiprocessors", lambda: 1)
    monkeypatch.setattr(quant_fixed, "GEMV_WAVES", 3)
    monkeypatch.setattr(quant_fixed_planes_gemv, "warps_per_row", lambda rows, k: 1)
    rng = np.random.default_rng(3 + cols)
    stored = 2 * 77 if swiglu else 77                 # ten groups of eight rows on three blocks, the last group short
    assert quant_fixed.gemv_grid(77, 1, 1) == 3
    data = random_rows("Q4_1", stored, cols, rng, scale=0.01, plain=0.05)
    w = BlockQuantized(data, "Q4_1", (stored, cols)).dequantize()
    x = (rng.standard_normal((1, cols)) * 2.0).astype(np.float32)
    norm = (1.0 + 0.1 * rng.standard_normal(cols)).astype(np.float32) if source == "block" else None
    # (each group's bias and residual: the first group's prefetched into L1)
    bias = rng.standard_normal(stored).astype(np.float32)
    residual = None if swiglu else rng.standard_normal((1, 77)).astype(np.float32)
    got = _planes_gemv(data, "Q4_1", x, 77, swiglu=swiglu, norm=None if norm is None else cupy.asarray(norm), eps=1e-5,
                       bias=cupy.asarray(bias), residual=None if residual is None else cupy.asarray(residual))
    want = exact_reference(x, w, norm, bias, residual, swiglu, eps=1e-5, product=lambda a, b: fixed.matmul_t(CPU, a, b))
    same_bits(got, want, f"1 x {cols}, x by {source}, three blocks for ten groups, bias and residual")


@pytest.mark.parametrize("qtype", ["Q4_1", "BF16"])
@pytest.mark.parametrize("m", [1, 3])
@pytest.mark.parametrize("epilogue", ["bias", "residual", "swiglu", "swiglu and bias"])
def test_epilogues_give_the_array_codes_bits(qtype, m, epilogue):
    def run(d, x, out, tables, stored, **epilogue_args):
        weight = quant_fixed_planes.w_planes(d, qtype, stored, 576, tables)
        quant_fixed_planes.gemv(d, qtype, x, out, weight, **epilogue_args)
    out, want = _epilogue_case(qtype, m, 576, 72, epilogue, np.random.default_rng(len(epilogue) + m), run)
    same_bits(out, want, f"{qtype}, {epilogue}, {m} rows")


@pytest.mark.parametrize("m, cols, source", [(1, 576, "block"), (2, 2048, "block"), (1, 4096, "launch"),
                                             (3, 8192, "launch"), (2, 576, "launch")])
@pytest.mark.parametrize("overlap", [False, True])
def test_the_norm_in_the_product_gives_the_array_codes_bits(m, cols, source, overlap, monkeypatch):
    """pro(x) = rms_norm(x, norm), made by each block or by x's planes' launch (which writes the normed rows), before
    SwiGLU's gate and up products; the same through programmatic dependent launches."""
    _force(monkeypatch, source)
    rows = 40
    data, w, x, norm = _norm_case(m, cols, rows)
    normed = cupy.full((m, cols), UNWRITTEN, dtype=np.float32)
    got = _planes_gemv(data, "BF16", x, rows, swiglu=True, norm=cupy.asarray(norm), normed=normed, eps=1e-5,
                       overlap=overlap)
    want = exact_reference(x, w, norm, None, None, True, eps=1e-5, product=lambda a, b: fixed.matmul_t(CPU, a, b))
    same_bits(got, want, f"normed product, {source}, {m} x {cols}")


@pytest.mark.parametrize("qtype", ["F32", "BF16"])
@pytest.mark.parametrize("cols, source", [(256, "block"), (2048, "block"), (256, "launch"), (2080, "launch")])
def test_planes_products_at_the_edges_of_float32(qtype, cols, source, monkeypatch):
    """Rows of x and W at float32's edges (overflow, subnormals, zeros, inf and NaN: their entries IEEE's value
    from the stored weight), as quant_fixed's tests take them."""
    _force(monkeypatch, source)
    rng = np.random.default_rng(cols)
    rows, m = 72, 8
    x, w = float32_edges(m, rows, cols, rng)
    if qtype == "BF16":
        w = (w.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)
    data = w.view(np.uint8) if qtype == "F32" else (w.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
    step = quant_fixed.STAGED_ROWS if source == "block" else quant_fixed.MAX_ROWS
    got = np.concatenate([_planes_gemv(data, qtype, np.ascontiguousarray(x[s:s + step])) for s in range(0, m, step)])
    with np.errstate(over="ignore", invalid="ignore"):
        want = fixed.matmul_t(CPU, x, w)
    same_bits(got, want, f"planes product at the edges, K = {cols}")
    assert not np.isfinite(got[4]).any()               # x's row 4 holds inf


def test_rows_of_x_off_16_byte_alignment_take_the_launch():
    """x whose rows are not 16-byte aligned (the blocks' staging reads float4s) takes x's planes' launch: the same
    bits."""
    data, w, x = _case("BF16", 2, 576, 40, 5)
    buf = cupy.empty(x.size + 1, dtype=np.float32)
    shifted = buf[1:].reshape(x.shape)
    shifted[...] = cupy.asarray(x)
    assert shifted.data.ptr % 16 and shifted.flags.c_contiguous
    same_bits(_planes_gemv(data, "BF16", shifted), fixed.matmul_t(CPU, x, w), "x off alignment")


def test_the_backend_takes_the_planes_for_a_few_rows(monkeypatch):
    """BlockQuantized.matmul_t in deterministic mode: up to MAX_ROWS rows over K >= GEMV_PLANES_MIN_K on the planes
    (made once into the weight's tables), the same bits as the stored weight decoded in the loop (GEMV_PLANES off)."""
    assert quant_fixed.gemv_reads_planes("Q8_0", 2048) and not quant_fixed.gemv_reads_planes("BF16", 2048)
    rng = np.random.default_rng(9)
    data = random_rows("Q8_0", 96, 2048, rng, scale=0.01, plain=0.05)
    w = BlockQuantized(data, "Q8_0", (96, 2048)).to("cuda")
    x = cupy.asarray(rng.standard_normal((3, 2048)).astype(np.float32))
    got = host(w.matmul_t(x))
    assert "fixed_planes" in w.tables
    monkeypatch.setattr(quant_fixed, "GEMV_PLANES", False)
    w_plain = BlockQuantized(data, "Q8_0", (96, 2048)).to("cuda")
    same_bits(got, host(w_plain.matmul_t(x)), "planes against the stored weight decoded")
    assert "fixed_planes" not in w_plain.tables
    same_bits(got, fixed.matmul_t(CPU, host(x), BlockQuantized(data, "Q8_0", (96, 2048)).dequantize()), "the CPU's")


def test_bad_arguments_are_refused():
    data = cupy.zeros((8, 64 * 2), dtype=np.uint8)
    tables = quant_fixed.w_exponents(data, "BF16", 8, 64)
    weight = quant_fixed_planes.w_planes(data, "BF16", 8, 64, tables)
    with pytest.raises(ShapeError, match="1 to 4 rows"):
        quant_fixed_planes.gemv(data, "BF16", cupy.zeros((5, 64), np.float32), cupy.empty((5, 8), np.float32), weight)
    other = quant_fixed_planes.w_planes(cupy.zeros((8, 128 * 2), np.uint8), "BF16", 8, 128, tables)
    with pytest.raises(ShapeError, match="planes must be int8"):       # (planes of another K)
        quant_fixed_planes.gemv(data, "BF16", cupy.zeros((1, 64), np.float32), cupy.empty((1, 8), np.float32), other)
    fewer = quant_fixed_planes.w_planes(data[:6], "BF16", 6, 64, quant_fixed.w_exponents(data[:6], "BF16", 6, 64))
    with pytest.raises(ShapeError, match="stored rows"):       # (padded to 16 rows too: only the tables tell)
        quant_fixed_planes.gemv(data, "BF16", cupy.zeros((1, 64), np.float32), cupy.empty((1, 8), np.float32), fewer)
    with pytest.raises(ShapeError, match="out must be"):
        quant_fixed_planes.gemv(data, "BF16", cupy.zeros((1, 64), np.float32), cupy.empty((1, 7), np.float32), weight)

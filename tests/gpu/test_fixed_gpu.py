"""The integer scheme of spec 4 on the GPU (backend/cuda/quant_fixed.py): its
one-row products and its batched products on the int8 tensor cores give exact.fixed's bits (the CPU's
float64 GEMM of the integers) for every stored type, 1 to 64 rows of x, K on both sides of 2048 and past
2^14, rows of x of very different scales, every batched grid shape, and float32's edges (overflow,
subnormals, zeros, inf and NaN rows); the exponent kernels match fixed.row_exponents."""
import numpy as np
import pytest
from quant_rows import exact_reference, float32_edges, random_rows

import loom
from loom import backend
from loom.errors import ShapeError
from loom.kernels import fused
from loom.kernels.exact import fixed
from loom.kernels.quant.block import BlockQuantized

from .cpu_gpu import host, same_bits

cupy = pytest.importorskip("cupy")
from loom.backend.cuda import quant as cuda_quant  # noqa: E402  (imports cupy)
from loom.backend.cuda import quant_fixed, quant_fixed_planes, quant_fixed_planes_tiled  # noqa: E402

pytestmark = pytest.mark.gpu
CPU = backend.get("cpu")
UNWRITTEN = 1234.5                  # (finite: an entry a kernel leaves unwritten fails the bit comparison)


@pytest.fixture(autouse=True)
def _fresh_modules():
    """Modules compiled under a test's WARP_STAGE_K (_force's "whole block") are not kept for the next test."""
    yield
    quant_fixed._module.cache_clear()


def _force(monkeypatch, source):
    """gemv's x_source forced to `source` ("block", "launch", or "whole block": each block makes the integers of
    normed x with all its warps (loom_fixed_stage_held) where one warp a row would at this K; None: as dispatched)."""
    if source == "whole block":
        monkeypatch.setattr(quant_fixed, "WARP_STAGE_K", 0)
        quant_fixed._module.cache_clear()
        source = "block"
    if source is not None:
        monkeypatch.setattr(quant_fixed, "x_source", lambda m, k, rows: source)


def _scaled_case(qtype, m, cols, rows):
    """(stored rows, their decoded values, x [m, K]) for a product test: K rounded up to whole blocks of
    qtype, x's first row scaled up by 3e4 and its last down by 1e-5."""
    if qtype in cuda_quant.K_LAYOUTS:
        cols = -(-cols // 256) * 256
    rng = np.random.default_rng(cols + m + rows + len(qtype))
    data = random_rows(qtype, rows, cols, rng, scale=0.01, plain=0.05)
    w = BlockQuantized(data, qtype, (rows, cols)).dequantize()
    x = rng.standard_normal((m, cols)).astype(np.float32)
    x[0] *= 3e4
    x[-1] *= 1e-5
    return data, w, x


def _product(data, qtype, x, batched=False):
    rows = data.shape[0]
    d = cupy.asarray(data)
    tables = quant_fixed.w_exponents(d, qtype, rows, x.shape[1])
    out = cupy.full((x.shape[0], rows), UNWRITTEN, dtype=np.float32)
    (quant_fixed.rows_product if batched else quant_fixed.gemv)(d, qtype, cupy.asarray(x), out, tables)
    return host(out), tuple(host(t) for t in tables)


@pytest.mark.parametrize("qtype", [pytest.param("BF16", marks=pytest.mark.smoke)]
                         + [t for t in cuda_quant.TYPES if t != "BF16"])
@pytest.mark.parametrize("m, cols", [(1, 576), (3, 2048), (4, 4864), (2, 16896)])
def test_integer_products_give_the_cpus_bits(qtype, m, cols):
    if qtype in cuda_quant.K_LAYOUTS:
        cols = -(-cols // 256) * 256
    rng = np.random.default_rng(cols + m + len(qtype))
    rows = 84
    data = random_rows(qtype, rows, cols, rng, scale=0.01, plain=0.05)
    w = BlockQuantized(data, qtype, (rows, cols)).dequantize()
    x = rng.standard_normal((m, cols)).astype(np.float32)
    x[0] *= 3e4
    x[-1, ::7] *= 1e-6
    got, (ew, bad) = _product(data, qtype, x)
    same_bits(ew, fixed.row_exponents(np, w), f"{qtype} W exponents")
    assert not bad.any()
    same_bits(got, fixed.matmul_t(CPU, x, w), f"{qtype} integer product, {m} x {cols}")


@pytest.mark.parametrize("qtype", [pytest.param("BF16", marks=pytest.mark.smoke)]
                         + [t for t in cuda_quant.TYPES if t != "BF16"])
@pytest.mark.parametrize("m, cols, rows", [(5, 576, 84), (16, 2048, 300), (17, 4864, 40), (64, 768, 1100),
                                           (16, 16896, 24)])
def test_batched_integer_products_give_the_cpus_bits(qtype, m, cols, rows):
    """loom_fixed_rows on the int8 tensor cores: rows of x past a fragment and not a multiple of one, output
    rows past a block and not a multiple of one, K past 2^14 (the planes' largest sums)."""
    data, w, x = _scaled_case(qtype, m, cols, rows)
    cols = x.shape[1]
    got, _ = _product(data, qtype, x, batched=True)
    same_bits(got, fixed.matmul_t(CPU, x, w), f"{qtype} batched integer product, {m} x {cols}, {rows} rows")


@pytest.mark.parametrize("x_frags, w_frags", [(1, 1), (1, 2), (1, 4), (2, 1), (2, 2), (4, 1)])
def test_every_batched_grid_shape_gives_the_same_bits(x_frags, w_frags, monkeypatch):
    rng = np.random.default_rng(w_frags)
    rows, cols, m = 200, 1024, 40
    data = random_rows("Q4_1", rows, cols, rng)
    x = rng.standard_normal((m, cols)).astype(np.float32)
    monkeypatch.setattr(quant_fixed, "rows_shape", lambda m, rows, qtype, swiglu=False: (x_frags, w_frags))
    got, _ = _product(data, "Q4_1", x, batched=True)
    same_bits(got, fixed.matmul_t(CPU, x, BlockQuantized(data, "Q4_1", (rows, cols)).dequantize()),
              f"{x_frags} x fragments, {w_frags} W fragments")


@pytest.mark.parametrize("qtype", ["Q4_1", "BF16"])
@pytest.mark.parametrize("wpr", [1, 2, 4, 8])
@pytest.mark.parametrize("m, cols, source", [(1, 576, "block"), (2, 2048, "block"),
                                             (4, 2080, "launch"), (3, 16896, "launch")])
def test_every_split_of_a_row_over_warps_gives_the_same_bits(qtype, wpr, m, cols, source, monkeypatch):
    """loom_fixed_gemv's warps sharing a row (gemv_warps), x's integers made by each block or by their own
    launch, output rows not a multiple of a block's; BF16 rows take the 16-byte loads (one step of eight
    units a warp, the loads of several in flight past one row of x or two steps)."""
    _force(monkeypatch, source)
    rng = np.random.default_rng(wpr + m)
    rows = 37
    data = random_rows(qtype, rows, cols, rng, scale=0.01, plain=0.05)
    x = rng.standard_normal((m, cols)).astype(np.float32)
    monkeypatch.setattr(quant_fixed, "gemv_warps", lambda rows: wpr)
    got, _ = _product(data, qtype, x)
    same_bits(got, fixed.matmul_t(CPU, x, BlockQuantized(data, qtype, (rows, cols)).dequantize()),
              f"{qtype}, {wpr} warps a row, {m} x {cols}")


def _gemv_and_reference(qtype, x, rows, norm, swiglu, rng, scale, bias=None, residual=None):
    """(gemv's product of x with random stored rows of qtype, with rms_norm(x, norm) first where norm is given and
    the epilogue's bias [rows] and residual [m, outputs] where given, and the CPU's bits for it)."""
    m, cols = x.shape
    data = random_rows(qtype, rows, cols, rng, scale=scale, plain=0.05)
    w = BlockQuantized(data, qtype, (rows, cols)).dequantize()
    d = cupy.asarray(data)
    out = cupy.full((m, rows // (2 if swiglu else 1)), UNWRITTEN, dtype=np.float32)
    quant_fixed.gemv(d, qtype, cupy.asarray(x), out, quant_fixed.w_exponents(d, qtype, rows, cols), swiglu=swiglu,
                     norm=None if norm is None else cupy.asarray(norm),
                     normed=cupy.empty((m, cols), dtype=np.float32), eps=1e-5,
                     bias=None if bias is None else cupy.asarray(bias),
                     residual=None if residual is None else cupy.asarray(residual))
    want = exact_reference(x, w, norm, bias, residual, swiglu, eps=1e-5,
                           product=lambda a, b: fixed.matmul_t(CPU, a, b))
    return host(out), want


@pytest.mark.parametrize("qtype", ["Q4_1", "BF16"])
@pytest.mark.parametrize("cols, source", [(576, "block"), (2048, "block"), (576, "whole block"), (1024, "launch")])
@pytest.mark.parametrize("swiglu", [False, True])
def test_blocks_taking_several_groups_of_rows_give_the_same_bits(qtype, cols, source, swiglu, monkeypatch):
    """A grid smaller than the output's groups of rows (gemv_grid, one row of x: each block takes every grid-th
    group, one warp a row), x's integers made by each block once (with and without a norm) or by their own
    launch."""
    _force(monkeypatch, source)
    monkeypatch.setattr(quant_fixed, "_multiprocessors", lambda: 1)
    monkeypatch.setattr(quant_fixed, "GEMV_WAVES", 3)
    monkeypatch.setattr(quant_fixed, "gemv_warps", lambda rows: 1)
    rng = np.random.default_rng(1 + cols)
    rows = 2 * 77 if swiglu else 77                  # ten groups of eight rows on three blocks, the last group short
    assert quant_fixed.gemv_grid(rows // (2 if swiglu else 1), 1, 1) == 3
    x = (rng.standard_normal((1, cols)) * 2.0).astype(np.float32)
    norm = (1.0 + 0.1 * rng.standard_normal(cols)).astype(np.float32) if source != "launch" else None
    # (each group's bias and residual: the first group's prefetched into L1)
    bias = rng.standard_normal(rows).astype(np.float32)
    residual = None if swiglu else rng.standard_normal((1, rows)).astype(np.float32)
    got, want = _gemv_and_reference(qtype, x, rows, norm, swiglu, rng, 0.01, bias, residual)
    same_bits(got, want, f"{qtype}, 1 x {cols}, x by {source}, three blocks for ten groups, bias and residual")


@pytest.mark.parametrize("swiglu", [False, True])
def test_one_wave_caps_the_grid_at_the_kernels_resident_blocks(swiglu, monkeypatch):
    """ONE_WAVE: a one-row grid no larger than the blocks of its kernel resident on a multiprocessor at once
    (the occupancy query), here fewer than the groups of rows, so each block takes several; the same bits."""
    _force(monkeypatch, "block")
    monkeypatch.setattr(quant_fixed, "_multiprocessors", lambda: 1)
    monkeypatch.setattr(quant_fixed, "GEMV_WAVES", 64)
    monkeypatch.setattr(quant_fixed, "gemv_warps", lambda rows: 1)
    rows = 2 * 1000 if swiglu else 1000               # 125 groups of eight rows
    kernel = quant_fixed._module("Q4_1", int(swiglu), 576 // 32, 1, 1).get_function("loom_fixed_gemv_staged")
    per_sm = quant_fixed._resident_per_sm(kernel)
    assert 1 <= per_sm <= 2048 // (quant_fixed.WARPS * 32)
    assert quant_fixed.gemv_grid(1000, 1, 1, per_sm) == per_sm
    assert quant_fixed.gemv_grid(1000, 1, 1, 0) == 64
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((1, 576)) * 2.0).astype(np.float32)
    norm = (1.0 + 0.1 * rng.standard_normal(576)).astype(np.float32)
    got, want = _gemv_and_reference("Q4_1", x, rows, norm, swiglu, rng, 0.01)
    same_bits(got, want, f"{per_sm} resident blocks for 125 groups")


@pytest.mark.parametrize("qtype, cols", [("Q4_1", 576), ("Q4_1", 1024), ("Q4_K", 1024), ("Q8_0", 1024), ("F16", 992)])
@pytest.mark.parametrize("m", [1, 2])
@pytest.mark.parametrize("swiglu", [False, True])
def test_normed_rows_made_by_one_warp_give_the_cpus_bits(qtype, cols, m, swiglu, monkeypatch):
    """rms_norm(x)'s integers made by one warp a row of x in each block (K <= WARP_STAGE_K: up to 32 values a
    lane), nibble and plain stored types' lane orders, one and two rows of x (two warps)."""
    assert cols <= quant_fixed.WARP_STAGE_K
    _force(monkeypatch, "block")
    rng = np.random.default_rng(cols + m)
    x = (rng.standard_normal((m, cols)) * 4.0).astype(np.float32)
    x[-1] *= np.exp2(rng.integers(-20, 20, cols)).astype(np.float32)       # a wide spread of scales in a row
    norm = (1.0 + 0.1 * rng.standard_normal(cols)).astype(np.float32)
    got, want = _gemv_and_reference(qtype, x, 2 * 44 if swiglu else 44, norm, swiglu, rng, 0.02)
    same_bits(got, want, f"{qtype}, {m} x {cols}, normed x by one warp a row")


def _planes_product(data, qtype, x):
    rows, cols = data.shape[0], x.shape[1]
    d = cupy.asarray(data)
    weight = quant_fixed_planes.w_planes(d, qtype, rows, cols, quant_fixed.w_exponents(d, qtype, rows, cols))
    out = cupy.full((x.shape[0], rows), UNWRITTEN, dtype=np.float32)
    quant_fixed_planes.product(d, qtype, cupy.asarray(x), out, weight, backend.get("cuda").blas)
    return host(out)


@pytest.mark.parametrize("qtype", [pytest.param("BF16", marks=pytest.mark.smoke), "F16", "F32", "Q4_1", "Q8_0",
                                   "Q4_K", "Q6_K"])
@pytest.mark.parametrize("m, cols, rows", [(70, 576, 84), (256, 2048, 300), (33, 4864, 40), (40, 576, 86)])
def test_prompt_integer_products_give_the_cpus_bits(qtype, m, cols, rows):
    """The int8 GEMM of the stacked planes (cuBLAS), rows of x and W not multiples of 16 (padded); the
    finishing kernel four entries a thread, and one (86 rows: not a multiple of 4)."""
    data, w, x = _scaled_case(qtype, m, cols, rows)
    cols = x.shape[1]
    same_bits(_planes_product(data, qtype, x), fixed.matmul_t(CPU, x, w),
              f"{qtype} prompt integer product, {m} x {cols}, {rows} rows")


def _epilogue_case(qtype, m, cols, rows, epilogue, rng, run):
    """(the product's output on the host, the decoder's array code's on the CPU) for random rows of W (stored
    as qtype; SwiGLU: 2 rows of them, the gate's then the up's) and x [m, cols], with the epilogue's bias and
    residual; run(d, x, out, tables, stored, bias=, residual=, swiglu=) makes the product on the GPU."""
    swiglu = epilogue.startswith("swiglu")
    stored = 2 * rows if swiglu else rows
    data = random_rows(qtype, stored, cols, rng, scale=0.01, plain=0.05)
    w = BlockQuantized(data, qtype, (stored, cols)).dequantize()
    x = rng.standard_normal((m, cols)).astype(np.float32)
    bias = rng.standard_normal(stored).astype(np.float32) if "bias" in epilogue else None
    residual = rng.standard_normal((m, rows)).astype(np.float32) if epilogue == "residual" else None
    d = cupy.asarray(data)
    out = cupy.full((m, rows), UNWRITTEN, dtype=np.float32)
    run(d, cupy.asarray(x), out, quant_fixed.w_exponents(d, qtype, stored, cols), stored,
        bias=None if bias is None else cupy.asarray(bias), residual=None if residual is None else cupy.asarray(residual),
        swiglu=swiglu)
    want = exact_reference(x, w, None, bias, residual, swiglu, product=lambda a, b: fixed.matmul_t(CPU, a, b))
    return host(out), want


@pytest.mark.parametrize("qtype", ["Q4_1", "BF16"])
@pytest.mark.parametrize("kernel", ["one-row", "batched", "planes"])
@pytest.mark.parametrize("epilogue", ["bias", "residual", "swiglu", "swiglu and bias"])
def test_epilogues_give_the_array_codes_bits(qtype, kernel, epilogue):
    """(bias +) the product, (residual +), SwiGLU of the gate's and the up's products: the decoder's array
    code on the CPU (tests/quant_rows.exact_reference) with the integer scheme's product; in the one-row
    kernel, the int8 tensor-core kernel and the planes' finishing kernel (prompts past ROWS_MAX rows)."""
    m = {"one-row": 3, "batched": 20, "planes": 80}[kernel]

    def run(d, x, out, tables, stored, **epilogue_args):
        if kernel == "planes":
            weight = quant_fixed_planes.w_planes(d, qtype, stored, 576, tables)
            quant_fixed_planes.product(d, qtype, x, out, weight, backend.get("cuda").blas, **epilogue_args)
        else:
            (quant_fixed.rows_product if kernel == "batched" else quant_fixed.gemv)(d, qtype, x, out, tables,
                                                                                    **epilogue_args)
    out, want = _epilogue_case(qtype, m, 576, 72, epilogue, np.random.default_rng(len(epilogue) + len(kernel)), run)
    same_bits(out, want, f"{qtype}, {epilogue}, {kernel}")


def _norm_case(m, cols, rows):
    """SwiGLU's BF16 weight (2 rows: gate, then up) over cols, stored and dequantized, x [m, cols] and an RMSNorm
    weight, random from seed m + cols: the normed products' cases."""
    rng = np.random.default_rng(m + cols)
    data = random_rows("BF16", 2 * rows, cols, rng, scale=0.05)
    w = BlockQuantized(data, "BF16", (2 * rows, cols)).dequantize()
    x = (rng.standard_normal((m, cols)) * 3.0).astype(np.float32)
    norm = (1.0 + 0.1 * rng.standard_normal(cols)).astype(np.float32)
    return data, w, x, norm


@pytest.mark.parametrize("m, cols, kernel", [(1, 576, "block"), (2, 2048, "block"), (1, 4096, "launch"),
                                            (3, 8192, "launch"), (2, 576, "launch"),
                                            (20, 576, "rows"), (64, 2048, "rows"), (24, 576, "planes"),
                                            (70, 4096, "planes")])
@pytest.mark.parametrize("overlap", [False, True])
def test_the_norm_in_the_product_gives_the_array_codes_bits(m, cols, kernel, overlap, monkeypatch):
    """pro(x) = rms_norm(x, norm): made by each block of the one-row kernel, or by x's integers' launch,
    which writes the normed rows (the int8 tensor-core kernel and the planes' GEMM likewise); the same through
    programmatic dependent launches (overlap). SwiGLU (the
    gate and up product, which follows a norm in decoders). K past 2048 (x_integers' norm reads its row
    twice there)."""
    if kernel in ("block", "launch"):
        _force(monkeypatch, kernel)
    rows = 40
    data, w, x, norm = _norm_case(m, cols, rows)
    d = cupy.asarray(data)
    tables = quant_fixed.w_exponents(d, "BF16", 2 * rows, cols)
    out = cupy.full((m, rows), UNWRITTEN, dtype=np.float32)
    normed = cupy.full((m, cols), UNWRITTEN, dtype=np.float32)
    if kernel == "planes":
        weight = quant_fixed_planes.w_planes(d, "BF16", 2 * rows, cols, tables)
        quant_fixed_planes.product(d, "BF16", cupy.asarray(x), out, weight, backend.get("cuda").blas, swiglu=True,
                                   norm=cupy.asarray(norm), normed=normed, eps=1e-5, overlap=overlap)
    else:
        run = quant_fixed.rows_product if kernel == "rows" else quant_fixed.gemv
        run(d, "BF16", cupy.asarray(x), out, tables, swiglu=True, norm=cupy.asarray(norm), normed=normed, eps=1e-5,
            overlap=overlap)
    want = exact_reference(x, w, norm, None, None, True, eps=1e-5, product=lambda a, b: fixed.matmul_t(CPU, a, b))
    same_bits(host(out), want, f"normed product, {kernel}, {m} x {cols}")
    if kernel in ("rows", "launch", "planes"):
        with loom.deterministic(True):
            same_bits(normed, fused.rms_norm(x, norm, 1e-5)[0], "the normed rows")


def test_the_x_kernel_gives_the_cpus_integers():
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((4, 1000)) * np.exp2(rng.integers(-30, 30, (4, 1000)))).astype(np.float32)
    x[1] = np.float32(1.0 - 2.0 ** -20)                     # spills past 32767 at the first scale
    x[2] = 0.0
    x[3, :5] = [np.inf, 1.0, -0.0, 2.0 ** -140, -3.0]
    xq, ex, bad = (host(a) for a in quant_fixed.x_integers(cupy.asarray(x)))
    e = fixed.row_exponents(np, x)
    same_bits(ex, e, "x exponents")
    assert np.array_equal(xq.astype(np.float64), fixed.to_integers(np, x, e))
    assert bad.tolist() == [0, 0, 0, 1]
    # the nibble types' lane order: lane i's slots 4i .. 4i + 3 hold positions 2i, 2i + 1, 2i + 16, 2i + 17
    lanes = host(quant_fixed.x_integers(cupy.asarray(np.ascontiguousarray(x[:, :992])), "Q4_1")[0]).reshape(4, -1, 32)
    order = np.array([p for i in range(8) for p in (2 * i, 2 * i + 1, 2 * i + 16, 2 * i + 17)])
    natural = fixed.to_integers(np, x[:, :992], fixed.row_exponents(np, x[:, :992])).reshape(4, -1, 32)
    assert np.array_equal(lanes.astype(np.float64), natural[..., order])
    with pytest.raises(ShapeError, match="float32"):
        quant_fixed.x_integers(cupy.asarray(x.astype(np.float64)))
    # quant_fixed_planes' layout (x's order): q = 256 h + l' + 128 with h in row m, l' in row P + m, and the
    # rows' sums of q; the padding rows (P = 16 > 4) are left as they were
    planes, sums = cupy.full((32, 1000), 99, dtype=np.int8), cupy.empty(4, dtype=np.int64)
    none, pex, pbad = quant_fixed.x_integers(cupy.asarray(x), planes=(planes, sums))
    q = fixed.to_integers(np, x, e).astype(np.int64)
    p = host(planes).astype(np.int64)
    assert none is None and np.array_equal(host(pex), ex) and np.array_equal(host(pbad), bad)
    assert np.array_equal(256 * p[:4] + p[16:20] + 128, q) and np.array_equal(host(sums), q.sum(axis=1))
    assert (p[4:16] == 99).all() and (p[20:] == 99).all()
    with pytest.raises(ShapeError, match="planes"):
        quant_fixed.x_integers(cupy.asarray(x), planes=(cupy.empty((6, 1000), dtype=np.int8), sums))


@pytest.mark.parametrize("cols", [576, 1000, 1536, 4100, 8192])
def test_the_x_kernel_for_a_prompts_rows_gives_the_same_bits(cols, monkeypatch):
    """A prompt's rows (m >= X_MANY_ROWS) take x's launch in blocks of X_MANY_THREADS: the same integers,
    exponents, flags, planes, sums and normed rows as blocks of X_THREADS and as the CPU's, K on both sides of
    what those blocks hold in registers (planes to 4 X_HELD X_MANY_THREADS = 1,024 values, a row to 4,096; every
    K here, X_MANY_K lifted)."""
    rng = np.random.default_rng(cols)
    m = 6
    x = (rng.standard_normal((m, cols)) * np.exp2(rng.integers(-20, 20, (m, 1)))).astype(np.float32)
    flagged = x.copy()
    flagged[1, 3] = np.inf
    norm = (1.0 + 0.1 * rng.standard_normal(cols)).astype(np.float32)

    def run(many_rows: int) -> list:
        monkeypatch.setattr(quant_fixed, "X_MANY_ROWS", many_rows)
        monkeypatch.setattr(quant_fixed, "X_MANY_K", 1 << 20)
        planes, sums = cupy.full((16, cols), 99, dtype=np.int8), cupy.empty(m, dtype=np.int64)
        normed = cupy.full((m, cols), UNWRITTEN, dtype=np.float32)
        _, ex, bad = quant_fixed.x_integers(cupy.asarray(x), norm=cupy.asarray(norm), normed=normed, eps=1e-5,
                                            planes=(planes, sums))
        return [host(a) for a in (planes, sums, normed, ex, bad, *quant_fixed.x_integers(cupy.asarray(flagged)))]

    blocks, many = run(0), run(m)
    for a, b, what in zip(blocks, many, ("planes", "sums", "normed", "exponents", "flags", "xq", "x's exponents",
                                         "x's flags")):
        assert a.dtype == b.dtype and np.array_equal(a.view(np.uint8), b.view(np.uint8)), what
    planes, sums, normed, ex, bad, xq, fex, fbad = many
    with loom.deterministic(True):
        same_bits(normed, fused.rms_norm(x, norm, 1e-5)[0], "the normed rows")
    same_bits(ex, fixed.row_exponents(np, normed), "the normed rows' exponents")
    q = fixed.to_integers(np, normed, fixed.row_exponents(np, normed)).astype(np.int64)
    p = planes.astype(np.int64)
    assert np.array_equal(256 * p[:m] + p[8:8 + m] + 128, q) and np.array_equal(sums, q.sum(axis=1))
    e = fixed.row_exponents(np, flagged)
    same_bits(fex, e, "x exponents")
    assert np.array_equal(xq.astype(np.float64), fixed.to_integers(np, flagged, e))
    assert fbad.tolist() == [0, 1, 0, 0, 0, 0] and bad.tolist() == [0] * m


@pytest.mark.parametrize("epilogue", ["residual", "swiglu and bias"])
def test_the_planes_finishing_kernels_agree(epilogue, monkeypatch):
    """The finishing kernel four entries a thread (16-byte loads and store) against one entry a thread, on
    rows of x and W at float32's edges (entries holding inf or NaN take the one-thread IEEE value), and x's
    planes made from rows that do not start 16-byte aligned (the x kernel's one-value loop)."""
    rng = np.random.default_rng(7)
    m, rows, cols = 32, 72, 256
    monkeypatch.setattr(quant_fixed_planes_tiled, "TILED", False)         # (cuBLAS's GEMM, then the finish)
    monkeypatch.setattr(quant_fixed_planes, "FINISH_FOUR", True)
    x, w = float32_edges(m, 2 * rows, cols, rng)
    data = cupy.asarray(w.view(np.uint8))
    swiglu = epilogue.startswith("swiglu")
    stored = 2 * rows if swiglu else rows
    data = data[:stored]
    weight = quant_fixed_planes.w_planes(data, "F32", stored, cols, quant_fixed.w_exponents(data, "F32", stored, cols))
    args = {"residual": cupy.asarray(rng.standard_normal((m, rows)).astype(np.float32)) if not swiglu else None,
            "bias": cupy.asarray(rng.standard_normal(stored).astype(np.float32)) if swiglu else None, "swiglu": swiglu}
    spare = cupy.zeros(m * cols + 1, dtype=np.float32)
    shifted = spare[1:].reshape(m, cols)                # C-contiguous, 4 bytes past a 16-byte boundary
    shifted[...] = cupy.asarray(x)
    got = {}
    for four, xs in ((True, cupy.asarray(x)), (False, cupy.asarray(x)), (True, shifted)):
        monkeypatch.setattr(quant_fixed_planes, "FINISH_FOUR", four)
        out = cupy.full((m, rows), UNWRITTEN, dtype=np.float32)
        with np.errstate(over="ignore", invalid="ignore"):
            quant_fixed_planes.product(data, "F32", xs, out, weight, backend.get("cuda").blas, **args)
        got[four, xs is shifted] = host(out)
    same_bits(got[True, False], got[False, False], f"{epilogue}: four entries a thread against one")
    same_bits(got[True, True], got[False, False], f"{epilogue}: x's rows not 16-byte aligned")
    assert not np.isfinite(got[True, False][4]).all()              # x's row 4 holds inf


@pytest.mark.parametrize("qtype", ["F32", "BF16"])
@pytest.mark.parametrize("cols, source", [(256, "block"), (2048, "block"), (256, "launch"), (2080, "launch")])
def test_integer_products_at_the_edges_of_float32(qtype, cols, source, monkeypatch):
    """Rows of x and W at float32's edges (tests/quant_rows.float32_edges: overflow, subnormals, zeros, inf
    and NaN); as BF16 rows too (their values truncated to bfloat16, float32's exponent range: the one-row
    kernel's 16-byte loads at every edge)."""
    _force(monkeypatch, source)
    rng = np.random.default_rng(cols)
    rows, m = 72, 8
    x, w = float32_edges(m, rows, cols, rng)
    if qtype == "BF16":
        w = (w.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)      # (the reference takes these values)
    data = w.view(np.uint8) if qtype == "F32" else (w.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
    got = []
    step = quant_fixed.STAGED_ROWS if source == "block" else quant_fixed.MAX_ROWS
    for start in range(0, m, step):
        part, _ = _product(data, qtype, np.ascontiguousarray(x[start:start + step]))
        got.append(part)
    with np.errstate(over="ignore", invalid="ignore"):
        want = fixed.matmul_t(CPU, x, w)
    same_bits(np.concatenate(got), want, f"integer product at the edges, K = {cols}")
    assert not np.isfinite(np.concatenate(got)[4]).any()               # x's row 4 holds inf
    batched, _ = _product(data, qtype, x, batched=True)
    same_bits(batched, want, f"batched integer product at the edges, K = {cols}")
    same_bits(_planes_product(data, qtype, x), want, f"prompt integer product at the edges, K = {cols}")


@pytest.mark.parametrize("source", ["block", "whole block", "launch", "planes"])
def test_the_norm_at_the_edges_of_float32_gives_the_array_codes_bits(source, monkeypatch):
    """rms_norm's exact sum of squares with squares that overflow (inf), underflow, rows of zeros and rows
    holding inf and NaN, where each block makes x's integers and where their launch does; a wide spread of
    scales within a row."""
    rng = np.random.default_rng(11)
    rows, cols = 24, 512
    x, w = float32_edges(8, rows, cols, rng)
    w = np.clip(np.where(np.isfinite(w), w, 0.0) * 1e-3, -1.0, 1.0).astype(np.float32)
    x[0] *= np.exp2(rng.integers(-60, 60, cols)).astype(np.float32)
    x[2, :3] = [1e20, -3e19, 0.0]                   # squares past float32's largest: an inf sum
    x[3, 9] = np.float32(1e-30)                      # one value in a row of zeros
    norm = (1.0 + 0.1 * rng.standard_normal(cols)).astype(np.float32)
    data = w.view(np.uint8)
    d = cupy.asarray(data)
    tables = quant_fixed.w_exponents(d, "F32", rows, cols)
    got = []
    if source == "planes":                      # (the planes' tiled kernel, x's planes by x's kernel)
        out = cupy.full((8, rows), UNWRITTEN, dtype=np.float32)
        weight = quant_fixed_planes.w_planes(d, "F32", rows, cols, tables)
        with np.errstate(over="ignore", invalid="ignore"):
            quant_fixed_planes.product(d, "F32", cupy.asarray(x), out, weight, backend.get("cuda").blas,
                                       norm=cupy.asarray(norm), normed=cupy.empty((8, cols), dtype=np.float32), eps=1e-6)
        got.append(host(out))
    else:
        _force(monkeypatch, source)
    for start in range(0, 8 if not got else 0, quant_fixed.STAGED_ROWS):
        rows_x = x[start:start + quant_fixed.STAGED_ROWS]
        out = cupy.full((len(rows_x), rows), UNWRITTEN, dtype=np.float32)
        normed = cupy.empty((len(rows_x), cols), dtype=np.float32)
        quant_fixed.gemv(d, "F32", cupy.asarray(np.ascontiguousarray(rows_x)), out, tables,
                         norm=cupy.asarray(norm), normed=normed, eps=1e-6)
        got.append(host(out))
    with np.errstate(over="ignore", invalid="ignore"):
        want = exact_reference(x, w, norm, None, None, False, eps=1e-6,
                               product=lambda a, b: fixed.matmul_t(CPU, a, b))
    same_bits(np.concatenate(got), want, f"normed product at the edges, x's integers by {source}")


@pytest.mark.parametrize("qtype", ["F32", "F16", "BF16"])
@pytest.mark.parametrize("m", [1, 12, 70])
def test_float_weights_of_widths_past_whole_units_give_the_cpus_bits(qtype, m):
    """A float weight's rows need not be whole 32-value units (the decoder's float32 weights [N, 48] of
    loom.spec's tiny decoders): the integer kernels refuse them and the rows decode through the array
    code, not the unit decode kernels (which read whole units), in both modes."""
    rng = np.random.default_rng(m + len(qtype))
    rows, cols = 40, 48
    w = BlockQuantized(random_rows(qtype, rows, cols, rng, scale=0.01, plain=0.05), qtype, (rows, cols))
    x = rng.standard_normal((m, cols)).astype(np.float32)
    dense = w.dequantize()
    on_gpu = w.to("cuda")
    same_bits(host(on_gpu.dequantize()), dense, f"{qtype} [{rows}, {cols}] decoded")
    same_bits(host(on_gpu.matmul_t(cupy.asarray(x))), fixed.matmul_t(CPU, x, dense),
              f"{qtype} [{rows}, {cols}] integer product, {m} rows")
    with loom.deterministic(False):
        got = host(on_gpu.matmul_t(cupy.asarray(x)))
    assert np.max(np.abs(got - x @ dense.T)) <= 1e-2 * np.max(np.abs(x @ dense.T))


def test_bad_arguments_are_refused():
    data = cupy.zeros((8, 64 * 2), dtype=np.uint8)
    x = cupy.zeros((5, 64), dtype=np.float32)
    tables = quant_fixed.w_exponents(data, "BF16", 8, 64)
    with pytest.raises(Exception, match="1 to 4 rows"):
        quant_fixed.gemv(data, "BF16", x, cupy.empty((5, 8), np.float32), tables)
    with pytest.raises(Exception, match="multiple of 256"):
        quant_fixed.w_exponents(cupy.zeros((8, 144), np.uint8), "Q4_K", 8, 128)

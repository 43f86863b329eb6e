"""The decode step's block-quantized products (loom/backend/cuda_quant.gemv) against a float64 NumPy reference
with every prologue and epilogue, x staged in shared memory and read from global memory (long rows of x),
misaligned inputs, and launched plainly or overlapping the previous kernel (loom/backend/cuda/launch.py): the
overlapped launch gives the same bits, eagerly and inside a recorded graph."""
import numpy as np
import pytest
from quant_rows import gemv_reference, random_rows

from loom.errors import BackendError
from loom.kernels.quant import gguf as gguf_quants

cupy = pytest.importorskip("cupy")
from loom.backend import cuda as cuda_backend  # noqa: E402  (imports cupy)
from loom.backend.cuda import launch as cuda_launch  # noqa: E402
from loom.backend.cuda import quant as cuda_quant  # noqa: E402

pytestmark = pytest.mark.gpu

RNG = np.random.default_rng(20261121)


def _weight(qtype, rows, cols):
    """uint8 rows of `qtype` with finite, varied scales, and their float64 values."""
    data = random_rows(qtype, rows, cols, RNG, scale=0.01, plain=0.05)
    return data, gguf_quants.dequantize(data, qtype, (rows, cols)).astype(np.float64)


@pytest.mark.parametrize("qtype", ["Q4_1", "Q8_0", "Q5_0", "BF16", "F32", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"])
@pytest.mark.parametrize("m, cols", [(1, 256), (3, 1536), (16, 1536)])     # 16 x 1536: x too long to stage
@pytest.mark.parametrize("pro, epi", [("none", "none"), ("norm", "residual"), ("norm", "swiglu"), ("none", "bias")])
def test_gemv_matches_float64_reference(qtype, m, cols, pro, epi):
    rows = 96 if epi != "swiglu" else 2 * 48
    data, w = _weight(qtype, rows, cols)
    x = RNG.standard_normal((m, cols)).astype(np.float32)
    norm = (1 + 0.2 * RNG.standard_normal(cols)).astype(np.float32) if pro == "norm" else None
    bias = RNG.standard_normal(rows).astype(np.float32) if epi in ("bias", "swiglu") else None
    out_rows = rows // 2 if epi == "swiglu" else rows
    residual = RNG.standard_normal((m, out_rows)).astype(np.float32) if epi == "residual" else None
    want = gemv_reference(x, w, norm, 1e-5, bias, residual, epi == "swiglu")
    dev = {k: None if v is None else cupy.asarray(v) for k, v in dict(norm=norm, bias=bias).items()}
    results = []
    for overlap in (False, True):
        out = cupy.asarray(residual) if residual is not None else cupy.empty((m, out_rows), cupy.float32)
        cuda_quant.gemv(cupy.asarray(data), qtype, cupy.asarray(x), out, eps=1e-5, residual=out if residual is not None
                        else None, swiglu=epi == "swiglu", overlap=overlap, **dev)
        results.append(cupy.asnumpy(out))
    scale = np.abs(x).max() * np.abs(w).sum(axis=1).max() * (1 if norm is None else np.abs(norm).max() * 4)
    np.testing.assert_allclose(results[0], want, rtol=1e-5, atol=1e-5 * scale)
    np.testing.assert_array_equal(results[1], results[0])         # overlapping launch: same kernel, same bits


@pytest.mark.parametrize("qtype", cuda_quant.TYPES)
def test_one_kernel_decode_gives_the_cpu_decoders_bits(qtype):
    """quant.dequantize and embed (the GPU's decoder for prefill, lookups and the decode step's embedding) on
    random bytes, scale fields included (inf and NaN scales decode as IEEE says): gguf.py's bits."""
    block, size = gguf_quants.BLOCKS[qtype]
    cols = max(block, 32) * 3
    raw = RNG.integers(0, 256, (37, gguf_quants.row_nbytes(qtype, cols)), dtype=np.uint8)
    want = gguf_quants.dequantize(raw, qtype, (37, cols))
    got = cupy.empty((37, cols), cupy.float32)
    cuda_quant.dequantize(cupy.asarray(raw), qtype, got)
    nan = np.isnan(want)
    np.testing.assert_array_equal(np.isnan(cupy.asnumpy(got)), nan)
    np.testing.assert_array_equal(cupy.asnumpy(got).view(np.uint32)[~nan], want.view(np.uint32)[~nan])
    ids = np.array([36, 0, 5, 5, 17], dtype=np.int64)
    rows = cupy.empty((5, cols), cupy.float32)
    cuda_quant.embed(cupy.asarray(raw), qtype, cupy.asarray(ids), rows)
    np.testing.assert_array_equal(np.isnan(cupy.asnumpy(rows)), nan[ids])
    np.testing.assert_array_equal(cupy.asnumpy(rows).view(np.uint32)[~nan[ids]], want[ids].view(np.uint32)[~nan[ids]])


@pytest.mark.parametrize("qtype", ["BF16", "Q4_K", "Q8_0"])
@pytest.mark.parametrize("rows", [1100, 2100, 8200])    # two warps a row, one (the tests above: four)
@pytest.mark.parametrize("m", [1, 2])                   # one row past 4096 warps: blocks of WIDE_THREADS
def test_gemv_with_fewer_warps_per_row(qtype, rows, m):
    data, w = _weight(qtype, rows, 512)
    x = RNG.standard_normal((m, 512)).astype(np.float32)
    norm = (1 + 0.1 * RNG.standard_normal(512)).astype(np.float32)
    residual = RNG.standard_normal((m, rows)).astype(np.float32)
    out = cupy.asarray(residual)
    cuda_quant.gemv(cupy.asarray(data), qtype, cupy.asarray(x), out, norm=cupy.asarray(norm), eps=1e-5,
                    residual=out)
    want = gemv_reference(x, w, norm, 1e-5, None, residual, False)
    scale = np.abs(x).max() * np.abs(w).sum(axis=1).max()
    np.testing.assert_allclose(cupy.asnumpy(out), want, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.smoke
def test_gemv_reads_misaligned_x_and_norm_correctly():
    data, w = _weight("Q4_1", 64, 256)
    big = cupy.asarray(RNG.standard_normal(2 * 256 + 1).astype(np.float32))
    x = big[1:1 + 2 * 256].reshape(2, 256)                        # contiguous, 4 bytes past a 16-byte boundary
    norm_big = cupy.asarray((1 + 0.1 * RNG.standard_normal(257)).astype(np.float32))
    norm = norm_big[1:]
    out = cupy.empty((2, 64), cupy.float32)
    cuda_quant.gemv(cupy.asarray(data), "Q4_1", x, out, norm=norm, eps=1e-5)
    want = gemv_reference(cupy.asnumpy(x), w, cupy.asnumpy(norm), 1e-5, None, None, False)
    np.testing.assert_allclose(cupy.asnumpy(out), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


_CHAIN = cuda_launch.OVERLAP_PROLOGUE + r"""
extern "C" __global__ void step(const float* src, float* dst, int n, float add) {
    wait_for_previous_kernel();
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dst[i] = src[(i + 1) % n] + add;       // reads another block's element of the previous output
}
"""


def test_overlapped_launches_see_the_previous_kernels_writes_eagerly_and_recorded():
    kernel = cupy.RawModule(code=_CHAIN).get_function("step")
    n, steps = 1 << 16, 40
    start = RNG.standard_normal(n).astype(np.float32)
    bufs = [cupy.asarray(start), cupy.empty(n, cupy.float32)]

    def chain():
        for s in range(steps):
            cuda_launch.launch(kernel, n // 256, 256, (bufs[s % 2], bufs[(s + 1) % 2], np.int32(n), np.float32(s)),
                               overlap=True)
    want = start.copy()
    for s in range(steps):
        want = np.roll(want, -1) + np.float32(s)
    chain()
    np.testing.assert_array_equal(cupy.asnumpy(bufs[steps % 2]), want)
    be = cuda_backend.get()
    bufs[0][...] = cupy.asarray(start)
    graph, _ = be.record(chain)
    graph.launch()
    np.testing.assert_array_equal(cupy.asnumpy(bufs[steps % 2]), want)


def test_an_argument_the_driver_cannot_take_is_a_backend_error():
    kernel = cupy.RawModule(code=_CHAIN).get_function("step")
    a = cupy.zeros(256, cupy.float32)
    with pytest.raises(BackendError, match="float"):
        cuda_launch.launch(kernel, 1, 256, (a, a, np.int32(256), 1.5), True)

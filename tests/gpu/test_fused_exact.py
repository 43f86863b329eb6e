"""Deterministic mode's fused CUDA kernels (loom/backend/cuda/fused_exact.py) give the bits of fused.py's
reference on the CPU: norms, softmaxes, GELU and bias + activation, and their gradients, on fresh random
inputs of several row lengths, on wide-dynamic-range rows, and on rows holding infinities, NaNs,
signed zeros and subnormals. A spy checks that the fused kernel ran (not the GPU reference), and every
kernel records into a CUDA graph."""
import numpy as np
import pytest

cupy = pytest.importorskip("cupy")

from loom import backend  # noqa: E402
from loom.backend.cuda import fused_exact as cuda_fused_exact  # noqa: E402
from loom.kernels import fused  # noqa: E402

from .cpu_gpu import same_bits  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("deterministic_mode")]

# (softmax rows of 33 to fused_exact.WARP_ROWS_MAX = 512 entries, and their gradients' up to WARP_GRAD_ROWS_MAX =
# 512, take a warp a row, longer ones up to HELD_ROWS_MAX = 4,096 a block holding the row: both sides of each end,
# and of 1,024 and 2,048, where a thread's entries go from 4 to 8 to 16)
ROW_SHAPES = [(1,), (4, 1), (3, 7), (2, 3, 33), (3, 512), (2, 513), (5, 1000), (3, 1024), (2, 1025), (3, 2048),
              (2, 2049), (2, 4096), (2, 4097), (2, 2, 3, 256)]
KINDS = ["normal", "wide", "specials"]


@pytest.fixture
def cuda():
    return backend.get("cuda")


@pytest.fixture
def ran(spy):
    """The names of cuda_fused_exact's functions called during the test."""
    return spy(cuda_fused_exact, ("softmax", "scaled_masked_softmax", "softmax_grad", "layer_norm", "layer_norm_grad",
                                  "rms_norm", "rms_norm_grad", "gelu", "gelu_grad", "bias_act"))


def _values(rng, shape, kind, dtype=np.float32):
    x = rng.standard_normal(shape)
    if kind == "wide":
        x = x * np.exp2(rng.integers(-30, 31, shape))
    x = x.astype(dtype)
    if kind == "specials" and x.size >= 4:
        flat = x.reshape(-1)
        picks = rng.choice(flat.size, size=min(flat.size, 8), replace=False)
        specials = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, 1e-40, -3e-42, 2.0 ** -126], dtype)
        flat[picks] = specials[:picks.size]
        if x.ndim >= 2 and x.shape[0] > 1:
            x[-1] = x[-1] * dtype(1e-38)                  # a row of subnormals and tiny normals
    return x


def _both(cuda, fn, *arrays, **kw):
    """fn on the CPU arrays and on their GPU copies: (gpu results, cpu results) as tuples."""
    cpu = fn(*arrays, **kw)
    gpu = fn(*[a if a is None else cuda.asarray(a) for a in arrays], **kw)
    wrap = (lambda r: r if isinstance(r, tuple) else (r,))
    return wrap(gpu), wrap(cpu)


def _same(gpu, cpu, what):
    for i, (g, c) in enumerate(zip(gpu, cpu)):
        same_bits(g, c, f"{what} output {i}")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", ROW_SHAPES)
def test_softmax_and_grad(cuda, ran, shape, kind):
    rng = np.random.default_rng(1)
    x, dy = _values(rng, shape, kind), _values(rng, shape, kind)
    gpu, cpu = _both(cuda, fused.softmax, x)
    _same(gpu, cpu, f"softmax {shape} {kind}")
    y = cpu[0]
    gpu, cpu = _both(cuda, fused.softmax_grad, y, dy)
    _same(gpu, cpu, f"softmax_grad {shape} {kind}")
    assert {"softmax", "softmax_grad"} <= set(ran)


def test_row_lengths_take_their_kernels(monkeypatch):
    """The softmax shapes above reach the kernel each length is meant for: a warp a row, a block holding the row
    (4, 8 or 16 entries a thread), the block kernel."""
    taken = []
    kernel = cuda_fused_exact._row_kernel
    monkeypatch.setattr(cuda_fused_exact, "_row_kernel", lambda name, held=0: taken.append((name, held)) or
                        kernel(name, held))
    for n in (33, 512, 513, 1024, 1025, 2048, 2049, 4096, 4097):
        y = cuda_fused_exact.softmax(cupy.ones((2, n), dtype=np.float32))
        cuda_fused_exact.softmax_grad(y, y)
    assert taken == [("loom_exact_softmax_rows_warp", 2), ("loom_exact_softmax_grad_rows_warp", 2),
                     ("loom_exact_softmax_rows_warp", 16), ("loom_exact_softmax_grad_rows_warp", 16),
                     ("loom_exact_softmax_rows_held", 4), ("loom_exact_softmax_grad_rows_held", 4),
                     ("loom_exact_softmax_rows_held", 4), ("loom_exact_softmax_grad_rows_held", 4),
                     ("loom_exact_softmax_rows_held", 8), ("loom_exact_softmax_grad_rows_held", 8),
                     ("loom_exact_softmax_rows_held", 8), ("loom_exact_softmax_grad_rows_held", 8),
                     ("loom_exact_softmax_rows_held", 16), ("loom_exact_softmax_grad_rows_held", 16),
                     ("loom_exact_softmax_rows_held", 16), ("loom_exact_softmax_grad_rows_held", 16),
                     ("loom_exact_softmax_rows", 0), ("loom_exact_softmax_grad_rows", 0)]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("causal, tq, tk, offset", [(False, 5, 7, 0), (True, 6, 6, 0), (True, 4, 9, 5),
                                                    (True, 5, 3, -2), (True, 40, 300, 0), (True, 9, 1024, -4),
                                                    (True, 8, 1000, 600), (True, 7, 3000, 2993),
                                                    (True, 5, 4096, 1500)])
def test_scaled_masked_softmax(cuda, ran, causal, tq, tk, offset, kind):
    rng = np.random.default_rng(2)
    scores = _values(rng, (2, 3, tq, tk), kind)
    gpu, cpu = _both(cuda, fused.scaled_masked_softmax, scores, scale=0.125, causal=causal, offset=offset)
    _same(gpu, cpu, f"scaled_masked_softmax causal={causal} offset={offset} {kind}")
    assert ran == ["scaled_masked_softmax"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("affine", ["none", "weight", "bias", "both"])
@pytest.mark.parametrize("shape", ROW_SHAPES)
def test_layer_norm_and_grad(cuda, ran, shape, affine, kind):
    rng = np.random.default_rng(3)
    n = shape[-1]
    x, dy = _values(rng, shape, kind), _values(rng, shape, "normal")
    w = _values(rng, (n,), "normal") if affine in ("weight", "both") else None
    b = _values(rng, (n,), "normal") if affine in ("bias", "both") else None
    gpu, cpu = _both(cuda, fused.layer_norm, x, w, b, eps=1e-5)
    _same(gpu, cpu, f"layer_norm {shape} {affine} {kind}")
    _, xhat, rstd = cpu
    gpu, cpu = _both(cuda, fused.layer_norm_grad, dy, xhat, rstd, w)
    _same(gpu, cpu, f"layer_norm_grad {shape} {affine} {kind}")
    assert ran == ["layer_norm", "layer_norm_grad"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("shape", ROW_SHAPES)
def test_rms_norm_and_grad(cuda, ran, shape, weighted, kind):
    rng = np.random.default_rng(4)
    x, dy = _values(rng, shape, kind), _values(rng, shape, "normal")
    w = _values(rng, (shape[-1],), "normal") if weighted else None
    gpu, cpu = _both(cuda, fused.rms_norm, x, w, eps=1e-6)
    _same(gpu, cpu, f"rms_norm {shape} {weighted} {kind}")
    _, xhat, rstd = cpu
    gpu, cpu = _both(cuda, fused.rms_norm_grad, dy, xhat, rstd, w)
    _same(gpu, cpu, f"rms_norm_grad {shape} {weighted} {kind}")
    assert ran == ["rms_norm", "rms_norm_grad"]


@pytest.mark.parametrize("dtype", [pytest.param(np.float32, marks=pytest.mark.smoke), np.float64])
@pytest.mark.parametrize("kind", KINDS)
def test_gelu_and_grad(cuda, ran, kind, dtype):
    rng = np.random.default_rng(5)
    x = _values(rng, (3, 1000), kind, dtype) * dtype(4)
    dy = _values(rng, (3, 1000), "normal", dtype)
    gpu, cpu = _both(cuda, fused.gelu, x)
    _same(gpu, cpu, f"gelu {kind} {dtype.__name__}")
    gpu, cpu = _both(cuda, fused.gelu_grad, x, dy)
    _same(gpu, cpu, f"gelu_grad {kind} {dtype.__name__}")
    assert ran == ["gelu", "gelu_grad"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("fn", ["gelu", "gelu_tanh", "silu", "sigmoid", "tanh"])
def test_bias_act(cuda, ran, fn, with_bias, dtype):
    rng = np.random.default_rng(6)
    z = _values(rng, (4, 257), "specials", dtype) * dtype(6)
    bias = _values(rng, (257,), "normal", dtype) if with_bias else None
    cpu = fused.bias_act(z.copy(), bias, fn)
    gpu = fused.bias_act(cuda.asarray(z), None if bias is None else cuda.asarray(bias), fn)
    _same(gpu, cpu, f"bias + {fn} {dtype.__name__}")
    assert ran == ["bias_act"]


def test_float64_rows_run_the_reference_with_the_cpu_bits(cuda, ran):
    """exact.sum's float64 scheme is not in the row kernels: float64 rows take the reference path."""
    rng = np.random.default_rng(7)
    x = _values(rng, (3, 65), "wide", np.float64)
    gpu, cpu = _both(cuda, fused.layer_norm, x, None, None, eps=1e-5)
    _same(gpu, cpu, "float64 layer_norm")
    gpu, cpu = _both(cuda, fused.softmax, x)
    _same(gpu, cpu, "float64 softmax")
    assert ran == []


def test_every_kernel_records_into_a_cuda_graph(cuda):
    """No kernel synchronizes or copies to the host: recorded once, a replay gives the eager bits."""
    rng = np.random.default_rng(8)
    x = cuda.asarray(_values(rng, (8, 33), "normal"))
    g = cuda.asarray(_values(rng, (8, 33), "normal"))
    w, b = cuda.asarray(_values(rng, (33,), "normal")), cuda.asarray(_values(rng, (33,), "normal"))
    s = cuda.asarray(_values(rng, (2, 5, 7), "normal"))

    def run(z):
        y, xhat, rstd = fused.layer_norm(x, w, b, 1e-5)
        r, rhat, rr = fused.rms_norm(x, w, 1e-6)
        p = fused.softmax(x)
        return [y, xhat, rstd, fused.layer_norm_grad(g, xhat, rstd, w), r, fused.rms_norm_grad(g, rhat, rr, w),
                fused.gelu(x), fused.gelu_grad(x, g), p, fused.softmax_grad(p, g),
                fused.scaled_masked_softmax(s, 0.5, True, -1), *fused.bias_act(z, b, "gelu")]

    eager = [a.copy() for a in run(x.copy())]          # compiles every kernel before the recording
    z = x.copy()
    graph, recorded = cuda.record(lambda: run(z))
    graph.launch()
    cuda.synchronize()
    for i, (e, r) in enumerate(zip(eager, recorded)):
        same_bits(r, cuda.to_numpy(e), f"output {i} replayed")

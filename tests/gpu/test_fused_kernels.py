"""The fused CUDA kernels (loom/backend/cuda/fused.py, reached through loom.kernels.fused with CuPy
arrays) against fused.py's NumPy reference on the CPU, on fresh random inputs: relative error (max abs
difference over max abs value) below 1e-5 in float32 and 1e-12 in float64. Optimizer updates are built
from + - * / sqrt only, in the reference's order, so they must also give the CPU's bits; Python floats and
0-d device arrays as their scalars give the same bits; gradients are left untouched; masked attention
entries are exactly 0; and every kernel records into a CUDA graph."""
import math

import numpy as np
import pytest

import loom
from loom import backend
from loom.kernels import fused

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def fast_mode():
    """The fused kernels are fast mode's; deterministic mode runs the reference."""
    with loom.deterministic(False):
        yield
TOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}
DTYPES = [np.float32, np.float64]
SEEDS = [0, 1, 2]
# (float32 softmax rows up to fused.WARP_ROWS = 512 entries take a warp a row, up to HELD_ROWS = 4,096 a block
# holding the row: both sides of each end and of 32, 1,024 and 2,048, where a thread's entries double)
ROW_SHAPES = [(1,), (4, 1), (3, 7), (3, 32), (2, 3, 33), (3, 512), (2, 513), (5, 1000), (2, 1024), (2, 1025),
              (3, 2048), (2, 2049), (2, 4096), (2, 4097), (2, 2, 3, 256)]
FUNCTIONS = ("gelu", "gelu_grad", "bias_act", "softmax", "softmax_grad", "scaled_masked_softmax", "layer_norm",
             "layer_norm_grad", "rms_norm", "rms_norm_grad", "adam_update", "sgd_update")


@pytest.fixture(scope="module")
def cuda():
    b = backend.get("cuda")
    kernels = getattr(b, "fused", None)
    assert kernels is not None, "CUDABackend has no `fused` attribute: fused.py would run the reference"
    missing = [f for f in FUNCTIONS if not callable(getattr(kernels, f, None))]
    assert not missing, f"CUDABackend.fused lacks {missing}"
    return b


def _normal(rng, shape, dtype, scale=1.0):
    return (rng.normal(size=shape) * scale).astype(dtype)


def _close(cuda, gpu, cpu, what, floor=0.0):
    """Relative error against the largest reference value (at least `floor`: activations whose
    tail is a cancellation, like gelu_tanh far below 0, are compared in absolute terms near 0)."""
    got = cuda.to_numpy(gpu)
    assert got.dtype == cpu.dtype and got.shape == cpu.shape, f"{what}: {got.dtype} {got.shape} vs {cpu.dtype} {cpu.shape}"
    if not cpu.size:
        return
    scale = max(float(np.max(np.abs(cpu))), float(np.finfo(cpu.dtype).tiny), floor)
    err = float(np.max(np.abs(got.astype(np.float64) - cpu.astype(np.float64)))) / scale
    assert err < TOL[cpu.dtype], f"{what}: relative error {err:.3g} (tolerance {TOL[cpu.dtype]:g})"


def _bits(a, b, what):
    assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), f"{what}: bits differ"


# --- activations -----------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", ROW_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_gelu_and_grad(cuda, dtype, shape, seed):
    rng = np.random.default_rng(seed)
    x, dy = _normal(rng, shape, dtype, 3), _normal(rng, shape, dtype)
    _close(cuda, fused.gelu(cuda.asarray(x)), fused.gelu(x), "gelu")
    _close(cuda, fused.gelu_grad(cuda.asarray(x), cuda.asarray(dy)), fused.gelu_grad(x, dy), "gelu_grad")


@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("shape", [(1,), (3, 7), (2, 3, 33), (4, 4097)])
@pytest.mark.parametrize("fn", fused.BIAS_ACTIVATIONS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_act(cuda, dtype, fn, shape, with_bias):
    rng = np.random.default_rng(len(shape) * 7 + shape[-1])
    z = _normal(rng, shape, dtype, 3)
    bias = _normal(rng, shape[-1:], dtype) if with_bias else None
    ref_saved, ref_y = fused.bias_act(z.copy(), bias, fn)
    saved, y = fused.bias_act(cuda.asarray(z), None if bias is None else cuda.asarray(bias), fn)
    _close(cuda, y, ref_y, f"{fn} y", floor=1.0)
    _close(cuda, saved, ref_saved, f"{fn} saved", floor=1.0)
    assert (saved is y) == (ref_saved is ref_y)


# --- softmax ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", ROW_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_and_grad(cuda, dtype, shape, seed):
    rng = np.random.default_rng(seed)
    x, dy = _normal(rng, shape, dtype, 4), _normal(rng, shape, dtype)
    y = fused.softmax(x)
    _close(cuda, fused.softmax(cuda.asarray(x)), y, "softmax")
    _close(cuda, fused.softmax_grad(cuda.asarray(y), cuda.asarray(dy)), fused.softmax_grad(y, dy), "softmax_grad")


@pytest.mark.parametrize("tq, tk, offset", [(7, 7, 0), (5, 9, 4), (6, 4, -2), (3, 1, 0), (4, 33, -9),
                                            (16, 1000, 0), (3, 4097, 2000), (256, 256, 0), (4, 2000, 1990),
                                            (3, 2000, -1)])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_scaled_masked_softmax(cuda, dtype, causal, tq, tk, offset):
    rng = np.random.default_rng(tq * 10007 + tk)
    s = _normal(rng, (2, 3, tq, tk), dtype, 5)
    scale = 1 / math.sqrt(64)
    ref = fused.scaled_masked_softmax(s, scale, causal, offset)
    got = fused.scaled_masked_softmax(cuda.asarray(s), scale, causal, offset)
    _close(cuda, got, ref, "scaled masked softmax")
    if causal:
        p = cuda.to_numpy(got)
        masked = np.arange(tk)[None, :] > np.arange(tq)[:, None] + offset
        assert np.all(p[..., masked] == 0) and not np.any(np.signbit(p[..., masked])), "masked entries not +0"
        empty = masked.all(axis=-1)
        assert not np.any(p[..., empty, :]), "a query with no key left must be all 0"


def test_softmax_row_lengths_take_their_kernels(cuda, monkeypatch):
    """float32 softmax rows (and their gradients') take a warp a row up to WARP_ROWS entries, a block holding the
    row up to HELD_ROWS, the block kernels past it and in float64."""
    from loom.backend.cuda import fused as cuda_fused
    taken = []
    kernel = cuda_fused._row_kernel
    monkeypatch.setattr(cuda_fused, "_row_kernel", lambda dtype, name, held=0: taken.append((name, held)) or
                        kernel(dtype, name, held))
    for n in (1, 33, 512, 513, 1024, 1025, 2049, 4097):
        y = fused.softmax(cuda.asarray(np.ones((2, n), dtype=np.float32)))
        fused.softmax_grad(y, y)
    fused.softmax(cuda.asarray(np.ones((2, 5), dtype=np.float64)))
    assert taken == [("loom_softmax_rows_warp", 1), ("loom_softmax_grad_rows_warp", 1),
                     ("loom_softmax_rows_warp", 2), ("loom_softmax_grad_rows_warp", 2),
                     ("loom_softmax_rows_warp", 16), ("loom_softmax_grad_rows_warp", 16),
                     ("loom_softmax_rows_held", 4), ("loom_softmax_grad_rows_held", 4),
                     ("loom_softmax_rows_held", 4), ("loom_softmax_grad_rows_held", 4),
                     ("loom_softmax_rows_held", 8), ("loom_softmax_grad_rows_held", 8),
                     ("loom_softmax_rows_held", 16), ("loom_softmax_grad_rows_held", 16),
                     ("loom_softmax_rows", 0), ("loom_softmax_grad_rows", 0), ("loom_softmax_rows", 0)]


# --- norms -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("shape", ROW_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_layer_norm_and_grad(cuda, dtype, shape, affine, seed):
    rng = np.random.default_rng(seed)
    x, dy = _normal(rng, shape, dtype, 2) + dtype(0.5), _normal(rng, shape, dtype)
    w, b = (_normal(rng, shape[-1:], dtype), _normal(rng, shape[-1:], dtype)) if affine else (None, None)
    gw, gb = (cuda.asarray(w), cuda.asarray(b)) if affine else (None, None)
    ref = fused.layer_norm(x, w, b, 1e-5)
    got = fused.layer_norm(cuda.asarray(x), gw, gb, 1e-5)
    for name, g, r in zip(("y", "xhat", "rstd"), got, ref):
        _close(cuda, g, r, f"layer_norm {name}")
    _, xhat, rstd = ref
    _close(cuda, fused.layer_norm_grad(cuda.asarray(dy), cuda.asarray(xhat), cuda.asarray(rstd), gw),
           fused.layer_norm_grad(dy, xhat, rstd, w), "layer_norm_grad")


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("weighted", [True, False], ids=["weight", "no_weight"])
@pytest.mark.parametrize("shape", ROW_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_and_grad(cuda, dtype, shape, weighted, seed):
    rng = np.random.default_rng(seed)
    x, dy = _normal(rng, shape, dtype, 2), _normal(rng, shape, dtype)
    w = _normal(rng, shape[-1:], dtype) if weighted else None
    gw = cuda.asarray(w) if weighted else None
    ref = fused.rms_norm(x, w, 1e-6)
    got = fused.rms_norm(cuda.asarray(x), gw, 1e-6)
    for name, g, r in zip(("y", "xhat", "rstd"), got, ref):
        _close(cuda, g, r, f"rms_norm {name}")
    _, xhat, rstd = ref
    _close(cuda, fused.rms_norm_grad(cuda.asarray(dy), cuda.asarray(xhat), cuda.asarray(rstd), gw),
           fused.rms_norm_grad(dy, xhat, rstd, w), "rms_norm_grad")


# --- optimizers --------------------------------------------------------------------------------------

# (b1, b2, eps, l2, wd for decay, amsgrad): b1 = 0.3 takes torch.lerp's second form.
ADAM_CASES = [(0.9, 0.999, 1e-8, 0.0, 0.0, False), (0.9, 0.999, 1e-8, 0.1, 0.0, False),
              (0.3, 0.9, 1e-6, 0.0, 0.0, True), (0.9, 0.999, 1e-8, 0.0, 0.01, False),
              (0.8, 0.99, 1e-7, 0.0, 0.05, True)]
OPT_SHAPES = [(1,), (33, 7), (1 << 20,)]
LR = 0.01


def _adam_steps(cuda, case, shape, dtype, device_scalars, seed=0, steps=3):
    """(p, m, v, vmax) after `steps` updates: on the CPU reference when cuda is None, else on the GPU
    (with optimizer scalars as 0-d device arrays when device_scalars). Gradients must stay untouched."""
    b1, b2, eps, l2, wd, amsgrad = case
    dtype = np.dtype(dtype)
    rng = np.random.default_rng(seed)
    state = [_normal(rng, shape, dtype), np.zeros(shape, dtype), np.zeros(shape, dtype),
             np.zeros(shape, dtype) if amsgrad else None]
    if cuda is not None:
        state = [None if a is None else cuda.asarray(a) for a in state]
    p, m, v, vmax = state
    for t in range(1, steps + 1):
        g = _normal(rng, shape, dtype)
        g_dev = g if cuda is None else cuda.asarray(g)
        step_size = LR / (1 - b1 ** t)
        bc2_sqrt = math.sqrt(1 - b2 ** t)
        decay = 1 - LR * wd if wd else None
        if device_scalars:
            step_size, bc2_sqrt = cuda.asarray(np.asarray(step_size, dtype)), cuda.asarray(np.asarray(bc2_sqrt, dtype))
            decay = None if decay is None else cuda.asarray(np.asarray(decay, dtype))
        fused.adam_update(p, g_dev, m, v, vmax, step_size, bc2_sqrt, b1, b2, eps, l2, decay)
        after = g_dev if cuda is None else cuda.to_numpy(g_dev)
        _bits(after, g, "gradient given to adam_update")
    return [None if a is None else (a if cuda is None else cuda.to_numpy(a)) for a in (p, m, v, vmax)]


@pytest.mark.parametrize("shape", OPT_SHAPES)
@pytest.mark.parametrize("case", ADAM_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_adam_update(cuda, dtype, case, shape):
    ref = _adam_steps(None, case, shape, dtype, False)
    floats = _adam_steps(cuda, case, shape, dtype, False)
    arrays = _adam_steps(cuda, case, shape, dtype, True)
    for name, r, f, a in zip(("p", "m", "v", "vmax"), ref, floats, arrays):
        if r is None:
            continue
        _close(cuda, f, r, f"adam {name}")
        _bits(f, a, f"adam {name}: Python floats vs 0-d device arrays")


@pytest.mark.parametrize("case", ADAM_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_adam_update_gives_the_cpu_bits(cuda, dtype, case):
    """Every operation is one correctly rounded IEEE operation in the reference's order (no FMA)."""
    ref = _adam_steps(None, case, (4099,), dtype, False, seed=9)
    got = _adam_steps(cuda, case, (4099,), dtype, False, seed=9)
    for name, r, g in zip(("p", "m", "v", "vmax"), ref, got):
        if r is not None:
            _bits(g, r, f"adam {name}")


# (momentum, dampening, nesterov, wd)
SGD_CASES = [(0.0, 0.0, False, 0.0), (0.0, 0.0, False, 0.01), (0.9, 0.0, False, 0.0), (0.9, 0.3, False, 0.02),
             (0.8, 0.0, True, 0.0)]


def _sgd_steps(cuda, case, shape, dtype, device_lr, seed=0, steps=3):
    momentum, dampening, nesterov, wd = case
    dtype = np.dtype(dtype)
    rng = np.random.default_rng(seed)
    p, buf = _normal(rng, shape, dtype), (np.zeros(shape, dtype) if momentum else None)
    if cuda is not None:
        p, buf = cuda.asarray(p), None if buf is None else cuda.asarray(buf)
    lr = cuda.asarray(np.asarray(LR, dtype)) if device_lr else LR
    for t in range(1, steps + 1):
        g = _normal(rng, shape, dtype)
        g_dev = g if cuda is None else cuda.asarray(g)
        fused.sgd_update(p, g_dev, buf, lr, momentum, dampening, nesterov, wd, t == 1)
        _bits(g_dev if cuda is None else cuda.to_numpy(g_dev), g, "gradient given to sgd_update")
    return [None if a is None else (a if cuda is None else cuda.to_numpy(a)) for a in (p, buf)]


@pytest.mark.parametrize("shape", OPT_SHAPES)
@pytest.mark.parametrize("case", SGD_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_sgd_update(cuda, dtype, case, shape):
    ref = _sgd_steps(None, case, shape, dtype, False)
    floats = _sgd_steps(cuda, case, shape, dtype, False)
    arrays = _sgd_steps(cuda, case, shape, dtype, True)
    for name, r, f, a in zip(("p", "buf"), ref, floats, arrays):
        if r is None:
            continue
        _close(cuda, f, r, f"sgd {name}")
        _bits(f, a, f"sgd {name}: Python float vs 0-d device array lr")
        _bits(f, r, f"sgd {name}: CPU bits")


def test_every_function_runs_its_kernel_on_rows_of_any_rank(cuda, spy):
    """Each fused.py function reaches cuda_kernels for C-ordered 2-D and 3-D inputs (softmax_grad once
    took the reference for every input of rank 2 or more, silently)."""
    from loom.backend.cuda import fused as cuda_kernels
    called = spy(cuda_kernels, FUNCTIONS)
    rng = np.random.default_rng(41)
    for shape in [(8, 33), (2, 3, 33)]:
        x, g = (cuda.asarray(_normal(rng, shape, np.float32)) for _ in range(2))
        w = cuda.asarray(_normal(rng, (33,), np.float32))
        scalar = cuda.asarray(np.asarray(0.01, np.float32))
        y, xhat, rstd = fused.layer_norm(x, w, w, 1e-5)
        fused.layer_norm_grad(g, xhat, rstd, w)
        _, rhat, rr = fused.rms_norm(x, w, 1e-6)
        fused.rms_norm_grad(g, rhat, rr, w)
        fused.softmax_grad(fused.softmax(x), g)
        fused.scaled_masked_softmax(x, 0.5, True, 0)
        fused.gelu_grad(fused.gelu(x), g)
        fused.bias_act(x.copy(), w, "gelu")
        fused.adam_update(x.copy(), g, cuda.xp.zeros_like(x), cuda.xp.zeros_like(x), None, scalar, scalar,
                          0.9, 0.999, 1e-8, 0.0, None)
        fused.sgd_update(x.copy(), g, None, scalar, 0.0, 0.0, False, 0.0, False)
        missing = sorted(set(FUNCTIONS) - set(called))
        assert not missing, f"shape {shape}: the reference ran instead of {missing}"
        called.clear()


# --- CUDA graphs -------------------------------------------------------------------------------------

@pytest.mark.smoke
def test_every_kernel_records_into_a_cuda_graph(cuda):
    """No kernel synchronizes or copies to the host (CUDABackend.record refuses both): recorded once, a
    replay gives the eager bits."""
    cp = cuda.xp
    rng = np.random.default_rng(40)
    x = cuda.asarray(_normal(rng, (8, 33), np.float32))
    w, b = cuda.asarray(_normal(rng, (33,), np.float32)), cuda.asarray(_normal(rng, (33,), np.float32))
    s = cuda.asarray(_normal(rng, (2, 5, 7), np.float32))
    g = cuda.asarray(_normal(rng, (8, 33), np.float32))
    scalars = [cuda.asarray(np.asarray(v, np.float32)) for v in (0.01, 0.3, 0.999)]

    def run(p, m, v, z, p2, buf):
        y, xhat, rstd = fused.layer_norm(x, w, b, 1e-5)
        r, rhat, rr = fused.rms_norm(x, w, 1e-6)
        out = [y, xhat, rstd, fused.layer_norm_grad(g, xhat, rstd, w), r, fused.rms_norm_grad(g, rhat, rr, w),
               fused.gelu(x), fused.gelu_grad(x, g), fused.softmax(x), fused.softmax_grad(fused.softmax(x), g),
               fused.scaled_masked_softmax(s, 0.5, True, -1), *fused.bias_act(z, b, "gelu")]
        fused.adam_update(p, g, m, v, None, scalars[0], scalars[1], 0.9, 0.999, 1e-8, 0.0, scalars[2])
        fused.sgd_update(p2, g, buf, scalars[0], 0.9, 0.0, False, 0.0, False)
        return out + [p, m, v, p2, buf]

    def fresh():
        return [x.copy(), cp.zeros_like(x), cp.zeros_like(x), x.copy(), x.copy(), cp.ones_like(x)]

    eager = [a.copy() for a in run(*fresh())]      # also compiles every kernel before the recording
    state = fresh()
    graph, recorded = cuda.record(lambda: run(*state))
    graph.launch()
    cuda.synchronize()
    for i, (e, r) in enumerate(zip(eager, recorded)):
        _bits(cuda.to_numpy(r), cuda.to_numpy(e), f"output {i} replayed")

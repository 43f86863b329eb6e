"""The GPU's exact reductions (loom/backend/cuda/exact_reduce.py: split over warps, combined with
atomics) against the CPU's, bit for bit, on every layout they read: reduced axis contiguous, kept
axis contiguous, batched, transposed, reversed, broadcast and unmergeable views that are copied
first; few long reductions (many parts) and many short ones; values from subnormal to float32's
largest, zeros of both signs, infinities and NaNs."""
import itertools

import numpy as np
import pytest

import loom
from loom import backend
from loom.kernels import exact

from .cpu_gpu import host, same_bits

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("deterministic_mode")]
cupy = pytest.importorskip("cupy")


def _values(rng, shape, dtype):
    x = rng.standard_normal(shape) * np.exp2(rng.integers(-140, 100, shape))
    x = x.astype(dtype)
    flat = x.reshape(-1)
    picks = rng.choice(flat.size, size=min(flat.size, 6), replace=False)
    flat[picks[:3]] = [0.0, -0.0, np.finfo(dtype).smallest_subnormal][: len(picks[:3])]
    return x


def _views(x):
    """(name, host view, device view) of the same values in several layouts."""
    d = cupy.asarray(x)
    out = [("c", x, d), ("reversed", x[..., ::-1], d[..., ::-1])]
    if x.ndim >= 2:
        t = np.ascontiguousarray(np.swapaxes(x, -1, -2))
        out.append(("transposed", np.swapaxes(t, -1, -2), cupy.swapaxes(cupy.asarray(t), -1, -2)))
        f = np.asfortranarray(x)
        out.append(("fortran", f, cupy.asfortranarray(d)))
    if x.ndim == 3:
        out.append(("broadcast", np.broadcast_to(x[:1], x.shape), cupy.broadcast_to(d[:1], x.shape)))
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(37, 300), (3, 9000), (9000, 3), (4, 50, 33), (2, 3, 40, 17), (1, 70000)])
def test_absmax_matches_the_cpu(shape, dtype):
    rng = np.random.default_rng(11)
    x = _values(rng, shape, dtype)
    cuda = backend.get("cuda")
    for name, h, d in _views(x):
        for axis in (-1, -2) if x.ndim >= 2 else (-1,):
            same_bits(exact._absmax(cuda, d, axis), exact._absmax(backend.get("cpu"), h, axis),
                      f"absmax {shape} {name} axis {axis}")
    x.reshape(-1)[[5, 17]] = [np.nan, -np.inf]                  # a NaN wins over an infinity
    for name, h, d in _views(x):
        got, want = host(exact._absmax(cuda, d, -1)), exact._absmax(backend.get("cpu"), h, -1)
        assert np.array_equal(np.isnan(got), np.isnan(want)), f"absmax NaN rows {shape} {name}"
        same_bits(got, want, f"absmax with specials {shape} {name}")


@pytest.mark.parametrize("shape", [(37, 300), (3, 70000), (70000, 3), (6, 300, 7), (2, 3, 40, 17)])
def test_float32_sums_match_the_cpu(shape):
    rng = np.random.default_rng(12)
    x = _values(rng, shape, np.float32)
    for with_specials in (False, True):
        if with_specials:
            flat = x.reshape(-1)
            flat[[3, 40]], flat[-1] = np.inf, np.nan
            flat[[41, 42]] = [np.inf, -np.inf] if flat.size > 42 else flat[[41, 42]]
        for name, h, d in _views(x):
            axes = [None] + [c for r in range(1, x.ndim) for c in itertools.combinations(range(x.ndim), r)]
            for axis in axes:
                same_bits(exact.sum(d, axis=axis, keepdims=True), exact.sum(np.asarray(h), axis=axis, keepdims=True),
                          f"sum {shape} {name} axis {axis} specials {with_specials}")


def test_sums_of_zeros_and_of_one_value():
    cuda = backend.get("cuda")
    for x in (np.zeros((4, 5), np.float32), -np.zeros((4, 5), np.float32), np.full((1, 1), 3.5, np.float32),
              np.full((3, 1), np.finfo(np.float32).max, np.float32)):
        for axis in (None, 0, 1):
            with np.errstate(over="ignore"):        # 3 x float32's largest rounds to inf, as NumPy's sum
                same_bits(exact.sum(cuda.asarray(x), axis=axis), exact.sum(x, axis=axis), f"sum {x[0, 0]} axis {axis}")


def test_rank4_gemm_specials_are_guarded():
    """Attention's [batch, heads, T, D] products: a row with inf or NaN gets IEEE's answer on the
    GPU's guarded kernel, the CPU's bits."""
    rng = np.random.default_rng(13)
    cuda = backend.get("cuda")
    q = rng.standard_normal((2, 3, 6, 5)).astype(np.float32)
    k = rng.standard_normal((2, 3, 6, 5)).astype(np.float32)
    q[0, 1, 2, 3], q[1, 2, 0, 0], k[1, 0, 4, 1] = np.inf, np.nan, -np.inf
    kt_host, kt_dev = np.swapaxes(k, -1, -2), cupy.swapaxes(cuda.asarray(k), -1, -2)
    assert cuda.exact.special_guard(cuda.asarray(q), kt_dev) is not None
    same_bits(exact.matmul(cuda.asarray(q), kt_dev), exact.matmul(q, kt_host), "rank-4 gemm specials")
    same_bits(exact.matmul(cuda.asarray(q[:1]), kt_dev), exact.matmul(q[:1], kt_host), "broadcast rank-4")


@pytest.mark.smoke
def test_float32_subnormals_are_kept():
    """CuPy appends -ftz=true to every compile; the backend takes it out (backend/cuda/subnormals.py), so GEMMs,
    sums and whole layers on values below 2^-126 give the CPU's bits."""
    from loom.backend.cuda import subnormals as cuda_subnormals
    cuda = backend.get("cuda")
    assert cuda_subnormals.check(cupy)
    rng = np.random.default_rng(14)
    a = (rng.standard_normal((16, 40)) * np.exp2(rng.integers(-149, -110, (16, 40)))).astype(np.float32)
    b = rng.standard_normal((40, 8)).astype(np.float32)
    same_bits(exact.matmul(cuda.asarray(a), cuda.asarray(b)), exact.matmul(a, b), "gemm of subnormals")
    same_bits(exact.sum(cuda.asarray(a), axis=0), exact.sum(a, axis=0), "sum of subnormals")
    cfg = {"loom": 1, "input": {"shape": [1, 8, 8]},
           "layers": [{"type": "conv2d", "filters": 4, "kernel_size": 3, "activation": "relu"},
                      {"type": "max_pool2d", "pool_size": 2}, {"type": "flatten"},
                      {"type": "layer_norm"}, {"type": "dense", "units": 5, "activation": "gelu"}]}
    cpu, gpu = loom.Network.from_config(cfg).train(), loom.Network.from_config(cfg).to("cuda").train()
    x = (rng.standard_normal((4, 1, 8, 8)) * 2.0 ** -135).astype(np.float32)
    same_bits(gpu(x), cpu(x), "forward on subnormal inputs")
    dy = (rng.standard_normal((4, 5)) * 2.0 ** -130).astype(np.float32)
    same_bits(gpu.backward(dy), cpu.backward(dy), "input gradient of subnormals")
    for name, g in cpu.gradients().items():
        same_bits(gpu.gradients()[name], g, f"gradient {name} of subnormals")

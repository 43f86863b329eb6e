"""The sliding-window CUDA kernels (loom/backend/cuda/windows.py) against the NumPy code they replace,
bit for bit: im2col, col2im (the gather form of the strided scatter-add), and max pooling with its
gradient, over 1-, 2- and 3-d geometries with strides, dilations, padding and groups."""
import math

import numpy as np
import pytest
from window_cases import GEOMETRIES, POOLS, geometry, pool_inputs

from loom.kernels import windows as conv

from .cpu_gpu import same_bits

cupy = pytest.importorskip("cupy")
pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", range(len(GEOMETRIES)))
def test_im2col_and_col2im_match_numpy_bits(case, dtype):
    k, s, d, lo, hi, big, groups, c = GEOMETRIES[case]
    g = geometry(k, s, d, lo, hi, big, groups)
    rng = np.random.default_rng(case)
    x = rng.standard_normal((3, c) + big).astype(dtype)
    ref_cols = conv.im2col_arrays(np, x, g)
    cols = conv.im2col(cupy, cupy.asarray(x), g)
    np.testing.assert_array_equal(cupy.asnumpy(cols), ref_cols)

    upstream = rng.standard_normal(ref_cols.shape).astype(dtype)
    ref_dx = conv.col2im_arrays(np, upstream, 3, c, g)
    dx = conv.col2im(cupy, cupy.asarray(upstream), 3, c, g)
    assert dx.shape == ref_dx.shape == (3, c) + big
    assert cupy.asnumpy(dx).tobytes() == ref_dx.tobytes()


def _pool(cfg, shape, x, dy, xp):
    import loom
    net = loom.Network.from_config({"loom": 1, "dtype": np.dtype(x.dtype).name, "input": {"shape": list(shape)},
                                    "layers": [cfg]})
    if xp is cupy:
        net = net.to("cuda")
        x, dy = cupy.asarray(x), cupy.asarray(dy)
    y = net.forward(x)
    dx = net.backward(dy)
    return cupy.asnumpy(y) if xp is cupy else y, cupy.asnumpy(dx) if xp is cupy else dx


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cfg,shape", POOLS)
def test_max_pool_matches_numpy_bits_with_ties_and_specials(cfg, shape, dtype):
    x, dy = pool_inputs(cfg, shape, dtype)
    y_ref, dx_ref = _pool(cfg, shape, x, dy, np)
    y, dx = _pool(cfg, shape, x, dy, cupy)
    same_bits(y, y_ref, "max pool output")
    same_bits(dx, dx_ref, "max pool gradient")
    assert math.prod(dx.shape) == x.size


@pytest.mark.parametrize("layer", [
    pytest.param({"type": "conv2d", "filters": 6, "kernel_size": 3, "padding": "same", "activation": "relu",
                  "groups": 2}, marks=pytest.mark.smoke),
    {"type": "conv2d", "filters": 4, "kernel_size": [2, 3], "stride": 2, "activation": "relu", "bias": False},
    {"type": "conv1d", "filters": 3, "kernel_size": 3, "dilation": 2, "activation": "linear"},
])
def test_conv_layers_with_fused_output_kernels_match_cpu_bits(layer):
    """rows_to_channels / channels_to_rows (layout, bias, relu) and the bias gradient from GEMM rows:
    the same bits as the CPU in deterministic mode, with zeros and NaN where relu's rules matter."""
    import loom
    shape = [4, 7, 8] if layer["type"] == "conv2d" else [4, 9]
    cfg = {"loom": 1, "seed": 3, "input": {"shape": shape}, "layers": [layer]}
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, *shape)).astype(np.float32)
    x[0, 0, 0] = np.nan
    results, dy_cpu = [], None
    for device in ("cpu", "cuda"):
        net = loom.Network.from_config(cfg).to(device).train()
        xin = x if device == "cpu" else cupy.asarray(x)
        y = net.forward(xin)
        if dy_cpu is None:
            dy_cpu = rng.standard_normal(y.shape).astype(np.float32)
        dy = dy_cpu if device == "cpu" else cupy.asarray(dy_cpu)
        dx = net.backward(dy)
        grads = {k: cupy.asnumpy(v) if device == "cuda" else v for k, v in net.gradients().items()}
        results.append((cupy.asnumpy(y) if device == "cuda" else y, cupy.asnumpy(dx) if device == "cuda" else dx, grads))
    (y0, dx0, g0), (y1, dx1, g1) = results
    assert np.isnan(y0).any() and ((y0 == 0).any() or layer["activation"] != "relu")
    same_bits(y1, y0, "output")
    same_bits(dx1, dx0, "input gradient")
    for k in g0:
        same_bits(g1[k], g0[k], k)


@pytest.mark.parametrize("fn", ["relu", "linear"])
def test_the_row_layout_kernels_match_numpy_with_specials(fn):
    """-0.0, NaN and inf pre-activations: relu is numpy.maximum(z, 0) (NaN passes, -0.0 becomes +0.0)."""
    from loom.nn.layers import activation
    rng = np.random.default_rng(4)
    rows = rng.standard_normal((2, 40, 3)).astype(np.float32)
    flat = rows.reshape(-1)
    flat[::5], flat[1::7], flat[2::11], flat[3::13] = -0.0, np.nan, np.inf, -np.inf
    want = activation.forward(fn, conv.from_rows(rows, 2, (4, 5)))[1]
    same_bits(conv.rows_to_channels(cupy.asarray(rows), None, fn, 2, (4, 5)), want, "rows_to_channels")
    dy = rng.standard_normal(want.shape).astype(np.float32)
    dy.reshape(-1)[::3] = -0.0
    with np.errstate(invalid="ignore"):
        grad = np.ascontiguousarray(conv.to_rows(activation.grad(fn, want, want, dy), 2))
    same_bits(conv.channels_to_rows(cupy.asarray(dy), cupy.asarray(want), fn, 2), grad, "channels_to_rows")


def test_backend_sum_over_batch_and_space_matches_numpy():
    """The cuBLAS ones-vector sums cover leading and trailing blocks of axes (conv bias gradients)."""
    import loom
    from loom import backend
    cuda = backend.get("cuda")
    rng = np.random.default_rng(3)
    cases = {(16, 5, 6, 7): [((0, 2, 3), False), ((0, 2, 3), True), ((2, 3), False), ((0, 1), True), (0, False),
                             ((0, 1, 2), False)],
             (64, 5, 6, 3): [(0, False), (0, True), (3, False)],        # several kept axes
             (1, 100, 8): [(1, False), (1, True)]}                      # a size-1 kept axis (conv rows)
    with loom.deterministic(False):
        for shape, axes in cases.items():
            x = rng.standard_normal(shape).astype(np.float32)
            for axis, keep in axes:
                got = cupy.asnumpy(cuda.sum(cupy.asarray(x), axis=axis, keepdims=keep))
                want = x.astype(np.float64).sum(axis=axis, keepdims=keep)
                assert got.shape == want.shape, (shape, axis, keep)
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

"""The compiled sliding-window loops of the CPU (loom/backend/cpu/windows.py) against the NumPy code
they replace, bit for bit: im2col, col2im, max pooling and its gradient, the convolution's output and
gradient layouts, and whole convolution/pooling networks with the loops on and off (LOOM_JIT)."""
import math

import numpy as np
import pytest
from window_cases import GEOMETRIES, POOLS, geometry, pool_inputs

import loom
from loom import backend
from loom.backend.cpu import jit
from loom.backend.cpu.windows import CPUWindows
from loom.kernels import windows as conv
from loom.nn.layers import activation
from loom.nn.layers.pool import max_pool_arrays, max_pool_grad_arrays

pytestmark = pytest.mark.skipif(not jit.available(), reason=f"the compiled loops do not run here: "
                                                            f"{jit.unavailable_reason()}")
LOOPS = CPUWindows()


def same_bits(got, want, what):
    assert got.dtype == want.dtype and got.shape == want.shape, f"{what}: {got.dtype}{got.shape} vs {want.dtype}{want.shape}"
    assert got.tobytes() == want.tobytes(), f"{what}: {np.flatnonzero(got.reshape(-1) != want.reshape(-1))[:5]}"


def _specials(a, rng):
    """a with some NaN, +-inf and -0.0 entries, in place."""
    flat = a.reshape(-1)
    for value, share in ((np.nan, 30), (np.inf, 40), (-np.inf, 40), (-0.0, 10)):
        flat[rng.choice(flat.size, max(1, flat.size // share), replace=False)] = value
    return a


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", range(len(GEOMETRIES)))
def test_im2col_and_col2im_match_the_array_references(case, dtype):
    k, s, d, lo, hi, big, groups, c = GEOMETRIES[case]
    g = geometry(k, s, d, lo, hi, big, groups)
    rng = np.random.default_rng(case + 10)
    x = _specials(rng.standard_normal((3, c) + big).astype(dtype), rng)
    assert LOOPS.supports(x)
    cols = LOOPS.im2col(x, g)
    same_bits(cols, conv.im2col_arrays(np, x, g), "im2col")
    upstream = _specials(rng.standard_normal(cols.shape).astype(dtype), rng)
    dx = LOOPS.col2im(upstream, 3, c, g)
    with np.errstate(invalid="ignore"):                 # inf + -inf
        same_bits(dx, conv.col2im_arrays(np, upstream, 3, c, g), "col2im")
    # the sums depend on order: summands of very different sizes, so a different order shows
    wide = (rng.standard_normal(cols.shape) * 10.0 ** rng.integers(-8, 8, cols.shape)).astype(dtype)
    same_bits(LOOPS.col2im(wide, 3, c, g), conv.col2im_arrays(np, wide, 3, c, g), "col2im, wide range")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cfg,shape", POOLS)
def test_max_pool_matches_the_array_reference_with_ties_and_specials(cfg, shape, dtype):
    x, dy = pool_inputs(cfg, shape, dtype)
    net = loom.Network.from_config({"loom": 1, "dtype": np.dtype(dtype).name, "input": {"shape": list(shape)},
                                    "layers": [cfg]})
    layer = net.root.children["layers.0"]
    k, s, p, out = layer.k, layer.s, layer.p, layer.out
    y, arg = LOOPS.max_pool(x, k, s, p, out)
    y_ref, arg_ref = max_pool_arrays(np, x, k, s, p, out)
    same_bits(y, y_ref, "max pool output")
    np.testing.assert_array_equal(arg, arg_ref)
    assert arg.dtype == LOOPS.ARG_DTYPE
    dx = LOOPS.max_pool_grad(dy, arg, k, s, p, layer.size)
    same_bits(dx, max_pool_grad_arrays(np, dy, arg_ref, k, s, p, layer.size), "max pool gradient")
    assert math.prod(dx.shape) == x.size


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("fn", ["relu", "linear"])
@pytest.mark.parametrize("groups", [1, 3])
def test_the_row_layouts_match_the_references(groups, fn, dtype):
    rng = np.random.default_rng(groups)
    b, c, small = 2, 6, (4, 5)
    rows = _specials(rng.standard_normal((groups, b * 20, c // groups)).astype(dtype), rng)
    rows.reshape(-1)[::11] = 0.0
    bias = rng.standard_normal(c).astype(dtype)
    for bias_ in (bias, None):
        z = conv.from_rows(rows, b, small)
        if bias_ is not None:
            z = z + bias_.reshape(c, 1, 1)
        same_bits(LOOPS.rows_to_channels(rows, bias_, fn, b, small), activation.forward(fn, z)[1], "rows_to_channels")
    y = activation.forward(fn, conv.from_rows(rows, b, small))[1]
    dy = _specials(rng.standard_normal(y.shape).astype(dtype), rng)
    with np.errstate(invalid="ignore"):                 # inf * 0
        want = conv.to_rows(activation.grad(fn, y, y, dy), groups)
    same_bits(LOOPS.channels_to_rows(dy, y, fn, groups), np.ascontiguousarray(want), "channels_to_rows")


def test_supports_only_contiguous_float32_and_float64_numpy_arrays():
    x = np.zeros((2, 3, 4, 4), np.float32)
    assert LOOPS.supports(x) and LOOPS.supports(x, x)
    assert not LOOPS.supports(x.astype(np.float16))
    assert not LOOPS.supports(x[:, :, ::2])
    assert not LOOPS.supports(x, x.astype(np.float64))
    assert not LOOPS.supports(np.zeros((1,) * 6, np.float32))        # more than 3 spatial dimensions


def test_loom_jit_0_turns_the_loops_off(monkeypatch):
    cpu = backend.get("cpu")
    assert isinstance(cpu.windows, CPUWindows)
    monkeypatch.setenv("LOOM_JIT", "0")
    assert cpu.windows is None


NETS = [
    [{"type": "conv2d", "filters": 6, "kernel_size": 3, "padding": "same", "activation": "relu", "groups": 2},
     {"type": "max_pool2d", "pool_size": 2}, {"type": "flatten"}, {"type": "dense", "units": 5}],
    [{"type": "conv2d", "filters": 4, "kernel_size": [2, 3], "stride": 2, "activation": "relu", "bias": False},
     {"type": "max_pool2d", "pool_size": 2, "stride": 1, "padding": 1}, {"type": "conv_transpose2d", "filters": 3,
                                                                         "kernel_size": 3, "stride": 2}],
    [{"type": "conv1d", "filters": 3, "kernel_size": 3, "dilation": 2, "activation": "tanh"},
     {"type": "max_pool1d", "pool_size": 3, "stride": 2}],
]


def _run(layers, shape, x, dy, dtype):
    net = loom.Network.from_config({"loom": 1, "seed": 3, "dtype": dtype, "input": {"shape": shape},
                                    "layers": layers}).train()
    y = net.forward(x)
    dx = net.backward(dy(y.shape))
    return [y, dx] + [v for _, v in sorted(net.gradients().items())]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("net", range(len(NETS)))
def test_networks_get_the_same_bits_with_and_without_the_loops(net, dtype, monkeypatch):
    layers = NETS[net]
    shape = [4, 9, 8] if layers[0]["type"] == "conv2d" else [4, 11]
    rng = np.random.default_rng(net)
    x = rng.standard_normal((3, *shape)).astype(dtype)
    x.reshape(-1)[::17] = np.nan
    x.reshape(-1)[::13] = 0.0

    def dy(s):
        return np.random.default_rng(9).standard_normal(s).astype(dtype)

    with loom.deterministic(True):
        on = _run(layers, shape, x, dy, dtype)
        monkeypatch.setenv("LOOM_JIT", "0")
        off = _run(layers, shape, x, dy, dtype)
    assert len(on) == len(off) > 2
    for i, (a, b) in enumerate(zip(on, off)):
        same_bits(np.where(np.isnan(a), np.nan, a).astype(a.dtype), np.where(np.isnan(b), np.nan, b).astype(b.dtype),
                  f"result {i}")

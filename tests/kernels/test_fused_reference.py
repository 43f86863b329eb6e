"""loom.kernels.fused on NumPy: its reference path gives exactly the bits of the formulas the layers and
optimizers use today, its gradients agree with finite differences, and it hands arrays to a backend's
fused kernels only when they qualify."""
import math

import gradcheck
import numpy as np
import pytest

import loom
from loom.backend.cpu import CPU
from loom.kernels import fused, ops
from loom.nn import optim
from loom.nn.layers import activation, norm
from loom.nn.schedules import power

DTYPES = [np.float32, np.float64]
SHAPES = [(1,), (3, 7), (2, 3, 33), (4, 1), (2, 1000)]
SEEDS = [0, 1, 2]


def _bits(a, b, what=""):
    assert a.dtype == b.dtype and a.shape == b.shape, f"{what}: {a.dtype} {a.shape} vs {b.dtype} {b.shape}"
    assert a.tobytes() == b.tobytes(), f"{what}: bits differ (max abs difference {np.max(np.abs(a - b)):.3g})"


def _normal(rng, shape, dtype, scale=1.0):
    return (rng.normal(size=shape) * scale).astype(dtype)


# --- bit-identity with the layer formulas ------------------------------------------------------------

@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_gelu_and_grad_match_activation(dtype, shape, seed):
    rng = np.random.default_rng(seed)
    x, dy = _normal(rng, shape, dtype, 3), _normal(rng, shape, dtype)
    y = fused.gelu(x)
    _bits(y, activation.apply("gelu", x), "gelu")
    _bits(fused.gelu_grad(x, dy), activation.grad("gelu", x, y, dy), "gelu_grad")


@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("fn", fused.BIAS_ACTIVATIONS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_act_matches_activation_forward(dtype, fn, with_bias):
    rng = np.random.default_rng(5)
    z = _normal(rng, (4, 3, 33), dtype, 3)
    bias = _normal(rng, (33,), dtype) if with_bias else None
    saved, y = fused.bias_act(z.copy(), bias, fn)
    ref_saved, ref_y = activation.forward(fn, z + bias if with_bias else z.copy())
    _bits(y, ref_y, f"{fn} y")
    _bits(saved, ref_saved, f"{fn} saved")
    assert (saved is y) == (ref_saved is ref_y)


def test_bias_act_output_grad_set_follows_activation():
    assert fused._OUTPUT_GRAD == set(fused.BIAS_ACTIVATIONS) & activation.OUTPUT_GRAD
    with pytest.raises(ValueError, match="mish"):
        fused.bias_act(np.zeros((2, 3)), None, "mish")


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_and_grad_match_ops(dtype, shape, seed):
    rng = np.random.default_rng(seed)
    x, dy = _normal(rng, shape, dtype, 4), _normal(rng, shape, dtype)
    y = fused.softmax(x)
    _bits(y, ops.softmax(x, axis=-1), "softmax")
    # attention.py's backward: p * (dp - sum(dp * p))
    _bits(fused.softmax_grad(y, dy), y * (dy - ops.sum(dy * y, axis=-1, keepdims=True)), "softmax_grad")


def _causal_mask(tq, tk, offset):
    return np.array([[j <= i + offset for j in range(tk)] for i in range(tq)])


@pytest.mark.parametrize("tq, tk, offset", [(7, 7, 0), (5, 9, 4), (6, 4, -2), (3, 1, 0), (4, 33, -9)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_scaled_masked_softmax_matches_masked_ops_softmax(dtype, tq, tk, offset):
    rng = np.random.default_rng(tq * 100 + tk)
    s = _normal(rng, (2, 3, tq, tk), dtype, 5)
    scale = 0.125
    p = fused.scaled_masked_softmax(s, scale, True, offset)
    mask = _causal_mask(tq, tk, offset)
    _bits(p, ops.softmax(s * scale, axis=-1, mask=mask), "causal softmax")
    assert np.all(p[..., ~mask] == 0)
    empty = ~mask.any(axis=-1)
    assert np.all(p[..., empty, :] == 0) and not np.any(np.signbit(p[..., empty, :]))
    _bits(fused.scaled_masked_softmax(s, scale, False), ops.softmax(s * scale, axis=-1), "scaled softmax")


def test_scaled_masked_softmax_offset_0_is_attentions_causal_mask():
    s = _normal(np.random.default_rng(3), (2, 4, 6, 6), np.float32)
    tril = np.tril(np.ones((6, 6), dtype=bool))[None, None]
    _bits(fused.scaled_masked_softmax(s, 0.5, True), ops.softmax(s * 0.5, axis=-1, mask=tril), "attention mask")


def _norm_net(layer, features, dtype):
    cfg = {"loom": 1, "dtype": np.dtype(dtype).name, "input": {"shape": [5, features]}, "layers": [layer]}
    net = loom.Network.from_config(cfg)
    rng = np.random.default_rng(11)
    for p in net.parameters().values():
        p[...] = rng.normal(size=p.shape)
    return net, next(iter(net.root.children.values()))


@pytest.mark.parametrize("features", [1, 7, 33, 1000])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
def test_layer_norm_matches_layer(dtype, affine, features):
    net, layer = _norm_net({"type": "layer_norm", "affine": affine}, features, dtype)
    rng = np.random.default_rng(features)
    x, dy = _normal(rng, (3, 5, features), dtype, 2) + dtype(0.5), _normal(rng, (3, 5, features), dtype)
    w, b = (layer.params["weight"], layer.params["bias"]) if affine else (None, None)
    y, xhat, rstd = fused.layer_norm(x, w, b, layer.eps)
    _bits(y, net(x), "y")
    _bits(xhat, layer.xhat, "xhat")
    _bits(rstd, layer.rstd, "rstd")
    _bits(fused.layer_norm_grad(dy, xhat, rstd, w), net.backward(dy), "dx")


@pytest.mark.parametrize("features", [1, 7, 33, 1000])
@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_matches_norm_functions(dtype, features):
    rng = np.random.default_rng(features)
    x, dy = _normal(rng, (3, 5, features), dtype, 2), _normal(rng, (3, 5, features), dtype)
    w = _normal(rng, (features,), dtype)
    y, xhat, rstd = fused.rms_norm(x, w, 1e-6)
    ref_y, (ref_xhat, ref_rstd) = norm.rms_norm(x, w, 1e-6)
    _bits(y, ref_y, "y")
    _bits(xhat, ref_xhat, "xhat")
    _bits(rstd, ref_rstd, "rstd")
    ref_dx, _ = norm.rms_norm_backward(dy, (ref_xhat, ref_rstd), w)
    _bits(fused.rms_norm_grad(dy, xhat, rstd, w), ref_dx, "dx")
    ones = np.ones(features, dtype)     # weight None is weight 1
    _bits(fused.rms_norm(x, None, 1e-6)[0], norm.rms_norm(x, ones, 1e-6)[0], "y without weight")
    _bits(fused.rms_norm_grad(dy, xhat, rstd, None), norm.rms_norm_backward(dy, (xhat, rstd), ones)[0],
          "dx without weight")


# --- optimizers --------------------------------------------------------------------------------------

ADAM_SPECS = [
    {"type": "adam", "lr": 0.01},
    {"type": "adam", "lr": 0.01, "weight_decay": 0.1},
    {"type": "adam", "lr": 0.003, "betas": [0.3, 0.9], "amsgrad": True},     # lerp's second form (w >= 0.5)
    {"type": "adamw", "lr": 0.01},
    {"type": "adamw", "lr": 0.02, "weight_decay": 0.0, "amsgrad": True, "eps": 1e-6},
]


def _adam_scalars(spec, t):
    """What Adam.update computes from its hyperparameters for update t."""
    cls = optim.TYPES[spec["type"]]
    hp = {k: spec.get(k, default) for k, (_, default) in cls.HYPER.items()}
    b1, b2 = hp["betas"]
    lr, wd = hp["lr"], hp["weight_decay"]
    decoupled = cls.DECOUPLED and wd != 0
    return dict(step_size=lr / (1 - power(b1, t)), bc2_sqrt=math.sqrt(1 - power(b2, t)), b1=b1, b2=b2,
                eps=hp["eps"], l2=0.0 if cls.DECOUPLED else wd, decay=1 - lr * wd if decoupled else None), hp


def _as_arrays(scalars, dtype):
    out = dict(scalars)
    for k in ("step_size", "bc2_sqrt", "decay"):
        if out[k] is not None:
            out[k] = np.asarray(out[k], dtype=dtype)
    return out


@pytest.mark.parametrize("scalar_arrays", [False, True], ids=["floats", "0d_arrays"])
@pytest.mark.parametrize("spec", ADAM_SPECS, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
@pytest.mark.parametrize("dtype", DTYPES)
def test_adam_update_matches_optimizer(dtype, spec, scalar_arrays):
    rng = np.random.default_rng(21)
    p0 = _normal(rng, (13, 7), dtype)
    opt = optim.build(spec, {"w": p0.copy()})
    p = p0.copy()
    m, v = np.zeros_like(p), np.zeros_like(p)
    _, hp = _adam_scalars(spec, 1)
    vmax = np.zeros_like(p) if hp["amsgrad"] else None
    for t in range(1, 5):
        g = _normal(rng, p.shape, dtype)
        g_before = g.copy()
        opt.step({"w": g})
        scalars, _ = _adam_scalars(spec, t)
        if scalar_arrays:
            scalars = _as_arrays(scalars, dtype)
        fused.adam_update(p, g, m, v, vmax, **scalars)
        _bits(g, g_before, "gradient untouched")
    state = opt.state_dict()
    _bits(p, opt._params["w"], "p")
    _bits(m, state["state.w.exp_avg"], "exp_avg")
    _bits(v, state["state.w.exp_avg_sq"], "exp_avg_sq")
    if vmax is not None:
        _bits(vmax, state["state.w.max_exp_avg_sq"], "max_exp_avg_sq")


SGD_SPECS = [
    {"type": "sgd", "lr": 0.1},
    {"type": "sgd", "lr": 0.1, "weight_decay": 0.01},
    {"type": "sgd", "lr": 0.05, "momentum": 0.9},
    {"type": "sgd", "lr": 0.05, "momentum": 0.9, "dampening": 0.3, "weight_decay": 0.02},
    {"type": "sgd", "lr": 0.05, "momentum": 0.8, "nesterov": True},
]


@pytest.mark.parametrize("lr_array", [False, True], ids=["float", "0d_array"])
@pytest.mark.parametrize("spec", SGD_SPECS, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
@pytest.mark.parametrize("dtype", DTYPES)
def test_sgd_update_matches_optimizer(dtype, spec, lr_array):
    rng = np.random.default_rng(22)
    p0 = _normal(rng, (9, 4), dtype)
    opt = optim.build(spec, {"w": p0.copy()})
    p = p0.copy()
    momentum = spec.get("momentum", 0.0)
    buf = np.zeros_like(p) if momentum else None
    lr = np.asarray(spec["lr"], dtype=dtype) if lr_array else spec["lr"]
    for t in range(1, 5):
        g = _normal(rng, p.shape, dtype)
        g_before = g.copy()
        opt.step({"w": g})
        fused.sgd_update(p, g, buf, lr, momentum, spec.get("dampening", 0.0), spec.get("nesterov", False),
                         spec.get("weight_decay", 0.0), t == 1)
        _bits(g, g_before, "gradient untouched")
    _bits(p, opt._params["w"], "p")
    if buf is not None:
        _bits(buf, opt.state_dict()["state.w.momentum_buffer"], "momentum_buffer")


def test_sgd_momentum_without_buffer_is_refused():
    with pytest.raises(ValueError, match="momentum buffer"):
        fused.sgd_update(np.zeros(3), np.zeros(3), None, 0.1, 0.9, 0.0, False, 0.0, True)


# --- finite differences in float64 ----------------------------------------------------------------

def _numeric_grad(f, x, dy):
    """d sum(f(x) * dy) / dx by central differences (x is restored)."""
    out = np.zeros_like(x)
    flat, nflat = x.reshape(-1), out.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + gradcheck.STEP
        up = float(np.sum(f(x) * dy))
        flat[i] = old - gradcheck.STEP
        down = float(np.sum(f(x) * dy))
        flat[i] = old
        nflat[i] = (up - down) / (2 * gradcheck.STEP)
    return out


def _assert_grad(analytic, f, x, dy):
    err = gradcheck.rel_error(analytic, _numeric_grad(f, x, dy))
    assert err < gradcheck.TOL, f"relative error {err:.3g}"


@pytest.mark.parametrize("shape", [(3, 7), (2, 1), (4, 33)])
def test_gelu_grad_finite_differences(shape):
    rng = np.random.default_rng(31)
    x, dy = rng.normal(scale=2, size=shape), rng.normal(size=shape)
    _assert_grad(fused.gelu_grad(x, dy), fused.gelu, x, dy)


@pytest.mark.parametrize("shape", [(3, 7), (2, 1), (4, 33)])
def test_softmax_grad_finite_differences(shape):
    rng = np.random.default_rng(32)
    x, dy = rng.normal(scale=2, size=shape), rng.normal(size=shape)
    _assert_grad(fused.softmax_grad(fused.softmax(x), dy), fused.softmax, x, dy)


def test_scaled_masked_softmax_grad_finite_differences():
    rng = np.random.default_rng(33)
    s, dy = rng.normal(size=(2, 5, 6)), rng.normal(size=(2, 5, 6))
    scale, offset = 0.7, -1

    def f(x):
        return fused.scaled_masked_softmax(x, scale, True, offset)
    ds = scale * fused.softmax_grad(f(s), dy)      # the chain rule through s * scale
    _assert_grad(ds, f, s, dy)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape", [(3, 7), (2, 2), (4, 33)])
def test_layer_norm_grad_finite_differences(shape, affine):
    rng = np.random.default_rng(34)
    x, dy = rng.normal(size=shape), rng.normal(size=shape)
    w, b = (rng.normal(size=shape[-1]), rng.normal(size=shape[-1])) if affine else (None, None)
    _, xhat, rstd = fused.layer_norm(x, w, b, 1e-5)
    _assert_grad(fused.layer_norm_grad(dy, xhat, rstd, w), lambda v: fused.layer_norm(v, w, b, 1e-5)[0], x, dy)


@pytest.mark.parametrize("weighted", [True, False])
@pytest.mark.parametrize("shape", [(3, 7), (2, 1), (4, 33)])
def test_rms_norm_grad_finite_differences(shape, weighted):
    rng = np.random.default_rng(35)
    x, dy = rng.normal(size=shape), rng.normal(size=shape)
    w = rng.normal(size=shape[-1]) if weighted else None
    _, xhat, rstd = fused.rms_norm(x, w, 1e-6)
    _assert_grad(fused.rms_norm_grad(dy, xhat, rstd, w), lambda v: fused.rms_norm(v, w, 1e-6)[0], x, dy)


# --- dispatch ------------------------------------------------------------------------------------------

class _Recorder:
    """Stands in for a backend's fused kernels: records which were asked for."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        def kernel(*args):
            self.calls.append(name)
            return "fused"
        return kernel


@pytest.fixture
def recorder(monkeypatch):
    """A backend whose fused kernels record their calls; fast mode (deterministic mode never uses them)."""
    rec = _Recorder()
    monkeypatch.setattr(CPU, "fused", rec, raising=False)
    with loom.deterministic(False):
        yield rec


def test_deterministic_mode_never_calls_the_backend_kernels(monkeypatch):
    monkeypatch.setattr(CPU, "fused", _Recorder(), raising=False)
    x = np.ones((4, 8), np.float32)
    assert isinstance(fused.softmax(x), np.ndarray) and isinstance(fused.gelu(x), np.ndarray)


def test_qualifying_arrays_go_to_the_backend_kernels(recorder):
    x = np.ones((4, 8), np.float32)
    w = np.ones(8, np.float32)
    assert fused.softmax(x) == "fused"
    assert fused.gelu(x.astype(np.float64)) == "fused"
    assert fused.layer_norm(x, w, w, 1e-5) == "fused"
    assert fused.layer_norm_grad(x, x, np.ones((4, 1), np.float32), None) == "fused"
    assert fused.bias_act(x, w, "gelu") == "fused"
    fused.adam_update(x, x.copy(), x.copy(), x.copy(), None, 0.1, 1.0, 0.9, 0.999, 1e-8, 0.0, None)
    fused.sgd_update(x, x.copy(), None, 0.1, 0.0, 0.0, False, 0.0, True)
    assert recorder.calls == ["softmax", "gelu", "layer_norm", "layer_norm_grad", "bias_act", "adam_update",
                              "sgd_update"]


def test_other_arrays_run_the_reference(recorder):
    x = np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32)
    cases = {
        "float16": lambda: fused.softmax(x.astype(np.float16)),
        "not contiguous": lambda: fused.softmax(x.T),
        "mixed dtypes": lambda: fused.layer_norm(x, np.ones(8), None, 1e-5),
        "weight not [n]": lambda: fused.rms_norm(x, np.ones((1, 8), np.float32), 1e-6),
        "bias broadcast from [1, n]": lambda: fused.bias_act(x, np.ones((1, 8), np.float32), "relu"),
        "empty": lambda: fused.gelu(np.zeros((0, 8), np.float32)),
        "rstd not [..., 1]": lambda: fused.rms_norm_grad(x, x, np.ones((1, 8), np.float32), None),
    }
    for what, run in cases.items():
        run()
        assert recorder.calls == [], what

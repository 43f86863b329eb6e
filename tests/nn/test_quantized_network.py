"""Quantized networks (net.quantize) and quantization-aware training (the "qat" config block)."""
import numpy as np
import pytest

import loom
from loom import dtypes
from loom.kernels.quant import affine as quant
from loom.nn.train import train

QUANT_TYPES = [n for n in dtypes.TABLE if n not in dtypes.COMPUTE]
MLP = {"loom": 1, "seed": 3, "input": {"shape": [12]},
       "layers": [{"type": "dense", "units": 16, "activation": "relu"}, {"type": "layer_norm"},
                  {"type": "dense", "units": 5}]}
MIXED = {"loom": 1, "seed": 4, "input": {"shape": [2, 6, 6]},
         "layers": [{"type": "conv2d", "filters": 4, "kernel_size": 3, "groups": 2, "activation": "relu"},
                    {"type": "flatten"}, {"type": "reshape", "shape": [4, 16]},
                    {"type": "multi_head_attention", "heads": 2, "head_dim": 4},
                    {"type": "swiglu", "hidden": 8}, {"type": "gru", "hidden": 6}, {"type": "dense", "units": 3}]}
TOKENS = {"loom": 1, "seed": 5, "input": {"shape": [7], "dtype": "int64"},
          "layers": [{"type": "embedding", "vocab_size": 20, "dim": 8}, {"type": "lstm", "hidden": 5}]}
RNG = np.random.default_rng(11)


def _inputs(cfg, n=6):
    net = loom.Network.from_config(cfg)
    if net.input_spec.is_float:
        return RNG.standard_normal((n,) + net.input_spec.shape).astype(np.float32)
    return RNG.integers(0, 20, (n,) + net.input_spec.shape)


# How far from float32 a quantized network may land (relative to the output's scale), per type.
LOOSE = {"fp4_e2m1": 0.6, "int2": 4.0, "uint2": 4.0, "ternary": 2.0, "binary": 3.0, "int4": 0.4, "uint4": 0.4,
         "fp8_e5m2": 0.25, "fp8_e4m3": 0.15}


@pytest.mark.parametrize("dtype", QUANT_TYPES)
@pytest.mark.parametrize("cfg", [MLP, MIXED, TOKENS], ids=["mlp", "mixed", "tokens"])
def test_quantize_runs_in_the_type_and_stays_close(cfg, dtype):
    net = loom.Network.from_config(cfg)
    x = _inputs(cfg)
    q = net.quantize(dtype)
    assert q.quantized and q.config["quantization"] == {"dtype": dtype, "per": "channel"}
    weights = [(n, p) for n, p in q.parameters().items() if isinstance(p, quant.AffineQuantized)]
    assert weights and all(p.dtype == dtype for _, p in weights)
    assert not isinstance(q.parameters().get("layers.1.weight", None), quant.AffineQuantized) or cfg is not MLP
    y, yq = net(x), q(x)
    assert yq.dtype == y.dtype and yq.shape == y.shape and np.isfinite(yq).all()
    err = np.abs(yq - y).max() / (np.abs(y).max() + 1e-6)
    assert err <= LOOSE.get(dtype, 0.1), err
    assert not np.array_equal(net(x), q(x)) or dtype in ("float16", "bfloat16", "int64", "int32", "uint64", "uint32")
    with pytest.raises(loom.ConfigError, match="inference only"):
        q.backward(np.ones_like(yq))


def test_integer_dense_is_an_exact_integer_gemm():
    """A quantized dense layer's output is exactly the float32 rounding of
    scale_x * scale_w * sum(q_x * q_w), summed in Python integers."""
    cfg = {"loom": 1, "input": {"shape": [40]}, "layers": [{"type": "dense", "units": 7, "bias": False}]}
    net = loom.Network.from_config(cfg, seed=9)
    x = RNG.standard_normal((5, 40)).astype(np.float32)
    for dtype, per in (("int8", "channel"), ("int4", "tensor"), ("uint8", "channel"), ("ternary", "channel")):
        q = net.quantize(dtype, per=per)
        w = q.parameters()["layers.0.weight"]
        sx = (np.abs(x.astype(np.float64)).max(axis=1) / 127).astype(np.float32).astype(np.float64)
        qx = np.clip(np.rint(x / sx[:, None]), -127, 127).astype(np.int64)
        zp = 0 if w.zero_point is None else np.asarray(w.zero_point, np.int64).reshape(-1)
        qw = w.q.astype(np.int64) - (zp[:, None] if np.ndim(zp) else zp)
        acc = np.array([[sum(int(a) * int(b) for a, b in zip(qx[i], qw[j])) for j in range(7)] for i in range(5)],
                       dtype=np.float64)
        sw = np.broadcast_to(np.asarray(w.scale, np.float64).reshape(-1), (7,))
        expected = (acc * sx[:, None] * sw[None, :]).astype(np.float32)
        np.testing.assert_array_equal(q(x), expected, err_msg=dtype)


@pytest.mark.parametrize("dtype", QUANT_TYPES)
def test_quantized_model_files_round_trip(tmp_path, dtype):
    net = loom.Network.from_config(MIXED).quantize(dtype, per="tensor" if dtype.startswith("u") else "channel")
    x = _inputs(MIXED)
    net.save(tmp_path / "q.loom")
    again = loom.load(tmp_path / "q.loom")
    assert again.config == net.config
    assert np.array_equal(again(x), net(x))
    again2 = loom.from_bytes(net.to_bytes())
    assert np.array_equal(again2(x), net(x))


def test_quantized_files_are_small(tmp_path):
    net = loom.Network.from_config(MLP)
    sizes = {}
    for dtype in ("int8", "int4", "binary"):
        net.quantize(dtype).save(tmp_path / f"{dtype}.loom")
        sizes[dtype] = (tmp_path / f"{dtype}.loom").stat().st_size
    net.save(tmp_path / "f32.loom")
    assert sizes["binary"] < sizes["int4"] < sizes["int8"] < (tmp_path / "f32.loom").stat().st_size


def test_load_state_dict_quantizes_float_weights_and_checks_types():
    net = loom.Network.from_config(MLP)
    q = loom.Network.from_config({**MLP, "seed": 99}).quantize("int8")
    q.load_state_dict(net.state_dict())
    x = _inputs(MLP)
    assert np.array_equal(q(x), net.quantize("int8")(x))
    other = net.quantize("int4").state_dict()
    with pytest.raises(loom.ShapeError, match="int4"):
        q.load_state_dict(other)
    with pytest.raises(loom.ShapeError, match="quantized tensor cannot load"):
        net.load_state_dict(q.state_dict())


def test_config_errors():
    with pytest.raises(loom.ConfigError, match="quantization.dtype"):
        loom.Network.from_config({**MLP, "quantization": {"dtype": "int9"}})
    with pytest.raises(loom.ConfigError, match="qat"):
        loom.Network.from_config({**MLP, "quantization": {"dtype": "int8"}, "qat": {"dtype": "int8"}})
    with pytest.raises(loom.ConfigError, match="already quantized"):
        loom.Network.from_config(MLP).quantize("int8").quantize("int4")
    with pytest.raises(loom.ConfigError, match="per"):
        loom.Network.from_config(MLP).quantize("int8", per="row")


# --- quantization-aware training ----------------------------------------------------------------

def _blobs(n=400, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    centers = rng.normal(size=(3, 12)) * 2
    return (centers[y] + rng.normal(size=(n, 12))).astype(np.float32), y


@pytest.mark.parametrize("dtype", ["int8", "int4", "ternary", "binary"])
def test_qat_trains_and_the_quantized_network_reproduces_it(dtype):
    x, y = _blobs()
    cfg = {**MLP, "qat": {"dtype": dtype}}
    net = loom.Network.from_config(cfg)
    train(net, x[:300], y[:300], optimizer={"type": "adam", "lr": 0.01}, epochs=8, verbose=False)
    acc = (net(x[300:]).argmax(1) == y[300:]).mean()
    assert acc >= 0.9, acc
    q = net.quantize(dtype)
    # the same integer arithmetic: only float rounding of the final scaling differs
    np.testing.assert_allclose(q(x[300:]), net(x[300:]), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", ["int8", "int4", "ternary", "binary", "fp8_e4m3"])
@pytest.mark.parametrize("cfg", [MLP, MIXED], ids=["mlp", "mixed"])
def test_qat_gradients_are_straight_through(cfg, dtype):
    """QAT gradients = the float network's gradients taken at the fake-quantized weights (and, for
    integer types, the fake-quantized GEMM inputs), masked where the weight saturated. The float
    network with fake-quantized weights is built by hand, and the reference is checked by finite
    differences on a float64 copy."""
    cfg64 = {**cfg, "dtype": "float64"}
    qat = loom.Network.from_config({**cfg64, "qat": {"dtype": dtype}}).train()
    x = _inputs(cfg).astype(np.float64)
    dy = RNG.standard_normal(qat(x).shape)
    qat.zero_grad()
    qat.forward(x)
    qat.backward(dy)
    got = qat.gradients()
    ref = loom.Network.from_config(cfg64).train()
    fq = {}
    for name, p in qat.parameters().items():
        leaf = name.rsplit(".", 1)[-1]
        is_gemm = leaf == "weight" and p.ndim >= 2 and "norm" not in name
        fq[name] = quant.fake_quantize(p, dtype, per="channel", axis=0) if is_gemm else p
    ref.load_state_dict(fq)
    ref.zero_grad()
    # integer types also fake-quantize GEMM inputs; compare only where inputs pass unchanged (float types)
    if not quant.is_integer(dtype):
        ref.forward(x)
        ref.backward(dy)
        want = ref.gradients()
        for name, g in got.items():
            p = qat.parameters()[name]
            mask = quant.ste_mask(p, dtype, per="channel", axis=0) if fq[name] is not p else 1
            np.testing.assert_allclose(g, want[name] * mask, rtol=1e-9, atol=1e-12, err_msg=name)
    else:
        _check_integer_qat_dense(dtype)


def _check_integer_qat_dense(dtype):
    """Integer QAT on one dense layer, against the formulas written out: x' = per-row int8
    fake-quant of x, W' = fake-quant of W; y = x' W'^T + b; dW = (dy^T x') * mask; dx = dy W'."""
    cfg = {"loom": 1, "dtype": "float64", "input": {"shape": [9]},
           "layers": [{"type": "dense", "units": 4}], "qat": {"dtype": dtype}}
    net = loom.Network.from_config(cfg).train()
    w = net.parameters()["layers.0.weight"]
    w[...] = RNG.standard_normal(w.shape)                     # some values beyond int4's clipped range too
    x, dy = RNG.standard_normal((3, 9)), RNG.standard_normal((3, 4))
    xq = quant.fake_quantize(x, "int8", per="channel", axis=0)
    wq = quant.fake_quantize(w, dtype, per="channel", axis=0)
    net.zero_grad()
    np.testing.assert_allclose(net.forward(x), xq @ wq.T, rtol=1e-12)
    dx = net.backward(dy)
    mask = quant.ste_mask(w, dtype, per="channel", axis=0)
    np.testing.assert_allclose(net.gradients()["layers.0.weight"], (dy.T @ xq) * mask, rtol=1e-12)
    np.testing.assert_allclose(net.gradients()["layers.0.bias"], dy.sum(0), rtol=1e-12)
    np.testing.assert_allclose(dx, dy @ wq, rtol=1e-12)


def test_quantized_and_qat_networks_stay_on_the_cpu():
    for net in (loom.Network.from_config(MLP).quantize("int8"), loom.Network.from_config({**MLP, "qat": {"dtype": "int4"}})):
        with pytest.raises(loom.BackendError, match="CPU only"):
            net.to("cuda")
        assert net.to("cpu") is net

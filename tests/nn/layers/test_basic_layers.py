"""dropout, embedding, layer_norm, rms_norm, batch_norm, swiglu, activation, flatten, reshape,
residual, sequential: gradients, PyTorch parity and behaviour."""
import gradcheck
import numpy as np
import pytest

import loom
from loom.config import ACTIVATIONS


def f32_net(layers, shape, input_dtype=None):
    cfg = {"loom": 1, "dtype": "float32", "input": {"shape": list(shape)}, "layers": layers}
    if input_dtype:
        cfg["input"]["dtype"] = input_dtype
    return loom.Network.from_config(cfg)


@pytest.mark.parametrize("fn", ACTIVATIONS)
def test_activation_layer_gradients(fn):
    gradcheck.check([{"type": "activation", "fn": fn}], [3, 4], batch=2, seed=3)


def test_activations_match_torch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    ref = {"linear": lambda t: t, "relu": F.relu, "leaky_relu": F.leaky_relu, "elu": F.elu, "selu": F.selu,
           "gelu": F.gelu, "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"), "silu": F.silu,
           "mish": F.mish, "softplus": F.softplus, "sigmoid": torch.sigmoid, "tanh": torch.tanh,
           "hard_sigmoid": F.hardsigmoid}
    assert set(ref) == set(ACTIVATIONS)
    x = np.random.default_rng(0).normal(scale=4, size=(3, 64)).astype(np.float32)
    for fn, f in ref.items():
        y = f32_net([{"type": "activation", "fn": fn}], [64])(x)
        assert np.max(np.abs(y - f(torch.from_numpy(x)).numpy())) < 1e-5, fn


@pytest.mark.parametrize("layer", [{"type": "layer_norm"}, {"type": "layer_norm", "affine": False},
                                   {"type": "rms_norm"}, {"type": "batch_norm"}])
@pytest.mark.parametrize("shape", [[6], [3, 5], [2, 3, 4]])
@pytest.mark.parametrize("training", [False, True])
def test_norm_gradients(layer, shape, training):
    # Random affine parameters so the check is not at the trivial weight=1, bias=0 point.
    net = gradcheck.make_net([layer], shape, seed=5)
    rng = np.random.default_rng(9)
    for p in net.parameters().values():
        p[...] = rng.normal(size=p.shape)
    for name, b in net.buffers().items():
        if name.endswith("running_var"):
            b[...] = rng.uniform(0.5, 2, size=b.shape)
        elif name.endswith("running_mean"):
            b[...] = rng.normal(size=b.shape)
    gradcheck.check([layer], shape, batch=3, training=training, net=net)


def test_norms_match_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 3, 8)).astype(np.float32)
    cases = [({"type": "layer_norm"}, torch.nn.LayerNorm(8)),
             ({"type": "rms_norm", "eps": 1e-6}, torch.nn.RMSNorm(8, eps=1e-6)),
             ({"type": "batch_norm"}, torch.nn.BatchNorm1d(3))]
    for cfg, mod in cases:
        with torch.no_grad():
            for p in mod.parameters():
                p.copy_(torch.from_numpy(rng.normal(size=tuple(p.shape)).astype(np.float32)))
        net = f32_net([cfg], [3, 8])
        net.load_state_dict({"layers.0." + k: v for k, v in mod.state_dict().items()})
        for training in (True, False):
            net.train(training)
            mod.train(training)
            y = net(x)
            ref = mod(torch.from_numpy(x)).detach().numpy()
            assert np.max(np.abs(y - ref)) < 1e-5, (cfg, training)
        for k, v in mod.state_dict().items():   # running statistics follow PyTorch's update rule
            np.testing.assert_allclose(net.state_dict()["layers.0." + k], v.numpy(), rtol=1e-6, atol=1e-7)


def test_batch_norm_needs_two_values_per_channel_in_training():
    net = f32_net([{"type": "batch_norm"}], [3]).train()
    with pytest.raises(loom.ShapeError, match="more than one value"):
        net(np.ones((1, 3), np.float32))


def test_dropout_training_and_eval():
    net = f32_net([{"type": "dropout", "rate": 0.25}], [1000])
    x = np.ones((4, 1000), np.float32)
    assert np.array_equal(net(x), x)                       # eval: identity
    net.train()
    y1 = net(x)
    kept = y1 != 0
    assert 0.7 < kept.mean() < 0.8
    assert np.all(y1[kept] == np.float32(1 / 0.75))
    assert not np.array_equal(net(x), y1)                  # next step draws a new mask
    net.rng_counter = 0
    assert np.array_equal(net(x), y1)                      # the counter alone decides the mask
    gradcheck.check([{"type": "dense", "units": 5}, {"type": "dropout", "rate": 0.5}], [4], batch=3, training=True)


def test_embedding_gradients_and_lookup():
    ids = np.array([[0, 3, 3, 1], [2, 2, 0, 4]])
    gradcheck.check([{"type": "embedding", "vocab_size": 5, "dim": 3}, {"type": "dense", "units": 2}],
                    [4], x=ids, input_dtype="int64")
    net = f32_net([{"type": "embedding", "vocab_size": 5, "dim": 3}], [4], input_dtype="int64")
    w = net.parameters()["layers.0.weight"]
    assert np.array_equal(net(ids), w[ids])
    with pytest.raises(loom.ShapeError, match="token id 5 at index \\[1, 2\\]"):
        net(np.array([[0, 1, 2, 3], [1, 1, 5, 0]]))
    with pytest.raises(loom.ShapeError, match="expected integer ids"):
        net(np.zeros((1, 4), np.float32))


def test_embedding_needs_integer_input():
    with pytest.raises(loom.ConfigError, match=r"^layers\[0\]: embedding needs integer ids"):
        f32_net([{"type": "embedding", "vocab_size": 5, "dim": 3}], [4])


def test_swiglu_gradients_and_torch():
    gradcheck.check([{"type": "swiglu", "hidden": 6}], [3, 4])
    gradcheck.check([{"type": "swiglu", "hidden": 5, "bias": True}], [4])
    torch = pytest.importorskip("torch")
    net = f32_net([{"type": "swiglu", "hidden": 16}], [8])
    p = {k: torch.from_numpy(v) for k, v in net.parameters().items()}
    x = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
    t = torch.from_numpy(x)
    ref = (torch.nn.functional.silu(t @ p["layers.0.gate_proj.weight"].T) * (t @ p["layers.0.up_proj.weight"].T)) \
        @ p["layers.0.down_proj.weight"].T
    assert np.max(np.abs(net(x) - ref.numpy())) < 1e-5


def test_containers_and_shape_layers():
    gradcheck.check([{"type": "reshape", "shape": [2, -1]}, {"type": "dense", "units": 3},
                     {"type": "flatten"},
                     {"type": "residual", "layers": [{"type": "dense", "units": 6, "activation": "tanh"}]},
                     {"type": "sequential", "layers": [{"type": "dense", "units": 2}, {"type": "activation", "fn": "elu"}]}],
                    [3, 2], batch=3)


@pytest.mark.parametrize("layers, shape, message", [
    ([{"type": "reshape", "shape": [4, 4]}], [3, 5], r"layers\[0\]\.shape: cannot reshape \[3, 5\]"),
    ([{"type": "residual", "layers": [{"type": "dense", "units": 3}]}], [4],
     r"layers\[0\]\.layers: residual branch must keep the shape \[4\]"),
    ([{"type": "sequential", "layers": [{"type": "flatten"}, {"type": "embedding", "vocab_size": 3, "dim": 2}]}], [4],
     r"layers\[0\]\.layers\[1\]: embedding needs integer ids"),
])
def test_shape_errors_name_the_path(layers, shape, message):
    with pytest.raises(loom.ConfigError, match=message):
        f32_net(layers, shape)


@pytest.mark.parametrize("fn", ACTIVATIONS)
def test_activation_forward_gives_grad_what_it_needs(fn):
    """activation.forward may drop the pre-activation; the gradient from what it keeps must equal the
    gradient from the true pre-activation."""
    from loom.nn.layers import activation
    z = np.random.default_rng(0).normal(scale=3, size=(4, 50))
    dy = np.random.default_rng(1).normal(size=z.shape)
    y_ref = activation.apply(fn, z.copy())
    kept, y = activation.forward(fn, z.copy())
    assert np.array_equal(y, y_ref)
    assert np.array_equal(activation.grad(fn, kept, y, dy), activation.grad(fn, z, y_ref, dy))

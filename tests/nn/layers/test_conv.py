import gradcheck
import numpy as np
import pytest

import loom


def conv(kind, **keys):
    return {"type": kind, **keys}


# --- gradient checks (float64 central differences) ------------------------------------------------

GRAD_CASES = [
    # conv1d: stride, int padding, dilation, activation
    (conv("conv1d", filters=3, kernel_size=3, stride=2, padding=1, dilation=2, activation="tanh"), [2, 9]),
    # conv1d: "same" with an even kernel (asymmetric pad), groups, no bias
    (conv("conv1d", filters=4, kernel_size=4, padding="same", groups=2, bias=False), [4, 7]),
    # conv2d: per-dim lists for everything, groups, activation
    (conv("conv2d", filters=4, kernel_size=[3, 2], stride=[2, 1], padding=[1, 0], dilation=[1, 2],
          groups=2, activation="sigmoid"), [2, 6, 5]),
    # conv2d: "same" with dilation
    (conv("conv2d", filters=2, kernel_size=3, padding="same", dilation=2, activation="silu"), [3, 5, 4]),
    # conv3d: stride and padding lists, groups
    (conv("conv3d", filters=4, kernel_size=2, stride=[1, 2, 1], padding=[1, 0, 1], groups=2), [2, 3, 4, 3]),
    # conv3d: "same" with a mixed kernel, no bias, activation
    (conv("conv3d", filters=2, kernel_size=[3, 2, 1], padding="same", bias=False, activation="tanh"), [2, 3, 3, 2]),
    # conv_transpose1d: stride, padding, output_padding < stride
    (conv("conv_transpose1d", filters=3, kernel_size=3, stride=2, padding=1, output_padding=1,
          activation="tanh"), [2, 5]),
    # conv_transpose1d: groups, dilation, output_padding < dilation (>= stride), no bias
    (conv("conv_transpose1d", filters=4, kernel_size=2, dilation=3, output_padding=2, groups=2, bias=False), [2, 4]),
    # conv_transpose2d: per-dim lists, groups, activation
    (conv("conv_transpose2d", filters=4, kernel_size=[3, 2], stride=[2, 3], padding=[1, 0],
          output_padding=[1, 2], dilation=[1, 2], groups=2, activation="sigmoid"), [2, 3, 2]),
    # conv_transpose3d: stride 2, padding, no bias
    (conv("conv_transpose3d", filters=2, kernel_size=2, stride=2, padding=[0, 1, 0], bias=False), [2, 2, 2, 2]),
    # conv_transpose3d: groups, dilation, activation
    (conv("conv_transpose3d", filters=2, kernel_size=[2, 1, 2], dilation=[2, 1, 1], groups=2,
          output_padding=[1, 0, 0], activation="tanh"), [2, 2, 2, 1]),
]


@pytest.mark.parametrize("layer,shape", GRAD_CASES, ids=lambda v: v["type"] if isinstance(v, dict) else None)
def test_conv_gradients(layer, shape):
    net = gradcheck.check([layer], shape, batch=2, seed=3)
    names = {"layers.0.weight"} | ({"layers.0.bias"} if layer.get("bias", True) else set())
    assert set(net.parameters()) == names


def test_conv_stack_gradients():
    layers = [conv("conv2d", filters=4, kernel_size=3, stride=2, padding=1, activation="tanh"),
              conv("conv_transpose2d", filters=2, kernel_size=3, stride=2, padding=1, output_padding=1)]
    net = gradcheck.check(layers, [2, 4, 4], batch=2, seed=5)
    assert net.output_spec.shape == (2, 4, 4)


# --- shapes, layouts and init -----------------------------------------------------------------------

def test_output_shapes_and_weight_layouts():
    net = gradcheck.make_net([conv("conv2d", filters=6, kernel_size=[3, 1], stride=2, padding=[1, 0],
                                   dilation=[2, 1], groups=3)], [3, 11, 7])
    assert net.output_spec.shape == (6, 5, 4)    # floor((11+2-4-1)/2)+1, floor((7-0-1)/2)+1
    assert net.parameters()["layers.0.weight"].shape == (6, 1, 3, 1)
    assert net.parameters()["layers.0.bias"].shape == (6,)
    net = gradcheck.make_net([conv("conv_transpose3d", filters=4, kernel_size=[2, 3, 1], stride=[2, 1, 3],
                                   output_padding=[1, 0, 2], groups=2)], [2, 3, 2, 2])
    assert net.output_spec.shape == (4, 7, 4, 6)
    assert net.parameters()["layers.0.weight"].shape == (2, 2, 2, 3, 1)


def test_init_bound_and_zero_bias():
    net = gradcheck.make_net([conv("conv2d", filters=8, kernel_size=3, groups=2, activation="relu")], [4, 6, 6])
    w = net.parameters()["layers.0.weight"]
    bound = np.sqrt(6.0 / (2 * 9))           # He uniform, fan_in = C/groups * prod(k)
    assert np.max(np.abs(w)) <= bound and np.max(np.abs(w)) > 0.8 * bound
    assert not np.any(net.parameters()["layers.0.bias"])


def test_float32_stays_float32():
    cfg = {"loom": 1, "dtype": "float32", "input": {"shape": [2, 5, 5]},
           "layers": [conv("conv2d", filters=3, kernel_size=3, padding=1),
                      conv("conv_transpose2d", filters=2, kernel_size=2, stride=2)]}
    net = loom.Network.from_config(cfg)
    x = np.random.default_rng(0).normal(size=(2, 2, 5, 5)).astype(np.float32)
    y = net(x)
    assert y.dtype == np.float32 and y.shape == (2, 2, 10, 10)
    dx = net.backward(np.ones_like(y))
    assert dx.dtype == np.float32
    assert all(g.dtype == np.float32 for g in net.gradients().values())


# --- PyTorch comparison -----------------------------------------------------------------------------

TORCH_CASES = [
    conv("conv1d", filters=4, kernel_size=3, stride=2, padding=2, dilation=2, groups=2, activation="relu"),
    conv("conv1d", filters=3, kernel_size=4, padding="same"),
    conv("conv2d", filters=6, kernel_size=[3, 2], stride=[2, 1], padding=[1, 0], dilation=[1, 2], groups=2),
    conv("conv2d", filters=4, kernel_size=[4, 3], padding="same", dilation=[1, 2], bias=False),
    conv("conv3d", filters=4, kernel_size=[2, 3, 2], stride=[1, 2, 1], padding=1, groups=2, activation="tanh"),
    conv("conv_transpose1d", filters=3, kernel_size=3, stride=2, padding=1, output_padding=1),
    conv("conv_transpose1d", filters=4, kernel_size=2, dilation=3, output_padding=2, groups=2, bias=False),
    conv("conv_transpose2d", filters=6, kernel_size=[3, 2], stride=[2, 3], padding=[1, 0], output_padding=[1, 2],
         dilation=[1, 2], groups=2, activation="sigmoid"),
    conv("conv_transpose3d", filters=4, kernel_size=2, stride=[2, 1, 2], padding=[0, 1, 1], output_padding=[1, 0, 0],
         groups=2),
]
SPATIAL = {1: [11], 2: [9, 8], 3: [5, 6, 4]}


def torch_layer(torch, layer, c):
    n = int(layer["type"][-2])
    keys = dict(kernel_size=layer["kernel_size"], stride=layer.get("stride", 1),
                padding=layer.get("padding", 0), dilation=layer.get("dilation", 1),
                groups=layer.get("groups", 1), bias=layer.get("bias", True))
    keys = {k: tuple(v) if isinstance(v, list) else v for k, v in keys.items()}
    if layer["type"].startswith("conv_transpose"):
        op = layer.get("output_padding", 0)
        cls = getattr(torch.nn, f"ConvTranspose{n}d")
        return cls(c, layer["filters"], output_padding=tuple(op) if isinstance(op, list) else op, **keys)
    return getattr(torch.nn, f"Conv{n}d")(c, layer["filters"], **keys)


def torch_pair(torch, layer, dtype, seed=0):
    """(loom net, torch function) with the same weights, input [4, *spatial]."""
    n = int(layer["type"][-2])
    spatial = SPATIAL[n] if not layer["type"].startswith("conv_transpose") else [s // 2 + 1 for s in SPATIAL[n]]
    shape = [4, *spatial]
    torch.manual_seed(seed)
    mod = torch_layer(torch, layer, 4)
    cfg = {"loom": 1, "dtype": dtype, "input": {"shape": shape}, "layers": [layer]}
    net = loom.Network.from_config(cfg)
    net.load_state_dict({"layers.0." + k: v for k, v in mod.state_dict().items()})
    act = {"linear": lambda t: t, "relu": torch.relu, "tanh": torch.tanh,
           "sigmoid": torch.sigmoid}[layer.get("activation", "linear")]
    tdtype = torch.float64 if dtype == "float64" else torch.float32
    mod = mod.to(tdtype)
    return net, (lambda t: act(mod(t))), mod, shape


@pytest.mark.filterwarnings("ignore:Using padding='same'")   # torch notes its own extra copy
@pytest.mark.parametrize("layer", TORCH_CASES, ids=lambda v: v["type"])
def test_forward_matches_torch_float32(layer):
    torch = pytest.importorskip("torch")
    net, fn, _, shape = torch_pair(torch, layer, "float32")
    x = np.random.default_rng(1).normal(size=(3, *shape)).astype(np.float32)
    y = net(x)
    ref = fn(torch.from_numpy(x)).detach().numpy()
    assert y.dtype == np.float32 and y.shape == ref.shape
    assert np.max(np.abs(y - ref)) < 1e-5


@pytest.mark.parametrize("layer", [TORCH_CASES[0], TORCH_CASES[2], TORCH_CASES[3], TORCH_CASES[4],
                                   TORCH_CASES[6], TORCH_CASES[7], TORCH_CASES[8]], ids=lambda v: v["type"])
def test_gradients_match_torch_float64(layer):
    torch = pytest.importorskip("torch")
    net, fn, mod, shape = torch_pair(torch, layer, "float64")
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, *shape))
    y = net(x)
    dy = rng.normal(size=y.shape)
    net.zero_grad()
    dx = net.backward(dy)
    xt = torch.from_numpy(x).requires_grad_()
    fn(xt).backward(torch.from_numpy(dy))
    assert np.max(np.abs(dx - xt.grad.numpy())) < 1e-10
    grads = net.gradients()
    for name, p in mod.named_parameters():
        assert np.max(np.abs(grads["layers.0." + name] - p.grad.numpy())) < 1e-10, name


# --- config errors ----------------------------------------------------------------------------------

def build_error(layer, shape, input_dtype=None):
    with pytest.raises(loom.ConfigError) as info:
        gradcheck.make_net([layer], shape, input_dtype=input_dtype)
    return str(info.value)


def test_groups_must_divide_channels_and_filters():
    msg = build_error(conv("conv2d", filters=4, kernel_size=1, groups=2), [3, 4, 4])
    assert msg.startswith("layers[0].groups: ") and "(3)" in msg and "(4)" in msg
    msg = build_error(conv("conv_transpose1d", filters=3, kernel_size=1, groups=2), [4, 4])
    assert msg.startswith("layers[0].groups: ")


def test_same_padding_needs_stride_one():
    msg = build_error(conv("conv1d", filters=2, kernel_size=3, stride=2, padding="same"), [1, 8])
    assert msg.startswith("layers[0].padding: ") and "stride" in msg


def test_kernel_larger_than_padded_input():
    msg = build_error(conv("conv2d", filters=2, kernel_size=[3, 4], padding=[0, 1]), [1, 5, 1])
    assert msg.startswith("layers[0].kernel_size: ") and "3" in msg
    msg = build_error(conv("conv1d", filters=2, kernel_size=3, dilation=3), [1, 6])
    assert msg.startswith("layers[0].kernel_size: ")


def test_output_padding_must_be_below_stride_or_dilation():
    msg = build_error(conv("conv_transpose2d", filters=2, kernel_size=3, stride=[2, 1], output_padding=[1, 1]),
                      [1, 4, 4])
    assert msg.startswith("layers[0].output_padding: ")
    msg = build_error(conv("conv_transpose1d", filters=2, kernel_size=3, stride=2, output_padding=2), [1, 4])
    assert msg.startswith("layers[0].output_padding: ")


def test_transpose_padding_too_large():
    msg = build_error(conv("conv_transpose1d", filters=2, kernel_size=1, padding=1), [1, 2])
    assert msg.startswith("layers[0].padding: ")


@pytest.mark.parametrize("kind,shape", [("conv1d", [3, 4, 4]), ("conv2d", [8]), ("conv3d", [2, 3, 3]),
                                        ("conv_transpose2d", [2, 3, 3, 3])])
def test_wrong_input_rank(kind, shape):
    msg = build_error(conv(kind, filters=2, kernel_size=1), shape)
    assert msg.startswith("layers[0]: ") and str(shape) in msg


def test_wrong_list_length_and_integer_input():
    msg = build_error(conv("conv2d", filters=2, kernel_size=[1, 1, 1]), [1, 3, 3])
    assert msg.startswith("layers[0].kernel_size: ")
    msg = build_error(conv("conv2d", filters=2, kernel_size=1, dilation=[1, 2, 1]), [1, 3, 3])
    assert msg.startswith("layers[0].dilation: ")
    msg = build_error(conv("conv1d", filters=2, kernel_size=1), [1, 3], input_dtype="int64")
    assert msg.startswith("layers[0]: ") and "floating-point" in msg

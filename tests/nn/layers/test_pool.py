import gradcheck
import numpy as np
import pytest

import loom


def pool(kind, **keys):
    return {"type": kind, **keys}


# --- gradient checks (float64 central differences) ------------------------------------------------

GRAD_CASES = [
    (pool("max_pool1d", pool_size=3, stride=2, padding=1), [2, 9]),
    (pool("avg_pool1d", pool_size=3, stride=2, padding=1), [2, 9]),
    (pool("max_pool2d", pool_size=[3, 2], stride=[1, 3], padding=[1, 1]), [2, 5, 7]),
    (pool("avg_pool2d", pool_size=[3, 2], stride=[2, 1], padding=[1, 0]), [2, 6, 5]),
    (pool("max_pool3d", pool_size=2, stride=1, padding=[1, 0, 1]), [2, 3, 3, 2]),
    (pool("avg_pool3d", pool_size=[3, 2, 2], stride=[2, 1, 3], padding=1), [1, 4, 3, 5]),
    (pool("max_pool2d", pool_size=2), [3, 4, 5]),   # stride defaults to pool_size
]


@pytest.mark.parametrize("layer,shape", GRAD_CASES, ids=lambda v: v["type"] if isinstance(v, dict) else None)
def test_pool_gradients(layer, shape):
    # max pool's gradient is only defined away from ties; random normal inputs have none
    net = gradcheck.check([layer], shape, batch=2, seed=4)
    assert net.parameters() == {}


def test_output_shapes():
    net = gradcheck.make_net([pool("max_pool2d", pool_size=[3, 2], stride=[2, 1], padding=[1, 0])], [3, 8, 5])
    assert net.output_spec.shape == (3, 4, 4)       # floor((8+2-3)/2)+1, floor((5-2)/1)+1
    net = gradcheck.make_net([pool("avg_pool3d", pool_size=2)], [1, 5, 4, 3])
    assert net.output_spec.shape == (1, 2, 2, 1)


def test_max_pool_ties_go_to_first_maximum_and_overlaps_accumulate():
    net = gradcheck.make_net([pool("max_pool1d", pool_size=3, stride=1)], [1, 5])
    x = np.array([[[1.0, 2.0, 2.0, 0.0, 2.0]]])
    assert net(x).tolist() == [[[2.0, 2.0, 2.0]]]
    dx = net.backward(np.array([[[1.0, 10.0, 100.0]]]))
    # windows [1,2,2] [2,2,0] [2,0,2]: the first max of each is index 1, 1, 2
    assert dx.tolist() == [[[0.0, 11.0, 100.0, 0.0, 0.0]]]


def test_max_pool_padding_is_never_the_maximum():
    net = gradcheck.make_net([pool("max_pool1d", pool_size=3, stride=2, padding=1)], [1, 4])
    x = -np.array([[[5.0, 6.0, 7.0, 8.0]]])
    assert net(x).tolist() == [[[-5.0, -6.0]]]   # windows [pad, -5, -6], [-6, -7, -8]


def test_avg_pool_counts_padding_in_divisor():
    net = gradcheck.make_net([pool("avg_pool1d", pool_size=2, stride=2, padding=1)], [1, 3])
    y = net(np.array([[[2.0, 4.0, 6.0]]]))
    assert y.tolist() == [[[1.0, 5.0]]]
    dx = net.backward(np.array([[[1.0, 1.0]]]))
    assert dx.tolist() == [[[0.5, 0.5, 0.5]]]


def test_float32_stays_float32():
    for kind in ("max_pool2d", "avg_pool2d"):
        cfg = {"loom": 1, "dtype": "float32", "input": {"shape": [2, 5, 5]},
               "layers": [pool(kind, pool_size=3, stride=2, padding=1)]}
        net = loom.Network.from_config(cfg)
        y = net(np.random.default_rng(0).normal(size=(2, 2, 5, 5)).astype(np.float32))
        assert y.dtype == np.float32
        assert net.backward(np.ones_like(y)).dtype == np.float32


# --- PyTorch comparison -----------------------------------------------------------------------------

TORCH_CASES = [
    pool("max_pool1d", pool_size=3, stride=2, padding=1),
    pool("avg_pool1d", pool_size=4, stride=3, padding=2),
    pool("max_pool2d", pool_size=[3, 2], stride=[2, 1], padding=[1, 1]),
    pool("max_pool2d", pool_size=2),
    pool("avg_pool2d", pool_size=[3, 3], stride=[1, 2], padding=[1, 0]),
    pool("max_pool3d", pool_size=[2, 3, 2], stride=[1, 2, 2], padding=[1, 1, 0]),
    pool("avg_pool3d", pool_size=2, stride=[2, 1, 1], padding=1),
]
SPATIAL = {1: [11], 2: [9, 8], 3: [5, 6, 4]}


def torch_fn(torch, layer):
    n, kind = int(layer["type"][-2]), layer["type"].split("_")[0]
    tup = lambda v: tuple(v) if isinstance(v, list) else v  # noqa: E731
    keys = dict(kernel_size=tup(layer["pool_size"]), stride=tup(layer.get("stride")),
                padding=tup(layer.get("padding", 0)))
    cls = getattr(torch.nn, f"{'Max' if kind == 'max' else 'Avg'}Pool{n}d")
    return cls(**keys)


@pytest.mark.parametrize("layer", TORCH_CASES, ids=lambda v: v["type"])
def test_forward_matches_torch_float32(layer):
    torch = pytest.importorskip("torch")
    n = int(layer["type"][-2])
    shape = [3, *SPATIAL[n]]
    net = loom.Network.from_config({"loom": 1, "dtype": "float32", "input": {"shape": shape}, "layers": [layer]})
    x = np.random.default_rng(1).normal(size=(2, *shape)).astype(np.float32)
    y = net(x)
    ref = torch_fn(torch, layer)(torch.from_numpy(x)).numpy()
    assert y.dtype == np.float32 and y.shape == ref.shape
    assert np.max(np.abs(y - ref)) < 1e-5


@pytest.mark.parametrize("layer", TORCH_CASES, ids=lambda v: v["type"])
@pytest.mark.parametrize("ties", [False, True])
def test_input_gradient_matches_torch_float64(layer, ties):
    torch = pytest.importorskip("torch")
    n = int(layer["type"][-2])
    shape = [3, *SPATIAL[n]]
    net = gradcheck.make_net([layer], shape)
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, *shape))
    if ties:  # few distinct values: many windows hold several maxima
        x = np.round(x)
    y = net(x)
    dy = rng.normal(size=y.shape)
    dx = net.backward(dy)
    xt = torch.from_numpy(x).requires_grad_()
    yt = torch_fn(torch, layer)(xt)
    yt.backward(torch.from_numpy(dy))
    assert np.max(np.abs(y - yt.detach().numpy())) < 1e-12
    assert np.max(np.abs(dx - xt.grad.numpy())) < 1e-12


# --- config errors ----------------------------------------------------------------------------------

def build_error(layer, shape, input_dtype=None):
    with pytest.raises(loom.ConfigError) as info:
        gradcheck.make_net([layer], shape, input_dtype=input_dtype)
    return str(info.value)


def test_padding_at_most_half_the_pool_size():
    msg = build_error(pool("max_pool2d", pool_size=[3, 2], padding=[1, 2]), [1, 6, 6])
    assert msg.startswith("layers[0].padding: ") and "2" in msg


def test_pool_larger_than_padded_input():
    msg = build_error(pool("avg_pool2d", pool_size=[2, 4], padding=[0, 1]), [1, 3, 1])
    assert msg.startswith("layers[0].pool_size: ")


@pytest.mark.parametrize("kind,shape", [("max_pool1d", [4]), ("avg_pool2d", [2, 3]), ("max_pool3d", [1, 2, 3, 4, 5])])
def test_wrong_input_rank(kind, shape):
    msg = build_error(pool(kind, pool_size=1), shape)
    assert msg.startswith("layers[0]: ") and str(shape) in msg


def test_wrong_list_length_and_integer_input():
    msg = build_error(pool("max_pool2d", pool_size=2, stride=[1, 1, 1]), [1, 4, 4])
    assert msg.startswith("layers[0].stride: ")
    msg = build_error(pool("avg_pool1d", pool_size=2), [1, 4], input_dtype="int32")
    assert msg.startswith("layers[0]: ") and "floating-point" in msg


@pytest.mark.parametrize("size", [(4, 6), (5, 7)])
def test_tiling_max_pool_gradient_is_the_adjoints_bits(size):
    """Windows that tile the input take a transpose instead of the strided adds: the same bits,
    -0.0 gradients included (the adjoint's zero start makes them +0.0), remainders left at zero."""
    from loom.kernels.windows import crop, windows_adjoint
    from loom.nn.layers.pool import max_pool_arrays, max_pool_grad_arrays
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 3, *size))
    out = (size[0] // 2, size[1] // 2)
    _, arg = max_pool_arrays(np, x, (2, 2), (2, 2), (0, 0), out)
    dy = rng.normal(size=(2, 3, *out))
    dy[0, 0, 0, :] = -0.0
    got = max_pool_grad_arrays(np, dy, arg, (2, 2), (2, 2), (0, 0), size)
    hit = arg[..., None] == np.arange(4)
    parts = np.where(hit, dy[..., None], 0.0).reshape(dy.shape + (2, 2))
    want = crop(np, windows_adjoint(np, parts, size, (2, 2), (1, 1)), (0, 0), size)
    assert got.shape == want.shape and got.tobytes() == want.tobytes()
    assert not np.signbit(got[0, 0, :2]).any()          # the rows under the -0.0 gradients


def test_pad_is_numpys_pad():
    from loom.kernels.windows import pad
    x = np.random.default_rng(3).normal(size=(2, 3, 4, 5)).astype(np.float32)
    got = pad(np, x, (1, 0), (2, 3), -np.inf)
    want = np.pad(x, [(0, 0), (0, 0), (1, 2), (0, 3)], constant_values=-np.inf)
    assert got.dtype == np.float32 and got.tobytes() == want.tobytes()

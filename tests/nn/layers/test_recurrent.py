import gradcheck
import numpy as np
import pytest

import loom

KINDS = ("rnn", "lstm", "gru")
TAIL_MASK = np.array([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=bool)   # sample 1 is padded after 2 steps


def _net32(layer, input_shape, seed=0):
    return loom.Network.from_config({"loom": 1, "dtype": "float32", "seed": seed,
                                     "input": {"shape": list(input_shape)}, "layers": [layer]})


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seqs", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_gradients(kind, seqs, bias):
    net = gradcheck.check([{"type": kind, "hidden": 3, "return_sequences": seqs, "bias": bias}], [4, 3],
                          batch=2, seed=1)
    names = {"layers.0.weight_ih", "layers.0.weight_hh"} | ({"layers.0.bias_ih", "layers.0.bias_hh"} if bias else set())
    assert set(net.parameters()) == names


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seqs", [True, False])
def test_gradients_with_padding_mask(kind, seqs):
    gradcheck.check([{"type": kind, "hidden": 3, "return_sequences": seqs}], [4, 3], batch=2, seed=2,
                    attention_mask=TAIL_MASK)


@pytest.mark.parametrize("kind", KINDS)
def test_padded_steps_carry_the_state(kind):
    """The last state of a tail-padded sample is its state after its last real token, and padded
    outputs repeat it."""
    layer = {"type": kind, "hidden": 5, "return_sequences": True}
    x = np.random.default_rng(3).normal(size=(2, 4, 3))
    full = gradcheck.make_net([layer], [4, 3], seed=7)
    short = gradcheck.make_net([layer], [2, 3], seed=7)     # same parameter streams, so same weights
    y = full(x, attention_mask=TAIL_MASK)
    ref = short(x[1:, :2])
    np.testing.assert_allclose(y[1, :2], ref[0], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(y[1, 2], y[1, 1])
    np.testing.assert_array_equal(y[1, 3], y[1, 1])
    np.testing.assert_array_equal(y[0], full(x)[0])         # the unpadded sample is unaffected
    last = gradcheck.make_net([{**layer, "return_sequences": False}], [4, 3], seed=7)
    np.testing.assert_allclose(last(x, attention_mask=TAIL_MASK)[1], ref[0, -1], rtol=0, atol=1e-12)


def test_init_bounds_and_shapes():
    net = gradcheck.make_net([{"type": "gru", "hidden": 16}], [3, 5])
    p = net.parameters()
    assert p["layers.0.weight_ih"].shape == (48, 5) and p["layers.0.weight_hh"].shape == (48, 16)
    assert p["layers.0.bias_ih"].shape == (48,) and p["layers.0.bias_hh"].shape == (48,)
    for v in p.values():
        assert np.max(np.abs(v)) <= 0.25 and np.std(v) > 0.1      # uniform(-1/4, 1/4)
    assert net.output_spec.shape == (16,)


def _torch_module(torch, kind, features, hidden, dtype):
    cls = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[kind]
    torch.manual_seed(0)
    return cls(features, hidden, batch_first=True).to(dtype)


def _state(mod):
    return {"layers.0." + k.removesuffix("_l0"): v for k, v in mod.state_dict().items()}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seqs", [True, False])
def test_matches_torch(kind, seqs):
    torch = pytest.importorskip("torch")
    mod = _torch_module(torch, kind, 4, 6, torch.float32)
    net = _net32({"type": kind, "hidden": 6, "return_sequences": seqs}, [5, 4])
    net.load_state_dict(_state(mod))
    x = np.random.default_rng(0).normal(size=(3, 5, 4)).astype(np.float32)
    out, _ = mod(torch.from_numpy(x))
    ref = (out if seqs else out[:, -1]).detach().numpy()
    y = net(x)
    assert y.dtype == np.float32
    assert np.max(np.abs(y - ref)) < 1e-5


@pytest.mark.parametrize("kind", KINDS)
def test_padding_matches_torch_packed_sequences(kind):
    torch = pytest.importorskip("torch")
    mod = _torch_module(torch, kind, 4, 6, torch.float32)
    net = _net32({"type": kind, "hidden": 6}, [4, 4])
    net.load_state_dict(_state(mod))
    x = np.random.default_rng(1).normal(size=(2, 4, 4)).astype(np.float32)
    packed = torch.nn.utils.rnn.pack_padded_sequence(torch.from_numpy(x), torch.tensor([4, 2]),
                                                     batch_first=True)
    _, state = mod(packed)
    h = state[0] if kind == "lstm" else state
    assert np.max(np.abs(net(x, attention_mask=TAIL_MASK) - h[0].detach().numpy())) < 1e-5


def test_lstm_gradients_match_torch_autograd():
    torch = pytest.importorskip("torch")
    mod = _torch_module(torch, "lstm", 3, 4, torch.float64)
    net = gradcheck.make_net([{"type": "lstm", "hidden": 4, "return_sequences": True}], [5, 3])
    net.load_state_dict(_state(mod))
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 5, 3))
    dy = rng.normal(size=(2, 5, 4))
    xt = torch.from_numpy(x).requires_grad_(True)
    out, _ = mod(xt)
    out.backward(torch.from_numpy(dy))
    net.forward(x)
    dx = net.backward(dy)
    assert np.max(np.abs(dx - xt.grad.numpy())) < 1e-12
    grads = net.gradients()
    for name, param in mod.named_parameters():
        ours = grads["layers.0." + name.removesuffix("_l0")]
        assert np.max(np.abs(ours - param.grad.numpy())) < 1e-12, name


@pytest.mark.parametrize("kind", KINDS)
def test_float32_runs_in_float32(kind):
    net = _net32({"type": kind, "hidden": 3, "return_sequences": True}, [4, 2])
    x = np.ones((2, 4, 2), dtype=np.float32)
    y = net(x, attention_mask=TAIL_MASK)
    dx = net.backward(np.ones_like(y))
    assert y.dtype == dx.dtype == np.float32
    assert all(g.dtype == np.float32 for g in net.gradients().values())


@pytest.mark.parametrize("shape", [[5], [2, 3, 4]])
def test_wrong_input_rank_is_a_config_error(shape):
    with pytest.raises(loom.ConfigError) as err:
        gradcheck.make_net([{"type": "lstm", "hidden": 3}], shape)
    assert err.value.path == "layers[0]"
    assert "[T, F]" in str(err.value)


def test_mask_of_wrong_length_is_a_shape_error():
    net = gradcheck.make_net([{"type": "gru", "hidden": 3}], [4, 2])
    with pytest.raises(loom.ShapeError):
        net(np.zeros((2, 4, 2)), attention_mask=np.ones((2, 3), dtype=bool))

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


class _NumpyLSTMSteps:
    """The GPU's fused LSTM steps (loom/backend/cuda/recurrent.py) written out in NumPy with the
    composed cell's operations: the fused loop's bookkeeping (which h, c, gradient and buffer each step
    reads and writes) must give the composed loop's bits, which the GPU test then holds the kernels to."""

    @staticmethod
    def lstm_step(ax_t, mm, bias_hh, c_prev, c_out, gates, h_out, h_next):
        from loom.kernels import ops
        H = c_prev.shape[1]
        a = ax_t + (mm + bias_hh if bias_hh is not None else mm)
        i, f = ops.sigmoid(a[:, :H]), ops.sigmoid(a[:, H:2 * H])
        g, o = ops.tanh(a[:, 2 * H:3 * H]), ops.sigmoid(a[:, 3 * H:])
        c_out[...] = f * c_prev + i * g
        gates[:4] = i, f, g, o
        gates[4] = ops.tanh(c_out)
        h_out[...] = o * gates[4]
        if h_next is not None:
            h_next[...] = h_out

    @staticmethod
    def lstm_step_back(mm, d0, dy_t, gates, c_prev, d1, da_t, d1_out):
        i, f, g, o, tc = gates
        dh = 0 + mm if mm is not None else (d0 if d0 is not None else np.zeros_like(i))
        if dy_t is not None:
            dh = dh + dy_t
        dc = (d1 if d1 is not None else np.zeros_like(i)) + dh * o * (1 - tc * tc)
        da_t[...] = np.concatenate([dc * g * i * (1 - i), dc * c_prev * f * (1 - f), dc * i * (1 - g * g),
                                    dh * tc * o * (1 - o)], axis=1)
        d1_out[...] = 0 + dc * f


@pytest.mark.parametrize("deterministic", [True, False])
@pytest.mark.parametrize("seqs", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fused_lstm_loop_has_the_composed_loops_bits(monkeypatch, deterministic, seqs, bias, dtype):
    from loom.kernels import fused
    cfg = {"loom": 1, "dtype": dtype, "seed": 4, "input": {"shape": [6, 3]},
           "layers": [{"type": "lstm", "hidden": 5, "return_sequences": seqs, "bias": bias}]}
    rng = np.random.default_rng(5)
    x = rng.normal(size=(4, 6, 3)).astype(dtype) * 2
    dy = rng.normal(size=(4, 6, 5) if seqs else (4, 5)).astype(dtype)
    results = []
    with loom.deterministic(deterministic):
        for kernels in (None, _NumpyLSTMSteps()):
            monkeypatch.setattr(fused, "lstm_kernels", lambda x, k=kernels: k)
            net = loom.Network.from_config(cfg)
            y = net.forward(x)
            results.append((y, net.backward(dy), net.gradients()))
    (y0, dx0, g0), (y1, dx1, g1) = results
    np.testing.assert_array_equal(y1, y0)
    np.testing.assert_array_equal(dx1, dx0)
    assert g1.keys() == g0.keys()
    for name in g0:
        np.testing.assert_array_equal(g1[name], g0[name], err_msg=name)


def test_fused_lstm_loop_passes_finite_differences(monkeypatch):
    from loom.kernels import fused
    monkeypatch.setattr(fused, "lstm_kernels", lambda x: _NumpyLSTMSteps())
    gradcheck.check([{"type": "lstm", "hidden": 3, "return_sequences": True}], [4, 3], batch=2, seed=1)
    gradcheck.check([{"type": "lstm", "hidden": 3, "return_sequences": False}], [4, 3], batch=2, seed=2)

"""Network.load_state_dict takes a real PyTorch module's state dict as it is (loom/nn/state_names.py):
exact names first, then structural order with shape and role checks; the result says what went where."""
import logging

import numpy as np
import pytest

import loom

torch = pytest.importorskip("torch")
nn = torch.nn


def _net(layers, shape, dtype="float64", input_dtype=None):
    cfg = {"loom": 1, "dtype": dtype, "seed": 3, "input": {"shape": list(shape)}, "layers": layers}
    if input_dtype:
        cfg["input"]["dtype"] = input_dtype
    return loom.Network.from_config(cfg)


def _randomize(mod, seed):
    """Random parameters and batch-norm statistics, so no slot keeps its (recognizable) init."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in mod.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=gen, dtype=t.dtype) + 0.5 if name.endswith("running_var")
                        else torch.randn(t.shape, generator=gen, dtype=t.dtype) * 0.5)
    return mod.eval()


def _agree(net, mod, x, tol=1e-10, **kw):
    with torch.no_grad():
        ref = mod(torch.from_numpy(x)).numpy()
    y = net(x, **kw)
    assert y.shape == ref.shape
    assert np.max(np.abs(y - ref)) < tol * max(1.0, float(np.max(np.abs(ref))))


def _x(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape)


class Pick(nn.Module):
    """Run a recurrent module and keep its output sequence, or its last step."""

    def __init__(self, last):
        super().__init__()
        self.last = last

    def forward(self, out):
        return out[0][:, -1] if self.last else out[0]


# --- one module per Loom layer type with a PyTorch counterpart ---------------------------------------

def test_sequential_mlp_with_dropout():
    mod = _randomize(nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Dropout(0.3), nn.Linear(7, 3)).double(), 0)
    net = _net([{"type": "dense", "units": 7, "activation": "relu"}, {"type": "dropout", "rate": 0.3},
                {"type": "dense", "units": 3}], [5])
    result = net.load_state_dict(mod.state_dict())
    assert result.mapping == [("0.weight", "layers.0.weight"), ("0.bias", "layers.0.bias"),
                              ("3.weight", "layers.2.weight"), ("3.bias", "layers.2.bias")]
    assert result.missing_keys == result.unexpected_keys == []
    _agree(net, mod, _x((4, 5)))


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, kernel_size=3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(4 * 3 * 3, 5)

    def forward(self, x):
        return self.head(torch.flatten(self.pool(torch.relu(self.bn(self.conv(x)))), 1))


def test_named_submodules_conv2d_batch_norm_pool():
    mod = _randomize(ConvNet().double(), 1)
    net = _net([{"type": "conv2d", "filters": 4, "kernel_size": 3, "padding": 1}, {"type": "batch_norm"},
                {"type": "activation", "fn": "relu"}, {"type": "max_pool2d", "pool_size": 2}, {"type": "flatten"},
                {"type": "dense", "units": 5}], [2, 6, 6])
    mod.bn.num_batches_tracked.fill_(7)
    result = net.load_state_dict(mod.state_dict())
    assert ("bn.running_var", "layers.1.running_var") in result.mapping
    assert int(net.buffers()["layers.1.num_batches_tracked"]) == 7
    _agree(net, mod, _x((3, 2, 6, 6)))


@pytest.mark.parametrize("kind", ["conv1d", "conv3d", "conv_transpose1d", "conv_transpose2d"])
def test_other_convolutions(kind):
    n = int(kind[-2])
    cls = getattr(nn, ("ConvTranspose" if "transpose" in kind else "Conv") + f"{n}d")
    mod = _randomize(nn.Sequential(cls(3, 2, kernel_size=2, stride=2 if "transpose" in kind else 1), nn.Tanh()).double(), 2)
    net = _net([{"type": kind, "filters": 2, "kernel_size": 2, "activation": "tanh",
                 **({"stride": 2} if "transpose" in kind else {})}], [3] + [4] * n)
    net.load_state_dict(mod.state_dict())
    _agree(net, mod, _x((2, 3) + (4,) * n))


class Norms(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(8)
        self.fc1 = nn.Linear(8, 8)
        self.rms = nn.RMSNorm(8, eps=1e-6)

    def forward(self, x):
        return self.rms(self.fc1(self.norm(x)))


def test_layer_norm_and_rms_norm_float32():
    mod = _randomize(Norms(), 3)
    net = _net([{"type": "layer_norm"}, {"type": "dense", "units": 8}, {"type": "rms_norm", "eps": 1e-6}],
               [3, 8], dtype="float32")
    net.load_state_dict(mod.state_dict())
    _agree(net, mod, _x((2, 3, 8)).astype(np.float32), tol=1e-5)


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(11, 4)
        self.gru = nn.GRU(4, 6, batch_first=True)
        self.out = nn.Linear(6, 2)

    def forward(self, ids):
        return self.out(self.gru(self.embed(ids))[0][:, -1])


def test_embedding_gru_linear():
    mod = _randomize(Tagger().double(), 4)
    net = _net([{"type": "embedding", "vocab_size": 11, "dim": 4}, {"type": "gru", "hidden": 6},
                {"type": "dense", "units": 2}], [5], input_dtype="int64")
    result = net.load_state_dict(mod.state_dict())
    assert ("gru.weight_ih_l0", "layers.1.weight_ih") in result.mapping
    _agree(net, mod, np.random.default_rng(5).integers(0, 11, size=(3, 5)))


@pytest.mark.parametrize("kind", ["rnn", "lstm"])
def test_two_layer_recurrent_into_two_loom_layers(kind):
    cls = {"rnn": nn.RNN, "lstm": nn.LSTM}[kind]
    mod = _randomize(nn.Sequential(cls(3, 5, num_layers=2, batch_first=True), Pick(last=True)).double(), 6)
    net = _net([{"type": kind, "hidden": 5, "return_sequences": True}, {"type": kind, "hidden": 5}], [4, 3])
    result = net.load_state_dict(mod.state_dict())
    assert ("0.weight_hh_l1", "layers.1.weight_hh") in result.mapping
    _agree(net, mod, _x((2, 4, 3)))


class Block(nn.Module):
    def __init__(self, E=8, heads=2):
        super().__init__()
        self.attn = nn.MultiheadAttention(E, heads, batch_first=True)
        self.norm = nn.LayerNorm(E)

    def forward(self, x):
        return self.norm(x + self.attn(x, x, x, need_weights=False)[0])


def test_multihead_attention_packed_projection_is_split():
    mod = _randomize(Block().double(), 7)
    net = _net([{"type": "residual", "layers": [{"type": "multi_head_attention", "heads": 2}]},
                {"type": "layer_norm"}], [5, 8])
    result = net.load_state_dict(mod.state_dict())
    assert result.mapping[:3] == [("attn.in_proj_weight[0:8]", "layers.0.layers.0.q_proj.weight"),
                                  ("attn.in_proj_bias[0:8]", "layers.0.layers.0.q_proj.bias"),
                                  ("attn.in_proj_weight[8:16]", "layers.0.layers.0.k_proj.weight")]
    assert ("attn.out_proj.weight", "layers.0.layers.0.o_proj.weight") in result.mapping
    _agree(net, mod, _x((3, 5, 8)))


class LlamaMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.gate_proj = nn.Linear(6, 10, bias=False)
        self.up_proj = nn.Linear(6, 10, bias=False)
        self.down_proj = nn.Linear(10, 6, bias=False)

    def forward(self, x):
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


def test_swiglu_from_a_llama_style_mlp():
    mod = _randomize(nn.Sequential(LlamaMLP()).double(), 8)
    net = _net([{"type": "swiglu", "hidden": 10}], [6])
    assert net.load_state_dict(mod.state_dict()).mapping[0] == ("0.gate_proj.weight", "layers.0.gate_proj.weight")
    _agree(net, mod, _x((4, 6)))


class AdaptiveHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(6, 16)
        self.out = nn.AdaptiveLogSoftmaxWithLoss(16, 12, [3, 6], div_value=2.0, head_bias=True)

    def forward(self, x):
        return torch.exp(self.out.log_prob(self.proj(x)))


def test_adaptive_softmax():
    mod = _randomize(AdaptiveHead().double(), 9)
    net = _net([{"type": "dense", "units": 16},
                {"type": "softmax", "variant": "adaptive", "classes": 12, "cutoffs": [3, 6], "div_value": 2.0,
                 "head_bias": True}], [6])
    net.load_state_dict(mod.state_dict())
    _agree(net, mod, _x((4, 6)))


class EncoderHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 6))
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        return self.head(self.encoder(x))


def test_nested_sequential_and_quantized_network():
    mod = _randomize(EncoderHead().double(), 10)
    layers = [{"type": "sequential", "layers": [{"type": "dense", "units": 6, "activation": "tanh"},
                                                {"type": "dense", "units": 6}]}, {"type": "dense", "units": 2}]
    net = _net(layers, [4])
    result = net.load_state_dict(mod.state_dict())
    assert result.mapping[0] == ("encoder.0.weight", "layers.0.layers.0.weight")
    assert result.mapping[-1] == ("head.bias", "layers.1.bias")
    _agree(net, mod, _x((3, 4)))
    q = _net(layers, [4]).quantize("int8")                       # float torch weights are quantized on the way in
    q.load_state_dict(mod.state_dict())
    x = _x((3, 4))
    assert np.array_equal(q(x), net.quantize("int8")(x))


# --- the rule's edges ---------------------------------------------------------------------------------

def test_shape_mismatch_in_order_names_both_tensors():
    mod = nn.Sequential(nn.Linear(5, 7), nn.Linear(7, 3)).double()
    net = _net([{"type": "dense", "units": 6}, {"type": "dense", "units": 3}], [5])
    before = {k: v.copy() for k, v in net.state_dict().items()}
    with pytest.raises(loom.ShapeError, match=r"0\.weight \[7, 5\] cannot load into layers\.0\.weight \[6, 5\]"):
        net.load_state_dict(mod.state_dict())
    assert all(np.array_equal(v, before[k]) for k, v in net.state_dict().items())   # nothing copied


def test_role_mismatch_is_an_error_not_a_misassignment():
    mod = nn.Sequential(nn.LayerNorm(4, bias=False), nn.Linear(4, 4)).double()
    net = _net([{"type": "layer_norm"}, {"type": "dense", "units": 4}], [4])
    with pytest.raises(loom.ShapeError, match=r"1\.weight \[4, 4\] cannot load into layers\.0\.bias \[4\]: "
                                              r"roles differ \(weight vs bias\)"):
        net.load_state_dict(mod.state_dict())


def test_leftovers_raise_with_strict():
    mod = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3)).double()
    with pytest.raises(loom.ShapeError, match=r"unexpected \['2\.weight', '2\.bias'\], missing \[\]"):
        _net([{"type": "dense", "units": 7}], [5]).load_state_dict(mod.state_dict())
    short = nn.Sequential(nn.Linear(5, 7)).double()
    net = _net([{"type": "dense", "units": 7}, {"type": "dense", "units": 3}], [5])
    with pytest.raises(loom.ShapeError, match=r"missing \['layers\.1\.weight', 'layers\.1\.bias'\]"):
        net.load_state_dict(short.state_dict())


def test_partial_load_without_strict(caplog):
    backbone = _randomize(nn.Sequential(nn.Linear(5, 7)).double(), 11)
    net = _net([{"type": "dense", "units": 7}, {"type": "dense", "units": 3}], [5])
    head = net.parameters()["layers.1.weight"].copy()
    with caplog.at_level(logging.INFO, logger="loom"):
        missing, unexpected = result = net.load_state_dict(backbone.state_dict(), strict=False)
    assert missing == ["layers.1.weight", "layers.1.bias"] and unexpected == []
    assert result.mapping == [("0.weight", "layers.0.weight"), ("0.bias", "layers.0.bias")]
    assert np.array_equal(net.parameters()["layers.0.weight"], backbone[0].weight.detach().numpy())
    assert np.array_equal(net.parameters()["layers.1.weight"], head)
    assert "0.weight -> layers.0.weight" in caplog.text and "layers.1.bias" in caplog.text


def test_tensors_without_a_counterpart_are_set_aside():
    """Statistics of a torch batch norm without them, a bidirectional LSTM's reverse direction:
    reported, never paired with the next slot."""
    mod = _randomize(nn.Sequential(nn.BatchNorm1d(3, track_running_stats=False), nn.Linear(4, 2)).double(), 12)
    net = _net([{"type": "batch_norm"}, {"type": "dense", "units": 2}], [3, 4])
    with pytest.raises(loom.ShapeError, match="missing.*layers.0.running_mean"):
        net.load_state_dict(mod.state_dict())
    missing, unexpected = net.load_state_dict(mod.state_dict(), strict=False)
    assert missing == ["layers.0.running_mean", "layers.0.running_var", "layers.0.num_batches_tracked"]
    assert np.array_equal(net.parameters()["layers.1.weight"], mod[1].weight.detach().numpy())

    lstm = nn.Sequential(nn.LSTM(3, 4, batch_first=True, bidirectional=True)).double()
    net = _net([{"type": "lstm", "hidden": 4}], [5, 3])
    missing, unexpected = net.load_state_dict(lstm.state_dict(), strict=False)
    assert missing == [] and unexpected == ["0.weight_ih_l0_reverse", "0.weight_hh_l0_reverse",
                                            "0.bias_ih_l0_reverse", "0.bias_hh_l0_reverse"]
    assert np.array_equal(net.parameters()["layers.0.weight_ih"], lstm[0].weight_ih_l0.detach().numpy())


def test_exact_names_are_preferred_over_order():
    """layers.1's tensors come first in the dict: by order alone they would land in layers.0."""
    rng = np.random.default_rng(13)
    w1, b1, w0, b0 = (torch.from_numpy(rng.normal(size=s)) for s in [(4, 4), (4,), (4, 4), (4,)])
    net = _net([{"type": "dense", "units": 4}, {"type": "dense", "units": 4}], [4])
    result = net.load_state_dict({"layers.1.weight": w1, "layers.1.bias": b1, "a.weight": w0, "a.bias": b0})
    p = net.parameters()
    assert np.array_equal(p["layers.1.weight"], w1.numpy()) and np.array_equal(p["layers.0.weight"], w0.numpy())
    assert np.array_equal(p["layers.1.bias"], b1.numpy()) and np.array_equal(p["layers.0.bias"], b0.numpy())
    assert result.mapping == [("a.weight", "layers.0.weight"), ("a.bias", "layers.0.bias")]


def test_loom_names_round_trip_with_an_empty_mapping():
    net = _net([{"type": "dense", "units": 4}, {"type": "batch_norm"}], [3])
    result = _net([{"type": "dense", "units": 4}, {"type": "batch_norm"}], [3]).load_state_dict(net.state_dict())
    assert (result.mapping, result.missing_keys, result.unexpected_keys) == ([], [], [])


def test_a_sequential_attribute_numbered_differently_loads_by_order():
    """`self.layers = nn.Sequential(Linear, ReLU, Linear, ReLU, Linear)` names its Linears layers.0,
    layers.2, layers.4; Loom's dense layers are layers.0, .1, .2. layers.2 matching by name would
    put the second Linear into the third dense layer: the load pairs by order instead."""
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 6))

        def forward(self, x):
            return self.layers(x)

    mod = _randomize(Model().double(), 21)
    net = _net([{"type": "dense", "units": 6, "activation": "relu"}, {"type": "dense", "units": 6, "activation": "relu"},
                {"type": "dense", "units": 6}], [6])
    result = net.load_state_dict(mod.state_dict())
    assert ("layers.2.weight", "layers.1.weight") in result.mapping
    x = np.random.default_rng(22).normal(size=(5, 6))
    np.testing.assert_allclose(np.asarray(net(x)), mod(torch.from_numpy(x)).detach().numpy(), rtol=1e-12, atol=1e-12)


def test_a_roleless_buffer_is_set_aside():
    """A registered buffer without a PyTorch role (HF's position_ids) is never assigned to a weight."""
    lin = _randomize(nn.Sequential(nn.Linear(4, 4)).double(), 23)
    state = dict(lin.state_dict())
    state = {"position_ids": torch.arange(4.0, dtype=torch.float64).reshape(1, 4), **state}
    net = _net([{"type": "dense", "units": 4}], [4])
    missing, unexpected = net.load_state_dict(state, strict=False)
    assert missing == [] and unexpected == ["position_ids"]
    assert np.array_equal(net.parameters()["layers.0.weight"], lin[0].weight.detach().numpy())

import gradcheck
import numpy as np
import pytest

import loom

TAIL_MASK = np.array([[1, 1, 1, 1], [1, 1, 1, 0]], dtype=bool)
LEFT_MASK = np.array([[0, 0, 1, 1], [1, 1, 1, 1]], dtype=bool)   # with causal: rows 0, 1 of sample 0 see no key


def mha(**kw):
    return {"type": "multi_head_attention", **kw}


def _net32(layer, input_shape, seed=0):
    return loom.Network.from_config({"loom": 1, "dtype": "float32", "seed": seed,
                                     "input": {"shape": list(input_shape)}, "layers": [layer]})


def _randomize(net, seed):
    """Nonzero biases and norm weights, so their paths are exercised."""
    rng = np.random.default_rng(seed)
    for name, p in net.parameters().items():
        if name.endswith(".bias") or "_norm." in name:
            p[...] = rng.normal(size=p.shape) * (0.3 if name.endswith(".bias") else 0.2) + ("_norm." in name)
    return net


GRAD_CASES = {
    "plain": (mha(heads=2), [4, 6], None),
    "causal": (mha(heads=2, causal=True), [4, 6], None),
    "gqa": (mha(heads=4, kv_heads=2), [4, 8], None),
    "head_dim": (mha(heads=2, head_dim=4), [4, 6], None),
    "rope": (mha(heads=2, rope={"theta": 10000}), [4, 8], None),
    "rope_scaled": (mha(heads=2, rope={"theta": 100, "scaling": 2.5}), [4, 8], None),
    "qk_norm": (mha(heads=2, qk_norm=True), [4, 8], None),
    "no_bias": (mha(heads=2, bias=False), [4, 6], None),
    "padding": (mha(heads=2), [4, 6], TAIL_MASK),
    "combined": (mha(heads=4, kv_heads=2, head_dim=4, causal=True, rope={"theta": 50.0}, qk_norm=True),
                 [4, 6], TAIL_MASK),
    "fully_masked_rows": (mha(heads=4, kv_heads=2, head_dim=4, causal=True, rope={"theta": 50.0},
                              qk_norm=True), [4, 6], LEFT_MASK),
}


@pytest.mark.parametrize("case", GRAD_CASES)
def test_gradients(case):
    layer, shape, mask = GRAD_CASES[case]
    net = _randomize(gradcheck.make_net([layer], shape, seed=3), 3)
    gradcheck.check([layer], shape, batch=2, seed=3, attention_mask=mask, net=net)


def test_parameter_names_and_shapes():
    net = gradcheck.make_net([mha(heads=4, kv_heads=2, head_dim=3, qk_norm=True)], [5, 8])
    shapes = {k.removeprefix("layers.0."): v.shape for k, v in net.parameters().items()}
    assert shapes == {"q_proj.weight": (12, 8), "q_proj.bias": (12,), "k_proj.weight": (6, 8), "k_proj.bias": (6,),
                      "v_proj.weight": (6, 8), "v_proj.bias": (6,), "o_proj.weight": (8, 12), "o_proj.bias": (8,),
                      "q_norm.weight": (3,), "k_norm.weight": (3,)}
    p = net.parameters()
    assert np.all(p["layers.0.q_norm.weight"] == 1) and np.all(p["layers.0.o_proj.bias"] == 0)
    bound = np.sqrt(6 / (12 + 8))
    assert bound * 0.8 < np.max(np.abs(p["layers.0.q_proj.weight"])) <= bound
    assert net.output_spec.shape == (5, 8)


def test_fully_masked_query_outputs_zeros():
    net = _randomize(gradcheck.make_net([mha(heads=2, causal=True)], [4, 6]), 0)
    x = np.random.default_rng(0).normal(size=(2, 4, 6))
    y = net(x, attention_mask=LEFT_MASK)
    assert np.all(np.isfinite(y))
    bias = net.parameters()["layers.0.o_proj.bias"]
    np.testing.assert_array_equal(y[0, :2], np.broadcast_to(bias, (2, 6)))   # o_proj of a zero context
    dx = net.backward(np.ones_like(y))
    assert np.all(np.isfinite(dx))


def test_padded_keys_are_ignored():
    """Changing a padded position's input does not change the real positions' outputs."""
    net = gradcheck.make_net([mha(heads=2, rope={"theta": 10000})], [4, 8])
    x = np.random.default_rng(1).normal(size=(2, 4, 8))
    y = net(x, attention_mask=TAIL_MASK)
    x2 = x.copy()
    x2[1, 3] += 5.0
    y2 = net(x2, attention_mask=TAIL_MASK)
    np.testing.assert_array_equal(y[1, :3], y2[1, :3])
    assert not np.allclose(net(x2)[1, :3], y[1, :3])


def _from_torch_mha(mod, prefix="layers.0."):
    sd = {k: v.detach().numpy() for k, v in mod.state_dict().items()}
    q, k, v = np.split(sd["in_proj_weight"], 3)
    qb, kb, vb = np.split(sd["in_proj_bias"], 3)
    out = {"q_proj.weight": q, "k_proj.weight": k, "v_proj.weight": v, "q_proj.bias": qb, "k_proj.bias": kb,
           "v_proj.bias": vb, "o_proj.weight": sd["out_proj.weight"], "o_proj.bias": sd["out_proj.bias"]}
    return {prefix + k: v for k, v in out.items()}


@pytest.mark.parametrize("mode", ["plain", "causal", "key_padding", "causal_padding"])
def test_matches_torch_multihead_attention(mode):
    torch = pytest.importorskip("torch")
    T, E, heads = 5, 8, 2
    torch.manual_seed(0)
    mod = torch.nn.MultiheadAttention(E, heads, batch_first=True)
    with torch.no_grad():
        mod.in_proj_bias.normal_(0, 0.3)
        mod.out_proj.bias.normal_(0, 0.3)
    causal = mode.startswith("causal")
    net = _net32(mha(heads=heads, causal=causal), [T, E])
    net.load_state_dict(_from_torch_mha(mod))
    x = np.random.default_rng(0).normal(size=(3, T, E)).astype(np.float32)
    mask = None
    kw = {}
    if causal:
        kw["attn_mask"] = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)   # True = not allowed
    if mode.endswith("padding"):
        mask = np.array([[1] * 5, [1, 1, 1, 0, 0], [1, 1, 1, 1, 0]], dtype=bool)
        kw["key_padding_mask"] = torch.from_numpy(~mask)
    xt = torch.from_numpy(x)
    ref = mod(xt, xt, xt, need_weights=False, **kw)[0].detach().numpy()
    y = net(x, attention_mask=mask)
    assert y.dtype == np.float32
    assert np.max(np.abs(y - ref)) < 1e-5


def _rotate_half(torch, x):
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def _reference(torch, x, p, *, heads, kv, hd, causal, theta, scaling, qk_norm, mask):
    """HF Llama/Qwen3-style attention written with torch ops."""
    F = torch.nn.functional
    B, T, _ = x.shape

    def proj(name, n):
        return F.linear(x, p[f"{name}.weight"], p.get(f"{name}.bias")).view(B, T, n, hd).transpose(1, 2)

    q, k, v = proj("q_proj", heads), proj("k_proj", kv), proj("v_proj", kv)
    if qk_norm:
        def rms(t, w):
            return t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + 1e-6) * w
        q, k = rms(q, p["q_norm.weight"]), rms(k, p["k_norm.weight"])
    if theta is not None:
        inv_freq = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
        pos = torch.arange(T, dtype=torch.float64) / (scaling or 1.0)
        emb = torch.outer(pos, inv_freq)
        emb = torch.cat([emb, emb], dim=-1)
        cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
        q = q * cos + _rotate_half(torch, q) * sin
        k = k * cos + _rotate_half(torch, k) * sin
    k = k.repeat_interleave(heads // kv, dim=1)          # HF repeat_kv order
    v = v.repeat_interleave(heads // kv, dim=1)
    allowed = torch.ones(B, 1, T, T, dtype=torch.bool)
    if causal:
        allowed = allowed & torch.tril(torch.ones(T, T, dtype=torch.bool))
    if mask is not None:
        allowed = allowed & torch.from_numpy(mask)[:, None, None, :]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    out = out.transpose(1, 2).reshape(B, T, heads * hd)
    return F.linear(out, p["o_proj.weight"], p.get("o_proj.bias"))


LLAMA = dict(heads=4, kv=2, hd=4, causal=True, theta=1000.0, scaling=2.0, qk_norm=True)


def _layer_of(cfg, bias):
    return mha(heads=cfg["heads"], kv_heads=cfg["kv"], head_dim=cfg["hd"], causal=cfg["causal"],
               rope={"theta": cfg["theta"], "scaling": cfg["scaling"]}, qk_norm=cfg["qk_norm"], bias=bias)


@pytest.mark.parametrize("bias", [True, False])
def test_gqa_rope_qk_norm_matches_torch_reference(bias):
    torch = pytest.importorskip("torch")
    T, E = 6, 12
    net = _randomize(_net32(_layer_of(LLAMA, bias), [T, E], seed=5), 5)
    params = {k.removeprefix("layers.0."): torch.from_numpy(v.copy()) for k, v in net.parameters().items()}
    x = np.random.default_rng(2).normal(size=(2, T, E)).astype(np.float32)
    mask = np.array([[1] * 6, [1, 1, 1, 1, 0, 0]], dtype=bool)
    ref = _reference(torch, torch.from_numpy(x), params, mask=mask, **LLAMA).numpy()
    assert np.max(np.abs(net(x, attention_mask=mask) - ref)) < 1e-5


def test_gqa_rope_gradients_match_torch_autograd():
    torch = pytest.importorskip("torch")
    T, E = 5, 12
    cfg = dict(LLAMA, qk_norm=False, causal=False, scaling=None)
    net = _randomize(gradcheck.make_net([_layer_of(cfg, True)], [T, E], seed=6), 6)
    params = {k.removeprefix("layers.0."): torch.from_numpy(v.copy()).requires_grad_(True)
              for k, v in net.parameters().items()}
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, T, E))
    dy = rng.normal(size=(2, T, E))
    xt = torch.from_numpy(x).requires_grad_(True)
    _reference(torch, xt, params, mask=None, **cfg).backward(torch.from_numpy(dy))
    net.forward(x)
    dx = net.backward(dy)
    assert np.max(np.abs(dx - xt.grad.numpy())) < 1e-10
    grads = net.gradients()
    for name, t in params.items():
        assert np.max(np.abs(grads["layers.0." + name] - t.grad.numpy())) < 1e-10, name


def test_float32_runs_in_float32():
    net = _net32(_layer_of(LLAMA, True), [4, 8])
    x = np.ones((2, 4, 8), dtype=np.float32)
    y = net(x, attention_mask=LEFT_MASK)
    dx = net.backward(np.ones_like(y))
    assert y.dtype == dx.dtype == np.float32
    assert all(g.dtype == np.float32 for g in net.gradients().values())


@pytest.mark.parametrize("layer, shape, path, words", [
    (mha(heads=2), [8], "layers[0]", "[T, E]"),
    (mha(heads=2), [2, 3, 8], "layers[0]", "[T, E]"),
    (mha(heads=3), [4, 8], "layers[0].heads", "not divisible"),
    (mha(heads=2, head_dim=3, rope={"theta": 10000}), [4, 8], "layers[0].rope", "even"),
    (mha(heads=2, rope={"theta": 10000}), [4, 6], "layers[0].rope", "even"),
    (mha(heads=4, kv_heads=3), [4, 8], "layers[0].kv_heads", "multiple"),
])
def test_config_errors(layer, shape, path, words):
    with pytest.raises(loom.ConfigError) as err:
        gradcheck.make_net([layer], shape)
    assert err.value.path == path
    assert words in str(err.value)


def test_mask_of_wrong_length_is_a_shape_error():
    net = gradcheck.make_net([mha(heads=2)], [4, 6])
    with pytest.raises(loom.ShapeError):
        net(np.zeros((2, 4, 6)), attention_mask=np.ones((2, 5), dtype=bool))

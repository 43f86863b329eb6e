import math

import gradcheck
import numpy as np
import pytest

import loom
from loom.nn.layers.softmax import gumbel_from_uniform

SM = {"type": "softmax"}


def layer(variant, **keys):
    return {**SM, "variant": variant, **keys}


def net_of(layer_cfg, shape, dtype="float64", seed=0):
    return loom.Network.from_config({"loom": 1, "dtype": dtype, "seed": seed,
                                     "input": {"shape": list(shape)}, "layers": [layer_cfg]})


def np_softmax(s):
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def np_sparsemax(z):
    """Row by row: the largest k whose sorted logit stays above its candidate threshold."""
    out = np.empty_like(z)
    for idx in np.ndindex(z.shape[:-1]):
        row = z[idx]
        zs = np.sort(row)[::-1]
        for k in range(len(zs), 0, -1):
            tau = (zs[:k].sum() - 1) / k
            if zs[k - 1] > tau:
                break
        out[idx] = np.maximum(row - tau, 0)
    return out


# One representative config per variant, with an input of two leading positions ([T, F]).
VARIANTS = {
    "standard": (layer("standard"), [3, 6]),
    "temperature": (layer("temperature", temperature=0.5), [3, 6]),
    "grid": (layer("grid", rows=2, cols=3, temperature=2.0), [3, 6]),
    "hierarchical": (layer("hierarchical", levels=[2, 3]), [3, 8]),
    "gumbel": (layer("gumbel", temperature=0.7), [3, 6]),
    "masked": (layer("masked", mask=[1, 0, 1, 1, 0, 1]), [3, 6]),
    "sparsemax": (layer("sparsemax"), [3, 6]),
    "entmax": (layer("entmax", alpha=1.5), [3, 6]),
    "adaptive": (layer("adaptive", classes=10, cutoffs=[3, 6], div_value=2.0, head_bias=True), [3, 8]),
    "mixture": (layer("mixture", components=3), [3, 6]),
}


# --- gradients ------------------------------------------------------------------------------------

GRAD_CASES = [
    ([layer("standard")], [6], {}),
    ([layer("standard", temperature=0.7)], [3, 5], {}),
    ([layer("temperature", temperature=2.5)], [7], {}),
    ([layer("grid", rows=3, cols=4, temperature=0.5)], [12], {}),
    ([layer("grid", rows=2, cols=3)], [4, 6], {}),
    ([layer("hierarchical", levels=[2, 3])], [8], {}),
    ([layer("hierarchical", levels=[2, 2, 3], temperature=1.5)], [3, 18], {}),
    ([layer("gumbel", temperature=0.8)], [6], {"training": True}),
    ([layer("gumbel")], [3, 6], {"training": True}),
    ([layer("gumbel", temperature=0.8)], [6], {"training": False}),
    ([layer("masked", mask=[1, 0, 1, 1, 0, 1])], [6], {}),
    ([layer("masked", mask=[0, 1, 1, 0, 1], temperature=0.6)], [3, 5], {}),
    ([layer("sparsemax", temperature=0.5)], [8], {}),
    ([layer("sparsemax")], [3, 6], {}),
    ([layer("entmax", alpha=1.5)], [8], {}),
    ([layer("entmax", alpha=1.3, temperature=0.7)], [3, 6], {}),
    ([layer("entmax", alpha=2.0)], [7], {}),
    ([layer("entmax", alpha=3.0, temperature=1.7)], [7], {}),
    ([layer("adaptive", classes=10, cutoffs=[3, 6], div_value=2.0, head_bias=True)], [8], {}),
    ([layer("adaptive", classes=10, cutoffs=[3, 6], div_value=2.0, temperature=1.3)], [3, 8], {}),
    ([layer("mixture", components=1)], [5], {}),
    ([layer("mixture", components=3, temperature=0.9)], [3, 5], {}),
]


@pytest.mark.parametrize("layers,shape,kw", GRAD_CASES,
                         ids=[f"{c[0][0]['variant']}-{i}" for i, c in enumerate(GRAD_CASES)])
def test_gradients(layers, shape, kw):
    net = gradcheck.check(layers, shape, batch=2, seed=3, **kw)
    assert set(net.gradients()) == set(net.parameters())


def test_gradients_reach_mixture_parameters():
    net = gradcheck.check([layer("mixture", components=3)], [6], batch=3)
    grads = net.gradients()
    assert np.all(np.abs(grads["layers.0.mixture_logits"]) > 0)
    assert np.all(np.abs(grads["layers.0.log_temperature"]) > 0)


# --- properties -----------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype,tol", [("float32", 1e-6), ("float64", 1e-12)])
@pytest.mark.parametrize("name", VARIANTS)
def test_distribution_per_sample_and_position(name, dtype, tol):
    cfg, shape = VARIANTS[name]
    net = net_of(cfg, shape, dtype).train(name == "gumbel")
    x = (np.random.default_rng(1).normal(size=(4, *shape)) * 3).astype(dtype)
    y = net(x)
    assert y.dtype == np.dtype(dtype) and y.shape == (4, *net.output_spec.shape)
    assert np.all(y >= 0)
    if name == "grid":                                # each row of the [rows, cols] view sums to 1
        y = y.reshape(*y.shape[:-1], cfg["rows"], cfg["cols"])
    assert np.max(np.abs(y.astype(np.float64).sum(axis=-1) - 1)) < tol


@pytest.mark.parametrize("name", VARIANTS)
def test_float32_matches_float64(name):
    cfg, shape = VARIANTS[name]
    x = np.random.default_rng(2).normal(size=(3, *shape))
    y64 = net_of(cfg, shape, "float64")(x)
    y32 = net_of(cfg, shape, "float32")(x.astype(np.float32))
    assert np.max(np.abs(y32 - y64)) < 1e-5


@pytest.mark.parametrize("name", VARIANTS)
def test_batch_equals_samples_alone_bit_for_bit(name):
    cfg, shape = VARIANTS[name]
    net = net_of(cfg, shape, "float32")
    x = np.random.default_rng(4).normal(size=(5, *shape)).astype(np.float32)
    y = net(x)
    for i in range(5):
        assert np.array_equal(net(x[i:i + 1])[0], y[i]), f"sample {i}"


@pytest.mark.parametrize("cfg", [layer("sparsemax"), layer("entmax", alpha=1.5), layer("entmax", alpha=1.2)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sparse_variants_give_exact_zeros(cfg, dtype):
    x = (np.random.default_rng(5).normal(size=(4, 10)) * 3).astype(dtype)
    y = net_of(cfg, [10], dtype)(x)
    assert np.all(np.any(y == 0, axis=-1)) and np.all(np.any(y > 0, axis=-1))


# --- references -----------------------------------------------------------------------------------

@pytest.mark.parametrize("variant,temperature", [("standard", 1.0), ("standard", 0.3), ("temperature", 2.0)])
def test_standard_and_temperature_match_torch(variant, temperature):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(6).normal(size=(4, 3, 7)) * 2
    ref = torch.softmax(torch.from_numpy(x) / temperature, dim=-1).numpy()
    y = net_of(layer(variant, temperature=temperature), [3, 7])(x)
    assert np.max(np.abs(y - ref)) < 1e-15
    y32 = net_of(layer(variant, temperature=temperature), [3, 7], "float32")(x.astype(np.float32))
    assert np.max(np.abs(y32 - ref)) < 1e-6


def _torch_adaptive(torch, F, classes, cutoffs, div_value, head_bias):
    torch.manual_seed(0)
    return torch.nn.AdaptiveLogSoftmaxWithLoss(F, classes, cutoffs, div_value=div_value,
                                               head_bias=head_bias).double()


@pytest.mark.parametrize("cutoffs,div_value,head_bias", [([3, 6], 2.0, True), ([4, 9], 4.0, False), ([5], 1.0, True)])
def test_adaptive_matches_torch(cutoffs, div_value, head_bias):
    torch = pytest.importorskip("torch")
    F, classes = 16, 12
    ref_mod = _torch_adaptive(torch, F, classes, cutoffs, div_value, head_bias)
    cfg = layer("adaptive", classes=classes, cutoffs=cutoffs, div_value=div_value, head_bias=head_bias)
    net = net_of(cfg, [2, F])
    net.load_state_dict({"layers.0." + k: v for k, v in ref_mod.state_dict().items()})
    x = np.random.default_rng(7).normal(size=(3, 2, F))
    ref = torch.exp(ref_mod.log_prob(torch.from_numpy(x.reshape(-1, F)))).detach().numpy().reshape(3, 2, classes)
    assert np.max(np.abs(net(x) - ref)) < 1e-12


def test_adaptive_temperature_divides_the_logits():
    """T divides head and cluster logits: the same as torch with head weight and bias and the
    clusters' output projections divided by T."""
    torch = pytest.importorskip("torch")
    F, classes, T = 8, 10, 1.7
    ref_mod = _torch_adaptive(torch, F, classes, [3, 6], 2.0, True)
    state = ref_mod.state_dict()
    net = net_of(layer("adaptive", classes=classes, cutoffs=[3, 6], div_value=2.0, head_bias=True,
                       temperature=T), [F])
    net.load_state_dict({"layers.0." + k: v for k, v in state.items()})
    for k in ("head.weight", "head.bias", "tail.0.1.weight", "tail.1.1.weight"):
        state[k] = state[k] / T
    ref_mod.load_state_dict(state)
    x = np.random.default_rng(8).normal(size=(4, F))
    ref = torch.exp(ref_mod.log_prob(torch.from_numpy(x))).detach().numpy()
    assert np.max(np.abs(net(x) - ref)) < 1e-12


def test_adaptive_parameters_and_init():
    net = net_of(layer("adaptive", classes=10, cutoffs=[3, 6], div_value=2.0, head_bias=True), [8])
    shapes = {k: v.shape for k, v in net.parameters().items()}
    assert shapes == {"layers.0.head.weight": (5, 8), "layers.0.head.bias": (5,),
                      "layers.0.tail.0.0.weight": (4, 8), "layers.0.tail.0.1.weight": (3, 4),
                      "layers.0.tail.1.0.weight": (2, 8), "layers.0.tail.1.1.weight": (4, 2)}
    p = net.parameters()
    assert np.all(p["layers.0.head.bias"] == 0)
    for name, (fan_out, fan_in) in [("head.weight", (5, 8)), ("tail.1.1.weight", (4, 2))]:
        w = p["layers.0." + name]
        bound = math.sqrt(6 / (fan_in + fan_out))
        assert np.max(np.abs(w)) <= bound and np.max(np.abs(w)) > bound / 2


def test_sparsemax_matches_numpy_reference_and_alpha2_entmax():
    x = np.random.default_rng(9).normal(size=(6, 2, 9)) * 2
    y = net_of(layer("sparsemax", temperature=0.8), [2, 9])(x)
    assert np.max(np.abs(y - np_sparsemax(x / 0.8))) < 1e-15
    y2 = net_of(layer("entmax", alpha=2.0, temperature=0.8), [2, 9])(x)
    assert np.max(np.abs(y2 - y)) < 1e-13
    assert np.array_equal(y == 0, y2 == 0)


def test_entmax_near_one_approaches_softmax():
    x = np.random.default_rng(10).normal(size=(4, 8))
    y = net_of(layer("entmax", alpha=1.0001), [8])(x)
    assert np.max(np.abs(y - np_softmax(x))) < 1e-3
    assert np.all(y > 0)


@pytest.mark.parametrize("alpha", [1.2, 1.5, 2.7])
def test_entmax_solves_its_optimality_conditions(alpha):
    """p_i = ((alpha-1) s_i - tau)^(1/(alpha-1)) on the support with one tau; (alpha-1) s_i <= tau off it."""
    T = 0.6
    x = np.random.default_rng(11).normal(size=(5, 12)) * 2
    p = net_of(layer("entmax", alpha=alpha, temperature=T), [12])(x)
    xs = (alpha - 1) * x / T
    for row, pr in zip(xs, p):
        on = pr > 0
        tau = row[on] - pr[on] ** (alpha - 1)
        assert np.ptp(tau) < 1e-12
        assert np.all(row[~on] <= tau[0] + 1e-12)


def test_grid_is_softmax_per_row():
    x = np.random.default_rng(12).normal(size=(3, 2, 12))
    y = net_of(layer("grid", rows=3, cols=4, temperature=0.5), [2, 12])(x)
    ref = np_softmax(x.reshape(3, 2, 3, 4) / 0.5).reshape(3, 2, 12)
    assert np.max(np.abs(y - ref)) < 1e-15


def test_hierarchical_is_a_tree_softmax():
    x = np.random.default_rng(13).normal(size=(4, 2 + 6)) * 2
    y = net_of(layer("hierarchical", levels=[2, 3]), [8])(x)
    top = np_softmax(x[:, :2])
    ref = np.concatenate([top[:, i:i + 1] * np_softmax(x[:, 2 + 3 * i:5 + 3 * i]) for i in range(2)], axis=-1)
    assert y.shape == (4, 6) and np.max(np.abs(y - ref)) < 1e-15
    assert np.max(np.abs(y - np_softmax(x[:, 2:]))) > 1e-2      # not a flat softmax over the leaves
    flat = net_of(layer("hierarchical", levels=[5]), [5])(x[:, :5])
    assert np.max(np.abs(flat - np_softmax(x[:, :5]))) < 1e-15  # one level is a plain softmax


def test_hierarchical_three_levels_against_loops():
    levels, rng = [2, 2, 3], np.random.default_rng(14)
    x = rng.normal(size=(2, 2 + 4 + 12))
    y = net_of(layer("hierarchical", levels=levels), [18])(x)
    for b in range(2):
        a, m, c = x[b, :2], x[b, 2:6].reshape(2, 2), x[b, 6:].reshape(4, 3)
        for i in range(2):
            for j in range(2):
                for k in range(3):
                    ref = np_softmax(a)[i] * np_softmax(m[i])[j] * np_softmax(c[2 * i + j])[k]
                    assert abs(y[b, 6 * i + 3 * j + k] - ref) < 1e-15


def test_masked_zeroes_masked_positions_and_their_gradient():
    mask = [1, 0, 1, 1, 0, 1]
    keep = np.array(mask, dtype=bool)
    net = net_of(layer("masked", mask=mask, temperature=0.9), [2, 6])
    x = np.random.default_rng(15).normal(size=(3, 2, 6))
    y = net(x)
    assert np.all(y[..., ~keep] == 0.0)
    assert np.max(np.abs(y[..., keep] - np_softmax(x[..., keep] / 0.9))) < 1e-15
    dx = net.backward(np.random.default_rng(16).normal(size=y.shape))
    assert np.all(dx[..., ~keep] == 0.0) and np.all(dx[..., keep] != 0.0)


def test_mixture_init_and_formula():
    net = net_of(layer("mixture", components=3, temperature=1.3), [7])
    p = net.parameters()
    assert np.all(p["layers.0.mixture_logits"] == 0)
    assert np.max(np.abs(p["layers.0.log_temperature"] - np.log(np.geomspace(0.5, 2, 3)))) < 1e-15
    rng = np.random.default_rng(17)
    p["layers.0.mixture_logits"][...] = w = rng.normal(size=3)
    p["layers.0.log_temperature"][...] = t = rng.normal(size=3) * 0.5
    x = rng.normal(size=(4, 7))
    ref = sum(np_softmax(w)[k] * np_softmax(x / 1.3 / np.exp(t[k])) for k in range(3))
    assert np.max(np.abs(net(x) - ref)) < 1e-15


def test_mixture_of_one_is_standard_softmax():
    net = net_of(layer("mixture", components=1), [2, 7])
    assert np.array_equal(net.parameters()["layers.0.log_temperature"], [0.0])
    x = np.random.default_rng(18).normal(size=(3, 2, 7))
    assert np.array_equal(net(x), net_of(layer("standard"), [2, 7])(x))


# --- gumbel ---------------------------------------------------------------------------------------

def test_gumbel_eval_is_standard_softmax_and_training_is_noisy():
    x = np.random.default_rng(19).normal(size=(3, 2, 6)).astype(np.float32)
    gum = net_of(layer("gumbel", temperature=0.7), [2, 6], "float32")
    std = net_of(layer("standard", temperature=0.7), [2, 6], "float32")
    assert np.array_equal(gum(x), std(x))
    assert gum.rng_counter == 0                       # eval draws no noise
    assert not np.allclose(gum.train()(x), std(x), atol=1e-3)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gumbel_noise_follows_the_counter(dtype):
    net = net_of(layer("gumbel"), [6], dtype).train()
    x = np.random.default_rng(20).normal(size=(4, 6)).astype(dtype)
    net.rng_counter = 5
    a = net(x)
    net.rng_counter = 5
    b = net(x)
    c = net(x)                                        # counter 6
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_gumbel_max_samples_the_softmax():
    """argmax(s + g) ~ Categorical(softmax(s)) when g is Gumbel noise."""
    z = np.array([1.0, 0.0, -0.5, 0.7])
    net = net_of(layer("gumbel", temperature=0.8), [4]).train()
    y = net(np.tile(z, (20000, 1)))
    freq = np.bincount(np.argmax(y, axis=-1), minlength=4) / 20000
    assert np.max(np.abs(freq - np_softmax(z / 0.8))) < 0.02


@pytest.mark.parametrize("bits,dtype", [(24, np.float32), (53, np.float64)])
def test_gumbel_noise_is_finite_at_the_extreme_draws(bits, dtype):
    u = np.array([0.0, 2.0 ** -bits, 0.5 - 2.0 ** -bits, 0.5, 1 - 2.0 ** -bits], dtype=dtype)
    g = gumbel_from_uniform(u, bits)
    assert np.all(np.isfinite(g)) and np.all(np.diff(g) > 0)
    half = 2.0 ** -(bits + 1)
    assert g[0] == -np.log(-np.log(half))
    assert abs(g[-1] + np.log(-np.log1p(-half))) < 1e-12 * abs(g[-1])


# --- config errors --------------------------------------------------------------------------------

@pytest.mark.parametrize("cfg,shape,key,words", [
    (layer("grid", rows=3, cols=4), [10], "layers[0]", ["12", "10"]),
    (layer("hierarchical", levels=[2, 3]), [6], "layers[0].levels", ["2 + 6 = 8", "got 6"]),
    (layer("masked", mask=[1, 0, 1]), [4, 5], "layers[0].mask", ["3 entries", "has 5"]),
    (layer("adaptive", classes=20, cutoffs=[4, 8, 12]), [16], "layers[0].div_value", ["cluster 2"]),
])
def test_shape_errors_name_the_path(cfg, shape, key, words):
    with pytest.raises(loom.ConfigError) as err:
        net_of(cfg, shape)
    assert err.value.path == key
    assert str(err.value).startswith("layers[0]")
    for w in words:
        assert w in str(err.value)

"""Losses: gradients vs central differences (float64), values and gradients vs PyTorch,
stability at large logits, NaN propagation, config round trips and errors."""
import json
import warnings

import gradcheck
import numpy as np
import pytest

import loom
from loom.nn import losses

IGNORE = -100

# (id, config, pred kind, target kind); every loss type appears, with every key exercised.
CASES = [
    ("mse", {"type": "mse"}, "logits", "real"),
    ("mae", {"type": "mae"}, "logits", "real"),
    ("huber", {"type": "huber"}, "logits", "real"),
    ("huber-delta", {"type": "huber", "delta": 0.6}, "logits", "real"),
    ("ce-ids", {"type": "cross_entropy"}, "logits", "ids"),
    ("ce-probs", {"type": "cross_entropy"}, "logits", "probs"),
    ("ce-smooth-ids", {"type": "cross_entropy", "label_smoothing": 0.1}, "logits", "ids"),
    ("ce-smooth-onehot", {"type": "cross_entropy", "label_smoothing": 0.1}, "logits", "onehot"),
    ("ce-smooth-probs", {"type": "cross_entropy", "label_smoothing": 0.25}, "logits", "probs"),
    ("ce-unnormalized", {"type": "cross_entropy", "label_smoothing": 0.1}, "logits", "uniform"),
    ("ce-ignore", {"type": "cross_entropy", "ignore_index": IGNORE}, "logits", "ids-ignored"),
    ("ce-ignore-smooth", {"type": "cross_entropy", "ignore_index": 2, "label_smoothing": 0.2},
     "logits", "ids-ignore-2"),
    ("nll", {"type": "nll"}, "logprobs", "ids"),
    ("nll-ignore", {"type": "nll", "ignore_index": IGNORE}, "logprobs", "ids-ignored"),
    ("bce", {"type": "binary_cross_entropy"}, "logits", "binary"),
    ("bce-pos-weight", {"type": "binary_cross_entropy", "pos_weight": 2.5}, "logits", "binary"),
    ("kl", {"type": "kl_div"}, "logprobs", "probs-with-zeros"),
]
SHAPES = [(4, 5), (2, 3, 5)]


def reductions(cfg):
    return ("mean", "sum", "batchmean") if cfg["type"] == "kl_div" else ("mean", "sum")


PARAMS = [pytest.param(cfg, pk, tk, red, shape, id=f"{cid}-{red}-{'x'.join(map(str, shape))}")
          for cid, cfg, pk, tk in CASES for red in reductions(cfg) for shape in SHAPES]


def softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def make_pred(kind, shape, seed=0):
    x = np.random.default_rng([seed, 0]).normal(size=shape) * 1.5
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True)) if kind == "logprobs" else x


def make_target(kind, shape, seed=0):
    rng = np.random.default_rng([seed, 1])
    c = shape[-1]
    if kind == "real":
        return rng.normal(size=shape)
    if kind == "binary":          # soft labels and exact 0/1
        t = rng.uniform(size=shape)
        t.reshape(-1)[:4] = [0.0, 1.0, 1.0, 0.0]
        return t
    if kind == "uniform":         # soft targets that need not sum to one (torch accepts them)
        return rng.uniform(size=shape)
    if kind == "probs":
        return softmax(rng.normal(size=shape) * 2)
    if kind == "probs-with-zeros":
        t = softmax(rng.normal(size=shape) * 2)
        t.reshape(-1, c)[:, 1] = 0.0                 # zero entries take the 0 log 0 = 0 branch
        return t / t.sum(axis=-1, keepdims=True)
    ids = rng.integers(0, c, size=shape[:-1])
    if kind == "onehot":
        return np.eye(c)[ids]
    flat = ids.reshape(-1)
    if kind == "ids-ignored":
        flat[[0, -1]] = IGNORE
    elif kind == "ids-ignore-2":      # an in-range class id used as ignore_index
        flat[[0, 1]] = 2
        flat[2:][flat[2:] == 2] = 3
    return ids


def central_differences(loss, pred, target):
    numeric = np.zeros_like(pred)
    flat, out = pred.reshape(-1), numeric.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + gradcheck.STEP
        up = float(loss(pred, target)[0])
        flat[i] = old - gradcheck.STEP
        down = float(loss(pred, target)[0])
        flat[i] = old
        out[i] = (up - down) / (2 * gradcheck.STEP)
    return numeric


@pytest.mark.parametrize("cfg, pk, tk, reduction, shape", PARAMS)
def test_gradient_matches_central_differences(cfg, pk, tk, reduction, shape):
    loss = losses.build({**cfg, "reduction": reduction})
    pred, target = make_pred(pk, shape), make_target(tk, shape)
    value, grad = loss(pred, target)
    assert value.shape == () and value.dtype == np.float64 and np.isfinite(value)
    assert grad.shape == pred.shape and grad.dtype == np.float64
    numeric = central_differences(loss, pred.copy(), target)
    assert gradcheck.rel_error(grad, numeric) < gradcheck.TOL
    assert np.max(np.abs(numeric)) > 1e-3         # the check compared something


# --- PyTorch ------------------------------------------------------------------------------------------

def torch_loss(cfg, reduction, pred, target):
    import torch
    F = torch.nn.functional
    kind = cfg["type"]
    if kind in ("cross_entropy", "nll") and pred.ndim == 3:      # torch wants classes on axis 1
        pred = pred.permute(0, 2, 1)
        if target.is_floating_point():
            target = target.permute(0, 2, 1)
    ignore = cfg.get("ignore_index")
    ignore = -100 if ignore is None else ignore
    if kind == "mse":
        return F.mse_loss(pred, target, reduction=reduction)
    if kind == "mae":
        return F.l1_loss(pred, target, reduction=reduction)
    if kind == "huber":
        return F.huber_loss(pred, target, reduction=reduction, delta=cfg.get("delta", 1.0))
    if kind == "cross_entropy":
        return F.cross_entropy(pred, target, reduction=reduction, ignore_index=ignore,
                               label_smoothing=cfg.get("label_smoothing", 0.0))
    if kind == "nll":
        return F.nll_loss(pred, target, reduction=reduction, ignore_index=ignore)
    if kind == "binary_cross_entropy":
        pw = cfg.get("pos_weight")
        pw = None if pw is None else torch.tensor(pw, dtype=pred.dtype)
        return F.binary_cross_entropy_with_logits(pred, target, reduction=reduction, pos_weight=pw)
    if kind == "kl_div":
        with warnings.catch_warnings():          # torch warns that "mean" is not batchmean
            warnings.simplefilter("ignore")
            return F.kl_div(pred, target, reduction=reduction)
    raise AssertionError(kind)


TORCH_SHAPES = [(4, 5), (2, 3, 5), (16, 9, 11)]
TORCH_PARAMS = [pytest.param(cfg, pk, tk, red, shape, id=f"{cid}-{red}-{'x'.join(map(str, shape))}")
                for cid, cfg, pk, tk in CASES for red in reductions(cfg) for shape in TORCH_SHAPES]


@pytest.mark.parametrize("cfg, pk, tk, reduction, shape", TORCH_PARAMS)
def test_value_float32_and_gradient_float64_match_torch(cfg, pk, tk, reduction, shape):
    torch = pytest.importorskip("torch")
    loss = losses.build({**cfg, "reduction": reduction})
    pred, target = make_pred(pk, shape, seed=3), make_target(tk, shape, seed=3)

    p32 = pred.astype(np.float32)
    t32 = target.astype(np.float32) if target.dtype.kind == "f" else target
    value, grad = loss(p32, t32)
    assert value.dtype == np.float32 and grad.dtype == np.float32
    expected = torch_loss(cfg, reduction, torch.from_numpy(p32), torch.from_numpy(t32)).item()
    assert abs(float(value) - expected) <= 1e-6 * abs(expected), (float(value), expected)

    pt = torch.from_numpy(pred.copy()).requires_grad_()
    out = torch_loss(cfg, reduction, pt, torch.from_numpy(target))
    out.backward()
    value64, grad64 = loss(pred, target)
    assert abs(float(value64) - out.item()) <= 1e-12 * abs(out.item())
    assert gradcheck.rel_error(grad64, pt.grad.numpy()) < 1e-12


def test_mae_gradient_is_zero_at_zero_residual_like_torch():
    torch = pytest.importorskip("torch")
    pred = np.array([[1.0, -2.0, 3.0], [0.5, 0.5, -1.0]])
    target = np.array([[1.0, -1.0, 3.0], [0.0, 0.5, -1.5]])
    _, grad = losses.build("mae")(pred, target)
    pt = torch.from_numpy(pred.copy()).requires_grad_()
    torch.nn.functional.l1_loss(pt, torch.from_numpy(target)).backward()
    assert np.array_equal(grad, pt.grad.numpy())
    assert grad[0, 0] == 0 and grad[0, 2] == 0 and grad[1, 1] == 0


def test_every_row_ignored_gives_nan_mean_and_zero_gradient_like_torch():
    pred = make_pred("logits", (3, 4))
    ids = np.full(3, IGNORE)
    for cfg in ({"type": "cross_entropy", "ignore_index": IGNORE},
                {"type": "cross_entropy", "ignore_index": IGNORE, "label_smoothing": 0.1},
                {"type": "nll", "ignore_index": IGNORE}):
        value, grad = losses.build(cfg)(pred, ids)
        assert np.isnan(value) and not grad.any()
        value, grad = losses.build({**cfg, "reduction": "sum"})(pred, ids)
        assert value == 0 and not grad.any()


def test_label_smoothing_agrees_between_ids_and_onehot():
    pred, ids = make_pred("logits", (2, 3, 6)), make_target("ids", (2, 3, 6))
    loss = losses.build({"type": "cross_entropy", "label_smoothing": 0.3})
    v1, g1 = loss(pred, ids)
    v2, g2 = loss(pred, np.eye(6)[ids])
    assert np.isclose(v1, v2, rtol=1e-14) and np.allclose(g1, g2, rtol=0, atol=1e-15)


def test_kl_div_negative_target_is_nan_like_torch():
    torch = pytest.importorskip("torch")
    pred, target = make_pred("logprobs", (2, 3)), np.array([[0.5, 0.0, 0.5], [1.2, -0.2, 0.0]])
    value, _ = losses.build({"type": "kl_div", "reduction": "sum"})(pred, target)
    expected = torch_loss({"type": "kl_div"}, "sum", torch.from_numpy(pred), torch.from_numpy(target))
    assert np.isnan(value) and torch.isnan(expected)


# --- stability, dtypes, NaN -----------------------------------------------------------------------

def test_cross_entropy_is_stable_at_huge_logits():
    pred = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 5e3]], dtype=np.float32)
    ids = np.array([0, 0])
    for smoothing in (0.0, 0.1):
        loss = losses.build({"type": "cross_entropy", "label_smoothing": smoothing, "reduction": "sum"})
        for target in (ids, np.eye(3, dtype=np.float32)[ids]):
            value, grad = loss(pred, target)
            assert value.dtype == np.float32 and grad.dtype == np.float32
            assert np.isfinite(value) and np.all(np.isfinite(grad))
    value, grad = losses.build({"type": "cross_entropy", "reduction": "sum"})(pred, ids)
    assert value == np.float32(2e4)                                   # row 0 costs 0, row 1 costs 2e4
    assert np.array_equal(grad, np.array([[0, 0, 0], [-1, 1, 0]], dtype=np.float32))


def test_binary_cross_entropy_is_stable_at_huge_logits():
    pred = np.array([1e4, -1e4, 1e4, -1e4], dtype=np.float32)
    target = np.array([1, 1, 0, 0], dtype=np.float32)
    for pw in (None, 3.0):
        value, grad = losses.build({"type": "binary_cross_entropy", "pos_weight": pw,
                                    "reduction": "sum"})(pred, target)
        assert value.dtype == np.float32 and grad.dtype == np.float32
        assert np.isfinite(value) and np.all(np.isfinite(grad))
        assert value == np.float32(1e4 * (1 if pw is None else pw) + 1e4)
        assert np.array_equal(grad, np.array([0, -(pw or 1), 1, 0], dtype=np.float32))


@pytest.mark.parametrize("cid, cfg, pk, tk", CASES, ids=[c[0] for c in CASES])
def test_float32_in_float32_out_and_nan_propagates(cid, cfg, pk, tk):
    shape = (3, 4, 5)
    pred = make_pred(pk, shape).astype(np.float32)
    target = make_target(tk, shape)                           # float targets stay float64 here
    loss = losses.build(cfg)
    value, grad = loss(pred, target)
    assert value.dtype == np.float32 and value.shape == () and isinstance(value, np.ndarray)
    assert grad.dtype == np.float32 and grad.shape == shape
    # (1, 2) is a row no test target ignores; nll reads only the target's entry (as torch does)
    pred[1, 2, target[1, 2] if cfg["type"] == "nll" else 3] = np.nan
    value, _ = loss(pred, target)
    assert np.isnan(value)


# --- config ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("cid, cfg, pk, tk", CASES, ids=[c[0] for c in CASES])
def test_config_round_trips(cid, cfg, pk, tk):
    loss = losses.build(cfg)
    text = json.dumps(loss.config)
    again = losses.build(json.loads(text))
    assert type(again) is type(loss) and again.config == loss.config
    assert losses.build(loss.config).config == loss.config
    assert {k: v for k, v in loss.config.items() if k in cfg} == cfg     # given keys kept as given
    pred, target = make_pred(pk, (3, 5)), make_target(tk, (3, 5))
    assert np.array_equal(loss(pred, target)[0], again(pred, target)[0])


def test_names_and_defaults():
    assert set(losses.NAMES) == {c[1]["type"] for c in CASES}
    assert set(losses.NAMES) == {"mse", "mae", "huber", "cross_entropy", "binary_cross_entropy",
                                 "nll", "kl_div"}
    assert losses.build("huber").config == {"type": "huber", "reduction": "mean", "delta": 1.0}
    assert losses.build("cross_entropy").config == {"type": "cross_entropy", "reduction": "mean",
                                                    "label_smoothing": 0.0, "ignore_index": None}
    assert losses.build("binary_cross_entropy").config["pos_weight"] is None
    assert losses.build({"type": "huber", "delta": 2}).config["delta"] == 2.0
    assert isinstance(losses.build({"type": "huber", "delta": 2}).config["delta"], float)
    loss = losses.build("mse")
    assert losses.build(loss) is loss
    assert losses.CrossEntropy(label_smoothing=0.1).config == losses.build(
        {"type": "cross_entropy", "label_smoothing": 0.1}).config


@pytest.mark.parametrize("spec, path", [
    ("nope", "loss.type"),
    ({"type": "softmax"}, "loss.type"),
    ({"reduction": "sum"}, "loss.type"),
    ({"type": 3}, "loss.type"),
    (3, "loss"),
    ({"type": "mse", "delta": 1.0}, "loss.delta"),
    ({"type": "mse", "reduction": "batchmean"}, "loss.reduction"),
    ({"type": "cross_entropy", "reduction": "batchmean"}, "loss.reduction"),
    ({"type": "kl_div", "reduction": "none"}, "loss.reduction"),
    ({"type": "huber", "delta": 0}, "loss.delta"),
    ({"type": "huber", "delta": "1"}, "loss.delta"),
    ({"type": "cross_entropy", "label_smoothing": 1.0}, "loss.label_smoothing"),
    ({"type": "cross_entropy", "label_smoothing": -0.1}, "loss.label_smoothing"),
    ({"type": "cross_entropy", "ignore_index": 1.5}, "loss.ignore_index"),
    ({"type": "cross_entropy", "ignore_index": True}, "loss.ignore_index"),
    ({"type": "cross_entropy", "pos_weight": 2.0}, "loss.pos_weight"),
    ({"type": "binary_cross_entropy", "pos_weight": -1.0}, "loss.pos_weight"),
    ({"type": "binary_cross_entropy", "pos_weight": float("nan")}, "loss.pos_weight"),
    ({"type": "kl_div", "ignore_index": 0}, "loss.ignore_index"),
])
def test_config_errors_name_the_path(spec, path):
    with pytest.raises(loom.ConfigError) as err:
        losses.build(spec)
    assert err.value.path == path


def test_batchmean_accepted_for_kl_div():
    assert losses.build({"type": "kl_div", "reduction": "batchmean"}).reduction == "batchmean"


@pytest.mark.parametrize("cfg, pred_shape, target, words", [
    ({"type": "mse"}, (3, 4), np.zeros((3, 5)), ["(3, 5)", "(3, 4)"]),
    ({"type": "binary_cross_entropy"}, (3, 4), np.zeros((4, 3)), ["(4, 3)", "(3, 4)"]),
    ({"type": "kl_div"}, (3, 4), np.zeros(3), ["(3,)", "(3, 4)"]),
    ({"type": "mse"}, (2,), np.array(["a", "b"]), ["dtype"]),
    ({"type": "cross_entropy"}, (3, 4), np.zeros(4, dtype=int), ["(4,)", "expected (3,)"]),
    ({"type": "cross_entropy"}, (3, 4), np.zeros(3), ["float64", "integer"]),
    ({"type": "cross_entropy"}, (3, 4), np.zeros((3, 4), dtype=int), ["int64", "floating"]),
    ({"type": "cross_entropy"}, (3, 4), np.array([0, 4, 1]), ["id 4", "index [1]", "< 4"]),
    ({"type": "cross_entropy"}, (2, 3, 4), np.array([[0, 1, 2], [3, 0, -1]]), ["id -1", "index [1, 2]"]),
    ({"type": "cross_entropy", "ignore_index": IGNORE}, (3, 4), np.array([IGNORE, 9, 1]),
     ["id 9", "index [1]"]),
    ({"type": "nll"}, (3, 4), np.zeros(3), ["float64", "integer"]),
    ({"type": "nll"}, (3, 4), np.array([0, 1, 5]), ["id 5", "index [2]"]),
    ({"type": "nll"}, (3, 4), np.zeros((3, 4), dtype=int), ["(3, 4)", "expected (3,)"]),
])
def test_target_errors_name_expected_and_got(cfg, pred_shape, target, words):
    pred = np.zeros(pred_shape)
    with pytest.raises(loom.ShapeError) as err:
        losses.build(cfg)(pred, target)
    for word in words:
        assert word in str(err.value), (word, str(err.value))


def test_integer_pred_is_rejected():
    with pytest.raises(loom.ShapeError, match="floating"):
        losses.build("mse")(np.zeros(3, dtype=int), np.zeros(3))


def test_out_of_range_ignore_index_is_not_an_error():
    value, grad = losses.build({"type": "cross_entropy", "ignore_index": IGNORE})(
        make_pred("logits", (3, 4)), np.array([IGNORE, 3, 0]))
    assert np.isfinite(value) and not grad[0].any() and grad[1:].any()

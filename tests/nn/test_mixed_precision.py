"""bf16 mixed precision (loom/mixed_precision.py): the rounding to bfloat16 against ml_dtypes', every
product of a training step taking bfloat16 operands (every catalogue family, forward and backward, both
modes), float32 weights and the bits of a run repeatable and batch-invariant, and the settings' errors."""
import json

import ml_dtypes
import numpy as np
import pytest
from catalogue import SAMPLES, config
from cli_run import loom as run

import loom
from loom import mixed_precision
from loom.errors import ConfigError
from loom.kernels import exact, ops
from loom.kernels.exact import over_batch

MLP = {"loom": 1, "input": {"shape": [12]}, "layers": [{"type": "dense", "units": 16, "activation": "relu"},
                                                       {"type": "dense", "units": 3}]}


def _data(seed=0, n=64, shape=(12,)):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n,) + shape).astype(np.float32), rng.integers(0, 3, n)


def test_rounding_is_bfloat16s():
    rng = np.random.default_rng(0)
    x = np.concatenate([
        np.ldexp(rng.uniform(-2, 2, 4000), rng.integers(-152, 127, 4000)).astype(np.float32),   # every scale
        np.array([0.0, -0.0, np.inf, -np.inf, 1e-45, -3e-40, 1.1754942e-38, 3.4028235e38, -3.39e38,
                  1.00390625, 1.01171875, 1.0078125 + 2 ** -24], dtype=np.float32),   # ties to even, either way
        (np.arange(1 << 16, dtype=np.uint32) << 16 | 0x8000).view(np.float32),         # every tie
    ])
    got = mixed_precision.round_bf16(x, np)
    with np.errstate(invalid="ignore"):             # (signalling NaNs among the ties)
        want = x.astype(ml_dtypes.bfloat16).astype(np.float32)
        wide = x.astype(np.float64)
    finite = ~np.isnan(x)
    assert np.array_equal(got[finite].view(np.uint32), want[finite].view(np.uint32))
    assert np.isnan(got[~finite]).all()
    with pytest.raises(TypeError, match="float64"):
        mixed_precision.round_bf16(wide, np)


@pytest.mark.parametrize("deterministic", [True, False])
def test_products_take_bfloat16_operands(deterministic):
    rng = np.random.default_rng(1)
    a = rng.standard_normal((5, 300)).astype(np.float32)
    b = rng.standard_normal((300, 7)).astype(np.float32)
    ra, rb = (mixed_precision.round_bf16(v, np) for v in (a, b))
    with loom.deterministic(deterministic):
        with loom.precision("bf16"):
            got, grad = ops.matmul(a, b), ops.grad_matmul(a, b)
        want = ops.matmul(ra, rb)
        plain = ops.matmul(a, b)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    assert np.array_equal(grad.view(np.uint32), (ops.grad_matmul(ra, rb) if deterministic else want).view(np.uint32))
    assert not np.array_equal(got, plain)
    assert mixed_precision.current() == "float32"


def _watch_products(monkeypatch):
    """Record, for every exact product, whether both operands held bfloat16 values only."""
    seen = []

    def watched(fn):
        def run(a, b, *args, **kw):
            seen.append(all(np.array_equal(v, mixed_precision.round_bf16(v, np)) for v in (a, b)))
            return fn(a, b, *args, **kw)
        return run
    monkeypatch.setattr(exact, "matmul", watched(exact.matmul))
    monkeypatch.setattr(over_batch, "matmul", watched(over_batch.matmul))
    return seen


_TRAINABLE = [s for s in SAMPLES if not s[1][0]["type"].startswith("openfluke") and s[1][0]["type"] != "kmeans"]


@pytest.mark.parametrize("name, layers, shape, idt", _TRAINABLE, ids=[s[0] for s in _TRAINABLE])
def test_every_family_trains_with_bfloat16_products(monkeypatch, name, layers, shape, idt):
    """Each catalogue sample, then a dense layer over its flattened output, trains a step in bf16: every
    product it runs (forward, input and weight gradients) takes bfloat16 operands; weights stay float32."""
    cfg = config(layers + [{"type": "flatten"}, {"type": "dense", "units": 3}], shape, idt)
    rng = np.random.default_rng(sum(map(ord, name)))
    vocab = layers[0].get("vocab_size") if idt else None
    X = rng.integers(0, vocab, (8,) + tuple(shape)) if vocab else rng.standard_normal((8,) + tuple(shape))
    Y = rng.integers(0, 3, 8)
    seen = _watch_products(monkeypatch)
    net = loom.Network.from_config(cfg)
    loom.train(net, X.astype(np.float32) if not vocab else X, Y, epochs=1, batch_size=8, verbose=False,
               precision="bf16")
    assert len(seen) >= 2 and all(seen), f"{name}: {seen.count(False)} of {len(seen)} products took float32 operands"
    assert all(p.dtype == np.float32 for p in net.parameters().values())


def test_a_bf16_run_repeats_its_bits_and_differs_from_float32():
    X, Y = _data()
    runs = {}
    for precision in ("bf16", "bf16", "float32"):
        net = loom.Network.from_config(MLP)
        loom.train(net, X, Y, epochs=3, batch_size=16, verbose=False, precision=precision)
        runs.setdefault(precision, []).append(net.state_dict())
    first, second = runs["bf16"]
    for key, value in first.items():
        assert np.array_equal(value.view(np.uint32), second[key].view(np.uint32)), key
    assert any(not np.array_equal(value, runs["float32"][0][key]) for key, value in first.items())
    # the training block's setting is the same as the argument
    net = loom.Network.from_config({**MLP, "training": {"precision": "bf16"}})
    loom.train(net, X, Y, epochs=3, batch_size=16, verbose=False)
    for key, value in net.state_dict().items():
        assert np.array_equal(value.view(np.uint32), first[key].view(np.uint32)), key


def test_bf16_forward_is_batch_invariant():
    X, _ = _data(2, n=9)
    net = loom.Network.from_config(MLP)
    with loom.precision("bf16"):
        whole = net.forward(X)
        alone = np.concatenate([net.forward(X[i:i + 1]) for i in range(len(X))])
    assert np.array_equal(whole.view(np.uint32), alone.view(np.uint32))


def test_settings_that_cannot_train_in_bf16_name_the_key_and_layer():
    X, Y = _data()
    with pytest.raises(ConfigError, match=r"^precision: expected one of float32, bf16, got 'fp8'"):
        loom.train(loom.Network.from_config(MLP), X, Y, epochs=1, verbose=False, precision="fp8")
    with pytest.raises(ConfigError, match=r"^training\.precision: expected one of float32, bf16"):
        loom.Network.from_config({**MLP, "training": {"precision": "half"}})
    with pytest.raises(ConfigError, match=r"^training\.precision: .*float64"):
        net = loom.Network.from_config({**MLP, "dtype": "float64", "training": {"precision": "bf16"}})
        loom.train(net, X.astype(np.float64), Y, epochs=1, verbose=False)
    kmeans = {**MLP, "layers": [{"type": "dense", "units": 4},
                                {"type": "kmeans", "clusters": 3, "output": "features"}, {"type": "dense", "units": 3}]}
    with pytest.raises(ConfigError, match=r"^precision: layers\.1 \(kmeans\) cannot train in bf16"):
        loom.train(loom.Network.from_config(kmeans), X, Y, epochs=1, verbose=False, precision="bf16")
    qat = {**MLP, "qat": {"dtype": "int8"}}
    with pytest.raises(ConfigError, match=r"^precision: .*quantization-aware"):
        loom.train(loom.Network.from_config(qat), X, Y, epochs=1, verbose=False, precision="bf16")
    quantized = {**MLP, "quantization": {"dtype": "int8"}}
    with pytest.raises(ConfigError, match=r"^precision: .*quantized"):
        loom.train(loom.Network.from_config(quantized), X, Y, epochs=1, verbose=False, precision="bf16")
    with pytest.raises(ConfigError, match="expected one of float32, bf16"):
        with loom.precision("bf8"):
            pass
    with loom.precision("bf16"), pytest.raises(ConfigError, match=r"^loom\.precision: .*float64"):
        net = loom.Network.from_config({**MLP, "dtype": "float64"})
        loom.train(net, X.astype(np.float64), Y, epochs=1, verbose=False)


def test_the_bf16_context_leaves_other_dtypes_alone():
    """Only float32 operands are narrowed: a float64 network's forward and integer products run as they are."""
    X, _ = _data(3, n=4)
    net = loom.Network.from_config({**MLP, "dtype": "float64"})
    x64 = X.astype(np.float64)
    with loom.precision("bf16"):
        inside = net.forward(x64)
        ints = ops.matmul(np.arange(6).reshape(2, 3), np.arange(6).reshape(3, 2))
    assert np.array_equal(inside, net.forward(x64)) and ints.tolist() == [[10, 13], [28, 40]]
    assert mixed_precision.round_bf16(np.float32(1.00390625), np).shape == ()


def test_loom_train_precision_flag(tmp_path, capsys):
    X, Y = _data()
    np.savez(tmp_path / "d.npz", x=X, y=Y)
    (tmp_path / "mlp.json").write_text(json.dumps(MLP))
    code, _, err = run(capsys, "train", tmp_path / "mlp.json", "--data", tmp_path / "d.npz", "--epochs", "2",
                       "--precision", "bf16", "--out", tmp_path / "out", "--quiet")
    assert code == 0, err
    net = loom.Network.from_config(MLP)
    loom.train(net, X, Y, epochs=2, verbose=False, precision="bf16")
    saved = loom.load(str(tmp_path / "out" / "model.loom"))
    for key, value in net.state_dict().items():
        assert np.array_equal(value, saved.state_dict()[key]), key
    code, _, err = run(capsys, "train", tmp_path / "mlp.json", "--data", tmp_path / "d.npz", "--precision", "fp8",
                       "--out", tmp_path / "bad")
    assert code == 2 and "--precision" in err

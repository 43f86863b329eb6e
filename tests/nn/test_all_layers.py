"""Generic checks run over every sample in the catalogue (every layer type, softmax variant and
combine mode): gradients, float32 vs float64, batch independence, train/eval behaviour."""
import gradcheck
import numpy as np
import pytest
from catalogue import SAMPLES, config

import loom
from loom import batch_invariance

NOISY = {"dropout", "softmax/gumbel"}       # outputs depend on the RNG counter in training
BATCH_COUPLED = {"batch_norm"}              # training statistics mix the batch by definition
# openfluke_softmax with normalize "batch" and openfluke_attention (welvet semantics) mix the batch in eval mode too
BATCH_NORMALIZED = {name for name, layers, *_ in SAMPLES if batch_invariance.mixes_rows(layers)}


def _input(shape, idt, batch, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    if idt:
        return rng.integers(0, 10, size=(batch, *shape))
    return rng.normal(size=(batch, *shape)).astype(dtype)


@pytest.mark.parametrize("name, layers, shape, idt", SAMPLES, ids=[s[0] for s in SAMPLES])
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_gradients(name, layers, shape, idt, training):
    gradcheck.check(layers, shape, batch=3, training=training, x=_input(shape, idt, 3), input_dtype=idt)


@pytest.mark.parametrize("name, layers, shape, idt", SAMPLES, ids=[s[0] for s in SAMPLES])
def test_float32_agrees_with_float64(name, layers, shape, idt):
    nets = {dt: loom.Network.from_config(config(layers, shape, idt, dtype=dt)) for dt in ("float32", "float64")}
    for k, p64 in nets["float64"].parameters().items():      # same draws, rounded once
        assert np.array_equal(nets["float32"].parameters()[k], p64.astype(np.float32)), k
    x64 = _input(shape, idt, 4)
    y64 = nets["float64"](x64)
    y32 = nets["float32"](x64 if idt else x64.astype(np.float32))
    assert y32.dtype == np.float32 and y64.dtype == np.float64
    assert np.max(np.abs(y32 - y64)) <= 1e-4 * max(1.0, np.max(np.abs(y64)))


@pytest.mark.parametrize("name, layers, shape, idt", SAMPLES, ids=[s[0] for s in SAMPLES])
def test_samples_are_independent_of_the_batch(name, layers, shape, idt):
    if name in BATCH_NORMALIZED:
        pytest.skip("normalize or span batch couples the samples by definition")
    net = loom.Network.from_config(config(layers, shape, idt, dtype="float64"))
    x = _input(shape, idt, 5)
    together = net(x)
    alone = np.concatenate([net(x[i:i + 1]) for i in range(5)])
    np.testing.assert_allclose(together, alone, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name, layers, shape, idt", SAMPLES, ids=[s[0] for s in SAMPLES])
def test_eval_is_deterministic_and_training_noise_follows_the_counter(name, layers, shape, idt):
    net = loom.Network.from_config(config(layers, shape, idt, dtype="float64"))
    x = _input(shape, idt, 4)
    assert np.array_equal(net(x), net(x))
    net.train()
    first = net(x)
    second = net(x)
    if name in NOISY:
        assert not np.array_equal(first, second)
    elif name not in BATCH_COUPLED | BATCH_NORMALIZED:
        assert np.array_equal(first, second)
    net.rng_counter = 0
    assert np.array_equal(net(x), first)


FLOAT_INPUT = [s for s in SAMPLES if s[3] is None and s[0] not in BATCH_NORMALIZED]  # ids cannot hold NaN;
# a batch-normalized softmax spreads a NaN over the whole batch by definition


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("name, layers, shape, idt", FLOAT_INPUT, ids=[s[0] for s in FLOAT_INPUT])
def test_nan_stays_in_its_sample(name, layers, shape, idt):
    """IEEE propagation, no clamping: a NaN in sample 1 reaches sample 1's output and no other."""
    net = loom.Network.from_config(config(layers, shape, idt, dtype="float64"))
    x = _input(shape, idt, 3)
    clean = net(x)
    x[(1,) + (0,) * len(shape)] = np.nan       # position 0 is kept by the masked-softmax sample
    y = net(x)
    assert np.isnan(y[1]).any(), "the NaN vanished"
    assert np.array_equal(y[[0, 2]], clean[[0, 2]])

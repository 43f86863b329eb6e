"""Every config in examples/ is canonical, builds, and runs forward and backward."""
import pathlib

import numpy as np
import pytest

import loom
from loom import config

EXAMPLES = sorted((pathlib.Path(__file__).resolve().parents[1] / "examples").glob("*.json"))


def test_there_are_examples():
    assert len(EXAMPLES) >= 5


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_is_canonical_and_runs(path):
    text = path.read_text()
    assert config.dumps(config.loads(text)) == text
    net = loom.Network.from_config(str(path))
    spec = net.input_spec
    rng = np.random.default_rng(0)
    if spec.is_float:
        x = rng.normal(size=(2, *spec.shape)).astype(spec.dtype)
    else:
        x = rng.integers(0, 10, size=(2, *spec.shape))
    y = net.train()(x)
    assert y.shape == (2, *net.output_spec.shape) and np.isfinite(y).all()
    # a random upstream gradient: with ones, a softmax output's input gradient is exactly zero (and
    # deterministic mode's exact sums give exactly zero)
    dx = net.backward(rng.normal(size=y.shape).astype(y.dtype))
    assert dx is None or dx.shape == x.shape
    assert any(np.any(g != 0) for g in net.gradients().values())

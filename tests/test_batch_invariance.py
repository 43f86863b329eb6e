"""Batch invariance in deterministic mode: every catalogue layer gives a sample's output and input
gradient the same bits alone, at any position and beside padding rows of NaN, huge, zero and
subnormal values; GEMMs crossing every former scheme threshold do the same."""
import numpy as np
import pytest

import loom
from loom import batch_invariance as bi
from loom import rng, verify
from loom.errors import DeterminismError
from loom.kernels import exact
from loom.nn.catalogue import SAMPLES, config

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")     # NaN and huge padding rows


@pytest.mark.parametrize("name, layers, shape, idt", [s for s in SAMPLES if not bi.mixes_rows(s[1])],
                         ids=[s[0] for s in SAMPLES if not bi.mixes_rows(s[1])])
def test_every_layer_is_batch_invariant(name, layers, shape, idt):
    with loom.deterministic(True):
        net = loom.Network.from_config(config(layers, shape, idt))
        bi.check_network(net, verify.sample_input(name, layers, shape, idt), name)


@pytest.mark.parametrize("name", ["softmax/standard/batch", "multi_head_attention/span_batch"])
def test_layers_that_mix_rows_are_known_and_caught(name):
    """The check can fail: openfluke's whole-batch layers define a row from the others."""
    _, layers, shape, idt = next(s for s in SAMPLES if s[0] == name)
    assert bi.mixes_rows(layers)
    net = loom.Network.from_config(config(layers, shape, idt))
    with loom.deterministic(True), pytest.raises(DeterminismError, match=name):
        bi.check_network(net, verify.sample_input(name, layers, shape, idt), name)


@pytest.mark.parametrize("fan_in", [2048, 2049, 4096, 16385])
def test_wide_dense_layers_are_batch_invariant(fan_in):
    """Fan-ins on both sides of the correctly rounded scheme's limit (2048) and of the slices' chunk
    (2^14): the scheme, and so the bits, follow K alone."""
    cfg = {"loom": 1, "name": "wide", "seed": 0, "dtype": "float32", "input": {"shape": [fan_in]},
           "layers": [{"type": "dense", "units": 24, "activation": "gelu"}, {"type": "dense", "units": 5}]}
    with loom.deterministic(True):
        net = loom.Network.from_config(cfg)
        x = rng.Generator(1, "wide").normal((4, fan_in), dtype=np.float32) * np.float32(3)
        x[1] *= np.float32(2.0 ** 40)                 # a row far from its batch-mates' scale
        bi.check_network(net, x, f"dense fan-in {fan_in}")


def test_a_product_row_is_the_same_alone_and_in_a_large_batch():
    """The issue's case: K = 2049, M = N = 4097, where M x N passed the former memory budget (2^25
    entries of pieces' results) and the batch size switched the scheme (2,924 of a row's 4,097
    entries differed)."""
    gen = np.random.default_rng(0)
    a = gen.standard_normal((4097, 2049)).astype(np.float32)
    b = gen.standard_normal((2049, 4097)).astype(np.float32)
    full = exact.matmul(a, b)
    for i in (0, 2000, 4096):
        assert np.array_equal(exact.matmul(a[i:i + 1], b).view(np.uint32), full[i:i + 1].view(np.uint32)), i

"""Deterministic mode's greedy token on the CPU from fast logits and their error bound
(loom/llm/argmax_logits.py): the first argmax of the exact logits, ties and near ties included, for
every stored type the fast product takes; the candidates' logits are the full product's bits; rows
the bound cannot settle take the full product; through the batch engine the same tokens as with
every logit computed."""
import numpy as np
import pytest
from quant_rows import random_rows

import loom
from loom import backend
from loom.kernels.exact import fixed
from loom.kernels.quant.block import BlockQuantized, linear
from loom.llm import argmax_logits

CPU = backend.get("cpu")
pytestmark = pytest.mark.skipif(not CPU.quant.TYPES, reason="numba is not installed: no fast product")
RNG = np.random.default_rng(20261126)
TYPES = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "BF16", "F16"]


def _weight(qtype, rows=600, cols=256):
    return BlockQuantized(random_rows(qtype, rows, cols, RNG, scale=0.01, plain=0.05), qtype, (rows, cols))


def _check(x, w):
    with loom.deterministic(True):
        full = linear(x, w)
        part = argmax_logits.exact_logits(CPU, x, w, argmax_logits.weight_bounds(w))
    np.testing.assert_array_equal(np.argmax(part, axis=1), np.argmax(full, axis=1))
    kept = np.isfinite(part)
    np.testing.assert_array_equal(part[kept].view(np.uint32), full[kept].view(np.uint32))
    assert np.all(part[~kept] == -np.inf)
    assert all(kept[i, full[i] == full[i].max()].all() for i in range(len(x)))    # every exact maximum
    return kept


@pytest.mark.parametrize("qtype", TYPES)
def test_the_first_argmax_of_the_exact_logits_on_fresh_random_rows(qtype):
    w = _weight(qtype)
    x = (RNG.standard_normal((3, w.shape[1])) * np.exp(RNG.uniform(-3, 3, (3, 1)))).astype(np.float32)
    kept = _check(x, w)
    assert kept.sum(axis=1).max() < w.shape[0] // 10          # a few candidates, not the whole layer
    bounds, v = argmax_logits.weight_bounds(w, rows_per_chunk=256), w.dequantize()
    assert bounds.top == np.abs(v).max()
    np.testing.assert_array_equal(bounds.step, np.ldexp(1.0, fixed.row_exponents(np, v) - 16))
    np.testing.assert_allclose(bounds.l1, np.abs(v.astype(np.float64)).sum(axis=1) + v.shape[1] * bounds.step,
                               rtol=1e-12)


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_1", "BF16"])
def test_ties_and_near_ties_keep_the_first_index(qtype):
    """Rows equal to the winning row (a tie: the first index wins) are all candidates, beside a row one
    stored bit from it (a near tie); the first exact maximum is chosen."""
    w = _weight(qtype)
    data = w.data.copy()
    x = RNG.standard_normal((2, w.shape[1])).astype(np.float32)
    with loom.deterministic(True):
        best = int(np.argmax(linear(x[:1], w)[0]))
    data[[3, best, 400]] = data[best]                          # exact ties before and after it
    data[7] = data[best]
    data[7, -1] ^= 1                                          # a near tie: one code bit apart
    tied = BlockQuantized(data, qtype, w.shape)
    kept = _check(x, tied)
    with loom.deterministic(True):
        full = linear(x[:1], tied)[0]
    if full[best] == full.max():                              # (unless the near tie came out above them)
        assert kept[0, [3, 400, best]].all() and np.argmax(full) == 3


def test_rows_the_bound_cannot_settle_take_the_full_product():
    w = _weight("Q8_0")
    x = RNG.standard_normal((2, w.shape[1])).astype(np.float32)
    x[1, 5] = np.inf                                          # its fast logits are not finite
    with loom.deterministic(True):
        full = linear(x, w)
        part = argmax_logits.exact_logits(CPU, x, w, argmax_logits.weight_bounds(w))
    np.testing.assert_array_equal(part[1].view(np.uint32), full[1].view(np.uint32))
    assert np.isfinite(part[0]).sum() < w.shape[0]


def test_greedy_decoding_gives_the_tokens_of_every_logit(monkeypatch):
    """The batch engine's plain greedy steps in deterministic mode (Q8_0 output layer, several sequences)
    give the tokens they give with every logit computed; requests with logprobs keep every logit."""
    from loom.llm.batching import BatchEngine, Request
    from loom.llm.decoder import Decoder
    from loom.llm.decoder_config import DecoderConfig, expected_tensors
    from loom.llm.model import CausalLM
    from loom.spec import DECODERS
    config = {**DECODERS["llama"], "vocab_size": 512, "hidden_size": 64, "intermediate_size": 128}
    required, _ = expected_tensors(DecoderConfig.from_hf(config))
    weights = {name: (1 + 0.1 * RNG.standard_normal(shape)).astype(np.float32) if len(shape) == 1
               else BlockQuantized(random_rows("Q8_0", *shape, RNG, scale=0.05), "Q8_0", shape)
               for name, shape in required.items()}
    requests = [Request(RNG.integers(0, 512, n).tolist(), max_tokens=12, stop_ids=()) for n in (3, 9, 5)]
    calls = []
    real = argmax_logits.exact_logits
    monkeypatch.setattr(argmax_logits, "exact_logits", lambda *a: calls.append(1) or real(*a))
    with loom.deterministic(True):
        model = CausalLM(Decoder(DecoderConfig.from_hf(config), weights), None, dict(config), eos_ids=())
        got = [r.tokens for r in BatchEngine(model).generate(requests)]
        assert calls
        with_logprobs = BatchEngine(model).generate([Request(requests[0].prompt, max_tokens=12, stop_ids=(),
                                                             logprobs=0)])[0]
        monkeypatch.setattr(argmax_logits, "supports", lambda be, w: False)
        want = [r.tokens for r in BatchEngine(model).generate(requests)]
    assert got == want and with_logprobs.tokens == want[0]

"""Deterministic mode's compiled decode steps on the CPU (loom/backend/cpu/decode_exact.py and, under spec 5,
attend_integer.rope_step; Decoder.layer_tokens_exact): the same bits as the composed operations (Decoder.qkv,
attend, finish_layer) for llama, a sliding window, qwen2's biases and qwen3's per-head norms; the fallbacks
(a non-finite row, keys past the rounded scheme's K, a declined row) keep them too; rope_scores and rope_step
against the composed rotation and the scheme's array code on fresh random inputs, and their refusals."""
import os
import sys

import numpy as np
import pytest

import loom
import loom.llm
from loom.backend.cpu import attend_exact, attend_integer, decode_exact
from loom.kernels.exact import attention as integer_attention
from loom.kernels.exact import rounded as exact_rounded
from loom.llm import decoder as decoder_module
from loom.llm import paged_forward
from loom.llm.decoder import Decoder, _rotate

sys.path.insert(0, os.path.dirname(__file__))
import tiny_decoders as td  # noqa: E402

pytestmark = pytest.mark.skipif(not decode_exact.available(), reason="numba is not installed")
RNG = np.random.default_rng(20261125)
VARIANTS = {"llama": dict(kind="llama"), "mistral-window": dict(kind="mistral", sliding_window=6),
            "qwen2-bias": dict(kind="qwen2", tied=True), "qwen3": dict(kind="qwen3", head_dim=32)}
PIECES = [5, 3] + [1] * 12          # a prompt in two chunks, then one token a step


def _bits(x):
    return np.ascontiguousarray(x).view(np.uint32)


@pytest.fixture(scope="module", params=list(VARIANTS))
def decoder(request, tmp_path_factory):
    opts = dict(VARIANTS[request.param])
    model = td.build(opts.pop("kind"), seed=5, **opts)
    return loom.llm.load(td.save(model, tmp_path_factory.mktemp(request.param))).decoder


def _logits(dec, ids, monkeypatch, compiled: bool):
    with monkeypatch.context() as m:
        if not compiled:
            m.setattr(Decoder, "token_layer", lambda self, h: None)
        with loom.deterministic(True):
            return paged_forward.sequence_logits(dec, ids, PIECES)


@pytest.mark.parametrize("spec", [4, 5])
def test_compiled_steps_keep_the_composed_bits(decoder, monkeypatch, spec):
    """Under spec 5 (integer attention) and spec 4's float64 attention (decoder.INTEGER_ATTENTION off, kept for
    benchmarks), whose rows take rope_scores' compiled calls."""
    monkeypatch.setattr(decoder_module, "INTEGER_ATTENTION", spec == 5)
    ids = RNG.integers(0, td.VOCAB, sum(PIECES))
    taken, scored, stepped = [], [], []
    real, real_scores, real_step = Decoder.layer_tokens_exact, decode_exact.rope_scores, attend_integer.rope_step
    monkeypatch.setattr(Decoder, "layer_tokens_exact", lambda self, *a: taken.append(1) or real(self, *a))

    def scores(*args):
        out = real_scores(*args)
        scored.append(out is not None)
        return out

    def step(*args):
        out = real_step(*args)
        stepped.append(out is not None)
        return out
    monkeypatch.setattr(decode_exact, "rope_scores", scores)
    monkeypatch.setattr(attend_integer, "rope_step", step)
    compiled = _logits(decoder, ids, monkeypatch, compiled=True)
    assert len(taken) == 12 * len(decoder.layers)
    # (every row's attention took its spec's compiled calls)
    assert scored == ([True] * 12 * len(decoder.layers) if spec == 4 else [])
    assert stepped == ([True] * 12 * len(decoder.layers) if spec == 5 else [])
    composed = _logits(decoder, ids, monkeypatch, compiled=False)
    np.testing.assert_array_equal(_bits(compiled), _bits(composed))


def test_rows_rope_step_declines_take_the_composed_path(decoder, monkeypatch):
    """Spec 5: a row rope_step declines (None: a per-head norm not finite) runs the composed attention, which
    writes the same key and value again: the same bits."""
    monkeypatch.setattr(decoder_module, "INTEGER_ATTENTION", True)
    ids = RNG.integers(0, td.VOCAB, sum(PIECES))
    want = _logits(decoder, ids, monkeypatch, compiled=False)
    declined = []
    monkeypatch.setattr(attend_integer, "rope_step", lambda *a: declined.append(1))
    np.testing.assert_array_equal(_bits(_logits(decoder, ids, monkeypatch, compiled=True)), _bits(want))
    assert len(declined) == 12 * len(decoder.layers)


def test_rows_the_compiled_attention_declines_take_the_composed_path(decoder, monkeypatch):
    """Spec 4's float64 attention (decoder.INTEGER_ATTENTION off): a row whose scores or norms are not finite
    (rope_scores None), or whose keys pass the rounded scheme's K (here lowered to 4 keys), runs the composed
    attention: the same bits."""
    monkeypatch.setattr(decoder_module, "INTEGER_ATTENTION", False)
    ids = RNG.integers(0, td.VOCAB, sum(PIECES))
    want = _logits(decoder, ids, monkeypatch, compiled=False)
    declined = []
    monkeypatch.setattr(decode_exact, "rope_scores", lambda *a: declined.append(1))
    np.testing.assert_array_equal(_bits(_logits(decoder, ids, monkeypatch, compiled=True)), _bits(want))
    assert len(declined) == 12 * len(decoder.layers)
    monkeypatch.undo()
    monkeypatch.setattr(decoder_module, "INTEGER_ATTENTION", False)
    monkeypatch.setattr(decoder_module.exact_dispatch, "ROUNDED_MAX_K", 4)
    got = _logits(decoder, ids, monkeypatch, compiled=True)
    monkeypatch.undo()
    np.testing.assert_array_equal(_bits(got), _bits(want))


@pytest.mark.parametrize("heads, kv, d, n, normed", [(4, 2, 16, 1, False), (4, 2, 16, 9, True),
                                                     (9, 3, 64, 37, False), (6, 1, 32, 20, True)])
def test_rope_scores_match_the_composed_operations(heads, kv, d, n, normed):
    """The rotated key and the value written to the query's own slot (nothing else written), the
    gathered values, and the scores: decoder._rotate's bits and attend_exact.shifted_scores' on the
    gathered keys, with fused.rms_norm's per-head norm first (qwen3)."""
    qkv = (RNG.standard_normal((heads + 2 * kv) * d) * np.exp(RNG.uniform(-2, 2))).astype(np.float32)
    cos, sin = np.cos(RNG.uniform(0, 6, d)).astype(np.float32), np.sin(RNG.uniform(0, 6, d)).astype(np.float32)
    norm = (1 + 0.3 * RNG.standard_normal((heads + kv, d))).astype(np.float32) if normed else None
    slots = RNG.permutation(64)[:n].astype(np.int64)
    cache_k = RNG.standard_normal((64, kv, d)).astype(np.float32)
    cache_v = RNG.standard_normal((64, kv, d)).astype(np.float32)
    before_k, before_v = cache_k.copy(), cache_v.copy()
    values = np.full((kv, n, d), np.nan, np.float32)
    factor = exact_rounded.error_factor(d)
    with loom.deterministic(True):
        shifted = decode_exact.rope_scores(qkv, heads, kv, cos, sin, norm, 1e-5, cache_k, cache_v, slots, 0.3,
                                           factor, values)
        qk = qkv[:(heads + kv) * d].reshape(1, 1, heads + kv, d)
        if normed:
            qk = loom.kernels.fused.rms_norm(qk, norm, 1e-5)[0]
        qk = _rotate(qk, cos[None, None], sin[None, None], np)[0, 0]
    own = slots[-1]
    before_k[own], before_v[own] = qk[heads:], qkv[(heads + kv) * d:].reshape(kv, d)
    np.testing.assert_array_equal(_bits(cache_k), _bits(before_k))
    np.testing.assert_array_equal(_bits(cache_v), _bits(before_v))
    np.testing.assert_array_equal(_bits(values), _bits(cache_v[slots].transpose(1, 0, 2)))
    want = attend_exact.shifted_scores(np.ascontiguousarray(qk[:heads]),
                                       np.ascontiguousarray(cache_k[slots].transpose(1, 0, 2)), heads // kv, 0.3,
                                       factor)
    np.testing.assert_array_equal(_bits(shifted), _bits(want))


@pytest.mark.parametrize("heads, kv, d, n, normed, special", [
    (4, 2, 16, 1, False, None), (4, 2, 16, 9, True, None), (9, 3, 64, 37, False, None), (6, 1, 32, 20, True, None),
    (8, 2, 64, 300, False, None), (4, 2, 16, 12, False, "key"), (4, 2, 16, 12, False, "value"),
    (4, 2, 16, 12, False, "query"), (4, 2, 16, 12, True, "query")])
def test_rope_step_matches_the_composed_operations(heads, kv, d, n, normed, special):
    """The rotated key and the value written to the query's own slot (nothing else written), and the context:
    the scheme's array code (attention.causal_arrays) on the rotated query and the keys and values gathered from
    the slots, with fused.rms_norm's per-head norm first (qwen3); rows of mixed magnitudes, and inf / NaN in a
    cached key or value (that group's rows NaN) or a query head."""
    spread = np.exp(RNG.uniform(-4, 4, (heads + 2 * kv, 1)))
    qkv = (RNG.standard_normal((heads + 2 * kv, d)) * spread).astype(np.float32).reshape(-1)
    cos, sin = np.cos(RNG.uniform(0, 6, d)).astype(np.float32), np.sin(RNG.uniform(0, 6, d)).astype(np.float32)
    norm = (1 + 0.3 * RNG.standard_normal((heads + kv, d))).astype(np.float32) if normed else None
    size = max(64, 2 * n)
    slots = RNG.permutation(size)[:n].astype(np.int64)
    cache_k = (RNG.standard_normal((size, kv, d)) * np.exp(RNG.uniform(-3, 3, (size, kv, 1)))).astype(np.float32)
    cache_v = (RNG.standard_normal((size, kv, d)) * np.exp(RNG.uniform(-3, 3, (size, kv, 1)))).astype(np.float32)
    if special == "key" and n > 1:
        cache_k[slots[0], 0, 3] = np.inf
    elif special == "value" and n > 1:
        cache_v[slots[1], kv - 1, 0] = np.nan
    elif special == "query":
        qkv[d + 2] = np.nan
    before_k, before_v = cache_k.copy(), cache_v.copy()
    with loom.deterministic(True):
        ctx = attend_integer.rope_step(qkv, heads, kv, cos, sin, norm, 1e-5, cache_k, cache_v, slots, 0.3,
                                       *integer_attention.SCHEME)
        qk = qkv[:(heads + kv) * d].reshape(1, 1, heads + kv, d)
        if normed:
            qk = loom.kernels.fused.rms_norm(qk, norm, 1e-5)[0]
        qk = _rotate(qk, cos[None, None], sin[None, None], np)[0, 0]
    if special == "query" and normed:           # (a NaN in a head the norm takes: the composed path's row)
        assert ctx is None
        return
    own = slots[-1]
    before_k[own], before_v[own] = qk[heads:], qkv[(heads + kv) * d:].reshape(kv, d)
    np.testing.assert_array_equal(_bits(cache_k), _bits(before_k))
    np.testing.assert_array_equal(_bits(cache_v), _bits(before_v))
    want = integer_attention.causal_arrays(np, np.ascontiguousarray(qk[:heads]).reshape(kv, heads // kv, d),
                                           np.ascontiguousarray(cache_k[slots].transpose(1, 0, 2)),
                                           np.ascontiguousarray(cache_v[slots].transpose(1, 0, 2)), heads // kv,
                                           n - 1, 0, None, 0.3)
    np.testing.assert_array_equal(_bits(ctx), _bits(want.reshape(-1)))
    if special == "query":                      # (query head 1 only)
        assert np.isnan(ctx[d:2 * d]).all() and not np.isnan(np.delete(ctx, np.arange(d, 2 * d))).any()
    if special in ("key", "value"):
        group = (0 if special == "key" else kv - 1) * (heads // kv) * d
        assert np.isnan(ctx[group:group + heads // kv * d]).all() and not np.isnan(np.delete(
            ctx, np.arange(group, group + heads // kv * d))).any()


def test_rope_step_refuses_bad_slots():
    heads, kv, d = 4, 2, 8
    cache = np.zeros((8, kv, d), np.float32)
    qkv = RNG.standard_normal((heads + 2 * kv) * d).astype(np.float32)
    with pytest.raises(ValueError, match="slots"):
        attend_integer.rope_step(qkv, heads, kv, np.ones(d, np.float32), np.zeros(d, np.float32), None, 1e-5,
                                 cache, cache.copy(), np.zeros(0, np.int64), 0.5, *integer_attention.SCHEME)


def test_rope_scores_declines_what_is_not_finite_and_refuses_bad_slots():
    heads, kv, d = 4, 2, 8
    cos, sin = np.ones(d, np.float32), np.zeros(d, np.float32)
    cache_k, cache_v = np.zeros((8, kv, d), np.float32), np.zeros((8, kv, d), np.float32)
    slots = np.array([3, 5], np.int64)
    values = np.empty((kv, 2, d), np.float32)
    factor = exact_rounded.error_factor(d)
    qkv = RNG.standard_normal((heads + 2 * kv) * d).astype(np.float32)
    qkv[3] = np.inf                                             # a query head holds inf: its scores are not finite
    assert decode_exact.rope_scores(qkv, heads, kv, cos, sin, None, 1e-5, cache_k, cache_v, slots, 0.5, factor,
                                    values) is None
    qkv[3] = 3e38                                               # finite, but its square overflows the per-head norm
    norm = np.ones((heads + kv, d), np.float32)
    assert decode_exact.rope_scores(qkv, heads, kv, cos, sin, norm, 1e-5, cache_k, cache_v, slots, 0.5, factor,
                                    values) is None
    with pytest.raises(ValueError, match="slots"):
        decode_exact.rope_scores(qkv, heads, kv, cos, sin, None, 1e-5, cache_k, cache_v, np.zeros(0, np.int64), 0.5,
                                 factor, values)
    with pytest.raises(ValueError, match="values buffer"):
        decode_exact.rope_scores(qkv, heads, kv, cos, sin, None, 1e-5, cache_k, cache_v, slots, 0.5, factor,
                                 np.empty((kv, 3, d), np.float32))


def test_a_batched_step_gives_each_sequence_its_bits_alone():
    """Deterministic mode on the CPU: sequences of other lengths decoded together through the batch
    engine (every step's rows through layer_tokens_exact at once) get the tokens and log-probability
    bits each gets alone."""
    from loom.llm.batching import BatchEngine, Request
    from loom.spec import tiny_decoder
    model = tiny_decoder("qwen3")
    prompts = [[5, 9, 2, 7], [3, 1], [8, 8, 4, 1, 6, 2, 9]]
    with loom.deterministic(True):
        alone = [BatchEngine(model).generate([Request(p, max_tokens=10, stop_ids=(), logprobs=0)])[0]
                 for p in prompts]
        together = BatchEngine(model).generate([Request(p, max_tokens=10, stop_ids=(), logprobs=0)
                                                for p in prompts])
    for a, b in zip(alone, together):
        assert a.tokens == b.tokens
        assert a.logprobs == b.logprobs and len(a.logprobs) == 10


def test_the_steps_norms_give_the_composed_bits_and_fall_back_past_float32(decoder):
    """The step's RMSNorms call exact_jit's loop directly (Decoder._exact_rms): fused.rms_norm's bits on
    ordinary rows, and on a row whose squares overflow float32 (the loop declines it: the array code)
    and with a weight that is not float32."""
    from loom.kernels import fused
    c, L = decoder.config, decoder.layers[0]
    h2 = RNG.standard_normal((3, c.hidden)).astype(np.float32)
    h2[1, :4] = 3e19                                            # its squares are inf in float32
    with loom.deterministic(True):
        rms = decoder.token_layer(h2).args[2]
        with np.errstate(all="ignore"):
            want = fused.rms_norm(h2, L.ln1, c.eps)[0]
            got = decoder._exact_rms(rms, h2, L.ln1)
            wide = decoder._exact_rms(rms, h2, L.ln1.astype(np.float64))
            want_wide = fused.rms_norm(h2, L.ln1.astype(np.float64), c.eps)[0]
    assert np.array_equal(_bits(got), _bits(want)) and np.isfinite(got[[0, 2]]).all()
    assert not rms(h2[1:2].copy(), L.ln1, np.empty((1, c.hidden), np.float32))   # (that row: the array code)
    assert np.array_equal(_bits(wide), _bits(want_wide))

"""Fast mode's compiled decode-step and prompt operations on the CPU (loom/backend/cpu/decode_jit.py,
Decoder.layer_tokens_paged and the compiled calls in attend() and finish_layer()): each operation
against a NumPy reference on fresh random inputs, and whole prompts (in two chunks) and decode steps
over a paged cache against the composed path (the same model, token_ops switched off) for llama, a
sliding window, qwen2's biases and qwen3's per-head norms."""
import os
import sys

import numpy as np
import pytest

import loom
import loom.llm
from loom.backend.cpu import decode_jit
from loom.llm import paged_forward
from loom.llm.decoder import Decoder
from loom.llm.model import CausalLM

sys.path.insert(0, os.path.dirname(__file__))
import tiny_decoders as td  # noqa: E402

pytestmark = pytest.mark.skipif(not decode_jit.available(), reason="numba is not installed")
RNG = np.random.default_rng(20261124)


def _rope(x, cos, sin):
    half = x.shape[-1] // 2
    return x * cos + np.concatenate([-x[..., half:], x[..., :half]], axis=-1) * sin


def _rms(x, w, eps):
    x = x.astype(np.float64)
    return x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps) * w


def test_rms_rows_and_swiglu_rows_match_numpy():
    x = (RNG.standard_normal((3, 70)) * np.exp(RNG.uniform(-3, 3, (3, 1)))).astype(np.float32)
    w = RNG.standard_normal(70).astype(np.float32)
    out = np.empty_like(x)
    decode_jit.rms_rows(x, w, 1e-5, out)
    np.testing.assert_allclose(out, _rms(x, w, 1e-5), rtol=2e-5, atol=1e-6)
    gu = (RNG.standard_normal((2, 2 * 33)) * 4).astype(np.float32)
    act = np.empty((2, 33), np.float32)
    decode_jit.swiglu_rows(gu, act)
    g, u = gu[:, :33].astype(np.float64), gu[:, 33:]
    np.testing.assert_allclose(act, g / (1 + np.exp(-g)) * u, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("heads, kv, d, pos, lo, normed", [(4, 2, 16, 0, 0, False), (4, 2, 16, 9, 0, True),
                                                          (6, 1, 32, 20, 15, False), (3, 3, 8, 5, 2, True)])
def test_attend_token_paged_matches_numpy(heads, kv, d, pos, lo, normed):
    """Keys at scattered slots of a paged pool: the rotated (and normed) key and the value written to the
    query's slot, nothing else written, and the context the softmax over positions lo..pos gives."""
    qkv = RNG.standard_normal((heads + 2 * kv) * d).astype(np.float32)
    cos, sin = np.cos(RNG.uniform(0, 6, d)).astype(np.float32), np.sin(RNG.uniform(0, 6, d)).astype(np.float32)
    norm = (1 + 0.3 * RNG.standard_normal((heads + kv, d))).astype(np.float32) if normed else None
    slot_of = RNG.permutation(48)[:pos + 4]                       # position -> slot in a pool of 48
    cache_k = RNG.standard_normal((48, kv, d)).astype(np.float32)
    cache_v = RNG.standard_normal((48, kv, d)).astype(np.float32)
    keys, values = cache_k.copy(), cache_v.copy()
    out = np.full(heads * d, np.nan, np.float32)
    decode_jit.attend_token_paged(qkv, heads, kv, cos, sin, norm, 1e-5, cache_k, cache_v,
                                  slot_of[lo:pos + 1].astype(np.int64), 0.3, out)
    qk = qkv[:(heads + kv) * d].reshape(heads + kv, d).astype(np.float64)
    if normed:
        qk = _rms(qk, norm, 1e-5)
    qk = _rope(qk, cos, sin)
    own = slot_of[pos]
    keys[own], values[own] = qk[heads:], qkv[(heads + kv) * d:].reshape(kv, d)
    np.testing.assert_allclose(cache_k[own], keys[own], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(cache_v, values)
    np.testing.assert_array_equal(np.delete(cache_k, own, axis=0), np.delete(keys, own, axis=0))
    seen = slot_of[lo:pos + 1]
    want = []
    for h in range(heads):
        j = h // (heads // kv)
        s = keys[seen, j] @ qk[h] * 0.3
        p = np.exp(s - s.max())
        want.append(p / p.sum() @ values[seen, j])
    np.testing.assert_allclose(out, np.concatenate(want), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="non-empty 1-D slot list"):
        decode_jit.attend_token_paged(qkv, heads, kv, cos, sin, norm, 1e-5, cache_k, cache_v,
                                      np.zeros(0, np.int64), 0.3, out)


@pytest.mark.parametrize("t, pos, lo, window", [(1, 0, 0, None), (7, 0, 0, None), (5, 9, 0, None),
                                                (6, 4, 0, 3), (4, 10, 6, 5), (3, 12, 12, 1)])
def test_causal_softmax_matches_the_masked_softmax(t, pos, lo, window):
    n = pos + t - lo
    scores = (RNG.standard_normal((3, t, n)) * 5).astype(np.float32)
    scores[0, -1, -1] = -np.inf     # a seen -inf key: weight 0 (NaN where it is the only key, as ops.softmax)
    got = scores.copy()
    decode_jit.causal_softmax(got, 0.7, pos, lo, window)
    qpos, kpos = np.arange(pos, pos + t)[:, None], np.arange(lo, pos + t)[None, :]
    seen = (kpos <= qpos) & (kpos > qpos - (n if window is None else window))
    s = np.where(seen, scores.astype(np.float64) * 0.7, -np.inf)
    with np.errstate(invalid="ignore"):
        e = np.exp(s - s.max(axis=-1, keepdims=True))
        want = np.where(seen, e / e.sum(axis=-1, keepdims=True), 0)
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-7)
    assert np.all(got[:, ~seen] == 0)
    with pytest.raises(ValueError, match="see no key"):
        decode_jit.causal_softmax(got, 0.7, pos, pos + 1, window)
    with pytest.raises(ValueError, match="window 0"):
        decode_jit.causal_softmax(got, 0.7, pos, lo, 0)


VARIANTS = {"llama": dict(kind="llama"), "mistral-window": dict(kind="mistral", sliding_window=6),
            "qwen2-bias": dict(kind="qwen2", tied=True), "qwen3": dict(kind="qwen3", head_dim=32)}


@pytest.mark.parametrize("name", VARIANTS)
def test_token_steps_match_the_composed_path(name, tmp_path, monkeypatch):
    opts = dict(VARIANTS[name])
    model = td.build(opts.pop("kind"), seed=4, **opts)
    dec = loom.llm.load(td.save(model, tmp_path)).decoder
    ids = np.random.default_rng(2).integers(0, td.VOCAB, 20)
    taken = []
    real = Decoder.layer_tokens_paged
    monkeypatch.setattr(Decoder, "layer_tokens_paged", lambda self, *a: taken.append(1) or real(self, *a))

    def steps():        # a prompt in two chunks, then one token a step
        return paged_forward.sequence_logits(dec, ids, [5, 3] + [1] * 12)
    with loom.deterministic(False):
        compiled = steps()
        assert len(taken) == 12 * len(dec.layers)
        monkeypatch.setattr(Decoder, "token_ops", lambda self, h: None)
        composed = steps()
    assert td.relative_error(compiled, composed) < 1e-5
    with loom.deterministic(True):
        taken.clear()
        steps()
        assert not taken                     # deterministic mode keeps the composed path's bits


@pytest.fixture(scope="module")
def float_decoder(tmp_path_factory):
    """A float32-weight llama: its products go to BLAS, so attend_token_paged is the only parallel kernel a step
    runs."""
    return loom.llm.load(td.save(td.build("llama", seed=6), tmp_path_factory.mktemp("llama"))).decoder


def _greedy(dec, steps=4):
    """Greedy tokens through the engine (a fresh model each call: its own engine, as a forked child's)."""
    with loom.deterministic(False):
        return list(CausalLM(dec, None, {}).generate_ids([5, 7, 9], max_tokens=steps, stop_ids=()))


_FORK_DEC = None


def _child_greedy(_):
    return _greedy(_FORK_DEC)


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
def test_a_forked_child_decodes_after_its_parent_did(float_decoder):
    """The parallel attention kernel goes through jit.run like the products: its threading layer is noted,
    so a forked child (GNU OpenMP is not fork-safe) takes the composed path instead of dying."""
    import multiprocessing
    global _FORK_DEC
    _FORK_DEC = float_decoder
    want = _greedy(float_decoder)                       # the parent has run the compiled step
    with multiprocessing.get_context("fork").Pool(1) as pool:
        assert pool.apply_async(_child_greedy, (0,)).get(timeout=60) == want


def test_threads_decode_at_once(float_decoder):
    import threading
    want = _greedy(float_decoder)
    results = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, _greedy(float_decoder))) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[i] for i in range(3)] == [want] * 3


def test_the_batch_engine_decodes_with_the_compiled_token_steps_on_the_cpu(monkeypatch):
    """Fast mode on the CPU: the engine's decode steps run decode_jit.attend_token_paged, and a sequence
    batched with another gets the tokens it gets alone through generate_ids."""
    from loom.llm.batching import BatchEngine, Request
    from loom.spec import tiny_decoder
    if not decode_jit.available():
        pytest.skip("numba is not installed: the compiled token steps do not run")
    model = tiny_decoder("qwen3")
    calls = []
    real = decode_jit.attend_token_paged

    def counting(*args):
        calls.append(1)
        return real(*args)
    with loom.deterministic(False):
        want = list(model.generate_ids([5, 9, 2, 7], max_tokens=12, stop_ids=()))
        monkeypatch.setattr(decode_jit, "attend_token_paged", counting)
        got = BatchEngine(model).generate([Request([5, 9, 2, 7], max_tokens=12, stop_ids=()),
                                           Request([3, 1], max_tokens=12, stop_ids=())])[0].tokens
    assert len(calls) == 2 * 11 * model.decoder.config.layers       # a row a layer in each of 11 decode steps
    assert got == want

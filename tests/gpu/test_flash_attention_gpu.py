"""backend/cuda/flash.py against attention in float64 on fresh random inputs: causal masks, chunked
prompts after cached keys, sliding windows, grouped heads, head sizes 64 and 128, strided queries, and
its paged form (many sequences' keys in scattered slots); and the decoder's fast-mode prompts through
them (the fused prompt layers' paged flash launch, and the composed layers' flash.attend) against its
float32 composition."""
import ml_dtypes
import numpy as np
import pytest

import loom
from loom.llm.decoder import Decoder
from loom.llm.decoder_config import DecoderConfig
from loom.llm.paged_forward import sequence_logits

from .paged_steps import CONFIG, quant_weights

cupy = pytest.importorskip("cupy")
from loom.backend.cuda import flash  # noqa: E402  (needs cupy)

pytestmark = pytest.mark.gpu


def _bf16(x):
    return x.astype(ml_dtypes.bfloat16).astype(np.float64)


def _reference(q, k, v, pos, lo, window, scale, rounded=True):
    """float64 attention of q [B, T, H, D] over k, v [B, KV, n, D] (inputs rounded to bfloat16 first
    when `rounded`): [B, T, H * D]."""
    cast = _bf16 if rounded else (lambda a: a.astype(np.float64))
    q, k, v = cast(q), cast(k), cast(v)
    B, T, H, D = q.shape
    KV, n = k.shape[1], k.shape[2]
    kk = np.repeat(k, H // KV, axis=1)                         # [B, H, n, D]
    vv = np.repeat(v, H // KV, axis=1)
    s = np.einsum("bthd,bhnd->bhtn", q, kk) * scale
    qpos = pos + np.arange(T)[:, None]
    kpos = lo + np.arange(n)[None, :]
    ok = kpos <= qpos
    if window:
        ok &= kpos > qpos - window
    s = np.where(ok, s, -np.inf)
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    return np.einsum("bhtn,bhnd->bthd", p, vv).reshape(B, T, H * D)


@pytest.mark.parametrize("B,T,H,KV,D,pos,lo,window", [
    (1, 17, 3, 3, 64, 0, 0, None),         # fewer queries than a block
    pytest.param(1, 200, 9, 3, 64, 0, 0, None, marks=pytest.mark.smoke),     # grouped heads, a partial last block
    (2, 130, 4, 1, 128, 0, 0, None),       # head size 128, batch 2
    (1, 100, 2, 2, 64, 300, 0, None),      # a chunk after 300 cached positions
    (1, 150, 4, 2, 64, 90, 0, 64),         # a sliding window over cached keys
    (1, 96, 2, 1, 32, 200, 150, 100),      # keys from a window's first position on
    (1, 64, 2, 2, 16, 0, 0, None),
    (1, 70, 2, 1, 80, 10, 0, None),        # a head size not a power of two
])
def test_flash_attention_matches_float64(B, T, H, KV, D, pos, lo, window):
    rng = np.random.default_rng(T + pos)
    n = pos + T - lo
    qkv = rng.standard_normal((B, T, H + 2 * KV, D)).astype(np.float32) * 2
    q = qkv[:, :, :H]                                          # strided, as the decoder's view is
    cache = rng.standard_normal((2, B, KV, n + 7, D)).astype(np.float32)
    k, v = cache[0, :, :, :n], cache[1, :, :, :n]
    scale = 1 / np.sqrt(D)
    dq = cupy.asarray(qkv)[:, :, :H]
    dc = cupy.asarray(cache)
    got = cupy.asnumpy(flash.attend(dq, dc[0, :, :, :n], dc[1, :, :, :n], pos, lo, window, scale))
    want = _reference(q, k, v, pos, lo, window, scale)
    exact = _reference(q, k, v, pos, lo, window, scale, rounded=False)
    top = np.abs(v).max()
    assert np.abs(got - want).max() < 4e-3 * top              # the probabilities' bfloat16 rounding only
    assert np.abs(got - exact).max() < 3e-2 * top
    assert np.isfinite(got).all()
    again = cupy.asnumpy(flash.attend(dq, dc[0, :, :, :n], dc[1, :, :, :n], pos, lo, window, scale))
    assert again.tobytes() == got.tobytes()                   # no atomics: the same bits every time


@pytest.mark.parametrize("window", [None, 20])
def test_paged_flash_attention_matches_float64_per_item(window):
    """Many sequences of other lengths, positions and first keys in one launch, their keys in
    scattered slots of a paged cache."""
    rng = np.random.default_rng(11)
    H, KV, D, slots = 6, 2, 64, 900
    cache = rng.standard_normal((2, slots, KV, D)).astype(np.float32)
    # (queries T, first query position pos, first key lo): a fresh prompt, a chunk after cached keys,
    # one decode-like row, a long one, and a window's late chunk
    shapes = [(40, 0, 0), (17, 30, 0), (1, 80, 0), (130, 0, 0), (33, 100, 60)]
    items, rows, key_slots, want = [], 0, np.zeros((len(shapes), 240), dtype=np.int64), []
    perm = rng.permutation(slots)
    used = 0
    q = rng.standard_normal((sum(t for t, _, _ in shapes), H, D)).astype(np.float32)
    for s, (T, pos, lo) in enumerate(shapes):
        n = pos + T - lo
        key_slots[s, :n] = perm[used:used + n]
        used += n
        items.append((rows, T, pos, lo, n))
        k = cache[0][key_slots[s, :n]].transpose(1, 0, 2)[None]
        v = cache[1][key_slots[s, :n]].transpose(1, 0, 2)[None]
        want.append(_reference(q[None, rows:rows + T], k, v, pos, lo, window, 0.125)[0])
        rows += T
    dc = cupy.asarray(cache)
    got = cupy.asnumpy(flash.attend_paged(cupy.asarray(q), dc[0], dc[1], cupy.asarray(key_slots), items, window,
                                          0.125))
    want = np.concatenate(want)
    assert np.abs(got - want).max() < 4e-3 * np.abs(cache[1]).max()


def test_flash_attention_is_causal():
    """Changing a later key changes no earlier query's output."""
    rng = np.random.default_rng(1)
    q = cupy.asarray(rng.standard_normal((1, 128, 2, 64)).astype(np.float32))
    k = rng.standard_normal((1, 2, 128, 64)).astype(np.float32)
    v = rng.standard_normal((1, 2, 128, 64)).astype(np.float32)
    a = cupy.asnumpy(flash.attend(q, cupy.asarray(k), cupy.asarray(v), 0, 0, None, 0.125))
    k[:, :, 100:] += 5
    v[:, :, 100:] -= 3
    b = cupy.asnumpy(flash.attend(q, cupy.asarray(k), cupy.asarray(v), 0, 0, None, 0.125))
    assert a[:, :100].tobytes() == b[:, :100].tobytes()
    assert not np.array_equal(a[:, 100:], b[:, 100:])


def test_flash_attention_refuses_what_it_cannot_take():
    q = cupy.zeros((1, 20, 2, 24), dtype=np.float32)
    k = cupy.zeros((1, 2, 20, 24), dtype=np.float32)
    with pytest.raises(ValueError, match="unsupported"):
        flash.attend(q, k, k, 0, 0, None, 0.2)
    assert not flash.supports(24) and flash.supports(64) and flash.supports(128)
    assert not flash.supports(192) and not flash.supports(256)     # beyond its shared memory: composed


def _counting(monkeypatch, names):
    """Calls of flash's functions `names`, counted (they still run)."""
    calls = {name: 0 for name in names}
    for name in names:
        real = getattr(flash, name)

        def counted(*a, _real=real, _name=name, **k):
            calls[_name] += 1
            return _real(*a, **k)
        monkeypatch.setattr(flash, name, counted)
    return calls


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("kind", ["llama", "mistral", "qwen2", "qwen3"])
def test_decoder_prompts_use_it_and_stay_close_to_float32(kind, fused, monkeypatch):
    """The prompt layers on the tensor cores for every architecture: a sliding window (mistral), q|k|v
    biases (qwen2), per-head norms (qwen3); two chunks, the second attending to the first through the
    paged cache. fused: the fused prompt layers (backend/cuda/prefill.py), attention by one paged
    flash launch a layer; else the composed layers (no bfloat16 weights for the fused ones), attention
    by flash.attend over each chunk's gathered keys."""
    cfg = {**CONFIG, "max_position_embeddings": 512, "model_type": kind}
    if kind == "mistral":
        cfg |= {"sliding_window": 48}
    config = DecoderConfig.from_hf(cfg)
    weights = quant_weights("BF16", cfg)
    prompt = np.random.default_rng(3).integers(0, cfg["vocab_size"], 150)
    with loom.deterministic(False):
        fast, plain = Decoder(config, weights, "cuda"), Decoder(config, weights, "cuda", tensor_cores=False)
        if not fused:
            monkeypatch.setattr(fast, "bf16_weights", lambda layer: None)
        calls = _counting(monkeypatch, ["attend", "attend_paged"])
        got = cupy.asnumpy(sequence_logits(fast, prompt, [100, 50]))      # a second chunk after the cache
        assert calls == ({"attend": 0, "attend_paged": 2 * config.layers} if fused else
                         {"attend": 2 * config.layers, "attend_paged": 0})
        want = cupy.asnumpy(sequence_logits(plain, prompt, [100, 50]))
        assert calls["attend"] + calls["attend_paged"] == 2 * config.layers    # none in float32
    for g, w in ((got[:100], want[:100]), (got[100:], want[100:])):
        assert np.abs(g - w).max() / np.abs(w).max() < 2e-2


def test_float32_weights_keep_float32_attention(monkeypatch):
    """A decoder with float32 weights keeps float32 products, and so float32 attention, in fast mode."""
    cfg = {**CONFIG, "max_position_embeddings": 512}
    config = DecoderConfig.from_hf(cfg)
    weights = quant_weights("F32", cfg)
    with loom.deterministic(False):
        dec = Decoder(config, weights, "cuda")
        calls = _counting(monkeypatch, ["attend", "attend_paged"])
        sequence_logits(dec, np.arange(100) % cfg["vocab_size"])
    assert calls == {"attend": 0, "attend_paged": 0}

"""Deterministic prompt attention (loom/backend/cuda/flash_exact.py): the context of an
item's query rows over its cached keys has the bits of the composition it replaces (Decoder.attend in
deterministic mode, here on the CPU), for head sizes 64 and 128 with grouped heads, chunks of 2 to 512
rows at positions that leave the keys aligned to the kernel's tiles of 64 or not, n = 2048 keys (the
rounded scheme's last), sliding windows, keys in scattered cache slots, and hostile values: a peaked
softmax, contexts that cancel (settled by the finishing warps), inf and NaN in q, k and v (one at a
key most rows do not keep: its column still makes their entries NaN, 0 inf)."""
import types

import numpy as np
import pytest

import loom
from loom.kernels.exact import dispatch as exact_dispatch
from loom.kernels.exact.rounded import error_factor
from loom.llm.decoder import Decoder
from loom.llm.decoder_config import DecoderConfig

from .cpu_gpu import same_bits
from .paged_steps import CONFIG, quant_weights

cupy = pytest.importorskip("cupy")
from loom.backend.cuda import flash_exact  # noqa: E402  (imports cupy)

pytestmark = pytest.mark.gpu

HEADS = {64: (9, 3), 128: (8, 2)}          # head size: (heads, key-value heads)


def _cpu_decoder(head_dim):
    heads, kv = HEADS[head_dim]
    config = {**CONFIG, "hidden_size": heads * head_dim, "num_attention_heads": heads, "num_key_value_heads": kv,
              "head_dim": head_dim, "num_hidden_layers": 1, "vocab_size": 64, "max_position_embeddings": 4096}
    return Decoder(DecoderConfig.from_hf(config), quant_weights("F32", config, np.random.default_rng(0)), device="cpu")


DECODERS = {d: _cpu_decoder(d) for d in HEADS}


def _case(head_dim, T, pos, window, rng, hostile=None):
    """(q [T, H, D], cache k, v [slots, KV, D], key slots [n], lo) with random values."""
    heads, kv = HEADS[head_dim]
    lo = 0 if window is None else max(0, pos - window + 1)
    n = pos + T - lo
    slots = rng.permutation(n + 300)[:n]
    q = rng.standard_normal((T, heads, head_dim)).astype(np.float32)
    k = rng.standard_normal((n + 300, kv, head_dim)).astype(np.float32)
    v = rng.standard_normal((n + 300, kv, head_dim)).astype(np.float32)
    if hostile == "peaked":                 # most e underflow; the peak's row near one-hot
        q *= 30.0
    elif hostile == "cancel":               # q = 0 on head 0: p uniform; v's column 0 cancels to ~0
        q[:, 0] = 0.0
        v[slots, 0, 0] = np.where(np.arange(n) % 2 == 0, 1e6, -1e6) + rng.standard_normal(n).astype(np.float32)
    elif hostile == "special":              # an inf key, a NaN query, an inf value
        k[slots[min(3, n - 1)], 0, 5] = np.inf
        q[T // 2, -1, 7] = np.nan
        v[slots[n // 2], -1, 0] = -np.inf
    elif hostile == "late inf":             # an inf value at a key most rows do not keep: 0 inf = NaN
        v[slots[n - 1], 0, 1] = np.inf
    elif hostile == "zero scores":          # q . k exactly 0 on head 0 with norms that are not: every score there
        half = head_dim // 2                # left open by the certification and settled by its warp
        q[:, 0, half:] = -q[:, 0, :half]
        k[:, 0, half:] = k[:, 0, :half]
    return q, k, v, slots, lo


def _reference(head_dim, q, k, v, slots, pos, lo, window):
    dec = DECODERS[head_dim]
    ks = np.ascontiguousarray(k[slots].transpose(1, 0, 2))[None]
    vs = np.ascontiguousarray(v[slots].transpose(1, 0, 2))[None]
    with loom.deterministic(True), np.errstate(all="ignore"):
        return dec.attend(types.SimpleNamespace(window=window), q[None], ks, vs, pos, lo)[0]


def _gpu(head_dim, q, k, v, slots, pos, lo, window):
    scale = DECODERS[head_dim].scale
    return flash_exact.attend(cupy.asarray(q), cupy.asarray(k), cupy.asarray(v), cupy.asarray(slots.astype(np.int64)),
                              pos, lo, window, scale, error_factor)


CASES = [  # (T, pos, window): keys n = pos + T - lo
    (2, 0, None), (5, 3, None), (64, 0, None), (100, 27, None), (17, 63, None), (512, 512, None),
    (300, 1700, None), (37, 2011, None), (70, 90, 50), (130, 400, 128),
]


@pytest.mark.parametrize("head_dim", [pytest.param(64, marks=pytest.mark.smoke), 128])
@pytest.mark.parametrize("T, pos, window", CASES)
def test_context_has_the_composed_attentions_bits(head_dim, T, pos, window):
    rng = np.random.default_rng(T * 7919 + pos + head_dim)
    q, k, v, slots, lo = _case(head_dim, T, pos, window, rng)
    assert flash_exact.unsupported(head_dim, len(slots)) is None
    same_bits(_gpu(head_dim, q, k, v, slots, pos, lo, window), _reference(head_dim, q, k, v, slots, pos, lo, window),
              f"D {head_dim}, T {T} at {pos}, window {window}")


@pytest.mark.parametrize("hostile", ["peaked", "cancel", "special", "late inf", "zero scores"])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_hostile_values_keep_the_bits(head_dim, hostile):
    # (300 rows: the first 256 rows' keys lie in the first part of the context sums; the last case's rows keep up
    # to 600 keys from a first key past 0, which the finishing warps' settling walk starts from)
    for T, pos, window in [(40, 0, None), (100, 200, None), (33, 60, 40), (300, 0, None), (300, 1700, 600)]:
        rng = np.random.default_rng(T + pos)
        q, k, v, slots, lo = _case(head_dim, T, pos, window, rng, hostile)
        got = _gpu(head_dim, q, k, v, slots, pos, lo, window)
        want = _reference(head_dim, q, k, v, slots, pos, lo, window)
        if hostile in ("special", "late inf"):
            assert not np.isfinite(want).all()
        same_bits(got, want, f"{hostile}, D {head_dim}, T {T} at {pos}, window {window}")


def test_unsupported_shapes_are_named():
    assert "head size 96" in flash_exact.unsupported(96, 100)
    assert "2049 keys" in flash_exact.unsupported(64, 2049)
    assert flash_exact.unsupported(128, 2048) is None
    assert flash_exact.MAX_KEYS == exact_dispatch.ROUNDED_MAX_K


def test_recorded_in_a_graph_and_replayed_with_other_inputs():
    """Capturable: sizes and pointers only; a replay over new q and cache values gives their bits."""
    rng = np.random.default_rng(5)
    q, k, v, slots, lo = _case(64, 96, 40, None, rng)
    qd, kd, vd, sd = cupy.asarray(q), cupy.asarray(k), cupy.asarray(v), cupy.asarray(slots.astype(np.int64))
    out = cupy.empty((96, 9 * 64), dtype=np.float32)
    flash_exact.attend(qd, kd, vd, sd, 40, lo, None, DECODERS[64].scale, error_factor, out=out)    # compiled outside
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        flash_exact.attend(qd, kd, vd, sd, 40, lo, None, DECODERS[64].scale, error_factor, out=out)
        graph = stream.end_capture()
    q2, k2, v2, _, _ = _case(64, 96, 40, None, np.random.default_rng(6))
    v2[slots, 0, 0] = np.where(np.arange(len(slots)) % 2 == 0, 1e6, -1e6)      # rows for the fix-up too
    with stream:            # the new inputs written on the replay's stream, ahead of it (a non-blocking stream does
        qd[...], kd[...], vd[...] = cupy.asarray(q2), cupy.asarray(k2), cupy.asarray(v2)  # not wait for the null one)
    graph.launch(stream)
    stream.synchronize()
    same_bits(out, _reference(64, q2, k2, v2, slots, 40, lo, None), "a replay with new inputs")

"""One forward pass of many sequences through a paged KV cache: the rows of every sequence's new
tokens (a prefill chunk or one decode token) go through the projections and the MLP together, as one
[rows, E] matrix; attention takes each sequence over its own cached keys (several sequences in one launch
where the backend's kernel takes them: fast mode's paged flash kernel, deterministic mode's integer attention).

A row's bits do not depend on its batch-mates in deterministic mode: every product is row-invariant
(the dispatch table picks a scheme from K alone) and each sequence's attention runs alone over
exactly its own keys (decoder.attend). Prefill chunks end where the single-sequence path ends them
(at multiples of decoder.prefill_chunk(), or at the prompt's end), which under spec 4's attention kept its
products' K the same as alone too (spec 5's attention gives the same bits in any chunks). Fast mode runs the
attention of all sequences at once, their queries and keys padded to the longest and masked (in groups that
keep the scores under PADDED_ELEMENTS): the padding changes sums' order, so last bits may move. On the CPU a
step of decode tokens only runs each row's attention as compiled calls instead (Decoder.token_layer: in fast mode
decoder.layer_tokens_paged, backend/cpu/decode_jit.py; in deterministic mode layer_tokens_exact,
backend/cpu/decode_exact.py, with the composed operations' bits). Where the decoder has its fused prompt kernels
(fast mode on the tensor cores, every layer's weights in bfloat16), all rows go through them instead
and attention is one paged flash launch per layer over every item's keys.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..backend import Array
from ..backend.protocols import PrefillKernels
from ..kernels import ops
from ..kernels.exact import attention as integer_attention
from ..kernels.exact import rounded as exact_rounded
from ..mode import is_deterministic
from . import decoder as decoder_module
from .decoder import Decoder, heads_first, prefill_chunk
from .paged_cache import PagedKVCache


@dataclass
class Work:
    tokens: np.ndarray          # int64 [T]: the tokens at positions pos .. pos + T - 1
    pos: int
    table: list[int]            # the sequence's blocks (covering pos + T positions)
    logits: bool                # whether the last row's logits are wanted


def forward(dec: Decoder, cache: PagedKVCache, work: list[Work], every_row: bool = False,
            argmax_only: bool = False) -> Array | None:
    """Run every work item's tokens, writing their keys and values into the cache; returns the
    logits [S, vocab] of the last row of each item with logits=True, in order (None when there are
    none); every_row: of every row of those items, [rows, vocab]. argmax_only: every wanted row serves
    only its first argmax (Decoder.logits_of's)."""
    be = dec.backend
    sizes = [len(w.tokens) for w in work]
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    ids = np.concatenate([w.tokens for w in work]).astype(np.int64)
    positions = np.concatenate([np.arange(w.pos, w.pos + n, dtype=np.int64) for w, n in zip(work, sizes)])
    dec.ensure_rope(int(positions.max()) + 1)
    cos, sin = dec.rope_at(be.asarray(positions))
    slots = be.asarray(np.concatenate([cache.slots(w.table, w.pos, w.pos + n) for w, n in zip(work, sizes)]))
    h = dec.embed_ids(ids[None])                                       # [1, N, E]
    step = dec.token_layer(h) if max(sizes) == 1 else None
    if step is not None:                    # the CPU, decode tokens only: a compiled attention a row
        h2, by_window = np.ascontiguousarray(h[0]), {}
        for i, layer in enumerate(dec.layers):
            key_slots = by_window.get(layer.window)
            if key_slots is None:
                key_slots = by_window[layer.window] = [cache.slots(w.table, dec.first_key(layer, w.pos), w.pos + 1)
                                                       for w in work]
            step(layer, h2, cache.k[i], cache.v[i], positions.tolist(), key_slots)
        return _logits(dec, work, bounds, h2[None], every_row, argmax_only)
    fused = fused_weights(dec, len(ids), prompt=min(sizes) > 1)
    if fused is not None or is_deterministic() or len(work) == 1:
        plans = {window: (be.asarray(key_slots), items) for window, (key_slots, items)
                 in flash_plans(dec, cache, work).items()}
        if fused is not None:
            run_fused(dec, cache, *fused, h[0], be.asarray(positions), slots, plans)
        else:                               # each item's attention alone over exactly its keys
            h = run_alone(dec, cache, h, cos, sin, be.asarray(positions), slots, plans)
        return _logits(dec, work, bounds, h, every_row, argmax_only)
    plans = {}                  # by sliding window: the padded groups every layer of it shares
    for i, layer in enumerate(dec.layers):
        q, k, v = dec.qkv(layer, h, cos, sin)
        cache.k[i][slots] = k[0]
        cache.v[i][slots] = v[0]
        plan = plans.get(layer.window)
        if plan is None:
            plan = plans[layer.window] = _padded_plan(dec, cache, layer, work, sizes)
        ctx = _padded_attention(dec, cache, i, q[0], plan)[None]
        h = dec.finish_layer(layer, h, ctx)
    return _logits(dec, work, bounds, h, every_row, argmax_only)


def _logits(dec: Decoder, work: list[Work], bounds: np.ndarray, h: Array, every_row: bool,
            argmax_only: bool = False) -> Array | None:
    """The logits of the last row (every_row: of every row) of each item that wants them (h [1, N, E])."""
    rows = [r for w, lo, hi in zip(work, bounds[:-1], bounds[1:]) if w.logits
            for r in (range(int(lo), int(hi)) if every_row else [int(hi) - 1])]
    if not rows:
        return None
    return dec.logits_of(h[0, dec.backend.asarray(np.asarray(rows, dtype=np.int64))], argmax_only and not every_row)


def sequence_logits(dec: Decoder, ids: np.ndarray, pieces: list[int] | None = None) -> Array:
    """Logits [T, vocab] of every position of a fresh sequence of token ids [T] (checked), run through
    a paged cache of its own in steps of `pieces` tokens (default: chunks ending at multiples of
    prefill_chunk(), as the engine's prompt steps end them): CausalLM.logits, and loom.spec's decode
    check (a prompt, then one token a step)."""
    T = len(ids)
    if pieces is None:
        step = prefill_chunk(dec.device)
        pieces = [min(step, T - start) for start in range(0, T, step)]
    if sum(pieces) != T or min(pieces) < 1:
        raise ValueError(f"pieces {pieces} do not split {T} tokens")
    c, bs = dec.config, BLOCK
    cache = PagedKVCache(dec.xp, c.layers, c.kv_heads, c.head_dim, -(-T // bs), bs)
    table = list(range(cache.blocks))
    out, start = [], 0
    for n in pieces:
        out.append(forward(dec, cache, [Work(ids[start:start + n], start, table, logits=True)], every_row=True))
        start += n
    return out[0] if len(out) == 1 else dec.xp.concatenate(out, axis=0)


BLOCK = 16          # sequence_logits' cache blocks (any size gives the same bits)


def fused_weights(dec: Decoder, rows: int, prompt: bool = False) -> tuple | None:
    """(the decoder's fused prompt kernels, every layer's bfloat16 weights) where a step of `rows` rows
    (prompt: of prompt chunks only) runs every layer through them (fast mode on the tensor cores:
    Decoder.prefill_kernels and bf16_weights); else None."""
    kernels = None if is_deterministic() else dec.prefill_kernels(rows, prompt)
    if kernels is None:
        return None
    weights = [dec.bf16_weights(L) for L in dec.layers]
    return None if any(w is None for w in weights) else (kernels, weights)


def run_fused(dec: Decoder, cache: PagedKVCache, kernels: PrefillKernels, weights: list, h2: Array,
              positions: Array, slots: Array, plans: dict) -> None:
    """Every layer on h2 [N, E] in place through the fused prompt kernels (fused_weights), the rows of
    all items together: row r at position positions[r], its key and value written to slot slots[r];
    attention by one paged flash launch a layer over every item's keys (backend/cuda/flash.py),
    plans[window] = (device key slots [S, n_max], items) as flash_plans gives them. Device arrays
    only: a recorded prompt step (loom/llm/paged_prefill_graph.py) runs this body too."""
    c, be = dec.config, dec.backend
    for i, (layer, w16) in enumerate(zip(dec.layers, weights)):
        q = kernels.rope_rows(dec.qkv_fast(kernels, layer, w16, h2), layer.qkv_bias, layer.qk_norm, c.eps, dec._cos,
                              dec._sin, c.heads, c.kv_heads, cache.k[i], cache.v[i], positions, slots)
        key_slots, items = plans[layer.window]
        ctx = be.flash.attend_paged(q, cache.k[i], cache.v[i], key_slots, items, layer.window, dec.scale, out16=True)
        dec.finish_fast(kernels, layer, w16, h2, ctx)


def run_alone(dec: Decoder, cache: PagedKVCache, h: Array, cos: Array, sin: Array, positions: Array, slots: Array,
              plans: dict) -> Array:
    """Every layer on h [1, N, E], each item's attention alone over exactly its own keys (deterministic
    mode, and fast mode's lone items): row r at position positions[r] (cos, sin [N, 1, D] its RoPE rows),
    its key and value written to slot slots[r]; plans[window] = (key slots [S, n_max] on h's device, items)
    as flash_plans gives them. Returns the new h. Device arrays only: a recorded deterministic prompt step
    (loom/llm/paged_prefill_graph.py) runs this body too."""
    xp = dec.xp
    # (spec 4's prompt attention kernel; spec 5's integer attention reads q and the cache in place where it can)
    exact_flash = dec.backend.flash_exact if is_deterministic() and not decoder_module.INTEGER_ATTENTION else None
    integer = is_deterministic() and decoder_module.INTEGER_ATTENTION
    c = dec.config
    for i, layer in enumerate(dec.layers):
        q = dec.qkv_into_cache(layer, h, positions, slots, cache.k[i], cache.v[i])
        if q is None:
            q, k, v = dec.qkv(layer, h, cos, sin)
            cache.k[i][slots] = k[0]
            cache.v[i][slots] = v[0]
        key_slots, items = plans[layer.window]
        if integer:             # (q and the cache read in place by the backend's kernel where it takes them)
            ctx = xp.empty((q.shape[1], c.heads * c.head_dim), dtype=np.float32)
            integer_attention.causal_paged(q[0], cache.k[i], cache.v[i], key_slots, items, c.heads // c.kv_heads,
                                           layer.window, dec.scale, ctx)
            h = dec.finish_layer(layer, h, ctx[None])
            continue
        contexts = []
        for s, (row, n, pos, lo, count) in enumerate(items):
            keys = key_slots[s, :count]
            if exact_flash is not None and n > 1 and exact_flash.unsupported(dec.config.head_dim, count) is None:
                # deterministic prompt rows: one pass over the cached keys, the composition's bits
                contexts.append(exact_flash.attend(q[0, row:row + n], cache.k[i], cache.v[i], keys, pos, lo,
                                                   layer.window, dec.scale, exact_rounded.error_factor)[None])
                continue
            contexts.append(dec.attend(layer, q[:, row:row + n], heads_first(xp, cache.k[i], keys),
                                       heads_first(xp, cache.v[i], keys), pos, lo))
        ctx = contexts[0] if len(contexts) == 1 else xp.concatenate(contexts, axis=1)
        h = dec.finish_layer(layer, h, ctx)
    return h


def flash_plans(dec: Decoder, cache: PagedKVCache, work: list[Work]) -> dict:
    """By each sliding window of the decoder's layers: (key slots int64 [S, n_max] on the host, items
    ((first row, T, pos, lo, n), ...)) for the flash kernel; the items depend on the work's lengths
    and positions only, the slots on its block tables too."""
    plans = {}
    for window in dict.fromkeys(L.window for L in dec.layers):
        items, lists, row = [], [], 0
        for w in work:
            n = len(w.tokens)
            lo = 0 if window is None else max(0, w.pos - window + 1)
            items.append((row, n, w.pos, lo, w.pos + n - lo))
            lists.append(cache.slots(w.table, lo, w.pos + n))
            row += n
        key_slots = np.zeros((len(work), max(len(x) for x in lists)), dtype=np.int64)
        for s, x in enumerate(lists):
            key_slots[s, :len(x)] = x
        plans[window] = (key_slots, tuple(items))
    return plans


PADDED_ELEMENTS = 1 << 26           # float32 scores of one padded attention group (256 MB)


def _padded_plan(dec: Decoder, cache: PagedKVCache, layer, work: list[Work], sizes: list[int]) -> list:
    """Fast mode: the items in groups padded to a common query and key count (scores of a group
    under PADDED_ELEMENTS), each group's device index arrays, for layers of `layer`'s window."""
    be, H = dec.backend, dec.config.heads
    firsts = [dec.first_key(layer, w.pos) for w in work]
    counts = [w.pos + n - lo for w, n, lo in zip(work, sizes, firsts)]
    groups, start, row = [], 0, 0
    while start < len(work):                # a group: as many items as fit the budget
        stop, t_max, n_max = start, 0, 0
        while stop < len(work):
            t, n = max(t_max, sizes[stop]), max(n_max, counts[stop])
            if stop > start and (stop - start + 1) * H * t * n > PADDED_ELEMENTS:
                break
            t_max, n_max, stop = t, n, stop + 1
        S = stop - start
        key_slots = np.full((S, n_max), cache.scratch * cache.block_size, dtype=np.int64)
        rows = np.zeros((S, t_max), dtype=np.int64)
        allowed = np.zeros((S, t_max, n_max), dtype=bool)
        for s in range(S):
            w, n, lo, T = work[start + s], counts[start + s], firsts[start + s], sizes[start + s]
            key_slots[s, :n] = cache.slots(w.table, lo, lo + n)
            rows[s, :T] = row + np.arange(T)
            qpos = w.pos + np.arange(T)[:, None]
            kpos = lo + np.arange(n)[None, :]
            ok = kpos <= qpos
            if layer.window is not None:
                ok &= kpos > qpos - layer.window
            allowed[s, :T, :n] = ok
            row += T
        valid = (np.arange(t_max)[None, :] < np.asarray(sizes[start:stop])[:, None]).reshape(-1)
        groups.append((S, t_max, n_max, be.asarray(key_slots), be.asarray(rows), be.asarray(allowed)[:, None, None],
                       be.asarray(np.flatnonzero(valid))))
        start = stop
    return groups


def _padded_attention(dec: Decoder, cache: PagedKVCache, i: int, q, plan: list):
    """Fast mode: the context [N, H*D] of every item's queries q [N, H, D] (rows in item order) over
    its keys, group by group of the plan."""
    xp, c = dec.xp, dec.config
    H, KV, D = c.heads, c.kv_heads, c.head_dim
    R = H // KV
    out = []
    for S, t_max, n_max, slots, rows, allowed, valid in plan:
        ks = cache.k[i][slots].transpose(0, 2, 1, 3)                  # [S, KV, n, D]
        vs = cache.v[i][slots].transpose(0, 2, 1, 3)
        qs = q[rows]                                                   # [S, T, H, D]
        qs = qs.reshape(S, t_max, KV, R, D).transpose(0, 2, 3, 1, 4).reshape(S, KV, R * t_max, D)
        scores = ops.matmul(qs, ks.transpose(0, 1, 3, 2)).reshape(S, KV, R, t_max, n_max)
        p = ops.softmax(scores * scores.dtype.type(dec.scale), axis=-1, mask=allowed, padded=True)
        ctx = ops.matmul(p.reshape(S, KV, R * t_max, n_max), vs)        # [S, KV, R*T, D]
        ctx = ctx.reshape(S, KV, R, t_max, D).transpose(0, 3, 1, 2, 4).reshape(S * t_max, H * D)
        out.append(ctx[valid])
    return out[0] if len(out) == 1 else xp.concatenate(out, axis=0)

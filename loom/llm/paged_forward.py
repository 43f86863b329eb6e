"""One forward pass of many sequences through a paged KV cache: the rows of every sequence's new
tokens (a prefill chunk or one decode token) go through the projections and the MLP together, as one
[rows, E] matrix; attention runs per sequence over its own cached keys.

A row's bits do not depend on its batch-mates in deterministic mode: every product is row-invariant
(the dispatch table picks a scheme from K alone) and each sequence's attention sees exactly the keys
it would alone (decoder.attend). Prefill chunks end where the single-sequence path ends them (at
multiples of decoder.PREFILL_CHUNK, or at the prompt's end), which keeps the attention products'
K the same as alone too.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..backend import Array
from .decoder import Decoder
from .paged_cache import PagedKVCache


@dataclass
class Work:
    tokens: np.ndarray          # int64 [T]: the tokens at positions pos .. pos + T - 1
    pos: int
    table: list[int]            # the sequence's blocks (covering pos + T positions)
    logits: bool                # whether the last row's logits are wanted


def forward(dec: Decoder, cache: PagedKVCache, work: list[Work]) -> Array | None:
    """Run every work item's tokens, writing their keys and values into the cache; returns the
    logits [S, vocab] of the items with logits=True, in order (None when there are none)."""
    be, xp = dec.backend, dec.xp
    sizes = [len(w.tokens) for w in work]
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    ids = np.concatenate([w.tokens for w in work]).astype(np.int64)
    positions = np.concatenate([np.arange(w.pos, w.pos + n, dtype=np.int64) for w, n in zip(work, sizes)])
    dec.ensure_rope(int(positions.max()) + 1)
    cos, sin = dec.rope_at(be.asarray(positions))
    slots = be.asarray(np.concatenate([cache.slots(w.table, w.pos, w.pos + n) for w, n in zip(work, sizes)]))
    h = dec.embed_ids(ids[None])                                       # [1, N, E]
    for i, layer in enumerate(dec.layers):
        q, k, v = dec.qkv(layer, h, cos, sin)
        cache.k[i][slots] = k[0]
        cache.v[i][slots] = v[0]
        contexts = []
        for w, lo_row, hi_row in zip(work, bounds[:-1], bounds[1:]):
            first = dec.first_key(layer, w.pos)
            keys = be.asarray(cache.slots(w.table, first, w.pos + (hi_row - lo_row)))
            ks = cache.k[i][keys].transpose(1, 0, 2)[None]              # [1, KV, n, D]
            vs = cache.v[i][keys].transpose(1, 0, 2)[None]
            contexts.append(dec.attend(layer, q[:, lo_row:hi_row], ks, vs, w.pos, first))
        ctx = contexts[0] if len(contexts) == 1 else xp.concatenate(contexts, axis=1)
        h = dec.finish_layer(layer, h, ctx)
    rows = [int(hi) - 1 for w, hi in zip(work, bounds[1:]) if w.logits]
    if not rows:
        return None
    return dec.logits_of(h[0, be.asarray(np.asarray(rows, dtype=np.int64))])

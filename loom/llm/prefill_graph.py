"""A decoder's prompt chunk on the GPU as one recorded CUDA graph, fast mode.

A chunk whose layers run on the tensor cores (Decoder._layer_fast, nine launches a layer) is about
300 launches for a 30-layer model, and launching them from Python (9-18 ms for SmolLM2-135M on an
H100's host) takes longer than the GPU's work on 2,048 tokens (about 5 ms). Recorded once per
(batch, chunk length, start position, cache length) and replayed, a chunk costs one copy of its token
ids, one graph launch and, for a prompt's last chunk, one copy of the last position's logits.

The graph's body is the eager code itself (embedding, Decoder.run_layers, Decoder.logits_of), so a
replay gives the eager chunk's bits. A shape is recorded the second time it is seen (a prompt length
seen once costs no recording), after an eager run that compiles the kernels and makes the tables
they read; loom/llm/sequence.py keeps the few most recently used (PREFILL_GRAPHS_KEPT). The graph
reads and writes the GraphKV arrays for the cache's shape, the ones its decode graphs use, so the
prompt's keys and values stay where the decode steps read them.
"""
from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

import numpy as np

from ..backend import Array

if TYPE_CHECKING:
    from .decoder import Decoder
    from .kv_cache import GraphKV, KVCache


class PrefillGraph:
    """The recorded chunk of `ids` [B, T] (host ints, already checked) at cache.length, for caches of
    `cache`'s shape, in the GraphKV arrays `kv` its decode graphs share: the last position's logits
    when `logits`, else only the hidden states."""

    def __init__(self, dec: Decoder, ids: np.ndarray, cache: KVCache, kv: GraphKV, logits: bool):
        self.dec, self.want_logits = dec, logits
        self.kv = kv
        self.kv.bind(cache)                        # first: the eager run below writes cache's positions
        self.tables = dec._cos, dec._sin           # read by the graph: kept while it lives
        self.ids = dec.backend.asarray(np.ascontiguousarray(ids, dtype=np.int64))
        self._body(cache)                          # compiles the kernels, makes flash's item tables
        self.graph, (self.h, self.logits) = dec.backend.record(partial(self._body, cache))

    def _body(self, cache: KVCache) -> tuple[Array, Array | None]:
        dec = self.dec
        h = dec.run_layers(dec.embed_rows(self.ids), cache)
        return h, dec.logits_of(h[:, -1:]) if self.want_logits else None

    def run(self, ids: np.ndarray, cache: KVCache) -> Array:
        """Replay for `ids` (of the recorded shape) and `cache` (of the recorded shape and length): the
        hidden states [B, T, E], and in self.logits the last position's logits [B, 1, vocab] when
        recorded with them (both the graph's buffers: the next replay overwrites them). The cache
        advances by T."""
        self.kv.bind(cache)
        self.dec.backend.copy_into(self.ids, np.asarray(ids, dtype=np.int64))
        self.graph.launch()
        cache.length += ids.shape[1]
        return self.h

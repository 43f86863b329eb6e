"""Sequences decoded alone through a contiguous KVCache: a prompt in chunks, then one token a step.

    cache = dec.new_cache(max_len)
    logits = sequence.forward(dec, prompt_ids, cache, last_only=True)
    logits = sequence.forward(dec, [[token]], cache)              # one decode step

On the GPU a decode step replays a recorded CUDA graph (loom/llm/decode_graph.py) unless
`dec.graphs` is False; in deterministic mode its kernels give the kernel-by-kernel path's bits. Where
the graph's kernels cannot take the model or the cache (decode_graph.unsupported), steps run kernel
by kernel and the reason is logged once on the "loom" logger. In fast mode, a prompt chunk whose
layers all run on the tensor cores (Decoder.prefill_kernels) replays a recorded graph of the same
kernels from the second time its shape and start position are seen (loom/llm/prefill_graph.py; the
same bits). A decoder's recorded steps (`recorded(dec)`) are kept for the few most recent shapes.

Long prompts run in chunks of decoder.prefill_chunk() tokens so the score arrays stay small. In
deterministic mode a cached decode matches the full forward to float32 rounding, not bit for bit:
the exact sums of p v scale each column of v by its largest value over the keys present, and a full
forward sees more keys than the step that produced a given position.
"""
from __future__ import annotations

import weakref

import numpy as np
from numpy.typing import ArrayLike

from .. import fallback
from ..backend import Array
from ..backend.recorder import GraphCache
from ..errors import ConfigError
from ..mode import is_deterministic
from . import decode_graph
from .decoder import Decoder, prefill_chunk
from .kv_cache import GraphKV, KVCache
from .prefill_graph import PrefillGraph

GRAPHS_KEPT = 2        # recorded decode steps kept (each holds a KV cache of its shape)
PREFILL_GRAPHS_KEPT = 4  # recorded prompt chunks kept (each holds its chunk's activations)


def _describe_decode(key) -> str:
    return f"a decode step of {key[0]} sequence(s) over a cache of {key[1]} positions"


def _describe_prefill(key) -> str:
    return f"a prompt chunk of {key[0]}x{key[1]} tokens at position {key[2]} over a cache of {key[3]} positions"


class Recorded:
    """A decoder's recorded steps: decode steps by (batch, cache positions, deterministic), prompt
    chunks by (batch, T, position, cache positions, dense copies, logits wanted), the GraphKV arrays
    they share per cache shape, and the decode graph last stepped with (`last`)."""

    def __init__(self):
        self.decode = GraphCache(GRAPHS_KEPT, _describe_decode, strict=False, record_from=1)
        self.prefill = GraphCache(PREFILL_GRAPHS_KEPT, _describe_prefill, strict=False, record_from=2)
        self.kv: weakref.WeakValueDictionary = weakref.WeakValueDictionary()   # (batch, max_len) -> GraphKV
        self.ok: dict = {}               # (batch, deterministic) -> whether a decode step can be recorded
        self.last: decode_graph.DecodeGraph | None = None


def recorded(dec: Decoder) -> Recorded:
    """The decoder's recorded steps (made on first use)."""
    if dec.recorded is None:
        dec.recorded = Recorded()
    return dec.recorded


def forward(dec: Decoder, ids: ArrayLike, cache: KVCache, last_only: bool = False) -> Array:
    """Logits float32 [B, T, vocab] for token ids [B, T] (or [T]) that follow cache.length positions;
    the cache advances by T. last_only: only the last position's logits, [B, 1, vocab]."""
    ids = np.asarray(ids)
    if ids.ndim == 1:
        ids = ids[None]
    if ids.ndim != 2 or ids.shape[1] == 0 or ids.dtype.kind not in "iu":
        raise ConfigError("ids", f"expected integer token ids [batch, T] with T >= 1, got {ids.dtype} {list(ids.shape)}")
    if ids.shape[0] != cache.batch:
        raise ConfigError("ids", f"batch of {ids.shape[0]} sequences for a cache of batch {cache.batch}")
    bad = (ids < 0) | (ids >= dec.config.vocab_size)
    if bad.any():
        raise ConfigError("ids", f"token id {int(ids[bad][0])} is outside the vocabulary [0, {dec.config.vocab_size})")
    cache.check_room(ids.shape[1])
    if ids.shape[1] == 1 and dec.graphs:
        graph = _decode_graph(dec, cache)
        if graph is not None:
            return graph.step(ids[:, 0])[:, None, :]
    outs = []
    step = prefill_chunk()
    replayed = -(-ids.shape[1] // step) <= PREFILL_GRAPHS_KEPT    # (more chunks would evict each other)
    for start in range(0, ids.shape[1], step):
        chunk = ids[:, start:start + step]
        wanted = not last_only or start + step >= ids.shape[1]     # this chunk's logits are returned
        graph = _prefill_graph(dec, chunk, cache, last_only and wanted) if replayed else None
        h = _hidden(dec, chunk, cache) if graph is None else graph.run(chunk, cache)
        if graph is not None and graph.logits is not None:
            outs.append(dec.xp.copy(graph.logits))              # (the graph's buffer: its next run overwrites it)
        elif wanted:
            outs.append(dec.logits_of(h[:, -1:] if last_only else h))
    return outs[0] if len(outs) == 1 else dec.xp.concatenate(outs, axis=1)


def _hidden(dec: Decoder, ids: np.ndarray, cache: KVCache) -> Array:
    """Run every layer on ids [B, T] at positions cache.length ..; returns h [B, T, E]."""
    h = dec.run_layers(dec.embed_ids(ids), cache)
    cache.length += ids.shape[1]
    return h


def _prefill_graph(dec: Decoder, ids: np.ndarray, cache: KVCache, logits: bool) -> PrefillGraph | None:
    """The recorded prompt chunk for ids [B, T] at cache.length (recorded on the second sighting
    of its key), or None: graphs off, deterministic mode, or a layer off the tensor cores."""
    B, T = ids.shape
    if (not dec.graphs or not dec.backend.graphs or dec.prefill_kernels(B * T) is None
            or any(dec.bf16_weights(L) is None for L in dec.layers)):
        return None
    key = (B, T, cache.length, cache.max_len, dec.has_dense_copies, logits)
    return recorded(dec).prefill.lookup(key, lambda: PrefillGraph(dec, ids, cache, graph_kv(dec, cache), logits))


def release_graphs(dec: Decoder) -> None:
    """Drop every recorded decode step and prompt chunk, with the activation memory and the KV
    arrays they hold (caches keep theirs); later steps record anew."""
    rec = recorded(dec)
    rec.decode.clear()
    rec.prefill.clear()
    rec.last = None


def graph_kv(dec: Decoder, cache: KVCache) -> GraphKV:
    """The KV arrays every recorded graph of caches of `cache`'s shape uses (made from cache's
    own arrays the first time; kept while a graph holds them)."""
    rec, key = recorded(dec), (cache.batch, cache.max_len)
    kv = rec.kv.get(key)
    if kv is None:
        kv = rec.kv[key] = GraphKV(dec.xp, cache)
    return kv


def _decode_graph(dec: Decoder, cache: KVCache) -> decode_graph.DecodeGraph | None:
    """The recorded decode step for caches of `cache`'s shape in the current mode (recorded on the
    first step of such a cache; `cache` is bound to it), or None where unsupported. Both modes'
    steps give the kernel-by-kernel path's results (deterministic mode: its bits), so a step that
    cannot be recorded runs that path, and says so once."""
    rec, exact = recorded(dec), is_deterministic()
    key = (cache.batch, cache.max_len, exact)
    graph = rec.decode.get(key)
    if graph is None:
        ok = rec.ok.get((cache.batch, exact))
        if ok is None:               # the weights never change: ask once per batch size and mode
            why = decode_graph.unsupported(dec, cache.batch, exact)
            ok = rec.ok[cache.batch, exact] = why is None
            _graph_notice(dec, cache.batch, exact, why)
        why = decode_graph.unsupported_cache(dec, cache, exact) if ok else None
        _graph_notice(dec, cache.batch, exact, why)
        if ok and why is None:
            graph = rec.decode.lookup(key, lambda: decode_graph.DecodeGraph(dec, cache, graph_kv(dec, cache),
                                                                            exact=exact))
    if graph is not None:
        graph.bind(cache)
    rec.last = graph
    return graph


def _graph_notice(dec: Decoder, batch: int, exact: bool, why: str | None) -> None:
    if why is not None and dec.backend.graphs:          # (on the CPU there is no graph to miss)
        mode = "deterministic" if exact else "fast"
        fallback.notice_once(f"{mode} mode: decode steps of {batch} sequence(s) run kernel by kernel, not "
                             f"as a recorded CUDA graph ({why})")

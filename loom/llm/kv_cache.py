"""The key/value cache of a decoder: every layer's keys and values, allocated once per generation.

k and v are [batch, layers, kv_heads, max_len, head_dim] float32 arrays on the model's device. A
prefill writes positions [length, length + T) of every layer and then advances `length` by T; a
decode step writes one position. Nothing is reallocated while generating: a step that would run
past max_len raises ConfigError instead (the caller sizes the cache for prompt + max_tokens).
"""
from __future__ import annotations

import weakref
from types import ModuleType

import numpy as np

from ..backend import Array
from ..errors import ConfigError


class KVCache:
    def __init__(self, xp: ModuleType, batch: int, layers: int, kv_heads: int, max_len: int, head_dim: int):
        if batch < 1 or max_len < 1:
            raise ConfigError("max_len", f"a KV cache needs batch >= 1 and max_len >= 1, got batch={batch}, "
                                         f"max_len={max_len}")
        shape = (batch, layers, kv_heads, max_len, head_dim)
        self.k = xp.zeros(shape, dtype=np.float32)
        self.v = xp.zeros(shape, dtype=np.float32)
        self.batch, self.max_len = batch, max_len
        # per-layer views [batch, kv_heads, max_len, head_dim], made once: a decode step only slices them
        self.layer_k = [self.k[:, i] for i in range(layers)]
        self.layer_v = [self.v[:, i] for i in range(layers)]
        self.length = 0              # positions filled (the same for every layer between forwards)

    def move_to(self, k: Array, v: Array) -> None:
        """Keep this cache in the arrays k and v (of its shape; e.g. a recorded decode graph's): the
        filled positions are copied over and the cache reads and writes there from now on."""
        if k is not self.k:
            k[..., :self.length, :] = self.k[..., :self.length, :]
            v[..., :self.length, :] = self.v[..., :self.length, :]
            self.k, self.v = k, v
            self.layer_k = [k[:, i] for i in range(k.shape[1])]
            self.layer_v = [v[:, i] for i in range(v.shape[1])]

    def check_room(self, steps: int) -> None:
        """Raise unless `steps` more positions fit."""
        if self.length + steps > self.max_len:
            raise ConfigError("max_len", f"the KV cache holds {self.max_len} positions; {self.length} are used and "
                                         f"{steps} more were asked for")

    def reset(self) -> None:
        """Forget every position (the arrays are reused, not cleared: positions past `length` are never read)."""
        self.length = 0

    @property
    def nbytes(self) -> int:
        return int(self.k.nbytes + self.v.nbytes)


class GraphKV:
    """KV arrays that recorded graphs read and write (loom/llm/decode_graph.py, prefill_graph.py), and
    the cache that lives in them now. A graph bakes the arrays' addresses in; bind() moves a cache of
    their shape into them, so one recording serves every cache of the shape. loom/llm/sequence.py keeps
    one per (batch, max_len) of a decoder for all its graphs, so a prompt's positions stay where its decode steps read them."""

    def __init__(self, xp: ModuleType, cache: KVCache):
        self.xp = xp
        self.k, self.v = cache.k, cache.v
        self._bound = weakref.ref(cache)

    @property
    def cache(self) -> KVCache | None:
        """The cache living in the arrays (the one bound last), or None once it is gone."""
        cache = self._bound()
        return cache if cache is not None and cache.k is self.k else None

    def bind(self, cache: KVCache) -> None:
        """Let `cache` (of the arrays' shape) live in the arrays from now on: its filled positions move
        in. A cache bound before keeps its positions in new arrays of its own."""
        if cache.k is not self.k:
            previous = self.cache
            if previous is not None:
                previous.move_to(self.xp.zeros_like(self.k), self.xp.zeros_like(self.v))
            cache.move_to(self.k, self.v)
        self._bound = weakref.ref(cache)

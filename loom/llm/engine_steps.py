"""The device side of one batch-engine step (loom/llm/batching.py plans it): the work items run
through a recorded paged decode step where every item is one decode token and the device has the
kernels (loom/llm/paged_graph.py, one graph per batch bucket), else kernel by kernel through
loom/llm/paged_forward.py; then each item that wants logits gets its next-token input: the token
itself, chosen on the device, for a plain greedy sequence (only ids cross to the host), else its row
of logits on the host.
"""
from __future__ import annotations

import numpy as np

from .. import fallback
from ..kernels.exact import dispatch as exact_dispatch
from . import paged_forward, paged_graph
from .decoder import Decoder
from .paged_cache import PagedKVCache


class StepRunner:
    """Runs the engine's steps for decoder `dec` over `cache` in one mode (`deterministic`), keeping
    the recorded decode steps it made (by batch bucket). stats: the engine's counters ("graph_steps")."""

    def __init__(self, dec: Decoder, cache: PagedKVCache, deterministic: bool, stats: dict):
        self.dec, self.cache, self.deterministic, self.stats = dec, cache, deterministic, stats
        self.graphs: dict[int, paged_graph.PagedDecodeGraph] = {}
        why = paged_graph.why_not(dec, deterministic) if dec.backend.graphs else "no graphs"
        self.graphs_off = why is not None
        if why is not None and dec.backend.graphs:
            fallback.notice_once(f"batched decode steps run kernel by kernel, not as recorded CUDA graphs ({why})")

    def decode_graph(self, n: int, items: list[paged_forward.Work]) -> paged_graph.PagedDecodeGraph | None:
        """The recorded paged decode step for the n decode tokens `items` (None: run them through
        paged_forward)."""
        key = paged_graph.bucket(n)
        if self.graphs_off or key is None:
            return None
        if self.deterministic and max(w.pos for w in items) >= exact_dispatch.ROUNDED_MAX_K:
            return None             # the exact kernels' attention takes the rounded scheme's keys only
        graph = self.graphs.get(key)
        if graph is None:
            graph = self.graphs[key] = paged_graph.PagedDecodeGraph(self.dec, self.cache, key, self.deterministic)
        return graph

    def run(self, work: list[paged_forward.Work], greedy: list[bool]) -> list:
        """Each work item's next-token input (None where its logits are not wanted): the host logits,
        or, where greedy[i] (a plain greedy sequence that needs nothing else of them), the token
        itself, chosen on the device."""
        decode = [i for i, w in enumerate(work) if len(w.tokens) == 1 and w.logits]
        graph = self.decode_graph(len(decode), [work[i] for i in decode]) if decode else None
        by_graph = set(decode) if graph is not None else set()
        rest = [i for i in range(len(work)) if i not in by_graph]
        out: list = [None] * len(work)
        if rest:
            logits = paged_forward.forward(self.dec, self.cache, [work[i] for i in rest])
            if logits is not None:         # rows for the items that want logits, in order
                self._choose_rows(logits, [i for i in rest if work[i].logits], greedy, out)
        if graph is not None:
            self.stats["graph_steps"] += 1
            items = [work[i] for i in decode]
            logits = graph.step([int(w.tokens[0]) for w in items], [w.pos for w in items], [w.table for w in items])
            self._choose_rows(logits, decode, greedy, out)
        return out

    def _choose_rows(self, logits, indices: list[int], greedy: list[bool], out: list) -> None:
        """out[i] for the rows of device logits [len(indices), V]: argmax ids for greedy items (first
        of equal maxima, as generate.choose), host rows for the others."""
        be = self.dec.backend
        plain = [k for k, i in enumerate(indices) if greedy[i]]
        other = [k for k, i in enumerate(indices) if not greedy[i]]
        if plain:
            rows = logits if len(plain) == len(indices) else logits[be.asarray(np.asarray(plain))]
            tokens = be.prefill.argmax_rows(rows) if be.prefill is not None else be.xp.argmax(rows, axis=1)
            for k, token in zip(plain, be.to_numpy(tokens)):
                out[indices[k]] = int(token)
        if other:
            rows = logits if len(other) == len(indices) else logits[be.asarray(np.asarray(other))]
            for k, row in zip(other, be.to_numpy(rows)):
                out[indices[k]] = row

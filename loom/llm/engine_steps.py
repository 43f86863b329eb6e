"""The device side of one batch-engine step (loom/llm/batching.py plans it). The step's decode tokens
run through a recorded paged decode step where the device has the kernels (loom/llm/paged_graph.py,
one graph per batch bucket); its prompt chunks together through the recorded prompt step of their
lengths and positions where fast mode's fused prompt kernels take every layer, or in deterministic
mode where the exact block kernels take prompt chunks (loom/llm/paged_prefill_graph.py, recorded at
the second sighting of that mix); what is left (a mix seen once, and decode tokens no graph takes)
runs together kernel by kernel through loom/llm/paged_forward.py.
Then each item that wants logits gets its next-token input: the token itself, chosen on the device,
for a plain greedy sequence (only ids cross to the host), else its row of logits on the host.
"""
from __future__ import annotations

import numpy as np

from .. import fallback
from ..backend.recorder import GraphCache
from . import paged_forward, paged_graph, paged_prefill_graph
from .decoder import Decoder
from .paged_cache import PagedKVCache

PREFILL_GRAPHS_KEPT = 8     # recorded prompt steps kept (each holds its rows' activations)
# A prompt step of this many chunks or fewer replays each chunk's own recording in turn where each has one, or where
# its mix has none yet; past it a mix seen once runs its chunks together kernel by kernel (H200, serve.py's 64
# streams of 32-token prompts one after another: deterministic mode 154 ms, fast 75, where together they cost a few)
EACH_ALONE = 2


class StepRunner:
    """Runs the engine's steps for decoder `dec` over `cache` in one mode (`deterministic`), keeping
    the recorded steps it made: decode steps by batch bucket (graphs), prompt steps by their chunks'
    lengths, positions and wanted logits (prefills). stats: the engine's counters ("graph_steps", and
    "prefill_graph_steps": recorded prompt steps replayed). Steps replay graphs only while dec.graphs is
    True."""

    def __init__(self, dec: Decoder, cache: PagedKVCache, deterministic: bool, stats: dict):
        self.dec, self.cache, self.deterministic, self.stats = dec, cache, deterministic, stats
        self.graphs: dict[int, paged_graph.PagedDecodeGraph] = {}
        self.shared: dict = {}      # the decode recordings' shared workspaces (they replay one after another)
        self.prefills = GraphCache(PREFILL_GRAPHS_KEPT, paged_prefill_graph.describe, strict=False, record_from=2)
        why = paged_graph.why_not(dec, deterministic) if dec.backend.graphs else "no graphs"
        self.graphs_off = why is not None
        if why is not None and dec.backend.graphs:
            mode = "deterministic" if deterministic else "fast"
            fallback.notice_once(f"{mode} mode: decode steps run kernel by kernel, not as recorded CUDA graphs ({why})")

    def decode_graph(self, n: int, items: list[paged_forward.Work]) -> paged_graph.PagedDecodeGraph | None:
        """The recorded paged decode step for the n decode tokens `items` (None: run them through
        paged_forward)."""
        key = paged_graph.bucket(n)
        if self.graphs_off or key is None or not self.dec.graphs:
            return None
        graph = self.graphs.get(key)
        if graph is None:
            graph = self.graphs[key] = paged_graph.PagedDecodeGraph(self.dec, self.cache, key, self.deterministic,
                                                                    shared=self.shared)
        return graph

    def record_decode_steps(self, max_batch: int) -> None:
        """Record the decode step of every batch bucket up to max_batch's now (a server's start, as vLLM
        captures its batch sizes), so that no request waits for a recording."""
        last = paged_graph.bucket(max_batch) or paged_graph.BUCKETS[-1]
        if self.graphs_off or not self.dec.graphs:
            return
        # the largest first: its workspaces are the ones the smaller buckets' recordings then share
        for key in sorted((k for k in paged_graph.BUCKETS if k <= last), reverse=True):
            if key not in self.graphs:
                self.graphs[key] = paged_graph.PagedDecodeGraph(self.dec, self.cache, key, self.deterministic,
                                                                shared=self.shared)

    def prefill_graph(self, work: list[paged_forward.Work]) -> paged_prefill_graph.PagedPrefillGraph | None:
        """The recorded prompt step for `work` (recorded on the second sighting of its shape), or None:
        graphs off, or a layer off fast mode's fused prompt kernels, or in deterministic mode a
        stored weight whose products the exact block kernels do not take for any rows
        (Decoder.exact_in_place: its blocks would be decoded inside the recording, which would keep
        their buffers)."""
        be = self.dec.backend
        if not self.dec.graphs or not be.graphs:
            return None
        if self.deterministic:
            fused = None
            if not self.dec.exact_in_place():
                return None
        else:
            fused = paged_forward.fused_weights(self.dec, sum(len(w.tokens) for w in work), prompt=True)
            if fused is None:
                return None
        return self.prefills.lookup(paged_prefill_graph.key(self.dec, work),
                                    lambda: paged_prefill_graph.PagedPrefillGraph(self.dec, self.cache, work, fused))

    def recorded(self, work: list[paged_forward.Work]) -> paged_prefill_graph.PagedPrefillGraph | None:
        """The prompt step already recorded for `work`'s shape, or None (no sighting counted, nothing recorded)."""
        if not self.dec.graphs or not self.dec.backend.graphs:
            return None
        return self.prefills.get(paged_prefill_graph.key(self.dec, work))

    def run(self, work: list[paged_forward.Work], greedy: list[bool]) -> list:
        """Each work item's next-token input (None where its logits are not wanted): the host logits,
        or, where greedy[i] (a plain greedy sequence that needs nothing else of them), the token
        itself, chosen on the device."""
        decode = [i for i, w in enumerate(work) if len(w.tokens) == 1 and w.logits]
        graph = self.decode_graph(len(decode), [work[i] for i in decode]) if decode else None
        by_graph = set(decode) if graph is not None else set()
        rest = [i for i in range(len(work)) if i not in by_graph]
        out: list = [None] * len(work)
        # the step's prompt chunks replay the recorded step of their lengths and positions, all in one (recorded
        # the second time that mix is seen: a prompt alone, or prompts arriving together, as a benchmark's or a
        # batch job's do); up to EACH_ALONE chunks replay their own recordings instead where each has one, or
        # where the mix has none (a length recurs across requests more often than a mix does); the rest (and any
        # decode tokens no graph took) run together kernel by kernel, each product once over all their rows
        prompts = [i for i in rest if len(work[i].tokens) > 1]
        few = 1 < len(prompts) <= EACH_ALONE
        own = [self.recorded([work[i]]) for i in prompts] if few else []
        groups = []
        if few and all(g is not None for g in own):
            groups = [(g, [i]) for g, i in zip(own, prompts)]
        elif prompts:
            prefill = self.prefill_graph([work[i] for i in prompts])
            if prefill is not None:
                groups = [(prefill, prompts)]
            elif few:
                groups = [(g, [i]) for i in prompts if (g := self.prefill_graph([work[i]])) is not None]
        taken = {i for _, items in groups for i in items}
        eager = [i for i in rest if i not in taken]
        for prefill, items in groups:
            self.stats["prefill_graph_steps"] += 1
            logits = prefill.run([work[i] for i in items])
            if logits is not None:
                self._choose_rows(logits, [i for i in items if work[i].logits], greedy, out)
        if eager:
            wanted = [i for i in eager if work[i].logits]       # (plain greedy rows need only the argmax)
            logits = paged_forward.forward(self.dec, self.cache, [work[i] for i in eager],
                                           argmax_only=bool(wanted) and all(greedy[i] for i in wanted))
            if logits is not None:         # rows for the items that want logits, in order
                self._choose_rows(logits, [i for i in eager if work[i].logits], greedy, out)
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

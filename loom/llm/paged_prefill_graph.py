"""The batch engine's prompt steps on the GPU as recorded CUDA graphs, in both modes.

A step of prompt chunks whose layers all run through the fused prompt kernels
(paged_forward.run_fused: nine launches a layer, attention by the paged flash kernel) is about 300
launches for a 30-layer model, and launching them from Python takes longer than the GPU's work on a
few thousand rows. Recorded once per step shape and replayed, a step costs one copy of its inputs,
one graph launch, and the copy-out of the logits its caller reads.

A step's shape is the chunks' lengths, start positions and whether each wants logits (the key): it
fixes the rows' positions, the flash kernel's item table and which rows' logits are computed, which
the graph bakes in. What changes between steps of one shape, the token ids, the cache slots the rows'
keys and values go to and the slots of every item's keys (its block table), is one int64 buffer the
graph reads, written before each launch. The body is the eager code itself (embedding,
paged_forward.run_fused, Decoder.logits_of), so a replay gives the eager step's bits. In deterministic
mode the body is paged_forward.run_alone, the eager deterministic step (its products the block
kernels' exact ones, each item's attention over exactly its keys), where the backend's exact block
kernels take every stored weight's products for any number of rows (Decoder.exact_in_place; elsewhere
the chunks run kernel by kernel, each such product decoding its weight block by block). A shape is
recorded the second time it is seen (StepRunner keeps the few most recently used), after an eager
run that compiles the kernels and makes the tables they read. StepRunner records a step's chunks in
one graph (deterministic attention: the chunks' rows in one launch a layer where they fill the device,
int_attention.causal_paged), so that a recurring mix (a prompt alone, prompts submitted together) replays
as one step; a mix seen once runs kernel by kernel, its products over all its rows at once, unless it is
a chunk or two that have recordings of their own (engine_steps.EACH_ALONE).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..backend import Array
from . import paged_forward
from .paged_cache import PagedKVCache

if TYPE_CHECKING:
    from .decoder import Decoder


def key(dec: Decoder, work: list[paged_forward.Work]) -> tuple:
    """What a recorded prompt step is recorded for: each item's length, position and whether its
    logits are wanted, and which weight copies the products read."""
    return tuple((len(w.tokens), w.pos, w.logits) for w in work), dec.has_dense_copies


def describe(k: tuple) -> str:
    items, _ = k
    return (f"a prompt step of {len(items)} chunk(s), {sum(n for n, _, _ in items)} tokens at positions "
            f"{', '.join(str(p) for _, p, _ in items)}")


class PagedPrefillGraph:
    """The recorded prompt step for work items of `work`'s shape (key()) over `cache`, its fused
    kernels and weights `fused` (paged_forward.fused_weights for the step's rows), or None: the
    deterministic step (paged_forward.run_alone)."""

    def __init__(self, dec: Decoder, cache: PagedKVCache, work: list[paged_forward.Work], fused: tuple | None):
        self.dec, self.cache, self.fused = dec, cache, fused
        be = dec.backend
        dec.ensure_rope(dec.config.max_positions)       # the graph keeps the tables' addresses: none may move
        self.tables = dec._cos, dec._sin                 # read by the graph: kept while it lives
        rows = sum(len(w.tokens) for w in work)
        plans = paged_forward.flash_plans(dec, cache, work)
        # one buffer: ids, write slots, then every window's key slots
        sizes = [rows, rows] + [key_slots.size for key_slots, _ in plans.values()]
        self.inputs = be.xp.zeros(sum(sizes), dtype=np.int64)
        self.ids, self.slots = self.inputs[:rows], self.inputs[rows:2 * rows]
        self.plans, start = {}, 2 * rows
        for window, (key_slots, items) in plans.items():
            self.plans[window] = (self.inputs[start:start + key_slots.size].reshape(key_slots.shape), items)
            start += key_slots.size
        self.positions = be.asarray(np.concatenate([np.arange(w.pos, w.pos + len(w.tokens)) for w in work]))
        self.rope = dec.rope_at(self.positions)          # (the deterministic body's cos, sin)
        ends = np.cumsum([len(w.tokens) for w in work]) - 1
        wanted = [int(end) for w, end in zip(work, ends) if w.logits]
        self.rows = be.asarray(np.asarray(wanted, dtype=np.int64)) if wanted else None
        self._fill(work)
        self._body()                                     # compiles the kernels, makes flash's item tables
        self.graph, self.logits = be.record(self._body)

    def _fill(self, work: list[paged_forward.Work]) -> None:
        """Write the step's ids and slots into the graph's input buffer (one copy)."""
        host = np.empty(self.inputs.shape, dtype=np.int64)
        rows = self.ids.shape[0]
        host[:rows] = np.concatenate([w.tokens for w in work])
        host[rows:2 * rows] = np.concatenate([self.cache.slots(w.table, w.pos, w.pos + len(w.tokens)) for w in work])
        start = 2 * rows
        for key_slots, _ in paged_forward.flash_plans(self.dec, self.cache, work).values():
            host[start:start + key_slots.size] = key_slots.reshape(-1)
            start += key_slots.size
        self.dec.backend.copy_into(self.inputs, host)

    def _body(self) -> Array | None:
        dec = self.dec
        h = dec.embed_rows(self.ids[None])                                   # [1, rows, E]
        if self.fused is None:
            h = paged_forward.run_alone(dec, self.cache, h, *self.rope, self.positions, self.slots, self.plans)
        else:
            paged_forward.run_fused(dec, self.cache, *self.fused, h[0], self.positions, self.slots, self.plans)
        return None if self.rows is None else dec.logits_of(dec.xp.take(h[0], self.rows, axis=0))

    def run(self, work: list[paged_forward.Work]) -> Array | None:
        """Replay for `work` (of the recorded shape): the cache gets the chunks' keys and values;
        returns the logits [S, vocab] of the items that want them, in order (the graph's buffer:
        the next replay overwrites it), or None."""
        self._fill(work)
        self.graph.launch()
        return self.logits

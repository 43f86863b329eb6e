"""Sampling many rows at once with array operations alone: no Python loop over the rows and no read of
a value back to the host, so that a device can choose a step's sampled tokens where it computed the
logits. Row for row the tokens are generate.choose's in deterministic mode (its exact softmax), which
determinism spec 3 makes possible: top-p's and the draw's cumulative sums add integer masses, exact in
any order, so a parallel scan finds the host's cut and token.

The steps follow choose: the repetition penalty; the greedy token (the first allowed maximum, the first
allowed token where every allowed logit is -inf); the logits over the temperature; top-k (the k-th
largest allowed logit, where 0 < k < the allowed count); top-p (the smallest mass kept, from the
ascending masses' running sum, where top_p < 1); min-p (where min_p > 0); the draw, the first token
whose cumulative mass exceeds floor(u x total). A row at temperature 0, or whose kept probabilities are
not all finite or have no mass, takes its greedy token. Each setting is a per-row array; u is the row's
uniform number (generate's Philox stream at its seed and step: known before the step, so a device can
have it with the step's inputs). The presence and frequency penalties are the caller's, on the logits.
On a GPU, DeviceRows.choose runs loom/backend/cuda/sampling.py's kernel instead: these stages in one
launch, with these tokens; sample_rows is its reference.
"""
from __future__ import annotations

from types import ModuleType

import numpy as np

from .. import rng
from ..backend import Array, of
from ..kernels import ops
from . import generate as gen


def masses(probs: Array) -> tuple[Array, int]:
    """generate.masses along the last axis: (int64 masses, B), a non-finite probability no mass."""
    xp = of(probs).xp
    bits = 53 - max(0, (probs.shape[-1] - 1).bit_length())
    x = probs.astype(xp.float64)
    x = xp.where(xp.isfinite(x), x, 0) * (2.0 ** bits)
    return xp.rint(x).astype(xp.int64), bits


STAGES = frozenset({"penalty", "top_k", "top_p", "min_p", "draw"})


def unused_stages(settings: list) -> frozenset:
    """The stages of sample_rows that no row of gen.Sampling `settings` uses: skipping them gives the
    same tokens (a penalty of 1, top-k 0, top-p 1 and min-p 0 keep every token; temperature 0
    everywhere: only greedy tokens)."""
    unused = set()
    if all(s.repetition_penalty == 1.0 for s in settings):
        unused.add("penalty")
    if all(s.top_k == 0 for s in settings):
        unused.add("top_k")
    if all(s.top_p >= 1.0 for s in settings):
        unused.add("top_p")
    if all(s.min_p <= 0.0 for s in settings):
        unused.add("min_p")
    if all(s.temperature == 0.0 for s in settings):
        unused |= STAGES
    return frozenset(unused)


def sample_rows(logits: Array, seen: Array, temperature: Array, top_k: Array, top_p: Array, min_p: Array,
                penalty: Array, u: Array, allowed: Array | None = None, skip: frozenset = frozenset()) -> Array:
    """int64 [R] tokens for float32 logits [R, V]: seen (bool [R, V], the tokens already in each
    sequence), temperature, top_k, top_p, min_p, penalty and u ([R] each: float32 for temperature, min_p
    and penalty, as choose rounds them; int64 top_k; float64 top_p and u: choose's top-p cut is
    floor((1 - top_p) 2^B) of the double), allowed (bool [R, V] with at least one True a row, or None: all).
    skip: STAGES that no row uses (unused_stages), left out: the array work of a step is then that of
    the settings in use (a whole-vocabulary sort each for top-k and top-p)."""
    xp = of(logits).xp
    R, V = logits.shape
    f32 = xp.float32
    if "penalty" not in skip:
        p = penalty.astype(f32)[:, None]
        logits = xp.where(seen, xp.where(logits < 0, logits * p, logits / p), logits).astype(f32)
    keep = xp.ones((R, V), dtype=bool) if allowed is None else allowed.copy()
    # the greedy token: the first allowed maximum (NaN first, as argmax takes it), else the first allowed
    masked = xp.where(keep, logits, -xp.inf)
    greedy = xp.argmax(masked, axis=1)
    none_above = xp.max(masked, axis=1) == -xp.inf
    greedy = xp.where(none_above, xp.argmax(keep, axis=1), greedy)
    if "draw" in skip:
        return greedy.astype(xp.int64)
    t = temperature.astype(f32)[:, None]
    with _quiet(xp):
        scaled = (logits / xp.where(t == 0, f32(1), t)).astype(f32)
        # top-k: the k-th largest allowed logit (the others sort first, as -inf), where 0 < k < allowed count
        if "top_k" not in skip:
            k = top_k.astype(xp.int64)
            allowed_count = xp.count_nonzero(keep, axis=1)
            on = (k > 0) & (k < allowed_count)
            ascending = xp.sort(xp.where(keep, scaled, -xp.inf), axis=1)
            kth = xp.take_along_axis(ascending, xp.clip(V - k, 0, V - 1)[:, None], axis=1)
            keep &= ~on[:, None] | (scaled >= kth)
        # top-p: the smallest mass kept, from the ascending masses' running sum (exact), where top_p < 1
        if "top_p" not in skip:
            mass, bits = masses(ops.softmax(scaled, axis=-1, mask=keep))
            cut = xp.floor((1.0 - top_p.astype(xp.float64)) * (2.0 ** bits)).astype(xp.int64)
            ascending = xp.sort(mass, axis=1)
            dropped = xp.minimum(xp.count_nonzero(xp.cumsum(ascending, axis=1) <= cut[:, None], axis=1), V - 1)
            floor = xp.take_along_axis(ascending, dropped[:, None], axis=1)
            keep &= (top_p >= 1.0)[:, None] | (mass >= floor)
        if "min_p" not in skip:
            probs = ops.softmax(scaled, axis=-1, mask=keep)
            keep &= (min_p <= 0.0)[:, None] | (probs >= min_p.astype(f32)[:, None]
                                                * xp.max(probs, axis=1, keepdims=True))
        # the draw
        probs = ops.softmax(scaled, axis=-1, mask=keep)
    mass, _ = masses(probs)
    total = xp.sum(mass, axis=1)
    drawable = xp.all(xp.isfinite(probs), axis=1) & (total > 0) & (temperature != 0)
    target = xp.minimum(xp.floor(u.astype(xp.float64) * total.astype(xp.float64)).astype(xp.int64), total - 1)
    token = xp.count_nonzero(xp.cumsum(mass, axis=1) <= target[:, None], axis=1)
    return xp.where(drawable, token, greedy).astype(xp.int64)


class DeviceRows:
    """The sampling state of a run of decode steps whose tokens are chosen on the device (the engine's
    steps launched ahead): each row's settings and the tokens already in its sequence (the repetition
    penalty's), on the device, and each step's uniform numbers. A row of `settings` None (padding)
    takes greedy tokens."""

    def __init__(self, xp: ModuleType, settings: list, seen: list, vocab: int):
        s = [x if x is not None else gen.Sampling() for x in settings]
        self.xp, self.skip = xp, unused_stages(s)
        self.keys = np.array([rng.stream_key(x.seed, gen.SAMPLE_STREAM) for x in s], dtype=np.uint32)
        self.temperature = xp.asarray(np.array([x.temperature for x in s], dtype=np.float32))
        self.top_k = xp.asarray(np.array([x.top_k for x in s], dtype=np.int64))
        self.top_p = xp.asarray(np.array([x.top_p for x in s], dtype=np.float64))     # choose's cut: the double
        self.min_p = xp.asarray(np.array([x.min_p for x in s], dtype=np.float32))
        self.penalty = xp.asarray(np.array([x.repetition_penalty for x in s], dtype=np.float32))
        self.seen = xp.asarray(np.stack([np.asarray(x, dtype=bool) if x is not None else np.zeros(vocab, dtype=bool)
                                         for x in seen]))
        self.u = xp.zeros(len(s), dtype=np.float64)

    def set_steps(self, counters: list[int]) -> None:
        """Each row's uniform number for its next token: generate's Philox stream at the row's seed and
        step counter (its generated tokens before this one), as generate.choose draws it."""
        self.u[:] = self.xp.asarray(rng.first_uniforms(self.keys, np.array(counters, dtype=np.uint64)))

    def choose(self, logits: Array) -> Array:
        """int64 tokens for the first len(logits) rows, each added to its row's seen tokens. On a GPU one
        kernel samples every row (backend/cuda/sampling.py: these array operations' deterministic tokens,
        in both modes)."""
        n = logits.shape[0]
        if self.xp.__name__ == "cupy":
            from ..backend.cuda import sampling
            return sampling.sample_rows(logits, self.seen[:n], self.temperature[:n], self.top_k[:n], self.top_p[:n],
                                        self.min_p[:n], self.penalty[:n], self.u[:n], self.skip, mark_seen=True)
        tokens = sample_rows(logits, self.seen[:n], self.temperature[:n], self.top_k[:n], self.top_p[:n],
                             self.min_p[:n], self.penalty[:n], self.u[:n], skip=self.skip)
        self.seen[self.xp.arange(n), tokens] = True
        return tokens


class _quiet:
    """NumPy's floating-point warnings off (inf and NaN logits are handled: their rows take the greedy
    token); nothing on another array library."""

    def __init__(self, xp):
        self.state = xp.errstate(divide="ignore", over="ignore", invalid="ignore") if hasattr(xp, "errstate") else None

    def __enter__(self):
        if self.state is not None:
            self.state.__enter__()

    def __exit__(self, *exc):
        if self.state is not None:
            self.state.__exit__(*exc)

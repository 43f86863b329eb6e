"""Generation: sampling settings, one step's token choice, stop tokens and strings, streamed text (the
steps themselves run on the batch engine, loom/llm/batching.py).

Each step turns the last position's logits into one token, in transformers' order:
1. repetition penalty (HF's RepetitionPenaltyLogitsProcessor): every token already in the sequence
   (prompt included) has its logit divided by the penalty when positive, multiplied when negative;
2. temperature 0: the argmax (greedy; the first of equal maxima). Otherwise:
3. logits / temperature, then top-k (keep logits >= the k-th largest), top-p (drop the smallest tokens
   whose cumulative probability stays <= 1 - top_p; the most likely token always stays, and tokens
   tied with the smallest one kept are kept too, where HF's choice would depend on its sort), min-p
   (drop tokens with probability < min_p x the largest probability);
4. draw by inverse CDF over the kept tokens in id order, with the uniform number u of loom.rng's
   Philox stream "loom.llm.sample" at counter = step. Softmax goes through loom.kernels.ops (exact
   and backend-independent in deterministic mode), so a seed gives the same tokens on every machine
   and device whenever the logits agree.

The cumulative sums of steps 3 (top-p) and 4 add integers, not floats (determinism spec 3): each
probability p is its mass, rint(p 2^B) with B = 53 - ceil(log2 V) for a vocabulary of V tokens, so every
partial sum is an integer of at most 2^53, exact in int64 and float64 whatever the order of the additions. A
device can therefore find the cut and the token with parallel sums and get the host's answer (a float64
running sum's bits depend on its order). The draw takes the first token whose cumulative mass exceeds
floor(u x total) (at most total - 1), u x total rounded in float64; a token of probability at most
2^-(B+1) has no mass and is never drawn (2^-36 at a 152k vocabulary). Where the kept probabilities are
not all finite or none has mass, the greedy token is taken (`choose`).

A constraint (Constraint below: loom.llm.token_mask.JsonConstraint for JSON output) narrows step 1's
logits first: tokens it does not allow are dropped, exactly (greedy takes the argmax of the allowed
ones; sampling keeps only them through top-k, top-p and min-p, so the probabilities of the allowed
tokens are their own renormalized). Generation ends once the constraint is finished.

Stop token ids end generation without being emitted. Stop strings are matched on the decoded text:
text that could still become the start of a stop string is held back until it cannot, and the stop
string itself (and anything after it) is never emitted.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from .. import rng
from ..errors import ConfigError
from ..kernels import ops

if TYPE_CHECKING:
    from .tokenizer import Tokenizer

SAMPLE_STREAM = "loom.llm.sample"
SHORTLIST = 13          # top_p_floor sorts the masses of at least 2^-SHORTLIST of the largest first (benchmarks/sampling.py)


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: int = 0

    def __post_init__(self):
        _number("temperature", self.temperature, lambda v: v >= 0, "a finite number >= 0 (0 = greedy)")
        _integer("top_k", self.top_k, "an integer >= 0 (0 = off)")
        _number("top_p", self.top_p, lambda v: 0 < v <= 1, "a number in (0, 1] (1 = off)")
        _number("min_p", self.min_p, lambda v: 0 <= v <= 1, "a number in [0, 1] (0 = off)")
        _number("repetition_penalty", self.repetition_penalty, lambda v: v > 0, "a finite number > 0 (1 = off)")
        _integer("seed", self.seed, "an integer >= 0")


class Constraint(Protocol):
    """What constrained generation asks of a constraint (loom.llm.token_mask.JsonConstraint is one):
    the tokens allowed next (stop ids among them only where the output may end), advancing past the
    chosen token, and whether nothing more may follow."""

    @property
    def vocab_size(self) -> int: ...

    @property
    def started(self) -> bool: ...

    @property
    def finished(self) -> bool: ...

    def allowed(self, stop_ids: Iterable[int]) -> np.ndarray: ...

    def push(self, token: int) -> None: ...


def _number(name, value, ok, what):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
        raise ConfigError(name, f"expected {what}, got {value!r}")


def _integer(name, value, what):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ConfigError(name, f"expected {what}, got {value!r}")


# --- one step ------------------------------------------------------------------------------------

def repetition_penalty(logits: np.ndarray, seen: np.ndarray, penalty: float) -> np.ndarray:
    """HF's repetition penalty on float32 logits [V] for the tokens where `seen` [V] is True."""
    if penalty == 1.0:
        return logits
    p = np.float32(penalty)
    return np.where(seen, np.where(logits < 0, logits * p, logits / p), logits).astype(np.float32)


def keep_mask(logits: np.ndarray, s: Sampling, allowed: np.ndarray | None = None) -> np.ndarray:
    """Bool [V]: the tokens top-k, top-p and min-p keep, for logits already divided by the temperature,
    among the `allowed` ones (bool [V]; None: all)."""
    keep = np.ones(logits.shape, dtype=bool) if allowed is None else allowed.copy()
    candidates = logits if allowed is None else logits[allowed]
    if 0 < s.top_k < candidates.size:
        kth = np.partition(candidates, candidates.size - s.top_k)[candidates.size - s.top_k]
        keep &= logits >= kth
    if s.top_p < 1.0:
        mass, bits = masses(_softmax(logits, keep))
        keep &= mass >= top_p_floor(mass, math.floor(math.ldexp(1.0 - s.top_p, bits)))  # ties at the cut are kept
    if s.min_p > 0.0:
        probs = _softmax(logits, keep)
        keep &= probs >= np.float32(s.min_p) * probs.max()
    return keep


def top_p_floor(mass: np.ndarray, cut: int) -> int:
    """The smallest mass top-p keeps: with the masses sorted ascending (values only: no order of equal
    values to depend on), the first one whose running sum exceeds `cut`, or the largest where none does
    (the most likely token always stays). Only the masses of at least 2^-SHORTLIST of the largest are
    sorted where they decide it: where the running sum through the smallest of them (ties included,
    the rest below it) is still <= cut, every smaller mass is dropped too. Otherwise all are sorted."""
    total, largest = int(mass.sum()), int(mass.max())
    if total <= cut:
        return largest
    top = np.sort(mass[mass >= max(1, largest >> SHORTLIST)])
    rest = total - int(top.sum())                   # the masses below the shortlist's
    if rest + int(np.count_nonzero(top == top[0])) * int(top[0]) <= cut:
        return int(top[min(int(np.count_nonzero(rest + np.cumsum(top) <= cut)), top.size - 1)])
    ascending = np.sort(mass)
    return int(ascending[min(int(np.count_nonzero(np.cumsum(ascending) <= cut)), mass.size - 1)])


def _softmax(logits, keep):
    return np.asarray(ops.softmax(logits, axis=-1, mask=keep))


def masses(probs: np.ndarray) -> tuple[np.ndarray, int]:
    """(int64 masses, B): each probability of `probs` (float32 [V], each at most 1) as rint(p 2^B), to
    nearest with ties to even, B = 53 - ceil(log2 V): the masses' sums stay at most 2^53, exact in any order.
    A non-finite probability (the softmax of +inf or NaN logits) has no mass."""
    bits = 53 - max(0, (probs.size - 1).bit_length())
    x = probs.astype(np.float64)
    if not np.isfinite(x).all():
        x[~np.isfinite(x)] = 0
    x *= 2.0 ** bits                                # (exact: a power of two, far from overflow and underflow)
    return np.rint(x, out=x).astype(np.int64), bits


def choose(logits: np.ndarray, seen: np.ndarray, s: Sampling, step: int, allowed: np.ndarray | None = None) -> int:
    """The token for one step from float32 logits [V] (host array); `allowed` (bool [V], at least one
    True) restricts it to those tokens. Where the kept tokens' probabilities are not all finite (a +inf
    or NaN logit, all of them -inf, or a temperature too small for float32, which divides to inf), or none
    has mass, the draw is undefined and the greedy token is taken instead, as at temperature 0."""
    logits = repetition_penalty(logits, seen, s.repetition_penalty)
    mass = None if s.temperature == 0.0 else sampled_masses(logits, s, allowed)
    if mass is None:
        return _greedy(logits, allowed)
    u = float(_generator(s.seed).uniform(1, counter=step, dtype=np.float64)[0])
    return draw(mass, u)


def sampled_masses(logits: np.ndarray, s: Sampling, allowed: np.ndarray | None = None) -> np.ndarray | None:
    """The int64 masses [V] a sampled step draws from (s.temperature > 0; logits after the repetition
    penalty), or None where the draw is undefined (choose then takes the greedy token)."""
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):     # (non-finite: None below)
        scaled = (logits / np.float32(s.temperature)).astype(np.float32)
        keep = keep_mask(scaled, s, allowed)
        probs = _softmax(scaled, keep)
    mass = masses(probs)[0]
    return mass if np.isfinite(probs).all() and mass.any() else None


def _greedy(logits: np.ndarray, allowed: np.ndarray | None) -> int:
    """The first maximum among the allowed tokens (the first allowed one where every allowed logit is -inf)."""
    if allowed is None:
        return int(np.argmax(logits))
    ids = np.flatnonzero(allowed)
    return int(ids[np.argmax(logits[ids])])


def draw(mass: np.ndarray, u: float) -> int:
    """The inverse-CDF draw from int64 masses [V] (some positive) for u in [0, 1): the first token whose
    cumulative mass exceeds floor(u x total), at most total - 1 (u x total, rounded in float64, may reach
    the total). The cumulative masses rise only at tokens of positive mass, so no other is drawn."""
    cumulative = np.cumsum(mass)
    total = int(cumulative[-1])
    if total <= 0:
        raise ValueError("draw: no token has mass")
    target = min(math.floor(u * total), total - 1)
    return int(np.searchsorted(cumulative, target, side="right"))


@functools.lru_cache(maxsize=64)
def _generator(seed: int) -> rng.Generator:
    return rng.Generator(seed, SAMPLE_STREAM)     # (its key is a SHA-256: made once per seed)


# --- the loop ------------------------------------------------------------------------------------

def token_ids(ids: Iterable, what: str = "prompt") -> list[int]:
    """ids as a list of Python ints (numpy integers converted); ConfigError naming `what` and the first
    value that is not an integer (a bool is not). Plain ints pass by their types alone: a long prompt
    is checked at C speed."""
    ids = list(ids)
    if set(map(type, ids)) <= {int}:
        return ids
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise ConfigError(what, f"token ids must be integers, got {i!r}")
    return [int(i) for i in ids]


def fit_prompt(ids: list[int], max_tokens: int, context: int, vocab_size: int, truncate: bool) -> list[int]:
    """The prompt ids checked against the vocabulary and the context: prompt + max_tokens must fit;
    truncate=True drops the oldest prompt tokens instead of raising."""
    _integer("max_tokens", max_tokens, "an integer >= 0")
    if not ids:
        raise ConfigError("prompt", "the prompt has no tokens; give text or at least one token id")
    if min(ids) < 0 or max(ids) >= vocab_size:
        bad = next(i for i in ids if not 0 <= i < vocab_size)
        raise ConfigError("prompt", f"token id {bad} is outside the vocabulary [0, {vocab_size})")
    if len(ids) + max_tokens <= context:
        return ids
    if not truncate:
        raise ConfigError("prompt", f"the prompt has {len(ids)} tokens and max_tokens is {max_tokens}: "
                                    f"{len(ids) + max_tokens} positions exceed the model's context length "
                                    f"{context}; shorten the prompt, lower max_tokens, or pass truncate=True")
    if max_tokens >= context:
        raise ConfigError("max_tokens", f"{max_tokens} new tokens leave no room for a prompt in a context of {context}")
    return ids[len(ids) + max_tokens - context:]


def stream_text(tokens: Iterator[int], tokenizer: Tokenizer, stop: tuple[str, ...] = ()) -> Iterator[str]:
    """Decoded text pieces of a token stream, cut before the first stop string."""
    text = TextStream(tokenizer, stop)
    for token in tokens:
        piece = text.push(token)
        if piece:
            yield piece
        if text.stopped:
            return
    piece = text.flush()
    if piece:
        yield piece


class TextStream:
    """Incremental detokenization with stop strings: push() each token and emit what it returns;
    `stopped` turns true when a stop string appeared (it and what follows are never returned);
    flush() returns the rest at the end."""

    def __init__(self, tokenizer: Tokenizer, stop: tuple[str, ...] = ()):
        self.decoder = tokenizer.stream_decoder()
        self.stop = stop
        self.pending = ""
        self.stopped = False

    def push(self, token: int) -> str:
        if self.stopped:
            return ""
        self.pending += self.decoder.push(token)
        return self._emit(final=False)

    def flush(self) -> str:
        if self.stopped:
            return ""
        self.pending += self.decoder.flush()
        return self._emit(final=True)

    def _emit(self, final: bool) -> str:
        cut = _find_stop(self.pending, self.stop)
        if cut is not None:
            self.stopped = True
            text, self.pending = self.pending[:cut], ""
            return text
        safe = len(self.pending) if final else len(self.pending) - _held_back(self.pending, self.stop)
        text, self.pending = self.pending[:safe], self.pending[safe:]
        return text


def _find_stop(text: str, stop) -> int | None:
    hits = [i for i in (text.find(s) for s in stop) if i >= 0]
    return min(hits) if hits else None


def _held_back(text: str, stop) -> int:
    """Length of the longest suffix of text that is a proper prefix of a stop string."""
    best = 0
    for s in stop:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best


def check_constraint(constraint: Constraint | None, vocab_size: int) -> None:
    """ConfigError unless `constraint` is None or an unused constraint over `vocab_size` tokens."""
    if constraint is None:
        return
    if not all(hasattr(constraint, name) for name in ("allowed", "push", "finished", "started", "vocab_size")):
        raise ConfigError("constraint", f"expected a constraint (e.g. loom.llm.token_mask.JsonConstraint), "
                                        f"got {type(constraint).__name__}")
    if constraint.vocab_size != vocab_size:
        raise ConfigError("constraint", f"the constraint covers {constraint.vocab_size} tokens; the model has "
                                        f"{vocab_size}")
    if constraint.started:
        raise ConfigError("constraint", "the constraint has been used already; make a fresh one per generation")


def check_stop(stop: str | Iterable[str]) -> tuple[str, ...]:
    """stop as a tuple of non-empty strings (a single string is one stop string)."""
    items = (stop,) if isinstance(stop, str) else tuple(stop)
    for s in items:
        if not isinstance(s, str) or not s:
            raise ConfigError("stop", f"stop strings must be non-empty strings, got {s!r}")
    return items


def check_stop_ids(stop_ids: Iterable[int], vocab_size: int) -> tuple[int, ...]:
    items = tuple(stop_ids)
    for i in items:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i < vocab_size:
            raise ConfigError("stop_ids", f"expected token ids in [0, {vocab_size}), got {i!r}")
    return tuple(int(i) for i in items)


__all__ = ["Sampling", "Constraint", "check_constraint", "choose", "draw", "keep_mask", "masses", "top_p_floor",
           "repetition_penalty", "fit_prompt", "stream_text",
           "check_stop", "check_stop_ids", "SAMPLE_STREAM", "TextStream"]

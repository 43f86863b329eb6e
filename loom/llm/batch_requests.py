"""What goes in and out of the batch engine (loom/llm/batching.py): a Request, the Events a request's
sink receives, the Result of a finished one, the Handle that cancels it, and the Sequence the
engine keeps for it; plus the per-token helpers the engine's sampling uses (plain_greedy, logprobs).
"""
from __future__ import annotations

import collections
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

from ..errors import LoomError
from . import generate as gen

if TYPE_CHECKING:
    from .decoder import Decoder
    from .tokenizer import Tokenizer


class LanguageModel(Protocol):
    """What the engine needs of a model (loom.llm.model.CausalLM is one): its decoder, its tokenizer
    (None: no text, no stop strings) and the token ids that end a sequence by default."""
    decoder: Decoder
    tokenizer: Tokenizer | None
    eos_ids: tuple[int, ...]


class QueueFull(LoomError, RuntimeError):
    """The engine's queue holds max_queue requests already."""


@dataclass
class Request:
    """One generation. prompt: token ids; sampling: gen.Sampling; stop_ids end it without being
    emitted; stop: strings that end the text (needs the model's tokenizer). presence and frequency
    penalties as OpenAI defines them: logit -= frequency * count + presence * (count > 0), over the
    tokens generated so far. logprobs: None, or how many top alternatives to report with each
    token's log-probability (0: the token's own only). constraint: a fresh gen.Constraint (e.g. a
    token_mask.JsonConstraint for JSON output) that masks each step's logits; the request ends
    ("stop") once it is finished. Constrained requests bring their logits to the host for every step
    the constraint masks (a lazy one, lazy_constraint.LazyConstraint, only inside its calls)."""
    prompt: list[int]
    max_tokens: int = 256
    sampling: gen.Sampling = field(default_factory=gen.Sampling)
    stop_ids: tuple[int, ...] | None = None     # None: the model's end-of-sequence ids
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: int | None = None
    constraint: gen.Constraint | None = None


@dataclass
class Event:
    """What a sink receives: a token (with its text, maybe empty while a stop string may begin), or the
    end (token None, finish_reason "stop" | "length" | "cancelled" | "error")."""
    token: int | None
    text: str = ""
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None
    finish_reason: str | None = None
    error: str | None = None


@dataclass
class Result:
    tokens: list[int]
    text: str | None
    finish_reason: str
    logprobs: list[float] | None
    prompt_tokens: int


class Handle:
    """A submitted request: cancel() frees its slot at the next step."""

    def __init__(self, seq: Sequence):
        self._seq = seq

    def cancel(self) -> None:
        self._seq.cancelled = True


class Sequence:
    """A request inside the engine: its tokens so far (prompt, then generated), its block table and
    how many of its positions are cached, its prefix-cache names, and what sampling needs."""

    def __init__(self, number: int, request: Request, sink: Callable[[Event], None], vocab: int,
                 text: gen.TextStream | None):
        self.number, self.request, self.sink = number, request, sink
        self.tokens = list(request.prompt)
        self.prompt_len = len(request.prompt)
        self.generated: list[int] = []
        self.table: list[int] = []
        self.length = 0                     # positions whose keys and values are in the cache
        self.registered = 0                 # full blocks registered for prefix caching
        self.names: list[bytes] = []        # their names
        self.seen = np.zeros(vocab, dtype=bool)
        self.seen[np.asarray(request.prompt)] = True
        self.counts: collections.Counter[int] = collections.Counter()
        self.text = text
        self.cancelled = False


def plain_greedy(r: Request) -> bool:
    """Whether the next token is the logits' argmax and nothing else of them is needed (a constraint
    that masks the next token needs the host logits; a lazy one before its marker does not)."""
    s = r.sampling
    return (s.temperature == 0.0 and s.repetition_penalty == 1.0 and not r.presence_penalty
            and not r.frequency_penalty and r.logprobs is None
            and (r.constraint is None or not getattr(r.constraint, "masking", True)))


def device_sampled(r: Request) -> bool:
    """Whether the next token can be chosen on the device (sample_rows.DeviceRows): nothing masks the
    logits (no constraint), nothing more is needed of them (no logprobs), and no presence or frequency
    penalty (the repetition penalty's seen tokens are kept on the device)."""
    return r.constraint is None and r.logprobs is None and not r.presence_penalty and not r.frequency_penalty


def logprobs(logits: np.ndarray, token: int, top: int) -> tuple[float, list[tuple[int, float]]]:
    """The token's log-probability under the model's distribution (the raw logits, before any
    sampling setting) and the `top` most likely tokens' (ties: smaller id first)."""
    x = logits.astype(np.float64)
    m = np.max(x)
    lp = x - (m + math.log(np.sum(np.exp(x - m))))
    best = []
    if top > 0:
        k = min(top, lp.size)
        cand = np.argpartition(-lp, k - 1)[:k]
        cand = sorted(cand.tolist(), key=lambda i: (-lp[i], i))
        best = [(int(i), float(lp[i])) for i in cand]
    return float(lp[token]), best


def result(events: list[Event], prompt_tokens: int, has_text: bool) -> Result:
    tokens = [e.token for e in events if e.token is not None]
    text = "".join(e.text for e in events) if has_text else None
    end = events[-1] if events else Event(None, finish_reason="error", error="no events")
    if end.finish_reason == "error":
        raise LoomError(end.error)
    logprobs = [e.logprob for e in events if e.token is not None] if any(e.logprob is not None for e in events) \
        else None
    return Result(tokens, text, end.finish_reason, logprobs, prompt_tokens)

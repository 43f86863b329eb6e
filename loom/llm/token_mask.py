"""Token masks for constrained generation: which tokens of a vocabulary keep the output a valid prefix
of a grammar (loom/llm/json_constraint.py), one step at a time.

    vocab = Vocabulary.of(tokenizer, model.decoder.config.vocab_size)      # once per tokenizer
    masks = GrammarMasks(JsonGrammar.from_schema(schema), vocab)          # once per schema
    constraint = masks.constraint()                                       # once per request
    allowed = constraint.allowed(stop_ids)     # bool [vocab]: stop ids only where the value is complete
    constraint.push(token); constraint.finished

Each token's bytes are read once per tokenizer (byte-level BPE: GPT-2's byte alphabet undone;
SentencePiece: "▁" as a space, <0xXX> as the byte; control tokens never allowed). A mask is found by
walking a trie of those bytes alongside the automaton, cutting every branch the automaton refuses.
Inside a string most tokens are plain text (no quote, backslash or control byte): those are accepted
or not by their UTF-8 shape and length alone, which NumPy decides for the whole vocabulary at once,
so the walk only visits the few tokens holding a quote or a backslash there. Masks are cached per
automaton state (states are hashable), so a repeated state costs one lookup.
"""
from __future__ import annotations

import collections
import json
import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ConfigError, LoomError
from . import tokenizer_gguf
from .json_constraint import K_KEY, K_STR, UTF8, UTF8_DUE, UTF8_STATES, JsonGrammar, State

if TYPE_CHECKING:
    from .tokenizer import Tokenizer

MASK_CACHE = 1024       # masks kept per grammar (packed bits: vocab / 8 bytes each)
_PLAIN = np.array([b >= 0x20 and b not in (0x22, 0x5C) for b in range(256)])   # no quote, backslash, control
_SPIECE_STEPS = {"Replace", "ByteFallback", "Fuse", "Strip", "Metaspace"}


def token_pieces(tokenizer: Tokenizer, size: int) -> list[bytes | None]:
    """The bytes each token id in [0, size) adds to the text (None: never allowed inside a value:
    control tokens, ids past the tokenizer's, tokens with no text). ConfigError for tokenizers whose
    decoding is not a plain concatenation of token bytes (WordPiece)."""
    backend = tokenizer._tk
    decoder = json.loads(backend.decoder.__getstate__()) if backend.decoder is not None else None
    steps = decoder.get("decoders", [decoder]) if decoder and decoder.get("type") == "Sequence" else [decoder]
    kinds = {s.get("type") for s in steps if s}
    if kinds == {"ByteLevel"}:
        table = {c: b for b, c in tokenizer_gguf.byte_to_char().items()}

        def spell(text: str) -> bytes:
            return bytes(table[c] for c in text) if all(c in table for c in text) else text.encode("utf-8")
    elif kinds and kinds <= _SPIECE_STEPS:
        for s in steps:
            spaces = s.get("pattern", {}).get("String") == "\u2581" and s.get("content") == " "
            if s.get("type") == "Replace" and not spaces:
                raise ConfigError("tokenizer", f"structured output does not support the decoder step {s}")

        def spell(text: str) -> bytes:
            return text.replace("\u2581", " ").encode("utf-8")
    else:
        raise ConfigError("tokenizer", "structured output needs a byte-level BPE or SentencePiece tokenizer; this "
                                       f"one decodes with {sorted(k for k in kinds if k) or 'nothing'}")
    byte_tokens = tokenizer._byte_tokens
    out: list[bytes | None] = []
    for i in range(size):
        text = backend.id_to_token(i) if i < tokenizer.vocab_size else None
        if text is None or i in tokenizer._special_ids:
            out.append(None)
        elif i in byte_tokens:
            out.append(bytes([int(text[3:5], 16)]))
        else:
            out.append(spell(tokenizer._added.get(i, text)) or None)
    return out


class Vocabulary:
    """A vocabulary's token bytes, sorted into a trie, with the arrays that decide plain tokens."""

    _cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
    _lock = threading.Lock()

    def __init__(self, pieces: Sequence[bytes | None]):
        self.size = len(pieces)
        self.pieces = list(pieces)
        ids = [i for i, p in enumerate(self.pieces) if p]
        ids.sort(key=lambda i: self.pieces[i])
        self.order = np.asarray(ids, dtype=np.int64)          # sorted position -> token id
        spelled = [self.pieces[i] for i in ids]
        n = len(spelled)
        self.plain = np.array([bool(_PLAIN[list(p)].all()) for p in spelled], dtype=bool)
        self.length = np.array([len(p) for p in spelled], dtype=np.int64)
        self.first = np.array([p[0] for p in spelled], dtype=np.int64)
        cont = [next((k for k, b in enumerate(p) if not 0x80 <= b <= 0xBF), len(p)) for p in spelled]
        self.lead = np.asarray(cont, dtype=np.int64)            # leading continuation bytes
        self.chars = np.array([sum(not 0x80 <= b <= 0xBF for b in p) for p in spelled], dtype=np.int64)
        self.tail_ok = np.array([_utf8_ok(p[k:]) for p, k in zip(spelled, cont)], dtype=bool)
        self._plain_masks: dict[int, np.ndarray] = {}
        self._build_trie(spelled, n)

    @classmethod
    def of(cls, tokenizer: Tokenizer, size: int) -> Vocabulary:
        """The vocabulary of a tokenizer for a model of `size` logits (made once per tokenizer and size)."""
        with cls._lock:
            per = cls._cache.setdefault(tokenizer, {})
            if size not in per:
                per[size] = cls(token_pieces(tokenizer, size))
            return per[size]

    def _build_trie(self, spelled: list[bytes], n: int) -> None:
        kids: list[dict[int, int]] = [{}]
        self.lo, self.hi, self.ends, self.special = [0], [n], [0], [False]
        for index, piece in enumerate(spelled):
            node, special = 0, not self.plain[index]
            if special:
                self.special[0] = True
            for b in piece:
                child = kids[node].get(b)
                if child is None:
                    child = kids[node][b] = len(kids)
                    kids.append({})
                    self.lo.append(index)
                    self.hi.append(index + 1)
                    self.ends.append(0)
                    self.special.append(False)
                node = child
                self.hi[node] = index + 1
                if special:
                    self.special[node] = True
            self.ends[node] += 1
        self.children = [sorted(k.items()) for k in kids]

    def plain_mask(self, utf8: int, room: int) -> np.ndarray:
        """Sorted-order bool mask of the plain tokens a string at UTF-8 state `utf8` takes, with at most
        `room` more characters (-1: unbounded)."""
        base = self._plain_masks.get(utf8)
        if base is None:
            due, low, high = UTF8_DUE[utf8]
            if due == 0:
                base = self.plain & (self.lead == 0) & self.tail_ok
            else:
                finishes = (self.lead == due) & self.tail_ok
                partial = (self.lead == self.length) & (self.length < due)
                base = self.plain & (self.first >= low) & (self.first <= high) & (finishes | partial)
            self._plain_masks[utf8] = base
        return base if room < 0 else base & (self.chars <= room)


def _utf8_ok(data: bytes) -> bool:
    """Whether bytes are well-formed UTF-8 from a character boundary (the last character may be cut)."""
    u = 0
    for b in data:
        u = UTF8[u][b]
        if u < 0:
            return False
    return True


class GrammarMasks:
    """The masks of one grammar over one vocabulary, cached per state (shared by its requests)."""

    def __init__(self, grammar: JsonGrammar, vocabulary: Vocabulary, cache_size: int = MASK_CACHE):
        self.grammar, self.vocabulary = grammar, vocabulary
        self._cache: collections.OrderedDict[State, np.ndarray] = collections.OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self.stats = {"hits": 0, "misses": 0}

    def constraint(self) -> JsonConstraint:
        """A fresh constraint for one request."""
        return JsonConstraint(self)

    def mask(self, state: State) -> np.ndarray:
        """Bool [vocab]: the tokens whose bytes keep `state` a valid prefix (stop tokens not included)."""
        with self._lock:
            packed = self._cache.get(state)
            if packed is not None:
                self._cache.move_to_end(state)
                self.stats["hits"] += 1
        if packed is None:
            v = self.vocabulary
            found = np.zeros(v.order.size, dtype=bool)
            self._fill(state, found)
            ids = np.zeros(v.size, dtype=bool)
            ids[v.order] = found
            packed = np.packbits(ids)
            with self._lock:
                self.stats["misses"] += 1
                self._cache[state] = packed
                if len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return np.unpackbits(packed, count=self.vocabulary.size).view(bool)

    def _plain_parts(self, state: State) -> list[tuple[int, int]] | None:
        """(UTF-8 state, room) per configuration where every one is inside free text (a string outside
        an escape, or a key no named property has); None otherwise."""
        parts = []
        for stack in state:
            top = stack[-1] if stack else None
            if top is None:
                return None
            if top[0] == K_STR and top[2] == 0:
                high = self.grammar.specs[top[1]][2]
                parts.append((top[3], high - top[4] if high >= 0 else -1))
            elif top[0] == K_KEY and not top[2]:
                parts.append((top[4], -1))
            else:
                return None
        return parts

    def _fill(self, state: State, found: np.ndarray) -> None:
        """Mark (sorted order) the tokens the automaton accepts from `state`: plain tokens in bulk where
        the state is free text, the rest by walking the trie."""
        v, step = self.vocabulary, self.grammar.step
        parts = self._plain_parts(state)
        bulk_root = parts is not None
        for utf8, room in parts or ():
            found |= v.plain_mask(utf8, room)
        # a key still matching named properties turns into free text once it leaves them all: from there
        # the plain tokens below are decided in bulk too, by their UTF-8 shape from the key's start
        key_utf8 = None
        if not bulk_root and all(stack and stack[-1][0] == K_KEY for stack in state):
            starts = {stack[-1][4] for stack in state}         # keys of anyOf's objects start together
            key_utf8 = starts.pop() if len(starts) == 1 else None
        children, lo, hi, ends, special = v.children, v.lo, v.hi, v.ends, v.special
        todo = [(0, state, True, bulk_root)]
        while todo:
            node, st, plain_path, bulk = todo.pop()
            for b, child in children[node]:
                if bulk and not special[child]:
                    continue
                nxt = step(st, b)
                if not nxt:
                    continue
                if ends[child]:
                    found[lo[child]:lo[child] + ends[child]] = True
                plain = plain_path and bool(_PLAIN[b])
                below = bulk
                if not bulk and key_utf8 is not None and plain and self._plain_parts(nxt) is not None:
                    found[lo[child]:hi[child]] |= v.plain_mask(key_utf8, -1)[lo[child]:hi[child]]
                    below = True
                if children[child]:
                    todo.append((child, nxt, plain, below))


class JsonConstraint:
    """One request's place in its grammar: which tokens may come next, and whether the value is done."""

    def __init__(self, masks: GrammarMasks):
        self.masks = masks
        self.state = masks.grammar.start()
        self.tokens = 0

    @property
    def vocab_size(self) -> int:
        return self.masks.vocabulary.size

    @property
    def started(self) -> bool:
        return self.tokens > 0

    @property
    def complete(self) -> bool:
        """The output so far is a whole value."""
        return self.masks.grammar.complete(self.state)

    @property
    def finished(self) -> bool:
        """The output is a whole value and nothing may follow it: generation ends here."""
        return self.complete and not self.masks.grammar.can_continue(self.state)

    def allowed(self, stop_ids: Iterable[int]) -> np.ndarray:
        """Bool [vocab] of the tokens that may come next; the stop ids only once the value is complete.
        LoomError when no token can (a vocabulary missing a byte the value needs)."""
        mask = self.masks.mask(self.state)
        stops = [i for i in stop_ids if 0 <= i < mask.size]
        if stops:
            mask[stops] = self.complete
        if not mask.any():
            raise LoomError("no token of the vocabulary continues the JSON output here")
        return mask

    def push(self, token: int) -> None:
        """Advance past a chosen token (one `allowed` let through)."""
        piece = self.masks.vocabulary.pieces[token] if 0 <= token < self.vocab_size else None
        state = self.masks.grammar.advance(self.state, piece) if piece else frozenset()
        if not state:
            raise LoomError(f"token {token} ({piece!r}) does not continue the JSON output")
        self.state = state
        self.tokens += 1


_MASKS: collections.OrderedDict[tuple[Vocabulary, str], GrammarMasks] = collections.OrderedDict()
_MASKS_LOCK = threading.Lock()
GRAMMARS_KEPT = 16


def grammar_masks(vocabulary: Vocabulary, key: str, build: Callable[[], JsonGrammar]) -> GrammarMasks:
    """The GrammarMasks for a grammar named `key` (e.g. its schema's JSON) over a vocabulary: built by
    `build` the first time, then shared, so its cached masks serve every request with that schema
    (the last GRAMMARS_KEPT are kept)."""
    with _MASKS_LOCK:
        masks = _MASKS.get((vocabulary, key))
        if masks is not None:
            _MASKS.move_to_end((vocabulary, key))
            return masks
    masks = GrammarMasks(build(), vocabulary)
    with _MASKS_LOCK:
        masks = _MASKS.setdefault((vocabulary, key), masks)
        while len(_MASKS) > GRAMMARS_KEPT:
            _MASKS.popitem(last=False)
    return masks


__all__ = ["token_pieces", "Vocabulary", "GrammarMasks", "JsonConstraint", "grammar_masks", "UTF8_STATES"]

"""The BPE model: words to ids by merging adjacent pieces, lowest merge rank first."""
from __future__ import annotations

import heapq

from loom.llm.tokenizers_py._common import Component, component_type, refuse_missing, unsupported

__getattr__ = refuse_missing("models")

CACHE_CAPACITY = 10_000       # words remembered, as the library's default cache


class Model(Component):
    """What turns one pre-tokenized word into ids."""


class BPE(Model):
    """Byte-pair encoding with the library's merge order: of all adjacent pairs that have a merge, the one
    of lowest rank merges first, the leftmost among equals (its heap of (rank, position))."""

    def __init__(self, vocab: dict[str, int] | None = None, merges: list[tuple[str, str]] | None = None,
                 cache_capacity: int | None = None, dropout: float | None = None, unk_token: str | None = None,
                 continuing_subword_prefix: str | None = None, end_of_word_suffix: str | None = None,
                 fuse_unk: bool | None = None, byte_fallback: bool | None = None,
                 ignore_merges: bool | None = None):
        if byte_fallback:
            raise unsupported("BPE with byte_fallback (SentencePiece's <0xXX> tokens)")
        if dropout:
            raise unsupported("BPE dropout")
        if continuing_subword_prefix or end_of_word_suffix:
            raise unsupported("a BPE continuing_subword_prefix or end_of_word_suffix")
        self.vocab = dict(vocab or {})
        self.unk_token = unk_token
        self.fuse_unk = bool(fuse_unk)
        self.ignore_merges = bool(ignore_merges)
        self.dropout = None
        self.byte_fallback = False
        self.continuing_subword_prefix = self.end_of_word_suffix = None
        self._capacity = CACHE_CAPACITY if cache_capacity is None else int(cache_capacity)
        self._tokens = {i: t for t, i in self.vocab.items()}
        # (left id, right id) -> (rank, merged id); a pair listed twice keeps its last rank, as the
        # library's HashMap does
        self._merges: dict[tuple[int, int], tuple[int, int]] = {}
        for rank, merge in enumerate(merges or []):
            parts = merge.split(" ") if isinstance(merge, str) else list(merge)
            if len(parts) != 2:
                raise ValueError(f"Error while initializing BPE: merge {merge!r} is not two tokens")
            left, right = parts
            ids = [self.vocab.get(t) for t in (left, right, left + right)]
            missing = next((t for t, i in zip((left, right, left + right), ids) if i is None), None)
            if missing is not None:
                raise ValueError(f"Error while initializing BPE: MergeTokenOutOfVocabulary({missing!r})")
            self._merges[ids[0], ids[1]] = (rank, ids[2])
        self._cache: dict[str, tuple[int, ...]] = {}

    def get_vocab(self) -> dict[str, int]:
        return dict(self.vocab)

    def get_vocab_size(self) -> int:
        return len(self.vocab)

    def token_to_id(self, token: str) -> int | None:
        return self.vocab.get(token)

    def id_to_token(self, id: int) -> str | None:      # noqa: A002  (the library's parameter name)
        return self._tokens.get(id)

    def tokenize_ids(self, word: str) -> tuple[int, ...]:
        """The ids of one word (a piece the pre-tokenizers made)."""
        if not word:
            return ()
        if self.ignore_merges and word in self.vocab:
            return (self.vocab[word],)
        ids = self._cache.get(word)
        if ids is None:
            ids = self._merge_word(word)
            if len(self._cache) < self._capacity:
                self._cache[word] = ids
        return ids

    def _merge_word(self, word: str) -> tuple[int, ...]:
        symbols: list[int] = []
        unk_id = None if self.unk_token is None else self.vocab.get(self.unk_token)
        pending_unk = False
        for char in word:
            token_id = self.vocab.get(char)
            if token_id is not None:
                if pending_unk:
                    symbols.append(unk_id)
                    pending_unk = False
                symbols.append(token_id)
            elif self.unk_token is not None:
                # no token for this character: the unknown token, one per run of them with fuse_unk
                if unk_id is None:
                    raise ValueError(f"Unk token `{self.unk_token}` not found in the vocabulary")
                if pending_unk and not self.fuse_unk:
                    symbols.append(unk_id)
                pending_unk = True
            # else the character is dropped, as the library drops it
        if pending_unk:
            symbols.append(unk_id)
        return tuple(self._merge_all(symbols))

    def _merge_all(self, ids: list[int]) -> list[int]:
        merges, n = self._merges, len(ids)
        if n < 2:
            return ids
        following = list(range(1, n)) + [-1]
        preceding = list(range(-1, n - 1))
        alive = [True] * n
        heap = []
        for pos in range(n - 1):
            merge = merges.get((ids[pos], ids[pos + 1]))
            if merge is not None:
                heap.append((merge[0], pos, merge[1]))
        heapq.heapify(heap)
        while heap:
            _, pos, new_id = heapq.heappop(heap)
            right = following[pos]
            if not alive[pos] or right < 0:
                continue
            merge = merges.get((ids[pos], ids[right]))
            if merge is None or merge[1] != new_id:       # an entry the merges since have outdated
                continue
            ids[pos] = new_id
            alive[right] = False
            after = following[right]
            following[pos] = after
            if after >= 0:
                preceding[after] = pos
                merge = merges.get((new_id, ids[after]))
                if merge is not None:
                    heapq.heappush(heap, (merge[0], pos, merge[1]))
            before = preceding[pos]
            if before >= 0:
                merge = merges.get((ids[before], new_id))
                if merge is not None:
                    heapq.heappush(heap, (merge[0], before, merge[1]))
        return [token_id for token_id, keep in zip(ids, alive) if keep]

    def to_json(self) -> dict:
        ranked = sorted(self._merges.items(), key=lambda item: item[1][0])
        return {"type": "BPE", "dropout": None, "unk_token": self.unk_token, "continuing_subword_prefix": None,
                "end_of_word_suffix": None, "fuse_unk": self.fuse_unk, "byte_fallback": False,
                "ignore_merges": self.ignore_merges,
                "vocab": dict(sorted(self.vocab.items(), key=lambda item: item[1])),
                "merges": [[self._tokens[a], self._tokens[b]] for (a, b), _ in ranked]}


def from_json(state: dict) -> Model:
    """The model a tokenizer.json "model" object describes."""
    kind = component_type(state, "model")
    if kind != "BPE":
        raise unsupported(f"the model {kind!r}")
    return BPE(vocab=state.get("vocab"), merges=state.get("merges"), dropout=state.get("dropout"),
               unk_token=state.get("unk_token"), continuing_subword_prefix=state.get("continuing_subword_prefix"),
               end_of_word_suffix=state.get("end_of_word_suffix"), fuse_unk=state.get("fuse_unk"),
               byte_fallback=state.get("byte_fallback"), ignore_merges=state.get("ignore_merges"))


Model._from_json = staticmethod(from_json)

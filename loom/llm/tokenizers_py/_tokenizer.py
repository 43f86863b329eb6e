"""The Tokenizer: added tokens cut out first, then normalizer, pre-tokenizer, BPE and post-processor; and
decode. Mirrors tokenizers' TokenizerImpl and AddedVocabulary (tokenizers/src/tokenizer/)."""
from __future__ import annotations

import json
import os
import re

from loom.llm.tokenizers_py import decoders, models, normalizers, pre_tokenizers, processors
from loom.llm.tokenizers_py._common import dumps, unsupported
from loom.llm.tokenizers_py._unicode import char_class

_FLAGS = ("single_word", "lstrip", "rstrip", "normalized", "special")


class AddedToken:
    """A token matched whole in the text before anything else runs. `normalized` defaults to `not special`
    (decided when the token is added, so add_special_tokens makes an unset one False, as in the library)."""

    def __init__(self, content: str = "", single_word: bool = False, lstrip: bool = False, rstrip: bool = False,
                 normalized: bool | None = None, special: bool = False):
        if not isinstance(content, str):
            raise TypeError(f"AddedToken content must be a str, got {type(content).__name__}")
        self.content = content
        self.single_word, self.lstrip, self.rstrip = bool(single_word), bool(lstrip), bool(rstrip)
        self._normalized = None if normalized is None else bool(normalized)
        self.special = bool(special)

    @property
    def normalized(self) -> bool:
        return not self.special if self._normalized is None else self._normalized

    def to_json(self) -> dict:
        return {"content": self.content, **{flag: getattr(self, flag) for flag in _FLAGS}}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AddedToken) and self.to_json() == other.to_json()

    def __hash__(self) -> int:
        return hash(self.content)

    def __str__(self) -> str:
        return self.content

    def __repr__(self) -> str:
        flags = ", ".join(f"{flag}={getattr(self, flag)}" for flag in ("rstrip", "lstrip", "single_word",
                                                                       "normalized", "special"))
        return f"AddedToken({json.dumps(self.content, ensure_ascii=False)}, {flags})"


class Encoding:
    """What encode returns: `ids`, and `tokens` (each id's string)."""

    def __init__(self, ids: list[int], tokens: list[str]):
        self.ids, self.tokens = ids, tokens

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"Encoding(num_tokens={len(self.ids)}, attributes=[ids, tokens])"


class Tokenizer:
    """A byte-level BPE pipeline with the library's Tokenizer interface (the part Loom uses)."""

    def __init__(self, model: models.Model):
        if not isinstance(model, models.Model):
            raise TypeError(f"Tokenizer takes a model (models.BPE), got {type(model).__name__}")
        self._model = model
        self._normalizer = self._pre_tokenizer = self._post_processor = self._decoder = None
        self._truncation = self._padding = None
        self._added_ids: dict[str, int] = {}             # content -> id, every added token
        self._added: dict[int, AddedToken] = {}          # id -> its token (a copy: later edits don't count)
        self._special: set[str] = set()                  # contents of special tokens (never shrinks, as in
        #                                                  the library: re-adding one as plain keeps it special)
        self._raw_match = self._normalized_match = None  # leftmost-longest matchers, on raw / normalized text

    # ---- the pipeline's parts -------------------------------------------------------------------------
    @property
    def model(self) -> models.Model:
        return self._model

    @model.setter
    def model(self, model: models.Model) -> None:
        if not isinstance(model, models.Model):
            raise TypeError(f"expected a model (models.BPE), got {type(model).__name__}")
        self._model = model

    @property
    def normalizer(self) -> normalizers.Normalizer | None:
        return self._normalizer

    @normalizer.setter
    def normalizer(self, normalizer: normalizers.Normalizer | None) -> None:
        self._normalizer = _checked(normalizer, normalizers.Normalizer, "normalizer")
        self._refresh()

    @property
    def pre_tokenizer(self) -> pre_tokenizers.PreTokenizer | None:
        return self._pre_tokenizer

    @pre_tokenizer.setter
    def pre_tokenizer(self, pre_tokenizer: pre_tokenizers.PreTokenizer | None) -> None:
        self._pre_tokenizer = _checked(pre_tokenizer, pre_tokenizers.PreTokenizer, "pre_tokenizer")

    @property
    def post_processor(self) -> processors.PostProcessor | None:
        return self._post_processor

    @post_processor.setter
    def post_processor(self, post_processor: processors.PostProcessor | None) -> None:
        self._post_processor = _checked(post_processor, processors.PostProcessor, "post_processor")

    @property
    def decoder(self) -> decoders.Decoder | None:
        return self._decoder

    @decoder.setter
    def decoder(self, decoder: decoders.Decoder | None) -> None:
        self._decoder = _checked(decoder, decoders.Decoder, "decoder")

    @property
    def padding(self) -> dict | None:
        return self._padding

    @property
    def truncation(self) -> dict | None:
        return self._truncation

    def no_padding(self) -> None:
        self._padding = None

    def no_truncation(self) -> None:
        self._truncation = None

    # ---- vocabulary ------------------------------------------------------------------------------------
    def add_tokens(self, tokens: list[str | AddedToken]) -> int:
        """Add tokens (a str is a plain, normalized one); returns how many were new or changed."""
        return self._add(tokens, special=False)

    def add_special_tokens(self, tokens: list[str | AddedToken]) -> int:
        """Add tokens as special ones (skipped by decode(skip_special_tokens=True))."""
        return self._add(tokens, special=True)

    def get_added_tokens_decoder(self) -> dict[int, AddedToken]:
        return {i: _copy(self._added[i]) for i in sorted(self._added)}

    def get_vocab(self, with_added_tokens: bool = True) -> dict[str, int]:
        vocab = self._model.get_vocab()
        if with_added_tokens:
            vocab.update(self._added_ids)
        return vocab

    def get_vocab_size(self, with_added_tokens: bool = True) -> int:
        size = self._model.get_vocab_size()
        if with_added_tokens:
            size += sum(1 for content in self._added_ids if self._model.token_to_id(content) is None)
        return size

    def token_to_id(self, token: str) -> int | None:
        found = self._added_ids.get(token)
        return self._model.token_to_id(token) if found is None else found

    def id_to_token(self, id: int) -> str | None:        # noqa: A002  (the library's parameter name)
        token = self._added.get(id)
        return self._model.id_to_token(id) if token is None else token.content

    # ---- use -------------------------------------------------------------------------------------------
    def encode(self, sequence: str, pair: str | None = None, is_pretokenized: bool = False,
               add_special_tokens: bool = True) -> Encoding:
        """The ids of one text (pairs, pre-tokenized input, padding and truncation are refused)."""
        if pair is not None or is_pretokenized:
            raise unsupported("encoding pairs or pre-tokenized input")
        if not isinstance(sequence, str):
            raise TypeError(f"TextInputSequence must be str, got {type(sequence).__name__}")
        if self._padding is not None or self._truncation is not None:
            raise unsupported("padding and truncation (call no_padding() and no_truncation() first)")
        ids, tokens = [], []
        for piece, token_id in self._cut_added_tokens(sequence):
            if token_id is not None:
                ids.append(token_id)
                tokens.append(piece)
                continue
            words = [piece] if self._pre_tokenizer is None else self._pre_tokenizer.pre_tokenize_pieces([piece])
            for word in words:
                for token_id in self._model.tokenize_ids(word):
                    ids.append(token_id)
                    tokens.append(self._model.id_to_token(token_id))
        if self._post_processor is not None:
            ids, tokens = self._post_processor.process(ids, tokens, bool(add_special_tokens))
        return Encoding(ids, tokens)

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        """The text of `ids`; ids outside the vocabulary are left out, as the library leaves them out."""
        tokens = []
        for token_id in ids:
            token = self.id_to_token(token_id)
            if token is not None and not (skip_special_tokens and token in self._special):
                tokens.append(token)
        return " ".join(tokens) if self._decoder is None else self._decoder.decode(tokens)

    # ---- tokenizer.json --------------------------------------------------------------------------------
    @staticmethod
    def from_str(json_string: str) -> Tokenizer:
        """From the text of a tokenizer.json."""
        state = json.loads(json_string)
        if not isinstance(state, dict):
            raise ValueError(f"a tokenizer.json holds a JSON object, got {type(state).__name__}")
        if state.get("version", "1.0") != "1.0":
            raise ValueError(f"Unknown tokenizer version '{state['version']}'")
        if not isinstance(state.get("model"), dict):
            raise ValueError("missing field `model`")
        tokenizer = Tokenizer(models.from_json(state["model"]))
        for name, module in (("normalizer", normalizers), ("pre_tokenizer", pre_tokenizers),
                             ("post_processor", processors), ("decoder", decoders)):
            if state.get(name) is not None:
                setattr(tokenizer, name, module.from_json(state[name]))
        tokenizer._truncation, tokenizer._padding = state.get("truncation"), state.get("padding")
        added = state.get("added_tokens") or []
        tokenizer.add_tokens([AddedToken(entry["content"], **{flag: entry.get(flag, False) for flag in _FLAGS})
                              for entry in added])
        return tokenizer

    @staticmethod
    def from_file(path: str | os.PathLike[str]) -> Tokenizer:
        """From a tokenizer.json file."""
        with open(path, encoding="utf-8") as file:
            return Tokenizer.from_str(file.read())

    def to_str(self, pretty: bool = False) -> str:
        """This tokenizer as tokenizer.json text, as the library writes it."""
        part = lambda value: None if value is None else value.to_json()      # noqa: E731
        state = {"version": "1.0", "truncation": self._truncation, "padding": self._padding,
                 "added_tokens": [{"id": i, **self._added[i].to_json()} for i in sorted(self._added)],
                 "normalizer": part(self._normalizer), "pre_tokenizer": part(self._pre_tokenizer),
                 "post_processor": part(self._post_processor), "decoder": part(self._decoder),
                 "model": self._model.to_json()}
        return dumps(state, pretty)

    def save(self, path: str, pretty: bool = True) -> None:
        """Write tokenizer.json."""
        with open(path, "w", encoding="utf-8") as file:
            file.write(self.to_str(pretty))

    # ---- internals -------------------------------------------------------------------------------------
    def _add(self, tokens, special: bool) -> int:
        model_size = self._model.get_vocab_size()
        top = max(self._added, default=None)
        next_id = model_size if top is None else top + 1 if top >= model_size or model_size == 0 else model_size
        count = 0
        for token in tokens:
            if isinstance(token, str):
                token = AddedToken(token, special=special)
            elif isinstance(token, AddedToken):
                if special:
                    token.special = True      # the library sets it on the caller's object too
            else:
                raise TypeError("Input must be a List[Union[str, AddedToken]]")
            if token.single_word:
                raise unsupported(f"the added token {token.content!r} with single_word=True")
            if not token.content:
                continue
            known = self._added_ids.get(token.content)
            if known is not None and self._added[known] == token:
                continue
            token_id = self.token_to_id(token.content)
            if token_id is None:
                token_id, next_id = next_id, next_id + 1
            self._added_ids[token.content] = token_id
            if token.special:
                self._special.add(token.content)
            self._added[token_id] = _copy(token)
            count += 1
        self._refresh()
        return count

    def _refresh(self) -> None:
        """Rebuild the matchers after tokens or the normalizer changed."""
        raw, normalized = [], []
        for token in self._added.values():
            if token.normalized and self._normalizer is not None and \
                    self._normalizer.normalize_str(token.content) != token.content:
                # the library then matches (and decodes) the normalized form, differently across versions
                raise unsupported(f"the added token {token.content!r}, which its normalizer changes")
            (normalized if token.normalized else raw).append(token.content)
        self._raw_match, self._normalized_match = _matcher(raw), _matcher(normalized)

    def _cut_added_tokens(self, text: str) -> list[tuple[str, int | None]]:
        """AddedVocabulary::extract_and_normalize: (piece, added token id or None), no empty pieces."""
        out = []
        for piece, token_id in self._find(text, self._raw_match):
            if token_id is None and self._normalizer is not None:
                out += self._find(self._normalizer.normalize_str(piece), self._normalized_match)
            elif token_id is None:
                out += self._find(piece, self._normalized_match)
            else:
                out.append((piece, token_id))
        return [(piece, token_id) for piece, token_id in out if piece]

    def _find(self, text: str, matcher: re.Pattern | None) -> list[tuple[str, int | None]]:
        """AddedVocabulary::find_matches, lstrip and rstrip included."""
        if matcher is None or not text:
            return [(text, None)]
        out, done = [], 0
        for match in matcher.finditer(text):
            start, stop = match.span()
            token_id = self._added_ids[match.group()]
            token = self._added[token_id]
            if token.lstrip:          # take the white space before it (not what a previous token took)
                start = max(start - _trailing_space(text[:start]), done)
            if token.rstrip:
                stop += _leading_space(text[stop:])
            if done < start:
                out.append((text[done:start], None))
            out.append((text[start:stop], token_id))
            done = stop
        if done != len(text):
            out.append((text[done:], None))
        return out


def _matcher(contents: list[str]) -> re.Pattern | None:
    # Longest first: at the leftmost position where any token starts, the longest one wins, which is
    # the library's leftmost-longest Aho-Corasick match.
    if not contents:
        return None
    return re.compile("|".join(re.escape(c) for c in sorted(contents, key=len, reverse=True)))


def _leading_space(text: str) -> int:
    # Rust regex \s is Unicode White_Space, the "s" table
    space, n = char_class("s"), 0
    while n < len(text) and space.match(text, n):
        n += 1
    return n


def _trailing_space(text: str) -> int:
    space, n = char_class("s"), len(text)
    while n > 0 and space.match(text, n - 1):
        n -= 1
    return len(text) - n


def _copy(token: AddedToken) -> AddedToken:
    return AddedToken(token.content, token.single_word, token.lstrip, token.rstrip, token.normalized, token.special)


def _checked(component, kind, name):
    if component is not None and not isinstance(component, kind):
        raise TypeError(f"{name}: expected a {kind.__module__.rsplit('.', 1)[-1]} object, "
                        f"got {type(component).__name__}")
    return component

"""Text <-> token ids for Loom's language models, exact to the model's own tokenizer.

    tok = Tokenizer.from_dir("model/")          # HuggingFace folder: tokenizer.json (+ tokenizer_config.json,
                                                # special_tokens_map.json, generation_config.json, chat_template.jinja)
    tok = Tokenizer.from_gguf(gguf.metadata)    # the vocabulary stored in a GGUF file (tokenizer_gguf.py)
    ids = tok.encode("Hello"); text = tok.decode(ids)
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}])

The work is done by HuggingFace's `tokenizers` (the `llm` extra, imported only when a tokenizer is built).
Where it is not installed (Pyodide), or LOOM_PURE_TOKENIZER=1 asks for it, loom.llm.tokenizers_py stands in:
a pure-Python version of the same calls giving the same ids for byte-level BPE (GPT-2-style GGUF vocabularies
such as SmolLM2's); other tokenizers then raise BackendError asking for `tokenizers`.
Where Loom deliberately differs from running that library on the same files:

* encode returns one text's ids, never padded or truncated. A tokenizer.json may ask for both (all-MiniLM's
  pads and truncates to 128); padding belongs to batching (the encoder pads and masks), and truncation
  would drop text silently, so the model checks the length against its context instead.
* BOS/EOS are what tokenizer.json's post-processor adds (tokenizer_config.json's add_bos_token and
  add_eos_token are ignored then, as transformers 5 ignores them); only a tokenizer.json without a
  post-processor lets those flags decide.
* A character the vocabulary cannot spell (byte-level BPE with no token for one of its bytes and no unknown
  token; SmolLM2 has none for "\\x04") raises ConfigError, where `tokenizers` would drop it.
* decode gives back added tokens whose text is not in the byte-level alphabet verbatim; the library's
  ByteLevel decoder drops them. Together with the above, decode(encode(text)) == text for byte-level BPE.

Streaming: `stream_decoder()` turns ids into text pieces as they are generated. A piece is emitted only
once later ids cannot change it: not while the text ends in U+FFFD (a UTF-8 character whose bytes are
still arriving), not while a run of SentencePiece <0xXX> byte tokens is open (the library turns a whole
run into U+FFFDs if any of it is invalid), and for decoders whose output for one token depends on the
next (WordPiece's clean-up joins "it ' s" into "it's") only the text common to the decodes with and
without the newest token. The pieces always add up to decode(all ids).
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from numbers import Integral
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from loom import atomic
from loom.errors import BackendError, ConfigError, FormatError
from loom.llm import tokenizer_gguf

if TYPE_CHECKING:
    import tokenizers

# Bytes that can occur in UTF-8 text (C0, C1 and F5..FF never do).
_UTF8_BYTES = [b for b in range(256) if b not in (0xC0, 0xC1) and b < 0xF5]
_BYTE_TOKEN = re.compile(r"<0x[0-9A-F]{2}>")
# Decoders whose output for a token does not depend on the tokens after it.
_CONTEXT_FREE_DECODERS = {"ByteLevel", "ByteFallback", "Fuse", "Replace", "Strip", "Metaspace"}


def _tokenizers():
    """The `tokenizers` module, or Loom's pure-Python stand-in (byte-level BPE only) where that is missing or
    LOOM_PURE_TOKENIZER=1 forces it; the stand-in raises BackendError for tokenizers it cannot run."""
    if os.environ.get("LOOM_PURE_TOKENIZER") != "1":
        try:
            import tokenizers
            return tokenizers
        except ImportError:
            pass
    from loom.llm import tokenizers_py
    return tokenizers_py


class Tokenizer:
    """A model's tokenizer. Build it with `from_dir` or `from_gguf`."""

    def __init__(self, backend: tokenizers.Tokenizer, *, bos_id: int | None = None, eos_ids: Iterable[int] = (),
                 pad_id: int | None = None, unk_id: int | None = None, chat_template: str | None = None):
        self._tk = backend
        self.vocab_size = backend.get_vocab_size(with_added_tokens=True)
        self.bos_id, self.eos_ids, self.pad_id, self.unk_id = bos_id, tuple(eos_ids), pad_id, unk_id
        self.chat_template = chat_template
        self.bos_token, self.eos_token, self.pad_token, self.unk_token = (
            None if i is None else backend.id_to_token(i)
            for i in (bos_id, self.eos_ids[0] if self.eos_ids else None, pad_id, unk_id))
        added = backend.get_added_tokens_decoder()
        self._added = {i: t.content for i, t in added.items()}
        self._special_ids = {i for i, t in added.items() if t.special}
        decoder = _state(backend.decoder)
        byte_level = _has_step(decoder, "ByteLevel")
        alphabet = tokenizer_gguf.byte_to_char()
        spelled = set(alphabet.values())
        # Added tokens the ByteLevel decoder cannot map back to bytes; decode inserts their text itself.
        self._verbatim = {i: text for i, text in self._added.items() if byte_level and not set(text) <= spelled}
        self._context_free = decoder is None or _context_free(decoder)
        # ByteFallback decodes a run of <0xXX> tokens together and, when the run is not valid UTF-8, turns
        # every byte of it into U+FFFD, even one that alone was text: a run is final only once it ends.
        self._byte_tokens = frozenset()
        if _has_step(decoder, "ByteFallback"):
            self._byte_tokens = frozenset(i for t, i in backend.get_vocab().items() if _BYTE_TOKEN.fullmatch(t))
        model = backend.model
        self._unspellable = None
        if byte_level and type(model).__name__ == "BPE" and model.unk_token is None:
            vocab = backend.get_vocab(with_added_tokens=False)
            missing = [b for b in _UTF8_BYTES if alphabet[b] not in vocab]
            if missing:
                self._unspellable = re.compile(b"[" + b"".join(re.escape(bytes([b])) for b in missing) + b"]")

    # ---- construction --------------------------------------------------------------------------------
    @classmethod
    def from_dir(cls, path: str | os.PathLike[str]) -> Tokenizer:
        """From a HuggingFace model folder (tokenizer.json required)."""
        tk = _tokenizers()
        folder = Path(path)
        if not folder.is_dir():
            raise ConfigError(str(folder), "not a directory (a tokenizer is read from a model folder)")
        file = folder / "tokenizer.json"
        if not file.is_file():
            raise ConfigError(str(folder), "no tokenizer.json (the model's tokenizer) in this folder")
        try:
            backend = tk.Tokenizer.from_file(str(file))
        except BackendError:                # the pure-Python stand-in cannot run this tokenizer
            raise
        except Exception as exc:      # tokenizers raises plain Exception with serde's message
            raise FormatError(f"{file}: not a valid tokenizer.json: {exc}") from exc
        backend.no_padding()
        backend.no_truncation()
        config = _read_json(folder / "tokenizer_config.json")
        # transformers reads the legacy special_tokens_map.json only for configs without
        # added_tokens_decoder, and then lets it override tokenizer_config.json
        special_map = {} if "added_tokens_decoder" in config else _read_json(folder / "special_tokens_map.json")
        generation = _read_json(folder / "generation_config.json")
        n = backend.get_vocab_size(with_added_tokens=True)

        def token(name):
            for source, where in ((special_map, "special_tokens_map.json"), (config, "tokenizer_config.json")):
                if source.get(name) is not None:
                    text = _token_text(source[name], f"{where}:{name}")
                    token_id = backend.token_to_id(text)
                    if token_id is None:
                        raise ConfigError(f"{where}:{name}", f"{text!r} is not in the vocabulary of {file}")
                    return text, token_id
            return None

        def ids(name):
            value = generation.get(name)
            values = value if isinstance(value, list) else [] if value is None else [value]
            for v in values:
                if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < n:
                    raise ConfigError(f"generation_config.json:{name}", f"{v!r} is not a token id in [0, {n})")
            return values

        bos, eos, pad, unk = (token(k) for k in ("bos_token", "eos_token", "pad_token", "unk_token"))
        if backend.post_processor is None:
            # No rule in tokenizer.json: tokenizer_config.json's flags say whether to add BOS/EOS. (When
            # tokenizer.json has a post-processor, transformers 5 ignores the flags and so does Loom.)
            flags = {}
            for key, tok in (("add_bos_token", bos), ("add_eos_token", eos)):
                flags[key] = config.get(key, False)
                if not isinstance(flags[key], bool):
                    raise ConfigError(f"tokenizer_config.json:{key}", f"expected true or false, got {flags[key]!r}")
                if flags[key] and tok is None:
                    raise ConfigError(f"tokenizer_config.json:{key}", f"is true but no {key[4:]} is defined")
            backend.post_processor = tokenizer_gguf.template(tk, bos if flags["add_bos_token"] else None,
                                                             eos if flags["add_eos_token"] else None)
        bos_id = bos[1] if bos else next(iter(ids("bos_token_id")), None)
        eos_ids = dict.fromkeys(([eos[1]] if eos else []) + ids("eos_token_id"))
        pad_id = pad[1] if pad else next(iter(ids("pad_token_id")), None)
        return cls(backend, bos_id=bos_id, eos_ids=tuple(eos_ids), pad_id=pad_id,
                   unk_id=unk[1] if unk else None, chat_template=_chat_template(folder, config))

    @classmethod
    def from_gguf(cls, metadata: dict) -> Tokenizer:
        """From a GGUF file's metadata dict (keys "tokenizer.ggml.*", "tokenizer.chat_template")."""
        built = tokenizer_gguf.build(metadata, _tokenizers())
        return cls(built.backend, bos_id=built.bos_id, eos_ids=built.eos_ids, pad_id=built.pad_id,
                   unk_id=built.unk_id, chat_template=built.chat_template)

    # ---- use -----------------------------------------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`; with `add_special_tokens`, the BOS/EOS (or [CLS]/[SEP]) the model expects."""
        if not isinstance(text, str):
            raise ConfigError("text", f"expected a str, got {type(text).__name__}")
        try:
            raw = text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ConfigError("text", f"index {exc.start}: lone surrogate {text[exc.start]!r} "
                              "is not valid Unicode text") from None
        if self._unspellable is not None and self._unspellable.search(raw):
            self._check_spellable(text)
        return self._tk.encode(text, add_special_tokens=bool(add_special_tokens)).ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """The text of `ids`; `skip_special_tokens` leaves out control tokens (BOS, EOS, <|im_start|>...)."""
        return self._decode(self._check_ids(ids), skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self._tk.token_to_id(token)

    def id_to_token(self, token_id: int) -> str:
        return self._tk.id_to_token(self._check_ids([token_id])[0])

    def stream_decoder(self, skip_special_tokens: bool = False) -> StreamDecoder:
        """An incremental decoder for generated ids (see the module docstring)."""
        return StreamDecoder(self, skip_special_tokens)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True, **extra: Any) -> str:
        """The prompt text for a conversation, rendered with this model's chat template."""
        if self.chat_template is None:
            raise ConfigError("chat_template", "this tokenizer has no chat template (none in "
                              "tokenizer_config.json, chat_template.jinja or the GGUF metadata)")
        from loom.llm import chat
        specials = {name: getattr(self, name) for name in ("bos_token", "eos_token", "pad_token", "unk_token")
                    if getattr(self, name) is not None}
        return chat.render(self.chat_template, messages, add_generation_prompt=add_generation_prompt,
                           **{**specials, **extra})

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write tokenizer.json + tokenizer_config.json (+ generation_config.json for the stop ids).

        transformers.AutoTokenizer.from_pretrained(path) then gives the same ids: the BOS/EOS rules live
        in tokenizer.json's post-processor, which both read; tokenizer_config.json names the special tokens
        and carries the chat template.
        """
        tk = _tokenizers()
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        if self._tk.post_processor is None:
            self._tk.post_processor = tokenizer_gguf.template(tk, None, None)
        atomic.write_bytes(folder / "tokenizer.json", self._tk.to_str().encode("utf-8"))
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False}
        for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
            if getattr(self, name) is not None:
                config[name] = getattr(self, name)
        if self.chat_template is not None:
            config["chat_template"] = self.chat_template
        _write_json(folder / "tokenizer_config.json", config)
        generation = {key: value for key, value in (("bos_token_id", self.bos_id),
                                                    ("eos_token_id", list(self.eos_ids) or None),
                                                    ("pad_token_id", self.pad_id)) if value is not None}
        if generation:
            _write_json(folder / "generation_config.json", generation)

    def __repr__(self):
        return (f"Tokenizer(vocab_size={self.vocab_size}, bos={self.bos_token!r}, eos={self.eos_token!r}, "
                f"chat_template={'yes' if self.chat_template else 'no'})")

    # ---- internals -----------------------------------------------------------------------------------
    def _check_ids(self, ids) -> list[int]:
        if isinstance(ids, np.ndarray):
            if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
                raise ConfigError("ids", f"expected a 1-D integer array, got {ids.dtype} of shape {ids.shape}")
            ids = ids.tolist()
        elif not isinstance(ids, (list, tuple)):
            raise ConfigError("ids", f"expected a list of token ids, got {type(ids).__name__}")
        out = []
        for i, v in enumerate(ids):
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, Integral):
                raise ConfigError(f"ids[{i}]", f"expected an int token id, got {type(v).__name__} {v!r:.40}")
            if not 0 <= int(v) < self.vocab_size:
                raise ConfigError(f"ids[{i}]", f"token id {int(v)} is outside the vocabulary [0, {self.vocab_size})")
            out.append(int(v))
        return out

    def _decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        if not any(i in self._verbatim for i in ids):
            return self._tk.decode(ids, skip_special_tokens=skip_special_tokens)
        parts, run = [], []
        for i in ids + [None]:
            if i is None or i in self._verbatim:
                parts.append(self._tk.decode(run, skip_special_tokens=skip_special_tokens) if run else "")
                run = []
                if i is not None and not (skip_special_tokens and i in self._special_ids):
                    parts.append(self._verbatim[i])
            else:
                run.append(i)
        return "".join(parts)

    def _check_spellable(self, text: str) -> None:
        # Added tokens are matched whole before BPE, so the bytes inside them need no token of their own.
        covered = bytearray(len(text))
        for content in self._added.values():
            for match in re.finditer(re.escape(content), text) if content else ():
                covered[match.start():match.end()] = b"\1" * (match.end() - match.start())
        for index, char in enumerate(text):
            if not covered[index] and self._unspellable.search(char.encode("utf-8")):
                raise ConfigError("text", f"index {index}: character {char!r} (U+{ord(char):04X}) cannot be "
                                  "encoded: the vocabulary has no token for one of its UTF-8 bytes and no "
                                  "unknown token")


class StreamDecoder:
    """Incremental decoding: push(token_id) -> newly final text; flush() -> the rest."""

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = False):
        self._tok, self._skip = tokenizer, bool(skip_special_tokens)
        self._ids: list[int] = []
        self._start = 0        # context-free decoders: ids before this never need decoding again
        self._done = 0         # ids[start:done] have been emitted
        self._emitted = ""     # context-dependent decoders: all text emitted so far

    def push(self, token_id: int) -> str:
        self._ids.append(self._tok._check_ids([token_id])[0])
        decode = lambda ids: self._tok._decode(ids, self._skip)   # noqa: E731
        if self._ids[-1] in self._tok._byte_tokens:      # a byte run may still turn invalid
            return ""
        if self._tok._context_free:
            before, now = decode(self._ids[self._start:self._done]), decode(self._ids[self._start:])
            if len(now) > len(before) and now.startswith(before) and not now.endswith("\ufffd"):
                self._start, self._done = self._done, len(self._ids)
                return now[len(before):]
            return ""
        stable = os.path.commonprefix([decode(self._ids[:-1]), decode(self._ids)]).rstrip("\ufffd")
        if len(stable) > len(self._emitted) and stable.startswith(self._emitted):
            piece, self._emitted = stable[len(self._emitted):], stable
            return piece
        return ""

    def flush(self) -> str:
        """Whatever is still held back (e.g. an unfinished UTF-8 character), and start a new stream."""
        decode = lambda ids: self._tok._decode(ids, self._skip)   # noqa: E731
        if self._tok._context_free:
            before = decode(self._ids[self._start:self._done])
            rest = decode(self._ids[self._start:])[len(before):]
        else:
            rest = decode(self._ids)[len(self._emitted):]
        self.__init__(self._tok, self._skip)
        return rest


def _state(component):
    return None if component is None else json.loads(component.__getstate__())


def _has_step(state, kind) -> bool:
    if state is None:
        return False
    return state.get("type") == kind or any(_has_step(s, kind) for s in state.get("decoders", []))


def _context_free(state) -> bool:
    if state.get("type") == "Sequence":
        return all(_context_free(s) for s in state["decoders"])
    if state.get("type") == "WordPiece":
        return not state.get("cleanup", True)
    return state.get("type") in _CONTEXT_FREE_DECODERS


def _read_json(file: Path) -> dict:
    if not file.is_file():
        return {}
    try:
        value = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise FormatError(f"{file}: not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise FormatError(f"{file}: expected a JSON object, got {type(value).__name__}")
    return value


def _write_json(file: Path, value: dict) -> None:
    atomic.write_bytes(file, (json.dumps(value, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


def _token_text(value, where) -> str:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    if not isinstance(value, str):
        raise ConfigError(where, f"expected a token string or {{\"content\": ...}}, got {value!r:.80}")
    return value


def _chat_template(folder: Path, config: dict) -> str | None:
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    template = config.get("chat_template")
    if template is None or isinstance(template, str):
        return template
    if isinstance(template, list):   # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        if isinstance(named.get("default"), str):
            return named["default"]
        raise ConfigError("tokenizer_config.json:chat_template",
                          f"no template named 'default' among {sorted(map(str, named))}")
    raise ConfigError("tokenizer_config.json:chat_template", f"expected a string, got {type(template).__name__}")

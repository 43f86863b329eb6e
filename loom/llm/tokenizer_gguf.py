"""Rebuild a model's tokenizer from the vocabulary a GGUF file carries in its metadata.

A GGUF has no tokenizer.json. llama.cpp's converter stores the pieces instead, under these keys:

    tokenizer.ggml.model        "gpt2" (byte-level BPE), "llama" (SentencePiece BPE), "bert" (WordPiece)
    tokenizer.ggml.pre          how text is split before BPE (byte-level BPE only): "smollm", "llama-bpe", ...
    tokenizer.ggml.tokens       every token string; a token's id is its index
    tokenizer.ggml.token_type   1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte
    tokenizer.ggml.merges       "left right" strings, best first (byte-level BPE)
    tokenizer.ggml.scores       one float per token (SentencePiece: a higher score merges first)
    tokenizer.ggml.{bos,eos,unknown,padding,seperator,eot,eom}_token_id, add_{bos,eos,sep}_token,
    add_space_prefix, and tokenizer.chat_template

`build(metadata)` turns those into a HuggingFace `tokenizers.Tokenizer` that gives the same ids as the
model's original tokenizer:

* gpt2: byte-level BPE (each UTF-8 byte spelled as one printable character, GPT-2's table) with the file's
  merges, split first as the original tokenizer.json did. The splits are llama.cpp's documented ones; where
  llama.cpp notes that it adapted a regex from the original (the case-insensitive `(?i:'s|...)` of Llama 3
  and Qwen2), the original is used, since HF tokenizers runs it natively. "smollm" splits every numeral
  (0-9, but also ² or ٣) off on its own first: the `Digits(individual_digits=True)` of SmolLM's and
  StarCoder's tokenizer.json, which llama.cpp writes as the regex \\p{N}. "qwen2" also applies Qwen2's
  NFC normalizer (llama.cpp skips it; it matters only for text that is not already NFC).
* llama: SentencePiece BPE as llama.cpp runs it: spaces become U+2581 "▁", a "▁" is prepended to every
  stretch of text (after each special token too), and the adjacent pair whose concatenation is the
  highest-scoring token merges first. That is BPE with one merge rule per (left, right) split of every
  token, ranked by the token's score; characters missing from the vocabulary fall back to <0xXX> tokens.
* bert: WordPiece. llama.cpp stores word-initial pieces with a leading "▁" and continuations bare
  ("##ing" -> "ing"); that is undone, and BERT's uncased normalizer and splitter are used (llama.cpp's
  WPM tokenizer always lowercases). Encoded text is wrapped in [CLS] ... [SEP], as llama.cpp does.

Control and unknown tokens become special added tokens and user-defined ones plain added tokens, so
"<|im_start|>" in text encodes to its one id. Malformed metadata raises FormatError naming the key;
an unsupported tokenizer model or pre-tokenizer raises ConfigError listing the supported ones.
"""
from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral, Real
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from loom.errors import ConfigError, FormatError

if TYPE_CHECKING:
    import tokenizers

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
TOKEN_TYPES = (NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE)
SUPPORTED_MODELS = ("gpt2", "llama", "bert")
SPIECE_SPACE = "\u2581"

# llama.cpp's regexes (src/llama-vocab.cpp). "default" is used when a byte-level file names no
# pre-tokenizer; the four patterns refine each other's pieces in turn.
_DEFAULT_SPLITS = (r"[\p{P}\$\+<=>\^~\|]+",
                   r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)",
                   r"\p{N}+",
                   r"[0-9][0-9][0-9]")
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# tokenizer.ggml.pre (the names llama.cpp accepts) -> how the text is split
PRE_TOKENIZERS = {"default": "default", "gpt2": "gpt2", "gpt-2": "gpt2",
                  "llama-bpe": "llama3", "llama3": "llama3", "llama-v3": "llama3", "falcon3": "llama3",
                  "smollm": "smollm", "starcoder": "smollm",
                  "qwen2": "qwen2", "deepseek-r1-qwen": "qwen2"}


def byte_to_char() -> dict[int, str]:
    """GPT-2's table: every byte as one printable character (printable Latin-1 stays itself)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {b: chr(b) for b in keep}, 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


@dataclass
class GGUFTokenizer:
    """What `build` returns: the pipeline plus what the metadata says about special tokens."""
    backend: object                 # tokenizers.Tokenizer
    bos_id: int | None
    eos_ids: tuple[int, ...]
    pad_id: int | None
    unk_id: int | None
    chat_template: str | None


def build(metadata: dict, tk: ModuleType) -> GGUFTokenizer:
    """The tokenizer GGUF `metadata` describes; `tk` is the imported `tokenizers` module."""
    if not isinstance(metadata, dict):
        raise FormatError(f"GGUF metadata must be a dict, got {type(metadata).__name__}")
    md = _Metadata(metadata)
    model = md.text("tokenizer.ggml.model", required=True)
    if model not in SUPPORTED_MODELS:
        raise ConfigError("tokenizer.ggml.model", f"unsupported tokenizer model {model!r}; "
                          f"supported: {', '.join(SUPPORTED_MODELS)}")
    tokens = md.strings("tokenizer.ggml.tokens", required=True)
    n = len(tokens)
    if n == 0:
        raise FormatError("tokenizer.ggml.tokens: the token list is empty")
    types = md.numbers("tokenizer.ggml.token_type", n, integral=True)
    types = [NORMAL] * n if types is None else [int(t) for t in types]
    bad = next((i for i, t in enumerate(types) if t not in TOKEN_TYPES), None)
    if bad is not None:
        raise FormatError(f"tokenizer.ggml.token_type[{bad}]: {types[bad]} is not a token type "
                          f"(1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte)")
    ids = {name: md.token_id(f"tokenizer.ggml.{name}_token_id", n)
           for name in ("bos", "eos", "unknown", "padding", "seperator", "cls", "eot", "eom")}

    if model == "gpt2":
        pre = md.text("tokenizer.ggml.pre") or "default"
        if pre not in PRE_TOKENIZERS:
            raise ConfigError("tokenizer.ggml.pre", f"unsupported pre-tokenizer {pre!r} for a byte-level BPE "
                              f"vocabulary; supported: {', '.join(PRE_TOKENIZERS)}")
        backend = _byte_level_bpe(md, tk, tokens, PRE_TOKENIZERS[pre])
        bos, eos = ids["bos"], ids["eos"]
        # llama.cpp's defaults when the file has no add_* flags: BOS only for Llama-3-style vocabularies
        add_bos = md.flag("tokenizer.ggml.add_bos_token", PRE_TOKENIZERS[pre] == "llama3")
        add_eos = md.flag("tokenizer.ggml.add_eos_token", False)
    elif model == "llama":
        backend = _sentencepiece_bpe(md, tk, tokens, types, ids["unknown"])
        bos, eos = ids["bos"], ids["eos"]
        add_bos = md.flag("tokenizer.ggml.add_bos_token", True)
        add_eos = md.flag("tokenizer.ggml.add_eos_token", False)
    else:
        backend, tokens = _wordpiece(tk, tokens, types, ids["unknown"])
        # llama.cpp wraps every WordPiece text in [CLS] ... [SEP], whatever the add_* flags say. Files
        # store [CLS] as BOS (older ones as cls_token_id) and [SEP] as the separator (or EOS).
        named = {t: i for i, t in enumerate(tokens) if t in ("[CLS]", "[SEP]") and types[i] == CONTROL}
        bos = next((i for i in (ids["bos"], ids["cls"], named.get("[CLS]")) if i is not None), None)
        eos = next((i for i in (ids["seperator"], ids["eos"], named.get("[SEP]")) if i is not None), None)
        add_bos = add_eos = True
    _add_special_tokens(tk, backend, tokens, types)
    for flag, token_id, name in ((add_bos, bos, "BOS"), (add_eos, eos, "EOS")):
        if flag and token_id is None:
            raise FormatError(f"tokenizer.ggml.{name.lower()}_token_id: missing, but encoded text must "
                              f"start/end with a {name} token ({model!r} vocabulary, add_{name.lower()}_token)")
    backend.post_processor = template(tk, (tokens[bos], bos) if add_bos else None,
                                      (tokens[eos], eos) if add_eos else None, repeat_bos=model != "bert")
    got = backend.get_vocab_size(with_added_tokens=True)
    if got != n:     # an added token that did not map onto its own id
        raise FormatError(f"tokenizer.ggml.tokens: {n} tokens built a vocabulary of {got}")
    eos_ids = tuple(dict.fromkeys(i for i in (eos, ids["eot"], ids["eom"]) if i is not None))
    return GGUFTokenizer(backend, bos, eos_ids, ids["padding"], ids["unknown"],
                         md.text("tokenizer.chat_template"))


def _byte_level_bpe(md, tk, tokens, family):
    merges = md.strings("tokenizer.ggml.merges", required=True)
    vocab = _vocab(tokens)
    pairs = []
    for i, merge in enumerate(merges):
        cut = merge.find(" ", 1)          # llama.cpp's rule: the left piece may itself start with a space
        if cut < 0:
            raise FormatError(f"tokenizer.ggml.merges[{i}]: {merge!r} is not two tokens separated by a space")
        left, right = merge[:cut], merge[cut + 1:]
        for piece in (left, right, left + right):
            if piece not in vocab:
                raise FormatError(f"tokenizer.ggml.merges[{i}]: {merge!r} refers to {piece!r}, "
                                  "which is not in tokenizer.ggml.tokens")
        pairs.append((left, right))
    # No unknown token on purpose: several files name an end-of-text token as "unknown", and a byte
    # with no token is reported by Tokenizer.encode rather than replaced.
    backend = tk.Tokenizer(tk.models.BPE(vocab=vocab, merges=pairs, ignore_merges=family == "llama3"))
    pt = tk.pre_tokenizers
    if family == "gpt2":
        backend.pre_tokenizer = pt.ByteLevel(add_prefix_space=False, use_regex=True)
    elif family == "smollm":
        backend.pre_tokenizer = pt.Sequence([pt.Digits(individual_digits=True),
                                             pt.ByteLevel(add_prefix_space=False, use_regex=True)])
    else:
        splits = {"default": _DEFAULT_SPLITS, "llama3": (_LLAMA3_SPLIT,), "qwen2": (_QWEN2_SPLIT,)}[family]
        backend.pre_tokenizer = pt.Sequence([pt.Split(tk.Regex(r), behavior="isolated") for r in splits]
                                            + [pt.ByteLevel(add_prefix_space=False, use_regex=False)])
    if family == "qwen2":
        backend.normalizer = tk.normalizers.NFC()
    backend.decoder = tk.decoders.ByteLevel()
    return backend


def _sentencepiece_bpe(md, tk, tokens, types, unk_id):
    scores = md.numbers("tokenizer.ggml.scores", len(tokens), integral=False, required=True)
    scores = [float(s) for s in scores]
    if not all(np.isfinite(scores)):
        bad = next(i for i, s in enumerate(scores) if not np.isfinite(s))
        raise FormatError(f"tokenizer.ggml.scores[{bad}]: {scores[bad]} is not a finite score")
    vocab = _vocab(tokens)
    byte_tokens = {f"<0x{b:02X}>" for b in range(256)}
    if unk_id is None:
        unk_id = next((i for i, t in enumerate(types) if t == UNKNOWN), None)
    if unk_id is None and not byte_tokens <= vocab.keys():
        raise FormatError("tokenizer.ggml.tokens: a SentencePiece vocabulary needs the 256 byte tokens "
                          "<0x00>..<0xFF> or an unknown token (tokenizer.ggml.unknown_token_id)")
    # One merge per way of cutting a token into two tokens, best score first: BPE then picks, at every
    # step, the adjacent pair that forms the highest-scoring token, leftmost on ties, as llama.cpp does.
    mergeable = {t for t, ty in zip(tokens, types) if ty != BYTE}
    ranked = sorted((i for i, t in enumerate(tokens) if types[i] != BYTE and len(t) > 1),
                    key=lambda i: (-scores[i], i))
    merges = [(t[:k], t[k:]) for t in (tokens[i] for i in ranked) for k in range(1, len(t))
              if t[:k] in mergeable and t[k:] in mergeable]
    unk = tokens[unk_id] if unk_id is not None else None
    backend = tk.Tokenizer(tk.models.BPE(vocab=vocab, merges=merges, unk_token=unk,
                                         fuse_unk=True, byte_fallback=True))
    prefix = md.flag("tokenizer.ggml.add_space_prefix", True)
    replace = tk.normalizers.Replace(" ", SPIECE_SPACE)
    backend.normalizer = (tk.normalizers.Sequence([tk.normalizers.Prepend(SPIECE_SPACE), replace])
                          if prefix else replace)
    steps = [tk.decoders.Replace(SPIECE_SPACE, " "), tk.decoders.ByteFallback(), tk.decoders.Fuse()]
    if prefix:       # drop the space the encoder prepended
        steps.append(tk.decoders.Strip(" ", 1, 0))
    backend.decoder = tk.decoders.Sequence(steps)
    return backend


def _wordpiece(tk, tokens, types, unk_id):
    """WordPiece model, normalizer and splitter, plus the vocabulary respelled with "##" continuations."""
    if unk_id is None:
        unk_id = next((i for i, t in enumerate(types) if t == UNKNOWN), None)
    if unk_id is None:
        raise FormatError("tokenizer.ggml.unknown_token_id: a WordPiece vocabulary needs an unknown token")
    words = []
    for token, kind in zip(tokens, types):
        # Undo convert_hf_to_gguf.py's "phantom space" spelling; bracketed names were left alone.
        if kind in (CONTROL, UNKNOWN) or (token.startswith("[") and token.endswith("]")):
            words.append(token)
        elif token.startswith(SPIECE_SPACE):
            words.append(token[1:])
        else:
            words.append("##" + token)
    backend = tk.Tokenizer(tk.models.WordPiece(vocab=_vocab(words, "tokenizer.ggml.tokens (as WordPiece)"),
                                               unk_token=words[unk_id], continuing_subword_prefix="##",
                                               max_input_chars_per_word=100))
    backend.normalizer = tk.normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                       strip_accents=None, lowercase=True)
    backend.pre_tokenizer = tk.pre_tokenizers.BertPreTokenizer()
    backend.decoder = tk.decoders.WordPiece(prefix="##", cleanup=True)
    return backend, words


def _vocab(tokens, where="tokenizer.ggml.tokens") -> dict[str, int]:
    vocab = {}
    for i, token in enumerate(tokens):
        if token in vocab:
            raise FormatError(f"{where}[{i}]: {token!r} repeats token {vocab[token]}; "
                              "token strings must be unique")
        vocab[token] = i
    return vocab


def _add_special_tokens(tk, backend, tokens, types):
    """Control/unknown tokens as special added tokens, user-defined ones as plain added tokens.

    Each string is already in the model's vocabulary at its id, so adding it creates no new id; it only
    makes the text match whole, before normalization and splitting.
    """
    special = [tk.AddedToken(t, special=True, normalized=False)
               for t, ty in zip(tokens, types) if ty in (CONTROL, UNKNOWN) and t]
    plain = [tk.AddedToken(t, special=False, normalized=False)
             for t, ty in zip(tokens, types) if ty == USER_DEFINED and t]
    backend.add_special_tokens(special)
    backend.add_tokens(plain)


def template(tk: ModuleType, bos: tuple[str, int] | None, eos: tuple[str, int] | None,
             repeat_bos: bool = True) -> tokenizers.processors.TemplateProcessing:
    """A post-processor wrapping encoded text in BOS/EOS, each a (text, id) or None.

    Pairs get transformers' layout (BOS A [EOS] BOS B [EOS]), or BERT's ([CLS] A [SEP] B [SEP]) when
    `repeat_bos` is false. The pieces are passed as a list, so token texts may hold spaces.
    """
    first = [] if bos is None else [bos[0]]
    last = [] if eos is None else [eos[0]]
    single = [f"{t}:0" for t in first] + ["$A:0"] + [f"{t}:0" for t in last]
    pair = single + [f"{t}:1" for t in (first if repeat_bos else [])] + ["$B:1"] + [f"{t}:1" for t in last]
    specials = list(dict.fromkeys(s for s in (bos, eos) if s is not None))
    return tk.processors.TemplateProcessing(single=single, pair=pair, special_tokens=specials)


class _Metadata:
    """Typed reads of GGUF metadata values; every failure names the key."""

    def __init__(self, metadata: dict):
        self.md = metadata

    def text(self, key, required=False):
        value = self._get(key, required)
        if value is not None and not isinstance(value, str):
            raise FormatError(f"{key}: expected a string, got {type(value).__name__} {value!r:.80}")
        return value

    def flag(self, key, default):
        value = self.md.get(key)
        if value is None:
            return default
        if not isinstance(value, (bool, np.bool_)):
            raise FormatError(f"{key}: expected a boolean, got {type(value).__name__} {value!r:.80}")
        return bool(value)

    def token_id(self, key, n):
        value = self.md.get(key)
        if value is None:
            return None
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, Integral):
            raise FormatError(f"{key}: expected a token id, got {type(value).__name__} {value!r:.80}")
        if not 0 <= int(value) < n:
            raise FormatError(f"{key}: token id {int(value)} is outside the vocabulary [0, {n})")
        return int(value)

    def strings(self, key, required=False):
        value = self._get(key, required)
        if value is None:
            return None
        if not isinstance(value, (list, tuple)):
            raise FormatError(f"{key}: expected a list of strings, got {type(value).__name__}")
        bad = next((i for i, v in enumerate(value) if not isinstance(v, str)), None)
        if bad is not None:
            raise FormatError(f"{key}[{bad}]: expected a string, got {type(value[bad]).__name__} "
                              f"{value[bad]!r:.80}")
        return list(value)

    def numbers(self, key, n, integral, required=False):
        value = self._get(key, required)
        if value is None:
            return None
        kind = Integral if integral else Real
        if isinstance(value, np.ndarray):
            ok = np.issubdtype(value.dtype, np.integer) if integral else np.issubdtype(value.dtype, np.number)
            if value.ndim != 1 or not ok:
                raise FormatError(f"{key}: expected a 1-D array of {'integers' if integral else 'numbers'}, "
                                  f"got {value.dtype} of shape {value.shape}")
            value = value.tolist()
        elif not isinstance(value, (list, tuple)):
            raise FormatError(f"{key}: expected an array, got {type(value).__name__}")
        bad = next((i for i, v in enumerate(value) if isinstance(v, (bool, np.bool_)) or not isinstance(v, kind)),
                   None)
        if bad is not None:
            raise FormatError(f"{key}[{bad}]: expected {'an integer' if integral else 'a number'}, "
                              f"got {type(value[bad]).__name__} {value[bad]!r:.80}")
        if len(value) != n:
            raise FormatError(f"{key}: {len(value)} entries for {n} tokens in tokenizer.ggml.tokens")
        return value

    def _get(self, key, required):
        value = self.md.get(key)
        if value is None and required:
            raise FormatError(f"{key}: missing from the GGUF metadata")
        return value

"""A pure-Python stand-in for HuggingFace's `tokenizers`, for byte-level BPE, where that package is missing
(Pyodide: CPython in the browser cannot load its Rust extension).

Loom's tokenizer (loom/llm/tokenizer.py) and GGUF tokenizer builder (tokenizer_gguf.py) take the `tokenizers`
module as a parameter; this package offers the same names for what they use, so either can be passed:

    Tokenizer(model), .from_str, .from_file, .to_str, .encode(text, add_special_tokens).ids/.tokens,
    .decode(ids, skip_special_tokens), .token_to_id, .id_to_token, .get_vocab, .get_vocab_size,
    .add_tokens, .add_special_tokens, .get_added_tokens_decoder, .no_padding, .no_truncation, and the
    .model / .normalizer / .pre_tokenizer / .post_processor / .decoder attributes; AddedToken; Regex;
    models.BPE; normalizers.NFC, Sequence; pre_tokenizers.ByteLevel, Digits, Split, Sequence;
    decoders.ByteLevel; processors.TemplateProcessing, ByteLevel, Sequence.
    Every component's __getstate__() gives the library's JSON, and to_str() the library's tokenizer.json.

That covers the "gpt2" GGUF vocabularies with every pre-tokenizer tokenizer_gguf.py knows (default, gpt2,
llama-bpe/llama3, smollm/starcoder, qwen2), and tokenizer.json files built from the same parts (SmolLM2's,
GPT-2's, Llama 3's, Qwen2's). Ids and decoded text follow the library step by step: added tokens cut out
leftmost-longest (lstrip/rstrip honoured) before normalization and splitting, the Oniguruma regexes run by
Python's `re` over Unicode tables taken from the library (_unicode.py), BPE merging the lowest-ranked pair,
leftmost first, with the library's per-word cache, the ByteLevel decoder's byte mapping and its lossy UTF-8.

Refused with BackendError ("this tokenizer needs the `tokenizers` package (pip install 'loom[llm]'): ..."),
never answered differently: the SentencePiece ("llama": BPE with byte_fallback) and WordPiece ("bert")
GGUF vocabularies, any other model, normalizer, pre-tokenizer, decoder or post-processor (asking for one,
e.g. `models.WordPiece`, raises), regex syntax outside the subset _unicode.translate knows, BPE dropout and
subword prefixes, single_word added tokens, normalized added tokens the normalizer would change, padding,
truncation, and pairs. NFC (Qwen2's normalizer) is Python's unicodedata cut at the characters the library's
older (Unicode 9) normalization data does not know, which makes it the library's NFC (normalizers.py).

Checked by tests/llm/test_tokenizers_py.py against tokenizers 0.23.3 (LOOM_PURE_TOKENIZER=1 makes Loom use
this package even where the library is installed): SmolLM2-135M's GGUF vocabulary under every pre-tokenizer
and a small trained vocabulary, on prose, code, numerals, contractions, white space, CJK, emoji, combining
and non-NFC text, special tokens, chat prompts and thousands of seeded random strings (ids with and without
BOS/EOS, decode with and without special tokens, random id sequences, tokenizer.json byte for byte); the
regex translation against Oniguruma under every split behaviour; the Unicode tables and NFC against the
library over the code points.
"""
from __future__ import annotations

from loom.llm.tokenizers_py import decoders, models, normalizers, pre_tokenizers, processors
from loom.llm.tokenizers_py._common import refuse_missing
from loom.llm.tokenizers_py._tokenizer import AddedToken, Encoding, Tokenizer
from loom.llm.tokenizers_py.pre_tokenizers import Regex

__version__ = "0.23.3+loom"       # the library version whose behaviour this follows
__all__ = ["AddedToken", "Encoding", "Regex", "Tokenizer", "decoders", "models", "normalizers",
           "pre_tokenizers", "processors"]

__getattr__ = refuse_missing("tokenizers")

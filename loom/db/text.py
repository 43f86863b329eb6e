"""Semantic search over text files: chunk them, embed the chunks with a BERT-style encoder
(loom.llm.encoder), keep them in a VectorStore, find the chunks closest in meaning to a query.

    report = index_files("shelf", "all-MiniLM-L6-v2", ["hamlet.txt", "lear.txt"])
    for hit in search_text("shelf", "to be or not to be", k=3):
        print(hit.score, hit.source, hit.line, hit.text)

This is what `loom db index|search|info` runs (loom/cli/db.py, docs/db.md).

Chunks. A file is read as UTF-8 and cut into windows of `chunk_words` words (runs of non-space),
consecutive windows sharing `overlap` words, so any phrase of up to `overlap` words lies whole in some
chunk. A window whose text is longer than the encoder takes (max_position_embeddings tokens) is split
in two at its middle word, again until every piece fits (a single giant "word" is split by
characters), so nothing is cut off. A chunk's text is the file's text from its first word's first
character to its last word's last character, line breaks kept; `start`/`end` are offsets in
characters (code points) of the decoded file and `line`/`end_line` its first and last line (1-based).
The default, 32 words of which 16 are shared (so every word lies in the first half of some
passage), suits all-MiniLM-L6-v2, which was trained on sentences and short passages: over four
whole tragedies, 64-word passages ranked Hamlet's soliloquy 8th for "to be or not to be" (behind
Macbeth's "To be thus is nothing") and 32-word passages first, and 32-word passages embed at about
four times the rate (a passage's cost grows faster than its length). Passages aligned to sentence
starts were tried and did no better on famous quotes from seven scenes.

Ids and files. The chunks of one file get the ids `source * 2^32 + chunk`, with `source` a number
given to the file (its absolute path) when it is first indexed, one past the largest in the store.
Every chunk's metadata holds `loom_text` (1, the layout's version), `source` (the absolute path),
`chunk`, `line`, `end_line`, `start`, `end` and `text`; chunk 0, the file's head, also holds the
file's SHA-256, its chunk count and length, the chunk settings, and the model's folder and
fingerprint. Indexing a file again replaces its chunks (a file is indexed once, under its absolute
path), and skips it when its bytes, the chunk settings and the model are unchanged. The head is
written last, so a file whose indexing was interrupted has an old head (or none) and is indexed
again in full on the next run.

One store, one model: `index_files` refuses a model whose fingerprint (SHA-256 of its config.json,
tokenizer files and model.safetensors) differs from the one the store was indexed with, and
`search_text` loads the model folder recorded in the heads unless it is given another copy of it.
"""
from __future__ import annotations

import bisect
import hashlib
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..atomic import read_bytes
from ..errors import ConfigError, FormatError, NotFoundError
from ..llm.encoder import Encoder, load_folder
from .vectors import VectorStore

LAYOUT = 1                      # metadata["loom_text"]: the version of the layout described above
SOURCE_SHIFT = 32               # id = source << 32 | chunk
_CHUNK_MASK = (1 << SOURCE_SHIFT) - 1
_MAX_SOURCE = (1 << (63 - SOURCE_SHIFT)) - 1
DEFAULT_CHUNK_WORDS = 32        # about 45 all-MiniLM tokens of English prose or verse (see below)
DEFAULT_OVERLAP = 16
_WRITE_EVERY = 256              # chunks per store write
_WORD = re.compile(r"\S+")
_MODEL_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "model.safetensors")


@dataclass(frozen=True)
class Chunk:
    """One passage of a text: its number, character span [start, end), first and last line, text."""
    index: int
    start: int
    end: int
    line: int
    end_line: int
    text: str


@dataclass(frozen=True)
class IndexedFile:
    """What index_files did with one file: status "added", "replaced" or "unchanged"."""
    source: str
    chunks: int
    status: str


@dataclass(frozen=True)
class Hit:
    """One search result: rank (1 = best), the chunk's id and cosine similarity, where it is, its text."""
    rank: int
    id: int
    score: float
    source: str
    chunk: int
    line: int
    end_line: int
    start: int
    end: int
    text: str

    def as_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "id": self.id, "score": self.score, "source": self.source, "chunk": self.chunk,
                "line": self.line, "end_line": self.end_line, "start": self.start, "end": self.end, "text": self.text}


# --- reading and chunking ----------------------------------------------------------------------------

def read_text(path: str | os.PathLike[str]) -> tuple[str, str]:
    """(text, SHA-256 of the bytes) of a UTF-8 text file (a leading byte-order mark is dropped).
    FormatError naming the file when it is missing, not a file, not UTF-8, binary, or holds no words."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        what = "is a directory, expected a text file" if os.path.isdir(path) else "no such file"
        raise FormatError(f"{path}: {what}")
    data = read_bytes(path)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise FormatError(f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                          f"convert it first, e.g. iconv -f latin1 -t utf-8") from None
    if "\x00" in text:
        raise FormatError(f"{path}: not a text file (a NUL character at offset {text.index(chr(0))})")
    if not _WORD.search(text):
        raise FormatError(f"{path}: no text to index (the file is empty or only whitespace)")
    return text, hashlib.sha256(data).hexdigest()


def chunk_text(text: str, chunk_words: int = DEFAULT_CHUNK_WORDS, overlap: int = DEFAULT_OVERLAP,
               fits: Callable[[str], bool] | None = None) -> list[Chunk]:
    """The chunks of `text` (module docstring): windows of chunk_words words, overlap words shared
    between neighbours; with `fits` (a chunk's text -> whether the encoder takes it whole), a window
    that does not fit is split at its middle word (or character) until every piece does."""
    _check_chunking(chunk_words, overlap)
    words = [m.span() for m in _WORD.finditer(text)]
    spans: list[tuple[int, int]] = []
    stride = chunk_words - overlap
    for first in range(0, len(words), stride):
        last = min(first + chunk_words, len(words)) - 1
        spans.append((words[first][0], words[last][1]))
        if last == len(words) - 1:
            break
    if fits is not None:
        starts = [s for s, _ in words]
        spans = [piece for span in spans for piece in _fitting(text, span, starts, fits)]
    newlines = [m.start() for m in re.finditer("\n", text)]
    return [Chunk(i, s, e, bisect.bisect_left(newlines, s) + 1, bisect.bisect_left(newlines, e - 1) + 1, text[s:e])
            for i, (s, e) in enumerate(spans)]


def _check_chunking(chunk_words: int, overlap: int) -> None:
    if isinstance(chunk_words, bool) or not isinstance(chunk_words, int) or chunk_words < 1:
        raise ConfigError("chunk_words", f"expected a positive integer, got {chunk_words!r}")
    if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= overlap < chunk_words:
        raise ConfigError("overlap", f"expected an integer in [0, chunk_words = {chunk_words}), got {overlap!r}")


def _fitting(text: str, span: tuple[int, int], starts: list[int],
             fits: Callable[[str], bool]) -> list[tuple[int, int]]:
    """span, or its pieces split in halves until each fits: at the middle word start inside it,
    or (one word) at the middle character."""
    s, e = span
    if e - s <= 1 or fits(text[s:e]):
        return [span]
    lo, hi = bisect.bisect_right(starts, s), bisect.bisect_left(starts, e)    # word starts inside (s, e)
    if hi > lo:
        cut = starts[(lo + hi - 1) // 2]
        left_end = cut
        while left_end > s and text[left_end - 1].isspace():
            left_end -= 1
        pieces = [(s, left_end), (cut, e)]
    else:
        middle = (s + e) // 2
        pieces = [(s, middle), (middle, e)]
    return [p for piece in pieces for p in _fitting(text, piece, starts, fits)]


# --- indexing ----------------------------------------------------------------------------------------

def index_files(store_dir: str | os.PathLike[str], model_dir: str | os.PathLike[str],
                files: Sequence[str | os.PathLike[str]], *, chunk_words: int = DEFAULT_CHUNK_WORDS,
                overlap: int = DEFAULT_OVERLAP, batch_size: int = 32, device: str = "cpu",
                progress: Callable[[str, int, int], None] | None = None) -> list[IndexedFile]:
    """Chunk, embed and store `files` in the vector store at store_dir (created with the model's
    dimension and metric "cosine" when missing). Every file is read and checked before the model
    loads or the store opens, so a bad file leaves the store untouched. progress(source, done, total)
    is called as chunks are embedded. Returns one IndexedFile per file, in order."""
    _check_chunking(chunk_words, overlap)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError("batch_size", f"expected a positive integer, got {batch_size!r}")
    if isinstance(files, str | os.PathLike) or not files:
        raise ConfigError("files", "expected a non-empty list of text files")
    sources: dict[str, tuple[str, str]] = {}        # absolute path -> (text, sha256); a repeat is read once
    for f in files:
        key = os.path.abspath(os.fspath(f))
        if key not in sources:
            sources[key] = read_text(f)
    model_dir = os.path.abspath(os.fspath(model_dir))
    encoder = load_folder(model_dir, device=device)
    fingerprint = model_fingerprint(model_dir)

    def fits(text: str) -> bool:
        return len(encoder.tokenizer.encode(text)) <= encoder.max_tokens

    settings = {"chunk_words": chunk_words, "overlap": overlap}
    done: list[IndexedFile] = []
    with VectorStore.open(store_dir, dim=encoder.hidden_size, metric="cosine") as store:
        heads = text_heads(store)
        for head in heads.values():
            if head.get("model_sha256") != fingerprint:
                raise ConfigError("model_dir", f"the store at {store.path} holds embeddings from the model "
                                               f"{head.get('model')} (fingerprint {str(head.get('model_sha256'))[:12]}), "
                                               f"not {model_dir} ({fingerprint[:12]}); embeddings of different "
                                               f"models cannot be compared: index into a new store or with that model")
        by_path = {head["source"]: (number, head) for number, head in heads.items()}
        ids = store.ids()
        next_source = int(ids.max() >> SOURCE_SHIFT) + 1 if len(ids) else 0
        replaced = False
        for path, (text, sha) in sources.items():
            if path in by_path:
                number, head = by_path[path]
                if head.get("sha256") == sha and all(head.get(k) == v for k, v in settings.items()):
                    done.append(IndexedFile(path, int(head["chunks"]), "unchanged"))
                    continue
                status = "replaced"
            else:
                number, status = next_source, "added"
                if number > _MAX_SOURCE:
                    raise ConfigError("files", f"the store at {store.path} has no source numbers left")
                next_source += 1
            chunks = chunk_text(text, chunk_words, overlap, fits)
            lines = text.count("\n") + (not text.endswith("\n"))
            head = {"chunks": len(chunks), "sha256": sha, "chars": len(text), "lines": lines, "model": model_dir,
                    "model_sha256": fingerprint, **settings}
            _write_source(store, encoder, number, path, chunks, head, batch_size, progress)
            replaced |= status == "replaced"
            done.append(IndexedFile(path, len(chunks), status))
        if replaced:
            store.compact()
    return done


def _write_source(store: VectorStore, encoder: Encoder, number: int, path: str, chunks: list[Chunk],
                  head: dict, batch_size: int, progress: Callable[[str, int, int], None] | None) -> None:
    """Embed and upsert the chunks of one file, delete its chunks past the new count, write the head last."""
    from .. import backend
    base = number << SOURCE_SHIFT
    first: tuple[np.ndarray, dict] | None = None
    pending_ids: list[int] = []
    pending_vectors: list[np.ndarray] = []
    pending_meta: list[dict] = []

    def flush() -> None:
        if pending_ids:
            store.upsert(pending_ids, np.concatenate(pending_vectors), pending_meta)
            pending_ids.clear()
            pending_vectors.clear()
            pending_meta.clear()

    if progress is not None:
        progress(path, 0, len(chunks))
    for at in range(0, len(chunks), batch_size):
        batch = chunks[at:at + batch_size]
        vectors = encoder.embed([c.text for c in batch], batch_size=batch_size)   # every chunk fits
        vectors = backend.of(vectors).to_numpy(vectors)
        for c, v in zip(batch, vectors):
            meta = {"loom_text": LAYOUT, "source": path, "chunk": c.index, "line": c.line, "end_line": c.end_line,
                    "start": c.start, "end": c.end, "text": c.text}
            if c.index == 0:
                first = (v[None], {**meta, **head})
                continue
            pending_ids.append(base + c.index)
            pending_vectors.append(v[None])
            pending_meta.append(meta)
        if len(pending_ids) >= _WRITE_EVERY:
            flush()
        if progress is not None:
            progress(path, at + len(batch), len(chunks))
    flush()
    ids = store.ids()
    stale = ids[(ids >> SOURCE_SHIFT == number) & ((ids & _CHUNK_MASK) >= len(chunks))]
    if len(stale):
        store.delete(stale)
    assert first is not None            # read_text refuses a file without words: there is a chunk 0
    store.upsert([base], first[0], [first[1]])


def model_fingerprint(model_dir: str | os.PathLike[str]) -> str:
    """SHA-256 over the model folder's config.json, tokenizer files and model.safetensors (those present)."""
    h = hashlib.sha256()
    for name in _MODEL_FILES:
        path = os.path.join(os.fspath(model_dir), name)
        if not os.path.isfile(path):
            continue
        h.update(f"{name}\0{os.path.getsize(path)}\0".encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()


def text_heads(store: VectorStore) -> dict[int, dict]:
    """source number -> head metadata, of the files indexed in the store (sorted by number)."""
    ids = store.ids()
    candidates = ids[(ids & _CHUNK_MASK) == 0]
    if not len(candidates):
        return {}
    _, metadata = store.get(candidates)
    return {int(i) >> SOURCE_SHIFT: m for i, m in zip(candidates.tolist(), metadata)
            if isinstance(m, dict) and m.get("loom_text") == LAYOUT and "chunks" in m and "source" in m}


# --- searching ---------------------------------------------------------------------------------------

def search_text(store_dir: str | os.PathLike[str], query: str, k: int = 5, *,
                model: str | os.PathLike[str] | Encoder | None = None, device: str = "cpu") -> list[Hit]:
    """The k chunks closest in meaning to `query` (cosine similarity of the embeddings), best first.
    model: None (the folder the store was indexed with), another folder holding the same model (its
    fingerprint is checked), or a loaded Encoder (trusted). The store is opened read-only."""
    from .. import backend
    if not isinstance(query, str) or not query.strip():
        raise ConfigError("query", f"expected a non-empty text, got {query!r}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError("k", f"expected a positive integer, got {k!r}")
    with _open_reader(store_dir) as store:
        heads = text_heads(store)
        if not heads:
            raise NotFoundError(f"{store.path}: no text indexed here (index files with "
                                f"loom db index {store.path} --model MODEL --text FILES...)")
        encoder = model if isinstance(model, Encoder) else _search_model(heads, model, device)
        tokens = len(encoder.tokenizer.encode(query))
        if tokens > encoder.max_tokens:
            raise ConfigError("query", f"is {tokens} tokens long; the model takes at most {encoder.max_tokens}")
        vector = encoder.embed([query])
        vector = backend.of(vector).to_numpy(vector)[0]
        ids, scores = store.search(vector, k)
        found = [(int(i), float(s)) for i, s in zip(ids.tolist(), scores.tolist()) if i >= 0]
        _, metadata = store.get([i for i, _ in found]) if found else (None, [])
    hits = []
    for rank, ((i, score), m) in enumerate(zip(found, metadata), 1):
        m = m if isinstance(m, dict) else {}
        hits.append(Hit(rank, i, score, str(m.get("source", "")), int(m.get("chunk", i & _CHUNK_MASK)),
                        int(m.get("line", 0)), int(m.get("end_line", 0)), int(m.get("start", 0)),
                        int(m.get("end", 0)), str(m.get("text", ""))))
    return hits


def _open_reader(store_dir: str | os.PathLike[str]) -> VectorStore:
    path = os.fspath(store_dir)
    if not os.path.isdir(path):
        what = "not a directory" if os.path.exists(path) else "no such directory"
        raise NotFoundError(f"{path}: {what} (create a text index with loom db index {path} --model MODEL "
                            f"--text FILES...)")
    return VectorStore.open(path, readonly=True)


def _search_model(heads: dict[int, dict], model: str | os.PathLike[str] | None, device: str) -> Encoder:
    recorded = next(iter(heads.values()))
    if model is None:       # the folder recorded last that is still there (all hold the same model)
        folders = list(dict.fromkeys(str(h.get("model", "")) for h in reversed(heads.values())))
        for folder in folders:
            if os.path.isdir(folder):
                return load_folder(folder, device=device)
        raise FormatError(f"{folders[0]}: the model folder this store was indexed with is gone; "
                          f"give the same model with --model")
    folder = os.fspath(model)
    encoder = load_folder(folder, device=device)
    if model_fingerprint(folder) != recorded.get("model_sha256"):
        raise ConfigError("model", f"{folder} is not the model the store was indexed with "
                                   f"({recorded.get('model')}); its embeddings would not compare")
    return encoder


# --- describing --------------------------------------------------------------------------------------

def store_info(store_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """What is in a store: path, vectors, dim, metric, segment files and bytes on disk, the model,
    and the indexed files (source, chunks, lines, sha256), by source number."""
    with _open_reader(store_dir) as store:
        heads = text_heads(store)
        info: dict[str, Any] = {"path": store.path, "vectors": len(store), "dim": store.dim, "metric": store.metric}
    segments = [e for e in os.scandir(os.path.join(info["path"], "segments")) if e.name.endswith(".seg")]
    total = 0
    for folder, _, names in os.walk(info["path"]):
        total += sum(os.path.getsize(os.path.join(folder, n)) for n in names)
    first = next(iter(heads.values()), {})
    info.update(segments=len(segments), segment_bytes=sum(e.stat().st_size for e in segments), disk_bytes=total,
                model=first.get("model"), model_sha256=first.get("model_sha256"),
                chunk_words=first.get("chunk_words"), overlap=first.get("overlap"),
                sources=[{"source": h["source"], "chunks": h["chunks"], "lines": h.get("lines"),
                          "sha256": h.get("sha256")} for h in heads.values()])
    return info

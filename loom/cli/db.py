"""`loom db index|search|info`: semantic search over text files with a LoomDB vector store.

    loom db index DIR --model MODEL_DIR --text FILES... [--chunk-words N] [--overlap N]
    loom db search DIR "query" [-k K] [--json] [--full]
    loom db info DIR [--json]

index cuts the files into overlapping passages, embeds them with a BERT-style encoder (the folder of
`loom embed --model`) and stores them in DIR (created when missing); indexing a file again replaces
its passages, and skips it when nothing changed. search embeds the query with the model the store
was indexed with and prints the best passages with their cosine similarity, file and lines. info
describes the store. The layout of ids and metadata is in loom/db/text.py; docs/db.md has examples.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
import time

HELP = "semantic search over text files: index them into a vector store, search it, describe it"
_SHOWN_CHARS = 240


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..db.text import DEFAULT_CHUNK_WORDS, DEFAULT_OVERLAP

    fast = {"action": "store_true", "help": "fast mode: vendor BLAS and libm, embeddings not bit-reproducible "
                                            "across machines (deterministic mode is the default)"}
    p.add_argument("--fast", **fast)
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True, parser_class=type(p))

    index = actions.add_parser("index", help="chunk text files, embed the chunks, store them",
                               description="Chunk UTF-8 text files into overlapping passages, embed them with "
                                           "a BERT-style encoder and store them in the vector store DIR "
                                           "(created when missing). A file indexed before is replaced, or "
                                           "skipped when it, the chunk settings and the model are unchanged.")
    index.add_argument("store", metavar="DIR", help="the vector store's folder")
    index.add_argument("--model", required=True, metavar="MODEL_DIR",
                       help="HuggingFace encoder folder (config.json, model.safetensors, tokenizer.json), "
                            "e.g. all-MiniLM-L6-v2")
    index.add_argument("--text", required=True, nargs="+", metavar="FILE", help="UTF-8 text files to index")
    index.add_argument("--chunk-words", type=int, default=DEFAULT_CHUNK_WORDS, metavar="N",
                       help=f"words per passage (default {DEFAULT_CHUNK_WORDS}); a passage longer than the "
                            f"model takes is split further")
    index.add_argument("--overlap", type=int, default=DEFAULT_OVERLAP, metavar="N",
                       help=f"words shared by neighbouring passages (default {DEFAULT_OVERLAP})")
    index.add_argument("--batch-size", type=int, default=32, help="passages per forward pass (default 32)")
    index.add_argument("--device", default="cpu", help="where the encoder runs: cpu (default) or cuda")
    index.add_argument("--quiet", action="store_true", help="no progress on stderr")

    search = actions.add_parser("search", help="the passages closest in meaning to a query",
                                description="Embed the query with the model DIR was indexed with and print "
                                            "the k best passages: rank, cosine similarity, file:lines, text.")
    search.add_argument("store", metavar="DIR", help="the vector store's folder")
    search.add_argument("query", metavar="QUERY", help="what to look for, in words")
    search.add_argument("-k", type=int, default=5, help="how many passages (default 5)")
    search.add_argument("--model", metavar="MODEL_DIR",
                        help="the model's folder, when it moved since indexing (must be the same model)")
    search.add_argument("--json", action="store_true", help="print the hits as a JSON list")
    search.add_argument("--full", action="store_true", help="print each passage whole, not shortened")
    search.add_argument("--device", default="cpu", help="where the encoder runs: cpu (default) or cuda")

    info = actions.add_parser("info", help="what a vector store holds",
                              description="The store's size, dimension, metric, files on disk, model and "
                                          "the text files indexed in it.")
    info.add_argument("store", metavar="DIR", help="the vector store's folder")
    info.add_argument("--json", action="store_true", help="print the description as JSON")
    for sub in (index, search, info):   # `loom db index --fast` as well as `loom db --fast index`
        sub.add_argument("--fast", default=argparse.SUPPRESS, **fast)


def run(args: argparse.Namespace) -> int:
    return {"index": _index, "search": _search, "info": _info}[args.action](args)


def _index(args: argparse.Namespace) -> int:
    from ..db.text import index_files
    from ..errors import renamed_paths

    report = _Progress(enabled=not args.quiet)
    names = {"chunk_words": "--chunk-words", "overlap": "--overlap", "batch_size": "--batch-size",
             "model_dir": "--model", "files": "--text"}
    with renamed_paths(names):
        done = index_files(args.store, args.model, args.text, chunk_words=args.chunk_words, overlap=args.overlap,
                           batch_size=args.batch_size, device=args.device, progress=report)
    report.finish()
    for item in done:
        print(f"{_shown(item.source)}: {item.chunks} chunk{'s' if item.chunks != 1 else ''}, {item.status}")
    changed = sum(item.status != "unchanged" for item in done)
    print(f"{args.store}: indexed {changed} of {len(done)} files")
    return 0


def _search(args: argparse.Namespace) -> int:
    from ..db.text import search_text
    from ..errors import renamed_paths

    with renamed_paths({"k": "-k", "model": "--model", "query": "QUERY"}):
        hits = search_text(args.store, args.query, args.k, model=args.model, device=args.device)
    if args.json:
        print(json.dumps([h.as_dict() for h in hits], indent=2, ensure_ascii=False))
        return 0
    if not hits:
        print("no passages")
    for h in hits:
        where = f"{_shown(h.source)}:{h.line}" + (f"-{h.end_line}" if h.end_line != h.line else "")
        print(f"{h.rank:>2}  {h.score:.4f}  {where}")
        if args.full:
            print(textwrap.indent(h.text, "    "))
        else:
            print("    " + textwrap.shorten(h.text, _SHOWN_CHARS, placeholder=" ..."))
    return 0


def _info(args: argparse.Namespace) -> int:
    from ..db.text import store_info

    info = store_info(args.store)
    if args.json:
        print(json.dumps(info, indent=2, ensure_ascii=False))
        return 0
    print(f"store     {info['path']}")
    print(f"vectors   {info['vectors']:,} (dim {info['dim']}, metric {info['metric']})")
    print(f"on disk   {_size(info['disk_bytes'])} ({info['segments']} segment file"
          f"{'s' if info['segments'] != 1 else ''}, {_size(info['segment_bytes'])})")
    if not info["sources"]:
        print("sources   none (no text indexed with loom db index)")
        return 0
    print(f"model     {info['model']}")
    print(f"chunks    {info['chunk_words']} words, overlap {info['overlap']}")
    print(f"sources   {len(info['sources'])} files")
    for s in info["sources"]:
        print(f"  {s['chunks']:>7,} chunks  {s['lines']:>7,} lines  {_shown(s['source'])}")
    return 0


def _shown(path: str) -> str:
    """path relative to the working directory when it lies below it, else as stored (absolute)."""
    try:
        rel = os.path.relpath(path)
    except ValueError:                  # another drive (Windows)
        return path
    return path if rel.startswith(os.pardir) else rel


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


class _Progress:
    """Embedding progress on stderr: a line redrawn in place on a terminal, nothing elsewhere."""

    def __init__(self, enabled: bool):
        self.live = enabled and sys.stderr.isatty()
        self.start = self.last = time.perf_counter()
        self.drawn = False

    def __call__(self, source: str, done: int, total: int) -> None:
        if not self.live:
            return
        now = time.perf_counter()
        if done == 0:
            self.start = now
        elif now - self.last < 0.1 and done < total:
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        sys.stderr.write(f"\rembedding {_shown(source)}: {done}/{total} chunks, {rate:.1f} chunks/s\033[K")
        sys.stderr.flush()
        self.drawn = True

    def finish(self) -> None:
        if self.drawn:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()

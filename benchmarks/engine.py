"""The compute engine (issue 28): dispatch cost inside a chain, swarm overlap, and the one-call
patterns against a device-to-device copy, CuPy and torch, all in the same run (loom/engine/bench.py
says what each measures; `loom bench engine` runs the same).

    PYTHONPATH=. python benchmarks/engine.py [--device cuda|cpu] [--quick] [--json FILE]
"""
from __future__ import annotations

import argparse
import json

import loom
from loom.engine import bench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    print(f"# loom {loom.__version__} on {args.device}")
    results = bench.run(args.device, args.quick)
    print(bench.report(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()

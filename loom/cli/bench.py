"""`loom bench engine [--device cuda|cpu] [--quick] [--json FILE]`: the compute engine's benchmark
(loom/engine/bench.py): dispatch cost in a chain, swarm overlap, sum/scan/sort against a copy."""
from __future__ import annotations

import argparse

from ..atomic import write_json

HELP = "measure the compute engine: dispatch cost in a chain, swarm overlap, sum/scan/sort bandwidth"
SUITES = ("engine",)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("suite", choices=SUITES, help="what to measure (engine: loom.engine's units and patterns)")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="where to run (default cuda)")
    p.add_argument("--quick", action="store_true", help="small sizes: a run of a few seconds")
    p.add_argument("--json", help="also write the results to this JSON file")


def run(args: argparse.Namespace) -> int:
    from .. import backend
    from ..engine import bench
    backend.get(args.device)            # a clear error where the device is missing, before any work
    results = bench.run(args.device, args.quick)
    print(bench.report(results))
    if args.json:
        write_json(args.json, results)
    return 0

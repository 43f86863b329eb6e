"""`loom bench engine|online`: the compute engine's benchmark (loom/engine/bench.py: dispatch cost in a
chain, swarm overlap, sum/scan/sort against a copy) and the online-learning assessment
(loom/nn/online/assessment.py: six training modes on five streams and five network families,
written to docs/online.md)."""
from __future__ import annotations

import argparse
import os
import sys

from ..atomic import write_bytes, write_json

HELP = "measure the compute engine, or assess the online training modes (writes docs/online.md)"
SUITES = ("engine", "online")
DEVICES = {"engine": "cuda", "online": "cpu"}


def _count(text: str) -> int:
    """argparse type: an integer >= 1 (a usage error otherwise)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("suite", choices=SUITES, help="engine: loom.engine's units and patterns; online: the "
                   "online-learning assessment")
    p.add_argument("--device", choices=("cuda", "cpu"), help="where to run (engine: cuda, online: cpu by default)")
    p.add_argument("--quick", action="store_true", help="small sizes: a run of a few seconds (online: 300 ticks, "
                   "1 seed, unless given)")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--ticks", type=_count, help="online: ticks per run (default 2000)")
    p.add_argument("--seeds", type=_count, help="online: seeds per cell (default 3)")
    p.add_argument("--archs", help="online: comma-separated networks (default all: dense,conv2d,rnn,lstm,attention)")
    p.add_argument("--streams", help="online: comma-separated streams (default all)")
    p.add_argument("--modes", help="online: comma-separated training modes (default all six)")
    p.add_argument("--markdown", default=None, help="online: the page to write (default docs/online.md; '-' "
                   "writes none)")


def run(args: argparse.Namespace) -> int:
    from .. import backend
    device = args.device or DEVICES[args.suite]
    backend.get(device)            # a clear error where the device is missing, before any work
    if args.suite == "engine":
        from ..engine import bench
        results = bench.run(device, args.quick)
        print(bench.report(results))
    else:
        results = _online(args, device)
    if args.json:
        write_json(args.json, results)
    return 0


def _online(args: argparse.Namespace, device: str) -> dict:
    from ..nn.online import assessment, report
    ticks = args.ticks or (300 if args.quick else 2000)
    seeds = args.seeds or (1 if args.quick else 3)
    split = (lambda v: None if v is None else [s.strip() for s in v.split(",") if s.strip()])
    result = assessment.run(split(args.archs), split(args.streams), split(args.modes), seeds, ticks, device,
                            progress=lambda line: print(line, file=sys.stderr, flush=True))
    print(assessment.table(result))
    path = args.markdown or os.path.join("docs", "online.md")
    if path != "-":
        command = " ".join(["loom bench online", *_options(args, device, ticks, seeds)])
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        write_bytes(path, report.markdown(result, command).encode())
        print(f"wrote {path}")
    return result


def _options(args: argparse.Namespace, device: str, ticks: int, seeds: int) -> list[str]:
    """The options that shaped the results (for the page's rerun line; not where files went)."""
    out = [] if device == "cpu" else [f"--device {device}"]
    out += [] if ticks == 2000 else [f"--ticks {ticks}"]
    out += [] if seeds == 3 else [f"--seeds {seeds}"]
    out += [f"--{k} {getattr(args, k)}" for k in ("archs", "streams", "modes") if getattr(args, k)]
    return out + (["--fast"] if getattr(args, "fast", False) else [])

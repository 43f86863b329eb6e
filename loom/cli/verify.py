"""`loom verify`: fingerprint every layer, optimizer and a short demo training run on every backend
and show where they agree bit-for-bit. Exit 0 when every check agrees, 1 on any mismatch.

With --fast the same checks run in fast mode (vendor BLAS and libm), where mismatches between
backends and thread counts are expected; they are still reported and still exit 1.
"""
from __future__ import annotations

import argparse

HELP = "fingerprint every layer, optimizer and a demo training run on each backend; exit 1 on a mismatch"
DEVICES = {"all": None, "cpu": ["cpu", "cpu:1thread"], "cuda": ["cpu", "cuda"]}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=list(DEVICES), default="all",
                   help="all (default): cpu, cpu with one BLAS thread, and cuda when available; "
                        "cpu: the two cpu columns; cuda: cpu against cuda (an error without a GPU)")
    p.add_argument("--steps", type=int, default=50, help="demo training steps (default 50)")
    p.add_argument("--json", metavar="FILE", help="also write every full fingerprint as JSON to FILE")
    p.add_argument("--fast", action="store_true",
                   help="verify fast mode instead of deterministic mode (mismatches expected; still exit 1)")
    p.add_argument("--sample", action="append", metavar="NAME",
                   help="only this layer sample from loom.nn.catalogue (repeatable; default: all)")
    p.add_argument("--gpus", type=int, metavar="N",
                   help="also train three networks data-parallel on N GPUs (with --device cpu: N CPU processes) "
                        "and compare their weights with one process's (docs/distributed.md)")
    # internal: the cpu:1thread column is this command in a subprocess, printing its fingerprints
    p.add_argument("--emit-json", action="store_true", help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    from .. import verify as verifier
    from ..atomic import write_json
    from ..errors import ConfigError, renamed_paths
    from ..mode import deterministic

    if args.steps < 1:
        raise ConfigError("--steps", f"expected a positive integer, got {args.steps}")
    if args.gpus is not None and args.gpus < 2:
        raise ConfigError("--gpus", f"expected at least 2 ranks to compare with one process, got {args.gpus}")
    with deterministic(not args.fast):
        with renamed_paths({"samples": "--sample"}):
            if args.emit_json:
                print(verifier.emit_json(args.steps, args.sample))
                return 0
            report = verifier.verify(DEVICES[args.device], steps=args.steps, samples=args.sample)
    print(report.table())
    doc, ok = report.to_json(), report.ok
    if args.gpus is not None:
        from ..distributed import checks
        with deterministic(not args.fast):
            rows = checks.compare(args.gpus, "cpu" if args.device == "cpu" else "cuda")
        where = f"{args.gpus} {'CPU processes' if args.device == 'cpu' else 'GPUs'}"
        print(f"\ndata-parallel training: one process against {where}")
        for row in rows:
            print(f"  {row['network']:<18} {row['one'][:16]}  {row['ranks'][:16]}  "
                  f"{'same' if row['same'] else 'DIFFERENT'}")
        doc["data_parallel"] = rows
        ok = ok and all(row["same"] for row in rows)
    if args.json:       # a bad path is bad input (FileError naming it, exit 3), not a mismatch (exit 1)
        write_json(args.json, doc, indent=1)
    return 0 if ok else 1

"""`loom info [MODEL]`: versions, devices and what this build supports; with MODEL, that network's
summary, or with --blueprint its blueprint as JSON (Network.blueprint)."""
from __future__ import annotations

import argparse
import json

HELP = "show versions, devices, active accelerations and supported layers, or a model's layers"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", help="a .loom model file (or model directory) or a network config (.json): "
                                            "show its layers instead")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON (with MODEL: its blueprint)")
    p.add_argument("--blueprint", action="store_true",
                   help="with MODEL: print its blueprint as JSON (every layer's path, type, grid cell, shapes, "
                        "parameters and dtypes)")


def run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..info import info
    if args.model is not None:
        return _model(args)
    if args.blueprint:
        raise ConfigError("--blueprint", "needs a MODEL: loom info MODEL --blueprint")
    data = info()
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    for key in ("loom", "python", "platform", "numpy", "ml_dtypes", "format_version"):
        print(f"{key:<15} {data[key]}")
    for device, status in data["devices"].items():
        print(f"{'device ' + device:<15} {status}")
    for gpu in data["gpus"]:
        print(f"{'gpu ' + str(gpu['index']):<15} {gpu['name']}, {gpu['memory_bytes'] / 2**30:.1f} GiB, "
              f"compute capability {gpu['compute_capability']}")
    if data["cuda"]:
        print(f"{'cuda':<15} " + ", ".join(f"{k} {v}" for k, v in data["cuda"].items()))
    print("accelerations   (in this process and mode; --fast shows fast mode's)")
    for name, acc in data["accelerations"].items():
        state = "active" if acc["active"] else f"inactive: {acc['reason']}"
        print(f"  {name:<16} {state}")
    print("optional packages")
    for name, extra in data["extras"].items():
        state = extra["version"] or f"not installed (pip install 'loom[{extra['extra']}]')"
        print(f"  {name:<16} {state}  ({extra['for']})")
    print(f"{'layers':<15} {', '.join(data['layer_types'])}")
    print(f"{'softmax':<15} {', '.join(data['softmax_variants'])}")
    return 0


def _model(args: argparse.Namespace) -> int:
    from ..formats import load
    from ..nn import Network
    if args.model.lower().endswith(".json"):
        net = Network.from_config(args.model)
    else:
        net = load(args.model)
    if args.blueprint or args.json:
        print(json.dumps(net.blueprint(), indent=2))
    else:
        print(net.summary())
    return 0

"""`loom info`: versions, devices and what this build supports."""
from __future__ import annotations

import argparse
import json

HELP = "show versions, devices, active accelerations and supported layers"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")


def run(args: argparse.Namespace) -> int:
    from ..info import info
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

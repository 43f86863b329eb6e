"""The C ABI's cost (issue 31): the same calls from C (through libloom.so) and from Python, in one run.

1. Per-call overhead of a tiny forward (a 16-8-4 MLP, batch 1): `loom_forward` from C against
   `net.forward(x)` from Python; goal: the C call at most 2x the Python call. The C side pays the
   interpreter lock, argument conversion, the input copy and the output copy.
2. gemm through the tensor API (`loom_tensor_gemm` then `loom_tensor_sync`) against the same product
   from Python (`loom.kernels.ops.matmul(a, b, out=c)` then a synchronize), SIZE^3 float32, on --device;
   goal on CUDA at 4096^3: within 5%.

Each figure is the median of --rounds rounds of --calls calls. Both modes unless --mode says one.
Run:
    .venv/bin/python benchmarks/capi.py --device cpu --size 1024
    PYTHONPATH=. python benchmarks/capi.py --device cuda --size 4096      # device machine
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import loom
from loom import backend
from loom.capi.build import build
from loom.kernels import ops

HERE = Path(__file__).parent
TINY = {"loom": 1, "seed": 0, "input": {"shape": [16]},
        "layers": [{"type": "dense", "units": 8, "activation": "relu"}, {"type": "dense", "units": 4}]}


def compile_bench(folder: Path) -> Path:
    build(folder)
    env = {**os.environ, "PKG_CONFIG_PATH": str(folder)}
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "loom"], capture_output=True, text=True, env=env,
                           check=True).stdout.split()
    exe = folder / "capi_bench"
    subprocess.run([os.environ.get("CC", "cc"), "-O2", "-o", str(exe), str(HERE / "capi_bench.c"), *flags], check=True)
    return exe


def c_time(exe: Path, *args) -> float:
    out = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"capi_bench {' '.join(map(str, args))} failed:\n{out.stderr}")
    return float(out.stdout.strip())


def median_round(fn, calls: int, rounds: int, sync=lambda: None) -> float:
    """Median over rounds of the mean seconds per call."""
    for _ in range(min(calls, 50)):
        fn()
    sync()
    per = []
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        sync()
        per.append((time.perf_counter() - t) / calls)
    return float(np.median(per))


def python_forward(calls: int, rounds: int, deterministic: bool) -> float:
    with loom.deterministic(deterministic):
        net = loom.Network.from_config(TINY)
        x = (np.arange(16, dtype=np.float32) / 16).reshape(1, 16)
        return median_round(lambda: net.forward(x), calls, rounds) * 1e9


def python_gemm(device: str, size: int, calls: int, rounds: int, deterministic: bool) -> float:
    be = backend.get(device)
    with loom.deterministic(deterministic):
        a = be.xp.full((size, size), 0.5, dtype=np.float32)
        b = be.xp.full((size, size), 0.25, dtype=np.float32)
        c = be.xp.zeros((size, size), dtype=np.float32)
        return median_round(lambda: ops.matmul(a, b, out=c), calls, rounds, be.synchronize) * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--size", type=int, default=1024, help="the gemm's M = N = K")
    ap.add_argument("--calls", type=int, default=2000, help="forward calls per round")
    ap.add_argument("--gemm-calls", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--mode", choices=("both", "deterministic", "fast"), default="both")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args()
    modes = {"both": (True, False), "deterministic": (True,), "fast": (False,)}[args.mode]
    results = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "device": args.device,
               "loom": loom.__version__, "numpy": np.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        exe = compile_bench(Path(tmp))
        rows = []
        for det in modes:
            name = "deterministic" if det else "fast"
            py = python_forward(args.calls, args.rounds, det)
            c = c_time(exe, "forward", json.dumps(TINY), 16, args.calls, args.rounds, *([] if det else ["fast"]))
            rows.append((f"tiny forward, {name}", "ns/call", c, py))
            dev = {"cpu": 0, "cuda": 1}[args.device]
            cg = c_time(exe, "gemm", dev, args.size, args.gemm_calls, args.rounds, *([] if det else ["fast"]))
            pg = python_gemm(args.device, args.size, args.gemm_calls, args.rounds, det)
            rows.append((f"gemm {args.size}^3 {args.device}, {name}", "ms/call", cg, pg))
    print(f"machine: {results['machine']}; device {args.device}; loom {results['loom']}; numpy {results['numpy']}")
    print(f"{'case':40s} {'unit':8s} {'from C':>12s} {'from Python':>12s} {'C / Python':>10s}")
    for case, unit, c, py in rows:
        print(f"{case:40s} {unit:8s} {c:12.1f} {py:12.1f} {c / py:10.2f}")
    results["rows"] = [dict(zip(("case", "unit", "c", "python"), r)) for r in rows]
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    sys.exit(main())

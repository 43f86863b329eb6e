"""Online-learning latency (issue 30): Loom's StepTweenChain tick against a PyTorch per-sample SGD step.

One tick of StepTweenChain: `state.set_input(x)`, `state.step()`, read `state.output()` to the host
(the network answers every tick), then `tween.step_update(state, target)` in chain mode (true
gradients, rate 0.01, no momentum: SGD on the pipelined gradients). For reference, Loom's plain
per-sample update (`tween.update(x, target)`, TweenChain) and, as the anchor, PyTorch's per-sample SGD
step (zero_grad, forward, MSE loss, backward, SGD lr 0.01, batch 1, output read to the host), on the
same architecture in the same run. Networks: the 784-256(relu)-10 MLP and a small convnet on 1x28x28
(conv 8 3x3 same relu, max pool 2, conv 16 3x3 same relu, max pool 2, flatten, dense 10). MSE loss on
random targets; samples cycle through a pool of 256 random inputs. Every tick is timed on its own
(perf_counter; on CUDA each tick ends with a synchronize, so it is a latency, not a throughput):
prints the median and p99 µs per tick, ticks/s (ticks over the timed loop's wall time) and the median
against PyTorch's. Each (framework, net) runs in its own process (the BLAS and PyTorch thread pools
spin-wait and slow each other down when they share one); with --rounds R the processes alternate R
times and the percentiles are taken over all R x N ticks. Loom runs in fast mode unless --deterministic;
PyTorch runs as it always does. Threads: OMP/OPENBLAS/MKL_NUM_THREADS and torch.set_num_threads all
get --threads (default 2, the BLAS threads Loom's CPU benchmarks use). --device cuda runs Loom on the
CUDA backend and PyTorch on cuda (when torch has CUDA) as the anchor. Run:
    .venv/bin/python benchmarks/online.py --device cpu --ticks 2000 --rounds 3 [--deterministic] [--json FILE]
    PYTHONPATH=. python benchmarks/online.py --device cuda --ticks 2000      # device machine
"""
import os

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")
os.environ.setdefault("MKL_NUM_THREADS", "2")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

import loom  # noqa: E402
from loom import backend  # noqa: E402
from loom.nn.tween import Tween  # noqa: E402

POOL, RATE, WARMUP = 256, 0.01, 30
NETS = {
    "mlp": {"loom": 1, "input": {"shape": [784]},
            "layers": [{"type": "dense", "units": 256, "activation": "relu"}, {"type": "dense", "units": 10}]},
    "conv": {"loom": 1, "input": {"shape": [1, 28, 28]},
             "layers": [{"type": "conv2d", "filters": 8, "kernel_size": 3, "padding": "same", "activation": "relu"},
                        {"type": "max_pool2d", "pool_size": 2},
                        {"type": "conv2d", "filters": 16, "kernel_size": 3, "padding": "same", "activation": "relu"},
                        {"type": "max_pool2d", "pool_size": 2}, {"type": "flatten"}, {"type": "dense", "units": 10}]},
}
CASES = ("loom-step-chain", "loom-update", "torch")
LABELS = {"loom-step-chain": "loom StepTweenChain", "loom-update": "loom update (TweenChain)",
          "torch": "pytorch per-sample SGD"}


def data(net: str):
    rng = np.random.default_rng(0)
    shape = NETS[net]["input"]["shape"]
    return (rng.random((POOL, 1, *shape), dtype=np.float32), rng.random((POOL, 1, 10), dtype=np.float32))


def timed(tick, ticks: int) -> tuple[list[float], float]:
    """Per-tick seconds of `ticks` calls of tick(i) after WARMUP untimed ones, and the loop's wall time."""
    for i in range(WARMUP):
        tick(i)
    lat = [0.0] * ticks
    clock = time.perf_counter
    start = clock()
    for i in range(ticks):
        t = clock()
        tick(WARMUP + i)
        lat[i] = clock() - t
    return lat, clock() - start


def loom_tick(case: str, net_name: str, device: str):
    net = loom.Network.from_config(NETS[net_name]).train()
    if device != "cpu":
        net.to(device)
    be = net.backend
    x, y = data(net_name)
    xs = [be.asarray(a) for a in x]
    ys = [be.asarray(a) for a in y]
    tw = Tween(net, {"mode": "chain", "rate": RATE, "loss": "mse"})
    sync = be.synchronize if device != "cpu" else (lambda: None)
    if case == "loom-update":
        def tick(i):
            report = tw.update(xs[i % POOL], ys[i % POOL], checked=False)
            be.to_numpy(report.output)                 # the answer, on the host
            sync()
        return tick, net
    state = net.step_state()
    lag = state.depth - 1                              # the output belongs to the input of `lag` ticks ago

    def tick(i):
        state.set_input(xs[i % POOL])
        state.step()
        out = state.output()
        if out is None:                                # the pipeline is still filling (warm-up only)
            return
        be.to_numpy(out)                               # the network answers every tick
        tw.step_update(state, ys[(i - lag) % POOL], checked=False)
        sync()
    return tick, net


def torch_tick(net_name: str, device: str, threads: int):
    import torch
    torch.set_num_threads(threads)
    nn = torch.nn
    if net_name == "mlp":
        model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))
    else:
        model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                              nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                              nn.Flatten(), nn.Linear(16 * 7 * 7, 10))
    dev = torch.device(device)
    model = model.to(dev).train()
    opt = torch.optim.SGD(model.parameters(), lr=RATE)
    lossf = nn.MSELoss()
    x, y = data(net_name)
    xs = [torch.from_numpy(a).to(dev) for a in x]
    ys = [torch.from_numpy(a).to(dev) for a in y]
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def tick(i):
        opt.zero_grad()
        out = model(xs[i % POOL])
        lossf(out, ys[i % POOL]).backward()
        opt.step()
        out.detach().cpu().numpy()                     # the answer, on the host
        sync()
    return tick, torch.__version__


def measure(case: str, net_name: str, device: str, ticks: int, deterministic: bool, threads: int) -> dict:
    if case == "torch":
        import torch
        if device == "cuda" and not torch.cuda.is_available():
            return {"skipped": f"torch {torch.__version__} has no CUDA"}
        tick, version = torch_tick(net_name, device, threads)
    else:
        with loom.deterministic(deterministic):
            tick, _ = loom_tick(case, net_name, device)
            lat, wall = timed(tick, ticks)
        return {"lat": lat, "wall": wall, "version": loom.__version__}
    lat, wall = timed(tick, ticks)
    return {"lat": lat, "wall": wall, "version": version}


def summary(lat: list[float], wall: float) -> dict:
    a = np.asarray(lat) * 1e6
    return {"median_us": float(np.median(a)), "p99_us": float(np.percentile(a, 99)),
            "mean_us": float(a.mean()), "ticks_per_s": len(a) / wall, "ticks": len(a)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--ticks", type=int, default=2000, help=f"timed ticks per process (after {WARMUP} warm-up ticks)")
    ap.add_argument("--rounds", type=int, default=1, help="processes per (framework, net), alternating")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--deterministic", action="store_true", help="Loom in deterministic mode")
    mode.add_argument("--fast", action="store_true", help="Loom in fast mode (the default)")
    ap.add_argument("--threads", type=int, default=2, help="BLAS threads and torch.set_num_threads")
    ap.add_argument("--nets", default="mlp,conv", help="comma-separated: mlp, conv")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    ap.add_argument("--only", nargs=2, metavar=("CASE", "NET"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.only:
        r = measure(args.only[0], args.only[1], args.device, args.ticks, args.deterministic, args.threads)
        print(json.dumps(r))
        return
    if args.device != "cpu":
        with loom.deterministic(args.deterministic):
            why = backend.available().get(args.device, "unknown device")
        if why != "ok":
            sys.exit(f"online.py: {args.device} cannot run here: {why}")
    try:
        import torch  # noqa: F401
        cases = CASES
    except ImportError:
        cases = CASES[:-1]
    nets = [n for n in args.nets.split(",") if n]
    env = {**os.environ, **{k: str(args.threads) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}}
    runs: dict[tuple[str, str], dict] = {}
    for _ in range(args.rounds):                     # alternate: every case sees the same drift in load
        for net in nets:
            for case in cases:
                cmd = [sys.executable, __file__, "--only", case, net, "--device", args.device,
                       "--ticks", str(args.ticks), "--threads", str(args.threads)]
                if args.deterministic:
                    cmd.append("--deterministic")
                out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
                r = json.loads(out.stdout)
                old = runs.setdefault((case, net), {"lat": [], "wall": 0.0})
                if "skipped" in r:
                    old["skipped"] = r["skipped"]
                    continue
                old["lat"] += r["lat"]
                old["wall"] += r["wall"]
                old["version"] = r["version"]
    results = {}
    for (case, net), r in runs.items():
        results[f"{case}/{net}"] = ({"skipped": r["skipped"]} if "skipped" in r
                                    else {**summary(r["lat"], r["wall"]), "version": r["version"]})
    loom_mode = "deterministic" if args.deterministic else "fast"
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; numpy {np.__version__}; device {args.device}; "
          f"loom {loom.__version__} {loom_mode} mode; {args.threads} threads; {args.rounds} x {args.ticks} ticks "
          f"per case (after {WARMUP} warm-up ticks each); batch 1, MSE, SGD / chain rate {RATE}")
    print(f"{'net':5} {'':34} {'median us':>10} {'p99 us':>10} {'ticks/s':>10} {'median vs torch':>16}")
    for net in nets:
        anchor = results.get(f"torch/{net}", {}).get("median_us")
        for case in cases:
            r = results[f"{case}/{net}"]
            label = LABELS[case] + (f" {r.get('version', '')}" if case == "torch" else "")
            if "skipped" in r:
                print(f"{net:5} {label:34} skipped: {r['skipped']}")
                continue
            ratio = f"{r['median_us'] / anchor:>15.2f}x" if anchor else f"{'-':>16}"
            print(f"{net:5} {label:34} {r['median_us']:>10.1f} {r['p99_us']:>10.1f} {r['ticks_per_s']:>10.0f} {ratio}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": f"{platform.machine()}, {os.cpu_count()} cores", "numpy": np.__version__,
                       "device": args.device, "mode": loom_mode, "threads": args.threads, "ticks": args.ticks,
                       "rounds": args.rounds, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()

"""CPU MLP benchmark: Loom vs PyTorch in the same process.

784 -> 256 (ReLU) -> 10 MLP, MSE loss, SGD lr 0.05, batch 32, 512 random samples per epoch, 2 threads.
Reports microseconds per sample for a training epoch and for batch-256 forward passes, best of
several repeats, for Loom in fast mode and in deterministic mode (the default) and for PyTorch; and
the floor under Loom's forward: NumPy's two GEMMs alone (float32, which fast mode runs, and float64,
which deterministic mode's correctly rounded products run), without the bias, activation or checks.
Run: .venv/bin/python benchmarks/cpu_mlp.py
"""
import os

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")
os.environ.setdefault("MKL_NUM_THREADS", "2")

import json  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

import loom  # noqa: E402
from loom import backend  # noqa: E402
from loom.nn import losses, optim  # noqa: E402

SAMPLES, BATCH, FWD_BATCH, REPEATS, ROUNDS = 512, 32, 256, 15, 3
CFG = {"loom": 1, "input": {"shape": [784]},
       "layers": [{"type": "dense", "units": 256, "activation": "relu"}, {"type": "dense", "units": 10}]}


def best_of(fn, repeats=REPEATS) -> float:
    fn()                                          # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def measure(which: str) -> dict:
    """Times for one framework, in this process (each framework gets its own process: OpenBLAS's and
    PyTorch's thread pools spin-wait and slow each other down when they share one)."""
    rng = np.random.default_rng(0)
    x = rng.random((SAMPLES, 784), dtype=np.float32)
    y = rng.random((SAMPLES, 10), dtype=np.float32)
    if which == "numpy-gemms":
        w1 = rng.standard_normal((256, 784), dtype=np.float32)
        w2 = rng.standard_normal((10, 256), dtype=np.float32)
        h = rng.standard_normal((FWD_BATCH, 256), dtype=np.float32)
        out = {}
        cpu = backend.get("cpu")                # the GEMM calls Loom's layers make, in their layout
        for name, dtype in (("forward", np.float32), ("forward64", np.float64)):
            xs, a, b, c = x.astype(dtype), w1.astype(dtype), w2.astype(dtype), h.astype(dtype)

            def gemms():
                for i in range(0, SAMPLES, FWD_BATCH):
                    cpu.matmul(xs[i:i + FWD_BATCH], a.T)
                    cpu.matmul(c, b.T)
            out[name] = best_of(gemms)
        return {**out, "train": float("nan"), "version": np.__version__}
    if which.startswith("loom"):
        with loom.deterministic(which == "loom-deterministic"):
            train, forward = loom_fns(x, y)
            return {"train": best_of(train), "forward": best_of(forward), "version": loom.__version__}
    train, forward, version = torch_fns(x, y)
    return {"train": best_of(train), "forward": best_of(forward), "version": version}


def loom_fns(x, y):
    net = loom.Network.from_config(CFG).train()
    loss = losses.build("mse")
    opt = optim.build({"type": "sgd", "lr": 0.05}, net.parameters())
    grads = net.gradients()

    def epoch():
        for i in range(0, SAMPLES, BATCH):
            pred = net.forward(x[i:i + BATCH])
            _, g = loss(pred, y[i:i + BATCH])
            net.zero_grad()
            net.backward(g, input_grad=False)      # as loom.train does; torch skips it too
            opt.step(grads)

    def forward():
        for i in range(0, SAMPLES, FWD_BATCH):
            net.forward(x[i:i + FWD_BATCH])
    return epoch, forward


def torch_fns(x, y):
    import torch
    torch.set_num_threads(2)
    model = torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    lossf = torch.nn.MSELoss()
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)

    def epoch():
        for i in range(0, SAMPLES, BATCH):
            opt.zero_grad()
            lossf(model(tx[i:i + BATCH]), ty[i:i + BATCH]).backward()
            opt.step()

    def forward():
        with torch.no_grad():
            for i in range(0, SAMPLES, FWD_BATCH):
                model(tx[i:i + FWD_BATCH])
    return epoch, forward, torch.__version__


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--only":
        print(json.dumps(measure(sys.argv[2])))
        return
    try:
        import torch  # noqa: F401
        names = ["loom-fast", "loom-deterministic", "torch", "numpy-gemms"]
    except ImportError:
        names = ["loom-fast", "loom-deterministic", "numpy-gemms"]
    best = {}
    for _ in range(ROUNDS):                       # alternate A, B, A, B: both see the same drift in load
        for name in names:
            out = subprocess.run([sys.executable, __file__, "--only", name], capture_output=True, text=True, check=True)
            r = json.loads(out.stdout)
            old = best.get(name)
            best[name] = r if old is None else {**r, **{key: min(old[key], r[key]) for key in r if key != "version"}}
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; numpy {np.__version__}; 2 threads; "
          f"best of {ROUNDS} processes x {REPEATS} repeats; {SAMPLES} samples, train batch {BATCH}, forward batch {FWD_BATCH}")
    print(f"{'':32} {'train us/sample':>16} {'forward us/sample':>18} {'train vs torch':>15} {'fwd vs torch':>13}")
    for name in names:
        r = best[name]
        if name == "numpy-gemms":
            continue
        label = {"loom-fast": "loom fast mode (NumPy BLAS)", "loom-deterministic": "loom deterministic mode"}.get(
            name, f"pytorch {r['version']}")
        ratio = (f"{r['train'] / best['torch']['train']:>14.2f}x {r['forward'] / best['torch']['forward']:>12.2f}x"
                 if "torch" in best else "")
        print(f"{label:32} {r['train'] / SAMPLES * 1e6:>16.2f} {r['forward'] / SAMPLES * 1e6:>18.2f} {ratio}")
    floor = best["numpy-gemms"]
    for key, what in (("forward", "float32"), ("forward64", "float64")):
        vs = f" ({floor[key] / best['torch']['forward']:.2f}x PyTorch's whole forward)" if "torch" in best else ""
        print(f"NumPy's two forward GEMMs alone, {what}: {floor[key] / SAMPLES * 1e6:.2f} us/sample{vs}")


if __name__ == "__main__":
    main()

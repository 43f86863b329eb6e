"""Kernel-level profile of GPU train steps (torch.profiler over CUPTI: Loom's, CuPy's and cuBLAS's
kernels alike), deterministic and fast mode, for the cases of benchmarks/gpu_train.py:

    PYTHONPATH=. python benchmarks/profile_kernels.py [mlp32 mlp4096 encoder conv lstm gpt] [--chain]
                                                      [--det-only | --fast-only] [--bf16]

--chain profiles the recorded dispatch chain's replays instead of eager steps (a recording takes
the branches that cannot look at data, so the two can differ); --bf16 trains in bf16 mixed precision.
Prints kernel milliseconds and launches per step, and the costliest kernels. Needs torch with CUDA (the device machine has it).
"""
import os
import sys

import numpy as np

import loom
from loom import backend
from loom.nn import losses, optim
from loom.nn.chain import TrainStep

sys.path.insert(0, os.path.dirname(__file__))
import gpu_train  # noqa: E402

STEPS = 3


def profile(cfg, batch, deterministic: bool, chained: bool, top: int, precision: str = "float32"):
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile
    cuda = backend.get("cuda")
    with loom.deterministic(deterministic), loom.precision(precision):
        net = loom.Network.from_config(cfg).to("cuda").train()
        rng = np.random.default_rng(0)
        x = cuda.asarray(rng.standard_normal((batch, *cfg["input"]["shape"]), dtype=np.float32))
        y = cuda.asarray(rng.standard_normal((batch, *net.output_spec.shape), dtype=np.float32))
        loss, opt = losses.build("mse"), optim.build({"type": "sgd", "lr": 0.01}, net.parameters())
        grads, chain = net.gradients(), TrainStep(net, loss, opt)

        def eager():
            _, g = loss(net.forward(x), y)
            net.zero_grad()
            net.backward(g, input_grad=False)
            opt.step(grads)
        step = (lambda: chain(x, y, checked=False)) if chained else eager
        for _ in range(3):
            step()
        cuda.synchronize()
        with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(STEPS):
                step()
            cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_type.name == "CUDA"]
    total = sum(e.self_device_time_total for e in events) / STEPS / 1e3
    launches = sum(e.count for e in events) / STEPS
    print(f"  {'deterministic' if deterministic else 'fast'}: {total:.3f} ms of kernels, {launches:.0f} per step")
    for e in sorted(events, key=lambda e: -e.self_device_time_total)[:top]:
        print(f"    {e.self_device_time_total / STEPS / 1e3:8.3f} ms {e.count / STEPS:6.0f}x  {e.key[:100]}")


def main(argv):
    cases = {title: (title, cfg, batch) for title, cfg, batch in gpu_train.cases()}
    names = {short: cases[title] for short, title in gpu_train.SHORT.items()}
    chosen = [a for a in argv if not a.startswith("--")] or ["mlp32", "mlp4096", "encoder", "conv"]
    modes = (True,) if "--det-only" in argv else (False,) if "--fast-only" in argv else (True, False)
    precision = "bf16" if "--bf16" in argv else "float32"
    for key in chosen:
        title, cfg, batch = names[key]
        print(f"{title} ({'recorded chain' if '--chain' in argv else 'eager'}, {precision})")
        for det in modes:
            profile(cfg, batch, det, "--chain" in argv, 25 if det else 15, precision)


if __name__ == "__main__":
    main(sys.argv[1:])

"""Where a GPU train step spends its time, layer by layer (synchronizing around every layer, so the
numbers are per-layer device times plus one launch latency each, not overlapped step time):
    PYTHONPATH=. python benchmarks/profile_layers.py [encoder|conv|mlp]
"""
import sys
import time
from collections import defaultdict

import numpy as np
from gpu_train import cases  # noqa: E402 - benchmarks/ is on sys.path when run as a script

import loom
from loom import backend


def main(which="encoder"):
    cfg, batch = {"mlp": cases()[0][1:], "encoder": cases()[2][1:], "conv": cases()[3][1:]}[which]
    cuda = backend.get("cuda")
    net = loom.Network.from_config(cfg).to("cuda").train()
    times = defaultdict(float)

    def wrap(layer, name):
        fwd, bwd = layer.forward, layer.backward

        def forward(x, fc):
            cuda.synchronize()
            t = time.perf_counter()
            y = fwd(x, fc)
            cuda.synchronize()
            times[(name, "forward")] += time.perf_counter() - t
            return y

        def backward(dy):
            cuda.synchronize()
            t = time.perf_counter()
            dx = bwd(dy)
            cuda.synchronize()
            times[(name, "backward")] += time.perf_counter() - t
            return dx
        layer.forward, layer.backward = forward, backward

    for _, layer in net.root.walk():
        if layer is not net.root and not layer.children:
            wrap(layer, layer.type)
    rng = np.random.default_rng(0)
    x = cuda.asarray(rng.standard_normal((batch, *cfg["input"]["shape"]), dtype=np.float32))
    for i in range(4):
        if i == 1:
            times.clear()
        y = net.forward(x)
        net.zero_grad()
        net.backward(cuda.xp.ones_like(y), input_grad=False)
    total = sum(times.values())
    print(f"{which}: {total / 3 * 1e3:.2f} ms per step in leaf layers (3 steps)")
    for (name, phase), t in sorted(times.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<24}{phase:<10}{t / 3 * 1e3:9.3f} ms  {t / total:6.1%}")


if __name__ == "__main__":
    main(*sys.argv[1:])

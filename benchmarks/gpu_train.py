"""GPU train-step benchmark: Loom (CuPy backend, eager) vs PyTorch eager and PyTorch with a captured
CUDA graph, on the same GPU in the same run. Loom is timed eagerly and as a dispatch chain
(loom.nn.chain.TrainStep: the step recorded once into a CUDA graph and replayed). Run on the device machine:
    PYTHONPATH=. python benchmarks/gpu_train.py
Cases (issue 5): (a) MLP 784-256-10, batch 32 and 4096; (b) 6-layer pre-norm transformer encoder,
d=512, 8 heads, sequence 256, batch 32 (Loom: residual(layer_norm, attention) +
residual(layer_norm, dense 2048 gelu, dense 512); PyTorch: the same blocks written out);
(c) a convnet on 1x28x28, batch 256. SGD lr 0.01, MSE loss on random targets. Prints milliseconds per
train step (median of timed windows) and the ratio to each PyTorch variant.
"""
import json
import statistics
import sys
import time

import numpy as np

import loom
from loom import backend
from loom.nn import losses, optim
from loom.nn.chain import TrainStep

STEPS, WINDOWS = 50, 5


def cases():
    mlp = {"loom": 1, "input": {"shape": [784]}, "layers": [{"type": "dense", "units": 256, "activation": "relu"},
                                                          {"type": "dense", "units": 10}]}
    block = [{"type": "residual", "layers": [{"type": "layer_norm"},
                                            {"type": "multi_head_attention", "heads": 8}]},
             {"type": "residual", "layers": [{"type": "layer_norm"},
                                            {"type": "dense", "units": 2048, "activation": "gelu"},
                                            {"type": "dense", "units": 512}]}]
    encoder = {"loom": 1, "input": {"shape": [256, 512]}, "layers": block * 6}
    conv = {"loom": 1, "input": {"shape": [1, 28, 28]},
            "layers": [{"type": "conv2d", "filters": 32, "kernel_size": 3, "padding": "same", "activation": "relu"},
                       {"type": "max_pool2d", "pool_size": 2},
                       {"type": "conv2d", "filters": 64, "kernel_size": 3, "padding": "same", "activation": "relu"},
                       {"type": "max_pool2d", "pool_size": 2}, {"type": "flatten"},
                       {"type": "dense", "units": 128, "activation": "relu"}, {"type": "dense", "units": 10}]}
    return [("a: MLP batch 32", mlp, 32), ("a: MLP batch 4096", mlp, 4096),
            ("b: transformer encoder", encoder, 32), ("c: convnet batch 256", conv, 256)]


def timed(step, sync) -> float:
    for _ in range(3):
        step()
    sync()
    out = []
    for _ in range(WINDOWS):
        t = time.perf_counter()
        for _ in range(STEPS):
            step()
        sync()
        out.append((time.perf_counter() - t) / STEPS * 1e3)
    return statistics.median(out)


def loom_steps(cfg, batch, deterministic=False, modes=(False, True)):
    """(eager ms, dispatch-chain ms) per train step, in fast mode unless asked (issue 5's targets are
    fast mode's; benchmarks/determinism.py times deterministic mode)."""
    with loom.deterministic(deterministic):
        return _loom_steps(cfg, batch, modes)


def _loom_steps(cfg, batch, modes):
    cuda = backend.get("cuda")
    out = []
    for chained in modes:
        net = loom.Network.from_config(cfg).to("cuda").train()
        rng = np.random.default_rng(0)
        x = cuda.asarray(rng.standard_normal((batch, *cfg["input"]["shape"]), dtype=np.float32))
        y = cuda.asarray(rng.standard_normal((batch, *net.output_spec.shape), dtype=np.float32))
        loss, opt, grads = losses.build("mse"), optim.build({"type": "sgd", "lr": 0.01}, net.parameters()), net.gradients()
        chain = TrainStep(net, loss, opt)

        def eager():
            _, g = loss(net.forward(x), y)
            net.zero_grad()
            net.backward(g, input_grad=False)
            opt.step(grads)
        out.append(timed((lambda: chain(x, y, checked=False)) if chained else eager, cuda.synchronize))
        assert not chain.eager_reasons, chain.eager_reasons
    return tuple(out)


def torch_model(cfg):
    import torch
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.n1, self.n2 = nn.LayerNorm(512), nn.LayerNorm(512)
            self.att = nn.MultiheadAttention(512, 8, batch_first=True)
            self.ff = nn.Sequential(nn.Linear(512, 2048), nn.GELU(), nn.Linear(2048, 512))

        def forward(self, x):
            h = self.n1(x)
            x = x + self.att(h, h, h, need_weights=False)[0]
            return x + self.ff(self.n2(x))

    shape = cfg["input"]["shape"]
    if shape == [784]:
        return nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))
    if shape == [256, 512]:
        return nn.Sequential(*[Block() for _ in range(6)])
    return nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10))


def torch_steps(cfg, batch):
    import torch
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = torch.device("cuda")
    model = torch_model(cfg).to(dev)
    x = torch.randn(batch, *cfg["input"]["shape"], device=dev)
    with torch.no_grad():
        y = torch.randn_like(model(x))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    lossf = torch.nn.MSELoss()

    def eager():
        opt.zero_grad(set_to_none=True)
        lossf(model(x), y).backward()
        opt.step()
    t_eager = timed(eager, torch.cuda.synchronize)

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            eager()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        lossf(model(x), y).backward()
        opt.step()
    t_graph = timed(graph.replay, torch.cuda.synchronize)
    return t_eager, t_graph


def main():
    import torch
    gpu = backend.get("cuda").devices()[0]["name"]
    rows = []
    for name, cfg, batch in cases():
        le, lc = loom_steps(cfg, batch)
        te, tg = torch_steps(cfg, batch)
        rows.append({"case": name, "loom_eager_ms": le, "loom_ms": lc, "torch_eager_ms": te, "torch_graph_ms": tg})
    print(f"GPU: {gpu}; torch {torch.__version__}; ms per train step, median of {WINDOWS} windows x {STEPS} steps")
    print(f"{'case':<26}{'loom eager':>11}{'loom chain':>11}{'torch eager':>13}{'torch graph':>13}"
          f"{'eager/loom':>12}{'best/loom':>11}")
    for r in rows:
        best = min(r["torch_eager_ms"], r["torch_graph_ms"])
        print(f"{r['case']:<26}{r['loom_eager_ms']:>11.3f}{r['loom_ms']:>11.3f}{r['torch_eager_ms']:>13.3f}"
              f"{r['torch_graph_ms']:>13.3f}"
              f"{r['torch_eager_ms'] / r['loom_ms']:>11.2f}x{best / r['loom_ms']:>10.2f}x")
    if len(sys.argv) > 1:
        json.dump(rows, open(sys.argv[1], "w"), indent=1)


if __name__ == "__main__":
    main()

"""GPU train-step benchmark: Loom (CuPy backend) against PyTorch on the same GPU in the same run (issues 5
and 61). Loom is timed as a dispatch chain (loom.nn.chain.TrainStep: the step recorded once into a CUDA
graph and replayed; --eager adds the eager step), in each mode and precision asked for; PyTorch eagerly and
as a captured CUDA graph in float32 (TF32 off: the float32 anchor), with TF32 on, and under bf16 autocast
(the mixed-precision anchor). Run on the device machine:

    PYTHONPATH=. python benchmarks/gpu_train.py [--cases mlp32,lstm,gpt] [--modes fast,deterministic]
                                                [--precision float32,bf16] [--eager] [--json FILE]

Cases: mlp32 / mlp4096, an MLP 784-256-10 at batch 32 and 4096; encoder, 6 pre-norm transformer blocks,
d 512, 8 heads, sequence 256, batch 32; conv, a convnet on 1x28x28 at batch 256; lstm, an LSTM of hidden
256 over sequences of 64 (64 features), batch 64; gpt, 12 causal pre-norm blocks, d 768, 12 heads,
sequence 512, batch 8. SGD lr 0.01, MSE loss on random targets. Milliseconds a train step (median of
timed windows of up to 50 steps, a quarter of a second for slower steps); every Loom row prints its
ratio to PyTorch's float32 graph (TF32 off), to its best float32 step, and, for bf16 rows, to bf16 autocast +
graph; deterministic rows also to fast mode's.
(Autocast runs cuDNN's LSTM in float16, not bfloat16: the LSTM's "bf16" anchor is that.)
"""
import argparse
import json
import statistics
import time

import numpy as np

import loom
from loom import backend
from loom.nn import losses, optim
from loom.nn.chain import TrainStep

STEPS, WINDOWS = 50, 5


def _block(d, heads, ff, causal):
    return [{"type": "residual", "layers": [{"type": "layer_norm"},
                                           {"type": "multi_head_attention", "heads": heads, "causal": causal}]},
            {"type": "residual", "layers": [{"type": "layer_norm"},
                                           {"type": "dense", "units": ff, "activation": "gelu"},
                                           {"type": "dense", "units": d}]}]


def cases():
    mlp = {"loom": 1, "input": {"shape": [784]}, "layers": [{"type": "dense", "units": 256, "activation": "relu"},
                                                          {"type": "dense", "units": 10}]}
    encoder = {"loom": 1, "input": {"shape": [256, 512]}, "layers": _block(512, 8, 2048, False) * 6}
    gpt = {"loom": 1, "input": {"shape": [512, 768]}, "layers": _block(768, 12, 3072, True) * 12}
    conv = {"loom": 1, "input": {"shape": [1, 28, 28]},
            "layers": [{"type": "conv2d", "filters": 32, "kernel_size": 3, "padding": "same", "activation": "relu"},
                       {"type": "max_pool2d", "pool_size": 2},
                       {"type": "conv2d", "filters": 64, "kernel_size": 3, "padding": "same", "activation": "relu"},
                       {"type": "max_pool2d", "pool_size": 2}, {"type": "flatten"},
                       {"type": "dense", "units": 128, "activation": "relu"}, {"type": "dense", "units": 10}]}
    lstm = {"loom": 1, "input": {"shape": [64, 64]}, "layers": [{"type": "lstm", "hidden": 256, "return_sequences": True}]}
    return [("a: MLP batch 32", mlp, 32), ("a: MLP batch 4096", mlp, 4096),
            ("b: transformer encoder", encoder, 32), ("c: convnet batch 256", conv, 256),
            ("d: LSTM", lstm, 64), ("e: GPT-style decoder", gpt, 8)]


SHORT = {"mlp32": "a: MLP batch 32", "mlp4096": "a: MLP batch 4096", "encoder": "b: transformer encoder",
         "conv": "c: convnet batch 256", "lstm": "d: LSTM", "gpt": "e: GPT-style decoder"}


def timed(step, sync) -> float:
    """Median ms a step over WINDOWS windows of up to STEPS steps (fewer for slow steps: a window of
    about a quarter of a second, at least 3 steps)."""
    for _ in range(3):
        step()
    sync()
    t = time.perf_counter()
    step()
    sync()
    steps = max(3, min(STEPS, int(0.25 / max(time.perf_counter() - t, 1e-6))))
    out = []
    for _ in range(WINDOWS):
        t = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        out.append((time.perf_counter() - t) / steps * 1e3)
    return statistics.median(out)


def loom_steps(cfg, batch, deterministic=False, modes=(False, True)):
    """(eager ms, dispatch-chain ms) per float32 train step, in fast mode unless asked (what
    benchmarks/determinism.py and profile_kernels.py time)."""
    return tuple(loom_step(cfg, batch, deterministic, "float32", chained) for chained in modes)


def loom_step(cfg, batch, deterministic: bool, precision: str, chained: bool = True) -> float:
    """ms a train step of `cfg`, in that mode and precision; the chain must record (no eager fallback)."""
    cuda = backend.get("cuda")
    with loom.deterministic(deterministic), loom.precision(precision):
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
        ms = timed((lambda: chain(x, y, checked=False)) if chained else eager, cuda.synchronize)
        assert not chain.eager_reasons, chain.eager_reasons
    return ms


def torch_model(cfg):
    import torch
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self, d, heads, ff, causal, length):
            super().__init__()
            self.n1, self.n2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.att = nn.MultiheadAttention(d, heads, batch_first=True)
            self.ff = nn.Sequential(nn.Linear(d, ff), nn.GELU(), nn.Linear(ff, d))
            mask = torch.triu(torch.full((length, length), float("-inf")), 1) if causal else None
            self.register_buffer("mask", mask)

        def forward(self, x):
            h = self.n1(x)
            x = x + self.att(h, h, h, need_weights=False, attn_mask=self.mask)[0]
            return x + self.ff(self.n2(x))

    class LSTM(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.LSTM(64, 256, batch_first=True)

        def forward(self, x):
            return self.rnn(x)[0]

    shape = cfg["input"]["shape"]
    if shape == [784]:
        return nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))
    if shape == [256, 512]:
        return nn.Sequential(*[Block(512, 8, 2048, False, 256) for _ in range(6)])
    if shape == [512, 768]:
        return nn.Sequential(*[Block(768, 12, 3072, True, 512) for _ in range(12)])
    if shape == [64, 64]:
        return LSTM()
    return nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10))


def torch_steps(cfg, batch) -> dict:
    """PyTorch's ms a step: float32 eager and graph (TF32 off), graph with TF32, bf16 autocast eager and graph."""
    import torch
    dev = torch.device("cuda")
    out = {}
    for label, tf32, bf16 in (("fp32", False, False), ("tf32", True, False), ("bf16", False, True)):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        torch.manual_seed(0)
        model = torch_model(cfg).to(dev)
        x = torch.randn(batch, *cfg["input"]["shape"], device=dev)
        with torch.no_grad():
            y = torch.randn_like(model(x))
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        lossf = torch.nn.MSELoss()

        def forward_backward():
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16, cache_enabled=False):
                loss = lossf(model(x).float(), y)
            loss.backward()

        def eager():
            opt.zero_grad(set_to_none=True)
            forward_backward()
            opt.step()
        if label != "tf32":
            out[f"{label} eager"] = timed(eager, torch.cuda.synchronize)
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3):
                eager()
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        opt.zero_grad(set_to_none=True)
        with torch.cuda.graph(graph):
            forward_backward()
            opt.step()
        out[f"{label} graph"] = timed(graph.replay, torch.cuda.synchronize)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="mlp32,mlp4096,encoder,conv,lstm,gpt")
    ap.add_argument("--modes", default="fast,deterministic")
    ap.add_argument("--precision", default="float32,bf16")
    ap.add_argument("--eager", action="store_true", help="also time Loom's eager step (fast mode, float32)")
    ap.add_argument("--json", default=None, help="write the rows here")
    args = ap.parse_args()
    import torch
    gpu = backend.get("cuda").devices()[0]["name"]
    print(f"# {gpu}; torch {torch.__version__}; ms a train step, median of {WINDOWS} windows x {STEPS} steps")
    print("| case | Loom mode | precision | Loom ms | torch fp32 graph | torch best fp32 (tf32 graph) | "
          "torch bf16 autocast graph | fp32 graph / Loom | best fp32 / Loom | bf16 graph / Loom | det. / fast |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    all_cases, rows = {case: (cfg, batch) for case, cfg, batch in cases()}, []
    for name in args.cases.split(","):
        cfg, batch = all_cases[SHORT[name]]
        t = torch_steps(cfg, batch)
        best32 = min(t["fp32 eager"], t["fp32 graph"])
        fast = {}
        for mode in args.modes.split(","):
            for precision in args.precision.split(","):
                ms = loom_step(cfg, batch, mode == "deterministic", precision)
                if mode == "fast":
                    fast[precision] = ms
                ratio = f"{ms / fast[precision]:.2f}" if mode == "deterministic" and precision in fast else ""
                bf16 = f"{t['bf16 graph'] / ms:.2f}" if precision == "bf16" else ""
                print(f"| {name} | {mode} | {precision} | {ms:.3f} | {t['fp32 graph']:.3f} | {best32:.3f} "
                      f"({t['tf32 graph']:.3f}) | {t['bf16 graph']:.3f} | {t['fp32 graph'] / ms:.2f} | "
                      f"{best32 / ms:.2f} | {bf16} | {ratio} |", flush=True)
                rows.append({"case": name, "mode": mode, "precision": precision, "loom_ms": ms, **t})
        if args.eager:
            ms = loom_step(cfg, batch, False, "float32", chained=False)
            print(f"| {name} | fast, eager | float32 | {ms:.3f} | {t['fp32 graph']:.3f} | {best32:.3f} | | "
                  f"{t['fp32 graph'] / ms:.2f} | {best32 / ms:.2f} | | |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()

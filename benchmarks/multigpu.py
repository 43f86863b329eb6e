"""Data-parallel training throughput: Loom (fast and deterministic) against PyTorch DDP, on 1, 2, 4 ...
GPUs of one host, the same model and per-GPU batch, in the same run. Run on the device machine:

    PYTHONPATH=. python benchmarks/multigpu.py [--gpus 1,2,4] [--steps 30] [--json out.json]

Models (benchmarks/gpu_train.py's): the 6-layer pre-norm encoder (d 512, 8 heads, sequence 256,
per-GPU batch 32) and the convnet on 1x28x28 (per-GPU batch 256); SGD lr 0.01, MSE on random
targets, float32 with TF32 off. Every configuration runs as N processes started by
loom.distributed.launch (torchrun's variables, so DDP's env:// initialization reads them too);
rank 0 reports samples/s over the timed steps (all ranks synchronized at both ends). Loom's steps are
recorded dispatch chains (CUDA graphs, the NCCL calls inside); DDP runs eagerly (its bucketed
all-reduce overlaps the backward). Efficiency = samples/s at N GPUs / (N x samples/s at 1 GPU).
"""
import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_train import cases, torch_model  # noqa: E402 - the benchmark folder is not a package

MODELS = {"encoder": ("b: transformer encoder", 32), "convnet": ("c: convnet batch 256", 256)}
IMPLS = ("loom-fast", "loom-det", "torch-ddp")
WARMUP = 5


def config(model):
    name = MODELS[model][0]
    return next(cfg for case, cfg, _ in cases() if case == name)


def loom_rank(model, deterministic, steps):
    import loom
    from loom import distributed
    from loom.kernels import batch_split
    from loom.nn import losses, optim
    from loom.nn.chain import TrainStep
    cfg, per_gpu = config(model), MODELS[model][1]
    group = distributed.init(device="cuda")
    with loom.deterministic(deterministic):
        net = loom.Network.from_config(cfg).to("cuda").train()
        cuda = net.backend
        rng = np.random.default_rng(group.rank)
        x = cuda.asarray(rng.standard_normal((per_gpu, *cfg["input"]["shape"]), dtype=np.float32))
        y = cuda.asarray(rng.standard_normal((per_gpu, *net.output_spec.shape), dtype=np.float32))
        dp = distributed.DataParallel(group)
        dp.start(net, b"benchmark")
        opt = optim.build({"type": "sgd", "lr": 0.01}, net.parameters())
        step = TrainStep(net, losses.build("mse"), opt)
        step.reduce_gradients = dp.reduce_gradients
        total = per_gpu * group.size

        def one():
            with batch_split.split(group.collective, per_gpu, total, per_gpu * group.rank):
                step(x, y, checked=False)
        elapsed = _timed(one, cuda.synchronize, group.collective.barrier, steps)
        assert not step.eager_reasons, step.eager_reasons
        step.cache.clear()          # its graphs hold NCCL calls: the communicator outlives them
    rank = group.rank
    distributed.shutdown()
    return rank, total * steps / elapsed


def torch_rank(model, steps):
    import torch
    import torch.distributed as dist
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    local = int(os.environ["LOCAL_RANK"])
    torch.cuda.set_device(local)
    dist.init_process_group("nccl")
    cfg, per_gpu = config(model), MODELS[model][1]
    dev = torch.device("cuda", local)
    torch.manual_seed(0)
    ddp = torch.nn.parallel.DistributedDataParallel(torch_model(cfg).to(dev), device_ids=[local])
    x = torch.randn(per_gpu, *cfg["input"]["shape"], device=dev)
    with torch.no_grad():
        y = torch.randn_like(ddp(x))
    opt = torch.optim.SGD(ddp.parameters(), lr=0.01)
    lossf = torch.nn.MSELoss()

    def one():
        opt.zero_grad(set_to_none=True)
        lossf(ddp(x), y).backward()
        opt.step()

    def barrier():
        dist.barrier()
        torch.cuda.synchronize()
    elapsed = _timed(one, torch.cuda.synchronize, barrier, steps)
    rank, size = dist.get_rank(), dist.get_world_size()
    dist.destroy_process_group()
    return rank, per_gpu * size * steps / elapsed


def _timed(step, sync, barrier, steps) -> float:
    for _ in range(WARMUP):
        step()
    sync()
    barrier()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    barrier()
    return time.perf_counter() - t


def rank_main(model, impl, steps, out):
    if impl == "torch-ddp":
        rank, rate = torch_rank(model, steps)
    else:
        rank, rate = loom_rank(model, impl == "loom-det", steps)
    if rank == 0:
        with open(out, "w") as f:
            json.dump({"samples_per_s": rate}, f)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpus", default=None, help="comma-separated GPU counts (default: 1, 2, 4 up to the host's)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--models", default="encoder,convnet")
    p.add_argument("--impls", default=",".join(IMPLS))
    p.add_argument("--json", default=None)
    p.add_argument("--rank-run", nargs=3, metavar=("MODEL", "IMPL", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.rank_run:
        rank_main(args.rank_run[0], args.rank_run[1], args.steps, args.rank_run[2])
        return
    from loom import backend
    from loom.distributed import launch
    have = backend.get("cuda").collectives.device_count()
    counts = [int(c) for c in args.gpus.split(",")] if args.gpus else [c for c in (1, 2, 4, 8) if c <= have]
    gpu = backend.get("cuda").devices()[0]["name"]
    rows = []
    for model in args.models.split(","):
        for impl in args.impls.split(","):
            for n in counts:
                with tempfile.TemporaryDirectory() as tmp:
                    out = os.path.join(tmp, "r.json")
                    launch.spawn([sys.executable, os.path.abspath(__file__), "--steps", str(args.steps),
                                  "--rank-run", model, impl, out], n, timeout=900)
                    with open(out) as f:
                        rate = json.load(f)["samples_per_s"]
                rows.append({"model": model, "impl": impl, "gpus": n, "samples_per_s": rate})
                print(f"{model:<9}{impl:<11}{n:>3} GPU(s): {rate:>10.1f} samples/s", flush=True)
    print(f"\nGPU: {gpu} x {max(counts)}; {args.steps} timed steps; samples/s (efficiency vs 1 GPU; ratio to DDP)")
    by = {(r["model"], r["impl"], r["gpus"]): r["samples_per_s"] for r in rows}
    for model in args.models.split(","):
        for n in counts:
            cells = []
            for impl in args.impls.split(","):
                rate = by[(model, impl, n)]
                base = by.get((model, impl, 1))
                eff = f"{rate / (n * base):.0%}" if base else "-"
                ddp = by.get((model, "torch-ddp", n))
                ratio = f"{rate / ddp:.2f}x" if ddp else "-"
                cells.append(f"{impl} {rate:.0f} ({eff}; {ratio})")
            print(f"{model:<9}{n:>2} GPU(s)  " + "  ".join(cells))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"gpu": gpu, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()

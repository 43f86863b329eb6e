"""One rank of the fault tests: `python train_rank.py OUT FAULT`, under loom.distributed.launch.spawn.

Trains a small convnet data-parallel with a checkpoint in OUT, on the CPU (the store's collective) or,
with FAULT_DEVICE=cuda, one GPU per rank (NCCL);
FAULT is "none", "die:R:S" (rank R exits with code 1 at its S-th step) or "hang:R:S" (rank R
sleeps at its S-th step). Rank 0 writes OUT/weights.npz at the end."""
import os
import sys
import time

import numpy as np

import loom
from loom import distributed
from loom.distributed import data_parallel, launch
from loom.errors import LoomError

CONFIG = {"loom": 1, "name": "c", "seed": 0, "dtype": "float32", "input": {"shape": [1, 6, 6]},
          "layers": [{"type": "conv2d", "filters": 3, "kernel_size": 3, "activation": "relu"},
                     {"type": "flatten"}, {"type": "dense", "units": 4}]}


def spawn_world(out, fault: str, ranks: int = 2, epochs: int = 3, resume=None, timeout: float = 60,
                device: str = "cpu") -> list[int]:
    """Run this script as `ranks` ranks (loom.distributed.launch.spawn) with a 3 s collective timeout."""
    argv = [sys.executable, os.path.abspath(__file__), str(out), fault, str(epochs)] + ([str(resume)] if resume else [])
    return launch.spawn(argv, ranks, env={"FAULT_TIMEOUT": "3", "FAULT_DEVICE": device}, timeout=timeout, grace=5)


def data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((24, 1, 6, 6)).astype(np.float32), rng.integers(0, 4, 24)


def main(out: str, fault: str, epochs: int, resume: str | None) -> None:
    device = os.environ.get("FAULT_DEVICE", "cpu")
    group = distributed.init(device=device, timeout=float(os.environ.get("FAULT_TIMEOUT", "3")))
    kind, rank, step = (fault.split(":") + ["0", "0"])[:3] if fault != "none" else ("none", "-1", "0")
    steps = [0]
    original = data_parallel.DataParallel.batch

    def batch(self, idx):
        steps[0] += 1
        if group.rank == int(rank) and steps[0] == int(step):
            if kind == "die":
                os._exit(1)
            time.sleep(600)
        return original(self, idx)
    data_parallel.DataParallel.batch = batch
    X, Y = data()
    net = loom.Network.from_config(CONFIG)
    loom.train(net, X, Y, device=device, epochs=epochs, batch_size=8, optimizer={"type": "sgd", "lr": 0.1}, verbose=False,
               checkpoint=os.path.join(out, "ck.loom"), resume=resume)
    if group.rank == 0:
        np.savez(os.path.join(out, "weights.npz"), **{k: net.backend.to_numpy(v) for k, v in net.parameters().items()})
    distributed.shutdown()


if __name__ == "__main__":
    try:
        main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else None)
    except LoomError as exc:
        print(f"loom: error: {exc}", file=sys.stderr, flush=True)
        sys.exit(3)

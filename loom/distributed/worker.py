"""One rank of `loom.train(..., devices=N)`: `python -m loom.distributed.worker FOLDER`.

The launcher's variables say which rank this is; FOLDER holds what the calling process wrote
(loom/distributed/training.py): the network, X and Y, and the settings. Every rank trains; rank 0
writes the trained network and the history back into FOLDER.
"""
from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

import numpy as np

from ..errors import LoomError
from ..formats import load
from ..nn import train as nn_train
from . import world
from .data_parallel import DataParallel


def main(argv: list[str]) -> int:
    folder = Path(argv[0])
    with open(folder / "settings.pkl", "rb") as f:
        settings = pickle.load(f)       # written by the process that spawned this one
    device, frozen = settings.pop("device"), settings.pop("frozen")
    group = world.init(device=device)
    try:
        net = load(folder / "net.loom")
        if frozen:
            net.freeze(*frozen)
        X = np.load(folder / "X.npy", allow_pickle=False)
        Y = np.load(folder / "Y.npy", allow_pickle=False)
        history = nn_train.train(net, X, Y, device=device, parallel=DataParallel(group), **settings)
        if group.rank == 0:
            net.save(folder / "trained.loom")
            with open(folder / "history.json", "w") as f:
                json.dump({"logs": history.logs, "epochs": history.epochs,
                           "stopped_early": history.stopped_early}, f)
    finally:
        world.shutdown()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except LoomError as exc:
        print(f"loom: error: {exc}", file=sys.stderr)
        sys.exit(3)

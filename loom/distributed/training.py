"""loom.train with devices=N: data-parallel training, in this process's world or in ranks it spawns.

- Inside a rank (loom.distributed.init() joined a world): train over that world.
- devices=N > 1 outside a world: write the network, the data and the settings to a temporary
  folder, start N ranks of `python -m loom.distributed.worker` on this host (the launcher), and
  load rank 0's weights and history back into `net` when they finish. A rank that fails fails the
  call with a DistributedError naming it.
- Otherwise: one process, loom.nn.train.train.
"""
from __future__ import annotations

import json
import pickle
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from .. import backend, mixed_precision, mode
from ..errors import ConfigError, DistributedError
from ..formats import load
from ..nn import train as nn_train
from . import launch, world
from .data_parallel import DataParallel

_LOCAL_ONLY = ("callbacks", "telemetry")      # objects of this process: they cannot run in the ranks


def train(net: Any, X: ArrayLike, Y: ArrayLike, *args: Any, devices: int | None = None,
          **kwargs: Any) -> nn_train.History:
    """loom.nn.train.train's arguments, plus devices: the number of ranks (GPUs; with device="cpu",
    CPU processes, for tests and debugging). See loom.distributed's docstring."""
    group = world.current()
    if group is not None:
        if devices is not None and devices != group.size:
            raise ConfigError("devices", f"devices={devices}, but this process is a rank of a world of {group.size}")
        kwargs.setdefault("device", group.device)
        return nn_train.train(net, X, Y, *args, parallel=DataParallel(group), **kwargs)
    if devices is None or devices == 1:
        return nn_train.train(net, X, Y, *args, **kwargs)
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        raise ConfigError("devices", f"expected a positive number of devices, got {devices!r}")
    if args:
        raise ConfigError("devices", "with devices=N pass loom.train's settings by name (loss=..., epochs=...)")
    return _spawned(net, X, Y, devices, kwargs)


def _context_settings(net, kwargs: dict) -> dict:
    """The mode and precision this process is in (loom.deterministic, loom.precision), for the ranks it
    starts (fresh processes, in the defaults), where neither an argument nor the training block sets them."""
    block, out = net.config.get("training") or {}, {}
    if kwargs.get("deterministic") is None and block.get("deterministic") is None:
        out["deterministic"] = mode.is_deterministic()
    if kwargs.get("precision") is None and block.get("precision") is None:
        out["precision"] = mixed_precision.current()
    return out


def _spawned(net, X, Y, devices: int, kwargs: dict) -> nn_train.History:
    for key in _LOCAL_ONLY:
        if kwargs.get(key):
            raise ConfigError(key, f"{key} run in this process and cannot cross to the ranks of devices={devices}; "
                                   "start the ranks yourself (loom.distributed.init in each) to use them")
    device = kwargs.pop("device", None) or ("cpu" if net.device == "cpu" and not _gpus() else "cuda")
    if device == "cuda":
        have = _gpus()
        if have < devices:
            raise DistributedError(f"devices={devices} asks for {devices} GPUs, but this host has {have}")
    with tempfile.TemporaryDirectory(prefix="loom-ranks-") as tmp:
        folder = Path(tmp)
        net.save(folder / "net.loom")
        np.save(folder / "X.npy", np.asarray(X), allow_pickle=False)
        np.save(folder / "Y.npy", np.asarray(Y), allow_pickle=False)
        settings = dict(kwargs, frozen=list(net.frozen), device=device, **_context_settings(net, kwargs))
        with open(folder / "settings.pkl", "wb") as f:
            pickle.dump(settings, f)       # this process's own objects, read back by its own ranks
        launch.spawn([sys.executable, "-m", "loom.distributed.worker", str(folder)], devices)
        trained = load(folder / "trained.loom")
        net.load_state_dict(trained.state_dict())
        with open(folder / "history.json") as f:
            done = json.load(f)
    history = nn_train.History(logs=done["logs"], epochs=done["epochs"], stopped_early=done["stopped_early"])
    return history


def _gpus() -> int:
    try:
        return backend.get("cuda").collectives.device_count()
    except Exception:            # noqa: BLE001 - no CuPy or no driver: no GPU
        return 0

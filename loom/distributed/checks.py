"""`loom verify --gpus N`: the same training on one process and on N ranks gives the same weights.

Three networks (the digits convnet, an MLP with dropout, a tiny causal transformer) train `steps`
steps on fixed data, once in this process on the CPU and once data-parallel over N ranks
(`loom.train(..., devices=N)`); each row compares the SHA-256 of the trained parameters.
"""
from __future__ import annotations

import hashlib
import json
from importlib import resources
from typing import Any

import numpy as np

from .. import mode
from ..nn import Network
from ..nn import train as nn_train
from .training import train as parallel_train

MLP = {"loom": 1, "name": "mlp", "seed": 0, "dtype": "float32", "input": {"shape": [64]},
       "layers": [{"type": "dense", "units": 32, "activation": "relu"}, {"type": "dropout", "rate": 0.1},
                  {"type": "dense", "units": 10}]}
TRANSFORMER = {"loom": 1, "name": "tiny-transformer", "seed": 0, "dtype": "float32",
               "input": {"shape": [16], "dtype": "int64"},
               "layers": [{"type": "embedding", "vocab_size": 64, "dim": 32},
                          {"type": "residual", "layers": [{"type": "rms_norm"},
                                                          {"type": "multi_head_attention", "heads": 4,
                                                           "causal": True, "rope": {"theta": 10000}}]},
                          {"type": "residual", "layers": [{"type": "rms_norm"}, {"type": "swiglu", "hidden": 64}]},
                          {"type": "rms_norm"}, {"type": "dense", "units": 64}]}


def _networks() -> dict[str, tuple[dict, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    convnet = json.loads(resources.files("loom.cli").joinpath("digits-convnet.json").read_text())
    n = 48
    return {"digits convnet": (convnet, rng.standard_normal((n, 1, 8, 8)).astype(np.float32), rng.integers(0, 10, n)),
            "mlp with dropout": (MLP, rng.standard_normal((n, 64)).astype(np.float32), rng.integers(0, 10, n)),
            "tiny transformer": (TRANSFORMER, rng.integers(0, 64, (n, 16)), rng.integers(0, 64, (n, 16)))}


def digest(net: Network) -> str:
    """SHA-256 of the parameters by name, in name order."""
    h = hashlib.sha256()
    for name, value in sorted(net.parameters().items()):
        h.update(name.encode())
        h.update(np.ascontiguousarray(net.backend.to_numpy(value)).tobytes())
    return h.hexdigest()


def compare(ranks: int, device: str, steps: int = 6) -> list[dict[str, Any]]:
    """One row per network: {"network", "one", "ranks", "same"} (one process on the CPU against
    `ranks` ranks on `device`), in the mode in effect."""
    rows = []
    for name, (config, X, Y) in _networks().items():
        batch = 12
        settings = dict(epochs=max(1, steps * batch // len(X)), batch_size=batch, seed=0, verbose=False,
                        optimizer={"type": "adam", "lr": 0.01}, deterministic=mode.is_deterministic())
        one = Network.from_config(config)
        nn_train.train(one, X, Y, device="cpu", **settings)
        many = Network.from_config(config)
        parallel_train(many, X, Y, devices=ranks, device=device, **settings)
        rows.append({"network": name, "one": digest(one), "ranks": digest(many)})
        rows[-1]["same"] = rows[-1]["one"] == rows[-1]["ranks"]
    return rows

"""The Loom model file: one safetensors file holding the network's config, weights and buffers,
and optionally an optimizer's state and the training position (a checkpoint).

Tensors: the network's state_dict under its own names, optimizer arrays under "optimizer.<key>",
and in checkpoints early stopping's best weights so far under "best.<name>".
__metadata__ (strings): format = "loom-model", format_version, loom_version, config (canonical
JSON), and for checkpoints optimizer_config, optimizer_scalars and training_state (JSON).
Saves are atomic (temp file, fsync, rename): an interrupted save leaves the previous file intact.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np

from .. import atomic
from .. import config as configs
from ..errors import ConfigError, FormatError
from ..nn.network import Network
from . import safetensors

FORMAT = "loom-model"
VERSION = 1
_OPT = "optimizer."
_BEST = "best."


@dataclass
class Checkpoint:
    """What a model file holds besides the network."""
    optimizer_config: dict | None = None
    optimizer_state: dict = field(default_factory=dict)
    training_state: dict = field(default_factory=dict)
    best_state: dict | None = None    # early stopping's best weights, by state_dict name


def to_bytes(net: Network, optimizer=None, training_state: dict | None = None,
             best_state: dict | None = None) -> bytes:
    from .. import __version__
    tensors = {name: np.asarray(net.backend.to_numpy(a)) for name, a in net.state_dict().items()}
    meta = {"format": FORMAT, "format_version": str(VERSION), "loom_version": __version__,
            "config": configs.dumps(net.config)}
    if optimizer is not None:
        scalars = {}
        for key, value in optimizer.state_dict().items():
            if isinstance(value, (int, float, bool, str)) or value is None:
                scalars[key] = value
            else:
                tensors[_OPT + key] = np.asarray(value)
        meta["optimizer_config"] = json.dumps(optimizer.config)
        meta["optimizer_scalars"] = json.dumps(scalars)
    if training_state is not None:
        meta["training_state"] = json.dumps(training_state)
    for name, value in (best_state or {}).items():
        tensors[_BEST + name] = np.asarray(value)
    return safetensors.dumps(tensors, meta)


def save(net: Network, path, optimizer=None, training_state: dict | None = None,
         best_state: dict | None = None) -> None:
    atomic.write_bytes(path, to_bytes(net, optimizer, training_state, best_state))


def from_bytes(data: bytes) -> tuple[Network, Checkpoint]:
    tensors, meta = safetensors.loads(data)
    return _build(tensors, meta, "<bytes>")


def load(path) -> tuple[Network, Checkpoint]:
    if os.path.isdir(path):
        raise FormatError(f"{os.fspath(path)} is a directory; expected a .loom model file")
    tensors, meta = safetensors.load(path)
    return _build(tensors, meta, os.fspath(path))


def _build(tensors, meta, where) -> tuple[Network, Checkpoint]:
    if meta.get("format") != FORMAT:
        raise FormatError(f"{where}: not a Loom model file (metadata format is {meta.get('format')!r})")
    if meta.get("format_version") != str(VERSION):
        raise FormatError(f"{where}: unsupported model file version {meta.get('format_version')!r}; "
                          f"this Loom reads version {VERSION}")
    try:
        net = Network(configs.loads(meta.get("config", "")))
    except ConfigError as exc:
        raise FormatError(f"{where}: the stored config is invalid: {exc}") from None
    own = net.state_dict()
    weights = {k: v for k, v in tensors.items() if not k.startswith((_OPT, _BEST))}
    missing, unknown = sorted(set(own) - set(weights)), sorted(set(weights) - set(own))
    if missing or unknown:
        raise FormatError(f"{where}: tensors do not match the config: missing {missing}, unexpected {unknown}")
    for name, value in weights.items():
        dst = own[name]
        if value.shape != dst.shape or value.dtype != dst.dtype:
            raise FormatError(f"{where}: tensor {name!r} is {value.dtype}{list(value.shape)}, the config needs "
                              f"{dst.dtype}{list(dst.shape)}")
        dst[...] = net.backend.asarray(value)
    ckpt = Checkpoint()
    best = {k[len(_BEST):]: np.array(v) for k, v in tensors.items() if k.startswith(_BEST)}
    if best:
        if set(best) != set(own):
            raise FormatError(f"{where}: the best-weights tensors do not match the config's names")
        ckpt.best_state = best
    try:
        if "optimizer_config" in meta:
            ckpt.optimizer_config = json.loads(meta["optimizer_config"])
            ckpt.optimizer_state = json.loads(meta.get("optimizer_scalars", "{}"))
            ckpt.optimizer_state.update({k[len(_OPT):]: np.array(v) for k, v in tensors.items() if k.startswith(_OPT)})
        if "training_state" in meta:
            ckpt.training_state = json.loads(meta["training_state"])
    except json.JSONDecodeError as exc:
        raise FormatError(f"{where}: checkpoint metadata is not valid JSON ({exc.msg})") from None
    return net, ckpt

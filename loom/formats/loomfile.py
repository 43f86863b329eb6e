"""The Loom model file: one safetensors file holding the network's config, weights and buffers,
and optionally an optimizer's state and the training position (a checkpoint).

Tensors: the network's state_dict under its own names, optimizer arrays under "optimizer.<key>",
and in checkpoints early stopping's best weights so far under "best.<name>". A quantized network's
weights are stored in their type (sub-byte types packed into U8, see docs/dtypes.md) with
"<name>.scale" and "<name>.zero_point" beside them; __metadata__ "quantized" (JSON) lists each
such name with its Loom type and shape.
__metadata__ (strings): format = "loom-model", format_version, loom_version, config (canonical
JSON), and for checkpoints optimizer_config, optimizer_scalars and training_state (JSON).
Saves are atomic (temp file, fsync, rename): an interrupted save leaves the previous file intact.

Directory form (`save(net, "dir/", ...)`, or any path that is an existing directory): the same
file as `dir/model.safetensors` plus `dir/config.json`, a readable copy of the config written after
it. The config inside model.safetensors is the one that loads, so a save interrupted between the
two files still loads the complete new model.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .. import atomic
from .. import config as configs
from ..errors import ConfigError, FormatError, LoomError
from ..kernels.quant import affine as quant
from ..nn import files
from ..nn.network import Network
from . import safetensors

if TYPE_CHECKING:
    from ..nn.optim import Optimizer

FORMAT = "loom-model"
DIR_MODEL, DIR_CONFIG = "model.safetensors", "config.json"
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


def to_bytes(net: Network, optimizer: Optimizer | None = None, training_state: dict | None = None,
             best_state: dict | None = None) -> bytes:
    from ..version import __version__
    tensors, quantized = {}, {}
    for name, a in net.state_dict().items():
        if isinstance(a, quant.AffineQuantized):
            quantized[name] = {"dtype": a.dtype, "shape": list(a.shape)}
            for part, array in quant.to_storage(a).items():
                tensors[name if part == "q" else f"{name}.{part}"] = array
        else:
            tensors[name] = np.asarray(net.backend.to_numpy(a))
    meta = {"format": FORMAT, "format_version": str(VERSION), "loom_version": __version__,
            "config": configs.dumps(net.config)}
    if quantized:
        meta["quantized"] = json.dumps(quantized)
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
        meta["training_state"] = atomic.json_text(training_state, indent=None)[0]   # a NaN loss as null
    for name, value in (best_state or {}).items():
        tensors[_BEST + name] = np.asarray(value)
    return safetensors.dumps(tensors, meta)


def save(net: Network, path: str | os.PathLike[str], optimizer: Optimizer | None = None,
         training_state: dict | None = None, best_state: dict | None = None) -> None:
    data = to_bytes(net, optimizer, training_state, best_state)
    if not _is_directory(path):
        atomic.write_bytes(path, data)
        return
    os.makedirs(path, exist_ok=True)
    atomic.write_bytes(os.path.join(path, DIR_MODEL), data)
    atomic.write_bytes(os.path.join(path, DIR_CONFIG), configs.dumps(net.config).encode("utf-8"))


def _is_directory(path) -> bool:
    text = os.fspath(path)
    return os.path.isdir(text) or text.endswith((os.sep, "/"))


def from_bytes(data: bytes) -> tuple[Network, Checkpoint]:
    tensors, meta = safetensors.loads(data)
    return _build(tensors, meta, "<bytes>")


def load(path: str | os.PathLike[str]) -> tuple[Network, Checkpoint]:
    if os.path.isdir(path):
        inner = os.path.join(path, DIR_MODEL)
        if not os.path.isfile(inner):
            raise FormatError(f"{os.fspath(path)} is a directory without {DIR_MODEL}; expected a Loom model "
                              "file or a model directory")
        path = inner
    where = os.fspath(path)
    try:
        tensors, meta = safetensors.load(path)
    except FormatError as exc:      # a damaged file, or not a model file at all (a JSON config, an .npz)
        reason = str(exc).removeprefix(f"{where}: ")
        raise FormatError(f"{where}: not a readable Loom model file ({reason})") from None
    return _build(tensors, meta, where)


def _quantized(weights: dict, meta: dict, own: dict, where: str) -> dict:
    """The quantized weights listed in the metadata, rebuilt; their parts are removed from weights."""
    try:
        listed = json.loads(meta.get("quantized", "{}"))
    except json.JSONDecodeError as exc:
        raise FormatError(f"{where}: quantized metadata is not valid JSON ({exc.msg})") from None
    if not isinstance(listed, dict):
        raise FormatError(f"{where}: quantized metadata must be an object of name -> {{dtype, shape}}")
    expected = {n for n, a in own.items() if isinstance(a, quant.AffineQuantized)}
    if set(listed) != expected:
        raise FormatError(f"{where}: quantized tensors {sorted(listed)} do not match the config's {sorted(expected)}")
    out = {}
    for name, info in listed.items():
        if name not in weights:
            raise FormatError(f"{where}: quantized tensor {name!r} is missing")
        parts = {"q": weights[name]}
        for part in ("scale", "zero_point"):
            if f"{name}.{part}" in weights:
                parts[part] = weights.pop(f"{name}.{part}")
        try:
            out[name] = quant.from_storage(parts, info["dtype"], info["shape"])
        except (LoomError, KeyError, TypeError) as exc:
            raise FormatError(f"{where}: quantized tensor {name!r}: {exc}") from None
    return out


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
    for name, qt in _quantized(weights, meta, own, where).items():
        net.load_quantized(name, own[name], qt)
        weights.pop(name)
        own.pop(name)
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


files.register(sys.modules[__name__])      # Network.save and loom.train's checkpoints use it

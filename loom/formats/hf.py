"""HuggingFace model directories: config.json plus safetensors weights, single-file or sharded.

    DIR/config.json                        the architecture (model_type, sizes, RoPE, ...)
    DIR/model.safetensors                  every tensor, or
    DIR/model.safetensors.index.json       {"metadata": {...}, "weight_map": {tensor name: shard file}}
    DIR/model-00001-of-0000N.safetensors   the shards it names

Shards are memory-mapped (loom.formats.safetensors.load): float32 tensors stay read-only views of
the files. 2-D float16/bfloat16 tensors (the weights of most published checkpoints) stay in their
stored form as loom.kernels.quant.block.BlockQuantized("F16"/"BF16") and are widened block by block
inside each product; every other F32/F64/F16/BF16 tensor becomes a float32 array. Other types
(integers, float8) are rejected rather than guessed at.

Checks, each a FormatError naming the file and the tensor: a missing or malformed config.json or
index, a shard named by the index that is absent or lacks a tensor the index puts there, a tensor
present in two shards or in a shard the index does not assign it to, and (when the caller passes the
shapes its architecture implies) missing, unexpected and mis-shaped tensors. Old checkpoints may hold
the RoPE buffer `...rotary_emb.inv_freq`; it is derived from config.json, so it is accepted and not
returned.
"""
from __future__ import annotations

import json
import os

import numpy as np

from .. import backend
from ..errors import FormatError
from ..kernels.quant.block import BlockQuantized
from . import safetensors

CONFIG = "config.json"
SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
DERIVED_SUFFIX = "rotary_emb.inv_freq"
_HALF = {np.dtype(np.float16): "F16", np.dtype(safetensors.DTYPES["BF16"]): "BF16"}


def read_config(path: str | os.PathLike[str]) -> dict:
    """The config.json dict of the HF directory `path`."""
    return _read_json(os.path.join(os.fspath(path), CONFIG), "the model's config")


def read_dir(path: str | os.PathLike[str], device: str = "cpu",
             expected: tuple[dict, dict] | None = None) -> tuple[dict, dict]:
    """(config, weights) of the HF directory `path`; weights map names to float32 arrays or
    BlockQuantized on `device`. expected = (required, optional), each name -> shape: check the
    checkpoint holds exactly those tensors with those shapes."""
    folder = os.fspath(path)
    if not os.path.isdir(folder):
        raise FormatError(f"{folder}: not a directory (a HuggingFace model directory holds config.json and "
                          f"{SINGLE} or {INDEX})")
    config = read_config(folder)
    tensors, source = _read_tensors(folder)
    if expected is not None:
        _check(tensors, source, expected, folder)
    be = backend.get(device)
    return config, {name: _stored(name, array, source[name], be, device) for name, array in tensors.items()}


def _read_json(file: str, what: str):
    if not os.path.isfile(file):
        raise FormatError(f"{file}: missing ({what})")
    try:
        with open(file, "rb") as fh:
            data = json.loads(fh.read().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise FormatError(f"{file}: not UTF-8 (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise FormatError(f"{file}: not valid JSON: {exc.msg} at offset {exc.pos}") from None
    if not isinstance(data, dict):
        raise FormatError(f"{file}: expected a JSON object, got {type(data).__name__}")
    return data


def _read_tensors(folder: str) -> tuple[dict, dict]:
    """(name -> array, name -> file it came from)."""
    single, index = os.path.join(folder, SINGLE), os.path.join(folder, INDEX)
    if os.path.isfile(single):
        tensors, _ = safetensors.load(single)
        return dict(tensors), {name: single for name in tensors}
    if not os.path.isfile(index):
        others = sorted(f for f in os.listdir(folder) if f.endswith((".bin", ".pt", ".pth", ".gguf")))
        hint = f"; found {', '.join(others)}, which Loom does not read from a directory" if others else ""
        raise FormatError(f"{folder}: no {SINGLE} or {INDEX}{hint}")
    weight_map = _read_json(index, "the shard index").get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise FormatError(f"{index}: 'weight_map' must be a non-empty object of tensor name -> shard file")
    shards = {}
    for name, shard in weight_map.items():
        if not isinstance(shard, str) or os.path.basename(shard) != shard or shard in ("", ".", ".."):
            raise FormatError(f"{index}: tensor {name!r} maps to {shard!r}, not a file name in the directory")
        shards.setdefault(shard, []).append(name)
    tensors, source = {}, {}
    for shard, names in shards.items():
        file = os.path.join(folder, shard)
        if not os.path.isfile(file):
            raise FormatError(f"{file}: missing (the shard index puts tensor {names[0]!r} there)")
        loaded, _ = safetensors.load(file)
        for name in loaded:
            if name in source:
                raise FormatError(f"{file}: tensor {name!r} is also in {source[name]}")
            if weight_map.get(name) != shard:
                raise FormatError(f"{file}: tensor {name!r} is not assigned to this shard by {index}")
            tensors[name], source[name] = loaded[name], file
        absent = [n for n in names if n not in loaded]
        if absent:
            raise FormatError(f"{file}: tensor {absent[0]!r} is missing (the shard index puts it there)")
    return tensors, source


def _check(tensors: dict, source: dict, expected: tuple[dict, dict], folder: str) -> None:
    required, optional = expected
    for name in [n for n in tensors if n.endswith(DERIVED_SUFFIX)]:
        del tensors[name]
    missing = [n for n in required if n not in tensors]
    if missing:
        raise FormatError(f"{folder}: tensor {missing[0]!r} is missing from the checkpoint "
                          f"({len(missing)} expected tensors are absent)")
    for name, array in tensors.items():
        shape = {**required, **optional}.get(name)
        if shape is None:
            raise FormatError(f"{source[name]}: unexpected tensor {name!r} (not part of the architecture in config.json)")
        if tuple(array.shape) != tuple(shape):
            raise FormatError(f"{source[name]}: tensor {name!r} has shape {list(array.shape)}, "
                              f"config.json implies {list(shape)}")


def _stored(name: str, array: np.ndarray, file: str, be, device: str):
    if array.dtype not in (np.float32, np.float64) and array.dtype not in _HALF:
        raise FormatError(f"{file}: tensor {name!r} has dtype {array.dtype}; model weights must be "
                          "F32, F64, F16 or BF16")
    if array.dtype in _HALF and array.ndim == 2:
        return half_matrix(array, _HALF[array.dtype]).to(device)
    return be.asarray(array.astype(np.float32, copy=False))


def half_matrix(array: np.ndarray, qtype: str) -> BlockQuantized:
    """A 2-D float16/bfloat16 array as a BlockQuantized viewing the same bytes (no copy)."""
    rows, cols = array.shape
    raw = np.ascontiguousarray(array).view(np.uint8).reshape(rows, 2 * cols)
    return BlockQuantized(raw, qtype, (rows, cols))


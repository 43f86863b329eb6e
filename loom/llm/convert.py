"""GGUF -> HuggingFace directory (`loom convert MODEL.gguf --to hf DIR`).

The directory holds config.json (loom.formats.gguf_hf.hf_config), model.safetensors (every weight
under its HF name, dequantized to float32: the values the GGUF file means, exactly, so the directory
loads back to the same logits) and the tokenizer (tokenizer.json, tokenizer_config.json with the chat
template, generation_config.json). It is written into a temporary sibling and renamed into place, so
an interrupted conversion leaves nothing half written.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .. import atomic
from ..errors import ConfigError
from ..formats import gguf, gguf_hf, safetensors
from ..kernels.quant.block import BlockQuantized


def gguf_to_hf(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> dict:
    """Write the HF directory `target` for the GGUF file `source`; returns its config."""
    from .tokenizer import Tokenizer
    target = Path(target)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ConfigError("OUT", f"{target} already exists and is not an empty directory")
    with gguf.read(source) as f:
        config = dict(gguf_hf.hf_config(f.metadata, f))
        config.setdefault("torch_dtype", "float32")
        tensors = {name: _float32(w) for name, w in gguf_hf.hf_weights(f).items()}
        tokenizer = Tokenizer.from_gguf(f.metadata)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        staging.chmod(atomic.folder_mode())      # mkdtemp's 0700 would outlive the rename
        (staging / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        safetensors.save(staging / "model.safetensors", tensors, metadata={"format": "pt"})
        tokenizer.save(staging)
        if target.exists():
            target.rmdir()                       # empty, checked above
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return config


def _float32(weight) -> np.ndarray:
    if isinstance(weight, BlockQuantized):
        return np.ascontiguousarray(weight.dequantize())
    return np.ascontiguousarray(weight, dtype=np.float32)

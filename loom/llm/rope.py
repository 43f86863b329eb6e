"""Rotary position embeddings (RoPE) as HuggingFace's Llama family computes them.

Layout: "rotate half" (HF): a head vector x = [x1, x2] (two halves of head_dim / 2) at position p
becomes x * cos + [-x2, x1] * sin, with cos/sin [head_dim] = both halves of cos(p * inv_freq_i).
(GGUF's llama weights use the interleaved layout; loom.formats.gguf_hf un-permutes their Q/K rows,
so the decoder only ever sees this one.)

Inverse frequencies follow transformers' float32 recipe step for step, so the tables match what the
checkpoints were trained with: inv_freq_i = 1 / theta^(2i / head_dim), each step rounded to float32;
then per rope_type:
- "default": as is;
- "linear":  inv_freq / factor (equivalent to dividing positions by factor);
- "llama3":  wavelengths 2 pi / inv_freq longer than original_max / low_freq_factor are divided by
             factor, shorter than original_max / high_freq_factor kept, and in between interpolated
             with smooth = (original_max / wavelen - low) / (high - low).
The angle p * inv_freq is one float32 product (as HF's float32 matmul gives); its cosine and sine come
from loom.rng.exact_cos_2pi, built from correctly rounded operations only, so the tables are the same
bits on every machine and every backend (libm's cos is not).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .. import rng
from ..errors import ConfigError

ROPE_TYPES = ("default", "linear", "llama3")


@dataclass(frozen=True)
class RopeSpec:
    theta: float
    head_dim: int
    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_positions: int = 8192


def spec_from_hf(cfg: dict, head_dim: int) -> RopeSpec:
    """The RoPE settings of an HF config.json dict: the old keys (rope_theta, rope_scaling) or
    transformers 5's rope_parameters. Unknown rope types raise ConfigError listing ROPE_TYPES."""
    params = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    where = "rope_parameters" if cfg.get("rope_parameters") else "rope_scaling"
    if not isinstance(params, dict):
        raise ConfigError(where, f"expected an object, got {params!r}")
    theta = params.get("rope_theta", cfg.get("rope_theta", 10000.0))
    if not _positive(theta):
        raise ConfigError("rope_theta", f"expected a positive number, got {theta!r}")
    partial = params.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0))
    if partial not in (None, 1, 1.0):
        raise ConfigError("partial_rotary_factor", f"only full rotary embeddings (1.0) are supported, got {partial!r}")
    if head_dim % 2:
        raise ConfigError("head_dim", f"RoPE needs an even head dimension, got {head_dim}")
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in ROPE_TYPES:
        raise ConfigError(f"{where}.rope_type", f"unsupported RoPE type {rope_type!r}; supported: {', '.join(ROPE_TYPES)}")
    if rope_type == "default":
        return RopeSpec(float(theta), head_dim)
    factor = params.get("factor")
    if not _positive(factor):
        raise ConfigError(f"{where}.factor", f"expected a positive number, got {factor!r}")
    if rope_type == "linear":
        return RopeSpec(float(theta), head_dim, "linear", float(factor))
    low, high = params.get("low_freq_factor"), params.get("high_freq_factor")
    original = params.get("original_max_position_embeddings", cfg.get("max_position_embeddings"))
    for key, value in (("low_freq_factor", low), ("high_freq_factor", high), ("original_max_position_embeddings", original)):
        if not _positive(value):
            raise ConfigError(f"{where}.{key}", f"expected a positive number, got {value!r}")
    if not high > low:
        raise ConfigError(f"{where}.high_freq_factor", f"must exceed low_freq_factor ({low}), got {high}")
    return RopeSpec(float(theta), head_dim, "llama3", float(factor), float(low), float(high), int(original))


def _positive(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def inverse_frequencies(spec: RopeSpec) -> np.ndarray:
    """float32 [head_dim / 2], transformers' inv_freq for the spec."""
    half = spec.head_dim // 2
    exponent = np.arange(0, spec.head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(spec.head_dim)
    power = np.array([spec.theta ** float(e) for e in exponent], dtype=np.float64).astype(np.float32)
    inv = np.float32(1.0) / power
    if spec.rope_type == "linear":
        inv = inv / np.float32(spec.factor)
    elif spec.rope_type == "llama3":
        inv64 = inv.astype(np.float64)
        wavelen = 2 * math.pi / inv64
        low_wavelen = spec.original_max_positions / spec.low_freq_factor
        high_wavelen = spec.original_max_positions / spec.high_freq_factor
        scaled = np.where(wavelen > low_wavelen, inv64 / spec.factor, inv64)
        smooth = (spec.original_max_positions / wavelen - spec.low_freq_factor) / (spec.high_freq_factor - spec.low_freq_factor)
        smoothed = (1 - smooth) * scaled / spec.factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        inv = np.where(medium, smoothed, scaled).astype(np.float32)
    assert inv.shape == (half,)
    return inv


def tables(spec: RopeSpec, length: int) -> tuple[np.ndarray, np.ndarray]:
    """(cos, sin), float32 [length, head_dim] for positions 0 .. length - 1 (host arrays)."""
    inv = inverse_frequencies(spec).astype(np.float64)
    pos = np.arange(length, dtype=np.float64)
    angle = np.outer(pos, inv).astype(np.float32).astype(np.float64)   # HF's float32 product
    turns = angle / (2 * math.pi)
    cos, sin = rng.exact_cos_2pi(turns), rng.exact_cos_2pi(turns - 0.25)
    cos, sin = cos.astype(np.float32), sin.astype(np.float32)
    return np.concatenate([cos, cos], axis=1), np.concatenate([sin, sin], axis=1)

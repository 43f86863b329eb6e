"""GGUF metadata and tensors -> a HuggingFace config.json dict and HF state-dict names.

llama.cpp's convert_hf_to_gguf renames every tensor (model.layers.3.self_attn.q_proj.weight ->
blk.3.attn_q.weight) and stores the config as `{arch}.*` metadata keys; this module inverts both
for the families Loom runs:

- llama (SmolLM/SmolLM2, TinyLlama, Llama 2/3; Mistral files use arch "llama", or "mistral"):
  the converter permutes the rows of Q and K within each head from HF's rotate-half RoPE layout
  to GGML's interleaved one, reshape(n_head, 2, head_dim / 2, ...).swapaxes(1, 2); HF row
  h*hd + s*hd/2 + i sits at GGUF row h*hd + 2i + s, and `_unpermute` puts it back.
- qwen2 (q/k/v biases) and qwen3 (per-head q_norm/k_norm): stored unpermuted.
- bert: the encoder of BertModel (sentence-transformers' all-MiniLM-L6-v2 names).

RoPE scaling: `{arch}.rope.scaling.type` linear or yarn (with .factor, .original_context_length,
yarn_beta_fast/slow, attn_factor), llama3 spelled out in metadata (.factor, .low_freq_factor,
.high_freq_factor, .original_context_length), or llama3 as the converter writes it: a
`rope_freqs.weight` tensor of per-frequency divisors, whose parameters are recovered here and
checked by recomputing every divisor.
"""
from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ConfigError
from ..kernels.quant.block import BlockQuantized

if TYPE_CHECKING:
    from .gguf import GGUFFile

SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3", "bert")
ROPE_SCALING_TYPES = ("none", "linear", "yarn", "llama3")
_CAUSAL = {"llama": ("llama", "LlamaForCausalLM"), "mistral": ("mistral", "MistralForCausalLM"),
           "qwen2": ("qwen2", "Qwen2ForCausalLM"), "qwen3": ("qwen3", "Qwen3ForCausalLM")}
_MISSING = object()

# GGUF tensor names -> HF names ({n}: the block index)
_DECODER_TOP = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                "output.weight": "lm_head.weight"}
_DECODER_BLOCK = {
    "attn_norm.weight": "input_layernorm.weight", "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight", "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight", "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias", "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_q_norm.weight": "self_attn.q_norm.weight", "attn_k_norm.weight": "self_attn.k_norm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight", "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight"}
_DECODER_PREFIX = "model.layers.{n}."
_BERT_TOP = {"token_embd.weight": "embeddings.word_embeddings.weight",
             "position_embd.weight": "embeddings.position_embeddings.weight",
             "token_types.weight": "embeddings.token_type_embeddings.weight",
             "token_embd_norm.weight": "embeddings.LayerNorm.weight",
             "token_embd_norm.bias": "embeddings.LayerNorm.bias"}
_BERT_BLOCK = {"attn_q": "attention.self.query", "attn_k": "attention.self.key",
               "attn_v": "attention.self.value", "attn_output": "attention.output.dense",
               "attn_output_norm": "attention.output.LayerNorm", "ffn_up": "intermediate.dense",
               "ffn_down": "output.dense", "layer_output_norm": "output.LayerNorm"}
_BERT_PREFIX = "encoder.layer.{n}."
_BLOCK = re.compile(r"blk\.(\d+)\.(.+)")


def architecture(metadata: dict) -> str:
    """The family of a GGUF file: one of SUPPORTED_ARCHITECTURES (llama files named Mistral are
    "mistral"), or ConfigError listing them."""
    arch = metadata.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ConfigError("general.architecture", f"unsupported architecture {arch!r}; supported: "
                          f"{', '.join(SUPPORTED_ARCHITECTURES)}")
    if arch == "llama" and "mistral" in str(metadata.get("general.name", "")).lower():
        return "mistral"
    return arch


def _get(md: dict, key: str, kind, default=_MISSING):
    """md[key] checked to be an int (kind int) or a number (kind float), or `default` when absent."""
    if key not in md:
        if default is _MISSING:
            raise ConfigError(key, "missing from the GGUF metadata")
        return default
    v = md[key]
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and (kind is float or isinstance(v, int))
    if not ok or (kind is int and v < 0) or (kind is float and not math.isfinite(v)):
        raise ConfigError(key, f"expected {'a non-negative integer' if kind is int else 'a finite number'}, got {v!r}")
    return kind(v)


def hf_config(metadata: dict, file: GGUFFile | None = None) -> dict:
    """The HF config.json dict of a GGUF file from its metadata. Pass the GGUFFile as `file` too:
    GGUF records two facts only in its tensors, tie_word_embeddings (no output.weight) and llama3
    RoPE scaling (a rope_freqs.weight tensor); without `file`, tie_word_embeddings is left out."""
    family = architecture(metadata)
    if family == "bert":
        return _bert_config(metadata)
    arch = metadata["general.architecture"]
    p = arch + "."
    heads = _get(metadata, p + "attention.head_count", int)
    hidden = _get(metadata, p + "embedding_length", int)
    if heads == 0 or hidden % heads:
        raise ConfigError(p + "attention.head_count", f"{heads} heads do not divide the width {hidden}")
    head_dim = _get(metadata, p + "attention.key_length", int, hidden // heads)
    rope_dim = _get(metadata, p + "rope.dimension_count", int, head_dim)
    if rope_dim != head_dim:
        raise ConfigError(p + "rope.dimension_count", f"partial rotary embeddings ({rope_dim} of {head_dim} "
                          "dimensions per head) are not supported")
    theta = _get(metadata, p + "rope.freq_base", float, 10000.0)
    model_type, cls = _CAUSAL[family]
    config = {
        "model_type": model_type, "architectures": [cls],
        "hidden_size": hidden, "intermediate_size": _get(metadata, p + "feed_forward_length", int),
        "num_hidden_layers": _get(metadata, p + "block_count", int),
        "num_attention_heads": heads,
        "num_key_value_heads": _get(metadata, p + "attention.head_count_kv", int, heads),
        "head_dim": head_dim,
        "rms_norm_eps": _get(metadata, p + "attention.layer_norm_rms_epsilon", float),
        "rope_theta": theta,
        "rope_scaling": _rope_scaling(metadata, p, file, theta, head_dim),
        "max_position_embeddings": _get(metadata, p + "context_length", int),
        "vocab_size": _vocab_size(metadata, p),
        "hidden_act": "silu",
        **_special_ids(metadata),
    }
    if family in ("llama", "qwen3"):
        config.update(attention_bias=False, mlp_bias=False)
    if family == "mistral":
        config["sliding_window"] = None         # llama.cpp runs these files without a window
    if family == "qwen2":
        config["use_sliding_window"] = False
    if file is not None:
        config["tie_word_embeddings"] = "output.weight" not in file.tensors
    return config


def _vocab_size(md: dict, p: str) -> int:
    if p + "vocab_size" in md:
        return _get(md, p + "vocab_size", int)
    tokens = md.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, list):
        raise ConfigError(p + "vocab_size", "missing, and there is no tokenizer.ggml.tokens list to count")
    return len(tokens)


def _special_ids(md: dict) -> dict:
    out = {}
    for key, name in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("padding", "pad_token_id")):
        full = f"tokenizer.ggml.{key}_token_id"
        if full in md:
            out[name] = _get(md, full, int)
    return out


def _rope_scaling(md: dict, p: str, file, theta: float, head_dim: int):
    kind = md.get(p + "rope.scaling.type", "none")
    has_freqs = file is not None and "rope_freqs.weight" in file.tensors
    if kind not in ROPE_SCALING_TYPES:
        raise ConfigError(p + "rope.scaling.type", f"unsupported RoPE scaling {kind!r}; supported: "
                          f"{', '.join(ROPE_SCALING_TYPES)} (llama3 also as a rope_freqs.weight tensor)")
    if has_freqs and kind != "none":
        raise ConfigError(p + "rope.scaling.type", f"{kind!r} scaling and a rope_freqs.weight tensor: "
                          "only one RoPE scaling can apply")
    if has_freqs:
        return _llama3_from_freqs(file.array("rope_freqs.weight"), theta, head_dim)
    legacy = _get(md, p + "rope.scale_linear", float, 1.0)    # GGUF v2-era spelling of linear scaling
    if kind == "none":
        return None if legacy == 1.0 else {"rope_type": "linear", "factor": legacy}
    factor = _get(md, p + "rope.scaling.factor", float)
    if kind == "linear":
        return {"rope_type": "linear", "factor": factor}
    original = _get(md, p + "rope.scaling.original_context_length", int)
    if kind == "llama3":
        return {"rope_type": "llama3", "factor": factor, "original_max_position_embeddings": original,
                "low_freq_factor": _get(md, p + "rope.scaling.low_freq_factor", float),
                "high_freq_factor": _get(md, p + "rope.scaling.high_freq_factor", float)}
    out = {"rope_type": "yarn", "factor": factor, "original_max_position_embeddings": original}
    for key, name in (("yarn_beta_fast", "beta_fast"), ("yarn_beta_slow", "beta_slow"),
                      ("attn_factor", "attention_factor")):
        if p + "rope.scaling." + key in md:
            out[name] = _get(md, p + "rope.scaling." + key, float)
    return out


def llama3_divisors(theta: float, head_dim: int, factor: float, low: float, high: float,
                    original: int) -> np.ndarray:
    """The per-frequency divisors convert_hf_to_gguf writes as rope_freqs.weight for llama3 scaling."""
    freqs = 1.0 / (np.float32(theta) ** (np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)))
    wavelen = 2 * math.pi / freqs.astype(np.float64)
    smooth = (original / wavelen - low) / (high - low)
    mid = 1 / ((1 - smooth) / factor + smooth)
    return np.where(wavelen < original / high, 1.0, np.where(wavelen > original / low, factor, mid))


def _llama3_from_freqs(divisors, theta: float, head_dim: int) -> dict:
    """llama3 parameters that reproduce the rope_freqs divisors. Only the ratios original/low and
    original/high are determined by them, so low_freq_factor is taken as 1 (as every Llama 3.x
    release has it); the divisors recomputed from the result must match the tensor."""
    where = "rope_freqs.weight"
    d = np.asarray(divisors, dtype=np.float64).reshape(-1)
    if d.shape[0] != head_dim // 2 or not np.all(np.isfinite(d)) or np.any(d < 1):
        raise ConfigError(where, f"expected {head_dim // 2} finite divisors >= 1, got {d.shape[0]} values "
                          f"in [{d.min():g}, {d.max():g}]")
    factor = float(d.max())
    freqs = 1.0 / (np.float32(theta) ** (np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)))
    inv_wavelen = freqs.astype(np.float64) / (2 * math.pi)
    mid = (d > 1 + 1e-6) & (d < factor * (1 - 1e-6))
    if factor <= 1 or mid.sum() < 2:
        raise ConfigError(where, "the divisors do not follow llama3 scaling (they need a plateau above 1 "
                          "and at least two smoothly interpolated frequencies)")
    smooth = (1 / d[mid] - 1 / factor) / (1 - 1 / factor)    # = original/wavelen/(high-low) - low/(high-low)
    slope, intercept = np.polyfit(inv_wavelen[mid], smooth, 1)
    high = 1 - 1 / intercept
    original = int(round(slope * (high - 1)))
    params = {"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0,
              "high_freq_factor": float(round(high, 4)), "original_max_position_embeddings": original}
    again = llama3_divisors(theta, head_dim, factor, 1.0, params["high_freq_factor"], original)
    if not np.allclose(again, d, rtol=1e-5, atol=0):
        raise ConfigError(where, f"the divisors do not follow llama3 scaling: the best fit {params} misses "
                          f"them by up to {np.max(np.abs(again / d - 1)):.2g} relative")
    return params


def _bert_config(md: dict) -> dict:
    if md.get("bert.attention.causal", False):
        raise ConfigError("bert.attention.causal", "a causal BERT is not supported (encoders attend both ways)")
    pooling = _get(md, "bert.pooling_type", int, 1)
    if pooling not in (0, 1):
        raise ConfigError("bert.pooling_type", f"pooling type {pooling} is not supported; Loom's encoder "
                          "pools by mean (1) or leaves pooling to the caller (0)")
    heads = _get(md, "bert.attention.head_count", int)
    hidden = _get(md, "bert.embedding_length", int)
    if heads == 0 or hidden % heads:
        raise ConfigError("bert.attention.head_count", f"{heads} heads do not divide the width {hidden}")
    return {
        "model_type": "bert", "architectures": ["BertModel"],
        "hidden_size": hidden, "intermediate_size": _get(md, "bert.feed_forward_length", int),
        "num_hidden_layers": _get(md, "bert.block_count", int), "num_attention_heads": heads,
        "max_position_embeddings": _get(md, "bert.context_length", int),
        "layer_norm_eps": _get(md, "bert.attention.layer_norm_epsilon", float),
        "vocab_size": _vocab_size(md, "bert."),
        "type_vocab_size": _get(md, "tokenizer.ggml.token_type_count", int, 2),
        "hidden_act": "gelu", "position_embedding_type": "absolute",
        **{k: v for k, v in _special_ids(md).items() if k == "pad_token_id"},
    }


def hf_name(family: str, name: str, n_layers: int) -> str | None:
    """The HF name of GGUF tensor `name` in a file of `family`, or None when it has none."""
    top, block, prefix = ((_BERT_TOP, None, _BERT_PREFIX) if family == "bert"
                          else (_DECODER_TOP, _DECODER_BLOCK, _DECODER_PREFIX))
    if name in top:
        return top[name]
    m = _BLOCK.fullmatch(name)
    if m is None or int(m.group(1)) >= n_layers or m.group(1) != str(int(m.group(1))):
        return None
    rest = m.group(2)
    if family == "bert":
        base, dot, suffix = rest.rpartition(".")
        mapped = _BERT_BLOCK.get(base) if suffix in ("weight", "bias") else None
        return prefix.format(n=m.group(1)) + mapped + dot + suffix if mapped else None
    mapped = block.get(rest)
    return prefix.format(n=m.group(1)) + mapped if mapped else None


def hf_weights(f: GGUFFile) -> dict:
    """The tensors of GGUFFile `f` under their HF names: float32 arrays (read-only views for F32
    tensors) or BlockQuantized for quantized 2-D weights. lm_head.weight is absent when the
    embeddings are tied; llama and mistral Q/K rows (and biases) are un-permuted."""
    family = architecture(f.metadata)
    key = "bert.block_count" if family == "bert" else f.metadata["general.architecture"] + ".block_count"
    n_layers = _get(f.metadata, key, int)
    mapped, unknown = {}, []
    for name in f.tensors:
        if name == "rope_freqs.weight" and family != "bert":
            continue                        # RoPE scaling: hf_config reads it into rope_scaling
        hf = hf_name(family, name, n_layers)
        if hf is None:
            unknown.append(name)
        else:
            mapped[name] = hf
    if unknown:
        raise ConfigError("tensors", f"GGUF tensors with no HuggingFace name in a {family} model: "
                          f"{', '.join(unknown[:8])}{' ...' if len(unknown) > 8 else ''}")
    out = {}
    for name, hf in mapped.items():
        w = f.weight(name)
        if family in ("llama", "mistral") and re.fullmatch(r"blk\.\d+\.attn_[qk]\.(weight|bias)", name):
            w = _unpermute(f.metadata, name, w)
        out[hf] = w
    return out


def _unpermute(md: dict, name: str, w):
    """Undo convert_hf_to_gguf's RoPE row permutation of a Q or K weight (or bias)."""
    p = md["general.architecture"] + "."
    heads = _get(md, p + "attention.head_count", int)
    n_head = heads if ".attn_q." in name else _get(md, p + "attention.head_count_kv", int, heads)
    rows = w.shape[0]
    if n_head == 0 or rows % (2 * n_head):
        raise ConfigError(name, f"{rows} rows do not split into {n_head} heads of an even size")
    perm = np.arange(rows).reshape(n_head, rows // n_head // 2, 2).swapaxes(1, 2).reshape(-1)
    if isinstance(w, BlockQuantized):
        return w.permute_rows(perm)
    return np.ascontiguousarray(w[perm])

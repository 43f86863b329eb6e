"""A Llama-family decoder's shape read from a HuggingFace config.json (DecoderConfig.from_hf), and the
tensors such a model must hold (expected_tensors, check_weights). Every bad value raises a ConfigError
naming its key; every missing, unexpected or mis-shaped tensor a FormatError naming the tensor."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError, FormatError
from . import rope

ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3")


@dataclass(frozen=True)
class DecoderConfig:
    arch: str
    vocab_size: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    eps: float
    rope: rope.RopeSpec
    max_positions: int
    tied: bool
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    qk_norm: bool
    windows: tuple          # per layer: sliding-window length, or None for full attention

    @classmethod
    def from_hf(cls, cfg: dict) -> DecoderConfig:
        """Read an HF config.json dict; every bad value raises ConfigError naming its key."""
        arch = cfg.get("model_type")
        if arch not in ARCHITECTURES:
            raise ConfigError("model_type", f"unsupported decoder architecture {arch!r}; supported: {', '.join(ARCHITECTURES)}")
        n = {key: _count(cfg, key) for key in ("vocab_size", "hidden_size", "intermediate_size",
                                               "num_hidden_layers", "num_attention_heads")}
        heads = n["num_attention_heads"]
        kv = _count(cfg, "num_key_value_heads") if cfg.get("num_key_value_heads") is not None else heads
        if heads % kv:
            raise ConfigError("num_key_value_heads", f"num_attention_heads ({heads}) must be a multiple of it, got {kv}")
        if cfg.get("head_dim") is not None:
            head_dim = _count(cfg, "head_dim")
        elif n["hidden_size"] % heads:
            raise ConfigError("num_attention_heads", f"hidden_size ({n['hidden_size']}) is not divisible by {heads} "
                                                     "heads and config.json gives no head_dim")
        else:
            head_dim = n["hidden_size"] // heads
        act = cfg.get("hidden_act", "silu")
        if act != "silu":
            raise ConfigError("hidden_act", f"the Llama-family MLP is SwiGLU with silu; got {act!r}")
        eps = cfg.get("rms_norm_eps", 1e-6)
        if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not eps > 0:
            raise ConfigError("rms_norm_eps", f"expected a positive number, got {eps!r}")
        max_pos = _count(cfg, "max_position_embeddings") if "max_position_embeddings" in cfg else 2048
        attention_bias = _flag(cfg, "attention_bias", False)
        return cls(arch=arch, vocab_size=n["vocab_size"], hidden=n["hidden_size"], intermediate=n["intermediate_size"],
                   layers=n["num_hidden_layers"], heads=heads, kv_heads=kv, head_dim=head_dim, eps=float(eps),
                   rope=rope.spec_from_hf(cfg, head_dim), max_positions=max_pos,
                   tied=_flag(cfg, "tie_word_embeddings", False),
                   qkv_bias=True if arch == "qwen2" else attention_bias and arch in ("llama", "qwen3"),
                   o_bias=attention_bias and arch in ("llama", "qwen3"),
                   mlp_bias=_flag(cfg, "mlp_bias", False) and arch == "llama",
                   qk_norm=arch == "qwen3", windows=_windows(cfg, arch, n["num_hidden_layers"]))


def _count(cfg, key) -> int:
    v = cfg.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ConfigError(key, f"expected a positive integer, got {v!r}")
    return v


def _flag(cfg, key, default) -> bool:
    v = cfg.get(key, default)
    if not isinstance(v, bool):
        raise ConfigError(key, f"expected true or false, got {v!r}")
    return v


def _windows(cfg, arch, layers) -> tuple:
    """Per-layer sliding windows as transformers applies them (keys j > i - window attend to query i)."""
    if arch == "llama":
        return (None,) * layers
    if arch == "mistral":
        w = cfg.get("sliding_window")
        return (None if w is None else _count(cfg, "sliding_window"),) * layers
    if not cfg.get("use_sliding_window", False) or cfg.get("sliding_window") is None:
        return (None,) * layers
    w = _count(cfg, "sliding_window")
    types = cfg.get("layer_types")
    if types is None:
        first = cfg.get("max_window_layers", 28)
        return tuple(w if i >= first else None for i in range(layers))
    if not isinstance(types, list) or len(types) != layers or \
            any(t not in ("full_attention", "sliding_attention") for t in types):
        raise ConfigError("layer_types", f"expected {layers} entries of 'full_attention' / 'sliding_attention', got {types!r}")
    return tuple(w if t == "sliding_attention" else None for t in types)


def expected_tensors(c: DecoderConfig) -> tuple[dict, dict]:
    """(required, optional): tensor name -> shape. A tied model may still store lm_head.weight
    (transformers then ignores it and uses the embeddings, and so does Loom)."""
    E, D = c.hidden, c.head_dim
    req = {"model.embed_tokens.weight": (c.vocab_size, E), "model.norm.weight": (E,)}
    opt = {}
    (opt if c.tied else req)["lm_head.weight"] = (c.vocab_size, E)
    for i in range(c.layers):
        p = f"model.layers.{i}."
        req.update({p + "input_layernorm.weight": (E,), p + "post_attention_layernorm.weight": (E,),
                    p + "self_attn.q_proj.weight": (c.heads * D, E), p + "self_attn.k_proj.weight": (c.kv_heads * D, E),
                    p + "self_attn.v_proj.weight": (c.kv_heads * D, E), p + "self_attn.o_proj.weight": (E, c.heads * D),
                    p + "mlp.gate_proj.weight": (c.intermediate, E), p + "mlp.up_proj.weight": (c.intermediate, E),
                    p + "mlp.down_proj.weight": (E, c.intermediate)})
        if c.qkv_bias:
            req.update({p + "self_attn.q_proj.bias": (c.heads * D,), p + "self_attn.k_proj.bias": (c.kv_heads * D,),
                        p + "self_attn.v_proj.bias": (c.kv_heads * D,)})
        if c.o_bias:
            req[p + "self_attn.o_proj.bias"] = (E,)
        if c.mlp_bias:
            req.update({p + "mlp.gate_proj.bias": (c.intermediate,), p + "mlp.up_proj.bias": (c.intermediate,),
                        p + "mlp.down_proj.bias": (E,)})
        if c.qk_norm:
            req.update({p + "self_attn.q_norm.weight": (D,), p + "self_attn.k_norm.weight": (D,)})
    return req, opt


def check_weights(c: DecoderConfig, weights: dict) -> None:
    """FormatError naming the first missing, unexpected or mis-shaped tensor."""
    req, opt = expected_tensors(c)
    missing = [name for name in req if name not in weights]
    if missing:
        raise FormatError(f"tensor {missing[0]!r} is missing ({len(missing)} expected tensors are absent)")
    extra = sorted(set(weights) - set(req) - set(opt))
    if extra:
        raise FormatError(f"unexpected tensor {extra[0]!r} for a {c.arch} model ({len(extra)} unexpected in all)")
    for name, w in weights.items():
        shape = tuple(w.shape)
        if shape != {**req, **opt}[name]:
            raise FormatError(f"tensor {name!r} has shape {list(shape)}, the config implies {list({**req, **opt}[name])}")

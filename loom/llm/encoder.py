"""BERT-style sentence encoders (all-MiniLM-L6-v2 and other HuggingFace BertModel checkpoints).

The forward pass is HuggingFace's BertModel (post-LayerNorm), in float32:

    x = LayerNorm(word[ids] + token_type[0] + position[0..T))            [B, T, H]
    per layer:  a = LayerNorm(x + Wo · attention(x))
                x = LayerNorm(a + W2 · act(W1 · a))                       act = config.hidden_act
    attention:  per head, softmax(q kᵀ / sqrt(d)) v over the real (unpadded) keys only

and a sentence embedding is sentence-transformers' Pooling(mean) + Normalize: the mean of the token
states over the attention mask, divided by its L2 norm (at least 1e-12, as torch's F.normalize).
The pooler and any task heads in the checkpoint are not part of this and are not read.

A batch is padded on the right to its longest sequence for attention only: the other work runs on
the real tokens packed as rows. Padded keys are masked out of the softmax (exactly 0) and padded
query/key/value rows are exactly 0; in deterministic mode every GEMM entry depends on its own row
and column only, and the softmax's and the pooling's sums take their bits from their nonzero terms
(ops.sum's `padded`), so padding cannot change a real token's bits. Pooling sums the
real tokens only. Sequences longer than max_position_embeddings are an error
unless truncation is asked for; the tokenizer itself neither pads nor truncates (tokenizer.json of
all-MiniLM-L6-v2 asks to pad everything to 128 tokens and cut at 128: Loom ignores both).

All array code goes through `backend.of(...).xp` and loom.kernels (ops, fused), so the encoder runs
on NumPy or CuPy arrays and honours deterministic mode. 2-D weights may also be BlockQuantized weights
(GGUF blocks, F16/BF16 rows kept in stored form, as loom.llm.load passes them from a GGUF file);
from_dir widens a safetensors file's float weights to float32 once (an encoder is small, and the
products then need no per-call decoding).
"""
from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

import numpy as np

from .. import backend, dtypes
from ..backend import Array
from ..errors import ConfigError, FormatError, ShapeError
from ..kernels import fused, ops
from ..kernels.quant.block import BlockQuantized, linear

if TYPE_CHECKING:
    from .tokenizer import Tokenizer

SUPPORTED_MODEL_TYPES = ("bert",)
# config.hidden_act -> loom.kernels.fused.activation name (HF's gelu_new and gelu_pytorch_tanh are
# the same tanh approximation; "gelu" is the exact erf form)
SUPPORTED_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}
_FLOAT_DTYPES = frozenset(row.numpy for row in dtypes.TABLE.values() if row.kind == "float" and not row.packed)
_NORM_EPS = 1e-12   # torch.nn.functional.normalize's floor on the norm


class Encoder:
    """A BertModel with mean pooling: `embed(texts)` -> float32 [N, hidden] on the weights' device."""

    def __init__(self, config: dict, weights: dict, tokenizer: Tokenizer | None):
        self.config = config
        self.tokenizer = tokenizer
        self.hidden_size = config["hidden_size"]
        self.heads = config["num_attention_heads"]
        self.head_dim = self.hidden_size // self.heads
        self.num_layers = config["num_hidden_layers"]
        self.max_tokens = config["max_position_embeddings"]
        self.vocab_size = config["vocab_size"]
        self.eps = config["layer_norm_eps"]
        self.activation = SUPPORTED_ACTIVATIONS[config["hidden_act"]]
        self._w = weights                    # canonical names (no "bert." prefix) -> arrays
        self.backend = backend.of(weights["embeddings.LayerNorm.weight"])

    @property
    def device(self) -> str:
        return self.backend.name

    # --- construction ------------------------------------------------------------------------------

    @classmethod
    def from_hf(cls, config: dict, weights: dict, tokenizer: Tokenizer | None,
                device: str | None = None) -> Encoder:
        """An encoder from a HuggingFace BERT config dict and its state dict (names with or without the
        "bert." prefix). Float weights become float32; with `device` they are moved there (None: they
        stay where they are). Missing or misshapen tensors raise FormatError naming the tensor."""
        config = _checked_config(config)
        prefix = "bert." if "bert.embeddings.word_embeddings.weight" in weights else ""
        target = backend.get(device) if device is not None else None
        picked = {}
        for name, shape in _expected_shapes(config).items():
            full = prefix + name
            if full not in weights:
                also = "" if prefix else f" (nor 'bert.{name}')"
                raise FormatError(f"BERT weights: tensor {full!r}{also} is missing")
            picked[name] = _prepared(full, weights[full], shape, target)
        return cls(config, picked, tokenizer)

    @classmethod
    def from_dir(cls, path: str | os.PathLike[str], device: str = "cpu") -> Encoder:
        """An encoder from a HuggingFace model folder: config.json, model.safetensors (memory-mapped)
        and the tokenizer files (tokenizer.json, tokenizer_config.json)."""
        from ..formats import hf, safetensors
        from .tokenizer import Tokenizer
        folder = os.fspath(path)
        config_path = os.path.join(folder, hf.CONFIG)
        config = hf.read_config(folder)
        weights_path = os.path.join(folder, hf.SINGLE)
        if not os.path.isfile(weights_path):
            raise FormatError(f"{weights_path}: no such file (an encoder folder needs model.safetensors)")
        tensors, _ = safetensors.load(weights_path)
        tokenizer = Tokenizer.from_dir(folder)
        try:
            return cls.from_hf(config, tensors, tokenizer, device=device)
        except FormatError as exc:
            raise FormatError(f"{weights_path}: {exc}") from None
        except ConfigError as exc:
            raise ConfigError(f"{config_path}: {exc.path}", exc.reason) from None

    # --- embedding ---------------------------------------------------------------------------------

    def embed(self, texts: list[str], normalize: bool = True, *, batch_size: int = 32,
              truncate: bool = False) -> Array:
        """Sentence embeddings, float32 [len(texts), hidden], row i for texts[i].

        Texts are batched by similar length (less padding); a text of more than max_position_embeddings
        tokens raises ShapeError unless `truncate`, which keeps its first tokens (and the special
        tokens around them, as HF tokenizers' truncation does)."""
        if isinstance(texts, str):
            raise ShapeError("embed expects a list of texts, got a single str (wrap it in a list)")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ConfigError("batch_size", f"expected a positive integer, got {batch_size!r}")
        ids = [self._token_ids(text, i, truncate) for i, text in enumerate(texts)]
        if not ids:
            return self.backend.xp.zeros((0, self.hidden_size), dtype=np.float32)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        parts = [self.embed_ids([ids[i] for i in order[s:s + batch_size]], normalize)
                 for s in range(0, len(order), batch_size)]
        inverse = np.empty(len(order), dtype=np.int64)
        inverse[order] = np.arange(len(order))
        xp = self.backend.xp
        return xp.concatenate(parts, axis=0)[self.backend.asarray(inverse)]

    def embed_ids(self, batch: list[list[int]], normalize: bool = True) -> Array:
        """Embeddings of token-id sequences (special tokens included), computed as one padded batch."""
        if not batch:
            return self.backend.xp.zeros((0, self.hidden_size), dtype=np.float32)
        lengths = [len(seq) for seq in batch]
        for i, seq in enumerate(batch):
            if not seq:
                raise ShapeError(f"sequence {i} has no tokens: mean pooling needs at least one")
            if len(seq) > self.max_tokens:
                raise ShapeError(f"sequence {i} has {len(seq)} tokens; this model takes at most "
                                 f"{self.max_tokens} (max_position_embeddings)")
            bad = [t for t in seq if isinstance(t, bool) or not isinstance(t, (int, np.integer))
                   or not 0 <= t < self.vocab_size]
            if bad:
                raise ShapeError(f"sequence {i}: token id {bad[0]!r} is not an integer in the vocabulary "
                                 f"[0, {self.vocab_size})")
        width = max(lengths)
        ids = np.zeros((len(batch), width), dtype=np.int64)     # pads with id 0: always a valid row
        for i, seq in enumerate(batch):
            ids[i, :len(seq)] = seq
        keep = np.arange(width)[None, :] < np.asarray(lengths)[:, None]
        be = self.backend
        states = self.hidden_states(be.asarray(ids), be.asarray(keep))
        pooled = _mean_over_tokens(states, be.asarray(np.asarray(lengths, dtype=np.float32)))
        return _l2_normalized(pooled) if normalize else pooled

    # --- the BertModel forward ---------------------------------------------------------------------

    def hidden_states(self, ids: Array, keep: Array) -> Array:
        """Last-layer token states float32 [B, T, hidden] (exactly 0 at padded positions) for ids [B, T]
        (int) and keep [B, T] (bool, False on padding), both on the encoder's device.

        Only the real tokens go through the embeddings, projections, feed-forward and norms, packed as
        rows [N, hidden] (no work, and no erf, spent on padding); attention scatters them into the
        padded [B, heads, T, d] layout and gathers them back."""
        xp = self.backend.xp
        b, t = ids.shape
        rows = xp.flatnonzero(keep.reshape(-1))                              # real tokens in [B*T]
        w = self._w
        x = _lookup(w["embeddings.word_embeddings.weight"], ids.reshape(-1)[rows])
        x = x + _lookup(w["embeddings.token_type_embeddings.weight"], xp.zeros(1, dtype=np.int64))  # one segment
        x = x + _lookup(w["embeddings.position_embeddings.weight"], rows % t)
        x = self._norm(x, "embeddings.LayerNorm")
        for i in range(self.num_layers):
            p = f"encoder.layer.{i}."
            a = self._attention(x, p + "attention.self.", rows, keep)
            x = self._norm(x + self._linear(a, p + "attention.output.dense"), p + "attention.output.LayerNorm")
            h = fused.activation(self.activation, self._linear(x, p + "intermediate.dense"), overwrite=True)
            x = self._norm(x + self._linear(h, p + "output.dense"), p + "output.LayerNorm")
        return _scattered(x, rows, b * t).reshape(b, t, self.hidden_size)

    def _attention(self, x, p: str, rows, keep):
        """Multi-head self-attention of the packed tokens x [N, H] within their own sequences, over the
        unpadded keys; returns [N, H]."""
        b, t = keep.shape
        nh, d = self.heads, self.head_dim

        def heads(name):   # [N, H] -> [B, heads, T, d], zero rows at padding
            return _scattered(self._linear(x, p + name), rows, b * t).reshape(b, t, nh, d).transpose(0, 2, 1, 3)
        # padded value rows are 0 (their probabilities are exactly 0 too), which keeps them out of the
        # per-column scaling of the exact GEMM below: padding cannot change a real token's bits
        q, k, v = heads("query"), heads("key"), heads("value")
        scores = ops.matmul(q, k.transpose(0, 1, 3, 2)) * np.float32(1 / math.sqrt(d))   # [B, heads, T, T]
        probs = ops.softmax(scores, axis=-1, mask=keep[:, None, None, :], padded=True)
        return ops.matmul(probs, v).transpose(0, 2, 1, 3).reshape(b * t, nh * d)[rows]

    def _linear(self, x, name: str):
        # (the exact GEMM's rule: embeddings keep float32's precision; the decoders' integer rule is for speed)
        return linear(x, self._w[name + ".weight"], rule="matmul") + self._w[name + ".bias"]

    def _norm(self, x, name: str):
        return fused.layer_norm(x, self._w[name + ".weight"], self._w[name + ".bias"], self.eps)[0]

    # --- tokenization ------------------------------------------------------------------------------

    def _token_ids(self, text: str, index: int, truncate: bool) -> list[int]:
        if not isinstance(text, str):
            raise ShapeError(f"text {index} is a {type(text).__name__}, expected str")
        ids = list(self.tokenizer.encode(text))
        if len(ids) <= self.max_tokens:
            return ids
        if not truncate:
            raise ShapeError(f"text {index} is {len(ids)} tokens long; this model takes at most {self.max_tokens} "
                             f"(max_position_embeddings). Pass truncate=True (loom embed --truncate) to keep "
                             f"the first {self.max_tokens}")
        # cut the content, keep the special tokens around it: [CLS] content[:n] [SEP] for BERT
        content = list(self.tokenizer.encode(text, add_special_tokens=False))
        extra = len(ids) - len(content)
        for start in range(extra + 1):
            if ids[start:start + len(content)] == content:
                room = self.max_tokens - extra
                return ids[:start] + content[:room] + ids[start + len(content):]
        raise ShapeError(f"text {index}: cannot truncate, its special tokens do not surround its content ids")


def load_folder(path: str | os.PathLike[str], device: str = "cpu") -> Encoder:
    """Encoder.from_dir, after checking that `path` is a folder, so a typo or a file is one clear line
    ("MODEL: no such file or directory (expected a HuggingFace model folder: ...)") rather than
    "MODEL/config.json: missing". What `loom embed --model` and `loom db index --model` load."""
    folder = os.fspath(path)
    if not os.path.isdir(folder):
        what = "not a directory" if os.path.exists(folder) else "no such file or directory"
        raise FormatError(f"{folder}: {what} (expected a HuggingFace model folder: config.json, "
                          "model.safetensors, tokenizer.json)")
    return Encoder.from_dir(folder, device=device)


# --- helpers -----------------------------------------------------------------------------------------

def _checked_config(config: dict) -> dict:
    """A copy of the HF config with the keys the forward uses, validated, defaults filled in."""
    if not isinstance(config, dict):
        raise ConfigError("config", f"expected a dict (config.json), got {type(config).__name__}")
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ConfigError("model_type", f"{model_type!r} is not a supported encoder; supported: "
                                        f"{', '.join(SUPPORTED_MODEL_TYPES)}")
    out = dict(config)
    for key, default in (("hidden_size", None), ("num_hidden_layers", None), ("num_attention_heads", None),
                         ("intermediate_size", None), ("vocab_size", None), ("max_position_embeddings", None),
                         ("type_vocab_size", 2)):
        value = config.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            what = "missing" if value is None else f"expected a positive integer, got {value!r}"
            raise ConfigError(key, what)
        out[key] = value
    if out["hidden_size"] % out["num_attention_heads"]:
        raise ConfigError("num_attention_heads", f"{out['num_attention_heads']} does not divide hidden_size "
                                                 f"{out['hidden_size']}")
    act = config.get("hidden_act", "gelu")
    if act not in SUPPORTED_ACTIVATIONS:
        raise ConfigError("hidden_act", f"{act!r} is not supported; supported: {', '.join(SUPPORTED_ACTIVATIONS)}")
    out["hidden_act"] = act
    eps = config.get("layer_norm_eps", 1e-12)
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not 0 < eps < 1:
        raise ConfigError("layer_norm_eps", f"expected a number in (0, 1), got {eps!r}")
    out["layer_norm_eps"] = float(eps)
    kind = config.get("position_embedding_type", "absolute")
    if kind != "absolute":
        raise ConfigError("position_embedding_type", f"{kind!r} is not supported; supported: 'absolute'")
    return out


def _expected_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor the forward reads (canonical names) and its shape."""
    h, inner = config["hidden_size"], config["intermediate_size"]
    shapes = {"embeddings.word_embeddings.weight": (config["vocab_size"], h),
              "embeddings.position_embeddings.weight": (config["max_position_embeddings"], h),
              "embeddings.token_type_embeddings.weight": (config["type_vocab_size"], h),
              "embeddings.LayerNorm.weight": (h,), "embeddings.LayerNorm.bias": (h,)}
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        dense = {"attention.self.query": (h, h), "attention.self.key": (h, h), "attention.self.value": (h, h),
                 "attention.output.dense": (h, h), "intermediate.dense": (inner, h), "output.dense": (h, inner)}
        for name, shape in dense.items():
            shapes[p + name + ".weight"] = shape
            shapes[p + name + ".bias"] = shape[:1]
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            shapes[p + name + ".weight"] = shapes[p + name + ".bias"] = (h,)
    return shapes


def _prepared(name: str, w, shape: tuple, target):
    """w checked against `shape`, as float32 (a BlockQuantized is kept in its stored form), on
    `target` when given."""
    got = tuple(w.shape)
    if got != shape:
        raise FormatError(f"tensor {name!r} has shape {list(got)}, expected {list(shape)}")
    if isinstance(w, BlockQuantized):         # stays in its stored form
        if len(shape) != 2:
            raise FormatError(f"tensor {name!r}: a {w.qtype} BlockQuantized where a 1-D float array is expected")
        return w.to(target.name) if target is not None else w
    if np.dtype(w.dtype) not in _FLOAT_DTYPES:
        raise FormatError(f"tensor {name!r} has dtype {w.dtype}, expected a float type")
    owner = backend.of(w)
    if owner.name == "cpu":
        w = np.asarray(w, dtype=np.float32)    # no copy for float32 (a memory-mapped view stays one)
        return target.asarray(w) if target is not None else w
    w = w.astype(np.float32, copy=False)
    return target.asarray(owner.to_numpy(w)) if target is not None and target.name != owner.name else w


def _lookup(table, ids):
    """Rows of an embedding table (an array, or a BlockQuantized dequantizing only those rows)."""
    return table.take_rows(ids) if isinstance(table, BlockQuantized) else table[ids]


def _scattered(packed, rows, total: int):
    """packed [N, F] placed at `rows` of a zero array [total, F]."""
    out = backend.of(packed).xp.zeros((total, packed.shape[1]), dtype=packed.dtype)
    out[rows] = packed
    return out


def _mean_over_tokens(states, lengths):
    """sum_t states[b, t] / lengths[b] for states [B, T, H] that are exactly 0 at padding -> [B, H]."""
    return ops.sum(states, axis=1, padded=True) / lengths[:, None]


def _l2_normalized(x):
    xp = backend.of(x).xp
    norm = ops.sqrt(ops.sum(x * x, axis=-1, keepdims=True))
    return x / xp.maximum(norm, x.dtype.type(_NORM_EPS))


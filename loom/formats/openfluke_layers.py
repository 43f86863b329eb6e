"""welvet layer tree (loom/formats/openfluke.py) -> Loom config + state dict, one function per layer type.

Welvet runs one flat tensor [batch, ...] through its grid in z, y, x, l order; most of its layers
read their input as rows of a fixed width taken from the flat data. The converter tracks Loom's
per-sample shape, inserts flatten/reshape where welvet reads the data flat, and raises a
FormatError (naming the layer's cell and type) wherever welvet would read past its rows, crash, or
compute something Loom cannot reproduce. Where welvet's arithmetic differs from a core layer's, the
converter emits the openfluke compatibility type (openfluke_dense, openfluke_layer_norm,
openfluke_rms_norm, openfluke_attention, openfluke_softmax: loom/nn/layers/openfluke.py). docs/interop.md
lists every mapping and difference.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..errors import FormatError
from .openfluke_tree import BITS, Layer, Model

# welvet activation names (case-insensitive) -> Loom; welvet's GELU is the tanh approximation
ACTIVATIONS = {"relu": "relu", "silu": "silu", "gelu": "gelu_tanh", "tanh": "tanh", "sigmoid": "sigmoid",
               "leakyrelu": "leaky_relu", "linear": "linear", "": "linear"}
# welvet type names (case-insensitive, as its parser reads them) -> the converter's names
TYPES = {"dense": "dense", "mha": "mha", "attention": "mha", "multiheadattention": "mha", "swiglu": "swiglu",
         "rmsnorm": "rmsnorm", "layernorm": "layernorm", "cnn1": "cnn1", "cnn2": "cnn2", "cnn3": "cnn3",
         "rnn": "rnn", "lstm": "lstm", "embedding": "embedding", "kmeans": "kmeans", "softmax": "softmax",
         "parallel": "parallel", "sequential": "sequential", "residual": "residual"}
UNSUPPORTED = {"convtransposed1d", "convtransposed2d", "convtransposed3d", "meta", "metacognition"}
SOFTMAX_TYPES = ("standard", "temperature", "grid", "hierarchical", "gumbel", "masked", "sparse",
                 "adaptive", "mixture", "entmax")
DENSE_BLOCK = 8          # welvet's dense sums in float64 over tiles of tile_size (default 8) inputs
MHA_CACHE = 512          # welvet's KV cache length (positions wrap around beyond it)
# welvet's kmeans finds no centroids for these dtypes: every logit is 0, so it ignores its input
KMEANS_CONSTANT = ("int64", "int32", "int16", "int8", "uint64", "uint32", "uint16", "uint8")


def kind(layer: Layer) -> str:
    name = layer.type.strip().lower()
    if name in TYPES:
        return TYPES[name]
    if name in UNSUPPORTED:
        raise FormatError(f"{layer.where}: welvet layer type {layer.type!r} has no Loom import yet")
    raise FormatError(f"{layer.where}: unknown welvet layer type {layer.type!r}; expected one of "
                      f"{', '.join(sorted(set(TYPES)))}")


class Chain:
    """Loom layers appended in order; parameters are stored under "<prefix>.<index>.<name>"."""

    def __init__(self, prefix: str, state: dict):
        self.prefix, self.state, self.layers = prefix, state, []

    def add(self, cfg: dict, params: dict | None = None) -> int:
        index = len(self.layers)
        self.layers.append(cfg)
        for name, value in (params or {}).items():
            self.state[f"{self.prefix}.{index}.{name}"] = np.ascontiguousarray(value, dtype=np.float32)
        return index

    def child(self, key: str = "layers") -> Chain:
        """A chain for the container that the next add() will place."""
        return Chain(f"{self.prefix}.{len(self.layers)}.{key}", self.state)


# --- entry point ------------------------------------------------------------------------------------

def to_loom(model: Model, input_shape: Sequence[int] | None = None) -> tuple[dict, dict]:
    top = [layer for layer in model.layers if not layer.spec.get("is_disabled")]
    if input_shape is None:
        shape, ids = _infer_input(top, model.source)
    else:
        shape, ids = tuple(int(d) for d in input_shape), False
        if not shape or min(shape) < 1:
            raise FormatError(f"{model.source}: input_shape must be a non-empty list of positive sizes, "
                              f"got {list(shape)}")
        head = _first(top)
        ids = head is not None and kind(head) == "embedding"
    state: dict = {}
    chain = Chain("layers", state)
    spec = (shape, "int64" if ids else "float32")
    for layer in top:
        if kind(layer) == "residual":      # welvet passes no skip tensor at the top level: identity
            continue
        spec = emit(layer, chain, spec)
    if not chain.layers:
        raise FormatError(f"{model.source}: the network has no layer that computes anything "
                          "(every layer is disabled or a top-level residual)")
    depth, rows, cols, lpc = model.grid
    cfg = {"loom": 1, "name": "welvet", "dtype": "float32",
           "input": {"shape": list(shape), "dtype": "int64" if ids else "float32"},
           "layers": chain.layers,
           "metadata": {"converted_from": "welvet", "source": str(model.source),
                        "grid": {"depth": depth, "rows": rows, "cols": cols, "layers_per_cell": lpc}}}
    return cfg, state


def _first(layers):
    for layer in layers:
        k = kind(layer)
        if k == "residual" or layer.spec.get("is_disabled"):
            continue
        if k in ("sequential", "parallel"):      # every branch sees the same input
            found = _first(layer.children if k == "sequential" else layer.branches)
            if found is not None:
                return found
            continue                              # only residuals inside: the input passes on
        return layer
    return None


def _infer_input(top, source):
    layer = _first(top)
    if layer is None:
        raise FormatError(f"{source}: no layer to infer the input shape from; pass input_shape")
    k, s = kind(layer), layer.spec
    seq = s.get("seq_length") or 1
    if k == "embedding":
        return (seq,), True
    if k == "mha":
        return (seq, _req(layer, "d_model")), False
    if k in ("rnn", "lstm"):
        return (seq, _req(layer, "input_height")), False
    if k.startswith("cnn"):
        return _conv_in(layer, int(k[-1])), False
    return (_req(layer, "input_height"),), False


# --- one welvet layer -------------------------------------------------------------------------------

def emit(layer: Layer, chain: Chain, spec: tuple[tuple[int, ...], str]) -> tuple[tuple[int, ...], str]:
    """Append the Loom layers for one welvet layer; return the (shape, dtype) they produce."""
    if layer.spec.get("is_disabled"):
        raise FormatError(f"{layer.where}: disabled layers inside parallel/sequential are not supported")
    k = kind(layer)
    shape, dtype = spec
    if k in ("sequential", "parallel"):
        return EMITTERS[k](layer, chain, spec)
    if k == "embedding":
        if dtype != "int64":
            raise FormatError(f"{layer.where}: embedding must be the first layer (welvet would truncate the "
                              "float activations reaching it to token ids)")
        return _embedding(layer, chain, shape)
    if dtype != "float32":
        raise FormatError(f"{layer.where}: {k} cannot take integer token ids; only embedding can come first")
    return EMITTERS[k](layer, chain, shape), "float32"


def _dense(layer, chain, shape):
    n_in, n_out = _req(layer, "input_height"), _req(layer, "output_height")
    shape = _flat_to(layer, chain, shape, (n_in,), "reads input_height values per row")
    w = _take(layer, n_in * n_out).reshape(n_out, n_in)
    block = layer.spec.get("tile_size") or DENSE_BLOCK    # welvet's CPU tile: its float64 block
    chain.add({"type": "openfluke_dense", "units": n_out, "activation": _act(layer), "bias": False,
               "accumulate_block": block}, {"weight": w})
    return (n_out,)


def _mha(layer, chain, shape):
    d = _req(layer, "d_model")
    heads = _req(layer, "num_heads")
    kv = layer.spec.get("num_kv_heads") or heads
    hd = layer.spec.get("head_dim") or d // heads
    q = layer.spec.get("query_dim") or heads * hd
    if heads % kv:
        raise FormatError(f"{layer.where}: num_heads {heads} is not a multiple of num_kv_heads {kv}")
    if q != heads * hd or hd < 1:
        raise FormatError(f"{layer.where}: query_dim {q} != num_heads * head_dim = {heads * hd}")
    if hd % 2:
        raise FormatError(f"{layer.where}: head_dim {hd} is odd; welvet's RoPE then leaves the last value "
                          "of every head unrotated, which Loom's RoPE does not do")
    orig = shape
    if len(shape) == 1 and shape[0] == d:
        shape = _reshape(chain, shape, (1, d))     # welvet: the batch rows form one sequence
    elif not (len(shape) == 2 and shape[1] == d):
        raise FormatError(f"{layer.where}: mha reads [sequence, d_model={d}] samples but receives per-sample "
                          f"shape {list(shape)}")
    if shape[0] > MHA_CACHE:
        raise FormatError(f"{layer.where}: sequence of {shape[0]} positions exceeds welvet's {MHA_CACHE}-entry "
                          "KV cache, which wraps around; Loom attends to every position")
    kvd = kv * hd
    w = _take(layer, 2 * q * d + 2 * kvd * d + q + 2 * kvd + d)
    parts, at = {}, 0
    for name, size, shp in (("q_proj.weight", q * d, (q, d)), ("k_proj.weight", kvd * d, (kvd, d)),
                            ("v_proj.weight", kvd * d, (kvd, d)), ("o_proj.weight", d * q, (d, q)),
                            ("q_proj.bias", q, (q,)), ("k_proj.bias", kvd, (kvd,)),
                            ("v_proj.bias", kvd, (kvd,)), ("o_proj.bias", d, (d,))):
        parts[name] = w[at:at + size].reshape(shp)
        at += size
    theta = layer.spec.get("rope_freq_base") or 10000.0
    # span batch: welvet's KV cache runs on across the samples of a call, so the batch is one sequence
    chain.add({"type": "openfluke_attention", "heads": heads, "kv_heads": kv, "head_dim": hd, "causal": True,
               "rope": {"theta": float(theta)}, "bias": True, "span": "batch"}, parts)
    return _reshape(chain, shape, orig)


def _swiglu(layer, chain, shape):
    e, h = _req(layer, "input_height"), _req(layer, "output_height")
    if shape[-1] != e:
        raise FormatError(f"{layer.where}: swiglu reads rows of input_height={e} values but receives "
                          f"per-sample shape {list(shape)}")
    w = _take(layer, 3 * e * h + 2 * h + e)
    at = [0]

    def part(size, shp):
        at[0] += size
        return w[at[0] - size:at[0]].reshape(shp)
    params = {"gate_proj.weight": part(h * e, (h, e)), "up_proj.weight": part(h * e, (h, e)),
              "down_proj.weight": part(e * h, (e, h)), "gate_proj.bias": part(h, (h,)),
              "up_proj.bias": part(h, (h,)), "down_proj.bias": part(e, (e,))}
    chain.add({"type": "swiglu", "hidden": h, "bias": True}, params)
    return shape


def _norm(layer, chain, shape):
    f = _req(layer, "input_height")
    oh = layer.spec.get("output_height") or 0
    if oh not in (0, f) or math.prod(shape) != f:
        raise FormatError(f"{layer.where}: {layer.type} normalizes input_height={f} values per sample "
                          f"(output_height {oh}) but receives per-sample shape {list(shape)}")
    orig = shape
    shape = _flat_to(layer, chain, shape, (f,), "")
    if kind(layer) == "rmsnorm":
        chain.add({"type": "openfluke_rms_norm", "eps": 1e-6, "compute_dtype": "float64"}, {"weight": _take(layer, f)})
    else:
        w = _take(layer, 2 * f)
        chain.add({"type": "openfluke_layer_norm", "eps": 1e-5, "compute_dtype": "float64"},
                  {"weight": w[:f], "bias": w[f:]})
    return _reshape(chain, shape, orig)


def _conv_in(layer, n):
    c = _req(layer, "input_channels")
    keys = {1: ("input_height",), 2: ("input_height", "input_width"),
            3: ("input_depth", "input_height", "input_width")}[n]
    return (c,) + tuple(_req(layer, k) for k in keys)


def _conv(layer, chain, shape):
    n = int(kind(layer)[-1])
    target = _conv_in(layer, n)
    shape = _flat_to(layer, chain, shape, target, "reads input_channels x spatial values per sample")
    f, k = _req(layer, "filters"), _req(layer, "kernel_size")
    s, p = _req(layer, "stride"), layer.spec.get("padding") or 0    # stride 0 slides nowhere
    outs = []
    for size, key in zip(target[1:], {1: ("output_height",), 2: ("output_height", "output_width"),
                                      3: ("output_depth", "output_height", "output_width")}[n]):
        want = (size + 2 * p - k) // s + 1
        got = layer.spec.get(key) or 0
        if want < 1 or got != want:
            raise FormatError(f"{layer.where}: {key} is {got}, but kernel {k}, stride {s}, padding {p} on "
                              f"{size} positions give {want}")
        outs.append(want)
    w = _take(layer, f * target[0] * k ** n).reshape((f, target[0]) + (k,) * n)
    chain.add({"type": f"conv{n}d", "filters": f, "kernel_size": k, "stride": s, "padding": p,
               "activation": _act(layer), "bias": False}, {"weight": w})
    return (f,) + tuple(outs)


def _recurrent(layer, chain, shape):
    i, h = _req(layer, "input_height"), _req(layer, "output_height")
    t = layer.spec.get("seq_length") or 1
    shape = _flat_to(layer, chain, shape, (t, i), "reads seq_length x input_height values per sample")
    gates = 4 if kind(layer) == "lstm" else 1
    w = _take(layer, gates * (h * i + h * h + h)).reshape(gates, -1)   # per gate: W_ih, W_hh, bias
    params = {"weight_ih": w[:, :h * i].reshape(gates * h, i),
              "weight_hh": w[:, h * i:h * i + h * h].reshape(gates * h, h),
              "bias_ih": w[:, h * i + h * h:].reshape(gates * h), "bias_hh": np.zeros(gates * h)}
    chain.add({"type": kind(layer), "hidden": h, "return_sequences": True, "bias": True}, params)
    return (t, h)


def _embedding(layer, chain, shape):
    v, d = _req(layer, "vocab_size"), _req(layer, "embedding_dim")
    chain.add({"type": "embedding", "vocab_size": v, "dim": d}, {"weight": _take(layer, v * d).reshape(v, d)})
    act = _act(layer)
    if act != "linear":
        chain.add({"type": "activation", "fn": act})
    return shape + (d,), "float32"


def _kmeans(layer, chain, shape):
    k, f = _req(layer, "num_clusters"), _req(layer, "input_height")
    shape = _flat_to(layer, chain, shape, (f,), "measures distances over input_height values per sample")
    mode = layer.spec.get("output_mode", "")
    if mode not in ("", "probabilities", "features"):
        raise FormatError(f"{layer.where}: unknown kmeans output_mode {mode!r}; expected probabilities or features")
    t = layer.spec.get("kmeans_temperature") or 1.0
    # welvet: softmax(-||x - c||^2 / (2 T^2)); Loom: softmax(-||x - c||^2 / temperature)
    act = _act(layer)
    centroids = _take(layer, k * f).reshape(k, f)
    if layer.spec["dtype"] in KMEANS_CONSTANT:     # uniform assignment: a constant output
        p = np.float32(1) / np.float32(k)
        const = np.full(k, p, np.float32) if mode != "features" else (centroids * p).sum(0, dtype=np.float32)
        chain.add({"type": "dense", "units": const.size, "activation": act},
                  {"weight": np.zeros((const.size, f), np.float32), "bias": const})
        return (const.size,)
    chain.add({"type": "kmeans", "clusters": k, "output": mode or "probabilities", "temperature": 2.0 * t * t},
              {"centroids": centroids})
    if act != "linear":
        chain.add({"type": "activation", "fn": act})
    return (f,) if mode == "features" else (k,)


def _softmax(layer, chain, shape):
    name = (layer.spec.get("softmax_type") or "standard").strip().lower()
    if name not in SOFTMAX_TYPES:
        raise FormatError(f"{layer.where}: unknown softmax_type {layer.spec.get('softmax_type')!r}; expected one "
                          f"of {', '.join(t.capitalize() for t in SOFTMAX_TYPES)}")
    t = layer.spec.get("temperature") or 1.0
    if t < 0:
        raise FormatError(f"{layer.where}: negative softmax temperature {t}")
    cfg = {"type": "openfluke_softmax", "variant": "standard", "temperature": float(t), "normalize": "batch"}
    rows, cols = layer.spec.get("softmax_rows") or 0, layer.spec.get("softmax_cols") or 0
    if name == "gumbel" or layer.spec.get("gumbel_noise"):
        raise FormatError(f"{layer.where}: welvet's Gumbel softmax adds unseeded random noise at inference; "
                          "its outputs cannot be reproduced")
    if name in ("grid", "hierarchical") and rows and cols:   # hierarchy levels are not saved: a grid
        cfg.update(variant="grid", rows=rows, cols=cols)
    elif name == "sparse":
        cfg["variant"] = "sparsemax"
    elif name == "entmax":
        alpha = layer.spec.get("entmax_alpha") or 1.5
        if alpha >= 2:
            cfg["variant"] = "sparsemax"
        elif alpha > 1:
            cfg.update(variant="entmax", alpha=float(alpha), form="blend")
    chain.add(cfg)
    return shape


def _parallel(layer, chain, spec):
    shape, dtype = spec
    if not layer.branches:
        return spec                                    # welvet passes the input through
    mode = layer.spec.get("combine_mode", "") or "concat"
    if mode == "grid_scatter":
        mode = "concat"                                # welvet concatenates for grid_scatter too
    if mode == "filter":
        raise FormatError(f"{layer.where}: combine filter: welvet does not save the filter gate, so its "
                          "reloaded model outputs zeros; nothing to import")
    if mode not in ("concat", "add", "avg"):
        raise FormatError(f"{layer.where}: unknown combine_mode {mode!r}; expected concat, add, avg, "
                          "grid_scatter or filter")
    branches, sizes = [], []
    for j, branch in enumerate(layer.branches):
        sub = chain.child(f"branches.{j}.layers")
        out = shape
        if kind(branch) != "residual":                 # no skip tensor in a branch: identity
            out, _ = emit(branch, sub, spec)
        if len(out) > 1 or not sub.layers:
            sub.add({"type": "flatten"}) if len(out) > 1 else sub.add({"type": "reshape", "shape": list(out)})
        branches.append({"type": "sequential", "layers": sub.layers})
        sizes.append(math.prod(out))
    if mode != "concat" and len(set(sizes)) > 1:
        raise FormatError(f"{layer.where}: combine {mode} needs branch outputs of one size, got {sizes}")
    chain.add({"type": "parallel", "combine": mode, "branches": branches})
    return (sum(sizes) if mode == "concat" else sizes[0],), "float32"


def _sequential(layer, chain, spec):
    """welvet passes each step the input of the step before as its skip tensor: a residual at step
    i > 0 adds the input of step i-1 to that step's output (identity when their sizes differ)."""
    items, i = layer.children, 0
    if not items:
        return spec
    sub = chain.child()
    while i < len(items):
        cur = items[i]
        nxt = items[i + 1] if i + 1 < len(items) else None
        if kind(cur) == "residual":
            if i > 0:
                raise FormatError(f"{cur.where}: a residual right after a residual adds a skip tensor that "
                                  "Loom's residual cannot express")
            i += 1                                     # no skip before the first step: identity
            continue
        if nxt is not None and kind(nxt) == "residual" and not nxt.spec.get("is_disabled"):
            inner = sub.child()
            out, dtype = emit(cur, inner, spec)
            if math.prod(out) == math.prod(spec[0]) and spec[1] == "float32":
                _reshape(inner, out, spec[0])
                if not inner.layers:                   # an identity step: x + x
                    inner.add({"type": "reshape", "shape": list(out)})
                sub.add({"type": "residual", "layers": inner.layers})
                out = spec[0]
            elif inner.layers:
                sub.add({"type": "sequential", "layers": inner.layers})
            spec, i = (out, dtype), i + 2
            if i < len(items) and kind(items[i]) == "residual":
                raise FormatError(f"{items[i].where}: a residual right after a residual adds a skip tensor "
                                  "that Loom's residual cannot express")
            continue
        spec = emit(cur, sub, spec)
        i += 1
    if sub.layers:
        chain.add({"type": "sequential", "layers": sub.layers})
    return spec


EMITTERS = {"dense": _dense, "mha": _mha, "swiglu": _swiglu, "rmsnorm": _norm, "layernorm": _norm,
            "cnn1": _conv, "cnn2": _conv, "cnn3": _conv, "rnn": _recurrent, "lstm": _recurrent,
            "kmeans": _kmeans, "softmax": _softmax, "parallel": _parallel, "sequential": _sequential}


# --- helpers ----------------------------------------------------------------------------------------

def _req(layer, key) -> int:
    v = layer.spec.get(key) or 0
    if v < 1:
        raise FormatError(f"{layer.where}.{key}: {layer.type} needs a positive {key}, got {v}")
    return v


def _act(layer) -> str:
    name = layer.spec.get("activation", "")
    key = name.strip().lower().replace("_", "")
    if key not in ACTIVATIONS:
        raise FormatError(f"{layer.where}.activation: unknown welvet activation {name!r}; expected one of "
                          "ReLU, Silu, GELU, Tanh, Sigmoid, LeakyReLU, Linear")
    return ACTIVATIONS[key]


def _take(layer, count) -> np.ndarray:
    """The layer's first `count` weights as welvet uses them (value * scale); sub-byte dtypes may
    pad the last byte, nothing else may differ."""
    w = layer.weights
    if w is None:
        raise FormatError(f"{layer.where}: {layer.type} layer has no weights (welvet would crash running it)")
    bits = BITS[layer.wdtype]
    packed = -(-count * bits // 8) * 8 // bits if bits < 8 else count
    if len(w) != packed:
        raise FormatError(f"{layer.where}: {layer.type} needs {count} {layer.wdtype} weights, the file "
                          f"holds {len(w)}")
    w = w[:count]
    return (w * np.float32(layer.scale)).astype(np.float32)


def _flat_to(layer, chain, shape, target, what):
    """Reshape the per-sample shape to `target` when welvet reads the same values flat."""
    if math.prod(shape) != math.prod(target):
        raise FormatError(f"{layer.where}: {layer.type} {what or 'expects'} {list(target)} but receives "
                          f"per-sample shape {list(shape)} ({math.prod(shape)} values)")
    return _reshape(chain, shape, tuple(target))


def _reshape(chain, shape, target):
    if tuple(shape) != tuple(target):
        chain.add({"type": "flatten"} if len(target) == 1 else {"type": "reshape", "shape": list(target)})
    return tuple(target)

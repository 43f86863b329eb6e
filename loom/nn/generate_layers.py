"""The rules by which loom.nn.generate draws layers: what may follow the shape reached so far, and the
head that maps the body's output to the wanted shape.

How layers are chosen (by the shape reached so far, without the batch axis):

- a vector [D]: dense, swiglu, layer_norm / rms_norm, dropout, activation, kmeans, a softmax variant
  as a hidden layer, parallel (concat, add, avg, multiply, grid_scatter, filter), stitch, residual;
- a sequence [T, F]: rnn / lstm / gru (with or without return_sequences), multi_head_attention
  (heads dividing F, grouped kv heads, causal, rope, qk_norm), conv1d, 1-d pooling, layer_norm /
  rms_norm, dense and swiglu over the last axis, residual blocks (attention, lstm, dense), parallel,
  or a reshape to an image [1, T, F];
- an image [C, H, W]: conv2d (same or valid padding, stride, groups), conv_transpose2d (only while
  H * W <= 64), 2-d pooling, batch_norm, residual conv blocks, parallel convs, or a reshape to a
  sequence [C * H, W] (so recurrent and attention layers appear for images too);
- a volume [C, D, H, W] (4-d inputs, and what grid_scatter leaves): conv3d, conv_transpose3d, 3-d pooling;
- any rank may be flattened to a vector; nesting (parallel branches holding residual blocks,
  parallel layers inside residual blocks, ...) goes `max_depth` levels deep.

The head maps the body's output to `output_shape`: flatten, then a dense layer of prod(output_shape)
units (a reshape when output_shape has more than one axis), optionally followed by a softmax variant
over the last axis: standard, temperature, gumbel, sparsemax, entmax, masked, mixture, grid (rows x
cols = the width), hierarchical (dense to the sum of the level counts, levels multiplying to the width)
or adaptive (in place of the dense layer; cutoffs below the width). Embedding layers need integer inputs
and the openfluke compatibility types are for imported models: neither is generated.

Every draw comes from a `_Draw`, uniform numbers from one loom.rng stream, so the same stream gives the
same layers. A drawn layer is tried by building it (`_probe`) before it is kept.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .. import rng
from ..config import ACTIVATIONS, COMBINE_MODES, SOFTMAX_VARIANTS
from ..errors import LoomError
from .network import Network

_ACTS = tuple(a for a in ACTIVATIONS if a != "linear")
_WIDTHS = (4, 8, 16, 32, 64)
_FILTERS = (2, 4, 8, 16)


class _Draw:
    """Uniform draws from one loom.rng stream, 256 at a time."""

    def __init__(self, seed: int, stream: str):
        self.gen = rng.Generator(seed, stream)
        self.block, self.buf, self.pos = 0, [], 0

    def u(self) -> float:
        if self.pos == len(self.buf):
            self.buf = [float(v) for v in self.gen.uniform(256, counter=self.block)]
            self.block, self.pos = self.block + 1, 0
        self.pos += 1
        return self.buf[self.pos - 1]

    def int(self, lo: int, hi: int) -> int:
        """An integer in [lo, hi]."""
        return lo + min(int(self.u() * (hi - lo + 1)), hi - lo)

    def pick(self, items: Sequence[Any]) -> Any:
        return items[self.int(0, len(items) - 1)]

    def chance(self, p: float) -> bool:
        return self.u() < p

    def order(self, items: Sequence[Any]) -> list:
        """The items in a drawn order (Fisher-Yates)."""
        out = list(items)
        for i in range(len(out) - 1, 0, -1):
            j = self.int(0, i)
            out[i], out[j] = out[j], out[i]
        return out


def _wrap(layers: list[dict], shape: Sequence[int], seed: int = 0, name: str = "generated") -> dict:
    return {"loom": 1, "name": name, "seed": seed, "dtype": "float32", "input": {"shape": list(shape)},
            "layers": layers}


def _probe(layers: list[dict], shape: tuple[int, ...]) -> tuple[tuple[int, ...], int] | None:
    """(output shape, parameters) of `layers` applied to `shape`, or None when they do not build."""
    try:
        net = Network.from_config(_wrap(layers, shape))
    except LoomError:
        return None
    return tuple(net.output_spec.shape), int(net.root.param_count())


# --- drawing layers for a shape ----------------------------------------------------------------------

def _divisors(n: int, limit: int = 8) -> list[int]:
    return [d for d in range(1, min(n, limit) + 1) if n % d == 0]


class _Builder:
    """Draws layers for the shape reached so far, within the families allowed and a nesting depth."""

    def __init__(self, draw: _Draw, families: frozenset[str], max_depth: int):
        self.d, self.families, self.max_depth = draw, families, max_depth

    def ok(self, family: str) -> bool:
        return family in self.families

    # one layer (or a nested block) for `shape`; preserve=True keeps the shape (residual bodies)
    def layer(self, shape: tuple[int, ...], depth: int, preserve: bool = False) -> dict | None:
        rank = len(shape)
        menu = {1: self._vector, 2: self._sequence, 3: self._image, 4: self._volume}.get(rank)
        options = menu(shape, depth, preserve) if menu else []
        if not preserve and rank > 1 and self.ok("shape"):
            options.append(("shape", lambda: {"type": "flatten"}))
        options = [(f, make) for f, make in options if self.ok(f)]
        if not options:
            return None
        family, make = self.d.pick(options)
        return make()

    def _common(self, shape, depth, preserve):
        d = self.d
        out = [("dropout", lambda: {"type": "dropout", "rate": d.pick((0.05, 0.1, 0.2, 0.3))}),
               ("activation", lambda: {"type": "activation", "fn": d.pick(_ACTS)})]
        if depth < self.max_depth:
            out.append(("residual", lambda: self._residual(shape, depth)))
            out.append(("parallel", lambda: self._parallel(shape, depth, preserve)))
            out.append(("sequential", lambda: self._sequential(shape, depth, preserve)))
        return out

    def _vector(self, shape, depth, preserve):
        d, D = self.d, shape[0]
        width = (lambda: D) if preserve else (lambda: d.pick(_WIDTHS))
        out = self._common(shape, depth, preserve) + [
            ("dense", lambda: {"type": "dense", "units": width(), "activation": d.pick(("linear",) + _ACTS)}),
            ("swiglu", lambda: {"type": "swiglu", "hidden": d.pick(_WIDTHS), "bias": d.chance(0.5)}),
            ("norm", lambda: {"type": d.pick(("layer_norm", "rms_norm"))}),
            ("softmax", lambda: self._softmax_hidden(D)),
        ]
        if not preserve:
            out.append(("kmeans", lambda: {"type": "kmeans", "clusters": d.pick((3, 4, 8)),
                                           "output": d.pick(("probabilities", "features")),
                                           "temperature": d.pick((0.5, 1.0, 2.0))}))
            if depth < self.max_depth:
                out.append(("stitch", lambda: self._stitch(shape, depth)))
        return out

    def _softmax_hidden(self, D):
        d = self.d
        variant = d.pick(("standard", "temperature", "sparsemax", "entmax", "gumbel", "masked"))
        out = {"type": "softmax", "variant": variant}
        if variant in ("temperature", "gumbel"):
            out["temperature"] = d.pick((0.5, 1.0, 2.0))
        if variant == "entmax":
            out["alpha"] = d.pick((1.25, 1.5, 1.75))
        if variant == "masked":
            out["mask"] = self._mask(D)
        return out

    def _mask(self, n):
        bits = [int(self.d.chance(0.7)) for _ in range(n)]
        bits[self.d.int(0, n - 1)] = 1
        return bits

    def _sequence(self, shape, depth, preserve):
        d, (T, F) = self.d, shape
        heads = _divisors(F, 4)
        out = self._common(shape, depth, preserve) + [
            ("norm", lambda: {"type": d.pick(("layer_norm", "rms_norm"))}),
            ("attention", lambda: self._attention(F, heads)),
        ]
        if preserve:
            out += [("dense", lambda: {"type": "dense", "units": F, "activation": d.pick(_ACTS)}),
                    ("recurrent", lambda: {"type": d.pick(("rnn", "lstm", "gru")), "hidden": F,
                                           "return_sequences": True})]
            return out
        out += [
            ("dense", lambda: {"type": "dense", "units": d.pick(_WIDTHS), "activation": d.pick(("linear",) + _ACTS)}),
            ("swiglu", lambda: {"type": "swiglu", "hidden": d.pick(_WIDTHS)}),
            ("recurrent", lambda: {"type": d.pick(("rnn", "lstm", "gru")), "hidden": d.pick(_WIDTHS[:4]),
                                   "return_sequences": d.chance(0.5), "bias": d.chance(0.8)}),
            ("conv", lambda: {"type": "conv1d", "filters": d.pick(_FILTERS), "kernel_size": d.pick((1, 3)),
                              "padding": "same", "activation": d.pick(("linear",) + _ACTS)}),
            ("shape", lambda: {"type": "reshape", "shape": [1, T, F]}),
        ]
        if F >= 2:
            out.append(("pooling", lambda: {"type": d.pick(("max_pool1d", "avg_pool1d")), "pool_size": 2}))
        return out

    def _attention(self, F, heads):
        d = self.d
        h = d.pick(heads)
        out = {"type": "multi_head_attention", "heads": h, "causal": d.chance(0.5), "qk_norm": d.chance(0.3)}
        kv = _divisors(h)
        if len(kv) > 1 and d.chance(0.4):
            out["kv_heads"] = d.pick(kv)
        if (F // h) % 2 == 0 and d.chance(0.4):
            out["rope"] = {"theta": d.pick((100.0, 10000.0))}
        return out

    def _image(self, shape, depth, preserve):
        d, (C, H, W) = self.d, shape
        act = lambda: d.pick(("linear",) + _ACTS)         # noqa: E731
        out = self._common(shape, depth, preserve) + [("norm", lambda: {"type": "batch_norm"})]
        if preserve:
            out.append(("conv", lambda: {"type": "conv2d", "filters": C, "kernel_size": 3, "padding": "same",
                                         "activation": act()}))
            return out

        def conv():
            f = d.pick(_FILTERS)
            layer = {"type": "conv2d", "filters": f, "activation": act()}
            if min(H, W) >= 3 and d.chance(0.5):
                layer.update(kernel_size=d.pick((2, 3)), stride=d.pick((1, 1, 2)))
            else:
                layer.update(kernel_size=d.pick((1, 3)), padding="same")
            groups = [g for g in _divisors(math.gcd(C, f), 4) if g > 1]
            if groups and d.chance(0.3):
                layer["groups"] = d.pick(groups)
            return layer
        out += [("conv", conv), ("shape", lambda: {"type": "reshape", "shape": [C * H, W]})]
        if H * W <= 64:
            out.append(("conv_transpose", lambda: {"type": "conv_transpose2d", "filters": d.pick(_FILTERS),
                                                   "kernel_size": 2, "stride": d.pick((1, 2))}))
        if min(H, W) >= 2:
            out.append(("pooling", lambda: {"type": d.pick(("max_pool2d", "avg_pool2d")), "pool_size": 2}))
        return out

    def _volume(self, shape, depth, preserve):
        d = self.d
        out = self._common(shape, depth, preserve)
        if preserve:
            return out
        out.append(("conv", lambda: {"type": "conv3d", "filters": d.pick(_FILTERS[:3]), "kernel_size": 1}))
        if math.prod(shape[1:]) <= 64:
            out.append(("conv_transpose", lambda: {"type": "conv_transpose3d", "filters": d.pick(_FILTERS[:2]),
                                                   "kernel_size": 2}))
        if min(shape[1:]) >= 2:
            out.append(("pooling", lambda: {"type": d.pick(("max_pool3d", "avg_pool3d")), "pool_size": 2}))
        return out

    # --- nested blocks ---
    def _chain(self, shape, depth, n, preserve):
        layers = []
        for _ in range(n):
            layer = self.layer(shape, depth + 1, preserve)
            if layer is None:
                break
            got = _probe([layer], shape)
            if got is None or (preserve and got[0] != shape):
                continue
            layers.append(layer)
            shape = got[0]
        return layers, shape

    def _residual(self, shape, depth):
        layers, _ = self._chain(shape, depth, self.d.int(1, 2), preserve=True)
        return {"type": "residual", "layers": layers or [{"type": "activation", "fn": self.d.pick(_ACTS)}]}

    def _sequential(self, shape, depth, preserve):
        layers, _ = self._chain(shape, depth, 2, preserve)
        return {"type": "sequential", "layers": layers or [{"type": "activation", "fn": self.d.pick(_ACTS)}]}

    def _branch_end(self, shape, width):
        """The layer that ends a branch with `width` on the last axis (dense, or conv for images)."""
        if len(shape) == 3:
            return {"type": "conv2d", "filters": width, "kernel_size": 3, "padding": "same"}
        if len(shape) == 4:
            return {"type": "conv3d", "filters": width, "kernel_size": 1}
        return {"type": "dense", "units": width, "activation": self.d.pick(("linear",) + _ACTS)}

    def _branches(self, shape, depth, n, width):
        out = []
        for _ in range(n):
            body = []
            if len(shape) != 3 and self.d.chance(0.5):    # a nested layer first (images: keep it a conv)
                body, _ = self._chain(shape, depth, 1, preserve=True)
            end = self._branch_end(shape, width if width else self.d.pick(_FILTERS if len(shape) >= 3 else _WIDTHS))
            out.append({"type": "sequential", "layers": body + [end]} if body else end)
        return out

    def _parallel(self, shape, depth, preserve):
        d = self.d
        modes = ["add", "avg", "multiply"] if preserve else list(COMBINE_MODES)
        if len(shape) != 1:
            modes = [m for m in modes if m not in ("grid_scatter", "filter")]
        mode = d.pick(modes)
        n = d.int(2, 3)
        same = shape[0] if len(shape) == 3 else shape[-1]
        width = same if preserve else (0 if mode == "concat" else d.pick(_FILTERS if len(shape) >= 3 else _WIDTHS))
        out = {"type": "parallel", "combine": mode, "branches": self._branches(shape, depth, n, width)}
        if mode == "filter":
            out["top_k"] = d.int(1, n)
        if mode == "grid_scatter":
            rows, cols = d.pick(((1, n), (n, 1), (2, 2))) if n <= 4 else (n, 1)
            cells = d.order([[r, c, 0] for r in range(rows) for c in range(cols)])[:n]
            out["grid"] = {"rows": rows, "cols": cols, "layers": 1, "positions": cells}
        return out

    def _stitch(self, shape, depth):
        d = self.d
        mode = d.pick(("concat", "add", "avg", "multiply", "filter"))
        n = d.int(2, 3)
        out = {"type": "stitch", "width": d.pick(_WIDTHS[:4]), "combine": mode,
               "branches": self._branches(shape, depth, n, 0)}
        if mode == "filter":
            out["top_k"] = d.int(1, n)
        return out

    # --- the head ---
    def head(self, shape: tuple[int, ...], out_shape: tuple[int, ...]) -> list[dict]:
        d, n = self.d, math.prod(out_shape)
        layers = [{"type": "flatten"}] if len(shape) > 1 else []
        if len(out_shape) > 1:
            layers += [{"type": "dense", "units": n}, {"type": "reshape", "shape": list(out_shape)}]
            if self.ok("softmax") and d.chance(0.3):
                layers.append({"type": "softmax"})
            return layers
        if not self.ok("softmax") or d.chance(0.4):
            return layers + [{"type": "dense", "units": n}]
        variants = [v for v in SOFTMAX_VARIANTS if not (v == "adaptive" and n < 3)]
        v = d.pick(variants)
        if v == "adaptive":
            cut = sorted({max(1, n // 3), max(1, 2 * n // 3)} - {n}) if n >= 4 else [1]
            return layers + [{"type": "softmax", "variant": "adaptive", "classes": n,
                              "cutoffs": cut[:d.int(1, len(cut))], "div_value": d.pick((2.0, 4.0))}]
        if v == "hierarchical":
            first = d.pick(_divisors(n, n))
            levels = [first] + ([n // first] if n // first > 1 else [])
            counts = [math.prod(levels[:i + 1]) for i in range(len(levels))]
            return layers + [{"type": "dense", "units": sum(counts)},
                             {"type": "softmax", "variant": "hierarchical", "levels": levels}]
        soft = {"type": "softmax", "variant": v}
        if v == "grid":
            rows = d.pick(_divisors(n, n))
            soft.update(rows=rows, cols=n // rows)
        elif v == "masked":
            soft["mask"] = self._mask(n)
        elif v == "mixture":
            soft["components"] = d.int(2, 3)
        elif v == "entmax":
            soft["alpha"] = d.pick((1.25, 1.5, 1.75))
        if v in ("temperature", "gumbel"):
            soft["temperature"] = d.pick((0.5, 1.0, 2.0))
        return layers + [{"type": "dense", "units": n}, soft]


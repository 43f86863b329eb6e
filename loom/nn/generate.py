"""Random network configs under a parameter budget, and the mutate / crossover moves of a search.

    from loom.nn.generate import generate, random_config, mutate, crossover
    for cfg in generate([1, 8, 8], [10], budget=20_000, seed=0, count=100): ...
    one = random_config([8, 8], [10], budget=5_000, seed=0, index=3)   # the 4th config generate yields

Every config is checked the honest way: it is built with Network.from_config and its parameters are
counted, so a config that comes out of here builds and holds at most `budget` parameters.

Which layers may follow the shape reached so far, and how the head reaches `output_shape`, are the
rules of loom/nn/generate_layers.py.

Determinism: every draw comes from loom.rng (Philox keyed by seed and a stream name); config `index`
of a seed uses its own stream, so the same arguments give the same configs on every machine. A config
that fails to build or exceeds the budget is redrawn from the next stream (up to ATTEMPTS times), then
replaced by the smallest network (flatten and one dense layer). Bad arguments raise ConfigError naming
the argument, a budget below that smallest network included.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from typing import Any

from ..errors import ConfigError, LoomError
from .generate_layers import _ACTS, _FILTERS, _WIDTHS, _Builder, _Draw, _probe, _wrap
from .network import Network

STREAM = "nn.generate"
ATTEMPTS = 8
MAX_LAYERS = 6          # body layers at the top level, at most

# layer type -> family; `families=` and families_of() speak in these names
FAMILY_OF = {
    "dense": "dense", "conv1d": "conv", "conv2d": "conv", "conv3d": "conv",
    "conv_transpose1d": "conv_transpose", "conv_transpose2d": "conv_transpose", "conv_transpose3d": "conv_transpose",
    **{f"{k}_pool{n}d": "pooling" for k in ("max", "avg") for n in (1, 2, 3)},
    "layer_norm": "norm", "rms_norm": "norm", "batch_norm": "norm", "dropout": "dropout",
    "activation": "activation", "rnn": "recurrent", "lstm": "recurrent", "gru": "recurrent",
    "multi_head_attention": "attention", "swiglu": "swiglu", "kmeans": "kmeans", "softmax": "softmax",
    "parallel": "parallel", "stitch": "stitch", "residual": "residual", "sequential": "sequential",
    "flatten": "shape", "reshape": "shape",
}
FAMILIES = tuple(dict.fromkeys(FAMILY_OF.values()))
_ALWAYS = {"dense", "shape"}     # the head needs these: they cannot be left out


# --- checks and building ---------------------------------------------------------------------------

def _shape_arg(v: Any, name: str) -> tuple[int, ...]:
    if isinstance(v, (str, bytes)) or not isinstance(v, Sequence) or not 1 <= len(v) <= 4 or \
            not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in v):
        raise ConfigError(name, f"expected 1 to 4 positive integers, got {v!r}")
    return tuple(v)


def _positive(v: Any, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise ConfigError(name, f"expected a positive integer, got {v!r}")
    return v


def _seed_arg(v: Any, name: str = "seed") -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ConfigError(name, f"expected a non-negative integer, got {v!r}")
    return v


def _families_arg(families: Sequence[str] | None) -> frozenset[str]:
    if families is None:
        return frozenset(FAMILIES)
    if isinstance(families, str):
        families = [families]
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise ConfigError("families", f"unknown families {unknown}; expected some of {', '.join(FAMILIES)}")
    return frozenset(families) | _ALWAYS


def param_count(config: dict) -> int:
    """Parameters of the network `config` describes (built to count them)."""
    return int(Network.from_config(config).root.param_count())


def _smallest(in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> list[dict]:
    n = math.prod(out_shape)
    layers = ([{"type": "flatten"}] if len(in_shape) > 1 else []) + [{"type": "dense", "units": n}]
    if len(out_shape) > 1:
        layers.append({"type": "reshape", "shape": list(out_shape)})
    return layers


def _smallest_count(in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> int:
    n = math.prod(out_shape)
    return math.prod(in_shape) * n + n


# --- the public API ------------------------------------------------------------------------------------

def _draw_config(in_shape, out_shape, budget, seed, index, attempt, families, max_depth):
    d = _Draw(seed, f"{STREAM}.{index}.{attempt}")
    b = _Builder(d, families, max_depth)
    layers, shape, used = [], in_shape, 0
    for _ in range(d.int(1, MAX_LAYERS)):
        for _try in range(3):
            layer = b.layer(shape, 0)
            if layer is None:
                break
            got = _probe([layer], shape)
            if got is None:
                continue
            new_shape, params = got
            if len(new_shape) > 4 or used + params + _smallest_count(new_shape, out_shape) > budget:
                continue
            layers.append(layer)
            shape, used = new_shape, used + params
            break
    layers += b.head(shape, out_shape)
    return _wrap(layers, in_shape, seed=d.int(0, 2**31 - 1), name=f"generated-{seed}-{index}")


def random_config(input_shape: Sequence[int], output_shape: Sequence[int], budget: int, seed: int, *,
                  index: int = 0, families: Sequence[str] | None = None, max_depth: int = 2) -> dict:
    """Config number `index` (from 0) of the seed: a network config taking `input_shape`, giving
    `output_shape` and holding at most `budget` parameters (see the module docstring for the rules).
    families: the FAMILIES that may be drawn (dense and shape are always allowed; None: all)."""
    in_shape, out_shape = _shape_arg(input_shape, "input_shape"), _shape_arg(output_shape, "output_shape")
    _positive(budget, "budget")
    _seed_arg(seed)
    _seed_arg(index, "index")
    allowed = _families_arg(families)
    if isinstance(max_depth, bool) or not isinstance(max_depth, int) or max_depth < 0:
        raise ConfigError("max_depth", f"expected a non-negative integer, got {max_depth!r}")
    least = _smallest_count(in_shape, out_shape)
    if budget < least:
        raise ConfigError("budget", f"{budget} parameters is below the smallest network from {list(in_shape)} to "
                                    f"{list(out_shape)} ({least} parameters: flatten and one dense layer)")
    for attempt in range(ATTEMPTS):
        cfg = _draw_config(in_shape, out_shape, budget, seed, index, attempt, allowed, max_depth)
        if _fits(cfg, out_shape, budget):
            return cfg
    return _wrap(_smallest(in_shape, out_shape), in_shape, seed=seed, name=f"generated-{seed}-{index}")


def _fits(cfg: dict, out_shape: tuple[int, ...] | None, budget: int | None) -> bool:
    """True when `cfg` builds, gives out_shape (None: any) and holds at most `budget` parameters."""
    try:
        net = Network.from_config(cfg)
    except LoomError:
        return False
    if out_shape is not None and tuple(net.output_spec.shape) != tuple(out_shape):
        return False
    return budget is None or net.root.param_count() <= budget


def generate(input_shape: Sequence[int], output_shape: Sequence[int], budget: int, seed: int, *,
             count: int | None = None, families: Sequence[str] | None = None,
             max_depth: int = 2) -> Iterator[dict]:
    """Random valid configs, one after another: random_config(..., index=0), index=1, ...; endless
    unless `count` is given. The arguments are checked before the first config is drawn."""
    random_config(input_shape, output_shape, budget, seed, index=0, families=families, max_depth=max_depth)
    if count is not None:
        _seed_arg(count, "count")

    def configs():
        i = 0
        while count is None or i < count:
            yield random_config(input_shape, output_shape, budget, seed, index=i, families=families,
                                max_depth=max_depth)
            i += 1
    return configs()


def families_of(config: dict) -> set[str]:
    """The families (FAMILIES) of every layer in a config, nested layers included; combine modes
    appear as "parallel/<mode>" and softmax variants as "softmax/<variant>"."""
    out: set[str] = set()

    def walk(layer):
        kind = layer["type"]
        out.add(FAMILY_OF.get(kind, kind))
        if kind in ("parallel", "stitch"):
            out.add(f"parallel/{layer.get('combine', 'concat')}")
        if kind == "softmax":
            out.add(f"softmax/{layer.get('variant', 'standard')}")
        for child in layer.get("layers", []) + layer.get("branches", []):
            walk(child)
    for layer in config["layers"]:
        walk(layer)
    return out


def _output_shape(config: dict) -> tuple[int, ...]:
    return tuple(Network.from_config(config).output_spec.shape)


def _shapes(config: dict) -> list[tuple[int, ...]]:
    """The shape before each top-level layer and after the last (len(layers) + 1 shapes)."""
    net = Network.from_config(config)
    return [tuple(net.input_spec.shape)] + [tuple(c.out_spec.shape) for c in net.root.children.values()]


_TWEAKS = {"units": _WIDTHS, "filters": _FILTERS, "hidden": _WIDTHS, "rate": (0.05, 0.1, 0.2, 0.3),
           "activation": ("linear",) + _ACTS, "fn": _ACTS, "temperature": (0.5, 1.0, 2.0),
           "combine": ("add", "avg", "multiply", "concat"), "causal": (False, True)}


def _nodes(layers: list[dict]) -> list[dict]:
    out = []
    for layer in layers:
        out.append(layer)
        out += _nodes(layer.get("layers", []) + layer.get("branches", []))
    return out


def _mutation(cfg: dict, d: _Draw, families: frozenset[str], max_depth: int) -> dict:
    """One drawn change of a copy of cfg: tweak a key, insert a shape-keeping layer, or delete one."""
    cfg = copy.deepcopy(cfg)
    layers, kind = cfg["layers"], d.pick(("tweak", "tweak", "insert", "delete"))
    if kind == "tweak":
        spots = [(node, key) for node in _nodes(layers) for key in _TWEAKS if key in node]
        if spots:
            node, key = d.pick(spots)
            node[key] = d.pick(_TWEAKS[key])
            return cfg
        kind = "insert"
    if kind == "delete" and len(layers) > 1:
        del layers[d.int(0, len(layers) - 2)]          # never the last layer: it makes the output
        return cfg
    at = d.int(0, len(layers) - 1)
    shape = _shapes(cfg)[at]
    layer = _Builder(d, families, max_depth).layer(shape, 0, preserve=True)
    if layer is not None:
        layers.insert(at, layer)
    return cfg


def mutate(config: dict, seed: int, *, budget: int | None = None, families: Sequence[str] | None = None,
           max_depth: int = 2) -> dict:
    """A changed copy of `config`: one key of one layer redrawn (units, filters, hidden, rate,
    activation, temperature, combine, causal), a shape-keeping layer inserted (from the generator's
    rules), or a top-level layer deleted. The result builds, keeps the output shape and (with
    `budget`) holds at most `budget` parameters; a change that breaks any of that is redrawn, up to
    ATTEMPTS times, and then `config` itself is returned (copied). Deterministic in (config, seed)."""
    _seed_arg(seed)
    allowed = _families_arg(families)
    out_shape = _output_shape(config)
    for attempt in range(ATTEMPTS):
        d = _Draw(seed, f"{STREAM}.mutate.{attempt}")
        cfg = _mutation(config, d, allowed, max_depth)
        if cfg != config and _fits(cfg, out_shape, budget):
            return cfg
    return copy.deepcopy(config)


def crossover(a: dict, b: dict, seed: int, *, budget: int | None = None) -> dict:
    """A child of two configs with the same input shape: the first i top-level layers of `a` followed
    by the layers of `b` from j on, at a cut drawn among those where both have the same rank of shape.
    The child builds, gives a's output shape and (with `budget`) holds at most `budget` parameters;
    cuts are tried in a drawn order, and when none works the child is a copy of `a`."""
    _seed_arg(seed)
    if list(a["input"]["shape"]) != list(b["input"]["shape"]):
        raise ConfigError("b.input.shape", f"crossover needs the same input shape, got {a['input']['shape']} "
                                           f"and {b['input']['shape']}")
    sa, sb = _shapes(a), _shapes(b)
    cuts = [(i, j) for i in range(len(a["layers"])) for j in range(len(b["layers"]))
            if len(sa[i]) == len(sb[j]) and (i, j) != (0, 0)]
    d = _Draw(seed, f"{STREAM}.crossover")
    out_shape = sa[-1]
    for i, j in d.order(cuts)[:4 * ATTEMPTS]:
        child = {**copy.deepcopy(a), "layers": copy.deepcopy(a["layers"][:i] + b["layers"][j:])}
        if child != a and _fits(child, out_shape, budget):
            return child
    return copy.deepcopy(a)

"""Network.blueprint(): what a built network is, as JSON.

The network's facts (input, output, dtype, quantization, parameter totals) and a tree of its
layers in build order (a chain's layers in execution order; a parallel's branches, then its gate).
Each layer: its dotted path (the prefix of its parameter names), type, short detail, per-sample
input and output specs, parameter count (its own and nested ones), its own parameters and buffers
(name, shape, dtype, trainable), the grid cell of a grid_scatter branch, and its nested layers
under "children" (parallel branches, a filter's gate, residual and sequential bodies). Every value
is a plain JSON type and nothing depends on timing or memory addresses, so the same network always
gives the same document.
"""
from __future__ import annotations

from typing import Any

from .built_network import BuiltNetwork
from .layers import Layer, Spec

FORMAT = 1           # "loom_blueprint": the version of this document's layout


def blueprint(net: BuiltNetwork) -> dict[str, Any]:
    """The blueprint of `net` (see the module docstring); JSON-serializable."""
    cfg = net.config
    walked = [layer for _, layer in net.root.walk()]
    return {
        "loom_blueprint": FORMAT,
        "name": cfg["name"],
        "dtype": cfg["dtype"],
        "seed": cfg["seed"],
        "device": net.device,
        "input": spec_json(net.input_spec),
        "output": spec_json(net.output_spec),
        "quantization": cfg.get("quantization"),
        "qat": cfg.get("qat"),
        "param_count": net.root.param_count(),
        "trainable_count": sum(_count(p) for layer in walked for k, p in layer.params.items() if k in layer.grads),
        "param_bytes": sum(int(p.nbytes) for layer in walked for p in layer.params.values()),
        "layers": [_layer(child, path) for path, child in _children(net.root, "")],
    }


def layers(bp: dict[str, Any]) -> list[dict[str, Any]]:
    """The blueprint's layer entries flattened in execution order (each with its children still nested)."""
    out: list[dict[str, Any]] = []

    def add(entries):
        for entry in entries:
            out.append(entry)
            add(entry.get("children", []))
    add(bp["layers"])
    return out


def spec_json(spec: Spec) -> dict[str, Any]:
    """A per-sample spec as {"shape": [...], "dtype": name}."""
    return {"shape": list(spec.shape), "dtype": spec.dtype}


def _count(p) -> int:
    n = 1
    for d in p.shape:
        n *= int(d)
    return n


def _tensor(name: str, value, trainable: bool) -> dict[str, Any]:
    return {"name": name, "shape": [int(d) for d in value.shape], "dtype": str(value.dtype),
            "count": _count(value), "trainable": trainable}


def _children(layer: Layer, prefix: str):
    for key, child in layer.children.items():
        yield (f"{prefix}.{key}" if prefix else key), child


def _grid_cells(layer: Layer) -> dict[str, list[int]]:
    """child key -> [row, col, layer] for the branches (and a stitch's projections) of a grid_scatter."""
    grid = layer.cfg.get("grid") if layer.cfg.get("combine") == "grid_scatter" else None
    if not grid:
        return {}
    out = {}
    for key in layer.children:
        kind, _, index = key.partition(".")
        if kind in ("branches", "projections") and index.isdigit() and int(index) < len(grid["positions"]):
            out[key] = [int(v) for v in grid["positions"][int(index)]]
    return out


def _layer(layer: Layer, path: str, cell: list[int] | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"path": path, "type": layer.type, "detail": layer.describe()}
    if cell is not None:
        entry["grid_position"] = cell
    entry.update({
        "input": spec_json(layer.in_spec),
        "output": spec_json(layer.out_spec),
        "param_count": layer.param_count(),
        "params": [_tensor(f"{path}.{k}", v, k in layer.grads) for k, v in layer.params.items()],
    })
    if layer.buffers:
        entry["buffers"] = [_tensor(f"{path}.{k}", v, False) for k, v in layer.buffers.items()]
    grid = layer.cfg.get("grid") if layer.cfg.get("combine") == "grid_scatter" else None
    if grid:
        entry["grid"] = {"rows": grid["rows"], "cols": grid["cols"], "layers": grid["layers"]}
    if layer.children:
        cells = _grid_cells(layer)
        entry["children"] = [_layer(child, f"{path}.{key}", cells.get(key)) for key, child in layer.children.items()]
    return entry

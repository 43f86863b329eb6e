"""A welvet model as read from its file (loom/formats/openfluke.py) and converted to Loom
(loom/formats/openfluke_layers.py): the checked layer tree and the widths of welvet's stored dtypes.

The reader builds these and the converter walks them; kept apart from both, the converter needs
nothing from the reader. openfluke.py re-exports them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# dtype name -> bits per packed value; float16/bfloat16/float32/float64 ignore the layer scale
BITS = {"float64": 64, "float32": 32, "float16": 16, "bfloat16": 16, "fp8e4m3": 8, "fp8e5m2": 8,
        "int64": 64, "int32": 32, "int16": 16, "int8": 8, "uint64": 64, "uint32": 32, "uint16": 16,
        "uint8": 8, "int4": 4, "uint4": 4, "fp4": 4, "int2": 2, "uint2": 2, "ternary": 2, "binary": 1}


@dataclass
class Layer:
    """One welvet layer: its (checked) wire fields, decoded weights and children."""
    spec: dict
    where: str                     # "layers[3] (z=0, y=0, x=1, l=0)" for messages
    weights: np.ndarray | None = None     # stored values as float32, before the scale
    scale: float = 1.0                    # what welvet multiplies them by (1 for float dtypes)
    wdtype: str = "float32"               # the dtype the values were stored in
    branches: list = field(default_factory=list)     # parallel_branches
    children: list = field(default_factory=list)     # sequential_layers

    @property
    def type(self) -> str:
        return self.spec["type"]


@dataclass
class Model:
    grid: tuple                    # (depth, rows, cols, layers_per_cell)
    layers: list                   # top-level layers in execution order (z, y, x, l row-major)
    source: str

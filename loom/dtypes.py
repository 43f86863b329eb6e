"""The one table of numeric types Loom knows.

Each row ties a Loom name to its NumPy dtype, its safetensors name and its C enum value. Networks
compute in the float types; integer types appear as inputs (token ids). Quantized storage types
join this table with the model-file work.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import ConfigError


@dataclass(frozen=True)
class DType:
    name: str            # Loom's name, as written in configs
    numpy: np.dtype      # in-memory representation
    safetensors: str     # safetensors header name
    c_enum: int          # value in loom.h's LoomDType
    bits: int
    kind: str            # "float" | "int" | "uint" | "bool"


_ROWS = [
    DType("float64", np.dtype(np.float64), "F64", 0, 64, "float"),
    DType("float32", np.dtype(np.float32), "F32", 1, 32, "float"),
    DType("int64", np.dtype(np.int64), "I64", 7, 64, "int"),
    DType("int32", np.dtype(np.int32), "I32", 8, 32, "int"),
]
TABLE: dict[str, DType] = {row.name: row for row in _ROWS}

# Types a network may compute in (its "dtype" key).
COMPUTE = ("float32", "float64")
# Types a network input may have besides the compute type (integer ids for embedding).
INPUT = ("float32", "float64", "int64", "int32")


def get(name: str, path: str = "dtype") -> DType:
    if name not in TABLE:
        raise ConfigError(path, f"unknown dtype {name!r}; expected one of {sorted(TABLE)}")
    return TABLE[name]


def of_array(array) -> str:
    """Loom name of an array's dtype (raises ConfigError for types outside the table)."""
    for row in _ROWS:
        if row.numpy == array.dtype:
            return row.name
    raise ConfigError("", f"dtype {array.dtype} is not a Loom type")

"""Reading (X, Y) data files for the CLI: .npz (arrays "x" and "y") or .csv (numbers, target column).

Errors are FormatError naming the file and, for CSV, the line and column.
"""
from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence

import numpy as np

from ..errors import FormatError, ShapeError


def load_xy(path: str | os.PathLike[str], input_shape: Sequence[int] | None = None,
            target: str | int = "last") -> tuple[np.ndarray, np.ndarray]:
    """(X, Y) from `path`. X is reshaped to [N, *input_shape] when given.
    CSV: an optional header row; `target` is the target column (index, header name, or "last"/"first")."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FormatError(f"{path}: no such file")
    if path.endswith(".npz"):
        X, Y = _npz(path)
    elif path.endswith(".csv") or path.endswith(".csv.gz"):
        X, Y = _csv(path, target)
    else:
        raise FormatError(f"{path}: unknown data format; expected .npz (arrays x, y) or .csv")
    if len(X) != len(Y):
        raise FormatError(f"{path}: x has {len(X)} rows but y has {len(Y)}")
    if input_shape is not None:
        X = reshape_inputs(X, input_shape, path)
    return X, Y


def load_x(path: str | os.PathLike[str], input_shape: Sequence[int] | None = None) -> np.ndarray:
    """Inputs only: a .npy array, or the x of an .npz / all columns of a .csv without a target."""
    path = os.fspath(path)
    if path.endswith(".npy"):
        try:
            X = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise FormatError(f"{path}: not a readable .npy array ({exc})") from None
    else:
        X, _ = load_xy(path, None)
    return reshape_inputs(X, input_shape, path) if input_shape is not None else X


def reshape_inputs(X: np.ndarray, input_shape: Sequence[int], path: str) -> np.ndarray:
    per = math.prod(input_shape)
    if X.ndim >= 1 and math.prod(X.shape[1:]) == per:
        return X.reshape((len(X), *input_shape))
    raise ShapeError(f"{path}: samples have shape {list(X.shape[1:])} ({math.prod(X.shape[1:])} values); "
                     f"the network's input is {list(input_shape)} ({per} values)")


def _npz(path):
    try:
        with np.load(path, allow_pickle=False) as data:
            keys = {k.lower(): k for k in data.files}
            if "x" not in keys or "y" not in keys:
                raise FormatError(f"{path}: expected arrays named x and y, found {sorted(data.files)}")
            return data[keys["x"]], data[keys["y"]]
    except (OSError, ValueError) as exc:
        raise FormatError(f"{path}: not a readable .npz archive ({exc})") from None


def _csv(path, target):
    import gzip
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", newline="") as fh:
        rows = list(csv.reader(fh))
    rows = [r for r in rows if r]
    if not rows:
        raise FormatError(f"{path}: empty CSV file")
    header = None
    if not any(_numeric(cell) for cell in rows[0]):     # a header row: names only (a typo in data is not one)
        header, rows = rows[0], rows[1:]
    width = len(rows[0]) if rows else 0
    if width < 2:
        raise FormatError(f"{path}: need at least two columns (inputs and a target)")
    col = _target_column(target, header, width, path)
    values = np.empty((len(rows), width), dtype=np.float64)
    for i, row in enumerate(rows):
        line = i + 1 + (header is not None)
        if len(row) != width:
            raise FormatError(f"{path}: line {line} has {len(row)} columns, expected {width}")
        for j, cell in enumerate(row):
            try:
                values[i, j] = float(cell)
            except ValueError:
                raise FormatError(f"{path}: line {line}, column {j + 1}: {cell!r} is not a number") from None
    y = values[:, col]
    X = np.delete(values, col, axis=1)
    if np.all(y == np.round(y)):
        y = y.astype(np.int64)        # whole-number targets are class ids
    return X, y


def _numeric(cell: str) -> bool:
    try:
        float(cell)
        return True
    except ValueError:
        return False


def _target_column(target, header, width, path) -> int:
    if target == "last":
        return width - 1
    if target == "first":
        return 0
    if isinstance(target, int) or (isinstance(target, str) and target.lstrip("-").isdigit()):
        col = int(target)
        if not -width <= col < width:
            raise FormatError(f"{path}: target column {col} does not exist (the file has {width} columns)")
        return col % width
    if header is None or target not in header:
        raise FormatError(f"{path}: no column named {target!r}" + (f" (columns: {header})" if header else " (no header row)"))
    return header.index(target)

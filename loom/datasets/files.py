"""Data files for the CLI: (X, Y) for train and eval, X for run, and run's outputs.

Inputs, chosen by the file's extension:
- `.npz`: array `x` (samples first) and, for train and eval, array `y` (class ids, values, or class
  names as a string array); run reads `x` alone and ignores a `y`. Names match case-insensitively.
- `.npy`: one array of inputs (run only).
- `.csv` / `.csv.gz`: comma-separated numbers, one sample a line, UTF-8 (a byte-order mark is
  skipped), blank lines skipped. For train and eval one column is the target (`target`: a 0-based
  index, negative from the end, a header name, "first" or "last"); for run every column is an input
  unless a target column is named. The first row is a header when it has a cell that is not a number
  and names (cells that are not numbers) most of the columns that hold numbers on every line below:
  "a,b,c,d,species" over "5.1,3.5,1.4,0.2,setosa" is a header, "5.1,3.5,1.4,0.2,setosa" is data, and
  "1,2,x,4,0" over numbers is data with a bad cell.
Targets are numbers (in a CSV, whole numbers are class ids, anything else regression values) or text
labels, which are class names (spaces around them dropped): they become ids 0..K-1 in the order of
`labels` (a model's saved names) or, without those, of the sorted distinct names. `load_labeled`
returns the names.

Outputs (`save_outputs`), by the output path's extension: `.npy`; `.npz` (array `y`); `.csv`, one row
per sample with its outputs flattened, each number written so that it parses back to the same float
(float32 outputs in their shortest such form); with class names, a header row (the names, then
"label") and a last column "label" holding the name of the highest output.

Errors name the user's path: FormatError for a malformed file (for CSV the line and column, counted
from 1), ShapeError for samples that do not fit the network or a file without samples, FileError
(loom.atomic) when the file cannot be read, ConfigError for an output extension Loom cannot write.
"""
from __future__ import annotations

import csv
import gzip
import io
import math
import os
import struct
import tokenize
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..atomic import describe, write_bytes
from ..config import preview
from ..errors import ConfigError, FormatError, ShapeError

INPUT_FORMATS = (".npz", ".npy", ".csv", ".csv.gz")
OUTPUT_FORMATS = (".csv", ".npy", ".npz")
TARGET_DEFAULT = "last"     # train and eval: the CSV column that holds the target
LABEL_COLUMN = "label"      # run's CSV output: the column with the predicted class name

Target = str | int | None


# --- reading --------------------------------------------------------------------------------------

def load_xy(path: str | os.PathLike[str], input_shape: Sequence[int] | None = None,
            target: str | int = TARGET_DEFAULT) -> tuple[np.ndarray, np.ndarray]:
    """(X, Y) from an .npz or .csv file; X is reshaped to [N, *input_shape] when that is given.
    Text labels become ids in sorted order of the names; `load_labeled` also returns the names."""
    X, Y, _ = load_labeled(path, input_shape, target)
    return X, Y


def load_labeled(path: str | os.PathLike[str], input_shape: Sequence[int] | None = None,
                 target: str | int = TARGET_DEFAULT,
                 labels: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    """(X, Y, names) from an .npz (arrays x and y) or .csv (a target column) file.

    Y holds class ids (int64) or regression values (float64 from a CSV; an .npz's y as stored). With
    `labels` (a model's class names), text targets map to their index in `labels` (an unknown one is a
    FormatError naming its line) and numeric targets must be ids in [0, len(labels)); names is then
    `labels`. Without, text targets map to ids in sorted order and names lists them; numeric targets
    give names None."""
    path = _existing(path)
    known = list(labels) if labels is not None else None
    if _is_npz(path):
        X, y = _npz(path, need_y=True)
        targets = _array_targets(y, path)
    elif _is_csv(path):
        X, targets = _csv(path, TARGET_DEFAULT if target is None else target)
    elif path.lower().endswith(".npy"):
        raise FormatError(f"{path}: a .npy file holds inputs only; training and evaluation need targets too: "
                          f"an .npz with arrays x and y, or a .csv with a target column")
    else:
        raise FormatError(f"{path}: unknown data format; expected .npz (arrays x and y) or .csv / .csv.gz")
    Y, names = targets.ids(known)
    if len(X) != len(Y):
        raise FormatError(f"{path}: x has {len(X)} samples but y has {len(Y)}")
    if input_shape is not None:
        X = reshape_inputs(X, input_shape, path)
    return X, Y, names


def load_x(path: str | os.PathLike[str], input_shape: Sequence[int] | None = None,
           target: Target = None) -> np.ndarray:
    """Inputs only: a .npy array, the `x` of an .npz (a `y` there is ignored), or the columns of a
    .csv: all of them, or all but the `target` column when one is named. Reshaped to
    [N, *input_shape] when that is given."""
    path = _existing(path)
    if path.lower().endswith(".npy"):
        X = _npy(path)
    elif _is_npz(path):
        X, _ = _npz(path, need_y=False)
    elif _is_csv(path):
        X, _ = _csv(path, target)
    else:
        raise FormatError(f"{path}: unknown input format; expected one of {', '.join(INPUT_FORMATS)}")
    if input_shape is None:
        return X
    hint = ""
    if _is_csv(path) and target is None and X.ndim == 2 and X.shape[1] == math.prod(input_shape) + 1:
        hint = "; if one column is a target, name it with --target"
    return reshape_inputs(X, input_shape, path, hint)


def reshape_inputs(X: np.ndarray, input_shape: Sequence[int], path: str, hint: str = "") -> np.ndarray:
    """X as [N, *input_shape]; ShapeError naming `path` when a sample does not have that many values."""
    per = math.prod(input_shape)
    if X.ndim >= 1 and math.prod(X.shape[1:]) == per:
        return X.reshape((len(X), *input_shape))
    what = (f"{X.shape[1]} input columns" if _is_csv(path) and X.ndim == 2 else
            f"samples of shape {list(X.shape[1:])} ({math.prod(X.shape[1:])} values)")
    raise ShapeError(f"{path}: {what}; the network's input is {list(input_shape)} ({per} values){hint}")


def as_inputs(X: np.ndarray, dtype: str, path: str) -> np.ndarray:
    """X in the network's input dtype: floats converted; for integer ids (embeddings) the values must
    be whole numbers. ShapeError naming `path` otherwise."""
    if X.dtype.kind not in "biuf":
        raise ShapeError(f"{path}: inputs have dtype {X.dtype}; expected numbers")
    if dtype.startswith("float") or X.dtype.kind in "biu":
        return X.astype(dtype, copy=False)
    bad = ~np.isfinite(X) | (X != np.round(X))
    if bad.any():
        i = int(np.argmax(bad.reshape(-1)))
        raise ShapeError(f"{path}: the network takes integer ids ({dtype}), but input value "
                         f"{X.reshape(-1)[i]!r} (sample {i // max(1, X[0].size)}) is not a whole number")
    return X.astype(dtype)


# --- writing --------------------------------------------------------------------------------------

def output_format(path: str | os.PathLike[str], option: str = "--output") -> str:
    """The format `save_outputs` writes to `path` (".csv", ".npy" or ".npz", from its extension);
    ConfigError naming `option` for any other extension."""
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext not in OUTPUT_FORMATS:
        given = f"extension {ext!r}" if ext else "no extension"
        raise ConfigError(option, f"{os.fspath(path)} has {given}; outputs are written as "
                          f"{', '.join(OUTPUT_FORMATS)} (chosen by the extension)")
    return ext


def save_outputs(path: str | os.PathLike[str], Y: np.ndarray, labels: Sequence[str] | None = None) -> None:
    """Write outputs [N, ...] to `path`, atomically, in the format of its extension (output_format).
    A .csv gets one row per sample; with `labels` (one name per output) a header row and a last
    column naming the highest output."""
    path = os.fspath(path)
    ext = output_format(path)
    Y = np.asarray(Y)
    buf = io.BytesIO()
    if ext == ".npy":
        np.save(buf, Y)
    elif ext == ".npz":
        np.savez(buf, y=Y)
    else:
        buf.write(csv_text(Y, labels).encode("utf-8"))
    write_bytes(path, buf.getvalue())


def csv_text(Y: np.ndarray, labels: Sequence[str] | None = None) -> str:
    """The CSV text of outputs [N, ...]: one line per sample, its values flattened, each written so
    that it parses back to the same number; with `labels`, a header and a "label" column (argmax)."""
    Y = np.asarray(Y)
    if Y.ndim == 0:
        raise ShapeError(f"outputs: expected an array with a sample axis, got a scalar {Y.item()!r}")
    rows = Y.reshape(len(Y), -1)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if labels is not None:
        labels = list(labels)
        if rows.shape[1] != len(labels):
            raise ShapeError(f"outputs: {rows.shape[1]} values per sample but {len(labels)} class names")
        writer.writerow([*labels, LABEL_COLUMN])
    cells = _number_cells(rows)
    if labels is not None:
        best = np.argmax(np.where(np.isnan(rows), -np.inf, rows), axis=1) if rows.dtype.kind == "f" else \
            np.argmax(rows, axis=1)
        for row, k in zip(cells, best):
            writer.writerow([*row, labels[int(k)]])
    else:
        writer.writerows(cells)
    return out.getvalue()


def _number_cells(rows: np.ndarray) -> list[list[str]]:
    if rows.dtype.kind in "biu":
        return [[str(int(v)) for v in row] for row in rows.tolist()]
    if rows.dtype.kind != "f":
        raise ShapeError(f"outputs: expected numbers, got dtype {rows.dtype}")
    if rows.dtype == np.float64:
        return [[repr(v) for v in row] for row in rows.tolist()]     # Python's repr: the shortest exact form
    return [[_short(v) for v in row] for row in rows]


def _short(v: np.floating) -> str:
    """The shortest text of a float32 (or float16) that gives it back through float(), else the exact
    float64 repr (parsing to float64 then rounding to float32 can, rarely, round twice)."""
    text = str(v)
    if np.isnan(v) or type(v)(float(text)) == v:
        return text
    return repr(float(v))


# --- .npy and .npz --------------------------------------------------------------------------------

# What a damaged file raises from np.load or while an archive's array is read: zlib.error for a cut
# deflate stream, SyntaxError and TokenError for a garbled .npy header (NumPy parses it as a Python
# literal), RuntimeError for a member whose flags say it is encrypted, NotImplementedError (zipfile's)
# for a compression method it does not support.
_DAMAGED = (ValueError, EOFError, zipfile.BadZipFile, KeyError, OSError, NotImplementedError, struct.error,
            zlib.error, SyntaxError, tokenize.TokenError, TypeError, OverflowError, MemoryError, RuntimeError)


def _check_magic(path: str, what: str) -> None:
    """FormatError when the file starts as neither a .npy array nor a zip archive (.npz): np.load with
    allow_pickle=False would call it pickled data, whatever it holds."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(6)
    except OSError as exc:
        raise describe(exc, path) from None
    if not head.startswith((b"\x93NUMPY", b"PK")):
        reason = f"it starts with {head!r}, not the .npy or zip signature" if head else "an empty file"
        raise FormatError(f"{path}: not a readable {what} ({reason})")


def _load(path: str, what: str):
    """np.load(path) without pickles: an array or an NpzFile, else FileError / FormatError naming path."""
    _check_magic(path, what)
    try:
        return np.load(path, allow_pickle=False)
    except PermissionError as exc:
        raise describe(exc, path) from None
    except _DAMAGED as exc:
        raise FormatError(f"{path}: not a readable {what} ({_reason(exc)})") from None


def _npy(path: str) -> np.ndarray:
    X = _load(path, ".npy array")
    if not isinstance(X, np.ndarray):
        X.close()
        raise FormatError(f"{path}: an .npz archive, not a .npy array; name it .npz (array x)")
    return _samples(X, path, "the array")


def _npz(path: str, need_y: bool) -> tuple[np.ndarray, np.ndarray | None]:
    data = _load(path, ".npz archive")
    if isinstance(data, np.ndarray):
        raise FormatError(f"{path}: a .npy array, not an .npz archive; name it .npy, or save x (and y) with np.savez")
    with data:
        found = sorted(data.files)
        names = {"x": _array_name(found, "x"), "y": _array_name(found, "y")}
        if names["x"] is None or (need_y and names["y"] is None):
            wanted = "arrays named x and y" if need_y else "an array named x"
            raise FormatError(f"{path}: expected {wanted}, found {_listing(found)}")
        try:
            X = data[names["x"]]
            y = data[names["y"]] if need_y else None
        except _DAMAGED as exc:
            raise FormatError(f"{path}: not a readable .npz archive ({_reason(exc)})") from None
    X = _samples(X, path, "x")
    if y is not None and y.ndim == 0:
        raise FormatError(f"{path}: y is a single value, not one target per sample")
    if y is not None and len(y) != len(X):
        raise FormatError(f"{path}: x has {len(X)} samples but y has {len(y)}")
    return X, y


def _array_name(found: list[str], name: str) -> str | None:
    if name in found:
        return name
    matches = [f for f in found if f.lower() == name]
    return matches[0] if len(matches) == 1 else None


def _listing(found: list[str]) -> str:
    return ("arrays " + ", ".join(found)) if found else "no arrays"


def _reason(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _samples(X: np.ndarray, path: str, what: str) -> np.ndarray:
    if X.ndim == 0:
        raise ShapeError(f"{path}: {what} is a single value, not samples [N, ...]")
    if len(X) == 0:
        raise ShapeError(f"{path}: {what} has no samples (shape {list(X.shape)})")
    if X.dtype.kind not in "biuf":
        raise FormatError(f"{path}: {what} has dtype {X.dtype}; expected numbers")
    return X


# --- targets --------------------------------------------------------------------------------------

@dataclass
class _Targets:
    """A file's targets: numbers, or class names as text. `where(i)` says where target i is."""
    path: str
    numbers: np.ndarray | None = None
    names: list[str] | None = None
    lines: list[int] | None = None      # CSV: the line of each target
    column: int = 0                     # CSV: the target column (counted from 1)

    def where(self, i: int) -> str:
        if self.lines is None:
            return f"{self.path}: y[{i}]"
        return f"{self.path}: line {self.lines[i]}, column {self.column}"

    def ids(self, labels: list[str] | None) -> tuple[np.ndarray, list[str] | None]:
        """(Y, names): class names mapped to ids; numbers kept, or checked as ids of `labels`."""
        if self.names is not None:
            return self._name_ids(labels)
        y = self.numbers
        if labels is None:
            return y, None
        if y.ndim != 1:
            raise FormatError(f"{self.path}: targets of shape {list(y.shape[1:])} per sample; the model's class "
                              f"names ({preview(labels)}) need one class per sample")
        v = y.astype(np.float64)
        bad = ~np.isfinite(v) | (v != np.round(v)) | (v < 0) | (v >= len(labels))
        if bad.any():
            i = int(np.argmax(bad))
            raise FormatError(f"{self.where(i)}: target {y[i].item()!r} is not a class id: the model names "
                              f"{len(labels)} classes ({preview(labels)}); give a name or an id 0..{len(labels) - 1}")
        return v.astype(np.int64), labels

    def _name_ids(self, labels: list[str] | None) -> tuple[np.ndarray, list[str]]:
        names = self.names
        for i, name in enumerate(names):
            if not name:
                raise FormatError(f"{self.where(i)}: empty target (a class name or number is needed)")
        if labels is None:
            labels = sorted(set(names))
        index = {name: k for k, name in enumerate(labels)}
        ids = np.empty(len(names), dtype=np.int64)
        for i, name in enumerate(names):
            k = index.get(name)
            if k is None:
                raise FormatError(f"{self.where(i)}: label {name!r} is not one of the model's "
                                  f"{len(labels)} classes ({preview(labels)})")
            ids[i] = k
        return ids, labels


def _array_targets(y: np.ndarray, path: str) -> _Targets:
    if y.dtype.kind == "U":
        return _Targets(path, names=[str(v).strip() for v in y.reshape(-1)]) if y.ndim == 1 else \
            _bad_y(y, path)
    if y.dtype.kind == "S":
        try:
            return _Targets(path, names=[v.decode("utf-8").strip() for v in y.reshape(-1)]) if y.ndim == 1 else \
                _bad_y(y, path)
        except UnicodeDecodeError as exc:
            raise FormatError(f"{path}: y holds bytes that are not UTF-8 text ({exc.reason})") from None
    if y.dtype.kind not in "biuf":
        raise FormatError(f"{path}: y has dtype {y.dtype}; expected numbers or class names (strings)")
    return _Targets(path, numbers=y)


def _bad_y(y: np.ndarray, path: str) -> _Targets:
    raise FormatError(f"{path}: y holds class names in shape {list(y.shape)}; expected one name per sample [N]")


# --- CSV ------------------------------------------------------------------------------------------

def _csv(path: str, target: Target) -> tuple[np.ndarray, _Targets | None]:
    records = _csv_records(path)
    if not records:
        raise FormatError(f"{path}: empty CSV file (no rows)")
    header = None
    if _is_header(records[0][1], records[1:]):
        header, records = records[0][1], records[1:]
        if not records:
            raise FormatError(f"{path}: no data rows, only a header (line 1)")
    width = len(header) if header is not None else len(records[0][1])
    shape_from = "the header" if header is not None else f"line {records[0][0]}"
    for line, row in records:
        if len(row) != width:
            raise FormatError(f"{path}: line {line} has {len(row)} columns, expected {width} (as {shape_from})")
    col = None if target is None else _target_column(target, header, width, path)
    if col is not None and width < 2:
        raise FormatError(f"{path}: one column only, but a target column and at least one input column are needed "
                          f"(Loom reads comma-separated values)")
    inputs = [j for j in range(width) if j != col]
    X = _numbers(path, records, inputs, "" if target is not None else
                 "; if that column is the target, drop it with --target (its 0-based index or header name)")
    if col is None:
        return X, None
    cells = [row[col] for _, row in records]
    lines = [line for line, _ in records]
    if all(_numeric(c) for c in cells):
        y = np.array([float(c) for c in cells])
        if np.all(np.isfinite(y) & (y == np.round(y))):
            y = y.astype(np.int64)          # whole numbers are class ids
        return X, _Targets(path, numbers=y, lines=lines, column=col + 1)
    names = [c.strip() for c in cells]
    numeric = [i for i, c in enumerate(cells) if _numeric(c)]
    if numeric:
        text = next(i for i, c in enumerate(cells) if not _numeric(c))
        raise FormatError(f"{path}: column {col + 1} holds both numbers (line {lines[numeric[0]]}: "
                          f"{cells[numeric[0]]!r}) and text (line {lines[text]}: {cells[text]!r}); a target "
                          f"column holds either numbers or class names")
    return X, _Targets(path, names=names, lines=lines, column=col + 1)


def _csv_records(path: str) -> list[tuple[int, list[str]]]:
    """(line number, cells) of every non-blank row."""
    opener = gzip.open if path.lower().endswith(".gz") else open
    records = []
    try:
        with opener(path, "rt", newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            start = 1
            for row in reader:
                if row and any(cell.strip() for cell in row):
                    records.append((start, row))
                start = reader.line_num + 1
    except csv.Error as exc:
        raise FormatError(f"{path}: line {reader.line_num}: not valid CSV ({exc})") from None
    except UnicodeDecodeError as exc:
        raise FormatError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except (EOFError, gzip.BadGzipFile, zipfile.BadZipFile) as exc:
        raise FormatError(f"{path}: not a readable gzip file ({_reason(exc)})") from None
    except OSError as exc:
        if path.lower().endswith(".gz") and os.path.isfile(path) and not isinstance(exc, PermissionError):
            raise FormatError(f"{path}: not a readable gzip file ({_reason(exc)})") from None
        raise describe(exc, path) from None
    return records


def _is_header(first: list[str], below: list[tuple[int, list[str]]]) -> bool:
    """Whether the first row names the columns: it has a cell that is not a number, and it names
    most of the columns that hold numbers on every row below (all of its cells, when none do)."""
    text = [not _numeric(cell) for cell in first]
    if not any(text):
        return False
    if all(text) or not below:
        return all(text)
    numeric_cols = [j for j in range(len(first)) if all(j < len(row) and _numeric(row[j]) for _, row in below)]
    if not numeric_cols:
        return False
    return 2 * sum(text[j] for j in numeric_cols) > len(numeric_cols)


def _numbers(path: str, records: list[tuple[int, list[str]]], columns: list[int], hint: str = "") -> np.ndarray:
    """The given columns of every record as float64; FormatError naming the first cell that is not a number."""
    try:
        return np.array([[row[j] for j in columns] for _, row in records], dtype=np.float64).reshape(
            len(records), len(columns))
    except ValueError:
        pass
    for line, row in records:
        for j in columns:
            if not _numeric(row[j]):
                cell = row[j]
                what = "an empty cell" if not cell.strip() else f"{cell!r} is not a number"
                raise FormatError(f"{path}: line {line}, column {j + 1}: {what}{hint}")
    raise FormatError(f"{path}: the input columns could not be read as numbers")   # not reached: float() agrees


def _numeric(cell: str) -> bool:
    try:
        float(cell)
        return True
    except ValueError:
        return False


def _target_column(target: str | int, header: list[str] | None, width: int, path: str) -> int:
    if target == "last":
        return width - 1
    if target == "first":
        return 0
    if isinstance(target, int) or (isinstance(target, str) and target.lstrip("-").isdigit()):
        col = int(target)
        if not -width <= col < width:
            raise FormatError(f"{path}: target column {col} does not exist (the file has {width} columns, "
                              f"indexed 0..{width - 1})")
        return col % width
    if header is None:
        raise FormatError(f"{path}: no column named {target!r} (the file has no header row)")
    names = [h.strip() for h in header]
    if names.count(target.strip()) > 1:
        raise FormatError(f"{path}: {names.count(target.strip())} columns are named {target!r}; give the index")
    if target.strip() not in names:
        raise FormatError(f"{path}: no column named {target!r} (columns: {', '.join(names)})")
    return names.index(target.strip())


# --- paths ----------------------------------------------------------------------------------------

def _existing(path: str | os.PathLike[str]) -> str:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FormatError(f"{path}: no such file")
    if os.path.isdir(path):
        raise FormatError(f"{path}: is a directory, not a data file")
    return path


def _is_npz(path: str) -> bool:
    return path.lower().endswith(".npz")


def _is_csv(path: str) -> bool:
    return path.lower().endswith((".csv", ".csv.gz"))

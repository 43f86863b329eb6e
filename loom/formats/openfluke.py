"""Read openfluke welvet models (PyPI `welvet` 0.80, its "poly" engine) and convert them to Loom.

Two files hold the same network:
  JSON wire   {"id", "depth", "rows", "cols", "layers_per_cell", "layers": [...]}: every layer names
              its grid cell (z, y, x, l) and carries its weights as base64 of native-packed
              little-endian bytes ("weights", with "native" and "scale").
  .entity     b"ENTITY\\0\\0", u16 version (1), u16 flags, u64 header length, a JSON header
              {"format_version", "network": <wire without weights>, "blobs": [{path, offset, length,
              dtype, scale, native}]}, then the blobs; blob paths are "layers.<grid index>" with
              ".parallel_branches.<i>" / ".sequential_layers.<i>" for nested layers.

`read(source)` parses either into a `Model` (a checked layer tree with decoded float weights);
`convert(source)` maps it to a Loom config and state dict (loom/formats/openfluke_layers.py, which emits
the openfluke compatibility layer types where welvet's arithmetic differs from a core layer's);
`load(source)` builds the Network. Every problem is a FormatError naming the JSON path, the layer's
grid cell or the byte offset. What each welvet layer computes and how Loom reproduces it:
docs/interop.md.
"""
from __future__ import annotations

import base64
import binascii
import json
import math
import os
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from .. import dtypes
from ..errors import FormatError
from . import openfluke_layers
from .openfluke_tree import BITS, Layer, Model

if TYPE_CHECKING:
    from ..nn.network import Network

MAGIC = b"ENTITY\x00\x00"
ENTITY_VERSION = 1
_FIXED = 20                       # magic, version, flags, header length
_MAX_HEADER = 256 << 20           # welvet's own limit

UNSCALED = ("float64", "float32", "float16", "bfloat16")
_ALIASES = {"fp8_e4m3": "fp8e4m3", "fp8_e5m2": "fp8e5m2", "f32": "float32", "f64": "float64",
            "f16": "float16", "fp16": "float16", "bf16": "bfloat16", "double": "float64", "": "float32"}
_FP4 = np.array([0.0, 0.75, 1.0, 1.5, 2.0, 3.0, np.inf, np.nan,
                 -0.0, -0.75, -1.0, -1.5, -2.0, -3.0, -np.inf, np.nan], dtype=np.float32)


# --- public API -------------------------------------------------------------------------------------

def read(source: str | os.PathLike[str] | bytes | bytearray | memoryview, name: str | None = None) -> Model:
    """A Model from a path, bytes (.entity or JSON text) or a JSON string."""
    data, where = _bytes_of(source, name)
    try:
        if data[:6] == MAGIC[:6]:
            return _read_entity(data, where)
        return _read_wire(data, where)
    except RecursionError:
        raise FormatError(f"{where}: layers are nested too deeply to read") from None


def convert(source: str | os.PathLike[str] | bytes | bytearray | memoryview, input_shape: Sequence[int] | None = None,
            name: str | None = None) -> tuple[dict, dict]:
    """(Loom config, state dict) for a welvet model; input_shape (batch excluded) overrides the
    shape inferred from the first layer."""
    model = read(source, name)
    try:
        return openfluke_layers.to_loom(model, input_shape)
    except RecursionError:
        raise FormatError(f"{model.source}: layers are nested too deeply to convert") from None


def load(source: str | os.PathLike[str] | bytes | bytearray | memoryview, input_shape: Sequence[int] | None = None,
         name: str | None = None) -> Network:
    """A Loom Network computing what welvet computes for this model (see docs/interop.md)."""
    from .. import config as configs
    from ..errors import ConfigError, ShapeError
    from ..nn.network import Network
    cfg, state = convert(source, input_shape, name)
    try:
        net = Network(configs.validate(cfg))
        net.load_state_dict(state, strict=True)
    except (ConfigError, ShapeError) as exc:   # a converter bug or an input shape that cannot work
        raise FormatError(f"{cfg['name']}: the converted network does not build: {exc}") from None
    return net


# --- sources ----------------------------------------------------------------------------------------

def _bytes_of(source, name):
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), name or "<bytes>"
    if isinstance(source, str) and source.lstrip().startswith("{"):
        return source.encode("utf-8"), name or "<json>"
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        try:
            with open(path, "rb") as fh:
                return fh.read(), name or path
        except OSError as exc:
            raise FormatError(f"{path}: cannot read: {exc.strerror}") from None
    raise FormatError(f"expected a path, bytes or JSON text for a welvet model, got {type(source).__name__}")


def _read_wire(data: bytes, where: str) -> Model:
    spec = _parse_json(data, where, 0)
    return _build(spec, where, blobs=None)


def _parse_json(data: bytes, where: str, base: int):
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FormatError(f"{where}: byte offset {base + exc.start}: not UTF-8 text") from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        offset = base + len(text[:exc.pos].encode("utf-8"))
        raise FormatError(f"{where}: invalid JSON at line {exc.lineno} column {exc.colno} "
                          f"(byte offset {offset}): {exc.msg}") from None
    except ValueError as exc:
        raise FormatError(f"{where}: {exc}") from None


def _reject_constant(token):
    raise ValueError(f"JSON holds {token}, which welvet never writes")


def _read_entity(data: bytes, where: str) -> Model:
    if len(data) < _FIXED:
        raise FormatError(f"{where}: .entity file is {len(data)} bytes, shorter than its {_FIXED}-byte fixed header")
    if data[:len(MAGIC)] != MAGIC:
        raise FormatError(f"{where}: bytes 0..8 are {data[:8]!r}, not the .entity magic {MAGIC!r}")
    version, flags, hlen = struct.unpack_from("<HHQ", data, 8)
    if version != ENTITY_VERSION:
        raise FormatError(f"{where}: byte offset 8: unsupported .entity version {version}; this reader knows version 1")
    if flags:
        raise FormatError(f"{where}: byte offset 10: unknown .entity flags 0x{flags:04x} (welvet writes 0)")
    if hlen > _MAX_HEADER or _FIXED + hlen > len(data):
        raise FormatError(f"{where}: byte offset 12: header length {hlen} runs past the end of the "
                          f"{len(data)}-byte file (truncated?)")
    header = _parse_json(data[_FIXED:_FIXED + hlen], where + " header", _FIXED)
    if not isinstance(header, dict):
        raise FormatError(f"{where}: header: expected a JSON object, got {type(header).__name__}")
    for key in header:
        if key not in ("format_version", "network", "blobs"):
            raise FormatError(f"{where}: header.{key}: unknown key; expected format_version, network, blobs")
    if header.get("format_version") != ENTITY_VERSION:
        raise FormatError(f"{where}: header.format_version: expected 1, got {_show(header.get('format_version'))}")
    payload_at = _FIXED + hlen
    blobs = _blob_index(header.get("blobs"), len(data) - payload_at, payload_at, where)
    spec = header.get("network")
    if not isinstance(spec, dict):
        raise FormatError(f"{where}: header.network: expected an object, got {_show(spec)}")
    payload = {path: (data[payload_at + b["offset"]:payload_at + b["offset"] + b["length"]], b)
               for path, b in blobs.items()}
    return _build(spec, where, blobs=payload)


def _blob_index(blobs, size, payload_at, where) -> dict:
    if not isinstance(blobs, list):
        raise FormatError(f"{where}: header.blobs: expected a list, got {_show(blobs)}")
    out = {}
    for i, b in enumerate(blobs):
        p = f"{where}: header.blobs[{i}]"
        if not isinstance(b, dict):
            raise FormatError(f"{p}: expected an object, got {_show(b)}")
        for key in b:
            if key not in ("path", "offset", "length", "dtype", "scale", "native"):
                raise FormatError(f"{p}.{key}: unknown key; expected path, offset, length, dtype, scale, native")
        path = b.get("path")
        if not isinstance(path, str) or not path.startswith("layers."):
            raise FormatError(f"{p}.path: expected \"layers.<index>...\", got {_show(path)}")
        if path in out:
            raise FormatError(f"{p}.path: blob {path!r} appears twice")
        for key in ("offset", "length"):
            if not _is_int(b.get(key)) or b[key] < 0:
                raise FormatError(f"{p}.{key}: expected a non-negative integer, got {_show(b.get(key))}")
        if b["offset"] + b["length"] > size:
            raise FormatError(f"{p}: bytes {payload_at + b['offset']}..{payload_at + b['offset'] + b['length']} "
                              f"run past the end of the file ({payload_at + size} bytes; truncated?)")
        out[path] = {"offset": b["offset"], "length": b["length"], "dtype": b.get("dtype", "float32"),
                     "scale": b.get("scale", 0), "native": b.get("native", False), "where": p}
    return out


# --- the layer tree ---------------------------------------------------------------------------------

_GRID = ("depth", "rows", "cols", "layers_per_cell")
_NETWORK_KEYS = ("id",) + _GRID + ("layers",)
_INT_KEYS = ("z", "y", "x", "l", "input_height", "input_width", "input_depth", "output_height",
             "output_width", "output_depth", "input_channels", "filters", "kernel_size", "stride",
             "padding", "output_padding", "num_heads", "num_kv_heads", "head_dim", "query_dim",
             "d_model", "seq_length", "vocab_size", "embedding_dim", "num_clusters", "softmax_rows",
             "softmax_cols", "tile_size")
_NUM_KEYS = ("rope_freq_base", "kmeans_temperature", "temperature", "entmax_alpha", "scale")
_STR_KEYS = ("type", "activation", "dtype", "output_mode", "softmax_type", "combine_mode", "weights")
_BOOL_KEYS = ("native", "gumbel_noise", "use_tiling", "is_disabled")
_LIST_KEYS = ("parallel_branches", "sequential_layers")
_IGNORED = ("meta_rules",)     # metacognition rules: welvet-side training hooks, not computation


def _build(spec, where, blobs) -> Model:
    if not isinstance(spec, dict):
        raise FormatError(f"{where}: expected a JSON object for the network, got {_show(spec)}")
    for key in spec:
        if key not in _NETWORK_KEYS:
            raise FormatError(f"{where}: {key}: unknown key for a welvet network; "
                              f"expected one of {', '.join(_NETWORK_KEYS)}")
    grid = []
    for key in _GRID:
        v = spec.get(key)
        if not _is_int(v) or v < 1:
            raise FormatError(f"{where}: {key}: expected a positive integer, got {_show(v)}")
        grid.append(v)
    depth, rows, cols, lpc = grid
    items = spec.get("layers")
    if not isinstance(items, list) or not items:
        raise FormatError(f"{where}: layers: expected a non-empty list, got {_show(items)}")
    cells = {}
    for i, item in enumerate(items):
        path = f"layers[{i}]"
        ls = _check_layer(item, where, path)
        z, y, x, l = (ls.get(k, 0) for k in ("z", "y", "x", "l"))
        if not (z < depth and y < rows and x < cols and l < lpc):
            raise FormatError(f"{where}: {path}: cell (z={z}, y={y}, x={x}, l={l}) lies outside the "
                              f"{depth}x{rows}x{cols}x{lpc} grid")
        index = ((z * rows + y) * cols + x) * lpc + l
        if index in cells:
            raise FormatError(f"{where}: {path}: cell (z={z}, y={y}, x={x}, l={l}) is already taken by "
                              f"{cells[index].where.split(' ')[0]}")
        cells[index] = _layer(ls, where, path, f"layers.{index}", blobs, (z, y, x, l))
    missing = [i for i in range(depth * rows * cols * lpc) if i not in cells]
    if missing:
        z, rest = divmod(missing[0], rows * cols * lpc)
        y, rest = divmod(rest, cols * lpc)
        x, l = divmod(rest, lpc)
        raise FormatError(f"{where}: grid cell (z={z}, y={y}, x={x}, l={l}) has no layer; welvet would run an "
                          f"uninitialized dense layer there (the file lists {len(cells)} of "
                          f"{depth * rows * cols * lpc} cells)")
    if blobs:
        used = set()
        for layer in cells.values():
            _collect_paths(layer, used)
        extra = sorted(set(blobs) - used)
        if extra:
            raise FormatError(f"{blobs[extra[0]][1]['where']}: blob {extra[0]!r} belongs to no weighted layer")
    order = [cells[i] for i in sorted(cells)]
    return Model(tuple(grid), order, where)


def _collect_paths(layer, used):
    if layer.weights is not None:
        used.add(layer.spec["_path"])
    for child in layer.branches + layer.children:
        _collect_paths(child, used)


def _check_layer(item, where, path) -> dict:
    if not isinstance(item, dict):
        raise FormatError(f"{where}: {path}: expected a layer object, got {_show(item)}")
    out = {}
    for key, v in item.items():
        p = f"{where}: {path}.{key}"
        if key in _INT_KEYS:
            if not _is_int(v) or v < 0:
                raise FormatError(f"{p}: expected a non-negative integer, got {_show(v)}")
        elif key in _NUM_KEYS:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise FormatError(f"{p}: expected a finite number, got {_show(v)}")
        elif key in _STR_KEYS:
            if not isinstance(v, str):
                raise FormatError(f"{p}: expected a string, got {_show(v)}")
        elif key in _BOOL_KEYS:
            if not isinstance(v, bool):
                raise FormatError(f"{p}: expected true or false, got {_show(v)}")
        elif key in _LIST_KEYS:
            if not isinstance(v, list):
                raise FormatError(f"{p}: expected a list of layers, got {_show(v)}")
        elif key == "meta_observed_layer":
            raise FormatError(f"{p}: metacognition layers are not supported by the Loom importer")
        elif key not in _IGNORED:
            raise FormatError(f"{p}: unknown key for a welvet layer")
        out[key] = v
    if "type" not in out:
        raise FormatError(f"{where}: {path}.type: missing required key")
    return out


def _layer(ls, where, path, wpath, blobs, cell) -> Layer:
    z, y, x, l = cell
    layer = Layer(ls, f"{path} (z={z}, y={y}, x={x}, l={l})")
    ls["_path"] = wpath
    ls["dtype"] = _dtype(ls.get("dtype", "float32"), f"{where}: {path}.dtype")
    if blobs is None:
        if "weights" in ls:
            layer.weights, layer.scale = _wire_weights(ls, f"{where}: {path}")
            layer.wdtype = ls["dtype"] if ls.get("native", False) else "float32"
    else:
        if "weights" in ls:
            raise FormatError(f"{where}: {path}.weights: an .entity header carries no inline weights")
        if wpath in blobs:
            raw, b = blobs[wpath]
            blob = dict(ls, dtype=_dtype(b["dtype"], f"{b['where']}.dtype"), native=b["native"], scale=b["scale"])
            if isinstance(b["scale"], bool) or not isinstance(b["scale"], (int, float)) \
                    or not math.isfinite(b["scale"]):
                raise FormatError(f"{b['where']}.scale: expected a finite number, got {_show(b['scale'])}")
            if not isinstance(b["native"], bool):
                raise FormatError(f"{b['where']}.native: expected true or false, got {_show(b['native'])}")
            if blob["dtype"] == ls["dtype"] or (blob["dtype"] == "float32" and b["native"]):
                # welvet writes rmsnorm weights as a float32 blob whatever the layer's dtype, and
                # runs them as float32 after loading (checked against welvet 0.80)
                layer.weights, layer.scale = decode(raw, blob, b["where"])
                layer.wdtype = blob["dtype"] if b["native"] else "float32"
            else:
                raise FormatError(f"{b['where']}.dtype: blob is {blob['dtype']} but layer {path} is {ls['dtype']}")
            ls["scale"] = b["scale"]
    for key, attr in (("parallel_branches", "branches"), ("sequential_layers", "children")):
        for i, child in enumerate(ls.get(key) or []):
            cp = f"{path}.{key}[{i}]"
            cs = _check_layer(child, where, cp)
            getattr(layer, attr).append(_layer(cs, where, cp, f"{wpath}.{key}.{i}", blobs, cell))
    return layer


def _dtype(name, where) -> str:
    if not isinstance(name, str):
        raise FormatError(f"{where}: expected a dtype name, got {_show(name)}")
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in BITS:
        raise FormatError(f"{where}: unknown welvet dtype {name!r}; expected one of {', '.join(BITS)}")
    return key


# --- weights ----------------------------------------------------------------------------------------

def _wire_weights(ls, where):
    try:
        raw = base64.b64decode(ls["weights"], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise FormatError(f"{where}.weights: invalid base64 ({exc})") from None
    return decode(raw, ls, where + ".weights")


def decode(raw: bytes, ls: dict, where: str) -> tuple[np.ndarray, float]:
    """Native-packed little-endian bytes of dtype ls["dtype"] -> (stored values as float32, scale):
    welvet uses float types as stored (scale 1) and every other type as value * scale. Returns all
    packed values (sub-byte types may carry padding at the end; the caller checks the count)."""
    dt = ls["dtype"]
    native = ls.get("native", False)
    if not native:
        if dt != "float32":
            raise FormatError(f"{where}: a float32 master blob (native false) for a {dt} layer: welvet "
                              "re-quantizes it on load with a scale it does not store; save it natively")
        dt = "float32"
    bits = BITS[dt]
    if bits >= 8 and len(raw) % (bits // 8):
        raise FormatError(f"{where}: {len(raw)} bytes is not a whole number of {dt} values")
    b = np.frombuffer(raw, dtype=np.uint8)
    if dt == "float64":
        return np.frombuffer(raw, "<f8").astype(np.float32), 1.0
    if dt == "float32":
        return np.frombuffer(raw, "<f4").astype(np.float32), 1.0
    if dt == "float16":
        return np.frombuffer(raw, "<f2").astype(np.float32), 1.0
    if dt == "bfloat16":
        bf16 = dtypes.require("bfloat16", "openfluke weights").numpy
        return np.frombuffer(raw, "<u2").view(bf16).astype(np.float32), 1.0
    if dt in ("fp8e4m3", "fp8e5m2"):
        q = _fp8(b, dt)
    elif bits >= 8:
        kind = "u" if dt.startswith("uint") else "i"
        q = np.frombuffer(raw, f"<{kind}{bits // 8}").astype(np.float32)
    elif dt in ("int4", "uint4", "fp4"):
        n = np.stack([b >> 4, b & 15], axis=1).reshape(-1)
        signed = np.where((n > 7) & (dt == "int4"), n.astype(np.int16) - 16, n)
        q = _FP4[n] if dt == "fp4" else signed.astype(np.float32)
    elif dt in ("int2", "uint2", "ternary"):
        n = np.stack([(b >> 6) & 3, (b >> 4) & 3, (b >> 2) & 3, b & 3], axis=1).reshape(-1)
        q = np.where((n > 1) & (dt != "uint2"), n.astype(np.int16) - 4, n).astype(np.float32)
    else:  # binary: bit set -> +1, clear -> -1, most significant bit first
        n = np.stack([(b >> (7 - j)) & 1 for j in range(8)], axis=1).reshape(-1)
        q = np.where(n == 1, 1.0, -1.0).astype(np.float32)
    scale = ls.get("scale", 0)
    if scale <= 0:
        raise FormatError(f"{where}: {dt} weights need a positive scale, got {_show(scale)}")
    return q.astype(np.float32), float(np.float32(scale))


def _fp8(b, dt) -> np.ndarray:
    """welvet's FP8 decoding (no NaN in e4m3, subnormals approximated as welvet does)."""
    u = b.astype(np.uint32)
    sign = (u >> 7) << 31
    if dt == "fp8e4m3":
        e, m = (u >> 3) & 15, u & 7
        normal = (sign | ((e + 120) << 23) | (m << 20)).view(np.float32)
        sub = (sign | (120 << 23) | (m << 20)).view(np.float32) * np.float32(0.125)
        out = np.where(e == 0, sub, normal)
        return np.where((e == 0) & (m == 0), sign.view(np.float32), out).astype(np.float32)
    e, m = (u >> 2) & 31, u & 3
    out = (sign | ((e + 112) << 23) | (m << 21)).view(np.float32)
    out = np.where((e == 0) & (m == 0), sign.view(np.float32), out)
    special = np.where(m == 0, np.where(sign != 0, -np.inf, np.inf), np.nan).astype(np.float32)
    return np.where(e == 31, special, out).astype(np.float32)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _show(v) -> str:
    try:
        text = json.dumps(v)
    except (TypeError, ValueError):
        text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."

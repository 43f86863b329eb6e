"""The JSON Schema of network config format v1, generated from the key tables of loom/config.py and
loom/config_layers.py.

Every checker in those tables carries the schema of what it accepts (see "the JSON Schema of each
checker" in loom/config_checks.py); this module assembles them into docs/loom-config.schema.json:

    python -m loom.config_schema > docs/loom-config.schema.json

tests/test_schema.py fails while the file and `render()` differ, so a change to a table, a checker or
a note below must be followed by that command. The only hand-written text here is prose (descriptions).
"""
from __future__ import annotations

import copy
import json
import sys
from collections.abc import Callable, Iterator
from typing import Any

from . import config as C
from .errors import LoomError

SCHEMA_URI = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_ID = f"urn:loom:network-config:v{C.VERSION}"
TITLE = f"Loom network config, format v{C.VERSION}"
REGENERATE = "python -m loom.config_schema > docs/loom-config.schema.json"

DESCRIPTION = (
    "Generated from the key tables of loom/config.py and loom/config_layers.py by `" + REGENERATE + "` (do not edit by hand; "
    "see docs/format.md). Defaults are given as \"default\" and are filled in by loom.config.validate. "
    "Not expressed in this schema, and checked only by loom.config: integers written with a fraction part "
    "(4.0 is an integer to JSON Schema but rejected by loom); multi_head_attention (and openfluke_attention) "
    "heads % kv_heads == 0; softmax adaptive cutoffs strictly increasing and below classes; openfluke_softmax "
    "entmax form blend needs alpha below 2; parallel (and stitch) top_k <= len(branches), one grid position "
    "per branch and every position inside the grid. Checked only when a Network is built (shape inference): "
    "whether each layer fits its input shape (e.g. conv rank, groups dividing channels, list lengths per spatial "
    "dimension, reshape sizes, mask length, grid/hierarchical sizes, matching parallel branch shapes). "
    "Only the current spelling is described: loom.config also reads a core layer carrying an openfluke "
    "switch (dense accumulate_block, layer_norm or rms_norm compute_dtype, multi_head_attention span, "
    "softmax normalize or form), as configs were written before the openfluke types, and rewrites it to "
    "the openfluke type.")

_INPUT_SHAPES = {1: "[C, L]", 2: "[C, H, W]", 3: "[C, D, H, W]"}  # by number of spatial dimensions
_CONVS = [f"conv{n}d" for n in _INPUT_SHAPES]
_CONV_TRANSPOSES = [f"conv_transpose{n}d" for n in _INPUT_SHAPES]
_POOLS = [f"{kind}_pool{n}d" for kind in ("max", "avg") for n in _INPUT_SHAPES]
_WELVET = "openfluke welvet"

# Prose for readers of the schema: the description of a whole definition, by owner. An owner is
# "network" (the top level), the $defs name of a named checker, or a layer type. A note whose owner
# or key is not in the tables fails the generation, so notes cannot outlive what they describe.
DEF_NOTES: dict[str, str] = {
    "layer": "One layer: \"type\" picks the per-type definition below, which lists every allowed key "
             "(additionalProperties false there).",
    "training": "defaults for loom.train; loss/optimizer/schedule keys are checked by their builders when "
                "training starts",
    **{f"{conv}{n}d": f"Input {shape}. A list value needs one entry per spatial dimension ({n}); that length "
                      "is checked when the Network is built."
       for conv in ("conv", "conv_transpose") for n, shape in _INPUT_SHAPES.items()},
    **{f"{pool}{n}d": f"Input {shape}." for pool in ("max_pool", "avg_pool") for n, shape in _INPUT_SHAPES.items()},
    "embedding": "Input: integer ids (input.dtype int64 or int32).",
    **{kind: "Input [T, F]; output [T, hidden] with return_sequences, else [hidden]." for kind in ("rnn", "lstm", "gru")},
    "multi_head_attention": "Input [T, E]; output [T, E].",
    "softmax": "Keys depend on variant (absent means standard): each variant accepts exactly type, variant, "
               "temperature and its own keys.",
    "openfluke_dense": f"dense as {_WELVET} computes it: float64 sums over blocks of inputs.",
    "openfluke_layer_norm": f"layer_norm as {_WELVET} computes it: in float64.",
    "openfluke_rms_norm": f"rms_norm as {_WELVET} computes it: in float64.",
    "openfluke_attention": f"multi_head_attention as {_WELVET} computes it: the whole batch is one sequence, "
                           "sample b following sample b-1 with positions running on; takes no attention_mask. "
                           "Input [T, E]; output [T, E].",
    "openfluke_softmax": f"softmax as {_WELVET} computes it: the softmax variant's keys (variants standard, "
                         "temperature, grid, sparsemax, entmax) plus normalize, and form for entmax.",
    "residual": "y = x + layers(x); the layers must keep the shape (checked when the Network is built).",
    "parallel": "Cross-key rules not expressible here (checked by loom.config): top_k <= len(branches); "
                "grid.positions has one cell per branch, each inside rows x cols x layers.",
    "stitch": "parallel whose branch outputs are each projected (a linear dense, weight [width, branch width]) "
              "to width over the last axis before combining; the combine keys and their rules are parallel's.",
}

# The description of one key, by (owner, key); a softmax note applies to every variant with that key.
_GROUPS = "must divide input channels and filters (checked when the Network is built)"
_COMPUTE_DTYPE = "statistics, normalization and the affine map in float64, the result rounded once to the network dtype"
_COMBINE_NOTES = {   # the combine keys of parallel and stitch
    "grid": "required with combine grid_scatter, null otherwise",
    "gate": "combine filter only; null means flatten + dense(len(branches))",
    "top_k": "combine filter only; at most len(branches) (not expressible here: checked by loom.config)",
    "renormalize": "combine filter only; null means false: the kept top_k branches weigh their full-softmax "
                   "probabilities (Switch style); true: a softmax over the kept scores only (Mixtral style)",
}
KEY_NOTES: dict[tuple[str, str], str] = {
    ("network", "loom"): "format version",
    ("network", "seed"): "keys the counter RNG for initialization and dropout/gumbel noise",
    ("network", "dtype"): "compute dtype of parameters and activations",
    ("network", "quantization"): "GEMM weights stored and run in this type (inference only); omitted when null "
                                 "or absent",
    ("network", "qat"): "quantization-aware training: weights fake-quantized to this type in every forward; "
                        "omitted when null or absent",
    ("network", "training"): "omitted when null or absent",
    ("network", "metadata"): "free-form; kept as given; omitted when absent",
    ("input", "shape"): "one sample's shape, batch excluded: [F], sequences [T, F], images [C, H, W]",
    ("input", "dtype"): "null means the network dtype; int64/int32 for embedding ids",
    ("rope", "scaling"): "linear position scaling (positions / scaling)",
    ("grid", "positions"): "[row, col, layer] per branch; cells distinct",
    **{(kind, "filters"): "output channels" for kind in _CONVS + _CONV_TRANSPOSES},
    **{(kind, "groups"): _GROUPS for kind in _CONVS + _CONV_TRANSPOSES},
    **{(kind, "padding"): "\"same\" needs stride 1 (checked when the Network is built)" for kind in _CONVS},
    **{(kind, "output_padding"): "must be smaller than stride or dilation (checked when the Network is built)"
       for kind in _CONV_TRANSPOSES},
    **{(kind, "stride"): "null means pool_size" for kind in _POOLS},
    **{(kind, "padding"): "at most pool_size // 2 (checked when the Network is built)" for kind in _POOLS},
    ("multi_head_attention", "kv_heads"): "null means heads; heads must be a multiple of kv_heads (not expressible "
                                          "here: checked by loom.config)",
    ("multi_head_attention", "head_dim"): "null means E / heads (E must then be divisible by heads: checked when "
                                          "the Network is built)",
    ("multi_head_attention", "rope"): "rotary position embedding; needs an even head dimension (checked when the "
                                      "Network is built)",
    ("softmax", "mask"): "one entry per position of the last axis (checked when the Network is built); at least "
                         "one 1",
    ("softmax", "cutoffs"): "strictly increasing and below classes (not expressible here: checked by loom.config)",
    ("reshape", "shape"): "target shape without the batch; at most one -1 (inferred); the sizes must match "
                          "(checked when the Network is built)",
    **{(kind, key): note for kind in ("parallel", "stitch") for key, note in _COMBINE_NOTES.items()},
    ("stitch", "width"): "every branch output's last axis is projected to this width",
    ("stitch", "bias"): "whether each projection has a bias [width]",
    # openfluke compatibility types; the keys they share with their core type take its notes
    ("openfluke_dense", "accumulate_block"): "float64 sums over blocks of this many inputs, the running sum rounded "
                                             "to the compute dtype after each block (welvet's tile_size); float "
                                             "weights only: a quantized network runs its own GEMM",
    ("openfluke_layer_norm", "compute_dtype"): _COMPUTE_DTYPE,
    ("openfluke_rms_norm", "compute_dtype"): _COMPUTE_DTYPE,
    ("openfluke_attention", "span"): "batch: the whole batch is one sequence",
    ("openfluke_softmax", "normalize"): "batch: the whole batch tensor is normalized as one vector; row: every "
                                        "sample (and grid row) on its own. With grid, batch takes a softmax over the "
                                        "first rows runs of cols values of the flattened batch, every later value 0",
    ("openfluke_softmax", "form"): "blend: ((2 - alpha) softmax + (alpha - 1) sparsemax) / its sum, alpha below 2; "
                                   "exact: alpha-entmax",
}


class SchemaError(LoomError, RuntimeError):
    """loom/config.py's tables cannot be written as a JSON Schema: a checker carries no schema, two
    checkers claim one $defs name with different schemas, a $ref has no definition, or a note names a
    definition or key that the tables do not have. The message names the checker, name or key."""


def schema() -> dict:
    """The JSON Schema (draft 2020-12) of a network config, built from loom/config.py's tables."""
    return _Builder().build()


def render() -> str:
    """The text of docs/loom-config.schema.json: `schema()` as JSON, two-space indent, trailing newline."""
    return json.dumps(schema(), indent=2, allow_nan=False) + "\n"


def main() -> None:
    """Write the schema to standard output (`python -m loom.config_schema > docs/loom-config.schema.json`)."""
    sys.stdout.write(render())


class _Builder:
    """One generation: collects the $defs the tables refer to and the notes used on the way."""

    def __init__(self) -> None:
        self.defs: dict[str, Any] = {}
        self.named: dict[str, Callable] = {}  # $defs name -> the first checker that claimed it
        self.used_def_notes: set[str] = set()
        self.used_key_notes: set[tuple[str, str]] = set()

    def build(self) -> dict:
        top = self.closed_object(C.NETWORK_KEYS, "network", no_default=C.DROPPED_WHEN_NONE)
        out = {"$schema": SCHEMA_URI, "$id": SCHEMA_ID, "title": TITLE, "description": DESCRIPTION}
        out.update(_merged(top, self.fill(C.NETWORK_CROSS_KEY_SCHEMA), "the top level"))
        self.define("layer", self.layer_union())
        for kind in C.LAYER_KEYS:
            self.define(f"layer_{kind}", self.variants(kind) if kind in C.VARIANT_KEYS else self.layer_type(kind))
        stale = sorted(set(DEF_NOTES) - self.used_def_notes) + sorted(set(KEY_NOTES) - self.used_key_notes)
        if stale:
            raise SchemaError(f"notes for definitions or keys that loom/config.py does not have: {stale}")
        out["$defs"] = dict(sorted(self.defs.items()))  # definitions have no meaningful order
        missing = sorted({ref for ref in _refs(out) if ref.removeprefix("#/$defs/") not in self.defs})
        if missing:
            raise SchemaError(f"$ref without a definition: {missing}")
        return out

    def define(self, name: str, body: Any) -> None:
        if name in self.defs:
            raise SchemaError(f"$defs name {name!r} is generated from the tables and also claimed by a checker")
        self.defs[name] = body

    # --- checkers ---------------------------------------------------------------------------------

    def of(self, check: Callable) -> dict:
        """The schema of what `check` accepts; a $ref when the checker is named."""
        name = getattr(check, "json_schema_name", None)
        if name is None:
            return self.body(check, None)
        ref = {"$ref": f"#/$defs/{name}"}
        first = self.named.setdefault(name, check)
        if name not in self.defs:
            self.defs[name] = ref  # stands in while the body is built, should the body refer to itself
            self.defs[name] = self.body(check, name)
        elif first is not check and self.body(check, name) != self.defs[name]:
            raise SchemaError(f"two checkers named {name!r} accept different values "
                              f"({_qualname(first)} and {_qualname(check)})")
        return ref

    def body(self, check: Callable, owner: str | None) -> dict:
        keys = getattr(check, "json_schema_keys", None)
        if keys is not None:
            return self.described(owner, self.closed_object(keys, owner))
        if not hasattr(check, "json_schema"):
            raise SchemaError(f"checker {_qualname(check)} carries no JSON Schema; give it one with "
                              "loom.config._schema next to its code")
        return self.described(owner, self.fill(check.json_schema))

    def fill(self, template: Any) -> Any:
        """A copy of a schema fragment with each checker in it replaced by its schema."""
        if callable(template):
            return self.of(template)
        if isinstance(template, dict):
            return {key: self.fill(value) for key, value in template.items()}
        if isinstance(template, list):
            return [self.fill(value) for value in template]
        return template

    # --- key tables -------------------------------------------------------------------------------

    def closed_object(self, keys: dict[str, tuple[Callable, Any]], owner: str | None, *,
                      head: dict | None = None, no_default: tuple[str, ...] = ()) -> dict:
        """A JSON object with exactly the keys of a table, after the `head` properties of a layer (its
        "type", required, and a softmax's "variant"). Keys in `no_default` get no "default": the
        normalized config leaves them out instead of filling one in."""
        props = dict(head or {})
        required = ["type"] if head else []
        for key, (check, default) in keys.items():
            prop = dict(self.of(check))
            if default is C.REQUIRED:
                required.append(key)
            elif key not in no_default:
                prop["default"] = copy.deepcopy(default)
            note = self.note(owner, key)
            if note is not None:
                prop["description"] = note
            props[key] = prop
        out = {"type": "object", "additionalProperties": False}
        if required:
            out["required"] = required
        out["properties"] = props
        return out

    def note(self, owner: str | None, key: str) -> str | None:
        """The description of `key` of `owner`; an openfluke type's key from its core type's note."""
        for who in (owner, C.OPENFLUKE_CORE.get(owner, (None,))[0]):
            if (who, key) in KEY_NOTES:
                self.used_key_notes.add((who, key))
                return KEY_NOTES[(who, key)]
        return None

    def described(self, owner: str | None, body: dict) -> dict:
        """`body` with the owner's DEF_NOTES description in front, if it has one."""
        if owner not in DEF_NOTES:
            return body
        self.used_def_notes.add(owner)
        return {"description": DEF_NOTES[owner], **body}

    # --- layers -----------------------------------------------------------------------------------

    def layer_union(self) -> dict:
        """Any layer: its "type" selects the definition of that type."""
        return self.described("layer", {
            "type": "object", "required": ["type"], "properties": {"type": {"enum": list(C.LAYER_KEYS)}},
            "allOf": [{"if": {"properties": {"type": {"const": kind}}, "required": ["type"]},
                       "then": {"$ref": f"#/$defs/layer_{kind}"}} for kind in C.LAYER_KEYS]})

    def layer_type(self, kind: str) -> dict:
        body = self.closed_object(C.LAYER_KEYS[kind], kind, head={"type": {"const": kind}})
        body = _merged(body, self.fill(C.CROSS_KEY_SCHEMA.get(kind, {})), f"layer type {kind}")
        return self.described(kind, body)

    def variants(self, kind: str) -> dict:
        """Layers with variants (softmax): one closed object per variant, the variant's key table plus
        type and variant."""
        branches = []
        for variant, keys in C.VARIANT_KEYS[kind].items():
            when: dict[str, Any] = {"properties": {"variant": {"const": variant}}}
            if variant != C.DEFAULT_SOFTMAX_VARIANT:
                when["required"] = ["variant"]  # an absent variant is the default one
            head = {"type": {"const": kind}, "variant": {"const": variant}}
            branches.append({"if": when, "then": self.closed_object(keys, kind, head=head)})
        return self.described(kind, {
            "type": "object", "required": ["type"],
            "properties": {"type": {"const": kind},
                           "variant": {"enum": list(C.VARIANT_KEYS[kind]), "default": C.DEFAULT_SOFTMAX_VARIANT}},
            "allOf": branches})


def _merged(body: dict, extra: dict, where: str) -> dict:
    """`body` with the keywords of `extra` added; a keyword in both would silently replace one rule."""
    clash = sorted(set(body) & set(extra))
    if clash:
        raise SchemaError(f"the cross-key schema of {where} repeats keywords of its key table: {clash}")
    return {**body, **extra}


def _refs(node: Any) -> Iterator[str]:
    """Every $ref value in a schema."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def _qualname(check: Callable) -> str:
    return f"{getattr(check, '__module__', '?')}.{getattr(check, '__qualname__', repr(check))}"


if __name__ == "__main__":
    main()

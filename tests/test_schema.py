"""docs/loom-config.schema.json and the JSON examples in the docs, checked against loom/config.py.

The schema file must be exactly what loom.config_schema generates from config.py's key tables. It
must accept every valid config (catalogue samples, raw and normalized, and every ```json block in the
docs), reject the malformed configs below exactly when loom.config does, and list the same keys,
defaults and enums as config.py. Every layer key table in docs/format.md is compared with config.py
too, so the reference cannot drift from the code. Only the tests that validate configs with the schema
need jsonschema (the `validator` fixture skips them without it).
"""
import json
import re
from pathlib import Path

import pytest
from catalogue import SAMPLES, config

import loom
from loom import config as C
from loom import config_schema

DOCS = Path(__file__).resolve().parents[1] / "docs"
SCHEMA_FILE = DOCS / "loom-config.schema.json"
SCHEMA = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
EXAMPLE_PAGES = ["format.md", "layers.md", "layers/core.md"]


@pytest.fixture(scope="module")
def validator():
    jsonschema = pytest.importorskip("jsonschema")
    return jsonschema.Draft202012Validator(SCHEMA)


def schema_errors(validator, cfg):
    return [f"/{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(cfg)]


def assert_valid_both(validator, cfg):
    errors = schema_errors(validator, cfg)
    assert not errors, errors
    C.validate(cfg)


# --- the schema itself ------------------------------------------------------------------------------

def test_schema_file_is_generated_from_the_config_tables():
    assert SCHEMA_FILE.read_text(encoding="utf-8") == config_schema.render(), (
        f"docs/loom-config.schema.json differs from what loom/config.py's tables give; regenerate it with "
        f"`{config_schema.REGENERATE}`")


def test_main_writes_the_schema(capsys):
    config_schema.main()
    assert capsys.readouterr().out == config_schema.render()


def test_a_checker_without_a_schema_fails_the_generation(monkeypatch):
    def bare(v, path):
        return v
    monkeypatch.setitem(C.LAYER_KEYS, "dense", {**C.LAYER_KEYS["dense"], "extra": (bare, None)})
    with pytest.raises(config_schema.SchemaError, match="bare carries no JSON Schema"):
        config_schema.schema()


def test_a_note_for_a_key_the_tables_lack_fails_the_generation(monkeypatch):
    monkeypatch.setitem(config_schema.KEY_NOTES, ("dense", "unitz"), "a typo")
    with pytest.raises(config_schema.SchemaError, match="unitz"):
        config_schema.schema()


def test_schema_is_a_valid_draft_2020_12_schema():
    jsonschema = pytest.importorskip("jsonschema")
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def _same_default(prop, default):
    return json.dumps(prop.get("default")) == json.dumps(default)


def _check_keys(props, required, keys, where):
    assert list(props) == list(keys), f"{where}: schema keys {list(props)} != config keys {list(keys)}"
    for key, (_, default) in keys.items():
        if default is C.REQUIRED:
            assert key in required and "default" not in props[key], f"{where}.{key} should be required"
        else:
            assert key not in required, f"{where}.{key} has a default, so it is not required"
            assert _same_default(props[key], default), f"{where}.{key}: default {props[key].get('default')!r} != {default!r}"


def test_schema_mirrors_config_keys_defaults_and_enums():
    defs = SCHEMA["$defs"]
    assert defs["activation"]["enum"] == list(C.ACTIVATIONS)
    assert defs["layer"]["properties"]["type"]["enum"] == list(C.LAYER_KEYS)
    assert {f"layer_{t}" for t in C.LAYER_KEYS} <= set(defs)
    assert list(SCHEMA["properties"]) == list(C.NETWORK_KEYS)
    assert SCHEMA["required"] == [k for k, (_, d) in C.NETWORK_KEYS.items() if d is C.REQUIRED]
    for t, keys in C.LAYER_KEYS.items():
        d = defs[f"layer_{t}"]
        assert d["properties"]["type"] == {"const": t}
        if keys is None:  # softmax: one if/then per variant
            continue
        assert d["additionalProperties"] is False
        props = {k: v for k, v in d["properties"].items() if k != "type"}
        _check_keys(props, d["required"], keys, t)
    sm = defs["layer_softmax"]
    assert sm["properties"]["variant"]["enum"] == list(C.SOFTMAX_VARIANTS)
    branches = {b["then"]["properties"]["variant"]["const"]: b["then"] for b in sm["allOf"]}
    assert list(branches) == list(C.SOFTMAX_VARIANTS)
    for v, then in branches.items():
        assert then["additionalProperties"] is False
        props = {k: p for k, p in then["properties"].items() if k not in ("type", "variant")}
        _check_keys(props, then["required"], C.SOFTMAX_KEYS[v], f"softmax/{v}")
    assert defs["layer_parallel"]["properties"]["combine"]["enum"] == list(C.COMBINE_MODES)


# --- valid configs ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, layers, shape, idt", SAMPLES, ids=[s[0] for s in SAMPLES])
def test_catalogue_samples_and_their_normalized_form_pass_the_schema(validator, name, layers, shape, idt):
    cfg = config(layers, shape, idt)
    assert_valid_both(validator, cfg)
    assert_valid_both(validator, C.validate(cfg))
    assert_valid_both(validator, json.loads(C.dumps(cfg)))


_FENCE = re.compile(r"^```json\n(.*?)^```", re.S | re.M)
_INPUT = re.compile(r"^<!-- input: (\[[0-9, ]*\])(?: (\w+))? -->$")


def doc_examples():
    """(id, parsed block, input annotation or None, canonical flag, raw text) of every ```json block."""
    out = []
    for page in EXAMPLE_PAGES:
        path = DOCS / page
        if not path.exists():
            continue
        text = path.read_text(encoding="utf-8")
        for m in _FENCE.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            before = text[:m.start()].rstrip("\n").rsplit("\n", 1)[-1]
            out.append(pytest.param(json.loads(m.group(1)), before, m.group(1), id=f"{page}:{line}"))
    return out


DOC_EXAMPLES = doc_examples()


def example_config(block, before):
    """A whole network as is; a layer object wrapped in a network on its annotated input."""
    if "loom" in block:
        return block
    assert "type" in block, "a ```json block must be a network config or a layer object"
    m = _INPUT.match(before)
    assert m, f"a layer example needs '<!-- input: [shape] [dtype] -->' right above it, found {before!r}"
    return config([block], json.loads(m.group(1)), m.group(2))


@pytest.mark.parametrize("block, before, raw", DOC_EXAMPLES)
def test_doc_examples_are_valid_and_build(validator, block, before, raw):
    cfg = example_config(block, before)
    assert_valid_both(validator, cfg)
    assert_valid_both(validator, C.validate(cfg))
    net = loom.Network.from_config(cfg)
    assert net.config == C.validate(cfg)
    if before == "<!-- canonical -->":
        assert C.dumps(block) == raw


@pytest.mark.parametrize("path", sorted((DOCS.parent / "examples").glob("*.json")), ids=lambda p: p.name)
def test_example_files_pass_the_schema(validator, path):
    cfg = json.loads(path.read_text(encoding="utf-8"))
    assert_valid_both(validator, cfg)


def _walk(layer):
    yield layer
    for key in ("layers", "branches"):
        for child in layer.get(key) or []:
            yield from _walk(child)
    if isinstance(layer.get("gate"), dict):
        yield from _walk(layer["gate"])


def test_format_examples_cover_every_type_variant_and_mode():
    layers = []
    for param in DOC_EXAMPLES:
        if param.id.startswith("format.md:"):
            block = param.values[0]
            for top in block["layers"] if "loom" in block else [block]:
                layers.extend(_walk(top))
    assert {x["type"] for x in layers} == set(C.LAYER_KEYS)
    assert {x.get("variant", "standard") for x in layers if x["type"] == "softmax"} == set(C.SOFTMAX_VARIANTS)
    assert {x.get("combine", "concat") for x in layers if x["type"] == "parallel"} == set(C.COMBINE_MODES)


# --- docs/format.md key tables against config.py ----------------------------------------------------

def _tables(section):
    """Tables in a markdown section, each a list of rows (lists of stripped cells), header excluded."""
    tables, cur = [], None
    for line in section.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if cur is None:
                cur = []
                tables.append(cur)
                continue  # header row
            if not set("".join(cells)) <= set("-: "):
                cur.append(cells)
        else:
            cur = None
    return tables


def _default(cell):
    return C.REQUIRED if cell == "required" else json.loads(cell.strip("`"))


def _sections(text, level):
    marker = "#" * level + " "
    parts = re.split(rf"^(?={marker})", text, flags=re.M)
    return {p.splitlines()[0][len(marker):]: p for p in parts if p.startswith(marker)}


def _assert_table(rows, keys, where):
    got = [(r[0].strip("`"), r[2]) for r in rows]
    assert [k for k, _ in got] == list(keys), f"{where}: documented keys {[k for k, _ in got]} != {list(keys)}"
    for (key, cell), (_, default) in zip(got, keys.values()):
        want = "required" if default is C.REQUIRED else f"`{json.dumps(default)}`"
        assert cell == want, f"{where}.{key}: documented default {cell} != {want}"


def test_format_tables_match_config():
    text = (DOCS / "format.md").read_text(encoding="utf-8")
    top = _tables(_sections(text, 2)["Top-level keys"])[0]
    assert [r[0].strip("`") for r in top] == list(C.NETWORK_KEYS)
    seen = set()
    for heading, section in _sections(_sections(text, 2)["Layers"], 3).items():
        types = re.findall(r"`(\w+)`", heading)
        tables = _tables(section)
        for t in types:
            seen.add(t)
            if t == "softmax":
                _assert_table(tables[0], {"variant": (None, "standard"), "temperature": (None, 1.0)}, t)
                for v, keys in C.SOFTMAX_KEYS.items():
                    rows = [[r[1], r[2], r[3]] for r in tables[1] if r[0] == f"`{v}`" and r[1] != "—"]
                    extra = {k: kd for k, kd in keys.items() if k != "temperature"}
                    _assert_table(rows, extra, f"softmax/{v}")
            elif C.LAYER_KEYS[t]:
                _assert_table(tables[0], C.LAYER_KEYS[t], t)
            else:
                assert not tables or not tables[0], f"{t} takes no keys"
    assert seen == set(C.LAYER_KEYS)


# --- malformed configs: rejected by both ------------------------------------------------------------

D = {"type": "dense", "units": 2}


def net(*layers, **top):
    return {"loom": 1, "input": {"shape": [4]}, "layers": list(layers), **top}


def grid_par(grid, n=2):
    return net({"type": "parallel", "combine": "grid_scatter", "branches": [D] * n, "grid": grid})


MALFORMED = {
    "unknown top-level key": net(D, optimizer={"type": "adam"}),
    "unknown layer key": net({"type": "dense", "units": 2, "unitz": 3}),
    "unknown input key": {"loom": 1, "input": {"shape": [4], "batch": 8}, "layers": [D]},
    "unknown type": net({"type": "denser", "units": 2}),
    "type not a string": net({"type": 3}),
    "negative units": net(D, D, D, {"type": "dense", "units": -4}),
    "zero units": net({"type": "dense", "units": 0}),
    "bool where int": net({"type": "dense", "units": True}),
    "string where int": net({"type": "dense", "units": "8"}),
    "fractional int": net({"type": "dense", "units": 2.5}),
    "wrong variant key": net({"type": "softmax", "rows": 2}),
    "key of another variant": net({"type": "softmax", "variant": "entmax", "levels": [2]}),
    "unknown variant": net({"type": "softmax", "variant": "fancy"}),
    "variant not a string": net({"type": "softmax", "variant": 3}),
    "variant on a non-softmax layer": net({"type": "dense", "units": 2, "variant": "standard"}),
    "grid softmax missing cols": net({"type": "softmax", "variant": "grid", "rows": 2}),
    "entmax alpha 1": net({"type": "softmax", "variant": "entmax", "alpha": 1}),
    "mask all zero": net({"type": "softmax", "variant": "masked", "mask": [0, 0, 0, 0]}),
    "mask entry 2": net({"type": "softmax", "variant": "masked", "mask": [1, 2]}),
    "empty levels": net({"type": "softmax", "variant": "hierarchical", "levels": []}),
    "adaptive div_value < 1": net({"type": "softmax", "variant": "adaptive", "classes": 8, "cutoffs": [4], "div_value": 0.5}),
    "temperature 0": net({"type": "softmax", "temperature": 0}),
    "dropout rate 1.0": net({"type": "dropout", "rate": 1.0}),
    "dropout rate negative": net({"type": "dropout", "rate": -0.1}),
    "dropout rate missing": net({"type": "dropout"}),
    "batch_norm momentum > 1": net({"type": "batch_norm", "momentum": 1.5}),
    "layer_norm eps 0": net({"type": "layer_norm", "eps": 0}),
    "rms_norm affine": net({"type": "rms_norm", "affine": False}),
    "unknown activation": net({"type": "activation", "fn": "swish"}),
    "activation missing fn": net({"type": "activation"}),
    "conv padding valid": net({"type": "conv1d", "filters": 2, "kernel_size": 3, "padding": "valid"}),
    "conv_transpose padding same": net({"type": "conv_transpose1d", "filters": 2, "kernel_size": 3, "padding": "same"}),
    "kernel_size entry 0": net({"type": "conv2d", "filters": 2, "kernel_size": [3, 0]}),
    "kernel_size empty list": net({"type": "conv2d", "filters": 2, "kernel_size": []}),
    "pool stride 0": net({"type": "max_pool1d", "pool_size": 2, "stride": 0}),
    "pool missing pool_size": net({"type": "avg_pool2d"}),
    "reshape two -1": net({"type": "reshape", "shape": [-1, 2, -1]}),
    "reshape 0": net({"type": "reshape", "shape": [0, 4]}),
    "rope theta 0": net({"type": "multi_head_attention", "heads": 2, "rope": {"theta": 0}}),
    "rope unknown key": net({"type": "multi_head_attention", "heads": 2, "rope": {"base": 10000}}),
    "rope scaling < 1": net({"type": "multi_head_attention", "heads": 2, "rope": {"scaling": 0.5}}),
    "causal not bool": net({"type": "multi_head_attention", "heads": 2, "causal": "yes"}),
    "kv_heads 0": net({"type": "multi_head_attention", "heads": 2, "kv_heads": 0}),
    "kmeans unknown output": net({"type": "kmeans", "clusters": 2, "output": "labels"}),
    "embedding missing dim": net({"type": "embedding", "vocab_size": 10}),
    "missing type": net({"units": 2}),
    "layer not an object": net("dense"),
    "nested layer not an object": net({"type": "residual", "layers": [D, 3]}),
    "nested layers not a list": net({"type": "sequential", "layers": D}),
    "nested layers empty": net({"type": "residual", "layers": []}),
    "deep nested error": net({"type": "parallel", "branches": [
        {"type": "sequential", "layers": [{"type": "dense", "units": -1}]}]}),
    "branches not a list": net({"type": "parallel", "branches": D}),
    "unknown combine": net({"type": "parallel", "combine": "max", "branches": [D, D]}),
    "grid_scatter without grid": net({"type": "parallel", "combine": "grid_scatter", "branches": [D]}),
    "grid with concat": net({"type": "parallel", "branches": [D],
                             "grid": {"rows": 1, "cols": 1, "positions": [[0, 0, 0]]}}),
    "gate with add": net({"type": "parallel", "combine": "add", "branches": [D, D], "gate": D}),
    "top_k with avg": net({"type": "parallel", "combine": "avg", "branches": [D, D], "top_k": 1}),
    "renormalize with concat": net({"type": "parallel", "branches": [D, D], "renormalize": False}),
    "renormalize not bool": net({"type": "parallel", "combine": "filter", "branches": [D, D], "renormalize": 1}),
    "gate not a layer": net({"type": "parallel", "combine": "filter", "branches": [D, D], "gate": [D]}),
    "grid position repeated": grid_par({"rows": 1, "cols": 2, "positions": [[0, 0, 0], [0, 0, 0]]}),
    "grid position of two coords": grid_par({"rows": 2, "cols": 2, "positions": [[0, 0], [1, 1]]}),
    "grid missing rows": grid_par({"cols": 2, "positions": [[0, 0, 0], [0, 1, 0]]}),
    "missing loom": {"input": {"shape": [4]}, "layers": [D]},
    "loom version 2": net(D, loom=2),
    "missing input": {"loom": 1, "layers": [D]},
    "missing layers": {"loom": 1, "input": {"shape": [4]}},
    "empty layers": net(),
    "layers not a list": {"loom": 1, "input": {"shape": [4]}, "layers": D},
    "wrong dtype": net(D, dtype="float16"),
    "wrong input dtype": {"loom": 1, "input": {"shape": [4], "dtype": "int8"}, "layers": [D]},
    "float32 input of a float64 network": net(D, dtype="float64", input={"shape": [4], "dtype": "float32"}),
    "float64 input of a default-dtype network": net(D, input={"shape": [4], "dtype": "float64"}),
    "quantization with qat": net(D, quantization={"dtype": "int8"}, qat={"dtype": "int8"}),
    "empty input shape": {"loom": 1, "input": {"shape": []}, "layers": [D]},
    "negative input dim": {"loom": 1, "input": {"shape": [4, -1]}, "layers": [D]},
    "input shape missing": {"loom": 1, "input": {}, "layers": [D]},
    "negative seed": net(D, seed=-1),
    "seed as bool": net(D, seed=False),
    "name not a string": net(D, name=5),
    "metadata null": net(D, metadata=None),
    "metadata a list": net(D, metadata=["a"]),
    "not an object": [D],
}


@pytest.mark.parametrize("cfg", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_configs_are_rejected_by_both(validator, cfg):
    assert schema_errors(validator, cfg), "the schema accepted it"
    with pytest.raises(loom.ConfigError):
        C.validate(cfg)


# Edges of the rules above that loom.config accepts, so the schema must too.
ACCEPTED = {
    "null optional blocks": net(D, quantization=None, qat=None, training=None),
    "quantization with a null qat": net(D, quantization={"dtype": "int8"}, qat=None),
    "float64 input of a float64 network": net(D, dtype="float64", input={"shape": [4], "dtype": "float64"}),
    "integer ids in a float64 network": net({"type": "embedding", "vocab_size": 10, "dim": 4}, dtype="float64",
                                            input={"shape": [3], "dtype": "int64"}),
    "grid_scatter with distinct cells": grid_par({"rows": 1, "cols": 2, "positions": [[0, 0, 0], [0, 1, 0]]}),
}


@pytest.mark.parametrize("cfg", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_edge_configs_are_accepted_by_both(validator, cfg):
    assert_valid_both(validator, cfg)


# Rules the schema cannot express (its description lists them): loom.config rejects these, the
# schema lets them through. If one starts failing the schema learned the rule: move it to MALFORMED.
SCHEMA_GAPS = {
    "heads not a multiple of kv_heads": net({"type": "multi_head_attention", "heads": 4, "kv_heads": 3}),
    "adaptive cutoffs decreasing": net({"type": "softmax", "variant": "adaptive", "classes": 10, "cutoffs": [7, 4]}),
    "adaptive cutoff at classes": net({"type": "softmax", "variant": "adaptive", "classes": 10, "cutoffs": [10]}),
    "top_k above branch count": net({"type": "parallel", "combine": "filter", "branches": [D, D], "top_k": 3}),
    "fewer grid positions than branches": grid_par({"rows": 2, "cols": 2, "positions": [[0, 0, 0]]}),
    "grid position outside the grid": grid_par({"rows": 1, "cols": 1, "positions": [[0, 0, 0], [0, 1, 0]]}),
    "integer written as 2.0": net({"type": "dense", "units": 2.0}),
}


@pytest.mark.parametrize("cfg", SCHEMA_GAPS.values(), ids=SCHEMA_GAPS.keys())
def test_cross_key_rules_only_config_checks(validator, cfg):
    assert not schema_errors(validator, cfg)
    with pytest.raises(loom.ConfigError):
        C.validate(cfg)


@pytest.mark.parametrize("cfg", [net({"type": "softmax", "variant": ["grid"]}),
                                 net({"type": "layer_norm", "eps": 10 ** 400})], ids=["list variant", "huge eps"])
def test_odd_values_raise_config_error(cfg):
    with pytest.raises(loom.ConfigError):
        C.validate(cfg)

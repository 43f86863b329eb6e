"""Post-processors: what encode adds around a text's ids (BOS/EOS)."""
from __future__ import annotations

import re
from abc import abstractmethod

from loom.llm.tokenizers_py._common import Component, component_type, refuse_missing, unsupported

__getattr__ = refuse_missing("processors")


class PostProcessor(Component):
    """Adds special tokens to an encoded sequence."""

    @abstractmethod
    def process(self, ids: list[int], tokens: list[str], add_special_tokens: bool) -> tuple[list[int], list[str]]:
        """The ids and token strings with this processor's additions."""


class TemplateProcessing(PostProcessor):
    """Special tokens around the sequence, by template: single=["<s>:0", "$A:0", "</s>:0"].

    Templates are lists of pieces or one string of space-separated pieces; a piece is "$A"/"$B" (or "$",
    "$0", "$1") for a sequence or a special token's name, each optionally followed by ":type_id".
    `special_tokens` lists (name, id) pairs or {"id": name, "ids": [...], "tokens": [...]} dicts.
    """

    def __init__(self, single: str | list[str] | None = None, pair: str | list[str] | None = None,
                 special_tokens: list | None = None):
        self.special_tokens: dict[str, dict] = {}
        for entry in special_tokens or []:
            if isinstance(entry, dict):
                name, ids, tokens = entry["id"], list(entry["ids"]), list(entry["tokens"])
            elif isinstance(entry, (tuple, list)) and len(entry) == 2:
                name, token_id = entry if isinstance(entry[0], str) else entry[::-1]
                ids, tokens = [int(token_id)], [name]
            else:
                raise ValueError(f"TemplateProcessing: expected (token, id) for a special token, got {entry!r:.80}")
            if len(ids) != len(tokens):
                raise ValueError(f"TemplateProcessing: special token {name!r} has {len(ids)} ids for "
                                 f"{len(tokens)} tokens")
            self.special_tokens[name] = {"id": name, "ids": ids, "tokens": tokens}
        self.single = _template(single if single is not None else "$0")
        self.pair = _template(pair if pair is not None else "$A:0 $B:1")
        missing = [p["SpecialToken"]["id"] for p in self.single + self.pair
                   if "SpecialToken" in p and p["SpecialToken"]["id"] not in self.special_tokens]
        if missing:
            raise ValueError(f"Missing SpecialToken(s) with id(s) `{', '.join(dict.fromkeys(missing))}`")
        if {p["Sequence"]["id"] for p in self.pair if "Sequence" in p} != {"A", "B"}:
            raise ValueError("Template for `pair` must use both sequences")

    def process(self, ids: list[int], tokens: list[str], add_special_tokens: bool) -> tuple[list[int], list[str]]:
        if not add_special_tokens:
            return ids, tokens
        out_ids, out_tokens = [], []
        for piece in self.single:
            if "Sequence" in piece:
                out_ids += ids
                out_tokens += tokens
            else:
                special = self.special_tokens[piece["SpecialToken"]["id"]]
                out_ids += special["ids"]
                out_tokens += special["tokens"]
        return out_ids, out_tokens

    def to_json(self) -> dict:
        # the library keeps special tokens in a BTreeMap: sorted by name
        return {"type": "TemplateProcessing", "single": self.single, "pair": self.pair,
                "special_tokens": dict(sorted(self.special_tokens.items()))}


def _template(spec: str | list) -> list[dict]:
    pieces = spec.split(" ") if isinstance(spec, str) else spec
    out = []
    for piece in pieces:
        if isinstance(piece, dict):          # the JSON form
            out.append(piece)
            continue
        parts = piece.split(":")
        if len(parts) > 2 or (len(parts) == 2 and not re.fullmatch("[0-9]+", parts[1])):
            raise ValueError(f"Cannot build Piece from string \"{piece}\"")
        name, type_id = parts[0], 0
        if name.startswith("$"):
            sequence = {"": "A", "A": "A", "a": "A", "B": "B", "b": "B"}.get(name[1:])
            if sequence is None and re.fullmatch("[0-9]+", name[1:]):
                sequence, type_id = "A", int(name[1:])        # "$1": sequence A with type id 1
            if sequence is None:
                raise ValueError(f"Cannot build Piece from string \"{piece}\"")
            type_id = int(parts[1]) if len(parts) == 2 else type_id
            out.append({"Sequence": {"id": sequence, "type_id": type_id}})
        else:
            out.append({"SpecialToken": {"id": name, "type_id": int(parts[1]) if len(parts) == 2 else 0}})
    return out


class ByteLevel(PostProcessor):
    """The library's ByteLevel post-processor only trims offsets; ids pass unchanged."""

    def __init__(self, add_prefix_space: bool = True, trim_offsets: bool = True, use_regex: bool = True):
        self.add_prefix_space, self.trim_offsets, self.use_regex = (bool(add_prefix_space), bool(trim_offsets),
                                                                     bool(use_regex))

    def process(self, ids: list[int], tokens: list[str], add_special_tokens: bool) -> tuple[list[int], list[str]]:
        return ids, tokens

    def to_json(self) -> dict:
        return {"type": "ByteLevel", "add_prefix_space": self.add_prefix_space, "trim_offsets": self.trim_offsets,
                "use_regex": self.use_regex}


class Sequence(PostProcessor):
    """Several post-processors in turn (Llama 3's tokenizer.json: ByteLevel, then its template)."""

    def __init__(self, processors: list[PostProcessor]):
        for step in processors:
            if not isinstance(step, PostProcessor):
                raise TypeError(f"processors.Sequence takes post-processors, got {type(step).__name__}")
        self.processors = list(processors)

    def process(self, ids: list[int], tokens: list[str], add_special_tokens: bool) -> tuple[list[int], list[str]]:
        for step in self.processors:
            ids, tokens = step.process(ids, tokens, add_special_tokens)
        return ids, tokens

    def to_json(self) -> dict:
        return {"type": "Sequence", "processors": [step.to_json() for step in self.processors]}


def from_json(state: dict) -> PostProcessor:
    """The post-processor a tokenizer.json "post_processor" object describes."""
    kind = component_type(state, "post_processor")
    if kind == "TemplateProcessing":
        specials = list(state.get("special_tokens", {}).values())
        return TemplateProcessing(state.get("single"), state.get("pair"), specials)
    if kind == "ByteLevel":
        return ByteLevel(state.get("add_prefix_space", True), state.get("trim_offsets", True),
                         state.get("use_regex", True))
    if kind == "Sequence":
        return Sequence([from_json(step) for step in state.get("processors", [])])
    raise unsupported(f"the post-processor {kind!r}")


PostProcessor._from_json = staticmethod(from_json)

"""What every pipeline step shares: JSON state in the library's format, and the refusal of what is missing."""
from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from loom.errors import BackendError

INSTALL = "pip install 'loom[llm]'"


def unsupported(what: str) -> BackendError:
    """The one-line error for a feature this fallback does not have: never a silently different result."""
    return BackendError(f"this tokenizer needs the `tokenizers` package ({INSTALL}): {what} is not in "
                        "Loom's pure-Python tokenizer, which implements byte-level BPE only")


def dumps(value: Any, pretty: bool = False) -> str:
    """JSON as serde_json writes it: UTF-8 text unescaped, compact (or two-space indented)."""
    if pretty:
        return json.dumps(value, ensure_ascii=False, indent=2)
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class Component(ABC):
    """A normalizer, pre-tokenizer, model, post-processor or decoder.

    `__getstate__` gives the JSON bytes the library's object gives (Loom reads a decoder's "type" from it),
    and `__setstate__` rebuilds from them, so copy and pickle work as they do on the library's objects.
    """
    _from_json: Callable[[dict], Component]      # the module's loader, set by each module for its classes

    @abstractmethod
    def to_json(self) -> dict:
        """The object as tokenizer.json spells it."""

    def __getstate__(self) -> bytes:
        return dumps(self.to_json()).encode("utf-8")

    def __setstate__(self, state: bytes | str) -> None:
        self.__dict__.update(type(self)._from_json(json.loads(state)).__dict__)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.to_json().items() if k != "type")
        return f"{type(self).__name__}({fields})"


def refuse_missing(namespace: str) -> Callable[[str], Any]:
    """A module `__getattr__`: naming a component the fallback lacks (models.WordPiece, ...) raises
    BackendError at once, at the line that builds the tokenizer. Private and dunder names, which tools
    probe for, stay AttributeErrors."""
    def __getattr__(name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        raise unsupported(f"{namespace}.{name}")
    return __getattr__


def component_type(state: Any, namespace: str) -> str:
    """The "type" of a component's JSON state, checked to be a JSON object."""
    if not isinstance(state, dict) or not isinstance(state.get("type"), str):
        raise ValueError(f"{namespace}: expected a JSON object with a \"type\", got {state!r:.80}")
    return state["type"]

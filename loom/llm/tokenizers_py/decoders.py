"""The ByteLevel decoder: GPT-2's characters back to bytes, bytes to text."""
from __future__ import annotations

from loom.llm.tokenizer_gguf import byte_to_char
from loom.llm.tokenizers_py._common import Component, component_type, refuse_missing, unsupported

__getattr__ = refuse_missing("decoders")

_CHAR_BYTES = {c: b for b, c in byte_to_char().items()}


class Decoder(Component):
    """Token strings to text."""


class ByteLevel(Decoder):
    """Each token's characters as the bytes they spell; a token with any other character (an added token
    such as "<｜end▁of▁text｜>") as its own UTF-8. Invalid UTF-8 becomes U+FFFD, one per maximal invalid
    subpart, which is both Python's "replace" and Rust's String::from_utf8_lossy."""

    def __init__(self, add_prefix_space: bool = True, trim_offsets: bool = True, use_regex: bool = True):
        self.add_prefix_space, self.trim_offsets, self.use_regex = (bool(add_prefix_space), bool(trim_offsets),
                                                                     bool(use_regex))

    def decode(self, tokens: list[str]) -> str:
        """The text the token strings spell."""
        out = bytearray()
        for token in tokens:
            try:
                out += bytes(_CHAR_BYTES[c] for c in token)
            except KeyError:
                out += token.encode("utf-8")
        return out.decode("utf-8", errors="replace")

    def to_json(self) -> dict:
        return {"type": "ByteLevel", "add_prefix_space": self.add_prefix_space, "trim_offsets": self.trim_offsets,
                "use_regex": self.use_regex}


def from_json(state: dict) -> Decoder:
    """The decoder a tokenizer.json "decoder" object describes."""
    kind = component_type(state, "decoder")
    if kind != "ByteLevel":
        raise unsupported(f"the decoder {kind!r}")
    return ByteLevel(state.get("add_prefix_space", True), state.get("trim_offsets", True), state.get("use_regex", True))


Decoder._from_json = staticmethod(from_json)

"""Normalizers: NFC (Qwen2's) and sequences of normalizers."""
from __future__ import annotations

import bisect
import functools
import re
import unicodedata
from abc import abstractmethod

from loom.llm.tokenizers_py._common import Component, component_type, refuse_missing, unsupported
from loom.llm.tokenizers_py._unicode import MAX_CODE_POINT, class_body, merged, ranges

__getattr__ = refuse_missing("normalizers")

# The library normalizes with Unicode 9 data (the unicode-normalization-alignments crate); Python's
# unicodedata is newer. Normalization data never changes once a character is assigned, so the difference is
# the characters assigned since: to the library a newer combining mark is a starter that composes with
# nothing, and it lacks U+11938 = U+11935 U+11930 (Unicode 13), so it never composes that pair. NFC with the
# text cut at such characters (kept as they are) is the library's NFC. tests/llm/test_tokenizers_py.py
# checks that over every code point, in the contexts where a combining class or composition shows.
_NOT_COMPOSED_BY_LIBRARY = {"\U00011930"}


@functools.cache
def _cut_points() -> re.Pattern:
    """Characters Python's unicodedata gives a combining class and the library does not, or U+11930."""
    library = ranges("combining")
    newer = [code for block in (range(0x20000), range(0xE0000, 0xE1000)) for code in block
             if unicodedata.combining(chr(code)) and not _inside(code, library)]
    newer += [ord(c) for c in _NOT_COMPOSED_BY_LIBRARY]
    return re.compile("[" + class_body(merged([(c, c) for c in newer])) + "]")


def _inside(code: int, pairs: tuple[tuple[int, int], ...]) -> bool:
    index = bisect.bisect_right(pairs, (code, MAX_CODE_POINT)) - 1
    return index >= 0 and pairs[index][0] <= code <= pairs[index][1]


class Normalizer(Component):
    """A text-to-text step applied before splitting (and to added tokens marked `normalized`)."""

    def normalize_str(self, sequence: str) -> str:
        """`sequence` normalized."""
        return self._normalize(sequence)

    @abstractmethod
    def _normalize(self, text: str) -> str:
        """The normalized text."""


class NFC(Normalizer):
    """Unicode canonical composition, as the library's NFC normalizer."""

    def _normalize(self, text: str) -> str:
        if text.isascii():
            return text
        out, done = [], 0
        for cut in _cut_points().finditer(text):
            out += [unicodedata.normalize("NFC", text[done:cut.start()]), cut.group()]
            done = cut.end()
        out.append(unicodedata.normalize("NFC", text[done:]))
        return "".join(out)

    def to_json(self) -> dict:
        return {"type": "NFC"}


class Sequence(Normalizer):
    """Several normalizers, one after the other."""

    def __init__(self, normalizers: list[Normalizer]):
        for step in normalizers:
            if not isinstance(step, Normalizer):
                raise TypeError(f"normalizers.Sequence takes normalizers, got {type(step).__name__}")
        self.normalizers = list(normalizers)

    def _normalize(self, text: str) -> str:
        for step in self.normalizers:
            text = step._normalize(text)
        return text

    def to_json(self) -> dict:
        return {"type": "Sequence", "normalizers": [step.to_json() for step in self.normalizers]}


def from_json(state: dict) -> Normalizer:
    """The normalizer a tokenizer.json "normalizer" object describes."""
    kind = component_type(state, "normalizer")
    if kind == "NFC":
        return NFC()
    if kind == "Sequence":
        return Sequence([from_json(step) for step in state.get("normalizers", [])])
    raise unsupported(f"the normalizer {kind!r}")


Normalizer._from_json = staticmethod(from_json)

"""Pre-tokenizers: how text is cut into words before BPE, and byte-level spelling."""
from __future__ import annotations

import re
from abc import abstractmethod

from loom.llm.tokenizer_gguf import byte_to_char
from loom.llm.tokenizers_py._common import Component, component_type, refuse_missing, unsupported
from loom.llm.tokenizers_py._unicode import char_class, translate

__getattr__ = refuse_missing("pre_tokenizers")

# GPT-2's split, built into the library's ByteLevel pre-tokenizer.
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_BEHAVIORS = ("removed", "isolated", "merged_with_previous", "merged_with_next", "contiguous")


# byte -> GPT-2's character; also a str.translate table for Latin-1-decoded bytes (ordinal = byte)
_BYTE_CHARS = byte_to_char()


class Regex:
    """A pattern in the library's (Oniguruma) syntax; see _unicode.translate for what is accepted."""

    def __init__(self, pattern: str):
        if not isinstance(pattern, str):
            raise TypeError(f"Regex takes a str pattern, got {type(pattern).__name__}")
        self.pattern = pattern
        self.compiled = translate(pattern)

    def __repr__(self) -> str:
        return f"Regex({self.pattern!r})"


class PreTokenizer(Component):
    """Cuts each piece of text into smaller pieces (and may rewrite them)."""

    def pre_tokenize_pieces(self, pieces: list[str]) -> list[str]:
        """Every piece cut (empty results dropped, as the library drops them)."""
        return [part for piece in pieces for part in self._split(piece) if part]

    @abstractmethod
    def _split(self, piece: str) -> list[str]:
        """The parts of one non-empty piece."""


def split_matches(pattern: re.Pattern, text: str, behavior: str, invert: bool = False) -> list[str]:
    """NormalizedString::split: `text` cut at the matches of `pattern`, each match kept or dropped and
    joined to its neighbours as `behavior` says."""
    marks, end = [], 0                  # (start, stop, is_match), covering the text
    for match in pattern.finditer(text):
        if match.start() > end:
            marks.append((end, match.start(), invert))
        marks.append((match.start(), match.end(), not invert))
        end = match.end()
    if end < len(text):
        marks.append((end, len(text), invert))
    if behavior == "isolated":
        spans = [(a, b) for a, b, _ in marks]
    elif behavior == "removed":
        spans = [(a, b) for a, b, is_match in marks if not is_match]
    elif behavior == "contiguous":
        spans, previous = [], False
        for a, b, is_match in marks:
            if spans and is_match == previous:
                spans[-1] = (spans[-1][0], b)
            else:
                spans.append((a, b))
            previous = is_match
    elif behavior == "merged_with_previous":
        spans, previous = [], False
        for a, b, is_match in marks:
            if spans and is_match and not previous:
                spans[-1] = (spans[-1][0], b)
            else:
                spans.append((a, b))
            previous = is_match
    else:                               # merged_with_next: the same, walking backwards
        spans, previous = [], False
        for a, b, is_match in reversed(marks):
            if spans and is_match and not previous:
                spans[-1] = (a, spans[-1][1])
            else:
                spans.append((a, b))
            previous = is_match
        spans.reverse()
    return [text[a:b] for a, b in spans]


def _behavior(value: str) -> str:
    # tokenizer.json writes "Isolated", "MergedWithPrevious"...; Python code passes "isolated"
    name = re.sub(r"(?<!^)(?=[A-Z])", "_", value).lower() if isinstance(value, str) else value
    if name not in _BEHAVIORS:
        raise ValueError(f"Wrong value for SplitDelimiterBehavior, expected one of: {', '.join(_BEHAVIORS)}")
    return name


class ByteLevel(PreTokenizer):
    """GPT-2's pre-tokenizer: optionally its regex split, then every UTF-8 byte as one character."""

    def __init__(self, add_prefix_space: bool = True, use_regex: bool = True, trim_offsets: bool = True):
        self.add_prefix_space, self.use_regex, self.trim_offsets = (bool(add_prefix_space), bool(use_regex),
                                                                     bool(trim_offsets))

    def _split(self, piece: str) -> list[str]:
        if self.add_prefix_space and not piece.startswith(" "):
            piece = " " + piece
        parts = split_matches(translate(GPT2_PATTERN), piece, "isolated") if self.use_regex else [piece]
        return [part.encode("utf-8").decode("latin-1").translate(_BYTE_CHARS) for part in parts]

    @staticmethod
    def alphabet() -> list[str]:
        """The 256 characters that spell bytes."""
        return list(_BYTE_CHARS.values())

    def to_json(self) -> dict:
        return {"type": "ByteLevel", "add_prefix_space": self.add_prefix_space, "trim_offsets": self.trim_offsets,
                "use_regex": self.use_regex}


class Digits(PreTokenizer):
    """Numerals (Rust's char::is_numeric: ², ٣, Ⅻ too) cut off: each alone, or runs of them together."""

    def __init__(self, individual_digits: bool = False):
        self.individual_digits = bool(individual_digits)

    def _split(self, piece: str) -> list[str]:
        return split_matches(char_class("numeric"), piece, "isolated" if self.individual_digits else "contiguous")

    def to_json(self) -> dict:
        return {"type": "Digits", "individual_digits": self.individual_digits}


class Split(PreTokenizer):
    """Cut at the matches of a pattern (a Regex, or a str matched literally)."""

    def __init__(self, pattern: str | Regex, behavior: str, invert: bool = False):
        if isinstance(pattern, Regex):
            self._compiled = pattern.compiled
        elif isinstance(pattern, str) and pattern:
            self._compiled = re.compile(re.escape(pattern))         # a str matches literally
        elif isinstance(pattern, str):
            raise unsupported("a Split on the empty string")
        else:
            raise TypeError(f"Split takes a str or a Regex pattern, got {type(pattern).__name__}")
        self.pattern = pattern
        self.behavior = _behavior(behavior)
        self.invert = bool(invert)

    def _split(self, piece: str) -> list[str]:
        return split_matches(self._compiled, piece, self.behavior, self.invert)

    def to_json(self) -> dict:
        pattern = {"Regex": self.pattern.pattern} if isinstance(self.pattern, Regex) else {"String": self.pattern}
        behavior = "".join(word.capitalize() for word in self.behavior.split("_"))
        return {"type": "Split", "pattern": pattern, "behavior": behavior, "invert": self.invert}


class Sequence(PreTokenizer):
    """Several pre-tokenizers, each applied to all the pieces the one before made."""

    def __init__(self, pretokenizers: list[PreTokenizer]):
        for step in pretokenizers:
            if not isinstance(step, PreTokenizer):
                raise TypeError(f"pre_tokenizers.Sequence takes pre-tokenizers, got {type(step).__name__}")
        self.pretokenizers = list(pretokenizers)

    def pre_tokenize_pieces(self, pieces: list[str]) -> list[str]:
        for step in self.pretokenizers:
            pieces = step.pre_tokenize_pieces(pieces)
        return pieces

    def _split(self, piece: str) -> list[str]:
        return self.pre_tokenize_pieces([piece])

    def to_json(self) -> dict:
        return {"type": "Sequence", "pretokenizers": [step.to_json() for step in self.pretokenizers]}


def from_json(state: dict) -> PreTokenizer:
    """The pre-tokenizer a tokenizer.json "pre_tokenizer" object describes."""
    kind = component_type(state, "pre_tokenizer")
    if kind == "ByteLevel":
        return ByteLevel(state.get("add_prefix_space", True), state.get("use_regex", True),
                         state.get("trim_offsets", True))
    if kind == "Digits":
        return Digits(state.get("individual_digits", False))
    if kind == "Split":
        pattern = state.get("pattern")
        if not isinstance(pattern, dict) or len(pattern) != 1 or not {"Regex", "String"} >= pattern.keys():
            raise ValueError(f"pre_tokenizer Split: expected a pattern {{\"Regex\": ...}} or {{\"String\": ...}}, "
                             f"got {pattern!r:.80}")
        value = Regex(pattern["Regex"]) if "Regex" in pattern else pattern["String"]
        return Split(value, state.get("behavior"), state.get("invert", False))
    if kind == "Sequence":
        return Sequence([from_json(step) for step in state.get("pretokenizers", [])])
    raise unsupported(f"the pre-tokenizer {kind!r}")


PreTokenizer._from_json = staticmethod(from_json)

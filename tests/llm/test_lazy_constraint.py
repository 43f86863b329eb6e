"""tool_choice "auto" under a lazy constraint (loom/llm/lazy_constraint.py): free text until the model
writes its format's call marker, then one call valid against the tools' call schema, then free text
again (llama.cpp's grammar triggers). A byte-level vocabulary with a few longer pieces stands in for a
tokenizer, so the marker can be cut between tokens, come with the call's first bytes, or be one token."""
import pytest

from loom.llm import lazy_constraint, tool_calls
from loom.llm.batch_requests import Request, plain_greedy
from loom.llm.json_constraint import JsonGrammar
from loom.llm.lazy_constraint import LazyConstraint
from loom.llm.token_mask import GrammarMasks, Vocabulary

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"], "additionalProperties": False}}}
EXTRA = [b"<tool", b"_call>", b"<tool_call>\n{", b"<tool_call>xyz", None]     # None: a special token's id
MARKER_ID = 256 + len(EXTRA) - 1
STOP = 256 + len(EXTRA)


@pytest.fixture(scope="module")
def vocab():
    return Vocabulary([bytes([b]) for b in range(256)] + EXTRA + [None])    # the last: an end-of-sequence id


def _lazy(vocab):
    schema = tool_calls.call_schema(tool_calls.check_tools([WEATHER]), tool_calls.FORMATS["hermes"])
    masks = GrammarMasks(JsonGrammar.from_schema(schema), vocab)
    return LazyConstraint(masks.constraint, vocab, "<tool_call>", [MARKER_ID])


def _push_text(constraint, text):
    for b in text.encode():
        constraint.push(b)


CALL = '\n{"name": "get_weather", "arguments": {"city": "Oslo"}}'


@pytest.mark.parametrize("marker", ["bytes", "two pieces", "one special token"])
def test_free_text_then_a_call_under_its_schema_then_free_text(vocab, marker):
    c = _lazy(vocab)
    _push_text(c, "Let me check. <tool_c")          # a marker not yet whole: free
    assert not c.masking and c.allowed([STOP]) is None and not c.finished
    if marker == "bytes":
        _push_text(c, "all>")
    else:
        c = _lazy(vocab)
        _push_text(c, "Let me check. ")
        for token in ([256, 257] if marker == "two pieces" else [MARKER_ID]):
            c.push(token)
    assert c.masking
    mask = c.allowed([STOP])
    assert mask[ord("\n")] and mask[ord("{")] and not mask[ord("x")] and not mask[STOP]
    for b in CALL.encode():
        assert c.masking and c.allowed([STOP])[b], chr(b)
        c.push(b)
    assert not c.masking and c.calls == 1            # the value closed: free again
    _push_text(c, "\n</tool_call>\nand more: <tool_call>")
    assert c.masking and c.calls == 2                 # the next call is constrained too


def test_the_markers_token_may_carry_the_calls_first_bytes(vocab):
    c = _lazy(vocab)
    c.push(258)                                       # "<tool_call>\n{": inside the object now
    mask = c.allowed([STOP])
    assert c.masking and mask[ord('"')] and not mask[ord("{")] and not mask[ord("}")]
    c = _lazy(vocab)
    c.push(259)                                       # "<tool_call>xyz" was chosen unmasked: left to the parser
    assert not c.masking and c.allowed([STOP]) is None


def test_a_call_that_does_not_validate_cannot_be_written(vocab):
    c = _lazy(vocab)
    _push_text(c, '<tool_call>{"name": "get_')
    mask = c.allowed([STOP])
    assert mask[ord("w")] and not mask[ord("t")]     # get_weather is the only tool
    _push_text(c, 'weather", "arguments": {')
    assert not c.allowed([STOP])[ord("}")]            # "city" is required


def test_greedy_decoding_keeps_its_plain_path_outside_calls(vocab):
    c = _lazy(vocab)
    request = Request([1, 2], constraint=c)
    assert plain_greedy(request)
    _push_text(c, "<tool_call>")
    assert not plain_greedy(request)
    _push_text(c, CALL)
    assert plain_greedy(request)


def test_formats_without_a_marker_or_schemas_outside_the_subset_stay_unconstrained(tmp_path):
    import os
    import sys
    sys.path.insert(0, os.path.dirname(__file__))
    import tiny_decoders as td

    from loom.llm.tokenizer import Tokenizer
    td.write_tokenizer(tmp_path)
    tok = Tokenizer.from_dir(tmp_path)
    tools = tool_calls.check_tools([WEATHER])
    assert lazy_constraint.for_tools(tools, tool_calls.FORMATS["llama3"], True, tok, td.VOCAB) is None
    odd = tool_calls.check_tools([{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"x": {"type": "string", "pattern": "a+"}}}}}])
    assert lazy_constraint.for_tools(odd, tool_calls.FORMATS["hermes"], True, tok, td.VOCAB) is None
    clash = tool_calls.check_tools([{"type": "function", "function": {"name": n, "parameters": {
        "type": "object", "$defs": {"d": {"type": t}}}}} for n, t in (("a", "string"), ("b", "integer"))])
    assert lazy_constraint.for_tools(clash, tool_calls.FORMATS["hermes"], True, tok, td.VOCAB) is None
    make = lazy_constraint.for_tools(tools, tool_calls.FORMATS["hermes"], True, tok, td.VOCAB)
    first, second = make(), make()
    assert first is not second and not first.started and not first.masking
    assert set(lazy_constraint.MARKERS) == {"hermes", "mistral"}


def test_mistrals_marker_opens_an_array_of_calls(vocab):
    schema = tool_calls.call_schema(tool_calls.check_tools([WEATHER]), tool_calls.FORMATS["mistral"])
    schema.pop("maxItems")                           # parallel calls (lazy_constraint.for_tools)
    c = LazyConstraint(GrammarMasks(JsonGrammar.from_schema(schema), vocab).constraint, vocab, "[TOOL_CALLS]")
    _push_text(c, "[TOOL_CALLS]")
    assert c.masking and not c.allowed([STOP])[ord("{")] and c.allowed([STOP])[ord("[")]
    _push_text(c, '[{"name": "get_weather", "arguments": {"city": "a"}}, ')
    assert c.masking and c.allowed([STOP])[ord("{")]
    _push_text(c, '{"name": "get_weather", "arguments": {"city": "b"}}]')
    assert not c.masking and c.calls == 1

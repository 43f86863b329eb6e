"""loom.llm.json_schema + json_constraint: the recognizer accepts exactly the JSON a schema allows (as
prefixes and as whole values), and refuses unsupported schemas naming the keyword's path;
loom.llm.token_mask: token bytes read from real tokenizers, and masks equal to trying every token."""
import json

import numpy as np
import pytest

from loom.errors import ConfigError, LoomError
from loom.llm.json_constraint import JsonGrammar
from loom.llm.json_schema import SchemaError
from loom.llm.token_mask import GrammarMasks, Vocabulary, token_pieces

jsonschema = pytest.importorskip("jsonschema")

PERSON = {"type": "object",
          "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 5},
                         "age": {"type": "integer"},
                         "email": {"type": ["string", "null"]},
                         "tags": {"type": "array", "items": {"enum": ["x", "y", 7]}, "minItems": 1, "maxItems": 2}},
          "required": ["name", "age"], "additionalProperties": False}

# (schema, complete values, prefixes that are not complete, rejected texts)
CASES = [
    ({"type": "string"},
     ['"plain"', '""', '"q\\"uo\\\\te\\/\\b\\f\\n\\r\\t"', '"\\u00e9t\\u00C9"', '"\\ud83d\\ude00 pair"', '"Grüße 東京 😀"',
      '"\x7f"'],
     ['"', '"abc', '"\\', '"\\u00', '"\\ud83d', '"\\ud83d\\', '"\\ud83d\\u', '"\\ud83d\\uDE'],
     ['"tab\there"', '"\\x41"', '"\\ud800"', '"\\ud83dx"', '"\\ude00"', '"\\u12g4"', 'abc', '"a"b', "'a'", '"a" ']),
    ({"type": "number"},
     ["0", "-0", "7", "-19", "3.25", "6.02e23", "1E-9", "2e+08", "-0.5E2"],
     ["-", "1.", "1e", "1e+", "-0."],
     ["01", "-01", ".5", "+1", "1.e3", "1e3.5", "--1", "1ee2", "0x10", "NaN", "Infinity", "1 "]),
    ({"type": "integer"}, ["0", "-7", "123456"], ["-"], ["1.0", "1e3", "2.", "-0.0"]),
    ({"type": "boolean"}, ["true", "false"], ["t", "fals"], ["True", "tru e", "null", "1"]),
    ({"type": ["null", "integer"]}, ["null", "42"], ["n"], ['"42"', "4.2", "true"]),
    ({"type": "number"}, ["1234567890123456", "0.1234567890123456", "1e99"], [],
     ["12345678901234567", "0.12345678901234567", "1e100"]),
    (PERSON,
     ['{"name":"Al","age":3}', '{"age": -1, "name": "Zoë"}', '{"name":"B","age":0,"email":null,"tags":["x",7]}',
      '{\n  "tags": ["y"],\n  "name": "C",\n  "email": "c@d",\n  "age": 99\n}'],
     ['{', '{"na', '{"name"', '{"name":', '{"name":"Al","age":3', '{"name":"Al",'],
     ['{"name":"Al"}', '{"age":3}', '{"name":"","age":3}', '{"name":"Albert","age":3}', '{"name":"Al","age":3.5}',
      '{"name":"Al","age":3,"name":"B"}', '{"name":"Al","age":3,"extra":1}', '{"name":"Al","age":3,"tags":[]}',
      '{"name":"Al","age":3,"tags":["x","y","x"]}', '{"name":"Al","age":3,"tags":["z"]}', '{"n\\u0061me":"A","age":1}',
      '{"name":"Al","age":3,}', '{"name" "Al"}', '{"name":"Al" "age":3}', '[]', '{"name":"Al","age":3}}']),
    ({"properties": {"id": {"type": "integer"}}, "required": ["id", "kind"]},       # no type: other values too
     ['{"id":1,"kind":[1,{"a":null}]}', '{"kind":"x","id":2,"more":{"deep":[true]}}', '"text"', '[1,2]', "null"],
     ['{"kind":0,"id":1', '{"id":1,"ki'],
     ['{"id":1}', '{"id":"1","kind":0}', '{"id":1,"kind":0,"id":2}', '{"i\\u0064":1,"kind":0}']),
    ({"type": "object", "additionalProperties": {"type": "integer"}},
     ['{}', '{"a":1,"b":-2}', '{"":0}', '{"é":1}'], ['{"a":1,'],
     ['{"a":"x"}', '{"a\\n":1}', '{"a":1.5}']),
    ({"type": "array", "items": {"type": "array", "items": {"type": "boolean"}, "maxItems": 1}, "minItems": 2},
     ['[[],[true]]', '[ [false], [], [] ]'], ['[', '[[]', '[[],'], ['[]', '[[]]', '[[true,false],[]]', '[[1],[]]']),
    ({"enum": ["red", 3, None, [1, 2], {"a": "b"}, 1.5]},
     ['"red"', "3", "null", "[1,2]", '{"a":"b"}', "1.5"], ['"re', "1", "[1,"],
     ['"blue"', "30", "1.50", '"Red"', "[1, 2]", "true"]),
    ({"enum": [1, 12, 123]}, ["1", "12", "123"], [], ["1234", "2", "13"]),
    ({"type": "string", "enum": ["a", 1, "bb"], "maxLength": 1}, ['"a"'], [], ["1", '"bb"']),
    ({"const": {"k": [True, None]}}, ['{"k":[true,null]}'], ['{"k":[true'], ['{"k":[true]}', '{"k": [true,null]}']),
    ({"anyOf": [{"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"],
                 "additionalProperties": False},
                {"type": "object", "properties": {"b": {"type": "string"}}, "required": ["b"],
                 "additionalProperties": False}]},
     ['{"a":1}', '{"b":"s"}'], ['{"', '{"a":1'], ['{"a":"s"}', '{"b":1}', '{"a":1,"b":"s"}', '{}']),
    ({"oneOf": [{"type": "string", "maxLength": 2}, {"type": "integer"}]}, ['"ab"', "5"], [], ['"abc"', "5.5"]),
    ({"allOf": [{"type": "boolean"}]}, ["true"], [], ["1"]),
    ({"type": "string", "minLength": 2, "maxLength": 3},
     ['"ab"', '"é😀x"', '"\\u00e9\\ud83d\\ude00"', '"\\n\\t"'], ['"a', '"😀'],
     ['"a"', '"abcd"', '"😀😀😀😀"', '"\\u00e9\\u00e9\\u00e9\\u00e9"']),
    ({"$defs": {"pt": {"type": "object", "properties": {"x": {"type": "number"}}, "required": ["x"],
                       "additionalProperties": False}},
      "type": "array", "items": {"$ref": "#/$defs/pt"}},
     ['[{"x":1},{"x":2.5}]', "[]"], ['[{"x"'], ['[{"y":1}]', '[{"x":"1"}]']),
    ({"definitions": {"color": {"enum": ["r", "g"]}}, "type": "object",
      "properties": {"c": {"$ref": "#/definitions/color"}}, "additionalProperties": False},
     ['{"c":"g"}', "{}"], [], ['{"c":"b"}']),
    ({"type": "object", "properties": {"kids": {"type": "array", "items": {"$ref": "#"}}, "v": {"type": "integer"}},
      "additionalProperties": False, "title": "tree", "description": "a recursive schema"},
     ['{"kids":[{"kids":[]},{"v":1,"kids":[{}]}]}', "{}"], ['{"kids":[{"kids":[{'], ['{"kids":[1]}', '{"w":1}']),
    ({"type": "object", "properties": {"never": False, "k": True}, "additionalProperties": False},
     ['{"k":[1,"x"]}', "{}"], [], ['{"never":1}']),
    ({"type": "object", "properties": {'q"\\\n': {"type": "null"}, "é": {"type": "null"}},
      "additionalProperties": False},
     ['{"q\\"\\\\\\n":null}', '{"é":null}'], ['{"q\\"'], ['{"q\\u0022\\\\\\n":null}', '{"e":null}']),
    ({"type": "object"},
     ['{}', ' {"a": [1, 2.5e-3, "x\\u00e9", true, null, {"b": {}}]}', '{\n\t\t"k": 1\n}'],
     ["{", '{"a"', '{"a":', "\n  {"],
     ["[]", "1", '"x"', "{ }  ", '{  "a":1}', '{\r\n"a":1}', '{"a":1} ', '{"a":01}', '{"a":tru}', '{"\\ud800":1}',
      "{\n" + " " * 21 + '"a":1}']),
]


@pytest.mark.parametrize("schema, whole, prefixes, rejected", CASES, ids=lambda c: json.dumps(c)[:40])
def test_recognizer_accepts_what_the_schema_allows(schema, whole, prefixes, rejected):
    g = JsonGrammar.from_schema(schema)
    for text in whole:
        assert g.accepts(text), text
        jsonschema.validate(json.loads(text), schema)          # the cases themselves are right
        data = text.encode()
        for cut in range(len(data)):
            assert g.accepts_prefix(data[:cut]), (text, cut)
    for text in prefixes:
        assert g.accepts_prefix(text) and not g.accepts(text), text
    for text in rejected:
        assert not g.accepts(text), text


def test_complete_values_end_or_go_on():
    g = JsonGrammar.from_schema({"enum": [1, 12]})
    state = g.advance(g.start(), b"1")
    assert g.complete(state) and g.can_continue(state)              # "1" is whole, "12" may follow
    state = g.advance(state, b"2")
    assert g.complete(state) and not g.can_continue(state)
    g = JsonGrammar.from_schema({"type": "integer"})
    state = g.advance(g.start(), b"0")                              # nothing may follow a leading 0
    assert g.complete(state) and not g.can_continue(state)
    state = g.advance(g.start(), b"-" + b"9" * 16)
    assert g.complete(state) and not g.can_continue(state)
    assert not g.advance(state, b"9")
    g = JsonGrammar.json_object()
    state = g.advance(g.start(), b'{"a":')
    assert not g.complete(state) and g.can_continue(state)
    state = g.advance(state, b"1}")
    assert g.complete(state) and not g.can_continue(state)


@pytest.mark.parametrize("data, ok", [
    (b'"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80"', True), (b'"\xc3("', False), (b'"\xc0\xaf"', False),
    (b'"\xe0\x80\xaf"', False), (b'"\xed\xa0\x80"', False), (b'"\xf4\x90\x80\x80"', False), (b'"\xff"', False),
    (b'"\xc3"', False), (b'"\x80"', False)])
def test_strings_are_well_formed_utf8(data, ok):
    assert JsonGrammar.from_schema({"type": "string"}).accepts(data) is ok


@pytest.mark.parametrize("schema, path", [
    ({"type": "string", "pattern": "a+"}, "s.pattern"),
    ({"type": "object", "properties": {"x": {"type": "string", "format": "date"}}}, "s.properties.x.format"),
    ({"anyOf": [{"type": "string"}, {"type": "integer", "minimum": 0}]}, "s.anyOf[1].minimum"),
    ({"$defs": {"a": {"type": "string", "pattern": "x"}}, "$ref": "#/$defs/a"}, "s.$defs.a.pattern"),
    ({"type": "array", "items": {"$ref": "https://example.com/s.json"}}, "s.items.$ref"),
    ({"$ref": "#/$defs/missing"}, "s.$ref"),
    ({"type": "strin"}, "s.type"),
    ({"type": "array", "items": [{"type": "string"}]}, "s.items"),
    ({"type": "array", "prefixItems": [{"type": "string"}]}, "s.prefixItems"),
    ({"allOf": [{"type": "string"}, {"maxLength": 3}]}, "s.allOf"),
    ({"type": "string", "anyOf": [{"maxLength": 3}]}, "s.type"),
    ({"type": "string", "minLength": 5, "maxLength": 2}, "s.maxLength"),
    ({"type": "array", "minItems": "3"}, "s.minItems"),
    ({"enum": []}, "s.enum"),
    ({"enum": [float("nan")]}, "s.enum"),
    ({"required": ["a"], "additionalProperties": False}, "s.required"),
    ({"type": "object", "properties": {"x": {"not": {}}}}, "s.properties.x.not"),
    ({"type": "object", "required": ["a"], "properties": {"a": False}}, "s"),
    ({"type": "string", "enum": [1, 2]}, "s.enum"),
    ({"type": "object", "properties": {"k": {"const": "x", "maxLength": 0}}}, "s.properties.k.const"),
    ({"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}, "s"),
    ({"type": "object", "properties": {"a": {"$id": "x"}}}, "s.properties.a.$id"),
    (["not", "a", "schema"], "s"),
])
def test_unsupported_schemas_name_the_path(schema, path):
    with pytest.raises(SchemaError) as info:
        JsonGrammar.from_schema(schema, path="s")
    assert info.value.path == path and isinstance(info.value, ConfigError), info.value
    assert str(info.value).startswith(path + ": ")


# --- token masks -------------------------------------------------------------------------------------
# A vocabulary of awkward pieces: a quote inside a piece, escapes cut in half, UTF-8 characters cut
# between tokens, surrogate pairs in two halves, whitespace runs, a control byte, duplicates.
PIECES = [None, b"{", b"}", b"[", b"]", b'"', b":", b",", b" ", b"\n", b"\t", b"  ", b"\n  ", b'{"', b'"}', b'":',
          b'",', b'", "', b'"a', b"a", b"b", b"ab", b"name", b'"name":', b"age", b"true", b"tr", b"ue", b"false",
          b"null", b"0", b"1", b"12", b"-", b".", b"e", b"E+", b"5e-", b"\\", b'\\"', b"\\n", b"\\u", b"00e9",
          b"\\ud83d", b"\\ude00", b"\xc3", b"\xa9", b"\xc3\xa9", b"\xe2\x82", b"\xac", b"\xf0\x9f\x98\x80", b"\x9f\x98",
          b'\x80"', b'x"}', b'"]', b"[]", b"{}", b"\x01", b' "', b"},{", b"1,", b"a\\", b"a", None]
EOS = 0
EVERY_BYTE = PIECES + [bytes([b]) for b in range(256)]       # with each byte: no value is ever stuck


def brute_force(grammar, state, pieces):
    return np.array([bool(p) and bool(grammar.advance(state, p)) for p in pieces])


def check_random_walks(grammar, pieces, walks=6, steps=40, seed=0):
    """Walk random allowed tokens; at each state the mask equals trying every token."""
    masks = GrammarMasks(grammar, Vocabulary(pieces))
    rng = np.random.default_rng(seed)
    states = 0
    for _ in range(walks):
        state = grammar.start()
        for _ in range(steps):
            mask = masks.mask(state)
            np.testing.assert_array_equal(mask, brute_force(grammar, state, pieces))
            states += 1
            if not mask.any():
                assert grammar.complete(state) and not grammar.can_continue(state)
                break
            state = grammar.advance(state, pieces[rng.choice(np.flatnonzero(mask))])
    return states


@pytest.mark.parametrize("schema", [
    PERSON, {"type": "object"}, CASES[7][0], CASES[18][0], CASES[22][0],
    {"type": "array", "items": {"type": "string", "maxLength": 2}},
    {"anyOf": [{"type": "object", "properties": {"ab": {"type": "integer"}}},      # two readings of each key
               {"type": "object", "properties": {"name": {"type": "string"}, "a": {"enum": [1, 12]}}}]}])
def test_masks_equal_trying_every_token(schema):
    assert check_random_walks(JsonGrammar.from_schema(schema), EVERY_BYTE) > 20


def test_constraint_allows_stop_ids_only_when_complete():
    masks = GrammarMasks(JsonGrammar.from_schema({"type": "integer"}), Vocabulary(PIECES))
    c = masks.constraint()
    assert c.vocab_size == len(PIECES) and not c.started
    allowed = c.allowed([EOS])
    assert {PIECES[i] for i in np.flatnonzero(allowed)} == {b"0", b"1", b"12", b"-", b" ", b"\n", b"\n  "}
    c.push(PIECES.index(b"12"))
    allowed = c.allowed([EOS])
    assert allowed[EOS] and allowed[PIECES.index(b"1")] and c.complete and not c.finished and c.started
    c.push(PIECES.index(b"0"))
    assert c.allowed([EOS])[EOS]
    with pytest.raises(LoomError, match="does not continue"):
        c.push(PIECES.index(b"{"))
    d = masks.constraint()
    assert d.allowed([EOS])[PIECES.index(b"0")]
    d.push(PIECES.index(b"0"))
    assert d.finished                      # a leading zero ends an integer: nothing may follow
    assert masks.stats["hits"] >= 1        # the start state's mask came from the cache the second time


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory):
    pytest.importorskip("tokenizers")
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).parent))
    import tiny_decoders as td

    from loom.llm.tokenizer import Tokenizer
    folder = tmp_path_factory.mktemp("tok")
    td.write_tokenizer(folder)
    return Tokenizer.from_dir(folder)


def test_byte_level_pieces_are_what_decode_gives(tiny_tokenizer):
    tok = tiny_tokenizer
    pieces = token_pieces(tok, tok.vocab_size + 4)
    assert pieces[tok.vocab_size:] == [None] * 4 and pieces[1] is None and pieces[2] is None    # <s>, </s>
    for i, p in enumerate(pieces[:tok.vocab_size]):
        if p is not None:
            assert tok.decode([i]) == p.decode("utf-8", errors="replace"), i
    rng = np.random.default_rng(1)
    for _ in range(20):
        ids = [i for i in rng.integers(3, tok.vocab_size, 12).tolist()]
        joined = b"".join(pieces[i] for i in ids)
        assert tok.decode(ids) == joined.decode("utf-8", errors="replace")


def test_masks_over_a_trained_vocabulary(tiny_tokenizer):
    pieces = token_pieces(tiny_tokenizer, tiny_tokenizer.vocab_size)
    for schema in (PERSON, {"type": "object"}):
        assert check_random_walks(JsonGrammar.from_schema(schema), pieces, walks=4, steps=30, seed=3) > 20


def test_sentencepiece_pieces():
    pytest.importorskip("tokenizers")
    from loom.llm.tokenizer import Tokenizer
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + \
        ["\u2581", "\u2581{", '"', '":', "ab", "\u2581ab", "é", "<|user|>"]
    types = [2, 3, 3] + [6] * 256 + [1] * 7 + [4]
    md = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens,
          "tokenizer.ggml.token_type": np.array(types, dtype=np.int32),
          "tokenizer.ggml.scores": np.array([0.0] * 259 + [-1.0, -2.0, -3.0, -4.0, -5.0, -6.0, -7.0, 0.0],
                                            dtype=np.float32),
          "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2, "tokenizer.ggml.unknown_token_id": 0}
    tok = Tokenizer.from_gguf(md)
    pieces = token_pieces(tok, tok.vocab_size)
    assert pieces[:3] == [None] * 3 and pieces[3 + ord("{")] == b"{" and pieces[3 + 0xC3] == b"\xc3"
    assert pieces[259:] == [b" ", b" {", b'"', b'":', b"ab", b" ab", "é".encode(), b"<|user|>"]
    ab = tokens.index("ab")
    for i in range(3, len(tokens)):          # after a first token (a leading space of the first is stripped)
        assert tok.decode([ab, i]) == (b"ab" + pieces[i]).decode("utf-8", errors="replace"), i
    assert tok.decode([3 + 0xC3, 3 + 0xA9, tokens.index("\u2581{")]) == "é {"


def test_wordpiece_tokenizers_are_refused():
    pytest.importorskip("tokenizers")
    from loom.llm.tokenizer import Tokenizer
    tokens = ["[UNK]", "[CLS]", "[SEP]", "\u2581a", "b"]
    md = {"tokenizer.ggml.model": "bert", "tokenizer.ggml.tokens": tokens,
          "tokenizer.ggml.token_type": np.array([2, 3, 3, 1, 1], dtype=np.int32),
          "tokenizer.ggml.unknown_token_id": 0}
    with pytest.raises(ConfigError, match="byte-level BPE or SentencePiece"):
        token_pieces(Tokenizer.from_gguf(md), 5)

"""loom.llm.tool_calls: OpenAI's tools and tool_choice checked (bad ones name their field), the call
format found from real chat templates' markers, replies parsed into calls (Hermes blocks, Llama 3.1 JSON)
with anything that does not parse left as content, one call's JSON Schema (its $defs at the root),
history tool calls handed to templates with their arguments as objects, and the content a stream may send
before a reply ends."""
import copy
import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loom.errors import ConfigError
from loom.llm import tool_calls as tc
from loom.llm.json_constraint import JsonGrammar

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time"}}
HERMES, LLAMA3 = tc.FORMATS["hermes"], tc.FORMATS["llama3"]
NAMES = ["get_weather", "get_time"]


def test_tools_are_checked_and_defaulted():
    tools = tc.check_tools([WEATHER, TIME])
    assert tools[1]["function"]["parameters"] == {"type": "object", "properties": {}}
    assert tools[0] == WEATHER


@pytest.mark.parametrize("tools, path", [
    ("x", "tools"), ([], "tools"), ([WEATHER] * 129, "tools"), ([{"type": "code"}], "tools[0]"),
    ([{"type": "function", "function": {"name": "bad name"}}], "tools[0].function.name"),
    ([{"type": "function", "function": {"name": "x" * 65}}], "tools[0].function.name"),
    ([WEATHER, WEATHER], "tools[1].function.name"),
    ([{"type": "function", "function": {"name": "f", "description": 3}}], "tools[0].function.description"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}], "tools[0].function.parameters"),
    ([{"type": "function", "function": {"name": "f", "strict": "yes"}}], "tools[0].function.strict"),
])
def test_bad_tools_name_their_field(tools, path):
    with pytest.raises(ConfigError) as info:
        tc.check_tools(tools)
    assert info.value.path == path


def test_tool_choice():
    tools = tc.check_tools([WEATHER, TIME])
    assert tc.check_choice(None, tools) == ("auto", None) and tc.check_choice(None, None) == ("none", None)
    assert tc.check_choice("required", tools) == ("required", None)
    assert tc.check_choice({"type": "function", "function": {"name": "get_time"}}, tools) == ("named", "get_time")
    assert tc.check_choice("none", None) == ("none", None)
    for choice, tools_, path in (("auto", None, "tool_choice"), ("sometimes", tools, "tool_choice"),
                                 ({"type": "function", "function": {"name": "nope"}}, tools, "tool_choice.function.name")):
        with pytest.raises(ConfigError) as info:
            tc.check_choice(choice, tools_)
        assert info.value.path == path


def test_formats_from_real_template_markers():
    qwen = "{%- if tools %}...<tools>{{ tool | tojson }}</tools>...<tool_call>\n{\"name\": <function-name>...{%- endif %}"
    llama = ("{%- if tools is not none %}...Respond in the format {\"name\": function name, \"parameters\": dictionary "
             "of argument name and its value}...{%- endif %}")
    assert tc.template_format(qwen) is HERMES and tc.template_format(llama) is LLAMA3
    assert tc.template_format("{% for m in messages %}{{ m.content }}{% endfor %}") is None
    assert tc.template_format(None) is None


def test_hermes_replies():
    text = ('Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>\n'
            '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>')
    content, calls = tc.parse(text, HERMES, NAMES)
    assert content == "Let me check."
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == \
        [("get_weather", {"city": "Oslo"}), ("get_time", {})]
    assert all(c["type"] == "function" and c["id"].startswith("call_") for c in calls) and calls[0]["id"] != calls[1]["id"]
    unclosed = '<tool_call>\n{"name": "get_time", "arguments": {}}'             # stopped at its end token
    assert tc.parse(unclosed, HERMES, NAMES)[1][0]["function"]["name"] == "get_time"
    cut = '<tool_call>{"name": "get_weather", "arguments": {"city": "Os'     # max_tokens: begun, so a call
    content, calls = tc.parse(cut, HERMES, NAMES)
    assert content is None and calls[0]["function"] == {"name": "get_weather", "arguments": '{"city": "Os'}
    for bad in ("just text", '<tool_call>{"name": "get_time"', '<tool_call>{"name": "nope", '
                '"arguments": {}}</tool_call>', '<tool_call>{"name": "get_time", "arguments": [1]}</tool_call>',
                '<tool_call>[1, 2]</tool_call>'):
        assert tc.parse(bad, HERMES, NAMES) == (bad, [])


def test_llama3_replies():
    content, calls = tc.parse(' {"name": "get_weather", "parameters": {"city": "Rome"}}', LLAMA3, NAMES)
    assert content is None and json.loads(calls[0]["function"]["arguments"]) == {"city": "Rome"}
    two = '{"name": "get_time", "parameters": {}}; {"name": "get_weather", "parameters": {"city": "Bern"}}'
    assert [c["function"]["name"] for c in tc.parse(two, LLAMA3, NAMES)[1]] == ["get_time", "get_weather"]
    for bad in ("The weather is fine.", '{"name": "get_time"', '{"name": "other", "parameters": {}}'):
        assert tc.parse(bad, LLAMA3, NAMES) == (bad, [])


def test_call_schema_compiles_and_hoists_defs():
    place = {"type": "function", "function": {"name": "visit", "parameters": {
        "type": "object", "properties": {"where": {"$ref": "#/$defs/place"}}, "required": ["where"],
        "$defs": {"place": {"type": "string", "enum": ["a", "b"]}}}}}
    tools = tc.check_tools([WEATHER, TIME, place])
    schema = tc.call_schema(tools, HERMES)
    assert len(schema["anyOf"]) == 3 and schema["$defs"] == {"place": {"type": "string", "enum": ["a", "b"]}}
    JsonGrammar.from_schema(schema, "tools")                          # the constraint machinery takes it
    named = tc.call_schema(tools, LLAMA3, "get_weather")
    assert named["properties"]["name"] == {"const": "get_weather"} and "parameters" in named["properties"]
    clash = {"type": "function", "function": {"name": "other", "parameters": {
        "type": "object", "properties": {}, "$defs": {"place": {"type": "integer"}}}}}
    with pytest.raises(ConfigError, match="differently"):
        tc.call_schema(tc.check_tools([place, clash]), HERMES)


def test_history_calls_reach_templates_as_objects():
    messages = [{"role": "assistant", "content": "", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_time", "arguments": '{"zone": "UTC"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "12:00"}]
    shown = tc.for_template(messages)
    assert shown[0]["tool_calls"][0]["function"]["arguments"] == {"zone": "UTC"} and shown[1] == messages[1]
    assert messages[0]["tool_calls"][0]["function"]["arguments"] == '{"zone": "UTC"}'     # not changed in place


HERMES_TEMPLATE = (
    "{%- if tools %}<s>system: tools:{% for t in tools %} {{ t.function.name }}{% endfor %}. Call one as "
    "<tool_call>{\"name\": ..., \"arguments\": ...}</tool_call></s>{% endif %}"
    "{%- for m in messages %}{% if m.tool_calls %}<s>assistant: {% for c in m.tool_calls %}<tool_call>"
    "{{ {'name': c.function.name, 'arguments': c.function.arguments} | tojson }}</tool_call>{% endfor %}</s>"
    "{% else %}<s>{{ m.role }}: {{ m.content }}</s>{% endif %}{% endfor %}"
    "{%- if add_generation_prompt %}<s>assistant: {% endif %}")


@pytest.fixture(scope="module")
def hermes(tmp_path_factory):
    """(model, folder): a tiny llama with 512 positions whose chat template takes tools (Hermes-style)."""
    pytest.importorskip("tokenizers")
    pytest.importorskip("jinja2")
    import tiny_decoders as td

    import loom.llm
    folder = tmp_path_factory.mktemp("tiny-hermes")
    td.save(td.build("llama", seed=3, max_position_embeddings=512), folder)
    td.write_tokenizer(folder, chat_template=HERMES_TEMPLATE)
    return loom.llm.load(folder), str(folder)


@pytest.fixture(scope="module")
def hermes_model(hermes):
    return hermes[0]


def test_chat_message_makes_forced_calls_and_plain_replies(hermes_model):
    import loom
    ask = [{"role": "user", "content": "weather?"}]
    # bounded arguments: a random model writes a free string or key as long as max_tokens lets it
    bounded = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}}, "required": ["city"],
               "additionalProperties": False}
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": bounded}},
             {"type": "function", "function": {"name": "get_time", "parameters": {
                 "type": "object", "properties": {}, "additionalProperties": False}}}]
    with loom.deterministic(True):
        forced = hermes_model.chat_message(ask, tools=tools, tool_choice="required", max_tokens=120, seed=2)
        named = hermes_model.chat_message(ask, tools=tools, max_tokens=120, seed=2,
                                          tool_choice={"type": "function", "function": {"name": "get_weather"}})
        none = hermes_model.chat_message(ask, tools=tools, tool_choice="none", max_tokens=5)
        auto = hermes_model.chat_message(ask, tools=tools, max_tokens=5)
        text = "".join(hermes_model.chat(ask, tools=tools, max_tokens=5))
    assert forced["content"] is None and forced["tool_calls"][0]["function"]["name"] in NAMES
    (call,) = named["tool_calls"]
    args = json.loads(call["function"]["arguments"])
    assert call["function"]["name"] == "get_weather" and set(args) == {"city"} and isinstance(args["city"], str)
    assert isinstance(none["content"], str) and "tool_calls" not in none
    assert auto["content"] == text or auto.get("tool_calls")           # auto: the same reply, parsed
    with pytest.raises(ConfigError) as info:
        hermes_model.chat_message(ask, tools=[{"type": "function", "function": {"name": "bad name"}}])
    assert info.value.path == "tools[0].function.name"


def test_a_template_without_tools_is_named(tmp_path):
    pytest.importorskip("tokenizers")
    pytest.importorskip("jinja2")
    import tiny_decoders as td

    import loom.llm
    td.save(td.build("llama", seed=3), tmp_path)
    td.write_tokenizer(tmp_path, chat_template=td.CHAT_TEMPLATE)
    with pytest.raises(ConfigError) as info:
        loom.llm.load(tmp_path).chat_message([{"role": "user", "content": "hi"}], tools=[TIME], max_tokens=2)
    assert info.value.path == "tools"


MISTRAL = tc.FORMATS["mistral"]


def test_mistral_replies_and_schema():
    text = '[TOOL_CALLS] [{"name": "get_time", "arguments": {}}, {"name": "get_weather", "arguments": {"city": "Nice"}}]'
    content, calls = tc.parse(text, MISTRAL, NAMES)
    assert content is None and [c["function"]["name"] for c in calls] == ["get_time", "get_weather"]
    assert tc.parse('[{"name": "get_time", "arguments": {}}]', MISTRAL, NAMES)[1]       # the marker dropped
    for bad in ("Sure.", "[TOOL_CALLS] [{\"name\": \"get_time\"", '[TOOL_CALLS] {"name": "get_time"}', "[1, 2]"):
        assert tc.parse(bad, MISTRAL, NAMES) == (bad, [])
    schema = tc.call_schema(tc.check_tools([WEATHER, TIME]), MISTRAL)
    assert schema["type"] == "array" and schema["minItems"] == schema["maxItems"] == 1
    JsonGrammar.from_schema(schema, "tools")
    assert tc.template_format("{%- if tools %}[AVAILABLE_TOOLS]...[TOOL_CALLS]{{ calls }}{% endif %}") is MISTRAL


def test_chat_message_forced_call_in_mistrals_array(tmp_path):
    pytest.importorskip("tokenizers")
    pytest.importorskip("jinja2")
    import tiny_decoders as td

    import loom
    import loom.llm
    template = ("{%- if tools %}<s>[AVAILABLE_TOOLS]{{ tools | tojson }}[/AVAILABLE_TOOLS]{% endif %}"
                "{%- for m in messages %}<s>{{ m.role }}: {{ m.content }}</s>{% endfor %}"
                "{%- if add_generation_prompt %}<s>assistant: {% endif %}{# calls: [TOOL_CALLS][...] #}")
    td.save(td.build("llama", seed=3, max_position_embeddings=1024), tmp_path)
    td.write_tokenizer(tmp_path, chat_template=template)
    tools = [{"type": "function", "function": {"name": "get_time", "parameters": {
        "type": "object", "properties": {}, "additionalProperties": False}}}]
    with loom.deterministic(True):
        reply = loom.llm.load(tmp_path).chat_message([{"role": "user", "content": "time?"}], tools=tools,
                                                     tool_choice="required", max_tokens=150, seed=1)
    function = reply["tool_calls"][0]["function"]
    assert reply["content"] is None and function["name"] == "get_time" and json.loads(function["arguments"]) == {}


def test_review_cases():
    """Semicolons inside a Llama call's strings, text before Mistral's marker, Mistral's 9-character ids,
    a $defs that is not an object, forced replies cut short, and history arguments that are objects or
    not JSON."""
    sql = '{"name": "get_weather", "parameters": {"city": "a; b"}} ; {"name": "get_time", "parameters": {}}'
    content, calls = tc.parse(sql, LLAMA3, NAMES)
    assert content is None and json.loads(calls[0]["function"]["arguments"]) == {"city": "a; b"} and len(calls) == 2
    content, calls = tc.parse('Sure. [TOOL_CALLS][{"name": "get_time", "arguments": {}}]', MISTRAL, NAMES)
    assert content == "Sure." and len(calls[0]["id"]) == 9 and calls[0]["id"].isalnum()
    bad = tc.check_tools([{"type": "function", "function": {"name": "f", "parameters": {"type": "object",
                                                                                        "$defs": [1]}}}])
    with pytest.raises(ConfigError) as info:
        tc.call_schema(bad, HERMES)
    assert info.value.path == "tools[0].function.parameters.$defs"
    assert tc.forced_progress('{"name": "get_time", "arguments": {}}', HERMES) == ("get_time", "{}")
    assert tc.forced_progress('[{"name": "get_time", "arguments": {"a": 1}}]', MISTRAL) == ("get_time", '{"a": 1}')
    for cut in ('{"name": "get_time", "argu', "", '{"name": "get_time"}', "[]", '{"name": 3, "arguments": {}}',
                '{"name": "get_ti', '{"arguments": {"a": 1}, "na'):
        name, arguments = tc.forced_progress(cut, MISTRAL if cut == "[]" else HERMES)
        assert name is None or arguments is None, cut
    history = [{"role": "assistant", "content": "", "tool_calls": [
        {"id": "a", "type": "function", "function": {"name": "f", "arguments": {"already": "an object"}}},
        {"id": "b", "type": "function", "function": {"name": "g", "arguments": "not json"}}]}]
    shown = tc.for_template(history)[0]["tool_calls"]
    assert shown[0]["function"]["arguments"] == {"already": "an object"} and shown[1]["function"]["arguments"] == "not json"


# pieces of replies in every format: markers whole and cut, names, JSON, words, whitespace
_PIECES = ["<tool_call>", "</tool_call>", "<tool", "[TOOL_CALLS]", "[TOOL", "[ARGS]", "[CALL_ID]a1b2c3d4e", "get_weather",
           "get_time", "get_", '{"name": "get_weather", "arguments": {"city": "Oslo"}}', '{"name": "get_time", '
           '"parameters": {}}', '[{"name": "get_time", "arguments": {}}]', '{"city": "Oslo"}', "{", "}", "[", "]",
           ";", " ", "\n", "Sure", "the weather", ".", "\u00e9t\u00e9"]


_CALLS = {"hermes": ['<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'],
          "llama3": ['{"name": "get_time", "parameters": {}}'],
          "mistral": ['[TOOL_CALLS][{"name": "get_time", "arguments": {}}]', '[{"name": "get_time", "arguments": {}}]'],
          "mistral_v11": ['[TOOL_CALLS]get_weather[ARGS]{"city": "Oslo"}', 'get_time{"zone": "UTC"}']}


def _streams_within_content(name: str, text: str) -> None:
    """For every prefix of the reply `text`, the content settled_content lets a stream send begins the
    content that parse finds in the whole reply: what was streamed is never taken back."""
    fmt = tc.FORMATS[name]
    content = tc.parse(text, fmt, NAMES)[0] or ""
    for end in range(len(text) + 1):
        settled = tc.settled_content(text[:end], fmt, NAMES)
        assert content.startswith(text[:settled]), (name, text, end)


@pytest.mark.parametrize("name", sorted(tc.FORMATS))
def test_streamed_content_around_calls_begins_the_replys_content(name):
    """Content before, after and without each call the format writes (its markers dropped too)."""
    for lead in ("", "Sure", "Sure ", " Sure", "Sure\n", "get_", "[", "{"):
        for call in [""] + _CALLS[name]:
            for tail in ("", " bye", "\n", " {"):
                _streams_within_content(name, lead + call + tail)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(tc.FORMATS)), st.lists(st.sampled_from(_PIECES), max_size=8))
def test_streamed_content_of_any_reply_begins_the_replys_content(name, pieces):
    _streams_within_content(name, "".join(pieces))


@pytest.mark.parametrize("name, text, settled", [
    ("hermes", "It is sunny in Oslo", 19), ("hermes", "Let me look. <tool_call>", 12), ("hermes", "Look <tool", 4),
    ("hermes", " leading space", 0), ("llama3", "{\"name\"", 0), ("llama3", "Sunny. ", 7),
    ("mistral", "[TOOL_CALLS][", 0), ("mistral", "Sunny [TOOL", 5), ("mistral_v11", "get_wea", 0),
    ("mistral_v11", "Sunny.", 6)])
def test_plain_text_streams_and_a_call_holds_back(name, text, settled):
    assert tc.settled_content(text, tc.FORMATS[name], NAMES) == settled


@pytest.mark.parametrize("fmt, reply, called, name, arguments", [
    (HERMES, '{"name": "get_weather", "arguments": {"city": "Oslo {x}", "unit": "c"}}', None, "get_weather",
     '{"city": "Oslo {x}", "unit": "c"}'),
    (HERMES, '\n\t{ "arguments" :\n{"city": "a,b"} ,\n "name": "get_weather" }', None, "get_weather",
     '{"city": "a,b"}'),                                                 # the constraint allows either order
    (HERMES, '{ "name" : "f", "arguments" : {"q": "a \\"}\\" b", "n": [1, {"m": []}]}}', None, "f",
     '{"q": "a \\"}\\" b", "n": [1, {"m": []}]}'),
    (LLAMA3, '{"name": "get_time", "parameters": {"zone": "UTC"}}', None, "get_time", '{"zone": "UTC"}'),
    (MISTRAL, '[{"name": "get_time", "arguments": {"zone": "]"}}]', None, "get_time", '{"zone": "]"}'),
    (HERMES, ' {"city": "Oslo"}', "get_weather", "get_weather", '{"city": "Oslo"}'),
])
def test_forced_progress_streams_the_arguments_as_written(fmt, reply, called, name, arguments):
    """A forced call's arguments as the model wrote them, found from every prefix of its reply: nothing
    before the name and the arguments' '{' are written, then a prefix of the final arguments each time
    (what a stream sends as it goes), the whole object once it closes, and the plain reply's call holds
    the same text; braces and quotes inside strings do not end it."""
    for only in (None, name):                   # the name read from the reply, or known beforehand
        seen = ""
        for end in range(len(reply) + 1):
            got_name, got = tc.forced_progress(reply[:end], fmt, called, only)
            if got_name is None or got is None:
                assert seen == ""
                continue
            assert got_name == name and got.startswith(seen) and arguments.startswith(got)
            seen = got
        assert seen == arguments
        content, calls = tc.reply(reply + " trailing", fmt, NAMES + ["f"], True, called=called, only=only)
        assert content is None and calls[0]["function"] == {"name": name, "arguments": arguments}
        assert tc.whole_arguments(calls[0])
    cut = reply[:reply.index(arguments) + len(arguments) - 2]           # max_tokens or a stop string
    content, calls = tc.reply(cut, fmt, NAMES + ["f"], True, called=called, only=name)
    assert content is None and arguments.startswith(calls[0]["function"]["arguments"])
    assert not tc.whole_arguments(calls[0])
    assert tc.forced_only([{"function": {"name": "a"}}]) == "a" and tc.forced_only([{}, {}]) is None
    assert tc.forced_only([{}, {}], "b") == "b"


def test_forced_stream_gives_forced_progress_for_every_prefix_in_one_pass():
    """tool_calls.ForcedStream (the server's, a reply growing token by token) agrees with forced_progress at
    every prefix, in both key orders, the arrays and the arguments alone, a long call's too."""
    cases = [(HERMES, '{"name": "get_weather", "arguments": {"city": "a \\\\"}{ b", "n": [1, {"m": 2}]}}', None),
             (HERMES, ' {"arguments": {"zone": "UTC"}, "name": "get_time"}', None),
             (MISTRAL, '[{"name": "get_time", "arguments": {"zone": "x]"}}]', None),
             (HERMES, ' {"city": "Oslo", "n": 3}', "get_weather")]
    for fmt, reply, called in cases:
        for step in (1, 3, 7):
            scan = tc.ForcedStream(fmt, called)
            for end in list(range(0, len(reply), step)) + [len(reply)]:
                assert scan.progress(reply[:end]) == tc.forced_progress(reply[:end], fmt, called), (reply, end)
    body = '{"name": "get_time", "arguments": {"zone": "' + "x" * 40000 + '"}}'
    scan = tc.ForcedStream(HERMES)
    for end in range(0, len(body), 4):
        scan.progress(body[:end])
    assert scan.progress(body)[1] == body[body.index('{"zone"'):-1] and scan.at == len(body) - 1


V11 = tc.FORMATS["mistral_v11"]
# auto replies in each format: content before, between and after calls, one and two calls, the keys in either
# order, braces, brackets, quotes and markers inside strings, calls that are no calls; with what the whole
# reply's message is: (content, [(name, arguments)])
_AUTO = [
    (HERMES, 'Let me check. <tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo {x} \\"q\\" }"}}\n'
             '</tool_call> Done.', ("Let me check.  Done.", [("get_weather", '{"city": "Oslo {x} \\"q\\" }"}')])),
    (HERMES, '<tool_call>\n{"name": "get_weather", "arguments": {"city": "a}b"}}\n</tool_call>\n<tool_call>\n'
             '{"arguments": {"zone": "<tool_call>"}, "name": "get_time"}\n</tool_call>\nBye {now}.',
     ("Bye {now}.", [("get_weather", '{"city": "a}b"}'), ("get_time", '{"zone": "<tool_call>"}')])),
    (HERMES, '\n Sure <tool_call>{"name": "get_time", "arguments": {}}</tool_call>', ("Sure", [("get_time", "{}")])),
    (HERMES, '<tool_call>{"name": "nope", "arguments": {}}</tool_call> then <tool_call>{"name": "get_time", '
             '"arguments": {"q": "[TOOL_CALLS]"}}</tool_call>',
     ('<tool_call>{"name": "nope", "arguments": {}}</tool_call> then', [("get_time", '{"q": "[TOOL_CALLS]"}')])),
    (HERMES, "Just text with <tool and {braces}. ", ("Just text with <tool and {braces}. ", [])),
    (MISTRAL, 'Sure. [TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "x]}{"}}]',
     ("Sure.", [("get_weather", '{"city": "x]}{"}')])),
    (MISTRAL, '[TOOL_CALLS] [{"name": "get_time", "arguments": {}}, {"name": "get_weather", "arguments": '
              '{"city": "a, \\"b\\""}}] after', ("after", [("get_time", "{}"), ("get_weather", '{"city": "a, \\"b\\""}')])),
    (MISTRAL, ' [{"name": "get_time", "arguments": {"zone": "UTC"}}]', (None, [("get_time", '{"zone": "UTC"}')])),
    (MISTRAL, '[TOOL_CALLS][{"name": "get_time", "arguments": {}}, {"name": "nope"}] tail', ("tail", [("get_time", "{}")])),
    (MISTRAL, "[1, 2] is a list", ("[1, 2] is a list", [])),
    (V11, 'Let me look. [TOOL_CALLS]get_weather[ARGS]{"city": "Oslo{}"}', ("Let me look.",
                                                                          [("get_weather", '{"city": "Oslo{}"}')])),
    (V11, '[TOOL_CALLS]get_weather[CALL_ID]a1B2c3D4e[ARGS]{"city": "}"}[TOOL_CALLS]get_time[ARGS]{"zone": "UTC"} Done.',
     ("Done.", [("get_weather", '{"city": "}"}'), ("get_time", '{"zone": "UTC"}')])),
    (V11, 'get_time{"zone": "a\\"}"} get_weather{"city": "Rome"}', (None, [("get_time", '{"zone": "a\\"}"}'),
                                                                      ("get_weather", '{"city": "Rome"}')])),
    (V11, "get_timezone is not a tool", ("get_timezone is not a tool", [])),
    (LLAMA3, '{"name": "get_time", "parameters": {"zone": "UTC"}}; {"name": "get_weather", "parameters": {"city": '
             '"a; b"}}', (None, [("get_time", '{"zone": "UTC"}'), ("get_weather", '{"city": "a; b"}')])),
    (LLAMA3, "Sunny {today}.", ("Sunny {today}.", [])),
]


def _assembled(deltas) -> tuple[str, list[list[str]]]:
    """The content and the [name, arguments] of each call that a stream's deltas add up to, as a client
    assembles them (a call's head, then its arguments, before the next call's head)."""
    content, calls = "", []
    for kind, k, piece in deltas:
        if kind == "content":
            content += piece
        elif kind == "call":
            assert k == len(calls)
            calls.append([piece, ""])
        else:
            assert kind == "arguments" and k == len(calls) - 1
            calls[k][1] += piece
    return content, calls


def _plain(text, fmt, parallel) -> tuple[str, list[list[str]]]:
    content, calls = tc.reply(text, fmt, NAMES, False, parallel)
    return content or "", [[c["function"]["name"], c["function"]["arguments"]] for c in calls]


@pytest.mark.parametrize("fmt, text, want", _AUTO)
def test_auto_calls_stream_as_they_come_and_add_up_to_the_plain_reply(fmt, text, want):
    """tool_choice auto, streamed (tool_calls.reply_stream, the server's): the reply fed a prefix at a time,
    a character or a few (a token's text), and finished at any point (max_tokens, a stop string, the end):
    the content and each call's arguments streamed add up to the plain reply's message for that same text,
    and what was streamed before the end is never taken back by what the whole reply's message holds. A
    call's head goes out once its name and its arguments' '{' are read, and its arguments as they come
    (Llama 3's format: at the end, its calls being bare JSON)."""
    assert tc.parse(text, fmt, NAMES)[0] == want[0]
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in tc.parse(text, fmt, NAMES)[1]] == want[1]
    for parallel in (True, False):
        final = _plain(text, fmt, parallel)
        for step in (1, 3, 7):
            stream, sent = tc.reply_stream(fmt, NAMES, False, parallel), []
            for end in list(range(0, len(text), step)) + [len(text)]:
                sent += stream.feed(text[:end])
                content, calls = _assembled(sent)
                assert final[0].startswith(content), (text, end)            # never taken back
                assert len(calls) <= len(final[1]) and all(
                    got[0] == whole[0] and whole[1].startswith(got[1]) for got, whole in zip(calls, final[1]))
                ended = copy.deepcopy(stream).finish(text[:end])             # the reply ends here
                assert _assembled(sent + ended) == _plain(text[:end], fmt, parallel), (text, end, step)
    if want[1] and fmt is not LLAMA3:                                       # the first call, as it is generated
        stream, sent = tc.reply_stream(fmt, NAMES, False), []
        named = text.index(want[1][0][0] if fmt is V11 else f'"{want[1][0][0]}"')      # (its name comes first)
        opened = text.index("{", named if fmt is V11 else text.index('"arguments"', named))
        for end in range(opened + 1):
            sent += stream.feed(text[:end + 1])
        assert ("call", 0, want[1][0][0]) in sent
        for end in range(opened + 1, len(text) + 1):
            sent += stream.feed(text[:end])
        pieces = [d for d in sent if d[0] == "arguments" and d[1] == 0]
        assert len(pieces) == len(want[1][0][1]), pieces                    # a character at a time


def test_auto_streams_read_a_long_reply_once():
    """A long reply streamed 4 characters at a time takes linear time: each reader resumes where it stopped
    (a whole rescan at every token took 7.5 s at 28k characters)."""
    long = "x" * 30000
    replies = [(HERMES, "Sure. " + long + ' <tool_call>{"name": "get_time", "arguments": {"zone": "' + long + '"}}'),
               (MISTRAL, '[TOOL_CALLS][{"name": "get_time", "arguments": {"zone": "' + long + '"}}] ' + long),
               (V11, 'get_time{"zone": "' + long + '"} ' + long),
               (HERMES, "Sure." + "\n" * 30000 + '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>' + " " * 30000)]
    for fmt, text in replies:
        began = time.perf_counter()
        stream, sent = tc.reply_stream(fmt, NAMES, False), []
        for end in range(0, len(text), 4):
            sent += stream.feed(text[:end])
        sent += stream.finish(text)
        assert time.perf_counter() - began < 3, fmt.name
        assert _assembled(sent) == _plain(text, fmt, True)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(tc.FORMATS)), st.lists(st.sampled_from(_PIECES), max_size=8), st.booleans())
def test_any_auto_reply_streams_what_the_plain_reply_holds(name, pieces, parallel):
    """Random replies (markers whole and cut, names, JSON, words): streamed a character at a time and
    ended anywhere, the deltas add up to the plain reply's message for that text."""
    fmt, text = tc.FORMATS[name], "".join(pieces)
    stream, sent = tc.reply_stream(fmt, NAMES, False, parallel), []
    for end in range(len(text) + 1):
        sent += stream.feed(text[:end])
        ended = copy.deepcopy(stream).finish(text[:end])
        assert _assembled(sent + ended) == _plain(text[:end], fmt, parallel), (text, end)

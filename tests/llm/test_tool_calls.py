"""loom.llm.tool_calls: OpenAI's tools and tool_choice checked (bad ones name their field), the call
format found from real chat templates' markers, replies parsed into calls (Hermes blocks, Llama 3.1 JSON)
with anything that does not parse left as content, one call's JSON Schema (its $defs at the root), and
history tool calls handed to templates with their arguments as objects."""
import json

import pytest

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
    for bad in ("just text", '<tool_call>{"name": "get_time", "arguments": {}', '<tool_call>{"name": "nope", '
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

"""Tool calling with the chat templates real models ship (issue 62): Qwen2.5, Qwen3, Hermes 3, Llama 3.1 and
3.2, Mistral Nemo and Mistral Small 3.2, as llama.cpp keeps them for its own tests (models/templates in
llama-cpp-python's source archive, fetched once into the test-data cache, each file pinned by its hash).
Each is recognised in its call format; a conversation with tools, an assistant's calls (OpenAI's null
content beside them) and the tool's answer renders; a call written as the model writes it parses, and
fed back renders in the template's own form; and a tiny random model with the template makes forced
calls whose arguments validate."""
import json

import datacache
import pytest

import loom
from loom.errors import ConfigError
from loom.llm import chat
from loom.llm import tool_calls as tc

SDIST = "llama-cpp-python==0.3.36"
FOLDER = "llama_cpp_python-0.3.36/vendor/llama.cpp/models/templates/"
# file: (call format, SHA-256)
TEMPLATES = {
    "Qwen-Qwen2.5-7B-Instruct": ("hermes", "cd8e9439f0570856fd70470bf8889ebd8b5d1107207f67a5efb46e342330527f"),
    "Qwen-Qwen3-0.6B": ("hermes", "87a2728cb8dc9fe424d624542f6060ec05a1d285ebbec578bb078900e33396b5"),
    "NousResearch-Hermes-3-Llama-3.1-8B-tool_use":
        ("hermes", "7ce09d55d3690e06c70b5c07228cc7e8c99c43a23cdc027762be4011efcdea6c"),
    "meta-llama-Llama-3.1-8B-Instruct": ("llama3", "e10ca381b1ccc5cf9db52e371f3b6651576caee0a630b452e2816b2d404d4b65"),
    "meta-llama-Llama-3.2-3B-Instruct": ("llama3", "5816fce10444e03c2e9ee1ef8a4a1ea61ae7e69e438613f3b17b69d0426223a4"),
    "mistralai-Mistral-Nemo-Instruct-2407":
        ("mistral", "e4676cb56dffea7782fd3e2b577cfaf1e123537e6ef49b3ec7caa6c095c62272"),
    "Mistral-Small-3.2-24B-Instruct-2506":
        ("mistral_v11", "5b8f31f11198696548d544dbe424a3c1ef244d00a475f4e1bffb351fda085608"),
}
# a bounded schema: a random model fills an unbounded string until max_tokens runs out
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city now",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                                    "unit": {"enum": ["c", "f"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {"name": "get_time", "description": "The time in a zone", "parameters": {
    "type": "object", "properties": {"zone": {"type": "string", "maxLength": 8}}, "required": ["zone"],
    "additionalProperties": False}}}
# a call as each format's models write it
WRITTEN = {
    "hermes": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "c"}}\n</tool_call>',
    "llama3": '{"name": "get_weather", "parameters": {"city": "Oslo", "unit": "c"}}',
    "mistral": '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "c"}}]',
    "mistral_v11": '[TOOL_CALLS]get_weather[ARGS]{"city": "Oslo", "unit": "c"}',
}
ASK = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "weather in Oslo?"}]


@pytest.fixture(scope="module", params=sorted(TEMPLATES))
def template(request):
    pytest.importorskip("jinja2")
    fmt, digest = TEMPLATES[request.param]
    path = datacache.fetch_sdist_file(SDIST, FOLDER + request.param + ".jinja", sha256=digest)
    return request.param, tc.FORMATS[fmt], path.read_text(encoding="utf-8")


def _render(text, messages, tools):
    return chat.render(text, tc.for_template(messages), tools=tools, bos_token="<s>", eos_token="</s>")


def test_the_template_names_its_call_format(template):
    name, fmt, text = template
    assert tc.template_format(text) is fmt, name


def test_a_call_as_the_model_writes_it_parses_and_renders_back(template):
    """The model's own call text -> message.tool_calls (null content, as OpenAI sends it) -> the history
    the template renders, with the tool's answer: the call comes back in the template's form."""
    name, fmt, text = template
    tools = tc.check_tools([WEATHER, TIME])
    content, calls = tc.parse(WRITTEN[fmt.name], fmt, ["get_weather", "get_time"])
    assert content is None and len(calls) == 1, name
    assert calls[0]["function"]["name"] == "get_weather"
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Oslo", "unit": "c"}
    history = ASK + [{"role": "assistant", "content": None, "tool_calls": calls},
                     {"role": "tool", "tool_call_id": calls[0]["id"], "content": "4 degrees"}]
    prompt = _render(text, history, tools)
    assert "get_time" in prompt and "4 degrees" in prompt and '"Oslo"' in prompt, name
    assert prompt.count("get_weather") >= 2                     # the tool, and the call made with it
    if fmt.name == "mistral_v11":
        assert f"[TOOL_CALLS]get_weather[CALL_ID]{calls[0]['id']}[ARGS]" in prompt
    assert _render(text, history[:3], tools) != _render(text, ASK, tools)


def test_mistral_v11_calls_parse_without_their_markers_and_several_at_once():
    fmt, names = tc.FORMATS["mistral_v11"], ["get_weather", "get_time", "get"]
    content, calls = tc.parse('Let me look. [TOOL_CALLS]get_weather[ARGS]{"city": "Oslo"}[TOOL_CALLS]get_time'
                              '[CALL_ID]a1B2c3D4e[ARGS]{"zone": "UTC"}', fmt, names)
    assert content == "Let me look." and [c["function"]["name"] for c in calls] == ["get_weather", "get_time"]
    assert all(len(c["id"]) == 9 and c["id"].isalnum() for c in calls)
    assert tc.parse('get_weather{"city": "Oslo"}', fmt, names)[1][0]["function"]["name"] == "get_weather"
    for text in ("get_weather", "[TOOL_CALLS]nope[ARGS]{}", '[TOOL_CALLS]get_weather[ARGS]["Oslo"]',
                 "the weather is fine", "get_weather is the one"):
        assert tc.parse(text, fmt, names) == (text, [])
    content, calls = tc.parse('[TOOL_CALLS]get_weather[ARGS]{"city": ', fmt, names)    # begun, then cut short
    assert content is None and calls[0]["function"] == {"name": "get_weather", "arguments": '{"city": '}


def test_a_tiny_model_with_the_template_makes_forced_calls(template, tmp_path):
    """chat_message with tool_choice required (one tool) and named (two tools): one call whose arguments
    validate against the function's parameters, its id in the format's shape; mistral_v11 refuses
    'required' among several tools (it writes the name before the JSON the constraint decodes)."""
    pytest.importorskip("tokenizers")
    import tiny_decoders as td
    name, fmt, text = template
    td.save(td.build("llama", seed=5, max_position_embeddings=4096), tmp_path)
    td.write_tokenizer(tmp_path, chat_template=text)
    model = loom.llm.load(tmp_path)
    named = {"type": "function", "function": {"name": "get_time"}}
    with loom.deterministic(True):
        required = model.chat_message(ASK, tools=[WEATHER], tool_choice="required", max_tokens=600, seed=3)
        chosen = model.chat_message(ASK, tools=[WEATHER, TIME], tool_choice=named, max_tokens=600, seed=3)
    for message, tool in ((required, WEATHER), (chosen, TIME)):
        assert message["content"] is None, (name, message)
        (call,) = message["tool_calls"]
        assert call["function"]["name"] == tool["function"]["name"]
        args = json.loads(call["function"]["arguments"])
        schema = tool["function"]["parameters"]
        assert set(args) == set(schema["required"]), (name, args)
        for key, value in args.items():
            spec = schema["properties"][key]
            assert value in spec["enum"] if "enum" in spec else len(value) <= spec["maxLength"]
        assert len(call["id"]) == 9 if fmt.name.startswith("mistral") else call["id"].startswith("call_")
    if fmt.name == "mistral_v11":
        with pytest.raises(ConfigError) as info:
            model.chat_message(ASK, tools=[WEATHER, TIME], tool_choice="required", max_tokens=4)
        assert info.value.path == "tool_choice"

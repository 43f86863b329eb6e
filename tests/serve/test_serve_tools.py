"""Tool calling through `loom serve` and the official openai client (issue 62), on a tiny random model
whose chat template takes tools in the Hermes format (as Qwen2.5's and Qwen3's do): tool_choice
"required" and a named function give calls whose arguments validate against the function's parameters
(constrained decoding), streamed as OpenAI streams them (the same calls as plain); "auto" and "none"
answer; tool results fed back render; bad tools, choices and combinations are 400s naming the field;
a model whose template takes no tools refuses them."""
import json
import os
import sys

import pytest
import serve_extras

import loom
import loom.llm

openai, httpx = serve_extras.need()

from test_openai_server import HELLO, Running, lm, served  # noqa: E402, F401  (a server whose template takes no tools)

from loom.serve import Server  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "llm"))
import tiny_decoders as td  # noqa: E402

HERMES_TEMPLATE = (
    "{%- if tools %}<s>system: tools:{% for t in tools %} {{ t.function.name }}{% endfor %}. Call one as "
    "<tool_call>{\"name\": ..., \"arguments\": ...}</tool_call></s>{% endif %}"
    "{%- for m in messages %}{% if m.role == 'tool' %}<s>tool: {{ m.content }}</s>"
    "{% elif m.tool_calls %}<s>assistant: {% for c in m.tool_calls %}<tool_call>"
    "{{ {'name': c.function.name, 'arguments': c.function.arguments} | tojson }}</tool_call>{% endfor %}</s>"
    "{% else %}<s>{{ m.role }}: {{ m.content }}</s>{% endif %}{% endfor %}"
    "{%- if add_generation_prompt %}<s>assistant: {% endif %}")
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 12}, "unit": {"enum": ["c", "f"]}},
        "required": ["city", "unit"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"zone": {"type": "string", "maxLength": 8}}, "required": ["zone"],
    "additionalProperties": False}}}
ASK = [{"role": "user", "content": "weather in Oslo?"}]


@pytest.fixture(scope="module")
def tooled(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-tools")
    td.save(td.build("llama", seed=11, max_position_embeddings=512), folder)
    td.write_tokenizer(folder, chat_template=HERMES_TEMPLATE)
    model = loom.llm.load(folder)
    with loom.deterministic(True):
        running = Running(Server(model, "tiny", max_batch=4, max_queue=16))
    yield running
    running.close()


def _valid(call, tool):
    args = json.loads(call.function.arguments)
    assert call.type == "function" and call.id.startswith("call_") and call.function.name == tool["function"]["name"]
    schema = tool["function"]["parameters"]
    assert set(args) == set(schema["required"])
    for key, value in args.items():
        spec = schema["properties"][key]
        assert value in spec["enum"] if "enum" in spec else isinstance(value, str) and len(value) <= spec["maxLength"]
    return args


@pytest.mark.parametrize("choice, tool", [("required", None), ({"type": "function", "function": {"name": "get_time"}},
                                                                TIME)])
def test_forced_calls_validate_and_stream_as_openai_streams_them(tooled, choice, tool):
    client = tooled.client
    plain = client.chat.completions.create(model="tiny", messages=ASK, tools=[WEATHER, TIME], tool_choice=choice,
                                           max_tokens=80, seed=5)
    assert plain.choices[0].finish_reason == "tool_calls" and plain.choices[0].message.content is None
    (call,) = plain.choices[0].message.tool_calls
    want_tool = tool or {"get_weather": WEATHER, "get_time": TIME}[call.function.name]
    args = _valid(call, want_tool)
    chunks = list(client.chat.completions.create(model="tiny", messages=ASK, tools=[WEATHER, TIME], tool_choice=choice,
                                                 max_tokens=80, seed=5, stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    head = deltas[0].tool_calls[0]
    assert head.index == 0 and head.id.startswith("call_") and head.function.name == call.function.name
    assert head.function.arguments == ""
    streamed = "".join(d.tool_calls[0].function.arguments or "" for d in deltas[1:])
    assert streamed == call.function.arguments and json.loads(streamed) == args    # the plain reply's call
    assert len(deltas) > 4, "the arguments came in one piece, not as they were generated"
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_auto_and_none_answer_and_results_feed_back(tooled):
    client = tooled.client
    for choice in ("auto", "none"):
        reply = client.chat.completions.create(model="tiny", messages=ASK, tools=[WEATHER], tool_choice=choice,
                                               max_tokens=8, temperature=0)
        choice0 = reply.choices[0]
        assert choice0.finish_reason in ("stop", "length", "tool_calls")
        assert choice0.message.content is not None or choice0.message.tool_calls
    history = ASK + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo", "unit": "c"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "4 degrees"}]
    reply = client.chat.completions.create(model="tiny", messages=history, tools=[WEATHER], max_tokens=6, temperature=0)
    assert reply.usage.prompt_tokens > len(HERMES_TEMPLATE) // 10 and reply.choices[0].finish_reason


@pytest.mark.parametrize("extra, param", [
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice.function.name"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [WEATHER] * 129}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
        "x": {"type": "string", "pattern": "a+"}}}}}], "tool_choice": "required"},
     "tools[0].function.parameters.properties.x.pattern"),
    ({"tools": [WEATHER], "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    ({"tools": [WEATHER], "logprobs": True}, "logprobs"),
    ({"tools": [WEATHER], "tool_choice": "required", "response_format": {"type": "json_object"}}, "response_format"),
])
def test_bad_tool_requests_are_400s_naming_the_field(tooled, extra, param):
    response = httpx.post(tooled.url + "/v1/chat/completions", json={"model": "tiny", "messages": ASK, **extra},
                          timeout=60)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_a_template_without_tools_refuses_them(served):  # noqa: F811
    response = httpx.post(served.url + "/v1/chat/completions", json={"model": "tiny", "messages": HELLO,
                                                                      "tools": [WEATHER]}, timeout=60)
    assert response.status_code == 400 and response.json()["error"]["param"] == "tools"
    assert "chat template" in response.json()["error"]["message"]
    none = httpx.post(served.url + "/v1/chat/completions", json={"model": "tiny", "messages": HELLO, "max_tokens": 2,
                                                                  "tools": [WEATHER], "tool_choice": "none"}, timeout=60)
    assert none.status_code == 200                                     # "none": the template sees no tools


def _streamed(lines):
    """The message and finish reason a stream of chunk lines adds up to (content, one call's head and
    arguments), as a client assembles them."""
    content, call, reason = "", None, None
    for line in lines[:-1]:
        choice = json.loads(line[6:])["choices"][0]
        delta = choice["delta"]
        content += delta.get("content") or ""
        for piece in delta.get("tool_calls") or []:
            call = call or {"name": piece["function"]["name"], "arguments": ""}
            call["arguments"] += piece["function"]["arguments"]
        reason = choice["finish_reason"] or reason
    return (content or None), call, reason


def test_a_forced_call_cut_short_keeps_its_arguments_as_far_as_they_got(tooled):
    """As OpenAI returns a call that max_tokens or a stop string cuts: its arguments as written so far and
    that finish reason; cut before its arguments began it is content. Streamed as plain."""
    for extra, started in (({"stop": ["}"]}, True), ({"max_tokens": 3}, False)):
        body = {"model": "tiny", "messages": ASK, "tools": [WEATHER], "tool_choice": "required", "seed": 5,
                "max_tokens": 360, **extra}
        plain = httpx.post(tooled.url + "/v1/chat/completions", json=body, timeout=60)
        assert plain.status_code == 200, plain.text
        choice = plain.json()["choices"][0]
        message = choice["message"]
        assert choice["finish_reason"] == ("stop" if "stop" in extra else "length")
        if started:
            (call,) = message["tool_calls"]
            assert message["content"] is None and call["function"]["name"] == "get_weather"
            arguments = call["function"]["arguments"]
            assert arguments.lstrip().startswith("{") and "}" not in arguments
        else:
            assert "tool_calls" not in message and message["content"].lstrip().startswith("{")
        with httpx.stream("POST", tooled.url + "/v1/chat/completions", json={**body, "stream": True},
                          timeout=60) as response:
            lines = [line for line in response.iter_lines() if line.startswith("data: ")]
        assert lines[-1] == "data: [DONE]"
        content, call, reason = _streamed(lines)
        assert reason == choice["finish_reason"] and content == message["content"]
        assert call == (message["tool_calls"][0]["function"] if started else None)
    bad_defs = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "$defs": [1]}}}
    response = httpx.post(tooled.url + "/v1/chat/completions", timeout=60, json={
        "model": "tiny", "messages": ASK, "tools": [bad_defs], "tool_choice": "required"})
    assert response.status_code == 400


def test_mistral_small_calls_name_the_function_before_its_arguments(tmp_path):
    """Mistral Small 3.2's real template (calls written `[TOOL_CALLS]name[ARGS]{...}`) through the official
    client: a named choice puts the name in the prompt and decodes the arguments under the function's
    schema, plain and streamed alike; 'required' among several tools is a 400 naming tool_choice."""
    import datacache
    from test_tool_templates import FOLDER, SDIST, TEMPLATES
    name = "Mistral-Small-3.2-24B-Instruct-2506"
    template = datacache.fetch_sdist_file(SDIST, FOLDER + name + ".jinja", sha256=TEMPLATES[name][1])
    td.save(td.build("llama", seed=5, max_position_embeddings=4096), tmp_path)
    td.write_tokenizer(tmp_path, chat_template=template.read_text(encoding="utf-8"))
    with loom.deterministic(True):
        running = Running(Server(loom.llm.load(tmp_path), "tiny", max_batch=2, max_queue=4))
    try:
        ask = dict(model="tiny", messages=ASK, tools=[WEATHER, TIME], max_tokens=600, seed=3,
                   tool_choice={"type": "function", "function": {"name": "get_time"}})
        plain = running.client.chat.completions.create(**ask)
        (call,) = plain.choices[0].message.tool_calls
        assert plain.choices[0].finish_reason == "tool_calls" and len(call.id) == 9 and call.id.isalnum()
        args = json.loads(call.function.arguments)
        assert call.function.name == "get_time" and set(args) == {"zone"} and len(args["zone"]) <= 8
        chunks = list(running.client.chat.completions.create(**ask, stream=True))
        deltas = [c.choices[0].delta.tool_calls[0] for c in chunks if c.choices and c.choices[0].delta.tool_calls]
        assert deltas[0].function.name == "get_time"
        assert json.loads("".join(d.function.arguments or "" for d in deltas)) == args
        response = httpx.post(running.url + "/v1/chat/completions", timeout=60,
                              json={**ask, "tool_choice": "required"})
        assert response.status_code == 400 and response.json()["error"]["param"] == "tool_choice"
    finally:
        running.close()


def test_auto_streams_its_content_as_it_comes_and_ends_as_plain(tooled):
    """tool_choice auto: a reply's content streams while no call can have begun (not at the reply's end),
    and the streamed content and calls are the plain reply's."""
    ask = dict(model="tiny", messages=ASK, tools=[WEATHER, TIME], max_tokens=24, seed=1, temperature=0.9)
    plain = tooled.client.chat.completions.create(**ask).choices[0]
    chunks = list(tooled.client.chat.completions.create(**ask, stream=True))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) >= 8, pieces                                    # token by token, not one piece at the end
    assert "".join(pieces) == plain.message.content and not plain.message.tool_calls
    assert chunks[-1].choices[0].finish_reason == plain.finish_reason


SCRIPTED = ('Let me look. <tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo {x}", "unit": "c"}}\n'
            '</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {"zone": "UTC\\"}"}}\n</tool_call> Both asked.')


def _scripted(monkeypatch, model, text: str) -> int:
    """The model writes `text` (the tiny random models never write a call's marker by themselves): each
    sampled step takes the next of its tokens, then the end of sequence, through the engine's own
    sampling, text streaming, stops and lazy call constraint (which must allow every token). Returns
    how many tokens the text is."""
    from loom.llm import generate
    ids = model.tokenizer.encode(text, add_special_tokens=False)

    def choose(logits, seen, sampling, step, allowed=None):
        token = ids[step] if step < len(ids) else model.eos_ids[0]
        assert allowed is None or allowed[token], f"the call's constraint refuses token {step} of the script"
        return token
    monkeypatch.setattr(generate, "choose", choose)
    return len(ids)


def _client_streamed(chunks):
    """(content, [[name, arguments]] by call index, the number of argument pieces of each call, the finish
    reason) of a stream of the client's chunks, checking each call's head comes before its arguments."""
    content, calls, pieces, reason = "", [], [], None
    for chunk in chunks:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        content += delta.content or ""
        for piece in delta.tool_calls or []:
            if piece.id is not None:                                   # a call's head
                assert piece.index == len(calls) and piece.type == "function" and piece.function.arguments == ""
                calls.append([piece.function.name, ""])
                pieces.append(0)
            else:
                assert piece.index == len(calls) - 1                   # the call being generated
                calls[piece.index][1] += piece.function.arguments
                pieces[piece.index] += 1
        reason = chunk.choices[0].finish_reason or reason
    return content, calls, pieces, reason


def test_auto_calls_stream_as_they_are_generated(tooled, monkeypatch):
    """tool_choice auto through the official client, the model writing content, two calls and content: each
    call's head (id, name) comes once its name and its arguments' '{' are generated and its arguments in
    pieces as they come (not one piece, nor OpenAI's end-of-choice pieces of 16 characters), and the
    stream adds up to the plain reply's message and finish reason; parallel_tool_calls false streams the
    first call alone, and a reply cut inside a call's arguments ("length") streams as plain too."""
    tokens = _scripted(monkeypatch, tooled.server.model, SCRIPTED)
    ask = dict(model="tiny", messages=ASK, tools=[WEATHER, TIME], max_tokens=tokens + 5)
    plain = tooled.client.chat.completions.create(**ask).choices[0]
    want = [["get_weather", '{"city": "Oslo {x}", "unit": "c"}'], ["get_time", '{"zone": "UTC\\"}"}']]
    assert plain.finish_reason == "tool_calls" and plain.message.content == "Let me look. \n Both asked."
    assert [[c.function.name, c.function.arguments] for c in plain.message.tool_calls] == want
    content, calls, pieces, reason = _client_streamed(tooled.client.chat.completions.create(**ask, stream=True))
    assert (content, calls, reason) == (plain.message.content, want, "tool_calls")
    assert pieces[0] > len(want[0][1]) // 16 + 2 and pieces[1] > 2, pieces     # as generated, token by token
    content, calls, _, reason = _client_streamed(tooled.client.chat.completions.create(
        **ask, parallel_tool_calls=False, stream=True))
    assert (content, calls, reason) == ("Let me look. \n Both asked.", want[:1], "tool_calls")
    cut = {**ask, "max_tokens": len(tooled.server.model.tokenizer.encode(SCRIPTED[:SCRIPTED.index("UTC")],
                                                                          add_special_tokens=False)) + 1}
    plain = tooled.client.chat.completions.create(**cut).choices[0]
    assert plain.finish_reason == "length" and plain.message.tool_calls[1].function.arguments.startswith('{"zone": "')
    content, calls, _, reason = _client_streamed(tooled.client.chat.completions.create(**cut, stream=True))
    assert reason == "length" and content == plain.message.content == "Let me look."
    assert calls == [[c.function.name, c.function.arguments] for c in plain.message.tool_calls]

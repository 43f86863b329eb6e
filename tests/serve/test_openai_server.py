"""`loom serve` through the official openai client against a real uvicorn server on loopback: plain,
streamed and concurrent requests (each the bits it gets alone), a client that leaves mid-stream, a
full queue, malformed JSON, bad parameters and an unknown model; structured output (response_format);
embeddings from an encoder; the CLI's errors."""
import concurrent.futures
import json
import os
import sys
import threading
import time

import numpy as np
import pytest

import loom
import loom.llm
from loom.llm.batching import Request

pytest.importorskip("starlette")
uvicorn = pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("tokenizers")
pytest.importorskip("jinja2")

from loom.serve import Server  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "llm"))
import tiny_decoders as td  # noqa: E402

HELLO = [{"role": "user", "content": "hello there"}]


class Running:
    """A uvicorn server on a free loopback port, in a thread."""

    def __init__(self, server: Server):
        self.server = server
        self.uvicorn = uvicorn.Server(uvicorn.Config(server.app(), host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.uvicorn.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.uvicorn.started:
            assert time.time() < deadline, "the server did not start"
            time.sleep(0.01)
        port = self.uvicorn.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.client = openai.OpenAI(base_url=self.url + "/v1", api_key="unused", max_retries=0, timeout=60)

    def close(self):
        self.uvicorn.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-serve")
    td.save(td.build("llama", seed=11), folder)
    td.write_tokenizer(folder, chat_template=td.CHAT_TEMPLATE)
    return loom.llm.load(folder)


@pytest.fixture(scope="module")
def served(lm):
    with loom.deterministic(True):
        running = Running(Server(lm, "tiny", max_batch=4, max_queue=16))
    yield running
    running.close()


def alone(lm, ids, max_tokens, **kw):
    """What the model gives for one prompt by itself (CausalLM.generate_ids, deterministic mode)."""
    with loom.deterministic(True):
        return list(lm.generate_ids(ids, max_tokens=max_tokens, **kw))


def test_models_and_health(served):
    assert [m.id for m in served.client.models.list().data] == ["tiny"]
    health = httpx.get(served.url + "/health").json()
    assert health["status"] == "ok" and health["mode"] == "deterministic" and health["running"] == 0


def test_chat_is_the_models_own_greedy_reply(served, lm):
    reply = served.client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=12, temperature=0,
                                                  logprobs=True, top_logprobs=3)
    ids = alone(lm, lm.chat_ids(HELLO), 12)
    choice = reply.choices[0]
    assert choice.message.content == lm.tokenizer.decode(ids) and choice.message.role == "assistant"
    assert reply.usage.prompt_tokens == len(lm.chat_ids(HELLO)) and reply.usage.completion_tokens == len(ids)
    assert choice.finish_reason == ("length" if len(ids) == 12 else "stop")
    entries = choice.logprobs.content
    assert len(entries) == len(ids)
    for e in entries:                              # the chosen (greedy) token is the most likely one
        assert len(e.top_logprobs) == 3 and e.logprob == e.top_logprobs[0].logprob <= 0
        assert e.top_logprobs[0].logprob >= e.top_logprobs[1].logprob >= e.top_logprobs[2].logprob


def test_streamed_chat_equals_the_plain_reply(served):
    plain = served.client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=16, temperature=0.8,
                                                  seed=42)
    chunks = list(served.client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=16, temperature=0.8,
                                                        seed=42, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == \
           [plain.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens and not chunks[-1].choices


def test_completions_with_n_stop_and_logprobs(served, lm):
    reply = served.client.completions.create(model="tiny", prompt=["the quick", [5, 6, 7]], max_tokens=8, n=2,
                                             temperature=0.7, seed=9, logprobs=2)
    assert [c.index for c in reply.choices] == [0, 1, 2, 3]
    for c, (ids, i) in zip(reply.choices, [(lm.encode_prompt("the quick"), 0), (lm.encode_prompt("the quick"), 1),
                                           ([5, 6, 7], 0), ([5, 6, 7], 1)]):
        assert c.text == lm.tokenizer.decode(alone(lm, ids, 8, temperature=0.7, seed=9 + i))
        assert len(c.logprobs.tokens) == len(c.logprobs.token_logprobs) == len(c.logprobs.top_logprobs)
    assert reply.usage.prompt_tokens == len(lm.encode_prompt("the quick")) + 3
    full = served.client.completions.create(model="tiny", prompt="the quick", max_tokens=12, temperature=0).choices[0]
    stop = full.text[3:5]
    cut = served.client.completions.create(model="tiny", prompt="the quick", max_tokens=12, temperature=0,
                                           stop=[stop]).choices[0]
    assert cut.finish_reason == "stop" and cut.text == full.text[:full.text.index(stop)]


def test_concurrent_requests_each_get_their_alone_bits(served, lm):
    prompts = [f"request number {i}" for i in range(8)]

    def ask(p):
        return served.client.completions.create(model="tiny", prompt=p, max_tokens=10, temperature=0).choices[0].text
    started = time.time()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        texts = list(pool.map(ask, prompts, timeout=120))
    assert time.time() - started < 120
    for p, text in zip(prompts, texts):
        assert text == lm.tokenizer.decode(alone(lm, lm.encode_prompt(p), 10))


def test_a_client_that_leaves_mid_stream_frees_its_slot(served, monkeypatch):
    from loom.llm import paged_forward
    real = paged_forward.forward

    def slow(*args, **kwargs):                      # 100 tokens take 5 s: the client leaves long before
        time.sleep(0.05)
        return real(*args, **kwargs)
    monkeypatch.setattr(paged_forward, "forward", slow)
    engine = served.server.engine
    cancelled = engine.stats["cancelled"]
    body = {"model": "tiny", "prompt": "go on", "max_tokens": 100, "temperature": 0, "stream": True,
            "stop": ["never appears \u2603"]}
    with httpx.stream("POST", served.url + "/v1/completions", json=body, timeout=30) as response:
        assert response.status_code == 200
        next(response.iter_lines())              # one event, then hang up
    left = time.time()
    while True:
        load = httpx.get(served.url + "/health").json()
        if load["running"] == 0 and load["waiting"] == 0 and load["free_blocks"] == load["blocks"]:
            break
        assert time.time() < left + 3, f"the slot was not freed: {load}"
        time.sleep(0.05)
    assert engine.stats["cancelled"] == cancelled + 1


def test_a_client_that_times_out_on_a_plain_request_frees_its_slot(served, monkeypatch):
    from loom.llm import paged_forward
    real = paged_forward.forward

    def slow(*args, **kwargs):
        time.sleep(0.05)
        return real(*args, **kwargs)
    monkeypatch.setattr(paged_forward, "forward", slow)
    engine = served.server.engine
    cancelled = engine.stats["cancelled"]
    body = {"model": "tiny", "prompt": "wait for it", "max_tokens": 100, "temperature": 0,
            "stop": ["never appears \u2603"]}
    with pytest.raises(httpx.TimeoutException):
        httpx.post(served.url + "/v1/completions", json=body, timeout=0.5)
    left = time.time()
    while engine.stats["cancelled"] == cancelled:
        assert time.time() < left + 4, "the abandoned request kept its slot"
        time.sleep(0.05)
    assert httpx.get(served.url + "/health").json()["running"] == 0


def test_a_small_cache_bounds_the_default_reply(lm):
    with loom.deterministic(True):
        running = Running(Server(lm, "tiny", max_batch=1, cache_tokens=64))
    try:                                           # no max_tokens: the rest of what the cache holds
        reply = running.client.chat.completions.create(model="tiny", messages=HELLO, temperature=0)
        prompt = len(lm.chat_ids(HELLO))
        assert reply.usage.completion_tokens <= 64 - prompt
        assert reply.choices[0].finish_reason == "length" or reply.usage.completion_tokens < 64 - prompt
    finally:
        running.close()


def test_a_full_queue_answers_429(lm):
    with loom.deterministic(True):
        server = Server(lm, "tiny", max_batch=1, max_queue=2)
    server.engine.start = lambda: None           # no steps: what is queued stays queued
    running = Running(server)
    try:
        server.engine.submit_all([Request([1, 2], max_tokens=2, stop_ids=())] * 2, [lambda e: None] * 2)
        with pytest.raises(openai.RateLimitError) as info:
            running.client.completions.create(model="tiny", prompt="x", max_tokens=2)
        assert info.value.status_code == 429 and info.value.body["code"] == "rate_limit_exceeded"
        assert "max_queue" in info.value.body["message"]
    finally:
        running.close()


@pytest.mark.parametrize("body, param", [
    ({"messages": HELLO, "temperature": 5}, "temperature"),
    ({"messages": HELLO, "temperature": 10 ** 400}, "temperature"),
    ({"messages": HELLO, "top_p": 0}, "top_p"),
    ({"messages": HELLO, "n": 0}, "n"),
    ({"messages": HELLO, "max_tokens": 0}, "max_tokens"),
    ({"messages": HELLO, "max_tokens": 10 ** 6}, "max_tokens"),
    ({"messages": HELLO, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"messages": HELLO, "seed": "x"}, "seed"),
    ({"messages": HELLO, "presence_penalty": -3}, "presence_penalty"),
    ({"messages": HELLO, "top_logprobs": 2}, "top_logprobs"),
    ({"messages": HELLO, "stream": "yes"}, "stream"),
    ({"messages": HELLO, "stream_options": {"include_usage": True}}, "stream_options"),
    ({"messages": HELLO, "response_format": "json"}, "response_format"),
    ({"messages": HELLO, "response_format": {"type": "xml"}}, "response_format.type"),
    ({"messages": HELLO, "response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    ({"messages": HELLO, "response_format": {"type": "json_schema", "json_schema": {"schema": {}}}},
     "response_format.json_schema.name"),
    ({"messages": HELLO, "response_format": {"type": "json_schema", "json_schema": {"name": "a b", "schema": {}}}},
     "response_format.json_schema.name"),
    ({"messages": HELLO, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": []}}},
     "response_format.json_schema.schema"),
    ({"messages": HELLO, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "strict": "yes"}}},
     "response_format.json_schema.strict"),
    ({"messages": HELLO, "response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "object", "properties": {"x": {"type": "string", "pattern": "^a"}}}}}},
     "response_format.json_schema.schema.properties.x.pattern"),
    ({"messages": HELLO, "response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "array", "items": {"$ref": "#/$defs/none"}}}}},
     "response_format.json_schema.schema.items.$ref"),
    ({"messages": HELLO, "tools": [{"type": "function"}]}, "tools[0]"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
    ({"messages": HELLO, "model": None}, "model"),
])
def test_bad_chat_parameters_are_400s_naming_the_field(served, body, param):
    response = httpx.post(served.url + "/v1/chat/completions", json={"model": "tiny", **body}, timeout=30)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"]


@pytest.mark.parametrize("body, param", [
    ({"prompt": ""}, "prompt"), ({"prompt": [1, 10 ** 6]}, "prompt"), ({"prompt": "x", "logprobs": 6}, "logprobs"),
    ({"prompt": "x", "echo": True}, "echo"), ({"prompt": [[]]}, "prompt"), ({"prompt": "x", "best_of": 0}, "best_of"),
])
def test_bad_completion_parameters_are_400s(served, body, param):
    response = httpx.post(served.url + "/v1/completions", json={"model": "tiny", **body}, timeout=30)
    assert response.status_code == 400 and response.json()["error"]["param"] == param, response.text


def test_malformed_json_unknown_model_and_wrong_endpoint(served):
    for raw in (b"{bad", b"[1, 2]", b"\xff"):
        response = httpx.post(served.url + "/v1/chat/completions", content=raw, timeout=30)
        assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error"
    with pytest.raises(openai.NotFoundError) as info:
        served.client.chat.completions.create(model="gpt-4", messages=HELLO)
    assert info.value.body["code"] == "model_not_found" and "gpt-4" in info.value.body["message"]
    response = httpx.post(served.url + "/v1/embeddings", json={"model": "tiny", "input": "x"}, timeout=30)
    assert response.status_code == 400 and response.json()["error"]["param"] == "model"


PERSON = {"type": "object",
          "properties": {"name": {"type": "string", "maxLength": 6}, "age": {"type": "integer"},
                         "pets": {"type": "array", "items": {"enum": ["cat", "dog"]}, "maxItems": 2},
                         "email": {"type": ["string", "null"], "maxLength": 8}},
          "required": ["name", "age"], "additionalProperties": False}


def test_json_schema_replies_parse_and_validate(served, lm):
    jsonschema = pytest.importorskip("jsonschema")
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    reply = served.client.chat.completions.create(model="tiny", messages=HELLO, response_format=fmt, n=4,
                                                  temperature=0.9, seed=3, max_tokens=100)
    for choice in reply.choices:
        assert choice.finish_reason == "stop", choice.message.content
        jsonschema.validate(json.loads(choice.message.content), PERSON)
    # the first choice is what generate_ids gives alone under the same constraint
    from loom.llm import generate as gen
    from loom.llm.batch_requests import Request
    from loom.llm.json_constraint import JsonGrammar
    from loom.llm.token_mask import GrammarMasks, Vocabulary
    masks = GrammarMasks(JsonGrammar.from_schema(PERSON), Vocabulary.of(lm.tokenizer, lm.decoder.config.vocab_size))
    with loom.deterministic(True):
        ids = list(lm.engines.stream(Request(lm.chat_ids(HELLO), 100, gen.Sampling(temperature=0.9, seed=3),
                                             lm.eos_ids, constraint=masks.constraint())))
    assert reply.choices[0].message.content == lm.tokenizer.decode(ids)
    chunks = list(served.client.chat.completions.create(model="tiny", messages=HELLO, response_format=fmt, n=4,
                                                        temperature=0.9, seed=3, max_tokens=100, stream=True))
    for choice in reply.choices:
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks
                           if c.choices and c.choices[0].index == choice.index)
        assert streamed == choice.message.content


def test_the_python_api_takes_a_json_schema(lm):
    """CausalLM.generate / generate_ids / generate_batch(json_schema=...): the server's constraint,
    the same text; a schema outside the subset raises naming its path."""
    jsonschema = pytest.importorskip("jsonschema")
    from loom.llm.json_schema import SchemaError
    ids = lm.chat_ids(HELLO)
    with loom.deterministic(True):
        text = "".join(lm.generate(ids, max_tokens=100, temperature=0.9, seed=3, json_schema=PERSON))
        jsonschema.validate(json.loads(text), PERSON)
        assert text == lm.tokenizer.decode(list(lm.generate_ids(ids, max_tokens=100, temperature=0.9, seed=3,
                                                                json_schema=PERSON)))
        batch = lm.generate_batch([ids, ids], max_tokens=100, temperature=0.9, seed=3, json_schema=PERSON)
        assert batch[0].text == text and batch[1].finish_reason == "stop"
        jsonschema.validate(json.loads(batch[1].text), PERSON)
    with pytest.raises(SchemaError, match="pattern"):
        lm.json_constraint({"type": "string", "pattern": "a+"})


def test_json_object_and_completions_with_a_schema(served):
    for seed in (0, 1):
        reply = served.client.chat.completions.create(model="tiny", messages=HELLO, temperature=0.7, seed=seed,
                                                      response_format={"type": "json_object"}, max_tokens=100)
        choice = reply.choices[0]
        assert choice.finish_reason == "stop" and isinstance(json.loads(choice.message.content), dict)
    text = served.client.chat.completions.create(model="tiny", messages=HELLO, temperature=0,
                                                 response_format={"type": "text"}, max_tokens=8)
    assert text.choices[0].message.content
    schema = {"anyOf": [{"enum": ["yes", "no"]}, {"type": "integer"}]}
    reply = served.client.completions.create(model="tiny", prompt="the answer is", temperature=1.0, seed=4, n=3,
                                             max_tokens=30, extra_body={"response_format": {
                                                 "type": "json_schema", "json_schema": {"name": "a", "schema": schema}}})
    for choice in reply.choices:
        value = json.loads(choice.text)
        assert value in ("yes", "no") or isinstance(value, int)
    short = served.client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=3, response_format={
        "type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}})
    assert short.choices[0].finish_reason == "length"        # too short for the value: cut, as OpenAI does


def test_an_unsupported_schema_is_a_400_through_the_client(served):
    schema = {"type": "object", "properties": {"when": {"type": "string", "format": "date-time"}}}
    with pytest.raises(openai.BadRequestError) as info:
        served.client.chat.completions.create(model="tiny", messages=HELLO, response_format={
            "type": "json_schema", "json_schema": {"name": "event", "schema": schema}})
    assert info.value.status_code == 400
    assert info.value.body["param"] == "response_format.json_schema.schema.properties.when.format"
    assert "'format' is not supported" in info.value.body["message"]
    with pytest.raises(openai.BadRequestError) as info:
        served.client.chat.completions.create(model="tiny", messages=HELLO, response_format={"type": "yaml"})
    assert info.value.body["param"] == "response_format.type"


def test_embeddings_from_an_encoder(tmp_path):
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "llm"))
    from test_encoder import _tiny_bert
    _tiny_bert(tmp_path, seed=3)
    encoder = loom.llm.load(tmp_path)
    with loom.deterministic(True):
        running = Running(Server(encoder, "bert"))
    try:
        texts = ["the cat sat", "a dog"]
        reply = running.client.embeddings.create(model="bert", input=texts)
        with loom.deterministic(True):
            want = np.asarray(encoder.embed(texts))
        got = np.asarray([d.embedding for d in reply.data], dtype=np.float32)
        np.testing.assert_array_equal(got, want)        # the client's default: base64 float32
        floats = httpx.post(running.url + "/v1/embeddings", json={"model": "bert", "input": texts,
                                                                   "encoding_format": "float"}).json()
        np.testing.assert_array_equal(np.asarray([d["embedding"] for d in floats["data"]], dtype=np.float32), want)
        assert [d.index for d in reply.data] == [0, 1] and reply.usage.prompt_tokens > 0
        response = httpx.post(running.url + "/v1/chat/completions", json={"model": "bert", "messages": HELLO})
        assert response.status_code == 400
        response = httpx.post(running.url + "/v1/embeddings", json={"model": "bert", "input": []})
        assert response.status_code == 400 and response.json()["error"]["param"] == "input"
    finally:
        running.close()


def test_cli_errors_are_one_line(tmp_path, capsys):
    from cli_run import loom as run_loom
    code, _, err = run_loom(capsys, "serve", "--model", tmp_path / "missing.gguf")
    assert code == 3 and "no such file" in err and err.count("\n") == 1
    code, _, err = run_loom(capsys, "serve", "--model", tmp_path, "--port", 70000)
    assert code == 3 and "--port" in err
    assert run_loom(capsys, "serve")[0] == 2            # --model is required

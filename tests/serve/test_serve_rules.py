"""OpenAI's request rules in `loom serve` (issue 62): message roles (an unknown one is a 400 naming
messages[i].role; developer is the system message; the deprecated function role is refused, and so
are malformed tool calls and a tool message that answers none), content that must be a string or text parts,
`name`, `user`, `metadata` and `store` checked as OpenAI checks them and otherwise ignored, and
`max_completion_tokens` through the official client."""
import pytest
import serve_extras

openai, httpx = serve_extras.need()

from test_openai_server import HELLO, lm, served  # noqa: E402, F401  (the shared tiny model and server)

ASSISTANT_CALL = {"role": "assistant", "content": None,
                  "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}


def _post(served, body, path="/v1/chat/completions"):  # noqa: F811
    return httpx.post(served.url + path, json={"model": "tiny", "max_tokens": 2, "seed": 3, **body}, timeout=60)


@pytest.mark.parametrize("messages, param, says", [
    ([{"role": "wizard", "content": "hi"}], "messages[0].role", "Invalid value: 'wizard'"),
    ([{"role": 5, "content": "hi"}], "messages[0].role", "must be a string"),
    ([{"content": "hi"}], "messages[0].role", "must be a string"),
    ([{"role": "function", "name": "f", "content": "{}"}], "messages[0].role", "not supported"),
    (["hi"], "messages[0]", "must be an object"),
    ([{"role": "user", "content": 5}], "messages[0].content", "must be a string"),
    ([{"role": "user", "content": None}], "messages[0].content", "must be a string"),
    ([{"role": "user"}], "messages[0].content", "must be a string"),
    ([{"role": "user", "content": []}], "messages[0].content", "text content parts"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}], "messages[0].content",
     "text content parts"),
    ([{"role": "user", "content": "hi", "name": 7}], "messages[0].name", "must be a string"),
    ([{"role": "user", "content": "hi"}, {**ASSISTANT_CALL, "tool_calls": [{"id": "c1", "type": "function",
      "function": {"name": "f", "arguments": {"x": 1}}}]}], "messages[1].tool_calls[0].function.arguments",
     "must be a string"),
    ([{"role": "user", "content": "hi", "tool_calls": ASSISTANT_CALL["tool_calls"]}], "messages[0].tool_calls",
     "only assistant"),
    ([{"role": "user", "content": "hi"}, ASSISTANT_CALL, {"role": "tool", "tool_call_id": "c9", "content": "42"}],
     "messages[2].tool_call_id", "one of the preceding calls"),
    ([{"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "c1", "content": "42"}], "messages[1]",
     "preceding message with 'tool_calls'"),
])
def test_messages_are_checked_as_openai_checks_them(served, messages, param, says):  # noqa: F811
    response = _post(served, {"messages": messages})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param and says in error["message"] and error["type"] == "invalid_request_error"


def test_developer_is_the_system_message_and_text_parts_join(served):  # noqa: F811
    def text(messages):
        response = _post(served, {"messages": messages, "temperature": 0})
        assert response.status_code == 200, response.text
        return response.json()["choices"][0]["message"]["content"]
    as_system = text([{"role": "system", "content": "be brief"}, *HELLO])
    assert text([{"role": "developer", "content": "be brief"}, *HELLO]) == as_system
    assert text([{"role": "developer", "content": [{"type": "text", "text": "be "}, {"type": "text", "text": "brief"}]},
                 {"role": "user", "content": "hello there", "name": "ann"}]) == as_system


@pytest.mark.parametrize("extra, param", [
    ({"user": 5}, "user"), ({"metadata": "x"}, "metadata"), ({"metadata": {"a": 1}}, "metadata.a"),
    ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"), ({"metadata": {"k" * 65: "v"}}, "metadata." + "k" * 64),
    ({"metadata": {"a": "v" * 513}}, "metadata.a"), ({"store": "yes"}, "store"),
])
def test_labels_are_checked(served, extra, param):  # noqa: F811
    response = _post(served, {"messages": HELLO, **extra})
    assert response.status_code == 400 and response.json()["error"]["param"] == param


def test_labels_are_accepted_and_ignored(served):  # noqa: F811
    plain = _post(served, {"messages": HELLO}).json()["choices"][0]["message"]["content"]
    labelled = _post(served, {"messages": HELLO, "user": "u-1", "store": False,
                              "metadata": {"team": "a", "k" * 64: "v" * 512}})
    assert labelled.status_code == 200 and labelled.json()["choices"][0]["message"]["content"] == plain
    completion = _post(served, {"prompt": "hi", "user": "u-1"}, "/v1/completions")
    assert completion.status_code == 200
    assert _post(served, {"prompt": "hi", "user": ["u"]}, "/v1/completions").json()["error"]["param"] == "user"


def test_max_completion_tokens_and_usage_through_the_official_client(served):  # noqa: F811
    reply = served.client.chat.completions.create(model="tiny", messages=HELLO, max_completion_tokens=2, seed=1,
                                                  temperature=0, user="u-2", metadata={"run": "t"})
    assert reply.usage.completion_tokens == 2 and reply.choices[0].finish_reason == "length"
    # Greedy, so that the tiny model's end-of-text cannot come second and stop the stream at one token.
    chunks = list(served.client.chat.completions.create(model="tiny", messages=HELLO, max_completion_tokens=2,
                                                        seed=1, temperature=0, stream=True,
                                                        stream_options={"include_usage": True}))
    assert chunks[-1].usage.completion_tokens == 2 and not chunks[-1].choices
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]

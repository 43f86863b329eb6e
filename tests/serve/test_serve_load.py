"""A bounded, self-stopping load on a keyed `loom serve` over loopback (issue 62): 24 clients at once,
mixing plain and streamed chats through the official client (each reply the bits the request gets
alone), forced tool calls (arguments valid against the function's schema), requests with a wrong key
(401), clients that leave mid-stream, and a thread scraping /metrics all along; then no response was a
5xx, every counter of /metrics matches what the clients saw, and the engine ends idle."""
import concurrent.futures
import json
import os
import re
import sys
import threading

import pytest
import serve_extras

import loom
import loom.llm

openai, httpx = serve_extras.need()

from test_openai_server import Running, alone  # noqa: E402
from test_serve_tools import HERMES_TEMPLATE, WEATHER  # noqa: E402

from loom.serve import Server  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "llm"))
import tiny_decoders as td  # noqa: E402

KEY = "sk-load-test"
CLIENTS = 24


def _metric(text: str, name: str, labels: str = "") -> float:
    match = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    """A tiny llama whose chat template takes tools (Hermes-style)."""
    folder = tmp_path_factory.mktemp("tiny-load")
    td.save(td.build("llama", seed=11, max_position_embeddings=512), folder)
    td.write_tokenizer(folder, chat_template=HERMES_TEMPLATE)
    return loom.llm.load(folder)


def test_a_mixed_load_keeps_bits_statuses_and_metrics_consistent(lm):
    with loom.deterministic(True):
        running = Running(Server(lm, "tiny", max_batch=4, max_queue=64, api_keys=[KEY]))
    client = openai.OpenAI(base_url=running.url + "/v1", api_key=KEY, max_retries=0, timeout=120)
    headers = {"Authorization": f"Bearer {KEY}"}
    stop, scrapes = threading.Event(), []

    def scrape():                               # /metrics read while the load runs: always well formed
        while not stop.is_set():
            response = httpx.get(running.url + "/metrics", headers=headers, timeout=30)
            scrapes.append((response.status_code, response.text))
            stop.wait(0.05)

    def job(i):
        messages = [{"role": "user", "content": f"load request {i}"}]
        kind = i % 5
        if kind == 4:                           # a forced tool call
            reply = client.chat.completions.create(model="tiny", messages=messages, tools=[WEATHER], max_tokens=300,
                                                   tool_choice="required", seed=i)
            choice = reply.choices[0]
            if choice.finish_reason == "length":    # (a random model may write a long string)
                return "tool", i, choice.message.content, "length"
            (call,) = choice.message.tool_calls
            return "tool", i, json.loads(call.function.arguments), choice.finish_reason
        if kind == 0:                           # plain
            reply = client.chat.completions.create(model="tiny", messages=messages, max_tokens=6, temperature=0)
            return "plain", i, reply.choices[0].message.content, reply.usage.completion_tokens
        if kind == 1:                           # streamed
            chunks = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=6, temperature=0,
                                                         stream=True))
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            return "stream", i, text, None
        if kind == 2:                           # a wrong key
            response = httpx.post(running.url + "/v1/chat/completions", timeout=60,
                                  json={"model": "tiny", "messages": messages},
                                  headers={"Authorization": "Bearer sk-nope"})
            return "denied", i, response.status_code, None
        with httpx.stream("POST", running.url + "/v1/completions", headers=headers, timeout=60,
                          json={"model": "tiny", "prompt": f"left {i}", "max_tokens": 60, "stream": True}) as response:
            status = response.status_code
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    break                       # the client leaves after its first chunk
        return "dropped", i, status, None

    scraper = threading.Thread(target=scrape, daemon=True)
    scraper.start()
    try:
        with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
            results = list(pool.map(job, range(CLIENTS)))
        stop.set()
        scraper.join(30)
        # every result as expected: the bits alone, 401 for the wrong key, 200 for those who left
        for kind, i, value, _ in results:
            if kind in ("plain", "stream"):
                ids = lm.chat_ids([{"role": "user", "content": f"load request {i}"}])
                assert value == lm.tokenizer.decode(alone(lm, ids, 6)), (kind, i)
            elif kind == "denied":
                assert value == 401
            elif kind == "tool" and _ == "length":
                assert isinstance(value, str) and value.startswith("{")
            elif kind == "tool":
                assert set(value) == {"city", "unit"} and value["unit"] in ("c", "f") and _ == "tool_calls"
            else:
                assert value == 200
        assert any(r[0] == "tool" and r[3] == "tool_calls" for r in results)     # calls made under the load
        assert scrapes and all(status == 200 for status, _ in scrapes)
        assert all(text.endswith("\n") and "loom_requests_total" in text for _, text in scrapes)
        # the engine ends idle (the dropped streams' sequences cancelled), and the counters add up
        final = httpx.get(running.url + "/metrics", headers=headers, timeout=30).text
        count = {kind: sum(1 for r in results if r[0] == kind) for kind in ("plain", "stream", "denied", "dropped",
                                                                            "tool")}
        assert _metric(final, "loom_requests_total", '{endpoint="/v1/chat/completions",status="200"}') == \
            count["plain"] + count["stream"] + count["tool"]
        assert _metric(final, "loom_requests_total", '{endpoint="/v1/chat/completions",status="401"}') == count["denied"]
        assert _metric(final, "loom_requests_total", '{endpoint="/v1/completions",status="200"}') == count["dropped"]
        assert not re.search(r'status="5\d\d"', final)
        plain_tokens = sum(r[3] for r in results if r[0] == "plain")
        assert _metric(final, "loom_generation_tokens_total") >= plain_tokens + count["stream"]
        pause = threading.Event()
        for _ in range(100):                     # the last cancellations reach the engine's next step
            load = httpx.get(running.url + "/health", timeout=30).json()
            if load["running"] == 0 and load["waiting"] == 0:
                break
            pause.wait(0.05)
        assert load["running"] == 0 and load["waiting"] == 0
        final = httpx.get(running.url + "/metrics", headers=headers, timeout=30).text
        assert _metric(final, "loom_requests_running") == 0 and _metric(final, "loom_requests_waiting") == 0
    finally:
        stop.set()
        running.close()

"""`loom serve`'s /metrics (issue 62): Prometheus text (version 0.0.4) whose counters follow what the
server answered (requests by endpoint and status, 400s, 404s and unknown paths included; prompt and
generated tokens equal to the responses' usage), whose histograms count every first token, every later
token and every engine step, and whose gauges give running and waiting requests and KV-cache use."""
import re
import time

import pytest
import serve_extras

import loom

openai, httpx = serve_extras.need()

from test_openai_server import HELLO, Running, lm  # noqa: E402, F401  (the shared tiny model)

from loom.serve import Server  # noqa: E402
from loom.serve.metrics import Metrics  # noqa: E402

SAMPLE = re.compile(r'^([a-z_]+)(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? (-?[0-9.e+-]+|\+Inf|NaN)$')


@pytest.fixture(scope="module")
def metered(lm):  # noqa: F811
    with loom.deterministic(True):
        running = Running(Server(lm, "tiny", max_batch=4, max_queue=8))
    yield running
    running.close()


def scrape(running) -> dict:
    """{(name, labels): value} of /metrics, after checking the format line by line."""
    response = httpx.get(running.url + "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples, typed = {}, set()
    for line in response.text.splitlines():
        if line.startswith("# TYPE "):
            typed.add(line.split()[2])
            continue
        if line.startswith("#"):
            continue
        match = SAMPLE.match(line)
        assert match, f"not a Prometheus sample: {line!r}"
        name = match.group(1)
        assert re.sub(r"_(bucket|sum|count)$", "", name) in typed or name in typed, f"{name} has no TYPE line"
        samples[(name, match.group(2) or "")] = float(match.group(4))
    return samples


def test_counters_histograms_and_gauges_follow_the_traffic(metered):
    client = metered.client
    usage = [client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=4, seed=s).usage
             for s in range(3)]
    stream = list(client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=5, n=2, stream=True,
                                                 logprobs=True, stream_options={"include_usage": True}))
    usage.append(stream[-1].usage)
    streamed = [0, 0]                                  # each choice's tokens: one logprob entry a token
    for chunk in stream:
        for choice in chunk.choices:
            streamed[choice.index] += len(choice.logprobs.content) if choice.logprobs else 0
    assert sum(streamed) == stream[-1].usage.completion_tokens
    completion = client.completions.create(model="tiny", prompt="hi there", max_tokens=3)
    usage.append(completion.usage)
    assert httpx.post(metered.url + "/v1/chat/completions", json={"model": "tiny", "messages": []}).status_code == 400
    assert httpx.get(metered.url + "/v1/nowhere").status_code == 404
    m = scrape(metered)
    assert m[("loom_requests_total", '{endpoint="/v1/chat/completions",status="200"}')] == 4
    assert m[("loom_requests_total", '{endpoint="/v1/chat/completions",status="400"}')] == 1
    assert m[("loom_requests_total", '{endpoint="/v1/completions",status="200"}')] == 1
    assert m[("loom_requests_total", '{endpoint="other",status="404"}')] == 1
    assert m[("loom_prompt_tokens_total", "")] == sum(u.prompt_tokens for u in usage)
    generated = sum(u.completion_tokens for u in usage)
    assert m[("loom_generation_tokens_total", "")] == generated
    # a choice whose first sample is the end of text has no first token (sampling is random without a seed)
    choices = sum(u.completion_tokens > 0 for u in usage[:3] + usage[4:]) + sum(n > 0 for n in streamed)
    assert m[("loom_time_to_first_token_seconds_count", "")] == choices
    assert m[("loom_time_per_output_token_seconds_count", "")] == generated - choices
    for name in ("loom_time_to_first_token_seconds", "loom_time_per_output_token_seconds", "loom_engine_step_seconds"):
        buckets = sorted((float(labels.split('"')[1]), v) for (n, labels), v in m.items()
                         if n == name + "_bucket" and "+Inf" not in labels)
        counts = [v for _, v in buckets]
        assert counts == sorted(counts), f"{name}'s buckets are not cumulative"
        assert m[(name + "_bucket", '{le="+Inf"}')] == m[(name + "_count", "")] >= counts[-1]
        assert m[(name + "_sum", "")] >= 0
    assert m[("loom_engine_step_seconds_count", "")] >= 5
    assert m[("loom_requests_running", "")] == 0 and m[("loom_requests_waiting", "")] == 0
    assert 0.0 <= m[("loom_kv_cache_usage_ratio", "")] <= 1.0
    assert m[("loom_info", '{model="tiny",mode="deterministic"}')] == 1
    assert scrape(metered)[("loom_requests_total", '{endpoint="/metrics",status="200"}')] >= 1


def test_a_cut_stream_still_counts_its_tokens(metered):
    before = scrape(metered)[("loom_generation_tokens_total", "")]
    with httpx.stream("POST", metered.url + "/v1/completions",
                      json={"model": "tiny", "prompt": "hi", "max_tokens": 40, "stream": True,
                            "temperature": 0}) as response:   # (greedy: a sampled end of text first counts nothing)
        for line in response.iter_lines():
            if line.startswith("data: {"):
                break                                      # leave after the first chunk
    deadline = time.time() + 10
    while scrape(metered)[("loom_generation_tokens_total", "")] == before:
        assert time.time() < deadline, "the cut stream's tokens were never counted"


def test_label_values_are_escaped():
    text = Metrics().render('a "quoted"\\name\n', "fast", None)
    assert 'loom_info{model="a \\"quoted\\"\\\\name\\n",mode="fast"} 1' in text
    assert "loom_requests_running" not in text                  # no engine: no engine gauges


def test_a_500_is_counted(lm, monkeypatch):  # noqa: F811
    with loom.deterministic(True):
        server = Server(lm, "tiny", max_batch=2, max_queue=2)

    async def broken(request):
        raise RuntimeError("a bug")
    monkeypatch.setattr(server, "models", broken)
    running = Running(server)
    try:
        assert httpx.get(running.url + "/v1/models").status_code == 500
        assert scrape(running)[("loom_requests_total", '{endpoint="/v1/models",status="500"}')] == 1
    finally:
        running.close()

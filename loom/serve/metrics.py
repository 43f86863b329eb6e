"""`loom serve`'s /metrics: Prometheus counters, gauges and histograms in the text exposition format
(version 0.0.4), as vLLM and SGLang expose theirs, with no client library.

Counters: requests by endpoint and status (every HTTP response, 401s and 404s included; paths other than
the server's routes count as "other"), prompt and generated tokens of finished generations. Histograms:
time to first token and the time between a request's tokens (as its handler receives them), and the
engine's step time (its thread, one observation a step). Gauges, read when scraped: running and waiting
requests and the KV cache's share of blocks in use. Thread-safe: the engine's thread observes steps.
"""
from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable

ROUTES = ("/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/completions", "/v1/embeddings")
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5)
STEP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
HISTOGRAMS = {  # name: (help, buckets)
    "loom_time_to_first_token_seconds": ("Time from a generation request's arrival to its first token", TTFT_BUCKETS),
    "loom_time_per_output_token_seconds": ("Time between consecutive tokens of a generation", TOKEN_BUCKETS),
    "loom_engine_step_seconds": ("Wall time of one batch engine step", STEP_BUCKETS),
}


class _Histogram:
    def __init__(self, buckets: tuple[float, ...]):
        self.buckets, self.counts, self.sum, self.count = buckets, [0] * len(buckets), 0.0, 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
                break
        self.sum += value
        self.count += 1

    def lines(self, name: str) -> list[str]:
        out, cumulative = [], 0
        for bound, count in zip(self.buckets, self.counts):
            cumulative += count
            out.append(f'{name}_bucket{{le="{bound!r}"}} {cumulative}')
        out += [f'{name}_bucket{{le="+Inf"}} {self.count}', f"{name}_sum {self.sum!r}", f"{name}_count {self.count}"]
        return out


class Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self.requests: Counter = Counter()          # (endpoint, status) -> responses
        self.prompt_tokens = self.generation_tokens = 0
        self.histograms = {name: _Histogram(buckets) for name, (_, buckets) in HISTOGRAMS.items()}

    def request(self, path: str, status: int) -> None:
        with self._lock:
            self.requests[(path if path in ROUTES else "other", status)] += 1

    def tokens(self, prompt: int, generated: int) -> None:
        with self._lock:
            self.prompt_tokens += prompt
            self.generation_tokens += generated

    def observe(self, name: str, seconds: float) -> None:
        with self._lock:
            self.histograms[name].observe(seconds)

    def render(self, model: str, mode: str, load: dict | None) -> str:
        """The exposition text: load is the engine's (running, waiting, free_blocks, blocks), None for an
        encoder (no engine)."""
        with self._lock:
            lines = ["# HELP loom_info The served model and mode", "# TYPE loom_info gauge",
                     f'loom_info{{model="{_escape(model)}",mode="{mode}"}} 1',
                     "# HELP loom_requests_total HTTP responses by endpoint and status", "# TYPE loom_requests_total counter"]
            lines += [f'loom_requests_total{{endpoint="{path}",status="{status}"}} {n}'
                      for (path, status), n in sorted(self.requests.items())]
            for name, value, text in (("loom_prompt_tokens_total", self.prompt_tokens, "Prompt tokens of finished generations"),
                                      ("loom_generation_tokens_total", self.generation_tokens, "Tokens generated")):
                lines += [f"# HELP {name} {text}", f"# TYPE {name} counter", f"{name} {value}"]
            for name, (text, _) in HISTOGRAMS.items():
                lines += [f"# HELP {name} {text}", f"# TYPE {name} histogram"] + self.histograms[name].lines(name)
        if load is not None:
            used = 1.0 - load["free_blocks"] / load["blocks"] if load["blocks"] else 0.0
            for name, value, text in (("loom_requests_running", load["running"], "Requests being decoded"),
                                      ("loom_requests_waiting", load["waiting"], "Requests queued for a slot"),
                                      ("loom_kv_cache_usage_ratio", used, "Share of the KV cache's blocks in use")):
                lines += [f"# HELP {name} {text}", f"# TYPE {name} gauge", f"{name} {value!r}"]
        return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    """A label value as the exposition format writes it."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class CountResponses:
    """ASGI middleware: every HTTP response's endpoint and status into `metrics` (outermost, so that the
    401s of a missing key and the 404s of unknown paths count too)."""

    def __init__(self, app: Callable, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def counted(message):
            if message["type"] == "http.response.start":
                self.metrics.request(scope["path"], message["status"])
            await send(message)
        await self.app(scope, receive, counted)

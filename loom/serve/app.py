"""`loom serve`: an OpenAI-compatible HTTP server over one model, on starlette (ASGI) and uvicorn.

Routes: POST /v1/chat/completions and /v1/completions (streamed as server-sent events with
"stream": true), POST /v1/embeddings (encoder models), GET /v1/models, /health and /metrics
(Prometheus: loom/serve/metrics.py). With API keys, every route but /health answers 401 without
`Authorization: Bearer KEY` (_RequireKey). A language
model's requests go to one loom.llm.batching.BatchEngine, whose thread decodes every running
request together (continuous batching); each request's tokens come back to its handler through an
asyncio queue. A client that disconnects has its sequence cancelled, which frees its slot and
blocks at the engine's next step. A full queue answers 429, bad input 400 naming the field, an
unknown model 404, all with OpenAI's error body. A response_format of json_object or json_schema gives
each request a constraint (loom/llm/token_mask.py) that masks its logits step by step.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .. import mode
from ..errors import ConfigError, EngineError
from ..llm import tool_calls
from ..llm.batch_requests import Event, QueueFull
from ..llm.batching import BatchEngine
from . import protocol
from .metrics import CountResponses, Metrics
from .protocol import BadRequest

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from ..llm.encoder import Encoder
    from ..llm.model import CausalLM

log = logging.getLogger("loom")


def need_extra() -> None:
    """LoomError naming the 'serve' extra unless starlette and uvicorn import."""
    from ..errors import LoomError
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise LoomError("loom serve needs the 'serve' extra: pip install 'loom[serve]' (starlette, uvicorn)") \
            from None


class Server:
    """The state behind the routes: the model, its name, the engine (language models) and the mode."""

    def __init__(self, model: CausalLM | Encoder, name: str, max_batch: int = 16, max_queue: int = 64,
                 cache_tokens: int | None = None, api_keys: Sequence[str] = ()):
        from ..llm.encoder import Encoder
        if isinstance(api_keys, (str, bytes)):
            raise ConfigError("api_keys", "expected a list of keys, got one string")
        for i, key in enumerate(api_keys):
            if not isinstance(key, str) or not key or key != key.strip() or not key.isprintable():
                raise ConfigError(f"api_keys[{i}]", "expected a non-empty printable key without surrounding spaces")
        self.keys = tuple(key.encode() for key in api_keys)
        self.metrics = Metrics()
        self.closing = False                # shutting down: new generations answer 503
        self._cancelled = False             # ... and the requests in flight have been cancelled
        self._shutdown_lock = threading.Lock()
        self.model, self.name = model, name
        self.deterministic = mode.is_deterministic()
        self.created = int(time.time())
        self.encoder = isinstance(model, Encoder)
        self.engine = None if self.encoder else BatchEngine(model, max_batch=max_batch, max_queue=max_queue,
                                                            cache_tokens=cache_tokens)
        if self.engine is not None:
            self.engine.on_step = lambda seconds: self.metrics.observe("loom_engine_step_seconds", seconds)
        # the positions one sequence may use: the model's context, or the KV cache's if smaller
        self.context = None if self.encoder else min(model.decoder.config.max_positions,
                                                     self.engine.cache.blocks * self.engine.cache.block_size)

    @property
    def mode_name(self) -> str:
        return "deterministic" if self.deterministic else "fast"

    def app(self) -> CountResponses:
        need_extra()
        from starlette.applications import Starlette
        from starlette.middleware import Middleware
        from starlette.routing import Route
        routes = [Route("/health", self.health), Route("/metrics", self.metrics_text), Route("/v1/models", self.models),
                  Route("/v1/chat/completions", self.chat, methods=["POST"]),
                  Route("/v1/completions", self.completions, methods=["POST"]),
                  Route("/v1/embeddings", self.embeddings, methods=["POST"])]
        middleware = [Middleware(_RequireKey, keys=self.keys)] if self.keys else []
        # counted outside Starlette's own error handler, so that its 500s count too
        return CountResponses(Starlette(routes=routes, lifespan=self._lifespan, middleware=middleware), self.metrics)

    def begin_shutdown(self, timeout: float) -> None:
        """New generation requests answer 503 from now on; those in flight may finish for `timeout`
        seconds, then the engine cancels the rest (each ends with finish_reason "cancelled", a stream with
        its last chunk and [DONE])."""
        self.closing = True
        if self.engine is not None:
            timer = threading.Timer(timeout, self._cancel_all)
            timer.daemon = True
            timer.start()

    def _cancel_all(self) -> None:
        with self._shutdown_lock:           # no request slips in between (_submit holds it too)
            self._cancelled = True
            self.engine.cancel_all()

    @contextlib.asynccontextmanager
    async def _lifespan(self, app):
        """The engine's thread runs while the server does."""
        if self.engine is not None:
            self.engine.start()
        try:
            yield
        finally:
            if self.engine is not None:
                self.engine.stop()

    # --- plain routes -------------------------------------------------------------------------------
    async def health(self, request: Request) -> Response:
        from starlette.responses import JSONResponse
        body = {"status": "ok", "model": self.name, "mode": self.mode_name}
        if self.engine is not None:
            body.update(self.engine.load)
        return JSONResponse(body)

    async def metrics_text(self, request: Request) -> Response:
        from starlette.responses import Response
        text = self.metrics.render(self.name, self.mode_name, None if self.engine is None else self.engine.load)
        return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    async def models(self, request: Request) -> Response:
        from starlette.responses import JSONResponse
        return JSONResponse({"object": "list", "data": [{"id": self.name, "object": "model", "created": self.created,
                                                         "owned_by": "loom"}]})

    async def embeddings(self, request: Request) -> Response:
        from starlette.responses import JSONResponse
        try:
            body = await _body(request)
            protocol.check_model(body, self.name)
            if not self.encoder:
                raise BadRequest("model", f"{self.name!r} is a language model, not an embedding model")
            texts = body.get("input")
            texts = [texts] if isinstance(texts, str) else texts
            if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t for t in texts):
                raise BadRequest("input", "'input' must be a non-empty string or a list of them")
            fmt = body.get("encoding_format", "float")
            if fmt not in ("float", "base64"):
                raise BadRequest("encoding_format", f"expected 'float' or 'base64', got {fmt!r}")
            vectors, tokens = await asyncio.to_thread(self._embed, texts)
        except BadRequest as exc:
            return _error(exc)
        # base64: the little-endian float32 bytes, as OpenAI's API (and its client's default) has them
        data = [{"object": "embedding", "index": i,
                 "embedding": base64.b64encode(v.astype("<f4").tobytes()).decode() if fmt == "base64" else v.tolist()}
                for i, v in enumerate(vectors)]
        return JSONResponse({"object": "list", "data": data, "model": self.name,
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    def _embed(self, texts):
        from ..errors import LoomError
        with mode.deterministic(self.deterministic):
            try:
                vectors = self.model.embed(texts)
            except LoomError as exc:
                raise BadRequest("input", str(exc)) from None
            tokens = sum(len(self.model.tokenizer.encode(t)) for t in texts)
            return self.model.backend.to_numpy(vectors), tokens

    # --- generation ---------------------------------------------------------------------------------
    async def chat(self, request: Request) -> Response:
        return await self._generate(request, chat=True)

    async def completions(self, request: Request) -> Response:
        return await self._generate(request, chat=False)

    async def _generate(self, request, chat: bool):
        from starlette.responses import JSONResponse
        arrived = time.perf_counter()
        try:
            if self.closing:
                raise BadRequest(None, "the server is shutting down", 503, kind="server_error")
            body = await _body(request)
            protocol.check_model(body, self.name)
            if self.encoder:
                raise BadRequest("model", f"{self.name!r} is an embedding model; use /v1/embeddings")
            build = protocol.chat_job if chat else protocol.completion_job
            if protocol.needs_constraint(body):       # the first grammar over a vocabulary takes a moment
                job = await asyncio.to_thread(build, body, self.model, self.context)
            else:
                job = build(body, self.model, self.context)
            queue, handles = self._submit(job, "messages" if chat else "prompt")
        except BadRequest as exc:
            return _error(exc)
        reply = _Reply(self, job, chat, arrived)
        if job.stream:
            return _closing_stream()(reply.stream(queue, handles), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        collect = asyncio.ensure_future(reply.collect(queue))
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({collect, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            for h in handles:          # a client gone before the end: free its slots
                h.cancel()
        if not collect.done():
            collect.cancel()
            return JSONResponse({}, status_code=499)
        done = collect.result()
        if isinstance(done, BadRequest):
            return _error(done)
        return JSONResponse(done)

    def _submit(self, job: protocol.Job, prompt_key: str):
        """Queue the job's requests; events come back as (choice index, Event) on an asyncio queue.
        prompt_key: the request field the engine's "prompt" errors are about."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        metrics = self.metrics

        def sink(index):
            def push(event):       # tokens are counted as the engine makes them: a client gone early keeps its count
                if event.token is not None:
                    metrics.tokens(0, 1)
                loop.call_soon_threadsafe(queue.put_nowait, (index, event))
            return push
        try:
            with self._shutdown_lock:       # a request that passed the first check while the server closed
                if self._cancelled:
                    raise BadRequest(None, "the server is shutting down", 503, kind="server_error")
                handles = self.engine.submit_all(job.requests, [sink(i) for i in range(len(job.requests))])
        except QueueFull as exc:
            raise BadRequest(None, str(exc), 429, kind="requests", code="rate_limit_exceeded") from None
        except ConfigError as exc:                    # the engine's own checks (the protocol's come first)
            raise BadRequest(prompt_key if exc.path == "prompt" else exc.path, str(exc)) from None
        except EngineError as exc:                    # the engine stopped (a shutting-down server)
            raise BadRequest(None, str(exc), 503, kind="server_error") from None
        self.metrics.tokens(sum(len(p) for p in job.prompts), 0)
        return queue, handles


class _Reply:
    """The response to one generation job: OpenAI's JSON, or its stream of chunks."""

    def __init__(self, server: Server, job: protocol.Job, chat: bool, arrived: float):
        self.server, self.job, self.chat = server, job, chat
        self.last = [arrived] * len(job.requests)       # each choice's latest token (its arrival before one)
        self.started = [False] * len(job.requests)
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.object = "chat.completion" if chat else "text_completion"
        self.tokenizer = server.model.tokenizer

    def _message(self, text: str, reason: str) -> tuple[dict, str]:
        """A chat choice's message and finish reason: with tools, the calls its reply makes (finish reason
        "tool_calls" where the model stopped by itself after whole calls; a forced call cut short by
        max_tokens or a stop string keeps its arguments as far as they got and that reason, as OpenAI
        returns it)."""
        plan = self.job.tools
        content, calls = text, []
        if plan is not None:
            content, calls = tool_calls.reply(text, plan.fmt, plan.names, plan.mode != "auto", plan.parallel,
                                              plan.called, plan.only)
        message: dict = {"role": "assistant", "content": content}
        if calls:
            message["tool_calls"] = calls
            whole = reason == "stop" and all(tool_calls.whole_arguments(c) for c in calls)
            return message, "tool_calls" if whole else reason
        return message, reason

    def _timed(self, index: int) -> None:
        """A token of choice `index` arrived: time to first token, or the time since its last one."""
        now = time.perf_counter()
        name = "loom_time_per_output_token_seconds" if self.started[index] else "loom_time_to_first_token_seconds"
        self.server.metrics.observe(name, now - self.last[index])
        self.started[index], self.last[index] = True, now

    def _usage(self, counts: list[int]) -> dict:
        prompt = sum(len(p) for p in self.job.prompts)
        return {"prompt_tokens": prompt, "completion_tokens": sum(counts), "total_tokens": prompt + sum(counts)}

    def _logprob_entry(self, event: Event):
        token = self.tokenizer.decode([event.token]) if self.tokenizer is not None else str(event.token)

        def item(tid, lp):
            text = self.tokenizer.decode([tid]) if self.tokenizer is not None else str(tid)
            return {"token": text, "logprob": lp, "bytes": list(text.encode("utf-8"))}
        entry = item(event.token, event.logprob)
        entry["token"] = token
        entry["top_logprobs"] = [item(t, lp) for t, lp in event.top_logprobs or []]
        return entry

    async def collect(self, queue: asyncio.Queue):
        """The whole response (a BadRequest for an engine error)."""
        count = len(self.job.requests)
        texts, tokens = [""] * count, [0] * count
        reasons: list[str | None] = [None] * count
        logprobs: list[list] = [[] for _ in range(count)]
        return await self._gathered(queue, texts, tokens, reasons, logprobs)

    async def _gathered(self, queue: asyncio.Queue, texts: list, tokens: list, reasons: list, logprobs: list):
        """collect's body: the events into the lists, then the response."""
        count = open_ = len(texts)
        while open_:
            index, event = await queue.get()
            if event.token is not None:
                tokens[index] += 1
                self._timed(index)
                if event.logprob is not None:
                    logprobs[index].append(self._logprob_entry(event))
            texts[index] += event.text
            if event.finish_reason is not None:
                if event.finish_reason == "error":
                    return BadRequest(None, f"generation failed: {event.error}", 500, kind="server_error")
                reasons[index] = event.finish_reason
                open_ -= 1
        choices = []
        for i in range(count):
            if self.chat:
                lp = {"content": logprobs[i]} if self.job.logprobs is not None else None
                message, reason = self._message(texts[i], reasons[i])
                choices.append({"index": i, "message": message, "logprobs": lp, "finish_reason": reason})
            else:
                choices.append({"index": i, "text": texts[i], "logprobs": self._completion_logprobs(logprobs[i]),
                                "finish_reason": reasons[i]})
        return {"id": self.id, "object": self.object, "created": self.created, "model": self.server.name,
                "choices": choices, "usage": self._usage(tokens), "system_fingerprint": _fingerprint(self.server)}

    def _completion_logprobs(self, entries: list) -> dict | None:
        if self.job.logprobs is None:
            return None
        offsets, at = [], 0
        for e in entries:
            offsets.append(at)
            at += len(e["token"])
        return {"tokens": [e["token"] for e in entries], "token_logprobs": [e["logprob"] for e in entries],
                "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in entries],
                "text_offset": offsets}

    async def stream(self, queue: asyncio.Queue, handles):
        """Server-sent events: one chunk per piece of text, a last chunk per choice with its finish
        reason, the usage when asked for, then [DONE]. The handles are cancelled if the client leaves.
        With tools, each choice's reply is read as it grows (tool_calls.reply_stream): its content, and
        each call's head and arguments as they are generated, adding up to the plain reply's message."""
        count = len(self.job.requests)
        tokens, open_, held = [0] * count, count, [""] * count
        plan = self.job.tools
        readers = [None if plan is None else tool_calls.reply_stream(plan.fmt, plan.names, plan.mode != "auto",
                                                                     plan.parallel, plan.called, plan.only)
                   for _ in range(count)]
        try:
            if self.chat:
                for i in range(count):
                    yield _sse(self._chunk(i, {"role": "assistant", "content": ""}, None))
            while open_:
                index, event = await queue.get()
                if event.finish_reason == "error":
                    yield _sse(protocol.BadRequest(None, f"generation failed: {event.error}", 500,
                                                   kind="server_error").body())
                    return
                if event.token is not None:
                    tokens[index] += 1
                    self._timed(index)
                if plan is not None:
                    held[index] += event.text
                    reader, done = readers[index], event.finish_reason is not None
                    if event.text or done:
                        for chunk in self._delta_chunks(index, (reader.finish if done else reader.feed)(held[index])):
                            yield _sse(chunk)
                    if done:
                        open_ -= 1
                        yield _sse(self._chunk(index, {}, self._message(held[index], event.finish_reason)[1]))
                    continue
                if event.text or event.token is not None and self.job.logprobs is not None:
                    logprobs = self._logprob_entry(event) if event.logprob is not None else None
                    yield _sse(self._chunk(index, {"content": event.text} if self.chat else event.text, None,
                                           logprobs))
                if event.finish_reason is not None:
                    open_ -= 1
                    yield _sse(self._chunk(index, {} if self.chat else "", event.finish_reason))
            if self.job.include_usage:
                yield _sse({"id": self.id, "object": self.object + ("" if not self.chat else ".chunk"),
                            "created": self.created, "model": self.server.name, "choices": [],
                            "usage": self._usage(tokens)})
            yield "data: [DONE]\n\n"
        finally:
            for h in handles:
                h.cancel()

    def _delta_chunks(self, index: int, deltas: list[tuple[str, int | None, str]]) -> list[dict]:
        """The chunks of a reply's deltas (tool_calls.reply_stream's), as OpenAI streams them: content; a
        call's head (a fresh id, its type and name, empty arguments); a piece of its arguments."""
        chunks = []
        for kind, k, text in deltas:
            if kind == "content":
                delta: dict = {"content": text}
            elif kind == "call":
                delta = {"tool_calls": [{"index": k, "id": tool_calls.call_id(self.job.tools.fmt), "type": "function",
                                         "function": {"name": text, "arguments": ""}}]}
            else:
                delta = {"tool_calls": [{"index": k, "function": {"arguments": text}}]}
            chunks.append(self._chunk(index, delta, None))
        return chunks

    def _chunk(self, index: int, delta: Any, finish: str | None, logprobs: dict | None = None) -> dict:
        if self.chat:
            choice = {"index": index, "delta": delta, "logprobs": None if logprobs is None else {"content": [logprobs]},
                      "finish_reason": finish}
            kind = "chat.completion.chunk"
        else:
            choice = {"index": index, "text": delta, "finish_reason": finish,
                      "logprobs": None if logprobs is None else self._completion_logprobs([logprobs])}
            kind = "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.server.name,
                "choices": [choice], "system_fingerprint": _fingerprint(self.server)}


class _RequireKey:
    """ASGI middleware: every HTTP request except to /health needs `Authorization: Bearer KEY` with one of
    the keys, else 401 in OpenAI's error shape (code invalid_api_key) before the route runs. Keys are
    compared in constant time (hmac.compare_digest, against every key) and never logged or echoed."""

    def __init__(self, app, keys: tuple[bytes, ...]):
        self.app, self.keys = app, keys

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] == "/health":
            await self.app(scope, receive, send)
            return
        header = next((value for name, value in scope["headers"] if name == b"authorization"), None)
        scheme, _, token = (header or b"").partition(b" ")
        token = token.strip()
        matched = False
        for key in self.keys:
            matched |= hmac.compare_digest(token, key)
        if header is not None and scheme.lower() == b"bearer" and matched:
            await self.app(scope, receive, send)
            return
        from starlette.responses import JSONResponse
        message = ("No API key provided: pass one as the header 'Authorization: Bearer KEY'" if header is None else
                   "Incorrect API key provided in the Authorization header" if scheme.lower() == b"bearer" else
                   "The Authorization header must be 'Bearer KEY'")
        body = BadRequest(None, message, 401, code="invalid_api_key").body()        # (OpenAI's param: null)
        await JSONResponse(body, status_code=401, headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)


def _fingerprint(server: Server) -> str:
    return "loom-deterministic" if server.deterministic else "loom-fast"


@functools.cache
def _closing_stream() -> type:
    """Starlette's StreamingResponse, closing its generator as soon as the response ends, however it ends.
    A client gone mid-stream leaves Starlette's generator suspended at a `yield`, closed only when the
    garbage collector gets to it; its `finally` cancels the request's engine slots, which must not wait
    for that."""
    from starlette.responses import StreamingResponse

    class ClosingStream(StreamingResponse):
        async def __call__(self, scope, receive, send) -> None:
            try:
                await super().__call__(scope, receive, send)
            finally:
                await self.body_iterator.aclose()
    return ClosingStream


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


async def _disconnected(request) -> None:
    """Returns when the client has gone (the server's receive channel says http.disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _body(request) -> dict:
    raw = await request.body()
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(None, f"the request body is not valid JSON ({exc})") from None
    if not isinstance(body, dict):
        raise BadRequest(None, f"the request body must be a JSON object, got {type(body).__name__}")
    return body


def _error(exc: BadRequest):
    from starlette.responses import JSONResponse
    return JSONResponse(exc.body(), status_code=exc.status)

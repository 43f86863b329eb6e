"""The batch engine a CausalLM keeps for its own generate_ids / generate / chat: a lone sequence is a
batch of one on the same paged engine (loom/llm/batching.py) that generate_batch and `loom serve` run.

    tokens = ModelEngines(model).stream(request)      # an iterator of token ids, stepped by its reader

There is no engine thread: whoever reads a stream runs the engine's next step when the stream has
no token waiting, under the engine's step lock. Streams read together (interleaved generators, or
threads) share the steps, so they decode as one batch. An engine per mode (it records its steps in
the mode it was made in; a stream takes the mode current when it is made). A stream closed before
its end (break out of the loop, or the generator collected) cancels its request.

The paged cache is sized to what the streams ask for: a request is taken by the current engine only
while the blocks every live stream could still need (prompt + max_tokens each) fit its cache, so no
sequence is ever preempted and recomputed (which could change deterministic bits past
exact.dispatch.ROUNDED_MAX_K). A request that does not fit gets a new engine with a larger cache
(the old one serves its live streams to their end and is then dropped); a new engine starts with
room for GROWTH times what it must hold, in whole CACHE_STEPs, and records its steps anew.
"""
from __future__ import annotations

import collections
import threading
from dataclasses import dataclass, field

from .. import mode
from ..errors import LoomError
from ..mode import is_deterministic
from .batch_requests import Event, Handle, LanguageModel, Request
from .batching import BLOCK_SIZE, BatchEngine

CACHE_STEP = 256        # cache sizes are multiples of this many positions
MIN_CACHE = 1024        # the smallest cache an engine starts with
GROWTH = 2              # a new engine's room over what it must hold
MAX_STREAMS = 16        # streams decoded together (more wait in the engine's queue)


@dataclass
class _Engine:
    engine: BatchEngine
    step_lock: threading.Lock = field(default_factory=threading.Lock)
    reserved: int = 0           # blocks the live streams could still need


class ModelEngines:
    """The model's engines, one per mode (see the module's docstring)."""

    def __init__(self, model: LanguageModel):
        self.model = model
        self._current: dict[bool, _Engine] = {}
        self._lock = threading.Lock()

    def stream(self, request: Request) -> TokenStream:
        """The request's generated token ids (stop ids excluded), as its steps produce them. The request
        is checked here (BatchEngine.check), before the first token."""
        exact = is_deterministic()
        own, blocks = self._engine_for(request, exact)
        try:
            events: collections.deque[Event] = collections.deque()
            handle = own.engine.submit(request, events.append)
        except BaseException:
            self._release(own, blocks)
            raise
        return TokenStream(self, own, blocks, events, handle, exact)

    def _engine_for(self, request: Request, exact: bool) -> tuple[_Engine, int]:
        """The engine (of mode `exact`) that takes the request, with the blocks reserved for it."""
        blocks = -(-(len(request.prompt) + request.max_tokens) // BLOCK_SIZE)
        with self._lock:
            own = self._current.get(exact)
            if own is None or own.reserved + blocks > own.engine.cache.blocks:
                held = 0 if own is None else own.reserved
                tokens = max(MIN_CACHE, GROWTH * (held + blocks) * BLOCK_SIZE)
                tokens = -(-tokens // CACHE_STEP) * CACHE_STEP
                if own is not None:     # (its live streams keep it; it goes when they end)
                    tokens = max(tokens, own.engine.cache.blocks * BLOCK_SIZE)
                with mode.deterministic(exact):
                    own = self._current[exact] = _Engine(BatchEngine(self.model, max_batch=MAX_STREAMS,
                                                                     max_queue=1 << 30, cache_tokens=tokens,
                                                                     dense_weights=False))
            own.reserved += blocks
        return own, blocks

    def _release(self, own: _Engine, blocks: int) -> None:
        with self._lock:
            own.reserved -= blocks

    def _step(self, own: _Engine, events: collections.deque, exact: bool) -> None:
        """One engine step for a stream with nothing to read (none if another reader's step brought it
        something meanwhile). A step that raises fails every stream of the engine, and the engine is
        replaced: its state is the failed step's."""
        with own.step_lock:
            if events:
                return
            try:
                with mode.deterministic(exact):
                    busy = own.engine.step()
            except BaseException as exc:
                with self._lock:
                    if self._current.get(exact) is own:
                        del self._current[exact]
                own.engine.fail_all(f"{type(exc).__name__}: {exc}")
                raise
            if not busy and not events:
                raise LoomError("internal error: the engine finished a stream without ending it")


class TokenStream:
    """An iterator of one request's token ids through a ModelEngines engine; close() (or dropping
    it) before its end cancels the request."""

    def __init__(self, engines: ModelEngines, own: _Engine, blocks: int, events: collections.deque, handle: Handle,
                 exact: bool):
        self._engines, self._own, self._blocks, self._events = engines, own, blocks, events
        self._handle, self._exact = handle, exact
        self._open = True

    def __iter__(self) -> TokenStream:
        return self

    def __next__(self) -> int:
        while self._open:
            if not self._events:
                try:
                    self._engines._step(self._own, self._events, self._exact)
                except BaseException:
                    self._end(cancel=True)
                    raise
                continue
            event = self._events.popleft()
            if event.finish_reason is not None:
                self._end(cancel=False)
                if event.finish_reason == "error":
                    raise LoomError(f"generation failed: {event.error}")
                break
            if event.token is not None:
                return event.token
        raise StopIteration

    def close(self) -> None:
        """Stop early: the request is cancelled (its slot and blocks are freed at the next step)."""
        if self._open:
            self._end(cancel=True)

    def __del__(self):
        self.close()

    def _end(self, cancel: bool) -> None:
        self._open = False
        if cancel:
            self._handle.cancel()
        self._engines._release(self._own, self._blocks)

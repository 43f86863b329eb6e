"""Continuous batching: many sequences decode together, new ones join and finished ones leave between
steps, their keys and values in a paged cache with prefix caching (loom/llm/paged_cache.py).

    engine = BatchEngine(model, max_batch=32)
    results = engine.generate([Request(ids_a, max_tokens=64), Request(ids_b, max_tokens=16)])

or, for a server, `engine.start()` runs the steps on a thread and `engine.submit(request, sink)`
hands each new token to `sink` as an Event as soon as its step ends.

Each step: admit waiting requests while there is room (max_batch sequences, and blocks for their
first chunk), take one piece of work from every running sequence (a prefill chunk, or its next
token), run them as one forward pass (loom/llm/paged_forward.py), sample a token for each sequence
that reached the end of its known tokens, stream it, and retire sequences that stopped. When a
sequence needs a block and none is left, the most recently admitted other sequence is preempted: its
blocks are released and it goes back to the front of the queue, to be recomputed from its tokens
(vLLM's recompute preemption).

Determinism: in deterministic mode a sequence's tokens and logits are the bits it gets alone (and
from CausalLM.generate_ids): every row of the batched products is computed as it would be alone,
prefill chunks end where the single-sequence path ends them, and a shared prefix block is reused
only below position exact.dispatch.ROUNDED_MAX_K, where attention's products are correctly rounded
(so a key's bits do not depend on the chunk that computed it). One exception: a sequence preempted
past that position is recomputed in prefill chunks, whose attention products above it round
differently from the decode steps that first computed those positions.
"""
from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from .. import mode
from ..errors import ConfigError, EngineError
from ..kernels.exact import dispatch as exact_dispatch
from ..mode import is_deterministic
from . import generate as gen
from . import paged_forward, paged_graph
from .batch_requests import (
    Event,
    Handle,
    LanguageModel,
    QueueFull,
    Request,
    Result,
    Sequence,
    device_sampled,
    logprobs,
    plain_greedy,
    result,
)
from .decoder import prefill_chunk
from .engine_steps import StepRunner
from .paged_cache import OutOfBlocks, PagedKVCache, block_names
from .sample_rows import DeviceRows

log = logging.getLogger("loom")

BLOCK_SIZE = 16
PREFILL_TOKENS = 2048       # prefill rows per step (more when one chunk is longer): decode streams keep moving


@dataclass
class _Ahead:
    """A greedy decode step launched on the device, its tokens not yet taken: the sequence of each row
    (None: padding) and its position."""
    graph: paged_graph.PagedDecodeGraph
    rows: list
    positions: list[int]
    tokens: paged_graph.Tokens
    ahead: bool = False             # launched before the previous step's tokens were taken
    sampler: DeviceRows | None = None   # rows that sample on the device (None: every row greedy)


class BatchEngine:
    """Continuous batching over one model (see the module's docstring).

    max_batch: sequences decoded together; max_queue: requests waiting beyond those (submit raises
    QueueFull past it); cache_tokens: positions of the paged cache (default: max_batch times the
    shorter of the model's context and 4,096); block_size: positions per block; prefix_cache: reuse
    the blocks of shared prompt prefixes; dense_weights: keep decoded copies of block-quantized
    weights for products of many rows (Decoder.keep_dense: float32, or bfloat16 with tensor cores in
    fast mode; default on the GPU; deterministic mode copies none of the weights its integer kernels read in
    place for any rows: the GPU's, and the CPU's compiled loops)."""

    def __init__(self, model: LanguageModel, max_batch: int = 16, max_queue: int = 256, cache_tokens: int | None = None,
                 block_size: int = BLOCK_SIZE, prefix_cache: bool = True, dense_weights: bool | None = None):
        for name, value in (("max_batch", max_batch), ("max_queue", max_queue), ("block_size", block_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(name, f"expected a positive integer, got {value!r}")
        self.model, self.dec = model, model.decoder
        c = self.dec.config
        if dense_weights if dense_weights is not None else self.dec.device == "cuda":
            self.dec.keep_dense()
        self.context = c.max_positions
        if cache_tokens is None:
            cache_tokens = max_batch * min(c.max_positions, 4096)
        if isinstance(cache_tokens, bool) or not isinstance(cache_tokens, int) or cache_tokens < block_size:
            raise ConfigError("cache_tokens", f"expected an integer >= block_size ({block_size}), got {cache_tokens!r}")
        self.cache = PagedKVCache(self.dec.xp, c.layers, c.kv_heads, c.head_dim,
                                  -(-cache_tokens // block_size), block_size)
        self.max_batch, self.max_queue, self.prefix_cache = max_batch, max_queue, prefix_cache
        self.waiting: collections.deque[Sequence] = collections.deque()
        self.running: list[Sequence] = []
        self._numbers = itertools.count()
        self._lock = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.deterministic = is_deterministic()     # the mode steps run in (a thread has its own)
        self.chunk = prefill_chunk(self.dec.device)
        self.pipeline = True                        # greedy decode steps launched a step ahead (_Ahead)
        self.on_step: Callable[[float], None] | None = None   # each step's wall seconds, from the engine's thread
        self._ahead: _Ahead | None = None           # a launched step whose tokens are not taken yet
        self.stats = {"steps": 0, "prefill_tokens": 0, "decode_tokens": 0, "cached_tokens": 0, "preempted": 0,
                      "cancelled": 0, "graph_steps": 0, "prefill_graph_steps": 0, "ahead_steps": 0}
        self.steps = StepRunner(self.dec, self.cache, self.deterministic, self.stats)   # the device's part

    # --- submitting ---------------------------------------------------------------------------------
    def check(self, request: Request) -> Request:
        """The request with its settings checked (ConfigError naming the bad one)."""
        c = self.dec.config
        gen._integer("max_tokens", request.max_tokens, "an integer >= 0")
        if not isinstance(request.sampling, gen.Sampling):
            raise ConfigError("sampling", f"expected a loom.llm.generate.Sampling, got {type(request.sampling).__name__}")
        prompt = gen.fit_prompt(gen.token_ids(request.prompt), request.max_tokens, self.context, c.vocab_size, truncate=False)
        stop_ids = (self.model.eos_ids if request.stop_ids is None
                    else gen.check_stop_ids(request.stop_ids, c.vocab_size))
        stop = gen.check_stop(request.stop)
        if stop and self.model.tokenizer is None:
            raise ConfigError("stop", "stop strings need the model's tokenizer; this model has none")
        room = self.cache.blocks * self.cache.block_size
        if len(prompt) + request.max_tokens > room:
            raise ConfigError("max_tokens", f"the prompt's {len(prompt)} tokens and max_tokens {request.max_tokens} "
                                            f"need {len(prompt) + request.max_tokens} positions; the paged cache "
                                            f"holds {room} (cache_tokens)")
        for name in ("presence_penalty", "frequency_penalty"):
            gen._number(name, getattr(request, name), lambda v: -2 <= v <= 2, "a number in [-2, 2]")
        if request.logprobs is not None:
            gen._integer("logprobs", request.logprobs, "an integer >= 0 (top alternatives per token)")
        gen.check_constraint(request.constraint, c.vocab_size)
        return Request(prompt, request.max_tokens, request.sampling, tuple(stop_ids), stop, request.presence_penalty,
                       request.frequency_penalty, request.logprobs, request.constraint)

    def submit(self, request: Request, sink: Callable[[Event], None]) -> Handle:
        """Queue a request; its events go to sink (called on the engine's thread). Raises QueueFull
        when max_queue requests wait already, ConfigError for bad settings."""
        return self.submit_all([request], [sink])[0]

    def submit_all(self, requests: list[Request], sinks: list[Callable[[Event], None]]) -> list[Handle]:
        """Queue several requests at once, or none of them (QueueFull when they do not all fit)."""
        checked = [self.check(r) for r in requests]
        constraints = [id(r.constraint) for r in checked if r.constraint is not None]
        if len(set(constraints)) < len(constraints):
            raise ConfigError("constraint", "two requests share one constraint; give each its own")
        tokenizer = self.model.tokenizer
        if self._stopping or (self._thread is not None and not self._thread.is_alive()):
            raise EngineError("the batch engine has stopped; no request is taken")
        with self._lock:
            if len(self.waiting) + len(checked) > self.max_queue:
                raise QueueFull(f"the queue holds {len(self.waiting)} of at most {self.max_queue} waiting requests "
                                f"(max_queue); {len(checked)} more do not fit, try again later")
            seqs = [Sequence(next(self._numbers), r, sink, self.dec.config.vocab_size,
                              None if tokenizer is None else gen.TextStream(tokenizer, r.stop))
                    for r, sink in zip(checked, sinks)]
            self.waiting.extend(seqs)
            self._lock.notify()
        return [Handle(seq) for seq in seqs]

    def generate(self, requests: Iterable[Request]) -> list[Result]:
        """Run requests to the end on this thread (no background thread may be running); every
        request is checked first, then they are queued as the queue has room."""
        if self._thread is not None:
            raise ConfigError("engine", "generate() runs the steps itself; this engine's thread is running")
        pending = collections.deque(self.check(r) for r in requests)
        outs: list[tuple[list[Event], Handle]] = []
        busy = True
        with mode.deterministic(self.deterministic):          # the mode the engine was made in
            while pending or busy:
                while pending and len(self.waiting) < self.max_queue:
                    events: list[Event] = []
                    outs.append((events, self.submit(pending.popleft(), events.append)))
                busy = self.step()
        return [result(events, handle._seq.prompt_len, self.model.tokenizer is not None) for events, handle in outs]

    # --- the thread ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Run steps on a background thread until stop(); first record the decode steps of every batch
        size up to max_batch where the device replays them (StepRunner.record_decode_steps)."""
        if self._thread is None:
            with mode.deterministic(self.deterministic):
                self.steps.record_decode_steps(self.max_batch)
            self._stopping = False
            self._thread = threading.Thread(target=self._loop, name="loom-batch-engine", daemon=True)
            self._thread.start()

    def cancel_all(self) -> None:
        """Every queued and running request ends with finish_reason "cancelled" at the engine's next step
        (a server shutting down; the thread keeps running)."""
        with self._lock:
            for seq in self.running + list(self.waiting):
                seq.cancelled = True
            self._lock.notify()

    def stop(self) -> None:
        """Stop the thread; requests still queued or running end with finish_reason "cancelled"."""
        with self._lock:
            self._stopping = True
            self._lock.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._drain_ahead()
        with self._lock:
            left = self.running + list(self.waiting)
            self.running, self.waiting = [], collections.deque()
        for seq in left:
            self._retire(seq, "cancelled")

    def _loop(self) -> None:
        with mode.deterministic(self.deterministic):
            while True:
                with self._lock:
                    while not self._stopping and not self.waiting and not self.running:
                        self._lock.wait()
                    if self._stopping:
                        return
                try:
                    start = time.perf_counter()
                    self.step()
                    if self.on_step is not None:
                        self.on_step(time.perf_counter() - start)
                except Exception as exc:        # a bug or a device failure: every live request learns it
                    log.exception("loom: a batch step failed")
                    try:
                        self.fail_all(f"{type(exc).__name__}: {exc}")
                    except Exception:           # noqa: BLE001 - the thread must outlive it
                        log.exception("loom: failing the requests of a failed step failed too")

    def fail_all(self, message: str) -> None:
        """End every queued and running request with finish_reason "error" and `message` (a step failed)."""
        self._drain_ahead()
        with self._lock:
            seqs = self.running + list(self.waiting)
            self.running, self.waiting = [], collections.deque()
        for seq in seqs:
            self.cache.release(seq.table)
            seq.table = []
            self._emit(seq, Event(None, finish_reason="error", error=message))

    @property
    def load(self) -> dict:
        with self._lock:
            return {"running": len(self.running), "waiting": len(self.waiting),
                    "free_blocks": self.cache.available(), "blocks": self.cache.blocks}

    # --- one step -----------------------------------------------------------------------------------
    def step(self) -> bool:
        """One step; returns whether any sequence is left running or waiting (or a step in flight)."""
        self._drop_cancelled()
        if self._ahead is None:
            self._admit()
            work, seqs = self._plan()
            if work and self._pipelines(work, seqs):
                graph = self.steps.decode_graph(len(work), work)
                ids, positions, tables = [int(w.tokens[0]) for w in work], [w.pos for w in work], [w.table for w in work]
                if all(plain_greedy(s.request) for s in seqs):
                    self._ahead = _Ahead(graph, seqs, positions, graph.step_greedy(ids, positions, tables))
                else:                       # some rows sample: every row's token chosen by sample_rows
                    sampler = DeviceRows(self.dec.xp, [s.request.sampling for s in seqs], [s.seen for s in seqs],
                                         self.dec.config.vocab_size)
                    sampler.set_steps([len(s.generated) for s in seqs])
                    self._ahead = _Ahead(graph, seqs, positions, graph.step_sample(ids, positions, tables, sampler),
                                         sampler=sampler)
            elif work:
                self._finish_step(work, seqs, self.steps.run(work, [plain_greedy(s.request) for s in seqs]))
        if self._ahead is not None:
            self._take_ahead()
        with self._lock:
            return bool(self.running or self.waiting or self._ahead)

    def _finish_step(self, work: list[paged_forward.Work], seqs: list[Sequence], choices: list) -> None:
        """After a step's forward pass: the sequences' new lengths, their full blocks registered,
        and a token sampled for each that wanted logits."""
        self.stats["steps"] += 1
        for w, seq, choice in zip(work, seqs, choices):
            seq.length = w.pos + len(w.tokens)
            self._register_blocks(seq)
            if choice is not None:
                self._take_token(seq, choice)

    def _take_token(self, seq: Sequence, choice: np.ndarray | int) -> None:
        try:
            self._sample(seq, choice)
        except Exception as exc:    # noqa: BLE001 - this sequence's (a token its tokenizer lacks)
            if seq in self.running:
                self._finish(seq, "error", f"{type(exc).__name__}: {exc}")

    # --- greedy steps a step ahead ------------------------------------------------------------------
    # While every running sequence decodes plain greedy tokens through a recorded step, the host need
    # not see a step's tokens before the next step starts: each step writes its argmax tokens into the
    # graph's inputs on the device, and the engine launches step n + 1 before it takes step n's tokens
    # (streams them, checks stops), so that host work overlaps the device's. The rows stay those of
    # the run's first step; a sequence that stops, or is cancelled, leaves a padding row (its last
    # step's extra token is dropped: it wrote one more key into the sequence's own last block, which
    # is released, and stream order puts that write before any later owner's). The run ends, and the
    # next step is planned as usual, when a waiting request could be admitted, a block cannot be
    # taken without preempting, half the rows are padding, or a position leaves the recorded steps.
    def _pipelines(self, work: list[paged_forward.Work], seqs: list[Sequence]) -> bool:
        """Whether this step can start a run of steps launched ahead (no constraint: a lazy one, free
        now, may begin masking within the run, whose tokens the host sees only a step later)."""
        return (self.pipeline and self.dec.backend.prefill is not None and not self._admissible()
                and all(len(w.tokens) == 1 and w.logits for w in work)
                and (all(plain_greedy(s.request) and s.request.constraint is None for s in seqs)
                     or all(device_sampled(s.request) for s in seqs))
                and self.steps.decode_graph(len(work), work) is not None)

    def _admissible(self) -> bool:
        """Whether _admit would take the first waiting request now (a slot, and blocks for its first
        chunk): a run of steps launched ahead would keep it waiting."""
        with self._lock:
            if not self.waiting or len(self.running) >= self.max_batch:
                return False
            seq = self.waiting[0]
        need = -(-min(self.chunk, len(seq.tokens)) // self.cache.block_size) + 1
        return seq.request.max_tokens == 0 or not self.running or self.cache.available() >= need

    def _drain_ahead(self) -> None:
        """Wait for a step still in flight and drop its tokens (stop, a failed step): its copies from and
        to the pinned buffers end before anything reuses them."""
        step, self._ahead = self._ahead, None
        if step is not None:
            with contextlib.suppress(Exception):        # (a failed device: the caller reports it)
                step.tokens.get()

    def _take_ahead(self) -> None:
        """Launch the step after the one in flight (where the run goes on), then take the in-flight
        step's tokens."""
        step = self._ahead
        self._ahead = self._launch_next(step)
        tokens = step.tokens.get()
        self.stats["steps"] += 1
        self.stats["graph_steps"] += 1
        live = self._live()
        for row, seq in enumerate(step.rows):
            if seq is None or id(seq) not in live:
                continue
            if step.ahead:                  # (a run's first step was counted when it was planned)
                self.stats["decode_tokens"] += 1
            seq.length = step.positions[row] + 1
            self._register_blocks(seq)
            self._take_token(seq, int(tokens[row]))

    def _live(self) -> set[int]:
        """The ids of the running sequences that are not cancelled: a run's rows that still decode."""
        return {id(s) for s in self.running if not s.cancelled}

    def _launch_next(self, step: _Ahead) -> _Ahead | None:
        """The step after `step`, launched on the device (None where the run ends)."""
        if self._admissible():
            return None
        live = self._live()
        rows: list[Sequence | None] = []
        for seq in step.rows:
            # a sequence taking its last token in `step` (max_tokens, or the context) pads its row
            last = seq is not None and (len(seq.generated) + 1 >= seq.request.max_tokens
                                        or len(seq.tokens) + 1 >= self.context)
            rows.append(seq if seq is not None and id(seq) in live and not last else None)
        if sum(seq is not None for seq in rows) * 2 <= len(rows):
            return None
        positions = [0 if seq is None else p + 1 for seq, p in zip(rows, step.positions)]
        bs = self.cache.block_size
        for seq, p in zip(rows, positions):
            if seq is not None and p // bs >= len(seq.table):
                try:
                    seq.table.append(self.cache.take())
                except OutOfBlocks:
                    return None             # the next planned step preempts
        self.stats["ahead_steps"] += 1
        tables = [[] if seq is None else seq.table for seq in rows]
        if step.sampler is None:
            return _Ahead(step.graph, rows, positions, step.graph.step_greedy(None, positions, tables), ahead=True)
        # the next token's step counter: its generated tokens so far and `step`'s, not yet taken
        step.sampler.set_steps([0 if seq is None else len(seq.generated) + 1 for seq in rows])
        return _Ahead(step.graph, rows, positions, step.graph.step_sample(None, positions, tables, step.sampler),
                      ahead=True, sampler=step.sampler)

    def _drop_cancelled(self) -> None:
        with self._lock:
            gone = [s for s in self.running if s.cancelled] + [s for s in self.waiting if s.cancelled]
            self.running = [s for s in self.running if not s.cancelled]
            self.waiting = collections.deque(s for s in self.waiting if not s.cancelled)
        for seq in gone:
            self.stats["cancelled"] += 1
            self._retire(seq, "cancelled")

    def _admit(self) -> None:
        while True:
            with self._lock:
                if not self.waiting or len(self.running) >= self.max_batch:
                    return
                seq = self.waiting[0]
                if seq.request.max_tokens == 0:            # nothing to generate: done at once
                    self.waiting.popleft()
                    self._retire(seq, "length")
                    continue
                # blocks for its first chunk and a little more (prefix hits only make it need fewer):
                # admitting beyond that would preempt at once
                need = -(-min(self.chunk, len(seq.tokens)) // self.cache.block_size) + 1
                if self.running and self.cache.available() < need:
                    return                      # wait for blocks to come back
                self.waiting.popleft()
                self.running.append(seq)
            self._reuse_prefix(seq)

    def _reuse_prefix(self, seq: Sequence) -> None:
        """Take the registered blocks the sequence's tokens start with (never the block holding its
        last token, whose logits must be computed)."""
        if not self.prefix_cache or seq.length:
            return
        bs = self.cache.block_size
        limit = (len(seq.tokens) - 1) // bs
        if self.deterministic:
            limit = min(limit, exact_dispatch.ROUNDED_MAX_K // bs)
        names = block_names(seq.tokens, bs, limit)
        for name in names:
            block = self.cache.lookup(name)
            if block is None:
                break
            self.cache.share(block)
            seq.table.append(block)
            seq.names.append(name)
        seq.registered = len(seq.table)
        seq.length = len(seq.table) * bs
        self.stats["cached_tokens"] += seq.length

    def _plan(self) -> tuple[list[paged_forward.Work], list[Sequence]]:
        """This step's work, one item per running sequence that has some (blocks taken for it)."""
        planned: dict[int, paged_forward.Work] = {}      # by sequence number, in running order
        budget = PREFILL_TOKENS
        for seq in list(self.running):
            if seq not in self.running:         # preempted while planning another
                continue
            known, start = len(seq.tokens), seq.length
            end = known                                  # a decode step: the last token
            if known - start > 1:                        # a prefill chunk, ending where the alone path's do
                end = min((start // self.chunk + 1) * self.chunk, known)
                if planned and end - start > budget:
                    continue
                budget -= end - start
            if not self._make_room(seq, end, planned):
                continue
            tokens = np.asarray(seq.tokens[start:end], dtype=np.int64)
            planned[seq.number] = paged_forward.Work(tokens, start, seq.table, logits=end == known)
        seqs = [s for s in self.running if s.number in planned]
        work = [planned[s.number] for s in seqs]
        self.stats["prefill_tokens"] += sum(len(w.tokens) for w in work if len(w.tokens) > 1)
        self.stats["decode_tokens"] += sum(1 for w in work if len(w.tokens) == 1)
        return work, seqs

    def _make_room(self, seq: Sequence, end: int, planned: dict) -> bool:
        """Blocks for positions up to `end`; preempts other sequences (newest first; their work
        planned for this step is dropped) when none is left. False when seq itself had to be
        preempted."""
        need = -(-end // self.cache.block_size) - len(seq.table)
        while need > 0:
            try:
                seq.table.append(self.cache.take())
                need -= 1
            except OutOfBlocks:
                victims = [s for s in self.running if s is not seq]
                victim = victims[-1] if victims else seq
                planned.pop(victim.number, None)
                self._preempt(victim)
                if victim is seq:
                    return False
        return True

    def _preempt(self, seq: Sequence) -> None:
        with self._lock:
            self.running.remove(seq)
            self.waiting.appendleft(seq)
        self.cache.release(seq.table)
        seq.table, seq.names, seq.length, seq.registered = [], [], 0, 0
        self.stats["preempted"] += 1
        if not self.running:        # it held every block alone (check() makes this unreachable)
            self._fail(seq, f"the sequence needs more than the paged cache's {self.cache.blocks} blocks")

    def _fail(self, seq: Sequence, message: str) -> None:
        with self._lock:
            if seq in self.waiting:
                self.waiting.remove(seq)
        self._emit(seq, Event(None, finish_reason="error", error=message))

    def _register_blocks(self, seq: Sequence) -> None:
        """Name and register the sequence's newly full blocks (prefix caching)."""
        if not self.prefix_cache:
            return
        bs = self.cache.block_size
        full = seq.length // bs
        if full <= seq.registered:
            return
        names = block_names(seq.tokens, bs, full, seq.names[-1] if seq.names else b"", seq.registered)
        for b, name in enumerate(names, seq.registered):
            self.cache.register(seq.table[b], name)
        seq.names += names
        seq.registered = full

    def _sample(self, seq: Sequence, logits: np.ndarray | int) -> None:
        """The sequence's next token from its logits (or the token, chosen on the device)."""
        r = seq.request
        if isinstance(logits, int):
            token = logits
        else:
            adjusted = logits
            if seq.counts and (r.presence_penalty or r.frequency_penalty):
                ids = np.fromiter(seq.counts.keys(), dtype=np.int64)
                counts = np.fromiter(seq.counts.values(), dtype=np.float32)
                adjusted = logits.copy()
                adjusted[ids] -= np.float32(r.frequency_penalty) * counts + np.float32(r.presence_penalty)
            allowed = None if r.constraint is None else r.constraint.allowed(r.stop_ids)
            token = gen.choose(adjusted, seq.seen, r.sampling, len(seq.generated), allowed)
        if token in r.stop_ids:
            self._finish(seq, "stop")
            return
        event = Event(token)
        if r.logprobs is not None:
            event.logprob, event.top_logprobs = logprobs(logits, token, r.logprobs)
        if r.constraint is not None:
            r.constraint.push(token)
        seq.generated.append(token)
        seq.tokens.append(token)
        seq.seen[token] = True
        seq.counts[token] += 1
        if seq.text is not None:
            event.text = seq.text.push(token)
        self._emit(seq, event)
        if (seq.text is not None and seq.text.stopped) or (r.constraint is not None and r.constraint.finished):
            self._finish(seq, "stop")
        elif len(seq.generated) >= r.max_tokens or len(seq.tokens) >= self.context:
            self._finish(seq, "length")

    def _finish(self, seq: Sequence, reason: str, error: str | None = None) -> None:
        with self._lock:
            self.running.remove(seq)
        self._retire(seq, reason, error)

    @staticmethod
    def _emit(seq: Sequence, event: Event) -> None:
        """Hand an event to the sequence's sink; a sink that raises cancels its own request only."""
        try:
            seq.sink(event)
        except Exception:               # noqa: BLE001 - the caller's code: logged, never the engine's end
            log.exception("loom: a request's event sink raised; the request is cancelled")
            seq.cancelled = True

    def _retire(self, seq: Sequence, reason: str, error: str | None = None) -> None:
        self.cache.release(seq.table)
        seq.table = []
        tail = seq.text.flush() if seq.text is not None and reason != "cancelled" else ""
        if tail:
            self._emit(seq, Event(None, text=tail))
        self._emit(seq, Event(None, finish_reason=reason, error=error))

"""Batched generation (issue 34): aggregate decode tokens/s of loom.llm.batching.BatchEngine with 1,
16 and 64 concurrent streams, against one stream through CausalLM.generate_ids (the model's own
engine, a batch of one; a fresh prompt each call), on one of benchmarks/llm.py's model shapes
(SmolLM2-135M's by default) with random bf16 weights.

    PYTHONPATH=. python benchmarks/serve.py --device cuda [--shape S] [--streams 1,16,64] [--tokens 64]
                                            [--deterministic | --compare] [--parts prefill,decode,ttft]
                                            [--prefill-tokens 512,2048] [--ttft-rounds 3] [--transformers]
                                            [--set loom.MODULE.NAME=INT]

decode: each stream gets a distinct 32-token prompt and decodes --tokens greedy tokens (no stop id;
sampled at --temperature and --top-p where given, each stream its own seed),
all submitted at once, after two warm-up rounds of the same shapes (the second replays the prompt
step the first recorded, as a server does from a mix's second sighting); "tok/s aggregate" counts
every generated token over the whole run's time, prefill included, so it is what a server's clients
would see in aggregate; "decode steps alone" counts the tokens after each stream's first over the
time after the last stream got its first, which is printed too (the prompts' phase: all the streams' prompts
as one step, replayed as the second warm-up round recorded it, with their first tokens).
prefill: one request of each --prefill-tokens length through a BatchEngine (loom serve's and
generate_ids' path; the prompt and its first token, no prefix cache), best of 5, with bf16 products on
the tensor cores (fast mode's default) launched kernel by kernel (graphs off, as a prompt shape's first
sighting runs) and replayed as the recorded prompt step (the default from a shape's second sighting),
and in float32 (tensor_cores off, Decoder.keep_dense copies); --transformers adds transformers' bf16
model (sdpa attention, eager) on the same prompt length (the last position's logits), the anchor.
ttft: `loom serve`'s app on uvicorn (loopback, in this process), --ttft-clients concurrent streamed
/v1/completions requests of --ttft-prompt random token ids each (16 new tokens): the time from sending
a request to its first token's event, p50 and p99 over the clients, after a warm-up round, in each of
--ttft-rounds rounds and their medians (needs the 'serve' extra).
--compare: both modes in one process, each part run in fast then deterministic mode, then every
figure's deterministic / fast ratio (for times, above 1 is slower).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

import loom
from loom.llm.batching import BatchEngine, Request
from loom.llm.decoder import Decoder
from loom.llm.decoder_config import DecoderConfig
from loom.llm.generate import Sampling
from loom.llm.model import CausalLM

sys.path.insert(0, os.path.dirname(__file__))
import llm  # noqa: E402  (the benchmark's model shapes and random weights)
from decode_graph_parts import set_constants  # noqa: E402

PROMPT = 32


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--shape", default="smollm2-135m", choices=sorted(llm.SHAPES))
    p.add_argument("--streams", default="1,16,64")
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--deterministic", action="store_true")
    p.add_argument("--compare", action="store_true", help="both modes in one process, with det / fast ratios")
    p.add_argument("--parts", default="prefill,decode,ttft")
    p.add_argument("--temperature", type=float, default=0.0, help="decode: sample at this temperature (0: greedy)")
    p.add_argument("--top-p", type=float, default=1.0, help="decode: and this top-p")
    p.add_argument("--prefill-tokens", default="2048", help="comma-separated prompt lengths")
    p.add_argument("--ttft-clients", type=int, default=16)
    p.add_argument("--ttft-prompt", type=int, default=1024)
    p.add_argument("--ttft-rounds", type=int, default=3, help="timed rounds of --ttft-clients requests (medians kept)")
    p.add_argument("--transformers", action="store_true", help="add transformers' bf16 prefill (the anchor)")
    p.add_argument("--set", action="append", default=[], metavar="MODULE.NAME=INT",
                   help="an integer constant of a loom module, changed first (repeatable; decode_graph_parts.py's)")
    args = p.parse_args()
    set_constants(args.set)
    config = llm.SHAPES[args.shape]
    modes = (False, True) if args.compare else (args.deterministic,)
    models = {}
    for det in modes:
        with loom.deterministic(det):
            weights = llm.random_weights("BF16", config=config, device=args.device)
            models[det] = CausalLM(Decoder(DecoderConfig.from_hf(config), weights, args.device), None, dict(config),
                                   eos_ids=())
    figures: dict = {det: {} for det in modes}
    rng = np.random.default_rng(0)
    for part in args.parts.split(","):
        for det in modes:
            with loom.deterministic(det):
                print(f"# {args.shape} shapes, bf16 random weights, {args.device}, "
                      f"{'deterministic' if det else 'fast'} mode")
                if part == "prefill":
                    figures[det].update(engine_prefill(models[det], rng, args, config))
                elif part == "decode":
                    figures[det].update(decode(models[det], rng, args))
                elif part == "ttft":
                    figures[det].update(ttft(models[det], rng, args.ttft_clients, args.ttft_prompt, args.ttft_rounds))
    if args.compare:
        print("# deterministic / fast")
        for name, fast in figures[False].items():
            if name in figures[True] and fast:
                print(f"{name}: {figures[True][name]:,.1f} / {fast:,.1f} = {figures[True][name] / fast:.2f}")


def engine_prefill(model: CausalLM, rng, args, config: dict) -> dict:
    """For each --prefill-tokens length, one request (max_tokens 1: the prompt and its first token) through a BatchEngine, the
    path of `loom serve`, generate_batch and generate_ids, best of 5 after three warm-ups (no prefix cache,
    so each run computes the whole prompt): bf16 products on the tensor cores (fast mode's default) with
    the prompt step launched kernel by kernel (graphs off: a shape's first sighting) and replayed as a
    recorded graph (from the shape's second sighting: the default), and float32 products (tensor_cores
    off, float32 weight copies); transformers' bf16 model with sdpa attention (eager) on the same prompt
    length, in the same run. Returns {"prefill N tok/s": the default setting's rate} per length."""
    figures = {}
    for length in (int(n) for n in args.prefill_tokens.split(",")):
        figures[f"prefill {length} tok/s"] = _prefill(model, rng, length, args.transformers, config)
    return figures


def _prefill(model: CausalLM, rng, length: int, transformers: bool, config: dict) -> float:
    dec = model.decoder
    ids = rng.integers(0, config["vocab_size"], length).tolist()
    setting = dec.tensor_cores
    rates, default = {}, None
    for tensor_cores, graphs in dict.fromkeys(((setting, False), (setting, True), (False, False))):
        if graphs and not dec.backend.graphs:
            continue                    # (no recorded steps on this device)
        dec.tensor_cores, dec.graphs = tensor_cores, graphs
        engine = BatchEngine(model, max_batch=1, cache_tokens=length + 16, prefix_cache=False)
        times = []
        for _ in range(8):              # the first three: warm-up (kernels, weight copies, the recorded step)
            dec.backend.synchronize()
            t = time.perf_counter()
            engine.generate([Request(ids, max_tokens=1, stop_ids=())])
            times.append(time.perf_counter() - t)
        best = min(times[3:])
        what = (("bf16 tensor-core" if tensor_cores else "float32") + " products, "
                + ("recorded graph" if engine.stats["prefill_graph_steps"] else "kernel by kernel"))
        rates[what] = length / best
        if (tensor_cores, graphs) == (setting, True) or default is None:
            default = length / best         # (the device's default: graphs on, where it has them)
        # a new shape's first sighting runs kernel by kernel, its second also records the step
        first = f" (first call {times[0] * 1e3:.0f} ms, second {times[1] * 1e3:.0f} ms)" if graphs else ""
        print(f"BatchEngine prefill {length} tokens + first token, {what}: {best * 1e3:.1f} ms, "
              f"{length / best:,.0f} tok/s{first}")
    dec.tensor_cores, dec.graphs = setting, True
    if transformers:
        rate = llm.transformers_prefill(config, dec.device, length)
        print(f"transformers bf16 (sdpa) prefill {length} tokens: {length / rate * 1e3:.1f} ms, {rate:,.0f} tok/s")
        print("  loom / transformers: " + ", ".join(f"{what} {r / rate:.2f}x" for what, r in rates.items()))
    return default


def decode(model: CausalLM, rng, args) -> dict:
    vocab = model.decoder.config.vocab_size
    figures = {}

    def prompt() -> list[int]:      # a fresh one each call: generate_ids' engine caches prompt prefixes
        return rng.integers(0, vocab, PROMPT).tolist()
    for _ in range(2):          # warm-up: kernels, the decode graph, the prompt's graph (recorded on its second run)
        list(model.generate_ids(prompt(), max_tokens=8, stop_ids=()))
    t = time.perf_counter()
    n = len(list(model.generate_ids(prompt(), max_tokens=args.tokens, stop_ids=())))
    single = n / (time.perf_counter() - t)
    print(f"generate_ids, 1 stream, {args.tokens} tokens: {single:,.0f} tok/s")
    figures["generate_ids tok/s"] = single
    for streams in [int(s) for s in args.streams.split(",")]:
        engine = BatchEngine(model, max_batch=streams, cache_tokens=streams * (PROMPT + args.tokens + 16))
        for _ in range(2):      # the second round replays the prompt step the first recorded
            engine.generate([Request(prompt(), max_tokens=4, stop_ids=(),
                                     sampling=Sampling(temperature=args.temperature, top_p=args.top_p))
                             for _ in range(streams)])
        reqs = [Request(prompt(), max_tokens=args.tokens, stop_ids=(),
                        sampling=Sampling(temperature=args.temperature, top_p=args.top_p, seed=i))
                for i in range(streams)]
        events: list[list] = [[] for _ in reqs]
        steps, t = engine.stats["steps"], time.perf_counter()
        for r, sink in zip(reqs, events):
            engine.submit(r, sink.append)
        first = None                            # when every stream has its first token (the prompts done)
        while engine.step():
            if first is None and all(events):
                first = time.perf_counter()
        seconds = time.perf_counter() - t
        total = sum(e.token is not None for evs in events for e in evs)
        decode = (total - streams) / (seconds - (first - t)) if first is not None else float("nan")
        prompts = (first - t) * 1e3 if first is not None else float("nan")
        print(f"BatchEngine, {streams} streams: {total / seconds:,.0f} tok/s aggregate "
              f"({seconds / (engine.stats['steps'] - steps) * 1e3:.1f} ms a step), decode steps alone "
              f"{decode:,.0f} tok/s ({streams / decode * 1e3:.2f} ms a step); {prompts:.1f} ms until every stream "
              f"had its first token")
        figures[f"{streams} streams ms to every first token"] = prompts
        figures[f"{streams} streams aggregate tok/s"] = total / seconds
        figures[f"{streams} streams decode steps tok/s"] = decode
    return figures


def ttft(model: CausalLM, rng, clients: int, prompt: int, rounds: int = 3) -> dict:
    """A warm-up round, then `rounds` timed rounds of `clients` concurrent streamed requests (each its own random
    prompt): each round's p50 and p99 printed, their medians returned (one round's p50 moved by up to 30% between
    runs on a shared host)."""
    import http.client
    import threading

    import uvicorn

    from loom.serve import Server
    server = Server(model, "bench", max_batch=clients, max_queue=clients)
    running = uvicorn.Server(uvicorn.Config(server.app(), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    while not running.started:
        time.sleep(0.01)
    port = running.servers[0].sockets[0].getsockname()[1]

    def first_token(ids: list[int], out: list, i: int) -> None:
        body = json.dumps({"model": "bench", "prompt": ids, "max_tokens": 16, "temperature": 0, "stream": True,
                           "logprobs": 0})        # logprobs: an event per token (the model has no tokenizer)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        t = time.perf_counter()
        conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        while not response.readline().startswith(b"data: {"):
            pass
        out[i] = time.perf_counter() - t
        response.read()
        conn.close()

    vocab = model.decoder.config.vocab_size
    p50s, p99s = [], []
    try:
        for label in ["warm-up"] + ["timed"] * rounds:
            times = [0.0] * clients
            threads = [threading.Thread(target=first_token, args=(rng.integers(0, vocab, prompt).tolist(), times, i))
                       for i in range(clients)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            if label == "timed":
                p50s.append(float(np.percentile(times, 50)) * 1e3)
                p99s.append(float(np.percentile(times, 99)) * 1e3)
                print(f"time to first token, {clients} concurrent {prompt}-token requests through loom serve, round "
                      f"{len(p50s)}: p50 {p50s[-1]:.0f} ms, p99 {p99s[-1]:.0f} ms")
    finally:
        running.should_exit = True
        thread.join(30)
    if not p50s:
        return {}
    print(f"time to first token, median of {len(p50s)} rounds: p50 {np.median(p50s):.0f} ms, p99 {np.median(p99s):.0f} ms")
    return {"time to first token p50 ms": float(np.median(p50s)), "time to first token p99 ms": float(np.median(p99s))}


if __name__ == "__main__":
    main()

"""Where a recorded decode step's time goes (issue 7): the batch engine's decode step at batch 1
(loom/llm/paged_graph.py PagedDecodeGraph, the graph a lone sequence's steps replay) replayed 200 times,
then again recorded without one kind of kernel; the difference is that kernel's share, launch gaps
included.

    PYTHONPATH=. python benchmarks/decode_graph_parts.py [Q4_1|BF16|Q4_K|Q8_0] [--shape llama-3.1-8b] [--plain]
                                                         [--deterministic] [--batch N] [--planes-rows N] [--whole]
                                                         [--profile ROWS] [--set loom.MODULE.NAME=INT]
                                                         [--position P] [--eager]

SmolLM2-135M's shapes (or another of benchmarks/llm.py's SHAPES) with random weights, a paged cache
holding a 16-token prompt (paged_forward), the step at position 16, batch 1, fast mode
(--deterministic: deterministic mode's graph; --batch N: N sequences of that prompt, the step at
batch N; --planes-rows N: its products take the weights' int8 planes from N rows, quant_fixed.PLANES_ROWS;
--whole: the whole step's time alone; --profile ROWS: its kernels by name as well, from torch.profiler;
--set: an integer constant of a loom module changed first, such as a dispatch threshold; --position P: the step at
position P, the cache past the prompt holding random keys and values, so that attention reads P + 1 keys;
--eager: also the same step kernel by kernel, paged_forward.forward, the path a step takes without a recording).
--plain records plain launches instead of overlapped ones
(loom/backend/cuda/launch.py). Each product's row also gives the bytes its weight holds and the
rate they were read at (its time share, launch gaps included; with the planes, their 2 bytes a value).

PagedDecodeGraph builds its launches untagged (_operations()); PartialGraph.tagged() builds the same
list through the graph's own _product() with each launch's kind, and main() checks that it matches
_operations() launch for launch before timing anything.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from functools import partial

import numpy as np

import loom
from loom.kernels.exact import rounded as exact_rounded
from loom.llm import paged_forward, paged_graph
from loom.llm.decoder import Decoder
from loom.llm.decoder_config import DecoderConfig
from loom.llm.paged_cache import PagedKVCache

sys.path.insert(0, os.path.dirname(__file__))
import llm  # noqa: E402  (the benchmark's model shapes and random weights)

KINDS = ("embed", "qkv", "attention", "o", "gate_up", "down", "lm_head")
PROMPT, BLOCK = 16, 16


class PartialGraph(paged_graph.PagedDecodeGraph):
    """The paged decode step with the kernels of the kinds in `skip` left out (the logits are then
    meaningless)."""

    skip: tuple = ()

    def tagged(self) -> list:
        """PagedDecodeGraph._operations() as (kind, launch) pairs, kind one of KINDS (an RMSNorm kernel
        of its own counts with its product)."""
        dec, c, cache = self.dec, self.dec.config, self.cache
        quant, kernels = paged_graph._kernels(dec.backend, self.exact)
        h = self.h

        def kind(name, launches):
            return [(name, launch) for launch in launches]

        ops = [("embed", partial(quant.embed, *paged_graph._stored(dec.embed), self.ids, h))]
        for i, L in enumerate(dec.layers):
            ops += kind("qkv", self._product(L.qkv, h, self.qkv, norm=L.ln1, bias=L.qkv_bias))
            extra = (exact_rounded.error_factor(c.head_dim),) if self.exact else ()
            ops.append(("attention", partial(kernels.paged_attention, self.qkv, cache.k[i], cache.v[i], self.ctx,
                                             dec._cos, dec._sin, L.qk_norm, self.pos, self.tables, cache.block_size,
                                             c.heads, L.window, dec.scale, c.eps, *extra, overlap=self.overlap,
                                             **self._attention_keywords())))
            ops += kind("o", self._product(L.o, self.ctx, h, bias=L.o_bias, residual=h))
            ops += kind("gate_up", self._product(L.gate_up, h, self.act, norm=L.ln2, bias=L.gate_up_bias, swiglu=True))
            ops += kind("down", self._product(L.down, self.act, h, bias=L.down_bias, residual=h))
        return ops + kind("lm_head", self._product(dec.lm_head, h, self.logits, norm=dec.norm))

    def _operations(self) -> list:
        return [launch for name, launch in self.tagged() if name not in self.skip]


def same_launches(graph: PartialGraph) -> str | None:
    """Why tagged() is not PagedDecodeGraph._operations() launch for launch (None where it is): the
    same functions with the same arguments (the same objects, or equal values), in the same order."""
    ours = [launch for _, launch in graph.tagged()]
    theirs = paged_graph.PagedDecodeGraph._operations(graph)
    if len(ours) != len(theirs):
        return f"{len(ours)} launches tagged, {len(theirs)} in PagedDecodeGraph._operations()"
    for n, (a, b) in enumerate(zip(ours, theirs)):
        if (a.func is not b.func or len(a.args) != len(b.args) or a.keywords.keys() != b.keywords.keys()
                or not all(_same(x, y) for x, y in zip(a.args, b.args))
                or not all(_same(a.keywords[k], b.keywords[k]) for k in a.keywords)):
            return f"launch {n} differs: {a.func.__name__} against {b.func.__name__}"
    return None


def _same(x, y) -> bool:
    if x is y:
        return True
    if hasattr(x, "data") and hasattr(x, "shape") and hasattr(y, "data") and hasattr(y, "shape"):
        ptr = getattr(getattr(x, "data", None), "ptr", None)      # device arrays: the same memory
        return ptr is not None and ptr == getattr(y.data, "ptr", None) and x.shape == y.shape
    try:
        return bool(x == y)
    except Exception:
        return False


def replay_us(graph, xp, n: int = 200) -> float:
    """The step's time, us: n replays of the recording its position takes (graph.replayed)."""
    for _ in range(3):
        graph.replayed.launch()
    start, stop = xp.cuda.Event(), xp.cuda.Event()
    start.record()
    for _ in range(n):
        graph.replayed.launch()
    stop.record()
    stop.synchronize()
    return xp.cuda.get_elapsed_time(start, stop) * 1000 / n


def eager_us(dec, cache, token: int, position: int, tables: list, n: int = 10) -> float:
    """The step's time kernel by kernel, us: n calls of paged_forward.forward for one token a sequence at
    `position` (each rewrites that position's keys and values, as a replay does), after one to warm up."""
    work = [paged_forward.Work(np.array([token]), position, t, logits=True) for t in tables]
    paged_forward.forward(dec, cache, work)
    dec.xp.cuda.Device().synchronize()
    start = time.perf_counter()
    for _ in range(n):
        paged_forward.forward(dec, cache, work)
    dec.xp.cuda.Device().synchronize()
    return (time.perf_counter() - start) * 1e6 / n


def profile_replays(graph, rows: int, n: int = 20) -> None:
    """The kernels of n replays of the step by name, us a step (torch.profiler: its CUPTI sees the graph's
    kernels, CuPy's and cuBLAS's alike; needs torch with CUDA)."""
    from torch.profiler import ProfilerActivity, profile
    graph.replayed.launch()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            graph.replayed.launch()
        graph.dec.backend.synchronize()
    events = sorted(prof.key_averages(), key=lambda e: -e.self_device_time_total)
    total = sum(e.self_device_time_total for e in events) / n
    print(f"  kernels of one step (profiler, {n} replays): {total:.1f} us in all")
    for e in events[:rows]:
        print(f"    {e.self_device_time_total / n:8.1f} us {e.count // n:5d} launches  {e.key[:90]}")


def set_constants(settings: list[str]) -> None:
    """Apply --set's loom.MODULE.NAME=INT settings (an integer or bool constant of a loom module, such as a
    dispatch threshold), or exit naming the bad one."""
    for setting in settings:
        name, _, value = setting.partition("=")
        module, _, attr = name.rpartition(".")
        if not module.startswith("loom.") or not value.lstrip("-").isdigit():
            raise SystemExit(f"--set takes loom.MODULE.NAME=INT, got {setting!r}")
        target = importlib.import_module(module)
        if not isinstance(getattr(target, attr, None), int):
            raise SystemExit(f"--set: {name} is not an integer constant of {module}")
        setattr(target, attr, type(getattr(target, attr))(int(value)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("qtype", nargs="?", default="Q4_1", choices=["Q4_1", "BF16", "Q4_K", "Q8_0"])
    ap.add_argument("--shape", default="smollm2-135m", choices=sorted(llm.SHAPES))
    ap.add_argument("--plain", action="store_true", help="plain launches instead of overlapped ones")
    ap.add_argument("--deterministic", action="store_true", help="deterministic mode's graph (default: fast)")
    ap.add_argument("--batch", type=int, default=1, help="sequences in the step (default 1)")
    ap.add_argument("--whole", action="store_true", help="time the whole step only, not each kind's share")
    ap.add_argument("--profile", type=int, default=0, metavar="ROWS",
                    help="also list the whole step's kernels by name (torch.profiler over 20 replays), ROWS of them")
    ap.add_argument("--planes-rows", type=int, default=None,
                    help="deterministic products take the weights' int8 planes from this many rows (quant_fixed."
                         "PLANES_ROWS; default: its value)")
    ap.add_argument("--set", action="append", default=[], metavar="MODULE.NAME=INT",
                    help="set an integer constant of a loom module first, to time a dispatch choice, e.g. "
                         "loom.backend.cuda.quant_fixed_planes_tiled.ROWS=16 (repeatable)")
    ap.add_argument("--eager", action="store_true",
                    help="also time the step kernel by kernel (paged_forward.forward, without a recording)")
    ap.add_argument("--position", type=int, default=PROMPT,
                    help=f"the step's position (default {PROMPT}, right after the prompt); the cache between holds "
                         "random keys and values")
    args = ap.parse_args()
    if args.position < PROMPT:
        raise SystemExit(f"--position {args.position}: the step comes after the {PROMPT}-token prompt")
    set_constants(args.set)
    if args.planes_rows is not None:
        if not args.deterministic:
            raise SystemExit("--planes-rows sets where deterministic products take the planes: pass --deterministic")
        from loom.backend.cuda import quant_fixed
        if not quant_fixed.MAX_ROWS < args.planes_rows <= quant_fixed.ROWS_MAX + 1:
            raise SystemExit(f"--planes-rows takes {quant_fixed.MAX_ROWS + 1} to {quant_fixed.ROWS_MAX + 1}")
        quant_fixed.PLANES_ROWS = args.planes_rows
    config = llm.SHAPES[args.shape]         # (its context made long enough for --position: the RoPE tables' rows)
    config = {**config, "max_position_embeddings": max(config["max_position_embeddings"], args.position + 1)}
    dec = Decoder(DecoderConfig.from_hf(config), llm.random_weights(args.qtype, config=config, device="cuda"),
                  device="cuda")
    c, xp, layers = dec.config, dec.xp, config["num_hidden_layers"]
    prompt = np.random.default_rng(1).integers(0, config["vocab_size"], PROMPT)
    L = dec.layers[0]
    nbytes = {"qkv": L.qkv.nbytes, "o": L.o.nbytes, "gate_up": L.gate_up.nbytes, "down": L.down.nbytes,
              "lm_head": dec.lm_head.nbytes}
    exact, batch = args.deterministic, args.batch
    with loom.deterministic(exact):
        why = paged_graph.why_not(dec, exact)
        if why is not None:
            raise SystemExit(f"no recorded decode step: {why}")
        per = args.position // BLOCK + 1                         # each sequence's blocks: the prompt, then the step
        cache = PagedKVCache(xp, c.layers, c.kv_heads, c.head_dim, blocks=per * batch + 2, block_size=BLOCK)
        xp.random.seed(2)
        for array in (cache.k, cache.v):         # the positions between the prompt and the step: random
            array[...] = xp.random.standard_normal(array.shape, dtype=np.float32) * 0.5
        tables = [[per * s + i for i in range(per)] for s in range(batch)]
        paged_forward.forward(dec, cache, [paged_forward.Work(prompt, 0, t, logits=True) for t in tables])
        token = int(prompt[-1])

        def graph(skip: tuple) -> PartialGraph:
            PartialGraph.skip = skip
            g = PartialGraph(dec, cache, batch, exact, overlap=not args.plain)
            g.step([token] * batch, [args.position] * batch, tables)     # the step's inputs, which every replay reads
            # the recording such a step replays (past PagedDecodeGraph.long_from at a few sequences: windows split)
            g.replayed = g._graph_for([args.position] * batch)
            return g

        whole_graph = graph(())
        if getattr(whole_graph, "fixed_planes", None) is not None:     # the products read the int8 planes
            weights = {"qkv": L.qkv, "o": L.o, "gate_up": L.gate_up, "down": L.down, "lm_head": dec.lm_head}
            nbytes = {kind: 2 * w.shape[0] * w.shape[1] for kind, w in weights.items()}
        why = same_launches(whole_graph)
        if why is not None:
            raise SystemExit(f"PartialGraph.tagged() no longer matches PagedDecodeGraph._operations(): {why}")
        whole = replay_us(whole_graph, xp)
        if args.profile:
            profile_replays(whole_graph, args.profile)
        del whole_graph
        mode = "deterministic" if exact else "fast"
        print(f"{args.shape} {args.qtype}, {mode} mode, {'plain' if args.plain else 'overlapped'} launches, "
              f"paged decode step at batch {batch}, position {args.position}: whole step {whole:.1f} us")
        if args.eager:
            print(f"  kernel by kernel (paged_forward.forward): {eager_us(dec, cache, token, args.position, tables):.1f} us")
        for kind in KINDS[1:] if not args.whole else ():     # (not the embedding: the step reads its output)
            share = whole - replay_us(graph((kind,)), xp)
            each = share / layers if kind != "lm_head" else share
            per = f"{each:.2f} us per layer" if kind != "lm_head" else f"{each:.2f} us"
            rate = f"  {nbytes[kind] / 1e6:8.2f} MB, {nbytes[kind] / each / 1e3:7.0f} GB/s" if kind in nbytes else ""
            print(f"  {kind:10} {per:>22}{rate}")


if __name__ == "__main__":
    main()

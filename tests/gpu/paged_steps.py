"""Small decoders and a driver of the batch engine's device steps for the GPU tests of the recorded
decode and prompt steps (test_paged_decode_graph*.py, test_paged_prefill_graph.py, and the prompt
tests of test_flash_attention_gpu.py and test_tensor_core_products.py).

steps() runs prompts, then decode steps of fixed token ids, through a StepRunner (loom/llm/engine_steps.py,
the engine's device part) over a paged cache of its own, and returns every step's full logits, the
cached keys and the runner's counters: with dec.graphs the decode steps replay the recorded paged decode
step of their batch bucket (loom/llm/paged_graph.py) and fast mode's prompt chunks the recorded prompt
step from their second sighting; with dec.graphs False (graph_and_eager's second decoder) every step
runs kernel by kernel through loom/llm/paged_forward.py; on the CPU it is the CPU's reference."""
from __future__ import annotations

import os
import sys

import numpy as np
from quant_rows import random_rows

import loom
from loom.kernels.quant.block import BlockQuantized
from loom.llm.decoder import Decoder
from loom.llm.decoder_config import DecoderConfig, expected_tensors
from loom.llm.engine_steps import StepRunner
from loom.llm.paged_cache import PagedKVCache
from loom.llm.paged_forward import Work
from loom.mode import is_deterministic

from .cpu_gpu import host

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "llm"))
import tiny_decoders as td  # noqa: E402

RNG = np.random.default_rng(20261121)
PROMPT = [5, 17, 200, 3, 99, 41, 7]

CONFIG = {"model_type": "llama", "hidden_size": 256, "intermediate_size": 320, "num_hidden_layers": 2,
          "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512, "rope_theta": 10000.0,
          "rms_norm_eps": 1e-5, "tie_word_embeddings": True, "max_position_embeddings": 64}


def quant_weights(qtype, config, rng=RNG):
    """Random weights of `qtype` with small finite scales (random bytes would give inf/NaN scales); from
    `rng` (the module's, unless a test passes its own and leaves the shared sequence alone)."""
    required, _ = expected_tensors(DecoderConfig.from_hf(config))
    out = {}
    for name, shape in required.items():
        if len(shape) == 1:
            out[name] = (1 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        elif qtype == "F32":
            out[name] = (rng.standard_normal(shape) * 0.05).astype(np.float32)
        else:
            out[name] = BlockQuantized(random_rows(qtype, *shape, rng, scale=0.01, plain=0.05), qtype, shape)
    return out


def config_for(qtype, k_layouts):
    """CONFIG, with widths of whole 256-value super-blocks for the K-quants (k_layouts: their names)."""
    return {**CONFIG, "intermediate_size": 512} if qtype in k_layouts else CONFIG


def saved(kind, extra, folder):
    """A 2-layer tiny `kind` decoder (extra: its config keys, "tied" for tied embeddings) saved in folder."""
    extra = dict(extra)
    tied = extra.pop("tied", False)
    td.save(td.build(kind, layers=2, tied=tied, hidden_size=256, intermediate_size=192, **extra), folder)


def graph_and_eager(make):
    """Two decoders from make(): one whose engine steps replay recorded graphs, one that runs them
    kernel by kernel (Decoder.graphs False)."""
    graph, eager = make(), make()
    eager.graphs = False
    return graph, eager


def loaded(folder):
    return lambda: loom.llm.load(folder, device="cuda").decoder


def built(config, weights, **kw):
    return lambda: Decoder(config, weights, device="cuda", **kw)


def fixed_inputs(steps: int, batch: int, vocab: int) -> np.ndarray:
    """Token ids [steps, batch] to feed decode steps: both paths of a comparison see the same ids."""
    s, b = np.arange(steps)[:, None], np.arange(batch)[None, :]
    return (37 * s + 11 * b + 5) % vocab


def tables_for(batch: int, positions: int, block_size: int) -> tuple[int, list[list[int]]]:
    """(blocks, block tables): each sequence's blocks scattered over the pool, interleaved with the
    others' and in descending order, so that no table is a contiguous run."""
    per = -(-positions // block_size)
    blocks = batch * per
    return blocks, [[blocks - 1 - (b + batch * j) for j in range(per)] for b in range(batch)]


def runner_for(dec, blocks: int, block_size: int = 8) -> StepRunner:
    """A StepRunner of dec in the current mode over a fresh paged cache of `blocks` blocks."""
    c = dec.config
    cache = PagedKVCache(dec.xp, c.layers, c.kv_heads, c.head_dim, blocks, block_size)
    return StepRunner(dec, cache, is_deterministic(), {"graph_steps": 0, "prefill_graph_steps": 0})


def steps(dec, prompts, inputs=(), block_size: int = 8, runner: StepRunner | None = None, tables=None):
    """Run prompts [B, T] then one decode step per row of inputs [steps, B] through a StepRunner of
    dec in the current mode (`runner`, else one over a fresh paged cache) with block tables `tables`
    (default tables_for's). Returns (logits [1 + steps, B, vocab] on the host: the prompts' last
    positions, then each step's; the cached keys [layers, B, T + steps, KV, D] and values; the runner)."""
    prompts = np.asarray(prompts)
    inputs = np.asarray(inputs, dtype=np.int64).reshape(-1, len(prompts))
    B, T = prompts.shape
    n = T + len(inputs)
    if tables is None:
        _, tables = tables_for(B, n, block_size if runner is None else runner.cache.block_size)
    if runner is None:
        runner = runner_for(dec, 1 + max(max(t) for t in tables), block_size)
    rows = [runner.run([Work(p.astype(np.int64), 0, t, True) for p, t in zip(prompts, tables)], [False] * B)]
    for s, ids in enumerate(inputs):
        work = [Work(np.array([tok], dtype=np.int64), T + s, t, True) for tok, t in zip(ids, tables)]
        rows.append(runner.run(work, [False] * B))
    logits = np.stack([np.stack(r) for r in rows])
    slots = np.stack([runner.cache.slots(t, 0, n) for t in tables])          # [B, n]
    return logits, host(runner.cache.k)[:, slots], host(runner.cache.v)[:, slots], runner

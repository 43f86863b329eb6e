"""The batch engine's recorded prompt chunks (loom/llm/paged_prefill_graph.py): from the second sighting
of a chunk's length and position it replays a CUDA graph whose logits are the eager chunk's bits, with
other token ids and other block tables than the recording's; sliding windows, q|k|v biases and several
chunks a prompt included."""
import numpy as np
import pytest

import loom
from loom.llm.batching import BatchEngine, Request
from loom.llm.paged_prefill_graph import PagedPrefillGraph

from .test_batching_gpu import _graph_model

pytestmark = pytest.mark.gpu


def _prompt_requests(seed: int, lengths=(90, 90, 59, 59)):
    rng = np.random.default_rng(seed)
    # max_tokens 1: the first token and its logprobs come from the prompt's last chunk alone
    return [Request(rng.integers(0, 256, n).tolist(), max_tokens=1, stop_ids=(), logprobs=3) for n in lengths]


def _engine(model):
    # one sequence at a time: every step is one chunk, as in the eager engine (fast mode's bits may
    # depend on how many rows share a product)
    engine = BatchEngine(model, max_batch=1, block_size=8, prefix_cache=False)
    engine.chunk = 32           # chunks of 32, 32, 26 and 32, 27: each past gemv.MAX_ROWS rows
    return engine


@pytest.mark.parametrize("arch, extra", [pytest.param("llama", {}, marks=pytest.mark.smoke), ("mistral", {"sliding_window": 20}),
                                         ("qwen2", {})])
def test_replayed_prompt_steps_give_the_eager_steps_bits(arch, extra):
    with loom.deterministic(False):
        eager_model, model = _graph_model(arch, "cuda", True, **extra), _graph_model(arch, "cuda", True, **extra)
        eager_model.decoder.graphs = False
        eager, engine = _engine(eager_model), _engine(model)
        for seed in range(2):               # each length: seen once (eager), recorded, replayed
            if seed == 1:                   # other blocks than the recording's
                held = [engine.cache.take() for _ in range(5)]
            reqs = _prompt_requests(seed)
            want, got = eager.generate(reqs), engine.generate(reqs)
            for a, b in zip(want, got):
                assert a.tokens == b.tokens and a.logprobs == b.logprobs
        engine.cache.release(held)
        # (length, position) keys (32, 0), (32, 32), (26, 64) of the 90-token prompts, (32, 0), (27, 32)
        # of the 59-token ones: the first request of each length sees its keys, the second records
        # them (the first 59-token prompt replays (32, 0) already): 0 + 3 + 1 + 2, then 3 + 3 + 2 + 2
        assert engine.stats["prefill_graph_steps"] == 16 and eager.stats["prefill_graph_steps"] == 0
        recorded = list(engine.steps.prefills.entries.values())
        assert recorded and all(isinstance(g, PagedPrefillGraph) for g in recorded)


def test_prompt_steps_are_not_recorded_in_deterministic_mode_or_with_graphs_off():
    with loom.deterministic(True):
        model = _graph_model("llama", "cuda", True)
        engine = _engine(model)
        for seed in range(3):
            engine.generate(_prompt_requests(seed))
        assert engine.stats["prefill_graph_steps"] == 0 and not engine.steps.prefills.entries


def test_a_mixed_step_records_its_prompt_chunks_apart_from_its_decode_tokens():
    """Decode tokens go through the decode graph, the prompt chunks of the same step through the
    prompt graph: a stream of arrivals repeats the chunks' shapes, whatever else is in the step."""
    with loom.deterministic(False):
        eager_model, model = _graph_model("llama", "cuda", True), _graph_model("llama", "cuda", True)
        eager_model.decoder.graphs = False
        rng = np.random.default_rng(11)
        reqs = [Request(rng.integers(0, 256, 40).tolist(), max_tokens=6, stop_ids=(), logprobs=1) for _ in range(6)]
        engine = BatchEngine(model, max_batch=2, block_size=8, prefix_cache=False)
        got = engine.generate(reqs)
        want = BatchEngine(eager_model, max_batch=2, block_size=8, prefix_cache=False).generate(reqs)
        assert engine.stats["prefill_graph_steps"] > 0 and engine.stats["graph_steps"] > 0
        for a, b in zip(want, got):          # (chunks sharing a step with others: other product shapes)
            np.testing.assert_allclose(a.logprobs[0], b.logprobs[0], rtol=1e-3, atol=1e-3)


def test_a_short_chunk_after_a_prefix_hit_runs_and_replays_the_fused_kernels():
    """A prompt whose cached prefix leaves a chunk of a few tokens (here 4) takes the fused prompt
    kernels too (not the operation-at-a-time path), recorded from its second sighting."""
    with loom.deterministic(False):
        eager_model, model = _graph_model("llama", "cuda", True), _graph_model("llama", "cuda", True)
        eager_model.decoder.graphs = False
        prompt = np.random.default_rng(4).integers(0, 256, 20).tolist()
        engines = [BatchEngine(m, max_batch=1, block_size=8) for m in (eager_model, model)]
        got = [[e.generate([Request(prompt, max_tokens=1, stop_ids=(), logprobs=2)])[0] for _ in range(4)]
               for e in engines]
        assert engines[1].stats["cached_tokens"] == 3 * 16          # every run after the first: two blocks
        assert engines[1].stats["prefill_graph_steps"] == 2          # the 4-token chunk: seen, recorded, replayed
        for a, b in zip(*got):
            assert a.tokens == b.tokens and a.logprobs == b.logprobs

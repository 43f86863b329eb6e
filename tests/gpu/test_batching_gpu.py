"""Continuous batching on the GPU: in deterministic mode every sequence of a batch gets the bits the
CPU gives it alone (tokens and logprobs), through prefix sharing and preemption; in fast mode the
batch agrees with each sequence alone to the last bits."""
import numpy as np
import pytest

import loom
from loom.llm.batching import BatchEngine, Request
from loom.spec import tiny_decoder

pytestmark = pytest.mark.gpu


def _requests(vocab):
    rng = np.random.default_rng(5)
    ps = [rng.integers(0, vocab, n).tolist() for n in (3, 19, 40, 1, 26)]
    ps.append(ps[2][:24] + [7, 8])
    return [Request(p, max_tokens=14, stop_ids=(), logprobs=2) for p in ps]


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_gpu_batches_give_the_cpu_bits_alone(arch):
    with loom.deterministic(True):
        cpu = tiny_decoder(arch, "cpu")
        gpu = tiny_decoder(arch, "cuda")
        reqs = _requests(cpu.decoder.config.vocab_size)
        alone = [BatchEngine(cpu).generate([r])[0] for r in reqs]
        for engine in (BatchEngine(gpu, max_batch=4, block_size=8), BatchEngine(gpu, cache_tokens=64, block_size=8)):
            got = engine.generate(reqs)
            for a, b in zip(alone, got):
                assert a.tokens == b.tokens and a.logprobs == b.logprobs
        assert engine.stats["preempted"] > 0


def test_fast_gpu_batches_agree_with_each_sequence_alone():
    with loom.deterministic(False):
        gpu = tiny_decoder("llama", "cuda")
        reqs = _requests(gpu.decoder.config.vocab_size)
        alone = [BatchEngine(gpu).generate([r])[0] for r in reqs]
        got = BatchEngine(gpu, max_batch=6).generate(reqs)
        for a, b in zip(alone, got):
            np.testing.assert_allclose(a.logprobs[:3], b.logprobs[:3], rtol=1e-3, atol=1e-3)

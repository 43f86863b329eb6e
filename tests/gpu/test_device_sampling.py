"""Sampled tokens chosen on the device (loom/llm/sample_rows.py, paged_graph.step_sample, the engine's
steps launched ahead): sample_rows on CuPy arrays gives generate.choose's host tokens row for row in
deterministic mode, and a batch of sampling requests (mixed with greedy ones) decoded in runs of steps
launched ahead gets, request for request, the tokens the CPU gives it alone."""
import numpy as np
import pytest

import loom
from loom.llm import generate as gen
from loom.llm.batching import BatchEngine, Request

from .test_batching_gpu import _graph_model

cupy = pytest.importorskip("cupy")
from loom.llm.sample_rows import sample_rows  # noqa: E402

pytestmark = pytest.mark.gpu


@pytest.mark.smoke
@pytest.mark.parametrize("vocab", [300, 49152])
def test_sample_rows_on_the_device_are_choose_on_the_host(vocab):
    rng = np.random.default_rng(vocab)
    n = 18
    logits = (rng.standard_normal((n, vocab)) * 3).astype(np.float32)
    logits[5, 7] = np.inf
    seen = rng.random((n, vocab)) < 0.05
    settings = [gen.Sampling(), gen.Sampling(temperature=0.8, seed=1), gen.Sampling(temperature=0.7, top_k=30, seed=2),
                gen.Sampling(temperature=1.1, top_p=0.8, seed=3), gen.Sampling(temperature=0.9, min_p=0.05, seed=4),
                gen.Sampling(temperature=0.6, top_k=40, top_p=0.9, min_p=0.02, repetition_penalty=1.2, seed=5)] * 3
    u = np.array([gen._generator(s.seed).uniform(1, counter=r, dtype=np.float64)[0] for r, s in enumerate(settings)])
    column = [cupy.asarray(np.array([getattr(s, f) for s in settings], dtype=np.float32))
              for f in ("temperature", "top_p", "min_p", "repetition_penalty")]
    with loom.deterministic(True):
        got = sample_rows(cupy.asarray(logits), cupy.asarray(seen), column[0],
                          cupy.asarray(np.array([s.top_k for s in settings], dtype=np.int64)), column[1], column[2],
                          column[3], cupy.asarray(u))
        want = [gen.choose(logits[r], seen[r], settings[r], r) for r in range(n)]
    assert cupy.asnumpy(got).tolist() == want


def test_sampling_requests_decode_on_the_device_with_the_cpus_tokens():
    with loom.deterministic(True):
        cpu, gpu = _graph_model("llama", "cpu"), _graph_model("llama", "cuda")
        rng = np.random.default_rng(12)
        reqs = []
        for i in range(8):
            sampling = gen.Sampling() if i % 4 == 0 else gen.Sampling(temperature=0.8, top_p=0.9, top_k=50 * (i % 2),
                                                                      repetition_penalty=1.1, seed=i)
            reqs.append(Request(rng.integers(0, 256, 3 + 2 * i).tolist(), max_tokens=6 + 3 * i, stop_ids=(),
                                sampling=sampling))
        alone = [BatchEngine(cpu).generate([r])[0].tokens for r in reqs]
        engine = BatchEngine(gpu, max_batch=8, block_size=4)
        assert [r.tokens for r in engine.generate(reqs)] == alone
        assert engine.stats["ahead_steps"] > 0
        planned = BatchEngine(gpu, max_batch=8, block_size=4)
        planned.pipeline = False
        assert [r.tokens for r in planned.generate(reqs)] == alone and planned.stats["ahead_steps"] == 0

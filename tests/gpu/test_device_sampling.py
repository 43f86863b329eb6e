"""Sampled tokens chosen on the device (loom/llm/sample_rows.py, paged_graph.step_sample, the engine's
steps launched ahead): sample_rows on CuPy arrays gives generate.choose's host tokens row for row in
deterministic mode, and a batch of sampling requests (mixed with greedy ones) decoded in runs of steps
launched ahead gets, request for request, the tokens the CPU gives it alone."""
import numpy as np
import pytest

import loom
from loom.llm import generate as gen
from loom.llm.batching import BatchEngine, Request
from loom.llm.sample_rows import DeviceRows

from .test_batching_gpu import _graph_model

cupy = pytest.importorskip("cupy")
from loom.backend.cuda import sampling  # noqa: E402  (imports cupy)
from loom.llm.sample_rows import STAGES, sample_rows, unused_stages  # noqa: E402

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
    column = [cupy.asarray(np.array([getattr(s, f) for s in settings], dtype=np.float64 if f == "top_p" else np.float32))
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


def _settings(kind: int, seed: int) -> gen.Sampling:
    return [gen.Sampling(), gen.Sampling(temperature=0.8, seed=seed),
            gen.Sampling(temperature=0.7, top_k=1 + seed % 60, seed=seed),
            gen.Sampling(temperature=1.1, top_p=0.3 + (seed % 7) / 10, seed=seed),
            gen.Sampling(temperature=0.9, min_p=0.01 + (seed % 5) / 50, repetition_penalty=1.3, seed=seed),
            gen.Sampling(temperature=0.6, top_k=40, top_p=0.9, min_p=0.05, repetition_penalty=0.8, seed=seed),
            gen.Sampling(temperature=0.7, top_p=0.95, seed=seed)][kind]


@pytest.mark.parametrize("vocab, scale", [pytest.param(49152, 3.0, marks=pytest.mark.smoke), (300, 2.0), (8192, 8.0),
                                          (8193, 0.5), (151936, 3.0)])
def test_the_sampling_kernel_gives_chooses_tokens(vocab, scale):
    """backend/cuda/sampling.py's one launch against generate.choose on the host, row for row: every
    kind of setting, rows with inf, NaN and -inf logits, ties, a temperature that divides to inf, in
    both modes (the kernel's softmaxes are deterministic mode's in both); the seen tokens marked."""
    rng = np.random.default_rng(vocab)
    n = 40
    logits = (rng.standard_normal((n, vocab)) * scale).astype(np.float32)
    logits[3, 7] = np.inf
    logits[4, 9] = np.nan
    logits[5] = -np.inf
    logits[6, :] = 1.0                                      # all tied
    logits[7, 1::2] = logits[7, ::2][: vocab // 2]          # pairs of equal logits
    seen = rng.random((n, vocab)) < 0.05
    settings = [_settings(r % 7, r) for r in range(n)]
    settings[8] = gen.Sampling(temperature=1e-45, seed=8)  # logits / t overflow to inf
    steps = rng.integers(0, 2 ** 40, n).tolist()
    rows = DeviceRows(cupy, settings, list(seen), vocab)
    rows.set_steps(steps)
    with loom.deterministic(True):
        want = [gen.choose(logits[r], seen[r], settings[r], steps[r]) for r in range(n)]
    for deterministic in (True, False):
        rows.seen[...] = cupy.asarray(seen)
        with loom.deterministic(deterministic):
            got = cupy.asnumpy(rows.choose(cupy.asarray(logits))).tolist()
        assert got == want, [(r, g, w) for r, (g, w) in enumerate(zip(got, want)) if g != w][:5]
        marked = seen.copy()
        marked[np.arange(n), want] = True
        assert np.array_equal(cupy.asnumpy(rows.seen), marked)


@pytest.mark.parametrize("only", ["greedy", "temperature", "top_p"])
def test_the_sampling_kernel_skips_the_unused_stages_with_the_same_tokens(only):
    rng = np.random.default_rng(len(only))
    vocab, n = 5000, 16
    settings = [gen.Sampling() if only == "greedy" else
                gen.Sampling(temperature=0.9, seed=r, **({"top_p": 0.7} if only == "top_p" else {})) for r in range(n)]
    assert unused_stages(settings) != frozenset()
    logits = cupy.asarray((rng.standard_normal((n, vocab)) * 3).astype(np.float32))
    seen = cupy.zeros((n, vocab), dtype=bool)
    u = cupy.asarray(rng.random(n))
    cols = [cupy.asarray(np.array([getattr(s, f) for s in settings], dtype=np.float64 if f == "top_p" else np.float32))
            for f in ("temperature", "top_p", "min_p", "repetition_penalty")]
    top_k = cupy.asarray(np.array([s.top_k for s in settings], dtype=np.int64))
    args = (logits, seen, cols[0], top_k, cols[1], cols[2], cols[3], u)
    with loom.deterministic(True):
        full = sampling.sample_rows(*args)
        lean = sampling.sample_rows(*args, skip=unused_stages(settings))
        arrays = sample_rows(*args)
    assert cupy.asnumpy(full).tolist() == cupy.asnumpy(lean).tolist() == cupy.asnumpy(arrays).tolist()
    assert STAGES >= unused_stages(settings)


def test_the_sampling_kernel_cuts_top_p_at_the_doubles():
    """As tests/llm/test_sample_rows.py's case: a top-p cut where float32 and float64 top_p part."""
    logits = cupy.asarray(np.array([[-2.1972244, 0.0]], dtype=np.float32))
    settings = [gen.Sampling(temperature=1.0, top_p=0.9, seed=0)]
    rows = DeviceRows(cupy, settings, [None], 2)
    with loom.deterministic(True):
        for step in range(100):
            rows.set_steps([step])
            rows.seen[...] = False
            want = gen.choose(cupy.asnumpy(logits)[0], np.zeros(2, dtype=bool), settings[0], step)
            assert int(rows.choose(logits)[0]) == want, step

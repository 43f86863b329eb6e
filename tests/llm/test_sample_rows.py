"""loom/llm/sample_rows.py: a batch of rows sampled with array operations alone gives generate.choose's
token row for row in deterministic mode, over mixed settings (greedy rows, top-k, top-p, min-p,
penalties, constraints) and rows whose draw is undefined (inf and NaN logits, a temperature that divides
to inf, every allowed logit -inf)."""
import numpy as np
import pytest

import loom
from loom.llm import generate as gen
from loom.llm.sample_rows import STAGES, DeviceRows, masses, sample_rows, unused_stages


def _settings(rng, n):
    out = []
    for r in range(n):
        kind = r % 6
        if kind == 0:
            out.append(gen.Sampling())                                      # greedy
        elif kind == 1:
            out.append(gen.Sampling(temperature=0.8, seed=r))
        elif kind == 2:
            out.append(gen.Sampling(temperature=0.7, top_k=int(rng.integers(1, 60)), seed=r))
        elif kind == 3:
            out.append(gen.Sampling(temperature=1.1, top_p=float(rng.uniform(0.3, 0.99)), seed=r))
        elif kind == 4:
            out.append(gen.Sampling(temperature=0.9, min_p=float(rng.uniform(0.01, 0.2)), repetition_penalty=1.3,
                                    seed=r))
        else:
            out.append(gen.Sampling(temperature=0.6, top_k=40, top_p=0.9, min_p=0.05, repetition_penalty=0.8,
                                    seed=r))
    return out


def _batched(logits, seen, settings, steps, allowed=None):
    u = np.array([gen._generator(s.seed).uniform(1, counter=step, dtype=np.float64)[0]
                  for s, step in zip(settings, steps)])
    column = [np.array([getattr(s, f) for s in settings], dtype=np.float64 if f == "top_p" else np.float32)
              for f in ("temperature", "top_p", "min_p", "repetition_penalty")]
    top_k = np.array([s.top_k for s in settings], dtype=np.int64)
    return sample_rows(logits, seen, column[0], top_k, column[1], column[2], column[3], u, allowed)


@pytest.mark.parametrize("vocab, scale", [(50, 2.0), (1000, 3.0), (5000, 8.0)])
def test_rows_are_choose_row_for_row(vocab, scale):
    rng = np.random.default_rng(vocab)
    n = 24
    logits = (rng.standard_normal((n, vocab)) * scale).astype(np.float32)
    seen = rng.random((n, vocab)) < 0.05
    allowed = np.ones((n, vocab), dtype=bool)
    allowed[::5] = rng.random((len(allowed[::5]), vocab)) < 0.3                  # constrained rows
    allowed[::5, 0] = True
    settings = _settings(rng, n)
    steps = list(range(n))
    with loom.deterministic(True):
        got = _batched(logits, seen, settings, steps, allowed)
        want = [gen.choose(logits[r], seen[r], settings[r], steps[r], allowed[r]) for r in range(n)]
        assert got.tolist() == want
        unconstrained = [gen.choose(logits[r], seen[r], settings[r], steps[r]) for r in range(n)]
        assert _batched(logits, seen, settings, steps).tolist() == unconstrained
    assert len(set(want)) > n // 2


def test_undefined_draws_take_the_greedy_token():
    rng = np.random.default_rng(9)
    vocab = 300
    logits = rng.standard_normal((5, vocab)).astype(np.float32)
    allowed = np.zeros((5, vocab), dtype=bool)
    allowed[:, [10, 20, 30]] = True
    logits[1, 20] = np.inf
    logits[2, 30] = np.nan
    logits[3, [10, 20, 30]] = -np.inf
    settings = [gen.Sampling(temperature=1e-50, seed=1), gen.Sampling(temperature=0.8, top_p=0.9, seed=2),
                gen.Sampling(temperature=0.8, seed=3), gen.Sampling(temperature=0.8, min_p=0.1, seed=4),
                gen.Sampling(temperature=0.8, seed=5)]
    seen = np.zeros((5, vocab), dtype=bool)
    with loom.deterministic(True):
        got = _batched(logits, seen, settings, [3] * 5, allowed)
        want = [gen.choose(logits[r], seen[r], settings[r], 3, allowed[r]) for r in range(5)]
    assert got.tolist() == want and allowed[np.arange(5), got].all()


def test_device_rows_keep_each_rows_seen_tokens_and_step_counter():
    """A run of steps through DeviceRows (here on NumPy arrays): each step's tokens are choose's with the
    sequence's seen tokens so far and its step counter, a padding row (None) takes greedy tokens."""
    rng = np.random.default_rng(6)
    vocab, n = 200, 5
    settings = [gen.Sampling(temperature=0.8, repetition_penalty=1.5, seed=1), gen.Sampling(),
                gen.Sampling(temperature=1.2, top_p=0.7, repetition_penalty=0.7, seed=2), None,
                gen.Sampling(temperature=0.5, top_k=5, seed=3)]
    seen = [rng.random(vocab) < 0.1 if s is not None else None for s in settings]
    host_seen = [np.zeros(vocab, dtype=bool) if x is None else x.copy() for x in seen]
    rows = DeviceRows(np, settings, seen, vocab)
    with loom.deterministic(True):
        for step in range(6):
            logits = (rng.standard_normal((n, vocab)) * 2).astype(np.float32)
            rows.set_steps([3 + step] * n)
            got = rows.choose(logits)
            for r, s in enumerate(settings):
                want = gen.choose(logits[r], host_seen[r], s or gen.Sampling(), 3 + step)
                assert got[r] == want, (step, r)
                host_seen[r][want] = True
    assert all(np.array_equal(rows.seen[r], host_seen[r]) for r in range(n))


def test_masses_are_generates_along_rows():
    rng = np.random.default_rng(2)
    probs = rng.dirichlet(np.full(700, 0.2), size=4).astype(np.float32)
    probs[1, 3] = np.nan
    got, bits = masses(probs)
    for r in range(4):
        want, want_bits = gen.masses(probs[r])
        assert bits == want_bits and np.array_equal(got[r], want)


@pytest.mark.parametrize("only", ["temperature", "top_k", "top_p", "min_p", "repetition_penalty", "greedy"])
def test_skipping_the_unused_stages_keeps_the_tokens(only):
    """unused_stages names the stages no row uses; sample_rows without them gives the same tokens, and
    each stage in use is kept (a batch using one setting of a kind beside plain sampling)."""
    rng = np.random.default_rng(len(only))
    vocab, n = 3000, 12
    value = {"top_k": 20, "top_p": 0.8, "min_p": 0.1, "repetition_penalty": 1.4}.get(only)
    settings = [gen.Sampling() if only == "greedy" else
                gen.Sampling(temperature=0.9, seed=r, **({only: value} if value and r % 2 else {}))
                for r in range(n)]
    skip = unused_stages(settings)
    assert skip == {"temperature": {"top_k", "top_p", "min_p", "penalty"}, "greedy": STAGES,
                    "top_k": {"top_p", "min_p", "penalty"}, "top_p": {"top_k", "min_p", "penalty"},
                    "min_p": {"top_k", "top_p", "penalty"},
                    "repetition_penalty": {"top_k", "top_p", "min_p"}}[only]
    logits = (rng.standard_normal((n, vocab)) * 3).astype(np.float32)
    seen = rng.random((n, vocab)) < 0.05
    u = rng.random(n)
    column = [np.array([getattr(s, f) for s in settings], dtype=np.float64 if f == "top_p" else np.float32)
              for f in ("temperature", "top_p", "min_p", "repetition_penalty")]
    top_k = np.array([s.top_k for s in settings], dtype=np.int64)
    with loom.deterministic(True):
        full = sample_rows(logits, seen, column[0], top_k, column[1], column[2], column[3], u)
        lean = sample_rows(logits, seen, column[0], top_k, column[1], column[2], column[3], u, skip=skip)
        assert lean.tolist() == full.tolist()
        if only != "greedy":        # the stage in use changes tokens: skipping it would be caught above
            plain = sample_rows(logits, seen, column[0], top_k, column[1], column[2], column[3], u, skip=STAGES - {"draw"})
            assert (plain != full).any() or only == "temperature"


def test_first_uniforms_are_each_streams_draw():
    from loom import rng
    seeds = [0, 1, 5, 2**31, 2**40 + 3, 987654321]
    counters = [0, 1, 17, 2**32 - 1, 2**32 + 7, 2**40 + 5]
    keys = np.array([rng.stream_key(s, gen.SAMPLE_STREAM) for s in seeds], dtype=np.uint32)
    got = rng.first_uniforms(keys, np.array(counters, dtype=np.uint64))
    want = [gen._generator(s).uniform(1, counter=c, dtype=np.float64)[0] for s, c in zip(seeds, counters)]
    assert got.tolist() == want


def test_the_top_p_cut_is_the_doubles():
    """choose cuts top-p at floor((1 - top_p) 2^B) of the double top_p; a float32 top_p (0.9 rounds up
    by 2.4e-8) moves the cut by thousands of mass units and changed 12 of these 100 draws."""
    logits = np.array([[-2.1972244, 0.0]], dtype=np.float32)
    settings = [gen.Sampling(temperature=1.0, top_p=0.9, seed=0)]
    rows = DeviceRows(np, settings, [None], 2)
    with loom.deterministic(True):
        for step in range(100):
            rows.set_steps([step])
            rows.seen[...] = False
            assert rows.choose(logits)[0] == gen.choose(logits[0], np.zeros(2, dtype=bool), settings[0], step), step

"""CausalLM.generate_ids on the model's own batch engine (loom/llm/model_engine.py): streams read
together share steps and keep their bits, a stream closed or dropped early frees its slot and its
reservation, a request larger than the cache gets a larger engine while the old one finishes its
streams, each mode has its engine, and a failing step fails every stream of the engine and replaces it."""
import gc
import threading

import numpy as np
import pytest

import loom
from loom.errors import ConfigError, LoomError
from loom.llm import model_engine
from loom.llm.batching import BatchEngine, Request
from loom.spec import tiny_decoder


@pytest.fixture()
def model():
    return tiny_decoder("llama")        # a fresh model (and engines) per test


PROMPTS = [[5, 9, 2, 7], [3, 1], list(range(1, 30))]


def _alone(model, prompt, n=10, **kw):
    """The tokens through a BatchEngine of its own: the reference for the model's engine."""
    return BatchEngine(model, max_batch=1).generate([Request(prompt, max_tokens=n, stop_ids=(), **kw)])[0].tokens


def _own(model, exact=True):
    return model.engines._current[exact]


def test_a_lone_stream_is_a_batch_of_one_with_its_bits(model):
    with loom.deterministic(True):
        got = list(model.generate_ids(PROMPTS[0], max_tokens=10, stop_ids=()))
        assert got == _alone(model, PROMPTS[0])
        own = _own(model)
        assert own.engine.stats["decode_tokens"] == 9 and own.engine.stats["prefill_tokens"] == 4
        assert own.reserved == 0 and not own.engine.running


def test_streams_read_together_share_steps_and_keep_their_bits(model):
    with loom.deterministic(True):
        want = [_alone(model, p) for p in PROMPTS]
        streams = [model.generate_ids(p, max_tokens=10, stop_ids=()) for p in PROMPTS]
        got = [[] for _ in PROMPTS]
        for _ in range(10):                             # round robin, one token each
            for out, s in zip(got, streams):
                out.append(next(s))
        assert all(next(s, None) is None for s in streams)
        assert got == want
        stats = _own(model).engine.stats
        assert stats["steps"] < 3 * 10                  # the streams' decode steps ran together


def test_threads_share_one_engine(model):
    with loom.deterministic(True):
        want = [_alone(model, p, 12) for p in PROMPTS]
    results = {}

    def run(i):
        with loom.deterministic(True):
            results[i] = list(model.generate_ids(PROMPTS[i], max_tokens=12, stop_ids=()))
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[i] for i in range(len(PROMPTS))] == want


def test_closing_or_dropping_a_stream_frees_its_slot(model):
    with loom.deterministic(True):
        stream = model.generate_ids(PROMPTS[0], max_tokens=50, stop_ids=())
        assert next(stream) == _alone(model, PROMPTS[0], 1)[0]
        own = _own(model)
        assert own.reserved == -(-(4 + 50) // 16)
        stream.close()
        assert own.reserved == 0
        assert list(stream) == []                       # closed: nothing more
        unread = model.generate_ids(PROMPTS[1], max_tokens=50, stop_ids=())
        assert own.reserved > 0
        del unread                                      # never read: dropping it cancels it
        gc.collect()
        assert own.reserved == 0
        # the next stream's first step retires both cancelled requests and gets its own bits
        assert list(model.generate_ids(PROMPTS[2], max_tokens=5, stop_ids=())) == _alone(model, PROMPTS[2], 5)
        assert own.engine.stats["cancelled"] == 2 and not own.engine.running and not own.engine.waiting
        assert own.engine.cache.available() == own.engine.cache.blocks


def test_a_request_past_the_cache_gets_a_larger_engine(model, monkeypatch):
    for name, value in (("MIN_CACHE", 16), ("CACHE_STEP", 16), ("GROWTH", 1)):
        monkeypatch.setattr(model_engine, name, value)
    with loom.deterministic(True):
        small = model.generate_ids(PROMPTS[0], max_tokens=8, stop_ids=())
        first = next(small)
        old = _own(model)
        assert old.engine.cache.blocks == 1             # 12 positions: one block of 16
        big = model.generate_ids(PROMPTS[2], max_tokens=20, stop_ids=())    # 49 more positions: 4 blocks
        new = _own(model)
        assert new is not old and new.engine.cache.blocks == 5 and new.reserved == 4
        assert [first] + list(small) == _alone(model, PROMPTS[0], 8)         # the old engine finishes its stream
        assert list(big) == _alone(model, PROMPTS[2], 20)
        assert old.reserved == 0 and new.reserved == 0


def test_each_mode_has_its_engine(model):
    with loom.deterministic(True):
        exact = list(model.generate_ids(PROMPTS[0], max_tokens=6, stop_ids=()))
    with loom.deterministic(False):
        fast = list(model.generate_ids(PROMPTS[0], max_tokens=6, stop_ids=()))
    assert _own(model, True) is not _own(model, False)
    assert _own(model, True).engine.deterministic and not _own(model, False).engine.deterministic
    assert len(exact) == len(fast) == 6


def test_bad_settings_raise_before_the_first_token(model):
    with pytest.raises(ConfigError, match="temperature"):
        model.generate_ids(PROMPTS[0], max_tokens=4, temperature=-1)
    with pytest.raises(ConfigError, match="stop_ids"):
        model.generate_ids(PROMPTS[0], max_tokens=4, stop_ids=[10 ** 6])
    assert list(model.generate_ids(PROMPTS[0], max_tokens=0)) == []


def test_a_failing_step_fails_every_stream_and_replaces_the_engine(model, monkeypatch):
    with loom.deterministic(True):
        a = model.generate_ids(PROMPTS[0], max_tokens=10, stop_ids=())
        b = model.generate_ids(PROMPTS[1], max_tokens=10, stop_ids=())
        next(a)
        own = _own(model)

        def broken(*args):
            raise RuntimeError("device lost")
        monkeypatch.setattr(own.engine.steps, "run", broken)
        with pytest.raises(RuntimeError, match="device lost"):
            next(a)
        with pytest.raises(LoomError, match="generation failed: RuntimeError: device lost"):
            list(b)
        assert own.reserved == 0
        assert list(model.generate_ids(PROMPTS[0], max_tokens=3, stop_ids=())) == _alone(model, PROMPTS[0], 3)
        assert _own(model) is not own


def test_logits_check_their_ids(model):
    with pytest.raises(ConfigError, match="token id 99 at index 1 is outside the vocabulary"):
        model.logits([1, 99])
    with loom.deterministic(True):
        logits = np.asarray(model.logits(PROMPTS[2]))
    assert logits.shape == (29, model.decoder.config.vocab_size) and logits.dtype == np.float32

"""Continuous batching over a paged KV cache: a sequence's tokens and logits (through its logprobs) are
the bits it gets alone and from CausalLM.generate_ids in deterministic mode, whatever it is batched
with, however the cache is shared (prefix caching) or squeezed (preemption), with products on either
side of the rounded scheme's K (a model whose down projection takes the slices); the paged cache's
bookkeeping; the engine's checks, queue limit and cancellation."""
import os
import sys

import numpy as np
import pytest

import loom
from loom.errors import ConfigError
from loom.kernels.exact import dispatch as exact_dispatch
from loom.llm import generate as gen
from loom.llm.batching import BatchEngine, QueueFull, Request
from loom.llm.decoder import Decoder
from loom.llm.decoder_config import DecoderConfig, expected_tensors
from loom.llm.model import CausalLM
from loom.llm.paged_cache import OutOfBlocks, PagedKVCache, block_names
from loom.spec import DECODERS, tiny_decoder

sys.path.insert(0, os.path.dirname(__file__))
import tiny_decoders as td  # noqa: E402


def prompts(vocab, seed=0):
    rng = np.random.default_rng(seed)
    out = [rng.integers(0, vocab, n).tolist() for n in (5, 17, 33, 1, 40, 9)]
    out.append(out[2][:20] + [3, 4, 5])             # shares 20 tokens (two 8-blocks) with prompt 2
    out.append(list(out[4]))                        # the same prompt twice
    return out


def requests(ps, **kw):
    return [Request(p, max_tokens=12, stop_ids=(), logprobs=3, **kw) for p in ps]


def same(a, b):
    return a.tokens == b.tokens and a.logprobs == b.logprobs


LONG = "qwen2, K > 2048"


def long_decoder() -> CausalLM:
    """A tiny qwen2 decoder (q, k, v biases) whose down projection sums K = 2080 products: exact_dispatch's
    slice scheme there, the rounded scheme in its other products."""
    config = {**DECODERS["llama"], "model_type": "qwen2", "intermediate_size": 2080, "tie_word_embeddings": True}
    assert exact_dispatch.matmul_scheme(np.float32, 2080) == exact_dispatch.SLICES_2X1
    cfg = DecoderConfig.from_hf(config)
    required, _ = expected_tensors(cfg)
    rng = np.random.default_rng(7)
    weights = {name: (1 + 0.1 * rng.standard_normal(shape) if name.endswith("norm.weight")
                      else 0.2 * rng.standard_normal(shape)).astype(np.float32) for name, shape in required.items()}
    return CausalLM(Decoder(cfg, weights), None, config)


@pytest.fixture(scope="module", params=["llama", "qwen3", LONG])
def model(request):
    return long_decoder() if request.param == LONG else tiny_decoder(request.param)


def test_batched_sequences_get_their_bits_alone(model):
    with loom.deterministic(True):
        reqs = requests(prompts(model.decoder.config.vocab_size))
        alone = [BatchEngine(model).generate([r])[0] for r in reqs]
        for r, a in zip(reqs, alone):
            assert a.tokens == list(model.generate_ids(r.prompt, max_tokens=12, stop_ids=()))
        engine = BatchEngine(model, max_batch=3, block_size=8)
        batched = engine.generate(reqs)
        assert all(same(a, b) for a, b in zip(alone, batched))
        assert engine.stats["cached_tokens"] >= 16 + 32        # prompt 6's two blocks, prompt 7's four
        assert engine.cache.available() == engine.cache.blocks  # every block back (idle or free)


def test_preemption_recomputes_the_same_bits(model):
    with loom.deterministic(True):
        reqs = requests(prompts(model.decoder.config.vocab_size, seed=1))
        alone = [BatchEngine(model).generate([r])[0] for r in reqs]
        engine = BatchEngine(model, max_batch=8, cache_tokens=64, block_size=8)
        assert all(same(a, b) for a, b in zip(alone, engine.generate(reqs)))
        assert engine.stats["preempted"] > 0


def test_sampled_sequences_and_fast_mode():
    model = tiny_decoder("llama")
    reqs = requests(prompts(64, seed=2), sampling=gen.Sampling(temperature=0.9, top_p=0.9, seed=5))
    with loom.deterministic(True):
        alone = [BatchEngine(model).generate([r])[0] for r in reqs]
        assert all(same(a, b) for a, b in zip(alone, BatchEngine(model, max_batch=5).generate(reqs)))
        assert alone[0].tokens == list(model.generate_ids(reqs[0].prompt, max_tokens=12, stop_ids=(),
                                                          temperature=0.9, top_p=0.9, seed=5))
    with loom.deterministic(False):            # fast mode: the last bits may move, not more
        alone = [BatchEngine(model).generate([r])[0] for r in requests(prompts(64, seed=2))]
        batched = BatchEngine(model, max_batch=5).generate(requests(prompts(64, seed=2)))
        for a, b in zip(alone, batched):
            np.testing.assert_allclose(a.logprobs, b.logprobs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind, extra", [("mistral", dict(sliding_window=7)), ("qwen2", {}),
                                         ("qwen3", dict(head_dim=32))])
def test_every_family_matches_generate_ids(tmp_path, kind, extra):
    lm = loom.llm.load(td.save(td.build(kind, seed=4, **extra), tmp_path))
    ps = prompts(lm.decoder.config.vocab_size, seed=3)
    with loom.deterministic(True):
        results = BatchEngine(lm, max_batch=4, block_size=4).generate(requests(ps))
        for p, r in zip(ps, results):
            assert r.tokens == list(lm.generate_ids(p, max_tokens=12, stop_ids=()))


def test_penalties_follow_openai_formula():
    model = tiny_decoder("llama")
    prompt = [3, 9, 27, 81 % 64]
    with loom.deterministic(True):
        got = BatchEngine(model).generate([Request(prompt, max_tokens=10, stop_ids=(), presence_penalty=0.7,
                                                   frequency_penalty=1.3)])[0].tokens
        seq, counts = list(prompt), {}
        for _ in range(10):                     # the reference: full forwards, penalties by hand
            logits = np.asarray(model.logits(seq))[-1].copy()
            for t, c in counts.items():
                logits[t] -= np.float32(1.3) * np.float32(c) + np.float32(0.7)
            token = int(np.argmax(logits))
            seq.append(token)
            counts[token] = counts.get(token, 0) + 1
        assert got == seq[len(prompt):]
        plain = BatchEngine(model).generate([Request(prompt, max_tokens=10, stop_ids=())])[0].tokens
        assert plain != got                     # the penalties changed something


def test_stop_ids_and_length_finish_reasons():
    model = tiny_decoder("llama")
    with loom.deterministic(True):
        first = BatchEngine(model).generate([Request([1, 2, 3], max_tokens=6, stop_ids=())])[0]
        stopped = BatchEngine(model).generate([Request([1, 2, 3], max_tokens=6, stop_ids=(first.tokens[2],))])[0]
    assert first.finish_reason == "length" and len(first.tokens) == 6
    assert stopped.finish_reason == "stop" and stopped.tokens == first.tokens[:first.tokens.index(first.tokens[2])]


def test_bad_requests_name_the_setting():
    engine = BatchEngine(tiny_decoder("llama"), max_queue=2, cache_tokens=32, block_size=8)
    cases = [(Request([], max_tokens=3), "prompt"), (Request([1, 999], max_tokens=3), "prompt"),
             (Request([1], max_tokens=-1), "max_tokens"), (Request([1] * 20, max_tokens=20), "max_tokens"),
             (Request([1], 3, presence_penalty=3.0), "presence_penalty"), (Request([1], 3, logprobs=-1), "logprobs"),
             (Request([1], 3, stop=("x",)), "stop"), (Request([1], 3, stop_ids=(70,)), "stop_ids")]
    for request, name in cases:
        with pytest.raises(ConfigError) as info:
            engine.submit(request, lambda e: None)
        assert info.value.path == name, request
    for name, value in (("max_batch", 0), ("block_size", 1.5), ("cache_tokens", 4)):
        with pytest.raises(ConfigError, match=name):
            BatchEngine(tiny_decoder("llama"), **{name: value})


def test_a_full_queue_refuses_all_or_nothing_and_cancel_frees_blocks():
    engine = BatchEngine(tiny_decoder("llama"), max_batch=1, max_queue=2, block_size=8)
    events = []
    handles = engine.submit_all([Request([1, 2, 3], max_tokens=30, stop_ids=())] * 2, [events.append] * 2)
    with pytest.raises(QueueFull, match="max_queue"):
        engine.submit(Request([4], max_tokens=3), events.append)
    assert engine.load["waiting"] == 2
    engine.step()
    engine.step()
    assert engine.load["running"] == 1 and engine.cache.available() < engine.cache.blocks
    for h in handles:
        h.cancel()
    assert not engine.step()                       # nothing left
    assert engine.cache.available() == engine.cache.blocks
    assert [e.finish_reason for e in events if e.finish_reason] == ["cancelled", "cancelled"]


def test_paged_cache_shares_evicts_and_refuses():
    cache = PagedKVCache(np, layers=1, kv_heads=1, head_dim=2, blocks=3, block_size=4)
    a, b = cache.take(), cache.take()
    names = block_names(list(range(12)), 4, 2)
    assert names == block_names(list(range(8)), 4, 2) and names[0] != block_names([9, 1, 2, 3], 4, 1)[0]
    cache.register(a, names[0])
    cache.share(a)
    cache.release([a, b])
    assert cache.refs[a] == 1 and cache.available() == 2
    cache.release([a])                           # registered: idle, still found
    assert cache.lookup(names[0]) == a and cache.available() == 3
    taken = [cache.take(), cache.take()]         # the free ones first
    assert a not in taken and cache.lookup(names[0]) == a
    assert cache.take() == a and cache.lookup(names[0]) is None      # then the idle one, evicted
    with pytest.raises(OutOfBlocks):
        cache.take()
    np.testing.assert_array_equal(cache.slots([2, 0], 2, 7), [10, 11, 0, 1, 2])
    with pytest.raises(ConfigError, match="blocks"):
        PagedKVCache(np, 1, 1, 2, blocks=0)


def test_generate_batch_is_generate_for_each_prompt():
    model = tiny_decoder("qwen3")
    ps = prompts(model.decoder.config.vocab_size, seed=4)[:5]
    with loom.deterministic(True):
        results = model.generate_batch(ps, max_tokens=9, temperature=0.8, seed=7, stop_ids=(), max_batch=2)
        for i, (p, r) in enumerate(zip(ps, results)):
            assert r.tokens == list(model.generate_ids(p, max_tokens=9, temperature=0.8, seed=7 + i, stop_ids=()))
            assert r.text is None and r.finish_reason == "length" and r.prompt_tokens == len(p)


def test_fast_mode_pads_attention_in_groups(tmp_path, monkeypatch):
    from loom.llm import paged_forward
    lm = loom.llm.load(td.save(td.build("mistral", seed=5, sliding_window=6), tmp_path))
    reqs = requests(prompts(lm.decoder.config.vocab_size, seed=6))
    with loom.deterministic(False):
        alone = [BatchEngine(lm).generate([r])[0] for r in reqs]
        whole = BatchEngine(lm, max_batch=8, block_size=4).generate(reqs)
        monkeypatch.setattr(paged_forward, "PADDED_ELEMENTS", 4 * 40 * 41)     # groups of one or two
        grouped = BatchEngine(lm, max_batch=8, block_size=4).generate(reqs)
    for a, b, g in zip(alone, whole, grouped):
        np.testing.assert_allclose(a.logprobs, b.logprobs, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(a.logprobs, g.logprobs, rtol=1e-4, atol=1e-4)


def _q8_model():
    """A tiny llama whose matrices are random Q8_0 blocks (moderate scales), norms float."""
    from loom.kernels.quant import gguf as gq
    from loom.kernels.quant.block import BlockQuantized
    from loom.llm.decoder import Decoder
    from loom.llm.decoder_config import DecoderConfig, expected_tensors
    from loom.llm.model import CausalLM
    cfg = {"model_type": "llama", "vocab_size": 96, "hidden_size": 64, "intermediate_size": 96,
           "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
           "max_position_embeddings": 128, "rms_norm_eps": 1e-5, "tie_word_embeddings": False}
    config = DecoderConfig.from_hf(cfg)
    rng = np.random.default_rng(12)
    weights = {}
    for name, shape in expected_tensors(config)[0].items():
        if len(shape) == 1:
            weights[name] = (1 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
            continue
        block, size = gq.BLOCKS["Q8_0"]
        raw = rng.integers(0, 256, (shape[0] * shape[1] // block, size), dtype=np.uint8)
        raw[:, :2] = (rng.random(len(raw)) * 0.01 + 1e-3).astype(np.float16).view(np.uint8).reshape(-1, 2)
        weights[name] = BlockQuantized(raw.reshape(shape[0], -1), "Q8_0", shape)
    return CausalLM(Decoder(config, weights, "cpu"), None, cfg)


def test_dense_weight_copies_keep_the_bits(monkeypatch):
    """dense_weights' float32 copies (made in deterministic mode where no kernel reads a weight in place for any
    rows: the CPU without numba, here by its answer) give the bits of the products that read the blocks."""
    from loom.backend.cpu import CPU
    monkeypatch.setattr(CPU.quant, "fixed_wide", lambda qtype, cols: False)
    model = _q8_model()
    reqs = requests(prompts(96, seed=8) + [list(range(60))])      # prefill chunks of more than 16 rows
    with loom.deterministic(True):
        plain = BatchEngine(model, dense_weights=False).generate(reqs)
        assert model.decoder._dense is None
        dense = BatchEngine(model, dense_weights=True).generate(reqs)
        assert model.decoder._dense                                  # the copies were made and used
        for p, a, b in zip(reqs, plain, dense):
            assert same(a, b)
            assert a.tokens == list(model.generate_ids(p.prompt, max_tokens=12, stop_ids=()))


def test_generate_queues_more_requests_than_the_queue_holds():
    model = tiny_decoder("llama")
    ps = [[i % 64, (3 * i) % 64] for i in range(9)]
    with loom.deterministic(True):
        got = BatchEngine(model, max_batch=2, max_queue=3).generate([Request(p, max_tokens=3, stop_ids=()) for p in ps])
        assert [r.tokens for r in got] == [list(model.generate_ids(p, max_tokens=3, stop_ids=())) for p in ps]


def test_review_edge_cases_max_tokens_zero_bad_ids_and_the_engines_own_mode():
    model = tiny_decoder("llama")
    with loom.deterministic(True):
        engine = BatchEngine(model)
        done = engine.generate([Request([1, 2], max_tokens=0), Request([1, 2], max_tokens=2, stop_ids=())])
        assert done[0].tokens == [] and done[0].finish_reason == "length" and len(done[1].tokens) == 2
        for bad, name in (([1.5, 2], "prompt"), (["3"], "prompt"), ([True], "prompt")):
            with pytest.raises(ConfigError) as info:
                engine.submit(Request(bad, max_tokens=2), lambda e: None)
            assert info.value.path == name
        with pytest.raises(ConfigError, match="Sampling"):
            engine.submit(Request([1], max_tokens=2, sampling=None), lambda e: None)
    with loom.deterministic(False):
        fast = BatchEngine(model)
        want = fast.generate([Request([1, 2, 3], max_tokens=4, stop_ids=(), logprobs=0)])[0]
    with loom.deterministic(True):                  # generate() runs in the mode the engine was made in
        assert same(fast.generate([Request([1, 2, 3], max_tokens=4, stop_ids=(), logprobs=0)])[0], want)


def test_a_failing_sequence_or_sink_does_not_take_the_others_down(monkeypatch):
    import threading
    model = tiny_decoder("llama")
    engine = BatchEngine(model, max_batch=4)
    real = BatchEngine._sample

    def flaky(self, seq, choice):
        if seq.number == 0 and len(seq.generated) == 1:
            raise ValueError("this sequence only")
        return real(self, seq, choice)
    monkeypatch.setattr(BatchEngine, "_sample", flaky)
    done = threading.Event()
    events = {0: [], 1: [], 2: []}

    def boom(event):
        raise RuntimeError("sink boom")

    def collect(i):
        def sink(event):
            events[i].append(event)
            if event.finish_reason and all(events[k] and events[k][-1].finish_reason for k in (0, 2)):
                done.set()
        return sink
    engine.start()
    try:
        engine.submit(Request([1, 2], max_tokens=6, stop_ids=()), collect(0))
        engine.submit(Request([3, 4], max_tokens=6, stop_ids=()), boom)          # raises at its first event
        engine.submit(Request([5, 6], max_tokens=6, stop_ids=()), collect(2))
        assert done.wait(30), "the engine stopped answering"
        assert events[0][-1].finish_reason == "error" and "this sequence only" in events[0][-1].error
        assert events[2][-1].finish_reason == "length" and len([e for e in events[2] if e.token is not None]) == 6
        assert engine._thread.is_alive()
    finally:
        engine.stop()
    assert engine.cache.available() == engine.cache.blocks
    with pytest.raises(loom.errors.EngineError, match="stopped"):
        engine.submit(Request([1], max_tokens=1), lambda e: None)


def test_stop_cancels_what_is_left():
    engine = BatchEngine(tiny_decoder("llama"))
    events = []
    engine.submit(Request([1, 2], max_tokens=5), events.append)           # never stepped: the thread never ran
    engine.stop()
    assert [e.finish_reason for e in events] == ["cancelled"]


def test_single_token_prefill_pieces_never_take_the_decode_graph(monkeypatch):
    """A recorded step takes only items that want logits; a one-token piece inside a prompt (a
    prefix hit that ends one token before a chunk end) goes through paged_forward (CPU stand-in)."""
    from loom.llm import paged_forward
    model = tiny_decoder("llama")
    reqs = [Request(list(range(1, 24)), max_tokens=4, stop_ids=(), logprobs=1),
            Request(list(range(1, 10)) + [40, 41, 42, 43], max_tokens=4, stop_ids=(), logprobs=1)]
    with loom.deterministic(True):
        alone = [BatchEngine(model).generate([r])[0] for r in reqs]

        class FakeGraph:
            def step(self, ids, positions, tables):
                work = [paged_forward.Work(np.asarray([t]), p, tb, True) for t, p, tb in zip(ids, positions, tables)]
                return paged_forward.forward(model.decoder, engine.cache, work)
        engine = BatchEngine(model, max_batch=1, block_size=3)
        engine.chunk = 10                 # the second prompt reuses 3 blocks: its next piece is position 9 alone
        engine.steps.decode_graph = lambda n, items: FakeGraph()
        got = engine.generate(reqs)
    assert engine.stats["cached_tokens"] == 9
    assert all(same(a, b) for a, b in zip(alone, got))


def test_eviction_takes_a_prefix_from_its_tail():
    cache = PagedKVCache(np, layers=1, kv_heads=1, head_dim=2, blocks=2, block_size=4)
    head, tail = cache.take(), cache.take()
    names = block_names(list(range(8)), 4, 2)
    cache.register(head, names[0])
    cache.register(tail, names[1])
    cache.release([head, tail])
    assert cache.take() == tail and cache.lookup(names[0]) == head      # the head still serves lookups

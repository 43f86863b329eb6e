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


@pytest.mark.smoke
def test_fast_gpu_batches_agree_with_each_sequence_alone():
    with loom.deterministic(False):
        gpu = tiny_decoder("llama", "cuda")
        reqs = _requests(gpu.decoder.config.vocab_size)
        alone = [BatchEngine(gpu).generate([r])[0] for r in reqs]
        got = BatchEngine(gpu, max_batch=6).generate(reqs)
        for a, b in zip(alone, got):
            np.testing.assert_allclose(a.logprobs[:3], b.logprobs[:3], rtol=1e-3, atol=1e-3)


def _graph_model(arch: str, device: str, bf16: bool = False, **extra):
    """A small random decoder the recorded paged step takes (head_dim 64, widths multiples of 32);
    bf16: its matrices stored as BF16 (the tensor cores' fused steps in fast mode)."""
    from loom.llm.decoder import Decoder
    from loom.llm.decoder_config import DecoderConfig, expected_tensors
    from loom.llm.model import CausalLM
    cfg = {"model_type": arch, "vocab_size": 256, "hidden_size": 128, "intermediate_size": 256,
           "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64,
           "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
           "tie_word_embeddings": False, **extra}
    config = DecoderConfig.from_hf(cfg)
    rng = np.random.default_rng(3)
    weights = {name: (1 + 0.1 * rng.standard_normal(shape)).astype(np.float32) if name.endswith("norm.weight")
               else (0.15 * rng.standard_normal(shape)).astype(np.float32)
               for name, shape in expected_tensors(config)[0].items()}
    if bf16:
        import ml_dtypes

        from loom.kernels.quant.block import BlockQuantized
        weights = {name: BlockQuantized(w.astype(ml_dtypes.bfloat16).view(np.uint8).reshape(w.shape[0], -1), "BF16",
                                        w.shape) if w.ndim == 2 else w for name, w in weights.items()}
    return CausalLM(Decoder(config, weights, device), None, cfg)


@pytest.mark.parametrize("arch, extra", [("llama", {}), ("qwen3", {}), ("mistral", {"sliding_window": 9})])
def test_recorded_paged_steps_give_the_cpu_bits(arch, extra):
    with loom.deterministic(True):
        cpu, gpu = _graph_model(arch, "cpu", **extra), _graph_model(arch, "cuda", **extra)
        reqs = _requests(256)
        alone = [BatchEngine(cpu).generate([r])[0] for r in reqs]
        engine = BatchEngine(gpu, max_batch=5, block_size=8)
        got = engine.generate(reqs)
        assert engine.stats["graph_steps"] > 0
        for a, b in zip(alone, got):
            assert a.tokens == b.tokens and a.logprobs == b.logprobs
        plain = [Request(r.prompt, max_tokens=14, stop_ids=()) for r in reqs]      # tokens chosen on the device
        assert [r.tokens for r in BatchEngine(gpu, max_batch=5).generate(plain)] == [a.tokens for a in alone]


@pytest.mark.parametrize("arch,bf16", [("llama", False), ("llama", True), ("qwen2", True)])
def test_recorded_paged_steps_in_fast_mode_and_past_sixteen_rows(arch, bf16):
    """Past sixteen rows: float32 weights through GEMMs, BF16 ones through the fused bfloat16 steps
    (qwen2: with the q|k|v bias); the recorded steps agree with the eager ones. 70 sequences: a
    bucket of 96 x 4 heads, the attention kernel's two-warp blocks (decode.batch_warps)."""
    with loom.deterministic(False):
        gpu = _graph_model(arch, "cuda", bf16)
        rng = np.random.default_rng(8)
        reqs = [Request(rng.integers(0, 256, 5 + i).tolist(), max_tokens=10, stop_ids=(), logprobs=1)
                for i in range(70)]
        eager = BatchEngine(gpu, max_batch=70)
        eager.steps.graphs_off = True
        want = eager.generate(reqs)
        engine = BatchEngine(gpu, max_batch=70)
        got = engine.generate(reqs)
        assert engine.stats["graph_steps"] > 0
        assert any(g.bf16 for g in engine.steps.graphs.values()) == bf16
        if not bf16:
            for a, b in zip(want, got):
                np.testing.assert_allclose(a.logprobs[:4], b.logprobs[:4], rtol=1e-3, atol=1e-3)
            return
        # bf16: the eager steps' attention is the flash kernel's (bfloat16 keys, values and
        # probabilities), the recorded decode steps' float32; bfloat16 differences may flip a greedy
        # choice between near-equal logits, after which the sequences differ. Until then they agree.
        agree = 0
        for a, b in zip(want, got):
            same = next((i for i, (x, y) in enumerate(zip(a.tokens, b.tokens)) if x != y), len(a.tokens))
            np.testing.assert_allclose(a.logprobs[:min(same, 4)], b.logprobs[:min(same, 4)], rtol=3e-2, atol=3e-2)
            agree += same >= 3
        assert agree >= 0.9 * len(reqs)


def _tokens(events):
    return [e.token for e in events if e.token is not None]


@pytest.mark.parametrize("block_size, cache_tokens", [(16, None), (4, None), (4, 200)])
def test_greedy_steps_launched_ahead_give_each_sequence_its_tokens_alone(block_size, cache_tokens):
    """Plain greedy requests run in steps launched a step ahead (BatchEngine._launch_next): sequences
    stop at different steps (max_tokens, and stop ids met mid-run) and leave padding rows, tables
    grow past block boundaries (block_size 4), and a small cache runs out of blocks (the run ends and
    the planned step preempts); every sequence gets the tokens the CPU gives it alone."""
    with loom.deterministic(True):
        cpu, gpu = _graph_model("llama", "cpu"), _graph_model("llama", "cuda")
        rng = np.random.default_rng(11)
        reqs = [Request(rng.integers(0, 256, 3 + 2 * i).tolist(), max_tokens=4 + 5 * i % 17, stop_ids=())
                for i in range(12)]
        plain = [BatchEngine(cpu).generate([r])[0].tokens for r in reqs]
        for i in (1, 5, 9):                 # stop at a token the sequence generates
            reqs[i] = Request(reqs[i].prompt, max_tokens=reqs[i].max_tokens, stop_ids=(plain[i][2],))
        alone = [BatchEngine(cpu).generate([r])[0].tokens for r in reqs]
        assert all(len(alone[i]) < len(plain[i]) for i in (1, 5, 9))
        engine = BatchEngine(gpu, max_batch=12, block_size=block_size, cache_tokens=cache_tokens)
        assert [r.tokens for r in engine.generate(reqs)] == alone
        assert engine.stats["ahead_steps"] > 0
        if cache_tokens is not None:
            assert engine.stats["preempted"] > 0
        planned = BatchEngine(gpu, max_batch=12, block_size=block_size, cache_tokens=cache_tokens)
        planned.pipeline = False
        assert [r.tokens for r in planned.generate(reqs)] == alone and planned.stats["ahead_steps"] == 0


class _MasksAfter:
    """A lazy constraint (lazy_constraint.LazyConstraint's protocol): free for `free` tokens, masking
    none; then only `token` is allowed, `count` times; then finished."""

    def __init__(self, vocab: int, free: int, token: int, count: int = 3):
        self.vocab_size, self.free, self.token, self.count, self.pushed = vocab, free, token, count, 0

    @property
    def started(self) -> bool:
        return self.pushed > 0

    @property
    def finished(self) -> bool:
        return self.pushed >= self.free + self.count

    @property
    def masking(self) -> bool:
        return self.free <= self.pushed < self.free + self.count

    def allowed(self, stop_ids) -> np.ndarray:
        mask = np.zeros(self.vocab_size, bool)
        mask[self.token] = True
        return mask

    def push(self, token: int) -> None:
        self.pushed += 1


@pytest.mark.parametrize("deterministic", [True, False])
def test_a_constraint_that_begins_masking_mid_run_is_kept_beside_steps_launched_ahead(deterministic):
    """A request whose constraint masks nothing at first (tool_choice auto before its marker) does not join
    the greedy steps launched ahead (whose tokens the host sees a step late): when it begins masking,
    its next tokens are the allowed one; the plain requests beside it get their tokens alone, and run
    ahead once it has ended."""
    with loom.deterministic(deterministic):
        gpu = _graph_model("llama", "cuda")
        rng = np.random.default_rng(14)
        plain = [Request(rng.integers(0, 256, 5 + i).tolist(), max_tokens=20, stop_ids=()) for i in range(4)]
        reference = BatchEngine(gpu, max_batch=8)
        reference.pipeline = False
        want = [reference.generate([r])[0].tokens for r in plain]
        free = reference.generate([Request([9, 4, 1], max_tokens=4, stop_ids=())])[0].tokens
        token = next(t for t in range(256) if t not in free)        # one greedy decoding would not pick
        constrained = Request([9, 4, 1], max_tokens=20, stop_ids=(), constraint=_MasksAfter(256, 4, token))
        engine = BatchEngine(gpu, max_batch=8)
        got = engine.generate([constrained] + plain)
        assert got[0].tokens == free + [token] * 3 and got[0].finish_reason == "stop"
        assert [r.tokens for r in got[1:]] == want
        assert engine.stats["ahead_steps"] > 0


@pytest.mark.parametrize("deterministic", [True, False])
def test_a_request_submitted_or_cancelled_during_steps_launched_ahead(deterministic):
    """A run of steps launched ahead ends for a request that can be admitted (it joins at the next
    planned step) and drops a cancelled sequence's row; the others keep their tokens."""
    with loom.deterministic(deterministic):
        gpu = _graph_model("llama", "cuda")
        rng = np.random.default_rng(12)
        reqs = [Request(rng.integers(0, 256, 4 + i).tolist(), max_tokens=24, stop_ids=()) for i in range(7)]
        reference = BatchEngine(gpu, max_batch=8)
        reference.pipeline = False
        want = [reference.generate([r])[0].tokens for r in reqs]
        engine = BatchEngine(gpu, max_batch=8)
        events = [[] for _ in reqs]
        handles = [engine.submit(r, events[i].append) for i, r in enumerate(reqs[:6])]
        for _ in range(6):
            engine.step()
        assert engine._ahead is not None and engine.stats["ahead_steps"] > 0
        handles[2].cancel()
        before = engine.stats["ahead_steps"]
        for _ in range(3):                  # the cancelled sequence's row is padding; the run goes on
            engine.step()
            assert engine._ahead is not None
        assert engine.stats["ahead_steps"] == before + 3 and engine.stats["cancelled"] == 1
        engine.submit(reqs[6], events[6].append)
        while engine.step():
            pass
        assert engine._ahead is None and not engine.running
        for i in (0, 1, 3, 4, 5, 6):
            assert _tokens(events[i]) == want[i], i
            assert events[i][-1].finish_reason == "length"
        got = _tokens(events[2])
        assert events[2][-1].finish_reason == "cancelled" and got == want[2][:len(got)] and len(got) < 24
        assert engine.stats["ahead_steps"] - before >= 10       # a new run after the admission


def test_steps_launched_ahead_up_to_the_end_of_the_context():
    """Sequences that fill the model's context (prompt + max_tokens = 256 positions, the graph's whole
    block table) end their run on the last position; the tokens are the CPU's alone."""
    with loom.deterministic(True):
        cpu, gpu = _graph_model("llama", "cpu"), _graph_model("llama", "cuda")
        rng = np.random.default_rng(13)
        reqs = [Request(rng.integers(0, 256, 230).tolist(), max_tokens=26, stop_ids=()),
                Request(rng.integers(0, 256, 240).tolist(), max_tokens=16, stop_ids=()),
                Request(rng.integers(0, 256, 7).tolist(), max_tokens=30, stop_ids=())]
        alone = [BatchEngine(cpu).generate([r])[0].tokens for r in reqs]
        engine = BatchEngine(gpu, max_batch=3, block_size=8)
        assert [r.tokens for r in engine.generate(reqs)] == alone
        assert engine.stats["ahead_steps"] > 10 and [len(t) for t in alone] == [26, 16, 30]


def test_the_engine_thread_with_steps_launched_ahead():
    """engine.start() with requests submitted from several threads, more than max_batch (admissions
    end runs mid-way), one cancelled by its own sink mid-stream: each other request gets the CPU's
    tokens alone."""
    import threading
    with loom.deterministic(True):
        cpu, gpu = _graph_model("llama", "cpu"), _graph_model("llama", "cuda")
        rng = np.random.default_rng(14)
        reqs = [Request(rng.integers(0, 256, 3 + 4 * i).tolist(), max_tokens=20, stop_ids=()) for i in range(7)]
        alone = [BatchEngine(cpu).generate([r])[0].tokens for r in reqs]
        engine = BatchEngine(gpu, max_batch=4)
    events: list[list] = [[] for _ in reqs]
    done = [threading.Event() for _ in reqs]
    handles: dict = {}

    def sink(i):
        def take(event):
            events[i].append(event)
            if i == 1 and len(_tokens(events[i])) >= 5 and 1 in handles:
                handles[1].cancel()
            if event.finish_reason is not None:
                done[i].set()
        return take

    def submit(i):
        handles[i] = engine.submit(reqs[i], sink(i))

    engine.start()
    try:
        threads = [threading.Thread(target=submit, args=(i,)) for i in range(len(reqs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(d.wait(120) for d in done)
    finally:
        engine.stop()
    for i in range(len(reqs)):
        got = _tokens(events[i])
        if i == 1:
            assert events[i][-1].finish_reason == "cancelled" and got == alone[i][:len(got)] and len(got) < 20
        else:
            assert got == alone[i] and events[i][-1].finish_reason == "length", i
    assert engine.stats["ahead_steps"] > 0


@pytest.mark.parametrize("qtype, long", [("Q4_1", False), ("Q4_K", True), ("BF16", True)])
def test_deterministic_continuous_batches_of_any_length_give_the_cpu_bits_alone(qtype, long):
    """Deterministic mode through the engine on the GPU with products past K = 2048 (`long`: the down
    projection takes the slice scheme) and not: ten sequences of other prompt lengths (chunks of 3 to 70
    rows: the one-row kernels and the tiles, recorded or not), decoded in batches past 4 (the tiles) and
    after preemption (a small cache), give every sequence the tokens and log-probability bits the CPU
    gives it alone."""
    from loom.llm.decoder import Decoder
    from loom.llm.decoder_config import DecoderConfig
    from loom.llm.model import CausalLM

    from .paged_steps import CONFIG, quant_weights
    cfg = {**CONFIG, "max_position_embeddings": 256, "intermediate_size": 2304 if long else 512}
    weights = quant_weights(qtype, cfg, np.random.default_rng(30))
    config = DecoderConfig.from_hf(cfg)
    rng = np.random.default_rng(31)
    reqs = [Request(rng.integers(0, cfg["vocab_size"], n).tolist(), max_tokens=9, stop_ids=(), logprobs=2)
            for n in (3, 70, 12, 41, 5, 33, 64, 8, 27, 50)]
    with loom.deterministic(True):
        cpu = CausalLM(Decoder(config, weights), None, cfg)
        gpu = CausalLM(Decoder(config, weights, device="cuda"), None, cfg)
        alone = [BatchEngine(cpu).generate([r])[0] for r in reqs]
        # (no prefix cache: each round's steps hold the same mixes of chunks, so a mix seen in the first round, all
        # of its chunks together kernel by kernel, is recorded in the second and replayed in the third)
        for engine in (BatchEngine(gpu, max_batch=10, block_size=8, prefix_cache=False),
                       BatchEngine(gpu, max_batch=10, cache_tokens=160, block_size=8, prefix_cache=False)):
            for _ in range(3):
                for a, b in zip(alone, engine.generate(reqs)):
                    assert a.tokens == b.tokens and a.logprobs == b.logprobs
            assert engine.stats["graph_steps"] > 0 and engine.stats["prefill_graph_steps"] > 0
        assert engine.stats["preempted"] > 0

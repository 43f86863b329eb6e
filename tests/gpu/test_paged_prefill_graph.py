"""The batch engine's recorded prompt steps (loom/llm/paged_prefill_graph.py): from the second
sighting of a step's chunks (lengths, positions, wanted logits) the engine's device steps
(loom/llm/engine_steps.py) replay a CUDA graph whose logits, keys and values are the eager step's
bits, with other token ids and other block tables than the recording's (the blocks of earlier runs
keep theirs); sliding windows, q|k|v biases, per-head norms, quantized weights (decoded block by
block, or keep_dense's copies) and several chunks a prompt included; decode steps read the keys a
replayed chunk wrote; deterministic mode records its chunks too (eager, replayed and CPU bits alike,
both product schemes); prompts submitted together run as one step with each one's CPU bits alone;
Decoder.graphs False never records one; a recording without memory runs the chunk eagerly, the
oldest of more shapes than PREFILL_GRAPHS_KEPT is evicted; the graphs keep the flash kernel's item
tables and the RoPE tables they read."""
import numpy as np
import pytest

import loom
from loom.kernels.quant.block import BlockQuantized
from loom.llm import engine_steps, paged_prefill_graph
from loom.llm.batching import BatchEngine, Request
from loom.llm.decoder import Decoder
from loom.llm.decoder_config import DecoderConfig
from loom.llm.model import CausalLM
from loom.llm.paged_forward import sequence_logits
from loom.llm.paged_prefill_graph import PagedPrefillGraph

from .paged_steps import CONFIG, built, graph_and_eager, quant_weights, runner_for, steps
from .test_batching_gpu import _graph_model

cupy = pytest.importorskip("cupy")
from loom.backend import cuda as cuda_backend  # noqa: E402  (imports cupy)
from loom.backend.cuda import flash  # noqa: E402

pytestmark = pytest.mark.gpu
CFG = {**CONFIG, "max_position_embeddings": 512}


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
                                         ("qwen2", {}), ("qwen3", {"head_dim": 128})])
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
        # one chunk a recording: (its length, position, whether its logits are wanted), and the dense
        # copies the engine keeps on the GPU; chunks after the first start past position 0
        assert set(engine.steps.prefills.entries) == {(((32, 0, False),), True), (((32, 32, False),), True),
                                                      (((26, 64, True),), True), (((27, 32, True),), True)}


def test_prompt_steps_are_not_recorded_with_graphs_off_or_weights_the_exact_kernels_decode(monkeypatch):
    """Decoder.graphs False records nothing in either mode; nor does deterministic mode where a stored
    weight's products would decode it inside the recording (Decoder.exact_in_place False)."""
    for deterministic, graphs in ((True, False), (False, False), (True, True)):
        with loom.deterministic(deterministic):
            model = _graph_model("llama", "cuda", True)
            model.decoder.graphs = graphs
            if graphs:
                monkeypatch.setattr(model.decoder, "exact_in_place", lambda: False)
            engine = _engine(model)
            for seed in range(3):
                engine.generate(_prompt_requests(seed))
            assert engine.stats["prefill_graph_steps"] == 0 and not engine.steps.prefills.entries
            assert not engine.steps.prefills.eager_reasons


def _no_decoded_weights_on_the_gpu(monkeypatch):
    """Make a deterministic product that decodes a weight on the GPU fail the test: the exact block
    kernels must take every one (the CPU's references still decode theirs)."""
    by_blocks = BlockQuantized._by_blocks

    def checked(self, *args):
        assert isinstance(self.data, np.ndarray), "a GPU weight was decoded for a deterministic product"
        return by_blocks(self, *args)
    monkeypatch.setattr(BlockQuantized, "_by_blocks", checked)


@pytest.mark.parametrize("arch, extra", [pytest.param("llama", {}, marks=pytest.mark.smoke), ("mistral", {"sliding_window": 20}),
                                         ("qwen2", {}), ("qwen3", {"head_dim": 128})])
def test_deterministic_prompt_steps_record_with_the_eager_and_cpu_bits(arch, extra, monkeypatch):
    """Deterministic mode records its prompt chunks too (their products the integer scheme's kernels):
    replays give the eager chunks' tokens and log-probability bits and the CPU's, chunks past position 0
    (a window starting past the first key) included."""
    _deterministic_prompt_steps(arch, extra, monkeypatch)


@pytest.mark.parametrize("arch, extra", [("llama", {}), ("qwen2", {})])
def test_deterministic_prompt_products_through_the_int8_gemm_keep_the_bits(arch, extra, monkeypatch):
    """As above with every prompt product of more than quant_fixed.MAX_ROWS rows taking quant_fixed_planes'
    int8 GEMM (cuBLAS's GEMM of the stacked planes, which prompts take past ROWS_MAX rows), eager and
    recorded."""
    from loom.backend.cuda import quant_fixed, quant_fixed_planes
    monkeypatch.setattr(quant_fixed, "ROWS_MAX", quant_fixed.MAX_ROWS)
    taken = []
    product = quant_fixed_planes.product
    monkeypatch.setattr(quant_fixed_planes, "product", lambda *a, **kw: taken.append(1) or product(*a, **kw))
    _deterministic_prompt_steps(arch, extra, monkeypatch)
    assert taken


def _deterministic_prompt_steps(arch, extra, monkeypatch):
    _no_decoded_weights_on_the_gpu(monkeypatch)
    with loom.deterministic(True):
        model, eager_model = _graph_model(arch, "cuda", True, **extra), _graph_model(arch, "cuda", True, **extra)
        cpu_model = _graph_model(arch, "cpu", True, **extra)
        eager_model.decoder.graphs = False
        engine, eager, cpu = _engine(model), _engine(eager_model), _engine(cpu_model)
        for seed in range(3):               # each length: seen once (eager), recorded, replayed
            reqs = _prompt_requests(seed)
            got, want, ref = engine.generate(reqs), eager.generate(reqs), cpu.generate(reqs)
            for a, b, c in zip(got, want, ref):
                assert a.tokens == b.tokens == c.tokens and a.logprobs == b.logprobs == c.logprobs
        assert engine.stats["prefill_graph_steps"] > 0 and not engine.steps.prefills.eager_reasons
        assert eager.stats["prefill_graph_steps"] == 0


@pytest.mark.parametrize("arch, extra", [pytest.param("llama", {}, marks=pytest.mark.smoke), ("mistral", {"sliding_window": 20}),
                                         ("qwen3", {"head_dim": 128})])
def test_deterministic_prompts_arriving_together_run_as_one_step_with_each_ones_bits(arch, extra, monkeypatch):
    """Prompts of several lengths submitted together share one prompt step (their attention one launch a layer where
    the kernel reads the layouts; qwen3's normed q is gathered sequence by sequence): seen once (kernel by kernel),
    recorded, replayed as one graph; every request's tokens and log-probability bits are the CPU engine's, which
    runs each request alone."""
    _no_decoded_weights_on_the_gpu(monkeypatch)
    lengths = (40, 17, 40, 33, 2)
    with loom.deterministic(True):
        gpu, cpu = _graph_model(arch, "cuda", True, **extra), _graph_model(arch, "cpu", True, **extra)
        engine = BatchEngine(gpu, max_batch=len(lengths), block_size=8, prefix_cache=False)
        alone = BatchEngine(cpu, max_batch=1, block_size=8, prefix_cache=False)
        for seed in range(3):
            rng = np.random.default_rng(seed)
            reqs = [Request(rng.integers(0, 256, n).tolist(), max_tokens=3, stop_ids=(), logprobs=2) for n in lengths]
            got, want = engine.generate(reqs), alone.generate(reqs)
            for a, b in zip(got, want):
                assert a.tokens == b.tokens and a.logprobs == b.logprobs
        # one prompt step a round, its mix recorded in the second round and replayed in the third
        assert engine.stats["prefill_graph_steps"] == 2 and len(engine.steps.prefills.entries) == 1
        assert not engine.steps.prefills.eager_reasons


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


def _decoders(qtype="BF16", kind="llama", **extra):
    """(a decoder whose engine steps record, one that runs them kernel by kernel) of CFG's shape with
    random `qtype` weights."""
    cfg = {**CFG, "model_type": kind, **extra}
    if qtype in ("Q4_K", "Q6_K"):
        cfg["intermediate_size"] = 512
    weights = quant_weights(qtype, cfg, np.random.default_rng(20261124))
    return graph_and_eager(built(DecoderConfig.from_hf(cfg), weights))


def _prompt(n, seed=3):
    return np.random.default_rng(seed).integers(0, CFG["vocab_size"], n)


def _same(got, want):
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and g.tobytes() == w.tobytes()




RUNS = 6        # block tables a runner's pool holds: run r's blocks are r, r + RUNS, r + 2 RUNS, ...


def _table(blocks, r):
    return [[r + RUNS * j for j in range(blocks)]]


@pytest.mark.parametrize("qtype", ["BF16", "Q8_0", "Q4_K"])
def test_a_replayed_chunk_writes_the_eager_chunks_keys_and_values_where_its_table_says(qtype):
    """A 40-token prompt through the engine's device steps: seen once (eager), recorded, replayed, each
    run with blocks of its own; the logits, keys and values are the eager chunk's bits, and the blocks
    of the runs before keep theirs. Quantized weights are decoded to bfloat16 block by block inside
    the chunk, or read from keep_dense's bfloat16 copies: another recording (the key names the copies)."""
    prompt = _prompt(40, seed=5)
    blocks = 5                                           # 40 positions of 8
    with loom.deterministic(False):
        recorded, eager = _decoders(qtype)
        run = runner_for(recorded, RUNS * blocks, 8)
        wants = []
        for dense in (False, True):
            if dense:
                recorded.keep_dense()
                eager.keep_dense()
            want = steps(eager, [prompt])[:3]
            for r in range(3 * dense, 3 * dense + 3):
                _same(steps(recorded, [prompt], runner=run, tables=_table(blocks, r))[:3], want)
            wants.append(want)
        assert run.stats["prefill_graph_steps"] == 4 and len(run.prefills.entries) == 2
        assert all(isinstance(g, PagedPrefillGraph) for g in run.prefills.entries.values())
    for r in range(2 * 3):
        slots = run.cache.slots(_table(blocks, r)[0], 0, 40)
        _, k, v = wants[r // 3]
        _same((cupy.asnumpy(run.cache.k[:, slots]), cupy.asnumpy(run.cache.v[:, slots])), (k[:, 0], v[:, 0]))


def test_decode_steps_read_the_keys_a_replayed_chunk_wrote():
    """Prompt then decode steps, three times: the prompt eager, recorded, replayed, the decode steps a
    recorded step each time; the whole generation has the same bits each time, and the decode steps
    agree with the kernel-by-kernel ones."""
    prompt, inputs = _prompt(50, seed=11), [[7], [300], [42], [9]]
    with loom.deterministic(False):
        dec, eager = _decoders(kind="qwen3")
        run = runner_for(dec, RUNS * 7, 8)
        runs = [steps(dec, [prompt], inputs, runner=run, tables=_table(7, r))[0] for r in range(3)]
        want = steps(eager, [prompt], inputs)[0]
    assert run.stats["prefill_graph_steps"] == 2 and run.stats["graph_steps"] == 3 * len(inputs)
    assert runs[1].tobytes() == runs[0].tobytes() and runs[2].tobytes() == runs[0].tobytes()
    assert runs[0][0].tobytes() == want[0].tobytes()                 # the prompt's logits: the eager bits
    assert np.abs(runs[0] - want).max() / np.abs(want).max() < 1e-4


def test_recordings_keep_the_rope_tables_they_read():
    """Recorded steps read the decoder's RoPE tables by address: recording one first grows the tables
    to the model's whole context, so that no later step (a longer sequence) replaces them under it;
    replays after other arrays took memory give the first run's bits."""
    prompt = _prompt(40, seed=6)
    with loom.deterministic(False):
        dec, _ = _decoders()
        run = runner_for(dec, RUNS * 6, 8)
        want = steps(dec, [prompt], [[3], [99]], runner=run, tables=_table(6, 0))[0]    # the decode step recorded
        shape, ptr = dec._cos.shape, dec._cos.data.ptr
        assert shape[0] >= CFG["max_position_embeddings"]
        sequence_logits(dec, _prompt(450, seed=7))                   # a long sequence, kernel by kernel
        assert dec._cos.data.ptr == ptr
        junk = [cupy.full(shape, np.nan, dtype=np.float32) for _ in range(8)]
        got = [steps(dec, [prompt], [[3], [99]], runner=run, tables=_table(6, r))[0] for r in (1, 2)]
        del junk
        assert run.stats["prefill_graph_steps"] == 2 and dec._cos.data.ptr == ptr
    for g in got:
        assert np.isfinite(g).all() and g.tobytes() == want.tobytes()


def test_a_failed_recording_runs_the_chunk_eagerly_and_clear_drops_the_recordings(monkeypatch):
    """A recording that runs out of memory (CuPy's OutOfMemoryError is a MemoryError) runs the chunk
    kernel by kernel without giving up its key, which a later sighting records; GraphCache.clear
    drops every recording, and a key seen before records again at once."""
    prompt = _prompt(40, seed=12)
    with loom.deterministic(False):
        dec, eager = _decoders()
        want = steps(eager, [prompt])[:3]
        run = runner_for(dec, RUNS * 5, 8)

        def no_memory(*args):
            raise MemoryError("out of memory allocating 1073741824 bytes")
        monkeypatch.setattr(paged_prefill_graph, "PagedPrefillGraph", no_memory)
        for r in range(3):
            _same(steps(dec, [prompt], runner=run, tables=_table(5, r))[:3], want)
        assert not run.prefills.entries and not run.prefills.eager_reasons
        assert run.stats["prefill_graph_steps"] == 0
        monkeypatch.setattr(paged_prefill_graph, "PagedPrefillGraph", PagedPrefillGraph)
        _same(steps(dec, [prompt], runner=run, tables=_table(5, 3))[:3], want)     # seen before: recorded now
        assert len(run.prefills.entries) == 1 and run.stats["prefill_graph_steps"] == 1
        run.prefills.clear()
        assert not run.prefills.entries
        _same(steps(dec, [prompt], runner=run, tables=_table(5, 4))[:3], want)
        assert len(run.prefills.entries) == 1 and run.stats["prefill_graph_steps"] == 2


def test_more_chunk_shapes_than_kept_evict_the_oldest_and_keep_the_eager_bits():
    """A prompt of PREFILL_GRAPHS_KEPT + 1 chunks, three times: the second run records every chunk
    (the last recording evicts the first), the third replays all but the evicted one, which is seen
    anew; every run gives the eager engine's token and logprobs."""
    kept = engine_steps.PREFILL_GRAPHS_KEPT
    with loom.deterministic(False):
        dec, eager_dec = _decoders()
        models = [CausalLM(d, None, CFG) for d in (eager_dec, dec)]
        eager, engine = (BatchEngine(m, max_batch=1, block_size=8, prefix_cache=False) for m in models)
        eager.chunk = engine.chunk = 32
        reqs = [Request(_prompt((kept + 1) * 32, seed=9).tolist(), max_tokens=1, stop_ids=(), logprobs=3)]
        want = eager.generate(reqs)[0]
        for _ in range(3):
            got = engine.generate(reqs)[0]
            assert got.tokens == want.tokens and got.logprobs == want.logprobs
        assert engine.stats["prefill_graph_steps"] == 2 * kept + 1
        assert len(engine.steps.prefills.entries) == kept


def test_flash_records_only_item_tables_an_eager_run_made_and_the_graph_keeps_them():
    rng = np.random.default_rng(4)
    q = cupy.asarray(rng.standard_normal((1, 37, 4, 64)).astype(np.float32))
    k = cupy.asarray(rng.standard_normal((1, 2, 37, 64)).astype(np.float32))
    be = loom.backend.get("cuda")

    def attend(pos):
        return flash.attend(q, k, k, pos, 0, None, 0.125)

    with pytest.raises(RuntimeError, match="item table"):
        be.record(lambda: attend(5))                          # never run eagerly at these shapes
    want = attend(0)
    graph, out = be.record(lambda: attend(0))
    assert any(isinstance(a, cupy.ndarray) and a.shape == (1, 5) for a in graph.kept)
    flash._KEPT_META.clear()                                   # the graph still holds its table
    graph.launch()
    assert cupy.asnumpy(out).tobytes() == cupy.asnumpy(want).tobytes()
    with pytest.raises(ValueError, match="outside a recording"):
        cuda_backend.keep_while_recorded(q)


LONG_DOWN = {**CFG, "intermediate_size": 2304}          # the down projection past the rounded scheme's K


@pytest.mark.parametrize("cfg, qtype, length", [(CFG, "Q4_1", 40), (CFG, "Q8_0", 3), (LONG_DOWN, "Q4_K", 40),
                                                (LONG_DOWN, "BF16", 4), (CFG, "F32", 40)])
def test_deterministic_replayed_chunks_give_the_eager_and_cpu_bits(cfg, qtype, length, monkeypatch):
    """A prompt through the engine's device steps three times (eager, recorded, replayed), each with
    blocks of its own: logits, keys and values are the eager chunk's and the CPU's bits, and the blocks
    of the runs before keep theirs; chunks of up to 4 rows (the one-row kernels) and past (the tiles),
    both schemes, stored types and float32."""
    _no_decoded_weights_on_the_gpu(monkeypatch)
    prompt = _prompt(length, seed=length)
    blocks = -(-length // 8)
    weights = quant_weights(qtype, cfg, np.random.default_rng(7))
    config = DecoderConfig.from_hf(cfg)
    with loom.deterministic(True):
        recorded, eager = graph_and_eager(built(config, weights))
        run = runner_for(recorded, RUNS * blocks, 8)
        want = steps(eager, [prompt])[:3]
        _same(want, steps(Decoder(config, weights), [prompt])[:3])
        for r in range(3):
            _same(steps(recorded, [prompt], runner=run, tables=_table(blocks, r))[:3], want)
        assert run.stats["prefill_graph_steps"] == 2 and len(run.prefills.entries) == 1
        assert not run.prefills.eager_reasons
    slots = [run.cache.slots(_table(blocks, r)[0], 0, length) for r in range(3)]
    _, k, v = want
    for r in range(3):                      # each run's blocks keep what it wrote
        _same((cupy.asnumpy(run.cache.k[:, slots[r]]), cupy.asnumpy(run.cache.v[:, slots[r]])), (k[:, 0], v[:, 0]))


def test_deterministic_prompts_take_the_gpus_chunks_with_the_cpus_bits():
    """Spec 5: a deterministic prompt on the GPU runs in chunks of PREFILL_CHUNK_GPU (here one of 1,100 rows) and
    on the CPU in chunks of PREFILL_CHUNK (512, 512, 76): the same logits bits, and through the engines (the GPU's
    chunk seen once, then recorded and replayed) the same tokens and log-probabilities after decode steps."""
    from loom.llm import decoder as decoder_module
    assert decoder_module.PREFILL_CHUNK < 1100 <= decoder_module.PREFILL_CHUNK_GPU
    with loom.deterministic(True):
        gpu, cpu = (_graph_model("llama", d, True, max_position_embeddings=1280) for d in ("cuda", "cpu"))
        ids = np.random.default_rng(11).integers(0, 256, 1100)
        want = sequence_logits(cpu.decoder, ids)
        got = cupy.asnumpy(sequence_logits(gpu.decoder, ids))
        assert got.shape == want.shape == (1100, 256) and np.array_equal(got.view(np.uint32), want.view(np.uint32))
        engine, ref = (BatchEngine(m, max_batch=2, block_size=16, prefix_cache=False) for m in (gpu, cpu))
        assert engine.chunk == decoder_module.PREFILL_CHUNK_GPU and ref.chunk == decoder_module.PREFILL_CHUNK
        reqs = [Request(ids.tolist(), max_tokens=3, stop_ids=(), logprobs=3)]
        expected = ref.generate(reqs)
        for _ in range(3):                  # seen once, recorded, replayed
            for a, b in zip(engine.generate(reqs), expected):
                assert a.tokens == b.tokens and a.logprobs == b.logprobs
        assert engine.stats["prefill_graph_steps"] > 0 and not engine.steps.prefills.eager_reasons

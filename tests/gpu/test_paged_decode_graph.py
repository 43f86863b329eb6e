"""The recorded paged decode step (loom/llm/paged_graph.py) as the batch engine's device steps run it
(loom/llm/engine_steps.py), fast mode (deterministic mode's: test_paged_decode_graph_exact.py): its logits
agree with the kernel-by-kernel steps (Decoder.graphs False) and the CPU to float32 rounding for every
architecture option it covers (biases, qk norm, sliding windows, tied embeddings, head_dim 64 and 128),
for every weight type of the block kernels and for batches that pad their bucket; one recording a
bucket serves any rows, positions and block tables, and its padding rows write the scratch block
only; models it cannot take run kernel by kernel with a notice; generate_ids replays each mode's own."""
import numpy as np
import pytest

import loom
from loom.errors import ConfigError
from loom.llm import paged_graph
from loom.llm.batching import BatchEngine, Request
from loom.llm.decoder import Decoder
from loom.llm.decoder_config import DecoderConfig
from loom.llm.model import CausalLM
from loom.llm.paged_cache import PagedKVCache
from loom.llm.paged_forward import Work, forward

from .cpu_gpu import host, same_bits
from .paged_steps import (
    CONFIG,
    PROMPT,
    built,
    config_for,
    fixed_inputs,
    graph_and_eager,
    loaded,
    quant_weights,
    runner_for,
    saved,
    steps,
    tables_for,
    td,
)

cupy = pytest.importorskip("cupy")
from loom.backend.cuda import quant as cuda_quant  # noqa: E402  (imports cupy)

pytestmark = pytest.mark.gpu

STEPS = 9


@pytest.mark.parametrize("kind, extra", [
    pytest.param("llama", {}, marks=pytest.mark.smoke), ("llama", {"tied": True}), ("qwen2", {}), ("qwen3", {"head_dim": 128}),
    ("mistral", {"sliding_window": 4}), ("qwen3", {"head_dim": 64, "tied": True})])
def test_recorded_steps_match_the_kernel_by_kernel_steps_and_the_cpu(kind, extra, tmp_path):
    saved(kind, extra, tmp_path)
    with loom.deterministic(False):
        graph, eager = graph_and_eager(loaded(tmp_path))
        inputs = fixed_inputs(STEPS, 1, td.VOCAB)
        got, _, _, run = steps(graph, [PROMPT], inputs)
        want, _, _, eager_run = steps(eager, [PROMPT], inputs)
        assert run.stats["graph_steps"] == STEPS and eager_run.stats["graph_steps"] == 0 and not eager_run.graphs
        assert list(run.graphs) == [1] and not run.graphs[1].exact
        assert run.graphs[1].long_from == 512 and run.graphs[1].long_graph is None     # short windows: one block
        assert td.relative_error(got, want) < 1e-5
        # three sequences: the bucket of four, one padding row
        prompts = np.array([PROMPT, PROMPT[::-1], [(t * 5 + 1) % 97 for t in PROMPT]])
        inputs = fixed_inputs(STEPS, 3, td.VOCAB)
        got, _, _, run = steps(graph, prompts, inputs)
        assert list(run.graphs) == [4] and run.stats["graph_steps"] == STEPS
        ref, _, _, _ = steps(loom.llm.load(tmp_path).decoder, prompts, inputs)
        assert td.relative_error(got, ref) < 1e-5


def test_recorded_steps_follow_transformers_logits(tmp_path):
    """Independent reference: transformers' logits for the prompt plus the decoded tokens."""
    model = td.build("llama", layers=2, hidden_size=256, intermediate_size=192)
    td.save(model, tmp_path)
    tokens = [11, 250, 3, 42]
    with loom.deterministic(False):
        dec = loom.llm.load(tmp_path, device="cuda").decoder
        got, _, _, run = steps(dec, [PROMPT], [[t] for t in tokens])
    assert run.stats["graph_steps"] == len(tokens)
    ids = list(PROMPT)
    assert td.relative_error(got[0, 0], td.hf_logits(model, ids)[-1]) < 1e-5
    for s, tok in enumerate(tokens, 1):
        ids.append(tok)
        assert td.relative_error(got[s, 0], td.hf_logits(model, ids)[-1]) < 1e-5


@pytest.mark.parametrize("qtype", cuda_quant.TYPES)
def test_recorded_steps_with_stored_weight_types(qtype):
    cfg = config_for(qtype, cuda_quant.K_LAYOUTS)
    weights, config = quant_weights(qtype, cfg), DecoderConfig.from_hf(cfg)
    prompts = np.array([PROMPT, PROMPT[::-1]])
    inputs = fixed_inputs(STEPS, 2, cfg["vocab_size"])
    with loom.deterministic(False):
        graph, eager = graph_and_eager(built(config, weights))
        got, _, _, run = steps(graph, prompts, inputs)
        want, _, _, _ = steps(eager, prompts, inputs)
        assert run.stats["graph_steps"] == STEPS
        # sums in other orders: up to 1.9e-5 (against the eager GPU) and 7.1e-5 (against the CPU) over six
        # weight draws a type on an H100; a wrong value is O(1)
        assert td.relative_error(got, want) < 1e-4
        # against the CPU's integer-code products: tensor cores off, so that the prompts' products are
        # float32 too (fast mode's prompt steps take bfloat16 ones on the tensor cores); the same
        # recorded decode step
        plain = Decoder(config, weights, device="cuda", tensor_cores=False)
        got, _, _, run = steps(plain, prompts, inputs)
        ref, _, _, _ = steps(Decoder(config, weights), prompts, inputs)
        assert run.stats["graph_steps"] == STEPS
        assert td.relative_error(got, ref) < 2e-4


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_K"])
def test_quantized_batches_past_two_rows_take_the_tensor_cores(qtype):
    """Quantized weights: batches of up to QUANT_TENSOR_CORE_ROWS rows take the block kernel (float32
    sums), larger ones the bfloat16 GEMM steps on the weights' bfloat16 copies, whose logits agree with
    the kernel-by-kernel steps' float32 ones to bfloat16 rounding: random rows of K = 256 cancel about
    sqrt(K)-fold, so bfloat16's 2^-9 on x and W is a few percent of a logit's scale (Q8_0's values are
    not bfloat16 values: 9.5% at most on an H200; Q4_K's mostly are), a wrong product O(1)."""
    cfg = config_for(qtype, cuda_quant.K_LAYOUTS)
    weights, config = quant_weights(qtype, cfg), DecoderConfig.from_hf(cfg)
    with loom.deterministic(False):
        graph, eager = graph_and_eager(built(config, weights))
        for batch, bf16 in ((paged_graph.QUANT_TENSOR_CORE_ROWS, False), (3, True), (8, True)):
            prompts = np.array([np.roll(PROMPT, i) for i in range(batch)])
            inputs = fixed_inputs(4, batch, cfg["vocab_size"])
            got, _, _, run = steps(graph, prompts, inputs)
            want, _, _, _ = steps(eager, prompts, inputs)
            assert run.stats["graph_steps"] == 4
            assert [g.bf16 for g in run.graphs.values()] == [bf16]
            assert td.relative_error(got, want) < (0.2 if bf16 else 1e-4), batch


def test_one_recording_a_bucket_serves_any_rows_positions_and_tables():
    """Steps of three, two, two, one and three sequences (at positions that drift apart): the runner
    records a step per bucket (4, 2, 1) and replays the same one when the bucket comes back; the
    logits are the kernel-by-kernel steps'; a step writes its rows' slots only (and, padding rows,
    the scratch block), so a sequence left out of a step keeps its cached keys. Tensor cores off: the
    bucket of four takes the block kernel's float32 sums, as the eager steps do."""
    config = DecoderConfig.from_hf(CONFIG)
    weights = quant_weights("Q8_0", CONFIG)
    prompts = [PROMPT, PROMPT[::-1], [9, 9, 9, 9] + PROMPT[:3]]
    schedule = [(0, 1, 2), (0, 2), (0, 2), (1,), (0, 1, 2)]
    bs = 4
    out = []
    with loom.deterministic(False):
        for dec in graph_and_eager(built(config, weights, tensor_cores=False)):
            blocks, tables = tables_for(3, len(PROMPT) + len(schedule), bs)
            run = runner_for(dec, blocks, bs)
            run.run([Work(np.array(p), 0, t, True) for p, t in zip(prompts, tables)], [False] * 3)
            length, rows, first = [len(PROMPT)] * 3, [], None
            scratch = set(range(run.cache.scratch * bs, (run.cache.scratch + 1) * bs))
            for s, seqs in enumerate(schedule):
                before = host(run.cache.k)
                work = [Work(np.array([(5 * s + i) % 512]), length[i], tables[i], True) for i in seqs]
                rows.append(np.stack(run.run(work, [False] * len(seqs))))
                changed = np.flatnonzero((host(run.cache.k) != before).any(axis=(0, 2, 3)))
                written = {int(run.cache.slots(tables[i], length[i], length[i] + 1)[0]) for i in seqs}
                assert set(changed.tolist()) <= written | scratch, (s, seqs)
                for i in seqs:
                    length[i] += 1
                first = first or dict(run.graphs)
            out.append(rows)
            if dec.graphs:
                assert set(run.graphs) == {4, 2, 1} and run.graphs[4] is first[4]
                assert run.stats["graph_steps"] == len(schedule)
    for got, want in zip(*out):
        assert td.relative_error(got, want) < 1e-4


def test_long_windows_split_over_blocks_give_the_kernel_by_kernel_logits():
    """Sequences past 2 decode.SPLIT_KEYS keys, few enough that the recorded step cuts their windows
    over several blocks (decode.split_work): one sequence, then two of different lengths, against the
    kernel-by-kernel steps."""
    from loom.backend.cuda import decode

    long = {**CONFIG, "max_position_embeddings": 2048}
    config, weights = DecoderConfig.from_hf(long), quant_weights("F32", long)
    rng = np.random.default_rng(59)
    for lengths in ([1300], [1100, 700]):
        prompts = [rng.integers(0, 512, n) for n in lengths]
        inputs = fixed_inputs(4, len(lengths), 512)
        out = []
        with loom.deterministic(False):
            for dec in graph_and_eager(built(config, weights)):
                blocks, tables = tables_for(len(lengths), max(lengths) + len(inputs), 16)
                run = runner_for(dec, blocks + 1, 16)
                rows = [run.run([Work(p, 0, t, True) for p, t in zip(prompts, tables)], [False] * len(lengths))]
                for s, ids in enumerate(inputs):
                    work = [Work(np.array([tok]), n + s, t, True) for tok, n, t in zip(ids, lengths, tables)]
                    rows.append(run.run(work, [False] * len(lengths)))
                if dec.graphs:
                    graph = run.graphs[paged_graph.bucket(len(lengths))]
                    assert graph.split is not None and graph.split.splits > 1 and graph.long_graph is not None
                    assert min(lengths) > 2 * decode.SPLIT_KEYS and run.stats["graph_steps"] == len(inputs)
                out.append(np.stack([np.stack(r) for r in rows]))
        assert td.relative_error(out[0], out[1]) < 1e-5


def test_models_the_kernels_cannot_take_run_kernel_by_kernel_with_a_notice(tmp_path, loom_log):
    """head_dim 16: fast mode's attention kernels take 64, 128 or 256, so its steps run kernel by kernel with one
    notice; spec 5's deterministic attention takes any multiple of 4 up to 128, so deterministic mode records
    the same model's steps (spec 4's took 32 or more), with the CPU's bits."""
    td.save(td.build("llama", layers=1), tmp_path)              # head_dim 16: not a multiple of 64 (or 32)
    dec = loom.llm.load(tmp_path, device="cuda").decoder
    inputs = fixed_inputs(3, 1, td.VOCAB)
    with loom.deterministic(False):
        got, _, _, run = steps(dec, [PROMPT], inputs)
    assert run.graphs_off and not run.graphs and run.stats["graph_steps"] == 0 and np.isfinite(got).all()
    notices = [m for m in loom_log() if "run kernel by kernel, not as recorded CUDA graphs" in m]
    assert len(notices) == 1 and "head_dim 16" in notices[0]
    with loom.deterministic(True):
        assert paged_graph.unsupported(dec, 1, exact=True) is None
        got, _, _, run = steps(dec, [PROMPT], inputs)
        want, _, _, _ = steps(loom.llm.load(tmp_path).decoder, [PROMPT], inputs)
    assert not run.graphs_off and run.stats["graph_steps"] == 3
    same_bits(got, want, "recorded deterministic steps at head_dim 16 vs the CPU")


def test_generate_ids_replays_each_modes_own_recorded_step(monkeypatch):
    """CausalLM.generate_ids runs on the model's own engine, one per mode, each recording its decode
    step in its mode; deterministic mode's greedy tokens (chosen on the device) are the tokens of
    the kernel-by-kernel steps."""
    config = DecoderConfig.from_hf(CONFIG)
    weights = quant_weights("Q4_0", CONFIG)
    made = []
    real = paged_graph.PagedDecodeGraph
    monkeypatch.setattr(paged_graph, "PagedDecodeGraph", lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    model, eager = (CausalLM(Decoder(config, weights, device="cuda"), None, CONFIG) for _ in range(2))
    eager.decoder.graphs = False
    for deterministic in (False, True):
        with loom.deterministic(deterministic):
            got = list(model.generate_ids(PROMPT, max_tokens=8, stop_ids=()))
            want = list(eager.generate_ids(PROMPT, max_tokens=8, stop_ids=()))
        assert len(got) == len(want) == 8
        assert made and all(g.exact == deterministic for g in made), deterministic
        made.clear()
    assert got == want


def test_requests_past_the_cache_or_the_context_are_refused_before_any_step():
    config = DecoderConfig.from_hf(CONFIG)
    model = CausalLM(Decoder(config, quant_weights("Q4_1", CONFIG), device="cuda"), None, CONFIG)
    with loom.deterministic(False):
        engine = BatchEngine(model, max_batch=2, block_size=8, cache_tokens=16)
        with pytest.raises(ConfigError, match="the paged cache holds 16"):
            engine.generate([Request(PROMPT, max_tokens=10, stop_ids=())])
        assert engine.stats["steps"] == 0 and not engine.steps.graphs
        with pytest.raises(ConfigError, match="exceed the model's context length 64"):
            model.generate_ids(PROMPT, max_tokens=58, stop_ids=())
        # what fits runs to the cache's last position, and to the context's (the graph's whole table)
        assert len(engine.generate([Request(PROMPT, max_tokens=9, stop_ids=())])[0].tokens) == 9
        assert engine.stats["graph_steps"] > 0
        assert len(list(model.generate_ids(PROMPT, max_tokens=57, stop_ids=()))) == 57


@pytest.mark.parametrize("context", [7, 150])          # 150 keys: past one pass of the attention's key groups
def test_overlapped_launches_give_the_plain_launches_bits(context):
    """The graph's kernels overlap their predecessors (loom/backend/cuda/launch.py); recorded with plain
    launches instead, the same kernels must give the same logits bit for bit, step after step."""
    config = DecoderConfig.from_hf({**CONFIG, "max_position_embeddings": 256})
    c = config
    dec = Decoder(config, quant_weights("Q4_1", CONFIG), device="cuda")
    prompt = (np.arange(context) * 37 + 11) % CONFIG["vocab_size"]
    blocks, (table,) = tables_for(1, context + 8, 16)
    cache = PagedKVCache(dec.xp, c.layers, c.kv_heads, c.head_dim, blocks, 16)
    logits = []
    with loom.deterministic(False):
        forward(dec, cache, [Work(prompt, 0, table, True)])
        k, v = cache.k.copy(), cache.v.copy()
        for overlap in (False, True):
            cache.k[...], cache.v[...] = k, v                   # both from the same prompt's keys
            graph = paged_graph.PagedDecodeGraph(dec, cache, 1, False, overlap=overlap)
            logits.append(np.stack([host(graph.step([t], [context + s], [table]))
                                    for s, t in enumerate((3, 9, 27, 81))]))
    np.testing.assert_array_equal(logits[1], logits[0])

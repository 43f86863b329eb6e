"""The recorded paged decode step in deterministic mode (loom/llm/paged_graph.py with
backend/cuda/quant_exact.py and decode_exact.py) as the batch engine's device steps run it: its logits
and cached keys and values equal the kernel-by-kernel steps' (Decoder.graphs False) and the CPU's bit
for bit, for every architecture option and stored weight type, whatever the batch and its order;
positions past the rounded scheme's keys record too (attention's p v in the slice scheme), and past
the slice scheme's one chunk (its chunks added in order), in each of the attention's forms; generate_ids and
CausalLM.logits on the GPU give the CPU's tokens and bits; the products equal the exact GEMM's bits
where the certification must be settled and where inf and NaN meet."""

import numpy as np
import pytest

import loom
from loom.kernels import exact
from loom.kernels.exact import dispatch as exact_dispatch
from loom.kernels.exact import rounded as exact_rounded
from loom.llm import paged_graph
from loom.llm.decoder import Decoder
from loom.llm.decoder_config import DecoderConfig
from loom.llm.paged_forward import Work, sequence_logits

from .cpu_gpu import host, same_bits
from .paged_steps import (
    CONFIG,
    PROMPT,
    built,
    config_for,
    fixed_inputs,
    graph_and_eager,
    quant_weights,
    runner_for,
    saved,
    steps,
    tables_for,
)

cupy = pytest.importorskip("cupy")
from loom.backend.cuda import quant as cuda_quant  # noqa: E402  (imports cupy)
from loom.backend.cuda import quant_exact as cuda_quant_exact  # noqa: E402

pytestmark = pytest.mark.gpu

STEPS = 6


def _check(graph, eager, cpu, prompts):
    """Prompts then STEPS decode steps: the recorded steps' logits, keys and values are the
    kernel-by-kernel steps' and the CPU's bits. Returns the recorded steps' runner."""
    inputs = fixed_inputs(STEPS, len(prompts), graph.config.vocab_size)
    got, got_k, got_v, run = steps(graph, prompts, inputs)
    assert run.stats["graph_steps"] == STEPS and run.graphs and all(g.exact for g in run.graphs.values())
    want, want_k, want_v, eager_run = steps(eager, prompts, inputs)
    assert eager_run.stats["graph_steps"] == 0 and not eager_run.graphs
    same_bits(got, want, "recorded steps vs kernel by kernel")
    same_bits(got_k, want_k, "cached keys")
    same_bits(got_v, want_v, "cached values")
    ref, ref_k, _, _ = steps(cpu, prompts, inputs)
    same_bits(got, ref, "recorded steps vs CPU")
    same_bits(got_k, ref_k, "cached keys vs CPU")
    return run


@pytest.mark.parametrize("kind, extra", [
    pytest.param("llama", {}, marks=pytest.mark.smoke), ("llama", {"tied": True}), ("qwen2", {}), ("qwen3", {"head_dim": 128}),
    ("mistral", {"sliding_window": 4}), ("qwen3", {"head_dim": 32, "tied": True})])
def test_exact_recorded_steps_give_the_kernel_by_kernel_and_cpu_bits(kind, extra, tmp_path):
    saved(kind, extra, tmp_path)
    with loom.deterministic(True):
        gpu, cpu = loom.llm.load(tmp_path, device="cuda"), loom.llm.load(tmp_path)
        eager = loom.llm.load(tmp_path, device="cuda").decoder
        eager.graphs = False
        prompts = np.array([PROMPT, [(t * 5 + 1) % 97 for t in PROMPT], PROMPT[::-1]])
        _check(gpu.decoder, eager, cpu.decoder, prompts)
        # the model's own engine (generate_ids: greedy tokens chosen on the device) and CausalLM.logits
        assert list(gpu.generate_ids(PROMPT, max_tokens=STEPS, stop_ids=())) == \
            list(cpu.generate_ids(PROMPT, max_tokens=STEPS, stop_ids=()))
        ids = np.array(PROMPT + [11, 250, 3, 42])
        same_bits(gpu.logits(ids), cpu.logits(ids), "CausalLM.logits")
        pieces = [len(PROMPT)] + [1] * 4                                  # a prompt, then one token a step
        same_bits(sequence_logits(gpu.decoder, ids, pieces), sequence_logits(cpu.decoder, ids, pieces),
              "sequence_logits in decode steps")


@pytest.mark.parametrize("kind, extra, held", [("llama", {}, True), ("llama", {}, False), ("qwen3", {"head_dim": 128}, True),
                                               ("mistral", {"sliding_window": 4}, False),
                                               ("qwen2", {"num_attention_heads": 8, "num_key_value_heads": 1}, False)])
def test_grouped_attention_gives_the_cpu_bits(kind, extra, held, tmp_path, monkeypatch):
    """The attention kernel with a block per key/value head (decode_exact_group), taken here at three sequences,
    its probabilities in shared memory (held) or in the graph's workspace: the recorded steps' logits and caches
    are the kernel-by-kernel steps' (another attention path) and the CPU's bits."""
    from loom.backend.cuda import decode_exact
    from loom.llm import decoder
    monkeypatch.setattr(decoder, "INTEGER_ATTENTION", False)      # (spec 4's kernel, kept where this is off)
    monkeypatch.setattr(decode_exact, "GROUP_FEWEST", 1 << 20)
    if not held:
        monkeypatch.setattr(decode_exact, "SHARED_MAX", 0)
    saved(kind, extra, tmp_path)
    with loom.deterministic(True):
        gpu, cpu = loom.llm.load(tmp_path, device="cuda"), loom.llm.load(tmp_path)
        eager = loom.llm.load(tmp_path, device="cuda").decoder
        eager.graphs = False
        c = gpu.decoder.config
        assert decode_exact._grouped(3, c.heads, c.kv_heads, c.head_dim, 64)[4] == held
        prompts = np.array([PROMPT, [(t * 5 + 1) % 97 for t in PROMPT], PROMPT[::-1]])
        _check(gpu.decoder, eager, cpu.decoder, prompts)


def test_an_engines_recordings_share_one_grouped_workspace(monkeypatch):
    """record_decode_steps records the largest bucket first; the smaller buckets' recordings take the start of
    its grouped attention workspace (they replay one after another), and their steps keep the CPU's bits."""
    from loom.backend.cuda import decode_exact
    from loom.llm import decoder
    monkeypatch.setattr(decoder, "INTEGER_ATTENTION", False)      # (spec 4's kernel: spec 5's keeps no workspace)
    monkeypatch.setattr(decode_exact, "GROUP_FEWEST", 1 << 20)
    monkeypatch.setattr(decode_exact, "SHARED_MAX", 0)
    config = DecoderConfig.from_hf(CONFIG)
    weights = quant_weights("Q8_0", CONFIG)
    with loom.deterministic(True):
        dec = built(config, weights)()
        run = runner_for(dec, 64)
        run.record_decode_steps(16)
        largest = run.graphs[16].p_work
        assert largest is not None and run.shared["p_work"] is largest
        for key, graph in run.graphs.items():
            assert graph.p_work.data.ptr == largest.data.ptr and graph.p_work.size <= largest.size, key
        prompts = np.array([PROMPT, PROMPT[::-1], [(t * 3 + 2) % 97 for t in PROMPT]])
        inputs = fixed_inputs(STEPS, len(prompts), config.vocab_size)
        got, _, _, _ = steps(dec, prompts, inputs, runner=run)
        ref, _, _, _ = steps(Decoder(config, weights), prompts, inputs)
        same_bits(got, ref, "recorded steps on the shared workspace vs CPU")


@pytest.mark.parametrize("qtype", cuda_quant.TYPES)
def test_exact_recorded_steps_with_stored_weight_types(qtype):
    cfg = config_for(qtype, cuda_quant.K_LAYOUTS)
    weights, config = quant_weights(qtype, cfg), DecoderConfig.from_hf(cfg)
    with loom.deterministic(True):
        graph, eager = graph_and_eager(built(config, weights))
        _check(graph, eager, Decoder(config, weights), np.array([PROMPT, PROMPT[::-1]]))


@pytest.mark.parametrize("qtype", ["Q4_K", "Q8_0", "Q4_1", "F32"])
@pytest.mark.parametrize("rows", [1, 3])
def test_exact_recorded_steps_on_the_weights_planes(qtype, rows, monkeypatch):
    """Steps of one and three sequences whose products read the weights' int8 planes (quant_fixed_planes' gemv,
    GEMV_PLANES_MIN_K lowered to these small shapes): the kernel-by-kernel steps' and the CPU's bits."""
    from loom.backend.cuda import quant_fixed
    monkeypatch.setattr(quant_fixed, "GEMV_PLANES_MIN_K", 0)
    cfg = config_for(qtype, cuda_quant.K_LAYOUTS)
    weights, config = quant_weights(qtype, cfg, np.random.default_rng(rows)), DecoderConfig.from_hf(cfg)
    prompts = np.array([PROMPT, PROMPT[::-1], [(t * 7 + 3) % 97 for t in PROMPT]][:rows])
    with loom.deterministic(True):
        graph, eager = graph_and_eager(built(config, weights))
        run = _check(graph, eager, Decoder(config, weights), prompts)
        assert all(g.fixed_planes is not None for g in run.graphs.values())


# products past the rounded scheme's K (quant_slices in the recorded step): the down projection alone, and
# every product (the norms in the slicing kernel, the lm_head untied)
LONG_DOWN = {**CONFIG, "intermediate_size": 2304}
ALL_LONG = {**CONFIG, "hidden_size": 2304, "num_attention_heads": 36, "num_key_value_heads": 4,
            "intermediate_size": 2560, "tie_word_embeddings": False}


@pytest.mark.parametrize("cfg, qtype", [(LONG_DOWN, "Q4_1"), (ALL_LONG, "Q8_0"), (ALL_LONG, "BF16")])
def test_exact_recorded_steps_with_products_past_the_rounded_scheme(cfg, qtype):
    weights, config = quant_weights(qtype, cfg, np.random.default_rng(len(qtype))), DecoderConfig.from_hf(cfg)
    assert exact_dispatch.matmul_scheme(np.float32, config.intermediate) == exact_dispatch.SLICES_2X1
    with loom.deterministic(True):
        graph, eager = graph_and_eager(built(config, weights))
        assert paged_graph.unsupported(graph, 16, exact=True) is None
        _check(graph, eager, Decoder(config, weights), np.array([PROMPT, PROMPT[::-1], PROMPT[2:] + PROMPT[:2]]))


def test_a_sequence_has_the_same_bits_in_any_batch():
    """Alone (the bucket of one), in a batch of four and at another row of it (other block tables too)."""
    weights = quant_weights("Q4_1", CONFIG)
    prompts = np.array([PROMPT, [(t * 3 + 2) % 500 for t in PROMPT], PROMPT[::-1], [9] * len(PROMPT)])
    inputs = fixed_inputs(STEPS, 4, CONFIG["vocab_size"])
    with loom.deterministic(True):
        dec = Decoder(DecoderConfig.from_hf(CONFIG), weights, device="cuda")
        together, _, _, run = steps(dec, prompts, inputs)
        assert list(run.graphs) == [4]
        for i in (0, 2, 3):
            alone, _, _, _ = steps(dec, prompts[i:i + 1], inputs[:, i:i + 1])
            same_bits(together[:, i], alone[:, 0], f"sequence {i} in a batch of 4 vs alone")
        order = [3, 1, 0, 2]
        shuffled, _, _, _ = steps(dec, prompts[order], inputs[:, order])
        same_bits(shuffled[:, 2], together[:, 0], "sequence 0 at row 2")


@pytest.mark.parametrize("cfg, qtype", [pytest.param(CONFIG, "Q4_1", marks=pytest.mark.smoke), (CONFIG, "BF16"),
                                        (LONG_DOWN, "Q4_K"), (ALL_LONG, "Q8_0")])
@pytest.mark.parametrize("planes", [False, True, "no memory"])
def test_batches_past_the_one_row_kernel_give_the_same_bits(cfg, qtype, planes, monkeypatch, loom_log):
    """A batch of 21 sequences (bucket 24: padding rows too) replays products on the int8 tensor cores
    (quant_fixed.rows_product, the weight rule), or on the weights' int8 planes (cuBLAS's GEMM, PLANES_ROWS
    lowered to the bucket), or, where making the planes runs out of device memory, rows_product again
    (said once): its logits and cached keys are the kernel-by-kernel steps' and the CPU's, and each
    sequence's are those it has alone (bucket 1: the one-row kernel)."""
    from loom.backend.cuda import quant_fixed
    monkeypatch.setattr(quant_fixed, "PLANES_ROWS", 25 if planes is False else 24)
    if planes == "no memory":
        def short(*args):
            raise cupy.cuda.memory.OutOfMemoryError(1 << 40, 0)
        monkeypatch.setattr(paged_graph, "_fixed_planes", short)
    weights, config = quant_weights(qtype, cfg, np.random.default_rng(21)), DecoderConfig.from_hf(cfg)
    n = 21
    prompts = np.array([[(t * (i + 2) + i) % 500 for t in PROMPT] for i in range(n)])
    inputs = fixed_inputs(STEPS, n, cfg["vocab_size"])
    with loom.deterministic(True):
        graph, eager = graph_and_eager(built(config, weights))
        together, _, _, run = steps(graph, prompts, inputs)
        assert list(run.graphs) == [24] and run.graphs[24].fixed_tables and run.stats["graph_steps"] == STEPS
        assert (run.graphs[24].fixed_planes is not None) == (planes is True)
        said = any("no device memory for the weights' int8 planes" in m for m in loom_log())
        assert said == (planes == "no memory")
        want, want_k, _, _ = steps(eager, prompts, inputs)
        same_bits(together, want, "batched steps vs kernel by kernel")
        ref, _, _, _ = steps(Decoder(config, weights), prompts, inputs)
        same_bits(together, ref, "batched steps vs CPU")
        for i in (0, 13, 20):
            alone, _, _, alone_run = steps(graph, prompts[i:i + 1], inputs[:, i:i + 1])
            assert list(alone_run.graphs) == [1]
            same_bits(together[:, i], alone[:, 0], f"sequence {i} in a batch of {n} vs alone")


CHUNK = 1 << exact_dispatch.CHUNK_BITS


def _attention_form(form, monkeypatch):
    """Make the recorded steps' attention take `form` for one sequence of CONFIG's 4 heads over 2 key/value
    heads: "split" (its default past 2 SPLIT_KEYS keys: the window cut over several blocks), "one block" (a
    block a query head), "grouped" (a block a key/value head) or "past split" (the split form's longest
    window made shorter than these steps', so that they take the first recording's one-block form), in the
    attention kernel the recorded step takes (spec 5's int_decode, or spec 4's decode_exact where
    decoder.INTEGER_ATTENTION is off). Returns that module."""
    from loom.backend.cuda import decode_exact, int_decode
    attention = int_decode if paged_graph._integer_attention() else decode_exact
    if form in ("one block", "grouped"):
        monkeypatch.setattr(attention, "MAX_SPLITS", 1)
    if form == "grouped":
        if paged_graph._integer_attention():
            monkeypatch.setattr(attention, "HEADS_A_BLOCK", CONFIG["num_attention_heads"] // CONFIG["num_key_value_heads"])
        else:
            monkeypatch.setattr(attention, "GROUP_FEWEST", 0)
    if form == "past split":
        monkeypatch.setattr(attention, "split_max_keys", lambda splits: CHUNK - 8)
    return attention


@pytest.mark.parametrize("limit, threads, form, window", [
    (exact_dispatch.ROUNDED_MAX_K, None, "split", None), (exact_dispatch.ROUNDED_MAX_K, 256, "split", None),
    (exact_dispatch.ROUNDED_MAX_K, 128, "split", None), (CHUNK, None, "split", None), (CHUNK, None, "one block", None),
    (CHUNK, None, "grouped", None), (CHUNK, None, "past split", None), (2 * CHUNK + 1000, None, "split", None),
    (2 * CHUNK + 1000, None, "one block", None), (2 * CHUNK + 1000, None, "one block", CHUNK + 3001)])
def test_positions_past_the_rounded_scheme_and_the_chunk_record_with_the_same_bits(limit, threads, form, window,
                                                                                   monkeypatch):
    """The recorded step's attention takes p v over more than ROUNDED_MAX_K keys in the slice scheme, and past
    2^CHUNK_BITS keys in chunks added in order, as the array code's product does. On either side of both
    limits the steps record (none runs kernel by kernel) and the logits are the kernel-by-kernel steps' bits
    and the CPU's, with the attention kernel's blocks of FEW_THREADS (this step's few blocks) and of 256 and
    128 threads (`threads`, FEW_THREADS forced), in each of its forms (_attention_form; past HELD_KEYS the
    one-block and grouped forms keep their probabilities in device memory, in a third recording made at the
    first step past 2^14 keys), over three chunks, and with a sliding window that starts inside a chunk
    (`window`: a mistral shape). The cache's positions between
    the prompt and the steps hold random keys and values of spread magnitudes (a few of them zero, some
    float32 subnormals), the same on every device."""
    from loom.backend.cuda import decode_exact
    attention = _attention_form(form, monkeypatch)
    if threads is not None:                     # (a block's threads: spec 5's THREADS, spec 4's FEW_THREADS)
        monkeypatch.setattr(attention, "THREADS" if attention is not decode_exact else "FEW_THREADS", threads)
    extra = {} if window is None else {"model_type": "mistral", "sliding_window": window}
    config = DecoderConfig.from_hf({**CONFIG, "max_position_embeddings": limit + 64, **extra})
    weights = quant_weights("Q8_0", CONFIG)
    out = []
    with loom.deterministic(True):
        for dec in graph_and_eager(built(config, weights)) + (Decoder(config, weights),):
            blocks, (table,) = tables_for(1, limit + 2, 16)
            run = runner_for(dec, blocks, 16)
            run.run([Work(np.array(PROMPT), 0, table, True)], [False])
            rng = np.random.default_rng(limit)
            slots = run.cache.slots(table, len(PROMPT), limit - 2)
            for cache in (run.cache.k, run.cache.v):
                for layer in cache:
                    shape = (len(slots),) + layer.shape[1:]
                    x = rng.standard_normal(shape) * np.exp2(rng.integers(-12, 3, shape))
                    x[rng.random(shape) < 0.01] = 0
                    x[rng.random(shape) < 0.01] *= 2.0 ** -140          # float32 subnormals
                    x[..., 0, 1] = 0                                    # a head's column of zeros
                    layer[dec.backend.asarray(slots)] = dec.backend.asarray(x.astype(np.float32))
            rows, counts = [], []
            for pos in range(limit - 2, limit + 2):
                rows.append(host(run.run([Work(np.array([pos % 500]), pos, table, True)], [False])[0]))
                counts.append(run.stats["graph_steps"])
            out.append(np.stack(rows))
            if dec.graphs and dec.device == "cuda":
                graph = run.graphs[1]
                split = form in ("split", "past split")
                assert (graph.split is not None and graph.split.splits > 1) == split, form
                assert (graph.long_graph is not None) == (form == "split"), form
                far = limit > exact_dispatch.ROUNDED_MAX_K and form != "split"      # (windows past 2^14 keys)
                held = far and attention is decode_exact          # (spec 5's kernel keeps no probabilities)
                assert (graph.far_graph is not None) == far and (graph.far_p_work is not None) == held, form
            assert counts == ([1, 2, 3, 4] if dec.graphs and dec.device == "cuda" else [0, 0, 0, 0])
    same_bits(out[0], out[1], f"recorded steps vs kernel by kernel ({form})")
    same_bits(out[0], out[2], f"recorded steps vs the CPU ({form})")


def _gemv_case(rng, rows, cols, m):
    """x [m, cols] and W [rows, cols] float32 whose products mostly cancel (W's odd columns are its even
    ones negated and nudged, x's odd columns equal its even ones), so many entries need settling."""
    x = rng.standard_normal((m, cols)).astype(np.float32)
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    x[:, 1::2] = x[:, 0::2]
    nudge = (1 + rng.integers(-3, 4, (rows, cols // 2)) * 2.0 ** -23).astype(np.float32)
    w[:, 1::2] = -w[:, 0::2] * nudge
    w[: rows // 4] = rng.standard_normal((rows // 4, cols)).astype(np.float32)   # and some plain rows
    return x, w


@pytest.mark.parametrize("m, cols, swiglu", [(1, 576, False), (3, 1536, False), (2, 256, False), (1, 512, True),
                                             (9, 1024, False), (5, 2048, True)])
def test_exact_gemv_matches_the_exact_gemm_where_it_must_settle(m, cols, swiglu):
    # (x staged in shared memory, and not: m cols past quant_exact.STAGE_FLOATS)
    rng = np.random.default_rng(cols + m)
    rows = 96
    x, w = _gemv_case(rng, 2 * rows if swiglu else rows, cols, m)
    x[0, 5] = np.inf if m > 1 else x[0, 5]
    w[7, 9] = np.nan
    w[11, 3] = -np.inf
    bias = rng.standard_normal(w.shape[0]).astype(np.float32)
    residual = rng.standard_normal((m, rows)).astype(np.float32)
    with loom.deterministic(True):
        y = exact.matmul(x, w.T) + bias
        want = (loom.kernels.fused.activation("silu", y[:, :rows]) * y[:, rows:]) if swiglu else residual + y
        out = cupy.empty((m, rows), dtype=np.float32)
        assert cuda_quant_exact.unsupported("F32", m, cols) is None
        cuda_quant_exact.gemv(cupy.asarray(w).view(np.uint8), "F32", cupy.asarray(x), out,
                              exact_rounded.error_factor(cols), bias=cupy.asarray(bias),
                              residual=None if swiglu else cupy.asarray(residual), swiglu=swiglu)
        same_bits(host(out), want, "exact gemv")
    # the case does need settling: the float64 sum's error bound leaves many roundings open
    s = x.astype(np.float64) @ w.T.astype(np.float64)
    e = (np.abs(x).astype(np.float64) @ np.abs(w).T.astype(np.float64)) * exact_rounded.error_factor(cols) + \
        np.abs(s) * 2.0 ** -52
    with np.errstate(invalid="ignore", over="ignore"):
        open_ = (s - e).astype(np.float32).view(np.uint32) != (s + e).astype(np.float32).view(np.uint32)
    assert (open_ & np.isfinite(e)).sum() > 10


@pytest.mark.parametrize("cols", [576, 3000])        # a row held in registers, and a longer one
def test_exact_rms_norm_matches_fused(cols):
    rng = np.random.default_rng(cols)
    x = (rng.standard_normal((5, cols)) * np.array([[1.0], [1e-20], [3e18], [1.0], [1.0]])).astype(np.float32)
    x[3, 7], x[4, 1], x[4, 2] = np.nan, np.inf, -np.inf
    weight = (1 + 0.1 * rng.standard_normal(cols)).astype(np.float32)
    out = cupy.empty_like(cupy.asarray(x))
    cuda_quant_exact.rms_norm(cupy.asarray(x), cupy.asarray(weight), out, 1e-5)
    with loom.deterministic(True):
        same_bits(host(out), loom.kernels.fused.rms_norm(x, weight, 1e-5)[0], "rms_norm")


@pytest.mark.parametrize("m, swiglu", [(1, False), (3, True), (12, False)])
def test_exact_gemv_with_the_norm_in_its_prologue(m, swiglu):
    # gemv(norm=w) is the product of rms_norm(x, w): each block computes the norm as it stages x
    rng = np.random.default_rng(m)
    cols, rows = 576, 160
    x = (rng.standard_normal((m, cols)) * 3.0).astype(np.float32)
    x[0, :4] = [1e-30, 0.0, 2.5e7, -1e-38]
    weight = (1 + 0.1 * rng.standard_normal(cols)).astype(np.float32)
    w = rng.standard_normal((2 * rows if swiglu else rows, cols)).astype(np.float32)
    assert cuda_quant_exact.stages(m, cols)
    out = cupy.empty((m, rows), dtype=np.float32)
    cuda_quant_exact.gemv(cupy.asarray(w).view(np.uint8), "F32", cupy.asarray(x), out, exact_rounded.error_factor(cols),
                          swiglu=swiglu, norm=cupy.asarray(weight), eps=1e-6)
    with loom.deterministic(True):
        y = exact.matmul(loom.kernels.fused.rms_norm(x, weight, 1e-6)[0], w.T)
        want = loom.kernels.fused.activation("silu", y[:, :rows]) * y[:, rows:] if swiglu else y
        same_bits(host(out), want, "gemv with the norm")


def test_the_attention_kernels_follow_the_dispatch_table_and_say_what_they_refuse():
    """decode_exact's scheme limits are the dispatch table's (the kernel's CUDA C writes them as numbers):
    the rounded scheme up to ROUNDED_MAX_K keys, one chunk of the slice scheme up to 2^CHUNK_BITS (chunks of
    it past that), whose bits (narrow_bits) the kernel works out as min(24, 53 - ceil(log2 n) - 12) and the
    rest; head sizes that do not split its blocks evenly are refused with the reason, caches of any length
    taken."""
    from loom.backend.cuda import decode_exact
    assert decode_exact.ROUNDED_KEYS == exact_dispatch.ROUNDED_MAX_K
    assert decode_exact.CHUNK_KEYS == 1 << exact_dispatch.CHUNK_BITS
    for n in (2049, 3000, 4096, 4097, 8191, 16384):
        log2k = (n - 1).bit_length()
        bits_b = min(24, 53 - log2k - 12)
        assert exact.narrow_bits(n) == (53 - log2k - bits_b, bits_b)
    for d in (32, 64, 128):
        assert decode_exact.unsupported(d, 1 << 20) is None        # (past HELD_KEYS: probabilities in device memory)
    # the split form's parts past CHUNK_KEYS keys: powers of two, at most `splits` of them, each inside one chunk
    for n, splits in ((CHUNK + 1, 16), (CHUNK + 2, 9), (3 * CHUNK - 5, 4), (decode_exact.split_max_keys(3), 3)):
        part = decode_exact.split_part_keys(n, splits)
        assert part & (part - 1) == 0 and -(-n // part) <= splits and part <= CHUNK, (n, splits)
    for d in (48, 96, 160, 192):
        assert "head_dim" in decode_exact.unsupported(d, 64)


def test_unsupported_products_say_why():
    assert "IQ2_XS" in cuda_quant_exact.unsupported("IQ2_XS", 1, 256)
    assert "slices" in paged_graph._not_rounded(4096)            # the kernels compute the rounded scheme
    assert paged_graph._not_rounded(2048) is None
    assert "17 rows" in cuda_quant_exact.unsupported("Q8_0", 17, 256)
    assert cuda_quant_exact.unsupported("Q8_0", 16, 2048) is None

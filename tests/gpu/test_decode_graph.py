"""The recorded decode step (loom/llm/decode_graph.py) in fast mode (deterministic mode's:
test_decode_graph_exact.py): its logits agree with the array-at-a-time
path and the CPU to float32 rounding for every architecture option it covers (biases, qk norm, sliding
windows, tied embeddings, head_dim 64 and 128), for every weight type of the block kernels, for batches of
sequences, and across caches (a new cache records a new graph)."""
import os
import sys

import numpy as np
import pytest
from quant_rows import random_rows

import loom
from loom.kernels.quant.block import BlockQuantized
from loom.llm import sequence
from loom.llm.decode_graph import DecodeGraph
from loom.llm.decoder import Decoder
from loom.llm.decoder_config import DecoderConfig, expected_tensors

from .cpu_gpu import host

cupy = pytest.importorskip("cupy")
from loom.backend.cuda import quant as cuda_quant  # noqa: E402  (imports cupy)

pytestmark = pytest.mark.gpu
sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "llm"))
import tiny_decoders as td  # noqa: E402

RNG = np.random.default_rng(20261121)
PROMPT = [5, 17, 200, 3, 99, 41, 7]
STEPS = 9


def _both(dec_gpu, dec_ref, prompt, steps, batch=1):
    """Logits of `steps` decode steps after `prompt`, by dec_gpu's graph and by dec_ref's array code."""
    ids = np.array([prompt] * batch) + np.arange(batch)[:, None]
    out = []
    for dec in (dec_gpu, dec_ref):
        cache = dec.new_cache(len(prompt) + steps + 1, batch=batch)
        logits = host(sequence.forward(dec, ids, cache, last_only=True))
        rows, toks = [], logits[:, -1].argmax(-1)
        for _ in range(steps):
            logits = host(sequence.forward(dec, toks[:, None], cache))
            rows.append(logits[:, 0])
            toks = (toks * 7 + 3) % logits.shape[-1]          # fixed inputs: both paths see the same ids
        out.append(np.stack(rows))
    return out


def _graph_and_eager(make):
    """Two decoders from make(): one that replays recorded decode steps, one run kernel by kernel."""
    graph, eager = make(), make()
    eager.graphs = False
    return graph, eager


def loaded(folder):
    return lambda: loom.llm.load(folder, device="cuda").decoder


def saved(kind, extra, folder):
    """A 2-layer tiny `kind` decoder (extra: its config keys, "tied" for tied embeddings) saved in folder."""
    extra = dict(extra)
    tied = extra.pop("tied", False)
    td.save(td.build(kind, layers=2, tied=tied, hidden_size=256, intermediate_size=192, **extra), folder)


def built(config, weights):
    return lambda: Decoder(config, weights, device="cuda")


@pytest.mark.parametrize("kind, extra", [
    pytest.param("llama", {}, marks=pytest.mark.smoke), ("llama", {"tied": True}), ("qwen2", {}), ("qwen3", {"head_dim": 128}),
    ("mistral", {"sliding_window": 4}), ("qwen3", {"head_dim": 64, "tied": True})])
def test_graph_decode_matches_the_array_path(kind, extra, tmp_path):
    saved(kind, extra, tmp_path)
    with loom.deterministic(False):
        graph, eager = _graph_and_eager(loaded(tmp_path))
        got, want = _both(graph, eager, PROMPT, STEPS)
        assert isinstance(sequence.recorded(graph).last, DecodeGraph) and sequence.recorded(eager).last is None
        assert td.relative_error(got, want) < 1e-5
        cpu = loom.llm.load(tmp_path).decoder
        got2, ref = _both(graph, cpu, PROMPT, STEPS, batch=3)
        assert td.relative_error(got2, ref) < 1e-5


def test_graph_follows_hf_logits(tmp_path):
    """Independent reference: transformers' logits for the prompt plus the decoded tokens."""
    model = td.build("llama", layers=2, hidden_size=256, intermediate_size=192)
    td.save(model, tmp_path)
    with loom.deterministic(False):
        dec = loom.llm.load(tmp_path, device="cuda").decoder
        cache = dec.new_cache(32)
        ids = list(PROMPT)
        sequence.forward(dec, np.array([ids]), cache)
        for tok in (11, 250, 3, 42):
            logits = host(sequence.forward(dec, np.array([[tok]]), cache))[0, 0]
            ids.append(tok)
            assert td.relative_error(logits, td.hf_logits(model, ids)[-1]) < 1e-5
        assert isinstance(sequence.recorded(dec).last, DecodeGraph)


def _quant_weights(qtype, config, rng=RNG):
    """Random weights of `qtype` with small finite scales (random bytes would give inf/NaN scales); from
    `rng` (the module's, unless another file passes its own and leaves this file's sequence alone)."""
    required, _ = expected_tensors(DecoderConfig.from_hf(config))
    out = {}
    for name, shape in required.items():
        if len(shape) == 1:
            out[name] = (1 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        elif qtype == "F32":
            out[name] = (rng.standard_normal(shape) * 0.05).astype(np.float32)
        else:
            out[name] = BlockQuantized(random_rows(qtype, *shape, rng, scale=0.01, plain=0.05), qtype, shape)
    return out


def config_for(qtype):
    """CONFIG, with widths of whole 256-value super-blocks for the K-quants."""
    return {**CONFIG, "intermediate_size": 512} if qtype in cuda_quant.K_LAYOUTS else CONFIG


CONFIG = {"model_type": "llama", "hidden_size": 256, "intermediate_size": 320, "num_hidden_layers": 2,
          "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512, "rope_theta": 10000.0,
          "rms_norm_eps": 1e-5, "tie_word_embeddings": True, "max_position_embeddings": 64}


@pytest.mark.parametrize("qtype", cuda_quant.TYPES)
def test_graph_decode_with_stored_weight_types(qtype):
    weights = _quant_weights(qtype, config_for(qtype))
    config = DecoderConfig.from_hf(config_for(qtype))
    with loom.deterministic(False):
        graph, eager = _graph_and_eager(built(config, weights))
        got, want = _both(graph, eager, PROMPT, STEPS, batch=2)
        assert isinstance(sequence.recorded(graph).last, DecodeGraph)
        # sums in other orders: up to 1.9e-5 (against the eager GPU) and 7.1e-5 (against the CPU) over six
        # weight draws a type on an H100; a wrong value is O(1)
        assert td.relative_error(got, want) < 1e-4
        got, ref = _both(graph, Decoder(config, weights), PROMPT, STEPS)       # the CPU's integer-code products
        assert td.relative_error(got, ref) < 2e-4


def test_a_cache_of_a_recorded_shape_reuses_its_graph_and_the_previous_cache_keeps_its_positions():
    weights = _quant_weights("Q8_0", CONFIG)
    with loom.deterministic(False):
        dec = Decoder(DecoderConfig.from_hf(CONFIG), weights, device="cuda")
        first = _both(dec, dec, PROMPT, 4)                    # two caches, one after the other
        assert td.relative_error(first[0], first[1]) < 1e-6   # same inputs, same model: same logits
        c1 = dec.new_cache(16)
        sequence.forward(dec, np.array([PROMPT]), c1)
        sequence.forward(dec, np.array([[1]]), c1)
        g1 = sequence.recorded(dec).last
        assert g1.cache is c1
        c2 = dec.new_cache(16)
        sequence.forward(dec, np.array([PROMPT]), c2)
        sequence.forward(dec, np.array([[1]]), c2)
        assert sequence.recorded(dec).last is g1 and g1.cache is c2 and c1.k is not c2.k      # recorded once for the shape
        n = len(PROMPT) + 1
        assert np.array_equal(host(c1.k[:, :, :, :n]), host(c2.k[:, :, :, :n]))
        same = [host(sequence.forward(dec, np.array([[2]]), c)) for c in (c1, c2)]    # c1 moves back in, then c2
        assert np.array_equal(same[0], same[1]) and g1.cache is c2
        c3 = dec.new_cache(24)                                # another shape: its own graph
        sequence.forward(dec, np.array([PROMPT]), c3)
        sequence.forward(dec, np.array([[1]]), c3)
        assert sequence.recorded(dec).last is not g1 and sequence.recorded(dec).last.cache is c3


def test_unsupported_shapes_use_the_array_path(tmp_path):
    td.save(td.build("llama", layers=1), tmp_path)              # head_dim 16: not a multiple of 64 (or 32)
    dec = loom.llm.load(tmp_path, device="cuda").decoder
    for deterministic in (False, True):
        with loom.deterministic(deterministic):
            cache = dec.new_cache(16)
            sequence.forward(dec, np.array([PROMPT]), cache)
            sequence.forward(dec, np.array([[4]]), cache)
        assert sequence.recorded(dec).last is None


def test_each_mode_records_its_own_graph():
    dec = Decoder(DecoderConfig.from_hf(CONFIG), _quant_weights("Q4_0", CONFIG), device="cuda")
    cache = dec.new_cache(16)
    sequence.forward(dec, np.array([PROMPT]), cache)
    with loom.deterministic(False):
        sequence.forward(dec, np.array([[4]]), cache)
    assert not sequence.recorded(dec).last.exact
    sequence.forward(dec, np.array([[4]]), cache)                          # deterministic (the default)
    assert sequence.recorded(dec).last.exact and sequence.recorded(dec).last.cache is cache


def test_a_full_cache_still_raises_before_any_graph_runs():
    dec = Decoder(DecoderConfig.from_hf(CONFIG), _quant_weights("Q4_1", CONFIG), device="cuda")
    with loom.deterministic(False):
        cache = dec.new_cache(len(PROMPT) + 1)
        sequence.forward(dec, np.array([PROMPT]), cache)
        sequence.forward(dec, np.array([[4]]), cache)
        with pytest.raises(loom.errors.ConfigError, match="KV cache holds"):
            sequence.forward(dec, np.array([[4]]), cache)


@pytest.mark.parametrize("context", [7, 150])          # 150 keys: past one pass of the attention's key groups
def test_overlapped_launches_give_the_plain_launches_bits(context):
    """The graph's kernels overlap their predecessors (loom/backend/cuda/launch.py); recorded with plain
    launches instead, the same kernels must give the same logits bit for bit, step after step."""
    config = DecoderConfig.from_hf({**CONFIG, "max_position_embeddings": 256})
    dec = Decoder(config, _quant_weights("Q4_1", CONFIG), device="cuda")
    prompt = np.array([(np.arange(context) * 37 + 11) % CONFIG["vocab_size"]])
    logits = []
    with loom.deterministic(False):
        for overlap in (False, True):
            cache = dec.new_cache(context + 8)
            sequence.forward(dec, prompt, cache, last_only=True)
            graph = DecodeGraph(dec, cache, sequence.graph_kv(dec, cache), overlap=overlap)
            logits.append(np.stack([host(graph.step([t])) for t in (3, 9, 27, 81)]))
    np.testing.assert_array_equal(logits[1], logits[0])

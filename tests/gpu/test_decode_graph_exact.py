"""The recorded decode step in deterministic mode (loom/llm/decode_graph.py with backend/cuda/quant_exact.py and
decode_exact.py): its logits and KV cache equal the kernel-by-kernel path's and the CPU's bit for bit,
for every architecture option and stored weight type, whatever the batch; its products equal the exact
GEMM's bits where the certification must be settled and where inf and NaN meet."""

import numpy as np
import pytest

import loom
from loom.kernels import exact
from loom.kernels.exact import rounded as exact_rounded
from loom.llm import sequence
from loom.llm.decode_graph import DecodeGraph
from loom.llm.decoder import Decoder
from loom.llm.decoder_config import DecoderConfig

from .cpu_gpu import host, same_bits
from .test_decode_graph import CONFIG, PROMPT, _graph_and_eager, _quant_weights, built, config_for, loaded, saved

cupy = pytest.importorskip("cupy")
from loom.backend.cuda import quant as cuda_quant  # noqa: E402  (imports cupy)
from loom.backend.cuda import quant_exact as cuda_quant_exact  # noqa: E402

pytestmark = pytest.mark.gpu

STEPS = 6


def _steps(dec, prompts, steps=STEPS):
    """Logits [steps, B, vocab] (host) of decode steps after `prompts` [B, T], and the cache's keys."""
    cache = dec.new_cache(prompts.shape[1] + steps + 1, batch=prompts.shape[0])
    toks = host(sequence.forward(dec, prompts, cache, last_only=True))[:, -1].argmax(-1)
    rows = []
    for _ in range(steps):
        rows.append(host(sequence.forward(dec, toks[:, None], cache))[:, 0])
        toks = (toks * 7 + 3) % rows[-1].shape[-1]
    return np.stack(rows), host(cache.k[:, :, :, :cache.length])


def _same(got, want, what):
    same_bits(got, want, what)


def _check(graph, eager, cpu, prompts):
    got, got_k = _steps(graph, prompts)
    assert isinstance(sequence.recorded(graph).last, DecodeGraph) and sequence.recorded(graph).last.exact
    want, want_k = _steps(eager, prompts)
    assert sequence.recorded(eager).last is None
    _same(got, want, "graph vs kernel by kernel")
    _same(got_k, want_k, "cached keys")
    ref, _ = _steps(cpu, prompts)
    _same(got, ref, "graph vs CPU")


@pytest.mark.parametrize("kind, extra", [
    pytest.param("llama", {}, marks=pytest.mark.smoke), ("llama", {"tied": True}), ("qwen2", {}), ("qwen3", {"head_dim": 128}),
    ("mistral", {"sliding_window": 4}), ("qwen3", {"head_dim": 32, "tied": True})])
def test_exact_graph_gives_the_array_paths_bits(kind, extra, tmp_path):
    saved(kind, extra, tmp_path)
    with loom.deterministic(True):
        graph, eager = _graph_and_eager(loaded(tmp_path))
        prompts = np.array([PROMPT, [(t * 5 + 1) % 97 for t in PROMPT], PROMPT[::-1]])
        _check(graph, eager, loom.llm.load(tmp_path).decoder, prompts)


@pytest.mark.parametrize("qtype", cuda_quant.TYPES)
def test_exact_graph_with_stored_weight_types(qtype):
    weights = _quant_weights(qtype, config_for(qtype))
    config = DecoderConfig.from_hf(config_for(qtype))
    with loom.deterministic(True):
        graph, eager = _graph_and_eager(built(config, weights))
        _check(graph, eager, Decoder(config, weights), np.array([PROMPT, PROMPT[::-1]]))


def test_a_sequence_has_the_same_bits_in_any_batch():
    weights = _quant_weights("Q4_1", CONFIG)
    prompts = np.array([PROMPT, [(t * 3 + 2) % 500 for t in PROMPT], PROMPT[::-1], [9] * len(PROMPT)])
    with loom.deterministic(True):
        dec = Decoder(DecoderConfig.from_hf(CONFIG), weights, device="cuda")
        together, _ = _steps(dec, prompts)
        for i in (0, 2, 3):
            alone, _ = _steps(dec, prompts[i:i + 1])
            _same(together[:, i], alone[:, 0], f"sequence {i} in a batch of 4 vs alone")
        shuffled, _ = _steps(dec, prompts[[3, 1, 0, 2]])
        _same(shuffled[:, 2], together[:, 0], "sequence 0 at position 2")


def test_long_caches_run_kernel_by_kernel_with_a_notice(caplog):
    config = DecoderConfig.from_hf({**CONFIG, "max_position_embeddings": 4096})
    with loom.deterministic(True):
        dec = Decoder(config, _quant_weights("Q8_0", CONFIG), device="cuda")
        cache = dec.new_cache(2049)
        sequence.forward(dec, np.array([PROMPT]), cache)
        with caplog.at_level("WARNING", logger="loom"):
            sequence.forward(dec, np.array([[4]]), cache)
        assert sequence.recorded(dec).last is None
        assert any("2049 positions" in r.getMessage() for r in caplog.records)
        short = dec.new_cache(2048)
        sequence.forward(dec, np.array([PROMPT]), short)
        sequence.forward(dec, np.array([[4]]), short)
        assert isinstance(sequence.recorded(dec).last, DecodeGraph)


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


@pytest.mark.parametrize("m, cols, swiglu", [(1, 576, False), (3, 1536, False), (2, 256, False), (1, 512, True)])
def test_exact_gemv_matches_the_exact_gemm_where_it_must_settle(m, cols, swiglu):
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
        _same(host(out), want, "exact gemv")
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
        _same(host(out), loom.kernels.fused.rms_norm(x, weight, 1e-5)[0], "rms_norm")


@pytest.mark.parametrize("m, swiglu", [(1, False), (3, True)])
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
        _same(host(out), want, "gemv with the norm")


def test_unsupported_products_say_why():
    from loom.llm import decode_graph
    assert "IQ2_XS" in cuda_quant_exact.unsupported("IQ2_XS", 1, 256)
    assert "slices" in decode_graph._not_rounded(4096)           # the kernels compute the rounded scheme
    assert decode_graph._not_rounded(2048) is None
    assert "17 rows" in cuda_quant_exact.unsupported("Q8_0", 17, 256)
    assert cuda_quant_exact.unsupported("Q8_0", 16, 2048) is None

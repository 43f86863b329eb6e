"""The recorded prompt chunk (loom/llm/prefill_graph.py): a replay gives the eager chunk's bits (logits and
cache) for every architecture option (sliding window, q|k|v biases, per-head norms), stored BF16 and
quantized weights, chunked prompts, all-position logits; its KV arrays are the decode graph's; caches of
one shape take turns in them without losing positions; deterministic mode never records one."""
import numpy as np
import pytest

import loom
from loom.llm import decoder as decoder_module
from loom.llm import sequence
from loom.llm.decoder import Decoder
from loom.llm.decoder_config import DecoderConfig
from loom.llm.prefill_graph import PrefillGraph

from .test_decode_graph import CONFIG, _quant_weights

cupy = pytest.importorskip("cupy")
from loom.backend import cuda as cuda_backend  # noqa: E402  (imports cupy)
from loom.backend.cuda import flash  # noqa: E402

pytestmark = pytest.mark.gpu
CFG = {**CONFIG, "max_position_embeddings": 512}


def _decoders(kind="llama", qtype="BF16", **extra):
    cfg = {**CFG, "model_type": kind, **extra}
    if qtype in ("Q4_K", "Q6_K"):
        cfg["intermediate_size"] = 512
    config, weights = DecoderConfig.from_hf(cfg), _quant_weights(qtype, cfg, np.random.default_rng(20261124))
    recorded, eager = Decoder(config, weights, "cuda"), Decoder(config, weights, "cuda")
    eager.graphs = False
    return recorded, eager


def _prompt(n, seed=3, batch=1):
    return np.random.default_rng(seed).integers(0, CFG["vocab_size"], (batch, n))


def _prefill(dec, prompt, max_len=200, last_only=True):
    """(logits, keys, values) of a fresh cache of max_len positions after the prompt, on the host."""
    cache = dec.new_cache(max_len, batch=prompt.shape[0])
    logits = cupy.asnumpy(sequence.forward(dec, prompt, cache, last_only=last_only))
    n = cache.length
    return logits, cupy.asnumpy(cache.k[..., :n, :]), cupy.asnumpy(cache.v[..., :n, :])


def _same(got, want):
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and g.tobytes() == w.tobytes()


@pytest.mark.parametrize("kind, extra", [pytest.param("llama", {}, marks=pytest.mark.smoke), ("mistral", {"sliding_window": 24}),
                                         ("qwen2", {}), ("qwen3", {"head_dim": 128})])
def test_a_replayed_chunk_gives_the_eager_chunks_bits(kind, extra):
    prompt = _prompt(70)
    with loom.deterministic(False):
        recorded, eager = _decoders(kind, **extra)
        want = _prefill(eager, prompt)
        runs = [_prefill(recorded, prompt) for _ in range(3)]     # eager, recorded on the second, replayed
        assert len(sequence.recorded(recorded).prefill.entries) == 1 and not sequence.recorded(eager).prefill.entries
        assert isinstance(next(iter(sequence.recorded(recorded).prefill.entries.values())), PrefillGraph)
    for got in runs:
        _same(got, want)


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_K"])
def test_quantized_weights_record_too(qtype):
    """Weights decoded to bfloat16 block by block inside the chunk, and keep_dense's BF16 copies."""
    prompt = _prompt(40, seed=5, batch=2)
    with loom.deterministic(False):
        recorded, eager = _decoders(qtype=qtype)
        for dense in (False, True):
            if dense:
                recorded.keep_dense()
                eager.keep_dense()
            want = _prefill(eager, prompt, 64)
            for _ in range(3):
                _same(_prefill(recorded, prompt, 64), want)
        assert len(sequence.recorded(recorded).prefill.entries) == 2        # a key each: the copies are other weights


def test_chunked_prompts_and_every_positions_logits(monkeypatch):
    """Chunks after the first start past position 0 and attend to the cache (their own keys); a prompt's
    chunks without logits record the hidden states only; last_only=False takes every position's logits."""
    monkeypatch.setattr(decoder_module, "PREFILL_CHUNK_FAST", 32)
    prompt = _prompt(90, seed=8)
    with loom.deterministic(False):
        recorded, eager = _decoders("mistral", sliding_window=20)
        for last_only in (True, False):
            want = _prefill(eager, prompt, last_only=last_only)
            for _ in range(3):
                _same(_prefill(recorded, prompt, last_only=last_only), want)
        keys = set(sequence.recorded(recorded).prefill.entries)
    # (batch, T, position, cache positions, dense copies, logits): the 26-token tail is still past MAX_ROWS
    assert keys == {(1, 32, 0, 200, False, False), (1, 32, 32, 200, False, False), (1, 26, 64, 200, False, True),
                    (1, 26, 64, 200, False, False)}


def test_decode_steps_read_the_prompt_where_the_prefill_graph_wrote_it():
    """Prompt then decode steps: the recorded prefill and the decode graph share one GraphKV (no copies
    between them), and the whole generation's logits are those of a run with an eager prefill."""
    prompt = _prompt(50, seed=11)
    with loom.deterministic(False):
        dec, _ = _decoders()
        runs = []
        for _ in range(3):
            cache = dec.new_cache(80)
            rows = [cupy.asnumpy(sequence.forward(dec, prompt, cache, last_only=True))]
            for tok in (7, 300, 42, 9):
                rows.append(cupy.asnumpy(sequence.forward(dec, np.array([[tok]]), cache)))
            runs.append(np.concatenate(rows, axis=1))
        graph = next(iter(sequence.recorded(dec).prefill.entries.values()))
        assert graph.kv is sequence.recorded(dec).last.kv and cache.k is graph.kv.k
    assert runs[1].tobytes() == runs[0].tobytes() and runs[2].tobytes() == runs[0].tobytes()


def test_caches_of_one_shape_take_turns_without_losing_positions():
    first, second = _prompt(40, seed=1), _prompt(40, seed=2)
    with loom.deterministic(False):
        dec, eager = _decoders()
        _prefill(dec, first)                                   # seen once: eager
        a, b = dec.new_cache(200), dec.new_cache(200)
        sequence.forward(dec, first, a, last_only=True)                  # recorded; a lives in the graph's arrays
        sequence.forward(dec, second, b, last_only=True)                 # replayed; a moves to arrays of its own
        assert b.k is next(iter(sequence.recorded(dec).prefill.entries.values())).kv.k and a.k is not b.k
        for cache, prompt in ((a, first), (b, second)):
            _, k, v = _prefill(eager, prompt)
            _same((cupy.asnumpy(cache.k[..., :40, :]), cupy.asnumpy(cache.v[..., :40, :])), (k, v))


def test_deterministic_mode_never_records_a_chunk():
    prompt = _prompt(40)
    with loom.deterministic(True):
        dec, _ = _decoders()
        for _ in range(3):
            _prefill(dec, prompt, 64)
    assert not sequence.recorded(dec).prefill.entries and not sequence.recorded(dec).prefill.eager_reasons


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


def test_graphs_keep_the_rope_tables_they_read_when_the_decoder_grows_them():
    """A cache longer than any before grows the decoder's RoPE tables (new arrays); graphs recorded for
    shorter caches still read the old ones, which must outlive them: freed, CuPy's pool would hand
    their memory to the next arrays of their size (here NaN-filled ones)."""
    prompt = _prompt(40, seed=6)
    with loom.deterministic(False):
        dec, eager = _decoders()

        def run(d):
            cache = d.new_cache(48)
            rows = [cupy.asnumpy(sequence.forward(d, prompt, cache, last_only=True))]
            rows += [cupy.asnumpy(sequence.forward(d, np.array([[t]]), cache)) for t in (3, 99)]
            return np.concatenate(rows, axis=1)

        want = [run(dec) for _ in range(2)][1]          # the prefill graph recorded, the decode graph too
        shape, ptr = dec._cos.shape, dec._cos.data.ptr  # (no reference to the old tables here)
        dec.new_cache(400)                              # grows the tables
        assert dec._cos.data.ptr != ptr and dec._cos.shape[0] >= 400
        junk = [cupy.full(shape, np.nan, dtype=np.float32) for _ in range(8)]
        got = run(dec)
        del junk
        assert len(sequence.recorded(dec).prefill.entries) == 1
        cache = eager.new_cache(48)
        alone = cupy.asnumpy(sequence.forward(eager, prompt, cache, last_only=True))
    assert np.isfinite(got).all() and got.tobytes() == want.tobytes()
    assert got[:, :1].tobytes() == alone.tobytes()                   # the prompt's logits: the eager bits


def test_long_prompts_run_eagerly_a_failed_allocation_falls_back_and_release_frees(monkeypatch):
    """A prompt of more chunks than the decoder keeps graphs for is not recorded (its chunks would evict
    each other); a recording that runs out of memory (CuPy's OutOfMemoryError is a MemoryError) runs the
    chunk kernel by kernel without giving up the key; release_graphs drops every graph."""
    monkeypatch.setattr(decoder_module, "PREFILL_CHUNK_FAST", 32)
    prompt = _prompt(40, seed=12)
    with loom.deterministic(False):
        dec, eager = _decoders()
        long = _prompt((sequence.PREFILL_GRAPHS_KEPT + 1) * 32, seed=9)
        want = _prefill(eager, long, 300)
        for _ in range(3):
            _same(_prefill(dec, long, 300), want)
        assert not sequence.recorded(dec).prefill.entries

        def no_memory(*args):
            raise MemoryError("out of memory allocating 1073741824 bytes")
        monkeypatch.setattr(sequence, "PrefillGraph", no_memory)
        want = _prefill(eager, prompt)
        for _ in range(3):
            _same(_prefill(dec, prompt), want)
        assert not sequence.recorded(dec).prefill.entries and not sequence.recorded(dec).prefill.eager_reasons
        monkeypatch.setattr(sequence, "PrefillGraph", PrefillGraph)
        _same(_prefill(dec, prompt), want)                    # seen before: recorded now
        assert len(sequence.recorded(dec).prefill.entries) == 1 and sequence.recorded(dec).last is None
        sequence.forward(dec, np.array([[5]]), dec.new_cache(60))       # a decode graph too
        assert sequence.recorded(dec).last is not None
        sequence.release_graphs(dec)
        rec = sequence.recorded(dec)
        assert not rec.prefill.entries and not rec.decode.entries and rec.last is None
        _same(_prefill(dec, prompt), want)
        assert len(sequence.recorded(dec).prefill.entries) == 1

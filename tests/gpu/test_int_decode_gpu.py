"""Spec 5's decode attention kernel for the recorded step (loom/backend/cuda/int_decode.py; branch
wip/spec5-attention) against the CPU's scheme (kernels.exact.attention.causal) and RoPE's float32 operations, bit
for bit, through a paged cache whose blocks are shuffled: head sizes 8-128, 1-16 query heads a key/value head,
windows of one key to past a tile of THREADS keys (the first tile's scores kept, later ones made again), sliding
windows, rows of mixed magnitudes, inf / NaN in q, a cached key and a cached value; and the new k and v it writes
into the cache."""
import numpy as np
import pytest

import loom
from loom.errors import ShapeError
from loom.kernels import fused
from loom.kernels.exact import attention as ia

from .cpu_gpu import same_bits

cupy = pytest.importorskip("cupy")
from loom.backend.cuda import int_decode  # noqa: E402  (imports cupy)

pytestmark = pytest.mark.gpu


def _rope(x, cs, sn):
    """decode_exact's rope_at in float32 operations: x cos + rotate_half(x) sin."""
    half = x.shape[-1] // 2
    partner = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cs + partner * sn


def _case(seed, D, H, KV, positions, window, bs, special=None, splits=None, norm=False):
    """norm: qwen3's per-head RMSNorm of q and k before RoPE (one [H + KV, D] weight, as the decoder passes it)."""
    rng = np.random.default_rng(seed)
    B, R = len(positions), H // KV
    per = -(-(max(positions) + 1) // bs)
    blocks = B * per + 3
    tables = rng.permutation(blocks)[:B * per].reshape(B, per).astype(np.int64)
    spread = lambda shape: np.exp(rng.uniform(-3, 3, shape[:-1] + (1,)))   # noqa: E731
    cache_k = (rng.standard_normal((blocks, bs, KV, D)) * spread((blocks, bs, KV, D))).astype(np.float32)
    cache_v = (rng.standard_normal((blocks, bs, KV, D)) * spread((blocks, bs, KV, D))).astype(np.float32)
    qkv = (rng.standard_normal((B, H + 2 * KV, D)) * spread((B, H + 2 * KV, D))).astype(np.float32)
    angles = np.arange(max(positions) + 1)[:, None] * (10000.0 ** -(np.arange(D) % (D // 2) * 2.0 / D))[None, :]
    cos, sin = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
    if special == "q":
        qkv[0, 1 % H, 3] = np.nan
    elif special == "cache":        # a cached key of sequence 0 and a cached value of the last, inside their windows
        p0, pl = positions[0], positions[-1]
        cache_k[tables[0, (p0 - 1) // bs], (p0 - 1) % bs, 0, 2] = np.inf
        cache_v[tables[-1, (pl - 2) // bs], (pl - 2) % bs, KV - 1, D - 1] = np.nan
    scale = np.float32(D ** -0.5)
    norm_w = (1.0 + 0.1 * rng.standard_normal((H + KV, D))).astype(np.float32) if norm else None
    want = np.empty((B, H, D), np.float32)
    want_k, want_v = cache_k.copy(), cache_v.copy()
    for b, p in enumerate(positions):
        heads = qkv[b, :H + KV]
        if norm:
            with loom.deterministic(True):                       # (the decoder's array code on the CPU)
                heads = fused.rms_norm(heads, norm_w, 1e-5)[0]
        q = _rope(heads[:H], cos[p], sin[p])
        slot = (tables[b, p // bs], p % bs)
        want_k[slot] = _rope(heads[H:], cos[p], sin[p])
        want_v[slot] = qkv[b, H + KV:]
        rows = [(tables[b, t // bs], t % bs) for t in range(p + 1)]
        keys = np.stack([want_k[r] for r in rows], axis=1)        # [KV, p + 1, D]
        values = np.stack([want_v[r] for r in rows], axis=1)
        lo = max(0, p - window + 1) if window else 0
        want[b] = ia.causal(q.reshape(KV, R, D), keys[:, lo:], values[:, lo:], R, p, lo, window,
                            float(scale)).reshape(H, D)
    dev = {name: cupy.asarray(a) for name, a in (("qkv", qkv.reshape(B, -1)), ("k", cache_k), ("v", cache_v),
                                                  ("cos", cos), ("sin", sin), ("tables", tables))}
    out = cupy.full((B, H * D), 7.0, dtype=np.float32)
    if splits:      # (a window's splits wait for each other: at most a block a multiprocessor)
        splits = min(splits, int_decode._multiprocessors() // (B * H))
    split = int_decode.split_work(B, H, D, splits=splits) if splits and splits > 1 else None
    int_decode.paged_attention(dev["qkv"], dev["k"].reshape(-1, KV, D), dev["v"].reshape(-1, KV, D), out, dev["cos"],
                               dev["sin"], None if norm_w is None else cupy.asarray(norm_w),
                               cupy.asarray(np.array(positions, np.int64)), dev["tables"], bs, H,
                               window, float(scale), 1e-5, split=split, scheme=ia.SCHEME)
    what = (f"D {D}, {H} heads over {KV}, positions {positions}, window {window}, blocks of {bs}, {special}, "
            f"{splits} splits, {'a' if norm else 'no'} qk-norm")
    same_bits(out.reshape(B, H, D), want, what)
    same_bits(dev["k"], want_k, what + ": the cached keys")
    same_bits(dev["v"], want_v, what + ": the cached values")
    return want


@pytest.mark.parametrize("D, H, KV, positions", [(64, 8, 2, [0, 5, 130]), (128, 8, 8, [300]), (64, 14, 2, [48, 97])])
@pytest.mark.parametrize("grouped", [False, True])
def test_qk_norm_gives_the_cpus_bits(D, H, KV, positions, grouped, monkeypatch):
    """qwen3's per-head RMSNorm of q and k before RoPE (head_vector: the norm's exact sum over the head), with a
    block a query head and a key/value head's group a block."""
    monkeypatch.setattr(int_decode, "HEADS_A_BLOCK", H // KV if grouped else 1)
    _case(7 + D + H + sum(positions), D, H, KV, positions, None, 16, norm=True)


@pytest.mark.parametrize("D, H, KV, positions, window, bs", [
    pytest.param(64, 8, 2, [0, 5, 127, 128, 300], None, 16, marks=pytest.mark.smoke),
    (64, 9, 3, [40, 1000], None, 16), (128, 8, 8, [700], None, 32), (128, 32, 2, [3, 260], None, 8),
    (32, 12, 3, [40, 129, 2], 9, 8), (96, 4, 1, [255, 256, 600], 130, 16), (8, 4, 2, [17, 1], None, 4),
    (64, 4, 4, [2100], 1500, 64), (48, 6, 2, [129], 1, 16), (64, 14, 2, [48, 0, 97], None, 16)])
@pytest.mark.parametrize("splits", [None, 3, 16])
@pytest.mark.parametrize("grouped", [False, True])
def test_the_kernel_gives_the_cpus_bits(D, H, KV, positions, window, bs, splits, grouped, monkeypatch):
    """One block a query head (what few sequences take) or a key/value head's group of them (many sequences),
    each window in one block or cut over 3 or 16 (as many as the multiprocessors hold: the split form, some parts
    empty where windows are short)."""
    monkeypatch.setattr(int_decode, "HEADS_A_BLOCK", H // KV if grouped else 1)
    _case(D + H + sum(positions), D, H, KV, positions, window, bs, splits=splits)


@pytest.mark.parametrize("splits", [None, 4])
@pytest.mark.parametrize("special", ["q", "cache"])
@pytest.mark.parametrize("grouped", [False, True])
def test_inf_and_nan(special, splits, grouped, monkeypatch):
    monkeypatch.setattr(int_decode, "HEADS_A_BLOCK", 4 if grouped else 1)
    want = _case(5, 64, 8, 2, [20, 200], None, 16, special, splits)
    if special == "q":
        assert np.isnan(want[0, 1]).all() and not np.isnan(want[0, 0]).any() and not np.isnan(want[1]).any()
    else:   # (sequence 0's key/value head 0 and the last sequence's head KV - 1)
        assert np.isnan(want[0, :4]).all() and not np.isnan(want[0, 4:]).any()
        assert np.isnan(want[1, 4:]).all() and not np.isnan(want[1, :4]).any()


def test_a_block_takes_the_group_where_blocks_of_one_head_would_take_over_two_waves():
    """heads_a_block: Qwen2-0.5B's 14 heads over 2 take a block a query head at 32 sequences (448 blocks) and
    the group at 64 (896 blocks, past two waves: an H100 or H200 holds 264), as Llama-3.2-1B's 32 over 8 do from 17
    (its (sequence, key/value head) blocks then fill an H100's or H200's 132 multiprocessors)."""
    bits, p_bits = int(ia.SCHEME[1][3]), int(ia.SCHEME[1][2])
    resident = int_decode._resident(64, bits, p_bits)
    sms = int_decode._multiprocessors()
    assert sms <= resident and int_decode.ONE_HEAD_WAVES * resident < 64 * 14
    assert int_decode.heads_a_block(32, 14, 2, resident) == 1 and int_decode.heads_a_block(64, 14, 2, resident) == 7
    assert int_decode.heads_a_block(-(-sms // 8), 32, 8, resident) == 4
    assert int_decode.heads_a_block(sms // 8 - 1, 32, 8, 1 << 62) == 1


def test_shapes_it_does_not_take():
    assert int_decode.unsupported(130, 100) is not None and int_decode.unsupported(64, 1 << 20) is None
    z = cupy.zeros((1, 40 * 64), dtype=np.float32)
    with pytest.raises(ShapeError, match="query heads a key/value head"):
        int_decode.paged_attention(z, cupy.zeros((4, 1, 64), np.float32), cupy.zeros((4, 1, 64), np.float32),
                                   z, z, z, None, cupy.zeros(1, np.int64), cupy.zeros((1, 1), np.int64), 4, 38,
                                   None, 0.125, 1e-5, scheme=ia.SCHEME)



@pytest.mark.parametrize("knob, value, why", [("HEADS_A_BLOCK", 2, "query heads a block across"),
                                              ("LANES", 3, "lanes a key"), ("THREADS", 48, "threads a block"),
                                              ("PHASE_STOP", 3, "with the split form")])
def test_knobs_it_cannot_run_are_refused(knob, value, why, monkeypatch):
    """A block's heads in one group, warps of whole keys, no phase cut short in the split form (its counters
    would stay set): refused before launching."""
    monkeypatch.setattr(int_decode, knob, value)
    H, KV, D = 6, 2, 64
    z = cupy.zeros((1, (H + 2 * KV) * D), dtype=np.float32)
    with pytest.raises(ShapeError, match=why):
        int_decode.paged_attention(z, cupy.zeros((4, KV, D), np.float32), cupy.zeros((4, KV, D), np.float32),
                                   z, z, z, None, cupy.zeros(1, np.int64), cupy.zeros((1, 1), np.int64), 4, H,
                                   None, 0.125, 1e-5, scheme=ia.SCHEME, split=int_decode.split_work(1, H, D, splits=2))


@pytest.mark.parametrize("arch, extra", [("llama", {}), ("qwen3", {}), ("mistral", {"sliding_window": 9})])
def test_engine_steps_give_the_cpus_bits(arch, extra, monkeypatch):
    """With the decoders' attention in the scheme (decoder.INTEGER_ATTENTION, both devices), a GPU batch with
    preemption gives each sequence the tokens and log-probability bits the CPU gives it alone: prompt chunks and
    decode steps (recorded, with this kernel)."""
    import loom
    from loom.llm import decoder
    from loom.llm.batching import BatchEngine

    from .test_batching_gpu import _graph_model, _requests
    monkeypatch.setattr(decoder, "INTEGER_ATTENTION", True)
    with loom.deterministic(True):
        cpu, gpu = _graph_model(arch, "cpu", **extra), _graph_model(arch, "cuda", **extra)
        reqs = _requests(256)
        alone = [BatchEngine(cpu).generate([r])[0] for r in reqs]
        engine = BatchEngine(gpu, max_batch=4, cache_tokens=96, block_size=8)
        got = engine.generate(reqs)
        assert not engine.steps.graphs_off and engine.steps.graphs      # (the steps were recorded)
        for a, b in zip(alone, got):
            assert a.tokens == b.tokens and a.logprobs == b.logprobs


def test_the_split_form_runs_again_on_its_workspace():
    """The split form's arrival counters return to zero: a second launch on the same workspace (as a recorded
    step replays) gives the same bits, and a grid past the multiprocessors is refused, not left to hang."""
    rng = np.random.default_rng(3)
    D, H, KV, bs, p = 64, 4, 2, 16, 300
    per = p // bs + 1
    tables = cupy.asarray(rng.permutation(per).reshape(1, per).astype(np.int64))
    cache = [cupy.asarray(rng.standard_normal((per * bs, KV, D)).astype(np.float32)) for _ in range(2)]
    qkv = cupy.asarray(rng.standard_normal((1, (H + 2 * KV) * D)).astype(np.float32))
    trig = cupy.asarray(rng.uniform(-1, 1, (p + 1, D)).astype(np.float32))
    split = int_decode.split_work(1, H, D, splits=8)
    outs = []
    for _ in range(3):
        out = cupy.zeros((1, H * D), np.float32)
        int_decode.paged_attention(qkv, cache[0], cache[1], out, trig, trig, None, cupy.asarray(np.array([p])),
                                   tables, bs, H, None, 0.125, 1e-5, split=split, scheme=ia.SCHEME)
        outs.append(out.get())
    assert int(split.counters.sum()) == 0
    same_bits(outs[1], outs[0], "a second launch")
    same_bits(outs[2], outs[0], "a third launch")
    with pytest.raises(ValueError, match="multiprocessors"):
        int_decode.split_work(int_decode._multiprocessors(), H, D, splits=2)

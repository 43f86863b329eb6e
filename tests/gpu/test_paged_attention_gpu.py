"""The fast decode step's paged attention kernel (backend/cuda/decode.paged_attention) against a
float64 NumPy reference on random inputs: shuffled block tables (row- and column-major), sliding
windows, qwen3's per-head norms, grouped query heads, positions from 0 to past the block-table entries
a block stages in shared memory, float32 and bfloat16 output, and the cache writes at each position."""
import ml_dtypes
import numpy as np
import pytest

cupy = pytest.importorskip("cupy")
from loom.backend.cuda import decode  # noqa: E402  (needs cupy)

pytestmark = pytest.mark.gpu


def _reference(qkv, ck, cv, cos, sin, norm, pos, tables, bs, H, window, scale, eps):
    """(out [B, H D], keys and values written [B, KV, D]) in float64."""
    B, KV, D = len(pos), ck.shape[1], ck.shape[2]
    x = qkv.astype(np.float64).reshape(B, H + 2 * KV, D)
    out, new_k = np.zeros((B, H, D)), np.zeros((B, KV, D))

    def rope(v, p):
        return v * cos[p] + np.concatenate([-v[D // 2:], v[:D // 2]]) * sin[p]

    def normed(v, row):
        return v if norm is None else v / np.sqrt((v * v).mean() + eps) * norm[row]

    for b in range(B):
        p = pos[b]
        slot = lambda t: tables[b][t // bs] * bs + t % bs  # noqa: E731
        lo = max(0, p - window + 1) if window else 0
        for kv in range(KV):
            new_k[b, kv] = rope(normed(x[b, H + kv], H + kv), p)
        for h in range(H):
            kv = h // (H // KV)
            q = rope(normed(x[b, h], h), p) * scale
            keys = np.array([ck[slot(t), kv] if t < p else new_k[b, kv] for t in range(lo, p + 1)], dtype=np.float64)
            vals = np.array([cv[slot(t), kv] if t < p else x[b, H + KV + kv] for t in range(lo, p + 1)],
                            dtype=np.float64)
            s = keys @ q
            w = np.exp(s - s.max())
            out[b, h] = w @ vals / w.sum()
    return out.reshape(B, H * D), new_k, x[:, H + KV:]


@pytest.mark.parametrize("B, H, KV, D, bs, window, qk_norm, far", [
    (3, 4, 2, 64, 16, None, False, False),      # eight-warp blocks
    (70, 4, 2, 64, 16, None, False, False),     # two-warp blocks (decode.batch_warps)
    (70, 4, 2, 64, 8, 9, True, False),          # two warps with a window and per-head norms
    (66, 4, 2, 128, 16, None, False, False),    # four-warp blocks (head_dim 128)
    (5, 6, 2, 128, 8, 9, False, False),         # sliding window, head_dim 128
    (4, 4, 4, 64, 16, None, True, False),       # qwen3's per-head norms
    (2, 2, 1, 64, 1, None, False, True),        # more table entries than a block stages
    (130, 2, 1, 64, 1, 1050, False, True),      # the same in a window, two-warp blocks
])
@pytest.mark.parametrize("layout", ["rows", "columns"])
@pytest.mark.parametrize("bits", [False, True])
def test_paged_attention_is_the_reference(B, H, KV, D, bs, window, qk_norm, far, layout, bits):
    _check(B, H, KV, D, bs, window, qk_norm, far, layout, bits)


@pytest.mark.parametrize("warps", [2, pytest.param(4, marks=pytest.mark.smoke), 8, 16])
def test_every_warp_count_gives_the_reference(warps):
    _check(70, 4, 2, 64, 16, 9, True, False, "columns", False, warps)


def test_a_warp_count_that_cannot_merge_a_head_raises():
    with pytest.raises(ValueError, match="warps=2"):
        _check(2, 2, 1, 128, 16, None, False, False, "rows", False, 2)
    with pytest.raises(ValueError, match="warps=1"):
        _check(2, 2, 1, 64, 16, None, False, False, "rows", False, 1)


@pytest.mark.parametrize("B, H, KV, D, bs, window, longest, splits", [
    (1, 9, 3, 64, 16, None, 2100, 16),          # SmolLM2's heads, one sequence: up to 9 parts
    (1, 2, 1, 64, 16, None, 5000, 16),          # 20 parts' worth of keys in the 16 there are
    (3, 4, 2, 128, 16, None, 1500, 5),          # parts of uneven length, head_dim 128
    (2, 4, 2, 64, 8, 700, 2000, 16),            # a sliding window cut in parts
    (2, 2, 1, 64, 1, None, None, 3),            # parts past the block-table entries a block stages
    (4, 4, 2, 64, 16, None, 300, 2),            # positions 0 .. 299: at most 2 SPLIT_KEYS, one part
])
@pytest.mark.parametrize("bits", [False, pytest.param(True, marks=pytest.mark.smoke)])
def test_split_windows_give_the_reference(B, H, KV, D, bs, window, longest, splits, bits):
    """Windows of more than 2 SPLIT_KEYS keys cut over several blocks and merged by the last: the same
    reference, twice in a row (the counters are back at zero after each launch)."""
    _check(B, H, KV, D, bs, window, False, longest is None, "columns", bits, longest=longest, splits=splits,
           launches=2)


def test_a_split_workspace_of_other_sizes_raises():
    work = decode.split_work(2, 4, 64, splits=4)
    with pytest.raises(ValueError, match="split workspace"):
        _check(3, 4, 2, 64, 16, None, False, False, "rows", False, split=work)


def test_parts_fill_the_device_once():
    sms = cupy.cuda.Device().attributes["MultiProcessorCount"]
    assert decode.split_work(sms, 1, 64) is None
    assert decode.split_work(sms // 2, 1, 64).splits == 2
    assert decode.split_work(1, 1, 128).splits == decode.MAX_SPLITS


def _check(B, H, KV, D, bs, window, qk_norm, far, layout, bits, warps=None, longest=None, splits=None, launches=1,
           split=None):
    rng = np.random.default_rng(B * 7 + D + bs + bits)
    longest = longest or (decode.TABLE_SMEM * bs + 77 if far else 150)
    pos = rng.integers(0, longest, B)
    pos[0], pos[-1] = 0, longest - 1
    need = pos // bs + 1
    blocks = int(need.sum()) + 3
    order = rng.permutation(blocks)             # every sequence's blocks scattered through the pool
    width = int(need.max()) + 2
    tables = np.full((B, width), blocks, dtype=np.int64)        # unused entries: past the pool
    start = 0
    for b in range(B):
        tables[b, :need[b]] = order[start:start + need[b]]
        start += need[b]
    ck = rng.standard_normal(((blocks + 1) * bs, KV, D)).astype(np.float32)
    cv = rng.standard_normal(((blocks + 1) * bs, KV, D)).astype(np.float32)
    qkv = rng.standard_normal((B, (H + 2 * KV) * D)).astype(np.float32)
    ang = np.arange(longest)[:, None] * (10000.0 ** -(np.arange(D) % (D // 2) * 2 / D))[None]
    cos, sin = np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)
    norm = (1 + 0.2 * rng.standard_normal((H + KV, D))).astype(np.float32) if qk_norm else None
    scale, eps = D ** -0.5, 1e-6
    want, new_k, new_v = _reference(qkv, ck, cv, cos, sin, norm, pos, tables, bs, H, window, scale, eps)

    g_tables = cupy.asarray(tables) if layout == "rows" else cupy.asarray(np.asfortranarray(tables))
    g_k, g_v = cupy.asarray(ck), cupy.asarray(cv)
    split = split if splits is None else decode.split_work(B, H, D, splits)
    for _ in range(launches):
        out = cupy.full((B, H * D), 7, dtype=np.uint16 if bits else np.float32)
        decode.paged_attention(cupy.asarray(qkv), g_k, g_v, out, cupy.asarray(cos), cupy.asarray(sin),
                               None if norm is None else cupy.asarray(norm), cupy.asarray(pos), g_tables, bs, H,
                               window, scale, eps, warps=warps, split=split)
        got = cupy.asnumpy(out).view(ml_dtypes.bfloat16).astype(np.float64) if bits else cupy.asnumpy(out)
        tol = 2.0 ** -8 if bits else 2e-5
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())
    if split is not None:
        assert not cupy.asnumpy(split.counters).any()
    k_host, v_host = cupy.asnumpy(g_k), cupy.asnumpy(g_v)
    slots = tables[np.arange(B), pos // bs] * bs + pos % bs
    np.testing.assert_allclose(k_host[slots], new_k, rtol=1e-5, atol=1e-5)
    assert v_host[slots].tobytes() == new_v.astype(np.float32).tobytes()
    untouched = np.setdiff1d(np.arange(len(ck)), slots)                 # nothing else written
    assert k_host[untouched].tobytes() == ck[untouched].tobytes()
    assert v_host[untouched].tobytes() == cv[untouched].tobytes()

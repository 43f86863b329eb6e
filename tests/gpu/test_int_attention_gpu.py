"""Spec 5's integer attention kernel (loom/backend/cuda/int_attention.py; branch wip/spec5-attention) against
the CPU's scheme (kernels.exact.attention.causal), bit for bit: head sizes 64 and 128, groups of 1-4 query
heads a key/value head, a decode step's one row, prompts past a block's 64 rows, keys past several 64-key
tiles and not a multiple of them, a chunk after cached keys, a sliding window, rows of mixed magnitudes, and
inf / NaN rows."""
import numpy as np
import pytest

from loom.errors import ShapeError
from loom.kernels.exact import attention as ia

from .cpu_gpu import same_bits

cupy = pytest.importorskip("cupy")
from loom.backend.cuda import int_attention  # noqa: E402  (imports cupy)

pytestmark = pytest.mark.gpu


@pytest.fixture(params=[(None, None, 0), (4, 1, 0), (1, 1, 0), (4, 3, 0), (1, 2, 0), (None, None, 1)],
                ids=lambda p: f"warps {p[0]} splits {p[1]} split_mid {p[2]}", autouse=True)
def launch(request, monkeypatch):
    """Each test as the kernel chooses its launch, on both block sizes (64 query rows and 16) whole or with the
    keys split over blocks (3 splits: some of them empty where a block has few tiles), and with HL and LH in
    separate accumulators."""
    for name, value in zip(("WARPS", "SPLITS", "SPLIT_MID"), request.param):
        monkeypatch.setattr(int_attention, name, value)
    return request.param


def _rows(rng, shape, spread):
    return (rng.standard_normal(shape) * np.exp(rng.uniform(-spread, spread, shape[:-1] + (1,)))).astype(np.float32)


@pytest.mark.parametrize("d", [pytest.param(64, marks=pytest.mark.smoke), 128])
@pytest.mark.parametrize("groups, per_group, t, n, first, lo, window", [
    (2, 3, 1, 300, 299, 0, None), (1, 1, 130, 130, 0, 0, None), (3, 4, 37, 200, 163, 0, None),
    (2, 2, 70, 70, 0, 0, 16), (1, 3, 64, 129, 65, 0, 100), (4, 1, 5, 5, 0, 0, None),
    (2, 4, 200, 456, 256, 0, None), (1, 2, 150, 150, 0, 0, 70), (2, 1, 90, 201, 410, 300, 130),
    (1, 4, 1, 333, 900, 568, None)])
def test_the_kernel_gives_the_cpus_bits(d, groups, per_group, t, n, first, lo, window):
    rng = np.random.default_rng(d + groups * 10 + t + n)
    q = _rows(rng, (groups, per_group * t, d), 3.0)
    k = _rows(rng, (groups, n, d), 3.0)
    v = _rows(rng, (groups, n, d), 3.0)
    want = ia.causal(q, k, v, per_group, first, lo, window, 0.125)
    got = int_attention.attend(cupy.asarray(q), cupy.asarray(k), cupy.asarray(v), per_group, first, lo, window, 0.125, *ia.SCHEME)
    same_bits(got, want, f"D {d}, {groups} x {per_group} heads, {t} rows over {n} keys from {lo}, rows from {first}, "
                         f"window {window}")


@pytest.mark.parametrize("d", [8, 32, 48, 96])
def test_other_head_sizes(d):
    rng = np.random.default_rng(d)
    q, k, v = _rows(rng, (2, 2 * 80, d), 2.0), _rows(rng, (2, 150, d), 2.0), _rows(rng, (2, 150, d), 2.0)
    want = ia.causal(q, k, v, 2, 70, 0, None, d ** -0.5)
    got = int_attention.attend(cupy.asarray(q), cupy.asarray(k), cupy.asarray(v), 2, 70, 0, None, d ** -0.5, *ia.SCHEME)
    same_bits(got, want, f"D {d}")


def test_inf_and_nan_rows():
    rng = np.random.default_rng(9)
    q, k, v = _rows(rng, (2, 40, 64), 1.0), _rows(rng, (2, 40, 64), 1.0), _rows(rng, (2, 40, 64), 1.0)
    q[0, 3, 5] = np.nan
    k[1, 20, 0] = np.inf
    v[0, 30, 63] = -np.inf
    want = ia.causal(q, k, v, 1, 0, 0, None, 0.125)
    got = int_attention.attend(cupy.asarray(q), cupy.asarray(k), cupy.asarray(v), 1, 0, 0, None, 0.125, *ia.SCHEME)
    same_bits(got, want, "inf and NaN rows")
    assert np.isnan(want[0, 3]).all() and np.isnan(want[1, 20:]).all() and not np.isnan(want[1, :20]).any()


def test_shapes_it_does_not_take():
    z = cupy.zeros((1, 4, 64), dtype=np.float32)
    with pytest.raises(ShapeError, match="integer attention kernel"):
        int_attention.attend(z, z[:, :3], z[:, :3], 3, 0, 0, None, 0.125, *ia.SCHEME)
    w = cupy.zeros((1, 4, 160), dtype=np.float32)
    with pytest.raises(ShapeError, match="D up to 128"):
        int_attention.attend(w, w, w, 1, 0, 0, None, 0.125, *ia.SCHEME)
    assert int_attention.causal(w, w, w, 1, 0, 0, None, 0.125, *ia.SCHEME) is None     # (declined: the array code)


def test_causal_on_the_gpu_gives_the_cpus_bits():
    """kernels.exact.attention.causal on CuPy arrays: the backend's kernel, or past its heads (160) the array code
    on the GPU."""
    rng = np.random.default_rng(11)
    for d in (64, 160):
        q, k, v = _rows(rng, (2, 2 * 9, d), 2.0), _rows(rng, (2, 30, d), 2.0), _rows(rng, (2, 30, d), 2.0)
        want = ia.causal(q, k, v, 2, 21, 0, 7, d ** -0.5)
        got = ia.causal(cupy.asarray(q), cupy.asarray(k), cupy.asarray(v), 2, 21, 0, 7, d ** -0.5)
        same_bits(got, want, f"D {d}")


def _paged(rng, d, groups, per_group, t, n, spare=37):
    """A sequence's queries [t, H, d] and its n keys and values scattered over paged caches [n + spare, KV, d]
    (key j at slot key_slots[j], a random order), as a decoder's prompt step holds them."""
    heads = groups * per_group
    q = _rows(rng, (t, heads, d), 3.0)
    cache_k, cache_v = _rows(rng, (n + spare, groups, d), 3.0), _rows(rng, (n + spare, groups, d), 3.0)
    key_slots = rng.permutation(n + spare)[:n].astype(np.int64)
    return q, cache_k, cache_v, key_slots


def _paged_want(q, cache_k, cache_v, key_slots, per_group, first, lo, window, scale):
    """The CPU's causal() on the rows gathered head by head: the context [t, H d]."""
    t, heads, d = q.shape
    groups = heads // per_group
    q5 = np.stack([np.concatenate([q[:, g * per_group + r] for r in range(per_group)]) for g in range(groups)])
    k = np.stack([cache_k[key_slots, g] for g in range(groups)])
    v = np.stack([cache_v[key_slots, g] for g in range(groups)])
    ctx = ia.causal(q5, k, v, per_group, first, lo, window, scale)                     # [KV, R t, d]
    out = np.empty((t, heads * d), np.float32)
    for h in range(heads):
        g, r = divmod(h, per_group)
        out[:, h * d:(h + 1) * d] = ctx[g, r * t:(r + 1) * t]
    return out


@pytest.mark.parametrize("d", [pytest.param(64, marks=pytest.mark.smoke), 128])
@pytest.mark.parametrize("groups, per_group, t, n, first, lo, window", [
    (2, 3, 1, 300, 299, 0, None), (3, 4, 37, 200, 163, 0, None), (1, 3, 64, 129, 65, 0, 100),
    (2, 4, 200, 456, 256, 0, None), (1, 2, 150, 150, 0, 0, 70), (2, 1, 90, 201, 410, 300, 130)])
def test_the_decoders_layouts_read_in_place_give_the_cpus_bits(d, groups, per_group, t, n, first, lo, window):
    """causal_paged: q [T, H, D] and the paged caches read where they are, the context written into rows of a
    larger buffer (nothing outside them touched)."""
    rng = np.random.default_rng(d + groups * 10 + t + n)
    q, cache_k, cache_v, key_slots = _paged(rng, d, groups, per_group, t, n)
    want = _paged_want(q, cache_k, cache_v, key_slots, per_group, first, lo, window, 0.125)
    buffer = cupy.full((t + 5, groups * per_group * d), 7.0, dtype=np.float32)
    taken = int_attention.causal_paged(cupy.asarray(q), cupy.asarray(cache_k), cupy.asarray(cache_v),
                                       cupy.asarray(key_slots)[None], ((0, t, first, lo, n),), per_group, window,
                                       0.125, *ia.SCHEME, buffer[2:t + 2])
    assert taken
    same_bits(buffer[2:t + 2], want, f"D {d}, {groups} x {per_group} heads, {t} rows over {n} keys from {lo}, rows "
                                     f"from {first}, window {window}")
    rest = cupy.concatenate([buffer[:2], buffer[t + 2:]]).get()
    assert (rest == 7.0).all()


def _sequences(rng, d, groups, per_group, shapes, spare=29):
    """Several sequences' rows as a prompt step holds them: q [N, H, d] (each sequence's rows one after another),
    their keys and values scattered over shared paged caches, key slots [S, n_max] (padded with slot 0) and the
    items (first row, T, first position, lo, n) of paged_forward.flash_plans, shapes (T, first, lo)."""
    heads, total = groups * per_group, sum(first + t - lo for t, first, lo in shapes)
    q = _rows(rng, (sum(t for t, _, _ in shapes), heads, d), 3.0)
    cache_k, cache_v = _rows(rng, (total + spare, groups, d), 3.0), _rows(rng, (total + spare, groups, d), 3.0)
    order = rng.permutation(total + spare)
    key_slots = np.zeros((len(shapes), max(first + t - lo for t, first, lo in shapes)), np.int64)
    items, row, used = [], 0, 0
    for s, (t, first, lo) in enumerate(shapes):
        n = first + t - lo
        key_slots[s, :n] = order[used:used + n]
        items.append((row, t, first, lo, n))
        row, used = row + t, used + n
    return q, cache_k, cache_v, key_slots, tuple(items)


@pytest.mark.parametrize("d", [pytest.param(64, marks=pytest.mark.smoke), 128])
@pytest.mark.parametrize("groups, per_group, window, shapes", [
    (3, 3, None, [(32, 0, 0)] * 9),                                           # a step of equal new prompts
    (2, 4, None, [(1, 40, 0), (70, 0, 0), (5, 200, 0), (37, 163, 0), (1, 7, 0)]),   # prompts and decode rows
    (1, 2, 33, [(90, 410, 300), (3, 60, 28), (130, 0, 0), (16, 16, 0)]),       # windows: keys from lo > 0
    (2, 1, None, [(200, 256, 0), (8, 0, 0)]),
    (2, 2, None, [(0, 10, 0), (12, 0, 0), (1, 30, 0)]),                      # a sequence with no rows first
])
@pytest.mark.parametrize("each_alone", [False, True], ids=["one launch", "a launch each"])
def test_several_sequences_give_each_ones_cpu_bits(d, groups, per_group, window, shapes, each_alone, monkeypatch):
    """causal_paged over several sequences, in one launch or (where a small grid would leave long key walks unsplit)
    a launch each: each sequence's rows have the bits of the CPU's causal() on its own rows and keys; rows outside
    the sequences' are not written."""
    monkeypatch.setattr(int_attention, "ITEMS_TILES", 0 if each_alone else 1 << 30)
    monkeypatch.setattr(int_attention, "ITEMS_FROM", 1 << 30)
    rng = np.random.default_rng(d + len(shapes) * 7 + groups)
    q, cache_k, cache_v, key_slots, items = _sequences(rng, d, groups, per_group, shapes)
    N = q.shape[0]
    buffer = cupy.full((N + 3, groups * per_group * d), 7.0, dtype=np.float32)
    assert int_attention.causal_paged(*(cupy.asarray(a) for a in (q, cache_k, cache_v, key_slots)), items, per_group,
                                      window, 0.125, *ia.SCHEME, buffer[1:N + 1])
    for s, (row, t, first, lo, n) in enumerate(items):
        if t == 0:
            continue
        want = _paged_want(q[row:row + t], cache_k, cache_v, key_slots[s, :n], per_group, first, lo, window, 0.125)
        same_bits(buffer[1 + row:1 + row + t], want, f"D {d}, sequence {s} of {items}, window {window}")
    assert (buffer[0].get() == 7.0).all() and (buffer[N + 1:].get() == 7.0).all()


def test_several_sequences_through_kernels_exact_and_on_the_cpu():
    """kernels.exact.attention.causal_paged with several sequences: the GPU's one launch, the CPU's gathers and a
    head size the GPU kernel declines (48: gathered on the GPU too) all give the same bits."""
    for d in (64, 48):
        rng = np.random.default_rng(d)
        q, cache_k, cache_v, key_slots, items = _sequences(rng, d, 2, 2, [(12, 0, 0), (1, 30, 0), (40, 5, 0)])
        host = np.empty((q.shape[0], 4 * d), np.float32)
        ia.causal_paged(q, cache_k, cache_v, key_slots, items, 2, None, d ** -0.5, host)
        got = cupy.empty(host.shape, np.float32)
        ia.causal_paged(*(cupy.asarray(a) for a in (q, cache_k, cache_v, key_slots)), items, 2, None, d ** -0.5, got)
        same_bits(got, host, f"D {d}")


@pytest.mark.parametrize("d", [48, 64, 160])
def test_causal_paged_on_the_gpu_gives_the_cpus_bits(d):
    """kernels.exact.attention.causal_paged on CuPy arrays: the backend's in-place kernel (64), or gathered for
    causal() where it declines (48: not a multiple of 32; 160: past its heads), and on NumPy arrays (the CPU
    declines and gathers): the same bits."""
    rng = np.random.default_rng(d)
    q, cache_k, cache_v, key_slots = _paged(rng, d, 2, 2, 40, 90)
    want = _paged_want(q, cache_k, cache_v, key_slots, 2, 50, 0, 33, d ** -0.5)
    got = cupy.empty((40, 4 * d), dtype=np.float32)
    one = ((0, 40, 50, 0, 90),)
    ia.causal_paged(*(cupy.asarray(a) for a in (q, cache_k, cache_v, key_slots[None])), one, 2, 33, d ** -0.5, got)
    same_bits(got, want, f"D {d} on the GPU")
    host = np.empty((40, 4 * d), dtype=np.float32)
    ia.causal_paged(q, cache_k, cache_v, key_slots[None], one, 2, 33, d ** -0.5, host)
    np.testing.assert_array_equal(host.view(np.uint32), want.view(np.uint32))
    assert int_attention.causal_paged(*(cupy.asarray(a) for a in (q, cache_k, cache_v, key_slots[None])), one, 2, 33,
                                      d ** -0.5, *ia.SCHEME, got) == (d == 64)

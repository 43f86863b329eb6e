"""The integer attention scheme (loom/kernels/exact/attention.py): the array code against the scheme written
out row by row in Python integers, the fixed-point exp against exp, its closeness to float64 attention, a
row's bits independent of the other rows, chunks and batches, inf and NaN, shapes it refuses."""
import math

import numpy as np
import pytest

from loom.errors import ShapeError
from loom.kernels.exact import attention as ia

SCALE = 0.125


def _ints(row):
    """Spec 4's integers and exponent of a float32 row, in Python (fixed.py's docstring)."""
    top = max(abs(float(x)) for x in row)
    e = math.frexp(top)[1] if top else 0
    if round(math.ldexp(top, 15 - e)) > 32767:
        e += 1
    return [int(round(math.ldexp(float(x), 15 - e))) for x in row], e


def _exp(d):
    dq = int(round(min(d, 64.0) * 65536))
    u = (dq * ia.LOG2E_30) >> 30
    i, k, r = u >> 16, (u >> 8) & 255, u & 255
    p = (int(ia.EXP2_TABLE[k]) * ((1 << 31) - r * ia.LN2_15)) >> 31
    return p >> i if i < 62 else 0


def _row(q, k, v, allowed, scale):
    """One query row's context, the docstring's steps in Python integers and floats."""
    qi, eq = _ints(q)
    keys = [j for j in range(len(k)) if allowed[j]]
    kk = {j: _ints(k[j]) for j in keys}
    vv = {j: _ints(v[j]) for j in keys}
    s = {j: math.ldexp(float(sum(a * b for a, b in zip(qi, kk[j][0]))), eq + kk[j][1] - 30) for j in keys}
    top_s = max(s.values())
    p = {j: _exp((top_s - s[j]) * float(np.float32(scale))) for j in keys}
    top_e = max(vv[j][1] for j in keys)
    w = {}
    for j in keys:
        sh = 31 - ia.P_BITS + top_e - vv[j][1]
        w[j] = (p[j] + (1 << (sh - 1))) >> sh if sh < 62 else 0
    den = sum(p.values())
    return [np.float32(math.ldexp(sum(w[j] * vv[j][0][c] for j in keys) / den, top_e - ia.P_BITS - 15 + 31))
            for c in range(len(q))]


def _causal(t, n, window=None):
    qpos, kpos = np.arange(n - t, n)[:, None], np.arange(n)[None, :]
    return (kpos <= qpos) & (kpos > qpos - (n if window is None else window))


def _case(rng, t, n, d, spread=1.0):
    q, k, v = (rng.standard_normal((m, d)) * np.exp(rng.uniform(-spread, spread, (m, 1))) for m in (t, n, n))
    return q.astype(np.float32), k.astype(np.float32), v.astype(np.float32)


@pytest.mark.parametrize("t, n, d, window, spread", [(5, 7, 8, None, 1.0), (3, 3, 16, None, 4.0),
                                                     (6, 11, 4, 4, 0.5), (1, 9, 8, None, 8.0)])
def test_the_array_code_is_the_scheme_row_by_row(t, n, d, window, spread):
    """Every entry's bits against the scheme in Python integers; rows of different magnitudes (v's scales
    folded into p), causal and windowed masks, a decode step's one row."""
    rng = np.random.default_rng(t * 100 + n)
    q, k, v = _case(rng, t, n, d, spread)
    allowed = _causal(t, n, window)
    got = ia.attention(np, q, k, v, allowed, SCALE)
    want = np.array([_row(q[i], k, v, allowed[i], SCALE) for i in range(t)], dtype=np.float32)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def test_the_fixed_point_exp():
    """exp(0) is 2^31 exactly; over [0, 12] within 2^-15.5 of exp relative to the largest p (what the
    context's P_BITS = 14 keep), not increasing, and the integer scheme's own bits; large d and inf give 0."""
    assert ia.LOG2E_30 == round(math.log2(math.e) * 2 ** 30) and ia.LN2_15 == round(math.log(2) * 2 ** 15)
    assert [int(x) for x in ia.EXP2_TABLE] == [round(2 ** 31 * 2 ** (-k / 256)) for k in range(256)]
    d = np.concatenate([np.linspace(0.0, 12.0, 100_001), [64.0, 1e9, np.inf]])
    p = ia.exp_fixed(np, d)
    assert p[0] == 1 << 31 and p.dtype == np.int64
    assert np.all(np.diff(p[:-3]) <= 0)
    assert np.max(np.abs(p[:-3] - np.exp(-d[:-3]) * 2.0 ** 31)) < 2.0 ** 31 * 2.0 ** -15.5
    assert list(p[-3:]) == [0, 0, 0]
    picks = d[:-3]
    assert [int(x) for x in ia.exp_fixed(np, picks)] == [_exp(float(x)) for x in picks]


@pytest.mark.parametrize("d", [64, 128])
def test_near_float64_attention(d):
    """The context within about 2^-13 of float64 softmax attention, relative to v's largest magnitude."""
    rng = np.random.default_rng(d)
    q, k, v = _case(rng, 40, 64, d)
    q *= 3
    allowed = _causal(40, 64)
    got = ia.attention(np, q, k, v, allowed, 1 / math.sqrt(d))
    s = np.where(allowed, q.astype(np.float64) @ k.T.astype(np.float64) / math.sqrt(d), -np.inf)
    pe = np.exp(s - s.max(axis=1, keepdims=True))
    want = (pe / pe.sum(axis=1, keepdims=True)) @ v.astype(np.float64)
    assert np.max(np.abs(got - want)) < np.max(np.abs(v)) * 2.0 ** -13


def test_a_rows_bits_do_not_depend_on_other_rows_chunks_or_batches():
    """A prompt's rows all at once, in chunks over only the keys up to the chunk (a prefix cache's prefill),
    one at a time (decode steps), and inside a batch of other sequences (leading axes): the same bits."""
    rng = np.random.default_rng(7)
    n, d = 24, 16
    q, k, v = _case(rng, n, n, d, 2.0)
    whole = ia.attention(np, q, k, v, _causal(n, n), SCALE)
    for start, stop in ((0, 5), (5, 6), (6, 17), (17, 24)):
        part = ia.attention(np, q[start:stop], k[:stop], v[:stop], _causal(stop - start, stop), SCALE)
        np.testing.assert_array_equal(part.view(np.uint32), whole[start:stop].view(np.uint32))
    others = _case(rng, n, n, d, 3.0)
    batch = ia.attention(np, np.stack([others[0], q]), np.stack([others[1], k]), np.stack([others[2], v]),
                         _causal(n, n), SCALE)
    np.testing.assert_array_equal(batch[1].view(np.uint32), whole.view(np.uint32))


def test_inf_and_nan_make_the_rows_that_see_them_nan():
    """A query row with NaN: its row alone; a key or value row with inf: the rows that see that key (causal:
    from its position on), the earlier rows' bits unchanged."""
    rng = np.random.default_rng(3)
    q, k, v = _case(rng, 8, 8, 8)
    allowed = _causal(8, 8)
    clean = ia.attention(np, q, k, v, allowed, SCALE)
    q2 = q.copy()
    q2[2, 1] = np.nan
    out = ia.attention(np, q2, k, v, allowed, SCALE)
    assert np.isnan(out[2]).all()
    np.testing.assert_array_equal(np.delete(out, 2, 0), np.delete(clean, 2, 0))
    for which in ("k", "v"):
        k2, v2 = k.copy(), v.copy()
        (k2 if which == "k" else v2)[5, 0] = np.inf
        out = ia.attention(np, q, k2, v2, allowed, SCALE)
        assert np.isnan(out[5:]).all(), which
        np.testing.assert_array_equal(out[:5], clean[:5])


def test_zero_rows_and_a_row_of_one_key():
    """A zero query (every score 0: equal weights), zero values, and a row that sees one key (its v row,
    to 15 bits)."""
    rng = np.random.default_rng(5)
    q, k, v = _case(rng, 4, 4, 8)
    q[1] = 0
    v[0] = 0
    out = ia.attention(np, q, k, v, _causal(4, 4), SCALE)
    want = np.array([_row(q[i], k, v, _causal(4, 4)[i], SCALE) for i in range(4)], dtype=np.float32)
    np.testing.assert_array_equal(out, want)
    np.testing.assert_array_equal(out[0], 0.0)
    assert np.max(np.abs(out[1] - v[:2].astype(np.float64).mean(axis=0))) < 2.0 ** -12 * np.max(np.abs(v))


def test_mismatched_shapes_are_refused():
    with pytest.raises(ShapeError, match="attention takes"):
        ia.attention(np, np.zeros((2, 8), np.float32), np.zeros((3, 4), np.float32), np.zeros((3, 4), np.float32),
                     np.ones((2, 3), bool), SCALE)


def test_windows_past_the_sums_bound_are_refused(monkeypatch):
    """sum p stays below 2^53 only for windows below MAX_KEYS (2^22) keys: longer ones are refused, not rounded."""
    monkeypatch.setattr(ia, "MAX_KEYS", 4)
    q, k = np.ones((1, 1, 8), np.float32), np.ones((1, 4, 8), np.float32)
    with pytest.raises(ShapeError, match="below 4 keys"):
        ia.causal(q, k, k, 1, 3, 0, None, 0.5)
    assert ia.causal(q, k[:, :3], k[:, :3], 1, 2, 0, None, 0.5).shape == (1, 1, 8)


@pytest.mark.parametrize("per_group, t, n, first, window, d", [(3, 5, 9, 4, None, 16), (1, 1, 30, 29, None, 64),
                                                               (2, 7, 20, 13, 6, 8), (3, 16, 16, 0, None, 32),
                                                               (3, 1, 40, 39, None, 64), (4, 1, 70, 69, None, 128),
                                                               (2, 1, 50, 30, None, 32)])
def test_the_compiled_rows_are_the_array_codes(per_group, t, n, first, window, d):
    """causal(): the compiled loop (backend/cpu/attend_integer.py) against the array code, bit for bit: GQA
    groups, a chunk after cached keys, decode steps (their own kernel; one with keys past its position), a
    sliding window, rows of mixed magnitudes, and a value row with NaN (the rows that see it NaN)."""
    from loom.backend.cpu import attend_integer
    if not attend_integer.available():
        pytest.skip("numba is not installed (the loom[cpu] extra)")
    rng = np.random.default_rng(per_group * 1000 + n)
    g = 2
    q = (rng.standard_normal((g, per_group * t, d)) * np.exp(rng.uniform(-3, 3, (g, per_group * t, 1)))).astype(np.float32)
    k = (rng.standard_normal((g, n, d)) * np.exp(rng.uniform(-3, 3, (g, n, 1)))).astype(np.float32)
    v = (rng.standard_normal((g, n, d)) * np.exp(rng.uniform(-3, 3, (g, n, 1)))).astype(np.float32)
    v[1, n - 2, 0] = np.nan
    got = ia.causal(q, k, v, per_group, first, 0, window, SCALE)
    qpos, kpos = np.arange(first, first + t)[:, None], np.arange(n)[None, :]
    allowed = (kpos <= qpos) & (kpos > qpos - (10 ** 6 if window is None else window))
    want = ia.attention(np, q.reshape(g, per_group, t, d), k[:, None], v[:, None], allowed, SCALE).reshape(q.shape)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    assert np.isnan(got[1]).any() == bool(allowed[:, n - 2].any())


def test_the_compiled_rows_integers_are_fixed_pys():
    """The compiled loop's exponents and integers (attend_integer._integers: float32 fields, not frexp) against
    fixed.row_exponents and to_integers on rows whose largest magnitude spans float32's exponents, sits at or
    just below a rounding to 2^15, is subnormal, zero, or beside inf and NaN."""
    from loom.backend.cpu import attend_integer
    from loom.backend.cpu import jit as cpu_jit
    from loom.kernels.exact.fixed import row_exponents, to_integers
    if not attend_integer.available():
        pytest.skip("numba is not installed (the loom[cpu] extra)")
    rng = np.random.default_rng(1)
    rows = []
    for e in range(-149, 128, 3):
        for m in (1.0, 1.5, 2 - 2 ** -14, 2 - 2 ** -15, 2 - 2 ** -16, 1.99998474):
            r = (rng.standard_normal(8) * 0.1).astype(np.float32)
            r[0] = np.float32(np.ldexp(m, e))
            rows.append(r)
    x = np.array(rows + [np.zeros(8, np.float32)], np.float32)
    x[5, 3], x[9, 1] = np.inf, np.nan
    x[11] = np.float32(2.0 ** -149) * np.arange(8)
    xi, e, bad = np.empty(x.shape), np.empty(len(x), np.int64), np.empty(len(x), np.bool_)
    cpu_jit.run(attend_integer._integers, x, 15, xi, e, bad)
    finite = np.isfinite(x).all(axis=1)
    np.testing.assert_array_equal(e[finite], row_exponents(np, x)[finite])
    np.testing.assert_array_equal(xi, to_integers(np, x, row_exponents(np, x)))
    np.testing.assert_array_equal(bad, ~finite)


def test_causal_paged_gathers_the_decoders_layouts_for_causal():
    """causal_paged on the CPU: two sequences' rows of q [N, H, D] and their keys at scattered slots of paged caches
    [slots, KV, D] (key slot lists padded), the contexts into rows of a larger buffer: each sequence's causal() bits,
    head by head; nothing else written."""
    rng = np.random.default_rng(5)
    groups, per_group, d = 2, 3, 16
    shapes = [(7, 33, 0, 40), (4, 11, 2, 13)]                 # (T, first position, lo, keys)
    N = sum(t for t, _, _, _ in shapes)
    q = rng.standard_normal((N, groups * per_group, d)).astype(np.float32)
    cache_k, cache_v = (rng.standard_normal((70, groups, d)).astype(np.float32) for _ in range(2))
    order = rng.permutation(70)
    key_slots = np.zeros((2, 40), np.int64)
    key_slots[0], key_slots[1, :13] = order[:40], order[40:53]
    items = ((0, 7, 33, 0, 40), (7, 4, 11, 2, 13))
    buffer = np.full((N + 3, groups * per_group * d), 7.0, np.float32)
    ia.causal_paged(q, cache_k, cache_v, key_slots, items, per_group, 20, 0.25, buffer[1:N + 1])
    for s, (row, t, first, lo, n) in enumerate(items):
        slots = key_slots[s, :n]
        for h in range(groups * per_group):
            g = h // per_group
            want = ia.causal(q[None, row:row + t, h], cache_k[slots, g][None], cache_v[slots, g][None], 1, first, lo,
                             20, 0.25)
            np.testing.assert_array_equal(buffer[1 + row:1 + row + t, h * d:(h + 1) * d].view(np.uint32),
                                          want[0].view(np.uint32))
    assert (buffer[0] == 7.0).all() and (buffer[N + 1:] == 7.0).all()
    with pytest.raises(ShapeError, match="windows below"):
        ia.causal_paged(q, cache_k, cache_v, np.zeros((1, ia.MAX_KEYS), np.int64), ((0, 7, 0, 0, ia.MAX_KEYS),),
                        per_group, None, 0.25, buffer[:N])

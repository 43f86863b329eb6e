"""Deterministic decode attention with long windows cut over several blocks (backend/cuda/decode_exact.py's
split kernel) gives the one-block kernel's bits: on fresh random caches of spread magnitudes, on both
sides of the split threshold (2 SPLIT_KEYS keys), of the rounded scheme's keys (ROUNDED_KEYS: p v in the
slice scheme past it) and of the slice scheme's chunk (CHUNK_KEYS: its chunks added in order past it,
the one-block kernel's probabilities in device memory), with sliding windows, qwen3's head norms, head
sizes 64 and 128, any number of parts, blocks of 64 to 512 threads (split and one block a head); where
inf and NaN reach the scores or the values; and where p v cancels so that the certification must be
settled. Short windows (the softmax by one warp) give the bits of the same kernel with every window on the
block's softmax.
The one-block kernel's own bits are the CPU's (test_paged_decode_graph_exact.py); the recorded
steps that replay the split kernel are checked against the CPU there too."""

import numpy as np
import pytest

from .cpu_gpu import host, same_bits

cupy = pytest.importorskip("cupy")
from loom.backend.cuda import decode_exact  # noqa: E402  (imports cupy)
from loom.kernels.exact import rounded as exact_rounded  # noqa: E402

pytestmark = pytest.mark.gpu

BLOCK = 16


class Case:
    """B sequences at positions `positions` over a paged cache of random keys and values (each sequence
    its own shuffled blocks), H query heads of KV key/value heads of size D."""

    def __init__(self, positions, H=4, KV=2, D=64, seed=0, norm=False):
        rng = np.random.default_rng(seed)
        self.positions, self.H, self.KV, self.D = positions, H, KV, D
        self.B = len(positions)
        self.max_keys = -(-(max(positions) + 1) // BLOCK) * BLOCK
        per = self.max_keys // BLOCK
        order = rng.permutation(self.B * per)
        self.tables = order.reshape(self.B, per).astype(np.int64)
        slots = self.B * per * BLOCK
        shape = (slots, KV, D)
        self.k = (rng.standard_normal(shape) * np.exp2(rng.integers(-6, 2, shape))).astype(np.float32)
        self.v = (rng.standard_normal(shape) * np.exp2(rng.integers(-12, 3, shape))).astype(np.float32)
        self.v[rng.random(shape) < 0.01] = 0
        self.qkv = rng.standard_normal((self.B, (H + 2 * KV) * D)).astype(np.float32)
        angles = rng.uniform(-3, 3, (self.max_keys + 1, D))
        self.cos, self.sin = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
        self.norm = (1 + 0.1 * rng.standard_normal((H + KV, D))).astype(np.float32) if norm else None

    def slot(self, b, t):
        return self.tables[b, t // BLOCK] * BLOCK + t % BLOCK

    def run(self, split=None, window=None, **kw):
        """(the attention's output, the caches after the step) on fresh device copies (kw: paged_attention's
        other keywords)."""
        d = cupy.asarray
        k, v, out = d(self.k), d(self.v), cupy.full((self.B, self.H * self.D), np.nan, dtype=np.float32)
        if split is None and "p_work" not in kw and self.max_keys > decode_exact.HELD_KEYS:   # (their workspace)
            kw["p_work"] = decode_exact.probability_work(self.B, self.H, self.KV, self.D, self.max_keys)
        decode_exact.paged_attention(d(self.qkv), k, v, out, d(self.cos), d(self.sin),
                                     None if self.norm is None else d(self.norm), d(np.array(self.positions)),
                                     d(self.tables), BLOCK, self.H, window, 0.125, 1e-6,
                                     exact_rounded.error_factor(self.D), max_keys=self.max_keys, split=split, **kw)
        return host(out), host(k), host(v)

    def spoil(self, where):
        """Put inf or NaN where `where` says ("nan key", "inf key", "inf value", "nan value"), or scale the first
        key/value head's keys and query head 0 so that its scores overflow to inf in both signs ("huge scores")."""
        slot = self.slot(0, self.positions[0] // 2)
        if where == "nan key":
            self.k[slot, 0, 3] = np.nan
        elif where == "inf key":
            self.k[slot, 1, 5] = np.inf
        elif where == "inf value":
            self.v[slot, 0, 7] = -np.inf
        elif where == "nan value":
            self.v[self.slot(1, self.positions[1] - 3), 1, 2] = np.nan
        else:
            self.k[:, 0, :] *= 2.0 ** 64
            self.qkv[:, :self.D] *= 2.0 ** 64

    def cancel(self):
        """Every cached key alike (equal scores, equal probabilities), the values alternating in sign along the
        positions with every seventh nudged, the new value zero: p v cancels to about 2^-20 of its terms."""
        self.k[:] = self.k[:1]
        base = np.random.default_rng(5).standard_normal(self.v.shape[1:]).astype(np.float32)
        for b, pos in enumerate(self.positions):
            for t in range(pos):
                self.v[self.slot(b, t)] = base * np.float32((-1) ** t * (1 + 2.0 ** -20 * (t % 7 == 0)))
        self.qkv[:, (self.H + self.KV) * self.D:] = 0

    def work(self, splits):
        return decode_exact.split_work(self.B, self.H, self.D, self.max_keys, splits)


def _same(case, splits, window=None, what=""):
    one, k1, v1 = case.run(window=window)
    assert np.isfinite(one).any()
    work = case.work(splits)
    for _ in range(2):                    # twice: the counters are back to zero after a launch
        got, k2, v2 = case.run(work, window)
        same_bits(got, one, f"{what} split in {splits} vs one block a head")
        same_bits(k2, k1, "keys written")
        same_bits(v2, v1, "values written")
    assert not host(work.counters).any()


@pytest.mark.parametrize("positions", [[511, 512], [513, 700], [1500, 2047], pytest.param([2048, 2049], marks=pytest.mark.smoke),
                                       [3000, 600], [5000, 9000], [16383, 40], [16384, 40], [33000, 16385]])
def test_split_windows_give_the_one_block_bits(positions):
    _same(Case(positions, seed=positions[0]), 16, what=str(positions))


@pytest.mark.parametrize("splits, H, KV, D, norm", [(2, 4, 2, 64, False), (5, 8, 8, 64, True), (3, 6, 2, 128, False),
                                                    (16, 2, 1, 128, True)])
def test_any_parts_heads_and_norms(splits, H, KV, D, norm):
    _same(Case([1200, 2600], H, KV, D, seed=splits, norm=norm), splits)


@pytest.mark.parametrize("window", [600, 2047, 3000])
def test_sliding_windows(window):
    _same(Case([4000, 2100], seed=window), 8, window=window)


def test_a_long_sliding_window_starts_inside_a_chunk():
    """A window of 20,000 keys ending at position 40,000: its chunks of the slice scheme start at its first key,
    not at a multiple of CHUNK_KEYS of the cache's positions."""
    _same(Case([40000, 300], seed=3), 16, window=20000)


@pytest.mark.parametrize("head_dim", [32, 64])
def test_blocks_of_any_thread_count(monkeypatch, head_dim):
    case = Case([2500, 1000], D=head_dim, seed=7)
    one = case.run()[0]
    for threads in (64, 128, 256, 512):
        for name in ("FEW_THREADS", "THREADS", "MANY_THREADS"):
            monkeypatch.setattr(decode_exact, name, threads)
        same_bits(case.run(case.work(10))[0], one, f"{threads} threads, windows split")
        same_bits(case.run()[0], one, f"{threads} threads, one block a head")


def test_thread_counts_follow_the_blocks():
    """FEW_THREADS below a block a multiprocessor, THREADS up to two, MANY_THREADS past (head_dim threads where
    the head is larger)."""
    sms = decode_exact._multiprocessors(cupy.cuda.Device().id)
    name = "loom_exact_paged_decode_attention"
    assert [decode_exact._kernel(name, 64, blocks)[1] for blocks in (sms - 1, sms, 2 * sms, 2 * sms + 1)] == [
        decode_exact.FEW_THREADS, decode_exact.THREADS, decode_exact.THREADS, decode_exact.MANY_THREADS]
    assert decode_exact._kernel(name, 128, 4 * sms)[1] == max(decode_exact.MANY_THREADS, 128)
    assert decode_exact._kernel(name, 256, 4 * sms)[1] == max(decode_exact.MANY_THREADS, 256)


@pytest.mark.parametrize("where", ["nan key", "inf key", "inf value", "nan value", "huge scores"])
@pytest.mark.parametrize("positions", [[1000, 900], [2500, 3100]])
def test_special_values(where, positions):
    case = Case(positions, seed=len(where))
    case.spoil(where)
    one = case.run()[0]
    assert where == "inf key" or not np.isfinite(one).all()
    got = case.run(case.work(12))[0]
    same_bits(got, one, where)


def test_cancelling_sums_are_settled_as_one_block_settles_them():
    """Every cached key of a head alike (equal scores, equal probabilities), the values alternating in sign
    along the positions with every seventh nudged, the new value zero: p v cancels to about 2^-20 of its
    terms, beyond the float64 certification, so the entries are settled, by the last part over all keys."""
    case = Case([1800, 1101], seed=3)
    case.cancel()
    _same(case, 9, what="cancelling")


def test_split_work_refuses_a_grid_past_the_multiprocessors():
    sms = cupy.cuda.Device().attributes["MultiProcessorCount"]
    assert decode_exact.split_work(1, sms, 64, 4096) is None           # enough blocks already
    with pytest.raises(ValueError, match="multiprocessors"):
        decode_exact.split_work(1, 8, 64, 4096, splits=sms)
    case = Case([900])
    with pytest.raises(ValueError, match="split workspace"):
        case.run(decode_exact.split_work(2, case.H, case.D, case.max_keys, 2))


def _long_paths(monkeypatch):
    """Every window on the long windows' path: the block's softmax."""
    monkeypatch.setattr(decode_exact, "WARP_SOFTMAX", 0)


@pytest.mark.parametrize("positions", [[0, 16], [31, 63], [64, 127], [128, 255], [256, 511],
                                       pytest.param([512, 40], marks=pytest.mark.smoke)])
@pytest.mark.parametrize("D, norm", [(32, False), (64, True), (128, False), (256, True)])
def test_short_windows_give_the_long_windows_bits(monkeypatch, positions, D, norm):
    """Windows of up to 32 WARP_SOFTMAX keys (the softmax by one warp) and longer ones, on both sides of the
    threshold, against the same kernel with every window on the block's softmax; blocks of 64 to 512 threads; the
    keys and values written too."""
    case = Case(positions, H=4, KV=2, D=D, seed=sum(positions) + D, norm=norm)
    got = case.run()
    with monkeypatch.context() as m:
        _long_paths(m)
        want = case.run()
    for what, a, b in zip(("out", "keys", "values"), got, want):
        same_bits(a, b, f"{what}, positions {positions}, D {D}")
    for threads in (64, 256) if D <= 64 else (256,):
        for name in ("FEW_THREADS", "THREADS", "MANY_THREADS"):
            monkeypatch.setattr(decode_exact, name, threads)
        same_bits(case.run()[0], want[0], f"{threads} threads, positions {positions}")


@pytest.mark.parametrize("where", ["nan key", "inf key", "inf value", "nan value", "huge scores"])
def test_short_windows_special_values(monkeypatch, where):
    case = Case([40, 200], seed=len(where))
    case.spoil(where)
    got = case.run()[0]
    assert where == "inf key" or not np.isfinite(got).all()
    _long_paths(monkeypatch)
    same_bits(got, case.run()[0], where)


def test_short_windows_cancelling_sums_and_sliding_windows(monkeypatch):
    """p v cancelling past the float64 certification (settled), and sliding windows of 7 and 100 keys at
    positions past them."""
    case = Case([60, 301], seed=11)
    case.cancel()
    cancelling = case.run()[0]
    plain = Case([400, 90], seed=12)
    windows = [plain.run(window=w)[0] for w in (7, 100)]
    _long_paths(monkeypatch)
    same_bits(cancelling, case.run()[0], "cancelling")
    for w, got in zip((7, 100), windows):
        same_bits(got, plain.run(window=w)[0], f"window {w}")

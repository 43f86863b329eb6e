"""Counter-based random numbers: Philox4x32-10 keyed by (seed, stream), indexed by a counter.

A draw is a pure function of (seed, stream name, counter, element index), so any process on any
machine, and any backend that implements the same 32-bit integer rounds, produces the same bits.
Streams are named after what consumes them ("layers.0.weight", "layers.3.dropout"), so adding a
layer never shifts another layer's numbers.

Uniforms use only integer operations and one exact scaling. Normals use the Box-Muller transform
with this module's own log and cos, built from correctly rounded IEEE operations only, because
libm and NumPy's SIMD transcendentals differ between machines in the last bit.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import numpy as np
from numpy.typing import DTypeLike

M0, M1, W0, W1 = 0xD2511F53, 0xCD9E8D57, 0x9E3779B9, 0xBB67AE85   # Philox4x32's multipliers and key increments
_M0, _M1 = np.uint64(M0), np.uint64(M1)
_W0, _W1 = np.uint32(W0), np.uint32(W1)
_LO32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)
SMALL_BLOCKS = 4            # host draws (philox's xp None) of at most this many blocks (16 words) take _rounds_int


def stream_key(seed: int, stream: str) -> tuple[int, int]:
    """The 64-bit Philox key for a (seed, stream name) pair: SHA-256 of both, first 8 bytes."""
    digest = hashlib.sha256(f"loom-rng\0{int(seed)}\0{stream}".encode()).digest()
    return int.from_bytes(digest[0:4], "little"), int.from_bytes(digest[4:8], "little")


def philox(key: tuple[int, int], counter: Any, n: int, xp: ModuleType | None = None, offset: int = 0) -> Any:
    """`n` uint32 words: Philox4x32-10 over counters (i, 0, counter_lo, counter_hi) for blocks i,
    from word `offset` of the stream on (a rank of a data-parallel world draws its slice of the
    global batch's words).

    `counter` is an int, or a uint32 array [lo, hi] on xp's device (a recorded train step reads
    the counter from memory); xp None: host NumPy arrays, where draws of up to SMALL_BLOCKS blocks take
    _rounds_int. Only integer operations: every backend gives the same bits."""
    first, skip = divmod(int(offset), 4)
    blocks = (skip + n + 3) // 4
    host = xp is None
    xp = np if host else xp
    if host and isinstance(counter, (int, np.integer)) and blocks <= SMALL_BLOCKS:
        c2, c3 = int(counter) & 0xFFFFFFFF, (int(counter) >> 32) & 0xFFFFFFFF
        words = [w for i in range(first, first + blocks)
                 for w in _rounds_int(i & 0xFFFFFFFF, i >> 32, c2, c3, int(key[0]), int(key[1]))]
        return np.array(words[skip:skip + n], dtype=np.uint32)
    idx = xp.arange(first, first + blocks, dtype=np.uint64)
    c0 = (idx & _LO32).astype(np.uint32)
    c1 = (idx >> _SHIFT32).astype(np.uint32)
    if isinstance(counter, (int, np.integer)):
        c2 = xp.full(blocks, int(counter) & 0xFFFFFFFF, dtype=np.uint32)
        c3 = xp.full(blocks, (int(counter) >> 32) & 0xFFFFFFFF, dtype=np.uint32)
    else:
        c2, c3 = counter[0], counter[1]          # 0-d: broadcast by the first round
    c0, c1, c2, c3 = _rounds(c0, c1, c2, c3, np.uint32(key[0]), np.uint32(key[1]))
    return xp.stack([c0, c1, c2, c3], axis=1).reshape(-1)[skip:skip + n]


def _rounds(c0, c1, c2, c3, k0, k1) -> tuple:
    """Philox4x32-10's ten rounds over uint32 words (arrays or scalars, broadcast; keys likewise)."""
    with np.errstate(over="ignore"):
        for _ in range(10):
            p0 = c0.astype(np.uint64) * _M0
            p1 = c2.astype(np.uint64) * _M1
            hi0, lo0 = (p0 >> _SHIFT32).astype(np.uint32), (p0 & _LO32).astype(np.uint32)
            hi1, lo1 = (p1 >> _SHIFT32).astype(np.uint32), (p1 & _LO32).astype(np.uint32)
            c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
            k0, k1 = k0 + _W0, k1 + _W1
    return c0, c1, c2, c3


def _rounds_int(c0: int, c1: int, c2: int, c3: int, k0: int, k1: int) -> tuple[int, int, int, int]:
    """_rounds for one block on Python ints (the same 32-bit operations, so the same words): a sampled token's
    draw, where NumPy's cost a call on one-element arrays made a draw about 300 us."""
    for _ in range(10):
        p0, p1 = c0 * M0, c2 * M1
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ k0, p1 & 0xFFFFFFFF, (p0 >> 32) ^ c3 ^ k1, p0 & 0xFFFFFFFF
        k0, k1 = (k0 + W0) & 0xFFFFFFFF, (k1 + W1) & 0xFFFFFFFF
    return c0, c1, c2, c3


def first_uniforms(keys: np.ndarray, counters: np.ndarray) -> np.ndarray:
    """float64 [R]: row r's Generator.uniform(1, counter=counters[r])[0] for the stream whose key is
    keys[r] (uint32 [R, 2], stream_key's pair), all rows in one pass: the per-step draw of many
    sequences sampled at once."""
    counters = np.asarray(counters, dtype=np.uint64)
    zero = np.zeros(len(counters), dtype=np.uint32)
    w0, w1, _, _ = _rounds(zero, zero, (counters & _LO32).astype(np.uint32), (counters >> _SHIFT32).astype(np.uint32),
                           keys[:, 0].astype(np.uint32), keys[:, 1].astype(np.uint32))
    w0, w1 = w0.astype(np.uint64), w1.astype(np.uint64)
    return ((w0 >> np.uint64(5)) << np.uint64(26) | (w1 >> np.uint64(6))).astype(np.float64) * 2.0 ** -53


def counter_words(counter: int) -> np.ndarray:
    """A counter as the uint32 pair [lo, hi] that philox() accepts in place of the int."""
    return np.array([counter & 0xFFFFFFFF, (counter >> 32) & 0xFFFFFFFF], dtype=np.uint32)


class Generator:
    """Draws for one stream. Each call takes a counter; equal arguments give equal bits."""

    def __init__(self, seed: int, stream: str):
        self.seed, self.stream = int(seed), stream
        self.key = stream_key(seed, stream)

    def bits(self, shape: int | Sequence[int], counter: Any = 0, xp: ModuleType | None = None, offset: int = 0) -> Any:
        shape = _shape(shape)
        return philox(self.key, counter, int(np.prod(shape, dtype=np.int64)), xp, offset).reshape(shape)

    def uniform(self, shape: int | Sequence[int], counter: Any = 0, dtype: DTypeLike = np.float64,
                xp: ModuleType | None = None, offset: int = 0) -> Any:
        """Uniform on [0, 1): the top 24 (float32) or 53 (float64) bits scaled by a power of two
        (exact on every backend; `xp` and `counter` as in philox()). offset: draws to skip (the
        first draw is the stream's draw number `offset`)."""
        dtype = np.dtype(dtype)
        if dtype == np.float32:
            bits = self.bits(shape, counter, xp, offset)
            return (bits >> np.uint32(8)).astype(np.float32) * np.float32(2.0 ** -24)
        shape = _shape(shape)
        w = self.bits((*shape, 2), counter, xp, 2 * offset).astype(np.uint64)
        mant = ((w[..., 0] >> np.uint64(5)) << np.uint64(26)) | (w[..., 1] >> np.uint64(6))
        return (mant.astype(np.float64) * 2.0 ** -53).astype(dtype)

    def normal(self, shape: int | Sequence[int], counter: int = 0, dtype: DTypeLike = np.float64) -> np.ndarray:
        """Standard normal draws (Box-Muller in float64 with exact-operation log and cos)."""
        shape = _shape(shape)
        n = int(np.prod(shape, dtype=np.int64))
        u = self.uniform((n + 1) // 2 * 2, counter, np.float64).reshape(-1, 2)
        radius = np.sqrt(-2.0 * exact_log(1.0 - u[:, 0]))    # 1 - u lies in (0, 1]: log is finite
        angle = u[:, 1]
        z = np.stack([radius * exact_cos_2pi(angle), radius * exact_cos_2pi(angle + 0.75)], axis=1)
        return z.reshape(-1)[:n].reshape(shape).astype(dtype)


_LN2_HI = 6.93147180369123816490e-01   # ln 2 split so that k * _LN2_HI is exact for |k| < 2^11
_LN2_LO = 1.90821492927058770002e-10


def exact_log(x: np.ndarray) -> np.ndarray:
    """Natural log of positive finite float64s using only + - * / and frexp (exact everywhere)."""
    m, e = np.frexp(x)                       # x = m * 2^e, m in [0.5, 1)
    small = m < np.sqrt(0.5)
    m = np.where(small, m * 2.0, m)          # m in [sqrt(1/2), sqrt(2))
    k = (e - small).astype(np.float64)
    s = (m - 1.0) / (m + 1.0)                # |s| <= 0.1716
    s2 = s * s
    series = np.zeros_like(s)
    for n in range(23, 0, -2):               # atanh series: 2 (s + s^3/3 + ... + s^23/23)
        series = series * s2 + 1.0 / n
    return k * _LN2_HI + (2.0 * s * series + k * _LN2_LO)


def exact_cos_2pi(t: np.ndarray) -> np.ndarray:
    """cos(2 pi t) using only + - * and rounding: reduce t to [-1/8, 1/8] turns, then Taylor."""
    t = t - np.round(t)                      # [-1/2, 1/2]
    quarter = np.round(t * 4.0)              # nearest quarter turn: -2..2
    r = (t - quarter * 0.25) * (2.0 * np.pi)  # |r| <= pi/4
    r2 = r * r
    cos_r = np.zeros_like(r)
    sin_r = np.zeros_like(r)
    for n in range(20, -1, -2):              # cos: sum (-1)^j r^2j/(2j)!, sin: r * sum (-1)^j r^2j/(2j+1)!
        j = n // 2
        cos_r = cos_r * r2 + (-1.0) ** j / _factorial(2 * j)
        sin_r = sin_r * r2 + (-1.0) ** j / _factorial(2 * j + 1)
    sin_r = sin_r * r
    q = np.mod(quarter, 4.0)
    return np.select([q == 0, q == 1, q == 2], [cos_r, -sin_r, -cos_r], sin_r)


def _shape(shape) -> tuple[int, ...]:
    return (int(shape),) if np.isscalar(shape) else tuple(int(d) for d in shape)


def _factorial(n: int) -> float:
    out = 1.0
    for i in range(2, n + 1):
        out *= i
    return out

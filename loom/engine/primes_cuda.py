"""Prime counting and listing on the GPU: the CUDA backend's sieve (loom/backend/cuda/primes.py) fed
with the base primes up to sqrt(hi) (sieve._odd_base_primes, on the CPU: at most ~1.6 ms of the
total for hi = 10^13), and the few numbers the GPU sieve leaves to its caller: 2 (no even number is
sieved), the pre-sieved primes 3..31 (marked as their own multiples), and 1 (never marked)."""
from __future__ import annotations

import math

import numpy as np

from .. import backend
from ..backend import Array
from .sieve import _odd_base_primes


def _small(lo: int, hi: int, presieved: tuple[int, ...]) -> list[int]:
    return [p for p in (2, *presieved) if lo <= p < hi]


def count(lo: int, hi: int) -> int:
    """The number of primes in [lo, hi) (checked by the caller: 0 <= lo <= hi <= 2^64)."""
    if hi <= lo or hi <= 2:
        return 0
    gpu = backend.get("cuda").primes
    base = _odd_base_primes(math.isqrt(hi - 1))
    total = gpu.sieve(lo, hi, base)
    return total + len(_small(lo, hi, gpu.PRESIEVED)) - (1 if lo <= 1 < hi else 0)


def listing(lo: int, hi: int) -> Array:
    """The primes in [lo, hi), ascending, as a CuPy uint64 array."""
    be = backend.get("cuda")
    small = np.array(_small(lo, hi, be.primes.PRESIEVED), dtype=np.uint64)
    if hi <= lo or hi <= 3:
        return be.asarray(small)
    survivors = be.primes.odd_survivors(lo, hi, _odd_base_primes(math.isqrt(hi - 1)))
    xp = be.xp
    return xp.concatenate([be.asarray(small), survivors[survivors > 1]])

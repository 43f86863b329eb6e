"""Exact prime counting and listing: a segmented sieve of Eratosthenes over the odd numbers.

This is the NumPy reference the compiled and GPU sieves are to be checked against: exact (Python and
64-bit integer arithmetic throughout, no floating point), with memory of one segment plus the base
primes up to sqrt(hi) (8 bytes each: about 1.6 GB for hi near 2^64, where the time grows too).
pi(10^9) takes about 1.3 s on one core of the project's 2-core VM.

The sieve holds one byte per odd number of a segment (index i stands for 2i + 1). Each odd base
prime p <= sqrt(hi) strikes its odd multiples from max(p^2, the segment's first multiple) on, with
stride p in index space (consecutive odd multiples of p differ by 2p). What survives is prime,
except index 0 (the number 1). 2 is counted apart.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import ConfigError
from .pattern_inputs import integer

SEGMENT = 1 << 20          # odd numbers per segment: a 1 MiB byte array, about the size of an L2 cache
LIMIT = 1 << 64            # ranges are of unsigned 64-bit numbers


def _checked_range(lo: Any, hi: Any) -> tuple[int, int]:
    lo, hi = integer(lo, "lo"), integer(hi, "hi")
    if lo < 0:
        raise ConfigError("lo", f"expected lo >= 0, got {lo}")
    if hi < lo:
        raise ConfigError("hi", f"expected hi >= lo, got lo {lo} and hi {hi}")
    if hi > LIMIT:
        raise ConfigError("hi", f"expected hi <= 2^64, got {hi}")
    return lo, hi


def small_primes(n: int) -> np.ndarray:
    """The primes <= n as int64 (a plain sieve; for the base primes up to sqrt of a range's end)."""
    if n < 2:
        return np.zeros(0, dtype=np.int64)
    is_prime = np.ones(n + 1, dtype=bool)
    is_prime[:2] = False
    is_prime[4::2] = False
    for p in range(3, math.isqrt(n) + 1, 2):
        if is_prime[p]:
            is_prime[p * p::2 * p] = False
    return np.flatnonzero(is_prime).astype(np.int64)


def _odd_base_primes(limit: int) -> np.ndarray:
    """The odd primes <= limit: a plain sieve for small limits, else this segmented sieve itself (so
    memory is 8 bytes per base prime, not one byte per number up to limit)."""
    if limit < 1 << 24:
        return small_primes(limit)[1:]
    return primes(3, limit + 1).astype(np.int64)


def _segments(lo: int, hi: int):
    """(first odd number, survivor mask) of each segment of the odd numbers in [lo, hi)."""
    first = lo | 1                                          # the first odd number >= lo
    if first >= hi:
        return
    base = _odd_base_primes(math.isqrt(hi - 1))
    seg = np.empty(SEGMENT, dtype=bool)
    start = first
    while start < hi:
        count = min(SEGMENT, (hi - start + 1) // 2)        # odd numbers start, start + 2, ... < hi
        mask = seg[:count]
        mask[:] = True
        end = start + 2 * count                             # one past the last odd number here
        for p in base.tolist():
            if p * p >= end:
                break
            m = max(p * p, -(-start // p) * p)              # the first multiple of p >= start, at least p^2
            if m % 2 == 0:
                m += p                                      # odd multiples only
            if m < end:
                mask[(m - start) // 2::p] = False
        if start == 1:
            mask[0] = False                                 # 1 is not prime
        yield start, mask
        start = end


def count_primes(lo: Any, hi: Any) -> int:
    """The number of primes p with lo <= p < hi (exact)."""
    lo, hi = _checked_range(lo, hi)
    total = int(lo <= 2 < hi)
    for _, mask in _segments(lo, hi):
        total += int(np.count_nonzero(mask))
    return total


def prime_count(n: Any) -> int:
    """pi(n): the number of primes <= n (exact). n: a non-negative integer below 2^64."""
    n = integer(n, "n")
    if n < 0:
        raise ConfigError("n", f"expected n >= 0, got {n}")
    if n >= LIMIT:
        raise ConfigError("n", f"expected n < 2^64, got {n}")
    return count_primes(0, n + 1)


def primes(lo: Any, hi: Any) -> np.ndarray:
    """The primes p with lo <= p < hi, ascending, as uint64."""
    lo, hi = _checked_range(lo, hi)
    parts = [np.array([2], dtype=np.uint64)] if lo <= 2 < hi else []
    for start, mask in _segments(lo, hi):
        parts.append(np.uint64(start) + np.flatnonzero(mask).astype(np.uint64) * np.uint64(2))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)

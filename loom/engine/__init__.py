"""loom.engine: exact compute beyond neural networks. So far: prime counting and listing on the CPU
(sieve.py, the NumPy reference sieve)."""
from __future__ import annotations

from .sieve import count_primes, prime_count, primes

__all__ = ["count_primes", "prime_count", "primes"]

"""Exact prime counting and listing, on the CPU or the GPU: the public door (loom.engine.prime_count,
count_primes, primes).

Every answer is exact (integer arithmetic throughout, for any range of [0, 2^64)), so every device
gives the same one. The CPU runs the compiled sieve (loom/backend/cpu/primes.py: numba, the
`loom[cpu]` extra) and without it the NumPy reference (loom/engine/sieve.py, several times slower;
said once on the "loom" logger). The GPU runs the cuda backend's sieve (primes_cuda.py). pi(n) for
n >= LMO_FROM[device] is counted without sieving up to n: Lagarias-Miller-Odlyzko (lmo.py), whose
special leaves the GPU's LMO sieve counts (on the CPU: lmo.py's NumPy one).
Input is checked here, the same way for every device: a negative or non-integer bound, lo > hi, or a
bound past 2^64 raises ConfigError naming the value.
"""
from __future__ import annotations

from typing import Any

from .. import backend, fallback
from ..backend import Array
from ..errors import ConfigError
from . import lmo, sieve
from .pattern_inputs import integer

DEVICES = ("cpu", "cuda")
LMO_FROM = {"cpu": 10**9, "cuda": 10**10}    # pi(n) by LMO from here (measured: faster than the sieve)


def prime_count(n: Any, device: str = "cpu", threads: int | None = None) -> int:
    """pi(n): the number of primes <= n, for an integer 0 <= n < 2^64.

    device: "cpu" or "cuda". threads (CPU only): None for all the cores numba uses (NUMBA_NUM_THREADS),
    or at most that many; the count is the same whatever the number. From n = LMO_FROM[device] on the
    count is by LMO (on the CPU single-threaded, whatever `threads` says)."""
    n = integer(n, "n")
    if n < 0:
        raise ConfigError("n", f"expected n >= 0, got {n}")
    if n >= sieve.LIMIT:
        raise ConfigError("n", f"expected n < 2^64, got {n}")
    if n >= LMO_FROM[_device(device)]:
        _checked_threads(device, threads)
        return lmo.prime_count(n, device)             # (BackendError first where there is no usable GPU)
    return _count(0, n + 1, device, threads)


def count_primes(lo: Any, hi: Any, device: str = "cpu", threads: int | None = None) -> int:
    """The number of primes p with lo <= p < hi, for integers 0 <= lo <= hi <= 2^64 (device and
    threads as for prime_count)."""
    lo, hi = sieve._checked_range(lo, hi)
    return _count(lo, hi, device, threads)


def primes(lo: Any, hi: Any, device: str = "cpu") -> Array:
    """The primes p with lo <= p < hi, ascending, for integers 0 <= lo <= hi <= 2^64, as uint64: a NumPy
    array on "cpu" (listed on one CPU thread), a CuPy array on "cuda". Memory is 8 bytes per prime
    (about 400 MB up to 10^9), and on "cuda" also one byte per odd number of the range while listing."""
    lo, hi = sieve._checked_range(lo, hi)
    if _device(device) == "cuda":
        return _gpu_sieve("list")(lo, hi)
    compiled = _compiled()
    return compiled.primes(lo, hi) if compiled is not None else sieve.primes(lo, hi)


def _checked_threads(device: str, threads: Any) -> int | None:
    if threads is None:
        return None
    if _device(device) == "cuda":
        raise ConfigError("threads", f"applies to device 'cpu' only, got threads={threads!r} with device 'cuda'")
    threads = integer(threads, "threads")
    if threads < 1:
        raise ConfigError("threads", f"expected threads >= 1 (or None: all cores), got {threads}")
    return threads


def _count(lo: int, hi: int, device: str, threads: int | None) -> int:
    threads = _checked_threads(device, threads)
    if device == "cuda":
        return int(_gpu_sieve("count")(lo, hi))
    compiled = _compiled()
    return compiled.count(lo, hi, threads) if compiled is not None else sieve.count_primes(lo, hi)


def _device(device: Any) -> str:
    if not isinstance(device, str) or device not in DEVICES:
        raise ConfigError("device", f"unknown device {device!r}; expected 'cpu' or 'cuda'")
    return device


def _compiled():
    """The compiled CPU sieve module, or None (said once, with why) where it does not run here."""
    from ..backend.cpu import jit
    from ..backend.cpu import primes as compiled
    if compiled.available():
        return compiled
    fallback.notice_once(f"prime sieve: the compiled CPU sieve does not run here ({jit.unavailable_reason()}); "
                         f"using the NumPy reference sieve, several times slower (numba: pip install 'loom[cpu]')")
    return None


def _gpu_sieve(method: str):
    """primes_cuda's `count` or `listing` (the cuda backend's sieve with the base primes and the
    numbers it leaves to its caller); BackendError from backend.get where there is no usable GPU."""
    from . import primes_cuda
    backend.get("cuda")
    return primes_cuda.count if method == "count" else primes_cuda.listing

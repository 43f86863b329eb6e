"""The GPU sieve's bucketed large primes (loom/backend/cuda/primes.py): with small segments almost
every base prime is "large" (at most one multiple a segment), so random ranges exercise the buckets
with windows of 1, 3 and 64 segments; counts and lists must equal the NumPy reference's."""
import math

import numpy as np
import pytest

from loom import backend
from loom.backend.cuda.primes import Primes
from loom.engine import primes_cuda, sieve
from loom.engine.sieve import _odd_base_primes

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("log_segment, window, sms", [pytest.param(12, 1, None, marks=pytest.mark.smoke), (12, 3, None),
                                                      (13, 64, None), (12, 3, 1), (13, 7, 2), (20, 32, None), (20, 2, 1)])
def test_bucketed_counts_and_lists_match_the_reference(log_segment, window, sms):
    """sms=1 or 2: one or two blocks, so each runs many windows (the next multiples carried over)."""
    cp = backend.get("cuda").xp
    gpu = Primes(cp, log_segment=log_segment, window=window)
    if sms is not None:
        gpu._sms = sms
    rng = np.random.default_rng(log_segment * 100 + window)
    for _ in range(12):
        base = int(rng.choice([0, 10**6, 2**32, 10**11, 10**12, 2**42, 2**45]))   # sqrt past 2^20 too
        lo = base + int(rng.integers(0, 10**6))
        hi = lo + int(rng.integers(0, 3 * 10**6))
        if hi <= 3:
            continue
        odd_base = _odd_base_primes(math.isqrt(hi - 1))
        got = gpu.sieve(lo, hi, odd_base)
        small = len(primes_cuda._small(lo, hi, gpu.PRESIEVED)) - (1 if lo <= 1 < hi else 0)
        assert got + small == sieve.count_primes(lo, hi), (lo, hi, log_segment, window)
    lo, hi = 10**12, 10**12 + 2 * 10**6
    listed = gpu.odd_survivors(lo, hi, _odd_base_primes(math.isqrt(hi - 1)))
    assert np.array_equal(cp.asnumpy(listed), sieve.primes(lo, hi))


def test_a_window_past_64_is_refused():
    with pytest.raises(ValueError, match="window must be 1..64 segments, got 65"):
        Primes(backend.get("cuda").xp, window=65)

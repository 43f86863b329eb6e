"""The NumPy reference sieve (loom.engine.sieve): known values of pi(n), random counts and ranges
against trial division, segment boundaries, and bad input."""
import numpy as np
import pytest
from primes_helpers import KNOWN, slow_is_prime

from loom.engine import sieve
from loom.engine.sieve import count_primes, prime_count, primes
from loom.errors import ConfigError

KNOWN = KNOWN[:10]          # pi(10^10) takes the reference about 15 s


def test_slow_reference_agrees_with_trial_division():
    trial = [n for n in range(2, 5000) if all(n % d for d in range(2, int(n**0.5) + 1))]
    assert [n for n in range(5000) if slow_is_prime(n)] == trial


@pytest.mark.parametrize("k", range(len(KNOWN)))
def test_known_values(k):
    assert prime_count(10**k) == KNOWN[k]


def test_small_n_one_by_one():
    want = np.cumsum([slow_is_prime(n) for n in range(2000)])
    assert [prime_count(n) for n in range(2000)] == want.tolist()


@pytest.fixture
def tiny_segments(monkeypatch):
    """Segments of 7 odd numbers, so every boundary case (a multiple, a prime, p^2 on a boundary)
    occurs many times in small ranges."""
    monkeypatch.setattr(sieve, "SEGMENT", 7)


@pytest.mark.parametrize("segment", ["default", "tiny"])
def test_random_ranges_against_trial_division(request, segment):
    if segment == "tiny":
        request.getfixturevalue("tiny_segments")
    rng = np.random.default_rng(7)
    for _ in range(60):
        lo = int(rng.integers(0, 10**6)) if rng.random() < 0.8 else int(rng.integers(0, 40))
        hi = lo + int(rng.integers(0, 3000))
        want = [n for n in range(lo, hi) if slow_is_prime(n)]
        assert primes(lo, hi).tolist() == want, (lo, hi)
        assert count_primes(lo, hi) == len(want), (lo, hi)


def test_large_offsets_exact():
    """Beyond float64's 2^53 the values stay exact (uint64 arithmetic; checked by Miller-Rabin). The
    reference's cost grows with sqrt(hi), so the ranges stay small."""
    for lo in (2**40 - 500, 10**12, 2**53 + 1000):
        got = primes(lo, lo + 400)              # one sieve per range (each sieves base primes to sqrt(hi))
        assert got.tolist() == [n for n in range(lo, lo + 400) if slow_is_prime(n)]
        assert got.dtype == np.uint64


def test_empty_and_degenerate_ranges():
    assert primes(5, 5).tolist() == [] and count_primes(5, 5) == 0
    assert primes(0, 2).tolist() == [] and primes(2, 3).tolist() == [2] and primes(0, 3).tolist() == [2]
    assert prime_count(0) == 0 and prime_count(1) == 0 and prime_count(2) == 1
    assert prime_count(np.int64(100)) == 25


@pytest.mark.parametrize("call, match", [
    (lambda: prime_count(-1), r"^n: expected n >= 0, got -1"),
    (lambda: prime_count(2.5), r"^n: expected an integer, got 2.5"),
    (lambda: prime_count(True), r"^n: expected an integer"),
    (lambda: prime_count("10"), r"^n: expected an integer"),
    (lambda: prime_count(2**64), r"^n: expected n < 2\^64"),
    (lambda: primes(10, 5), r"^hi: expected hi >= lo, got lo 10 and hi 5"),
    (lambda: primes(-3, 5), r"^lo: expected lo >= 0, got -3"),
    (lambda: count_primes(0, 2**64 + 1), r"^hi: expected hi <= 2\^64"),
])
def test_bad_input(call, match):
    with pytest.raises(ConfigError, match=match):
        call()

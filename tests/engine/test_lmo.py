"""LMO prime counting (loom/engine/lmo.py) on the CPU: its tables against brute force, pi(x) by the
NumPy special sum against the sieve for many x, y and segment sizes, and prime_count's use of it."""
import importlib
import math
import random

import numpy as np
import pytest
from primes_helpers import KNOWN

from loom import engine as E
from loom.engine import lmo, sieve
from loom.errors import ConfigError

door = importlib.import_module("loom.engine.primes")     # the module, not the function loom.engine exports


def _mu_lpf(m: int) -> tuple[int, int]:
    factors, n, d = [], m, 2
    while d * d <= n:
        while n % d == 0:
            factors.append(d)
            n //= d
        d += 1
    if n > 1:
        factors.append(n)
    squarefree = len(set(factors)) == len(factors)
    return (-1) ** len(factors) if squarefree else 0, min(factors)


def test_icbrt_is_exact_around_cubes():
    for r in [0, 1, 2, 3, 10, 2**21 - 1, 2**21, 2642245]:
        for x in (r**3 - 1, r**3, r**3 + 1):
            if x >= 0:
                assert lmo.icbrt(x) ** 3 <= x < (lmo.icbrt(x) + 1) ** 3, x
    assert lmo.icbrt(2**64 - 1) == 2642245


def test_tables_match_brute_force():
    p = lmo.plan(10**7, 300)
    for m in range(2, 301):
        mu, lpf = _mu_lpf(m)
        assert p.leaf[m] == mu * lpf, m
    assert p.leaf[0] == p.leaf[1] == 0
    assert p.pi.tolist() == [sieve.prime_count(t) for t in range(301)]
    assert p.primes.tolist() == sieve.primes(0, 301).tolist()
    assert p.q.tolist() == sieve.primes(301, math.isqrt(10**7) + 1).tolist()
    assert p.b_star == sieve.prime_count(math.isqrt(10**7 // int(p.q[0])))


@pytest.mark.parametrize("x", [8, 9, 26, 27, 28, 64, 100, 1000, 4096, 12345, 10**5, 999983, 10**6, 2**24 + 3])
def test_small_x_every_y_and_segment(x):
    want = sieve.prime_count(x)
    root = lmo.icbrt(x)
    for y in sorted({root + 1, lmo.default_y(x), min(3 * root, math.isqrt(x))}):
        if y <= root or y * y * (y + 1) < x:
            continue
        for bits in (4, 64, 1 << 16):
            assert lmo.prime_count_reference(x, y, bits) == want, (x, y, bits)


def test_random_x_against_the_sieve():
    rng = random.Random(20261123)
    for _ in range(25):
        x = rng.randrange(8, 10**5) if rng.random() < 0.4 else rng.randrange(10**5, 10**8)
        bits = 1 << (rng.choice([3, 7]) if x < 10**5 else rng.choice([12, 16]))
        assert lmo.prime_count_reference(x, None, bits) == sieve.prime_count(x), (x, bits)


def test_known_powers_of_ten():
    for k in range(2, 11):
        assert lmo.prime_count_reference(10**k) == KNOWN[k], k
    assert lmo.prime_count_reference(2**32) == 203280221


def test_the_special_sum_is_the_same_for_any_segmenting():
    p = lmo.plan(10**9)
    sums = {lmo.special_reference(p, bits) for bits in (1 << 9, 1 << 13, 1 << 20)}
    assert len(sums) == 1


def test_bad_y_is_refused():
    with pytest.raises(ValueError, match="x=1000, y=10$"):
        lmo.plan(1000, 10)             # y must exceed the cube root
    with pytest.raises(ValueError, match="x=1000000, y=5$"):
        lmo.plan(10**6, 5)
    with pytest.raises(ValueError, match="x=1000000, y=1001$"):
        lmo.plan(10**6, 1001)          # and be at most sqrt(x): pi(y) would count primes above x
    with pytest.raises(ValueError, match="x=12345, y=12348$"):
        lmo.plan(12345, 12348)
    assert lmo.prime_count_reference(10**6, 1000) == 78498 and lmo.prime_count_reference(26, 3) == 9


def test_a_wrong_special_sum_is_caught():
    p = lmo.plan(10**6)
    with pytest.raises(ArithmeticError, match="x=1000000"):
        lmo.combine(p, (1 << 64) - 10**7)    # answer would be negative


def test_prime_count_uses_lmo_from_its_threshold(monkeypatch):
    calls = []
    real = lmo.prime_count
    monkeypatch.setattr(lmo, "prime_count", lambda n, device: calls.append((n, device)) or real(n, device))
    monkeypatch.setitem(door.LMO_FROM, "cpu", 10**6)
    assert E.prime_count(10**6 - 1) == 78498 and calls == []
    assert E.prime_count(10**7) == 664579 and E.prime_count(10**7, threads=1) == 664579
    assert calls == [(10**7, "cpu"), (10**7, "cpu")]
    with pytest.raises(ConfigError, match="^threads: expected threads >= 1"):
        E.prime_count(10**7, threads=0)


@pytest.mark.parametrize("x", [2**63 + 5, 10**19, 2**64 - 59])
def test_ordinary_sum_wraps_modulo_2_64_for_huge_x(x):
    """S1 and the b = 0 leaves in wrapping uint64 sums equal Python's big integers modulo 2^64 (for
    these x the exact sum leaves [0, 2^64))."""
    y = lmo.icbrt(x) + 1
    primes = sieve.small_primes(y)
    leaf, pi = lmo._tables(y, primes)
    p = lmo.Plan(x=x, y=y, primes=primes, leaf=leaf, pi=pi, q=np.zeros(0, dtype=np.uint64), b_star=0)
    mu = np.sign(leaf).astype(np.int64)
    mu[1] = 1
    n = np.flatnonzero(mu)
    exact = sum(int(m) * (x // int(k)) for m, k in zip(mu[n].tolist(), n.tolist()))
    odd = [m for m in range(y // 2 + 1, y + 1) if m % 2 and mu[m]]
    exact -= sum(int(mu[m]) * (x // (2 * m)) for m in odd)
    assert not 0 <= exact < 1 << 64 or x == 2**64 - 59      # the wrap is exercised (where it happens)
    assert lmo.ordinary_sum(p) == exact % (1 << 64)

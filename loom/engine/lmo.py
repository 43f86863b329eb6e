"""pi(x) far past a sieve's reach: the Lagarias-Miller-Odlyzko method, its special leaves counted by a
segmented sieve (on the GPU: loom/backend/cuda/lmo.py; here: a NumPy reference of the same counts).

With y >= x^(1/3) (so no number <= x has three prime factors above y) and a = pi(y):

    pi(x)     = phi(x, a) + a - 1 - P2
    phi(x, a) = S1 + S2                                     phi(v, b): the n <= v that none of the
    S1        = sum_{n <= y} mu(n) floor(x / n)                        first b primes divide
    S2        = -sum_{b=0}^{a-1} sum_m mu(m) phi(floor(x / (m p_{b+1})), b)
                  over squarefree m <= y < m p_{b+1} whose least prime factor is above p_{b+1}
    P2        = sum_{y < q <= sqrt(x), q prime} (pi(x / q) - pi(q) + 1)

The b = 0 leaves are floor(x / 2m), summed here with S1. Every other leaf, and every pi(x / q), is a
count of a sieve of the odd numbers of [1, z], z = x // (y + 1), stopped after its first b primes:
the "special sum" a device computes. It is the sum of -mu(m) phi(v, b) over the leaves and of
-phi(x / q, b*) over the q of P2, where b* = pi(sqrt(x // q_first)), so that every pi(x / q) is
phi(x / q, b*) + b* - 1. Everything is integer arithmetic modulo 2^64 (the partial sums may leave
the int64 range; the answer, at most x, does not), so the result is exact and the same on every
device.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import sieve

MASK = (1 << 64) - 1


@dataclass(frozen=True)
class Plan:
    """What the special sum needs, for one x (built by `plan`)."""
    x: int
    y: int
    primes: np.ndarray       # int64: the primes <= y, ascending (a of them; primes[0] = 2)
    leaf: np.ndarray         # int32, y + 1: mu(m) * lpf(m) for squarefree m >= 2, else 0
    pi: np.ndarray           # int32, y + 1: pi(t) for t <= y
    q: np.ndarray            # uint64: the primes in (y, isqrt(x)], the q of P2
    b_star: int              # the level every pi(x / q) is read at (0 when there is no q)

    @property
    def a(self) -> int:
        return int(self.primes.size)

    @property
    def z(self) -> int:
        """The largest value any leaf or x / q takes: the sieve covers the odd numbers of [1, z]."""
        return self.x // (self.y + 1)


def icbrt(x: int) -> int:
    """floor(x^(1/3)) for an integer x >= 0, exactly."""
    r = int(round(x ** (1.0 / 3.0))) if x else 0
    while r * r * r > x:
        r -= 1
    while (r + 1) ** 3 <= x:
        r += 1
    return r


def default_y(x: int, alpha: float | None = None) -> int:
    """y = alpha x^(1/3), at least floor(x^(1/3)) + 1 and at most sqrt(x). A larger alpha makes the
    sieve (x / y) shorter and the leaves (about pi(y)^2 / 2) more numerous."""
    if alpha is None:               # chosen on an H100 when this landed (8d6b8b0; docs/engine.md states the rule, the
                                    # timings behind it were not recorded): 1 up to 10^16, then more
        alpha = max(1.0, 1.0 + (math.log10(max(x, 10)) - 16.0) / 2.0)
    root = icbrt(x)
    return max(root + 1, min(int(alpha * root), math.isqrt(x)))


def plan(x: int, y: int | None = None, list_primes: Callable[[int, int], np.ndarray] | None = None) -> Plan:
    """The tables of the special sum for pi(x) (x >= 8). list_primes(lo, hi): the primes of [lo, hi)
    as a NumPy array (the q of P2; default: the reference sieve)."""
    y = default_y(x) if y is None else y
    root = icbrt(x)
    if not (8 <= x and root < y <= max(math.isqrt(x), root + 1) and y < 1 << 31):
        raise ValueError(f"LMO needs x >= 8 and x^(1/3) < y <= max(sqrt(x), x^(1/3) + 1), y < 2^31; "
                         f"got x={x}, y={y}")
    primes = sieve.small_primes(y)
    leaf, pi = _tables(y, primes)
    root = math.isqrt(x)
    if root > y:
        q = (list_primes or sieve.primes)(y + 1, root + 1)
        q = np.asarray(q, dtype=np.uint64)
    else:
        q = np.zeros(0, dtype=np.uint64)
    b_star = int(pi[math.isqrt(x // int(q[0]))]) if q.size else 0
    return Plan(x=x, y=y, primes=primes, leaf=leaf, pi=pi, q=q, b_star=b_star)


def _tables(y: int, primes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """mu(m) * lpf(m) (0 where m is not squarefree, and at 0 and 1) and pi(t), for m, t <= y. The
    primes up to sqrt(y) are struck one by one; what is left of m after dividing them out is 1 or
    one prime."""
    n = y + 1
    lpf = np.arange(n, dtype=np.int64)
    rest = np.arange(n, dtype=np.int64)
    sign = np.ones(n, dtype=np.int32)
    squarefree = np.ones(n, dtype=bool)
    small = primes[primes * primes <= y]
    for p in small[::-1].tolist():                     # descending: the least prime factor is written last
        lpf[p::p] = p
    for p in small.tolist():
        sign[p::p] *= -1
        rest[p::p] //= p
        squarefree[p * p::p * p] = False
    sign[rest > 1] *= -1                               # one prime factor above sqrt(y)
    leaf = np.where(squarefree, sign * lpf, 0).astype(np.int32)
    leaf[:2] = 0
    is_prime = np.zeros(n, dtype=np.int32)
    is_prime[primes] = 1
    return leaf, np.cumsum(is_prime, dtype=np.int32)


def ordinary_sum(p: Plan) -> int:
    """S1 plus the b = 0 special leaves (modulo 2^64): sum_{n <= y} mu(n) floor(x / n) minus
    sum mu(m) floor(x / 2m) over odd squarefree m with y < 2m <= 2y."""
    n = np.arange(1, p.y + 1, dtype=np.uint64)
    mu = np.sign(p.leaf[1:]).astype(np.int64)
    mu[0] = 1                                          # mu(1)
    quotients = np.uint64(p.x) // n
    total = _signed_sum(mu, quotients)
    m = np.arange(p.y // 2 + 1, p.y + 1, dtype=np.uint64)
    m = m[m % np.uint64(2) == np.uint64(1)]
    total -= _signed_sum(np.sign(p.leaf[m.astype(np.int64)]).astype(np.int64), np.uint64(p.x) // (np.uint64(2) * m))
    return total & MASK


def _signed_sum(sign: np.ndarray, values: np.ndarray) -> int:
    """sum(sign * values) modulo 2^64, for sign in {-1, 0, 1} and uint64 values (wrapping sums)."""
    plus = int(values[sign > 0].sum(dtype=np.uint64))
    minus = int(values[sign < 0].sum(dtype=np.uint64))
    return (plus - minus) & MASK


def combine(p: Plan, special: int) -> int:
    """pi(x) from the plan and the device's special sum (modulo 2^64)."""
    n, a = int(p.q.size), p.a
    total = ordinary_sum(p) + special + a - 1 - n * p.b_star + n * (a + 1) + n * (n - 1) // 2
    total &= MASK
    if total > p.x:
        raise ArithmeticError(f"LMO for x={p.x} gave {total - (1 << 64) if total >> 63 else total}: "
                              f"the special sum {special} is wrong")
    return total


def leaf_levels(p: Plan, lo: int) -> int:
    """K: the special leaves with values >= lo are at levels b < K (those with p_{b+1}^2 <= (x-1) // lo,
    as a leaf's value is below x / p_{b+1}^2)."""
    return int(np.searchsorted(p.primes, math.isqrt((p.x - 1) // lo), side="right"))


def special_reference(p: Plan, segment_bits: int = 1 << 16) -> int:
    """The special sum, by the NumPy reference: segments of `segment_bits` odd numbers in order, each
    sieved one prime at a time, phi below each segment carried per level. The CPU's special sum
    (one core; pi(10^12) takes about a minute on the project's VM) and the GPU kernel's oracle."""
    total_bits = (p.z + 1) // 2
    carry = np.zeros(p.a + 1, dtype=np.int64)          # phi of the numbers below the segment, per level
    total = 0
    for first in range(0, total_bits, segment_bits):
        lo, hi = 2 * first + 1, 2 * (first + segment_bits)       # the values v this segment answers
        alive = np.ones(min(segment_bits, total_bits - first), dtype=bool)
        k = leaf_levels(p, lo)
        last = max(k - 1, p.b_star)
        counts = {}
        for b in range(1, last + 1):                  # the state: the first b primes struck
            counts[b] = int(np.count_nonzero(alive))
            values, weights = _queries(p, b, k, lo, hi)
            if values.size:
                prefix = np.cumsum(alive)
                index = ((values - 1) // 2 - first).astype(np.int64)
                total += int((weights * (carry[b] + prefix[index])).sum())
            if b < last:
                prime = int(p.primes[b])
                start = prime if prime >= lo else -(-lo // prime) * prime
                start += prime if start % 2 == 0 else 0
                alive[(start - lo) // 2::prime] = False
        for b, c in counts.items():
            carry[b] += c
    return total & MASK


def _queries(p: Plan, b: int, k: int, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """The values in [lo, hi] read at level b, with their weights: the special leaves of prime
    p_{b+1} (weight -mu(m)) when b < K, and the x / q of P2 (weight -1) when b = b*."""
    values, weights = [], []
    if b < k:
        prime = int(p.primes[b])
        m_lo = max(p.y // prime, p.x // (hi + 1) // prime, prime)      # m > m_lo
        m_hi = min(p.y, p.x // lo // prime)
        if m_hi > m_lo:
            m = np.arange(m_lo + 1, m_hi + 1, dtype=np.int64)
            t = p.leaf[m].astype(np.int64)
            keep = np.abs(t) > prime
            m, t = m[keep], t[keep]
            values.append(np.uint64(p.x) // (np.uint64(prime) * m.astype(np.uint64)))
            weights.append(-np.sign(t))
    if b == p.b_star and p.q.size:
        first = int(np.searchsorted(p.q, p.x // (hi + 1) + 1))
        end = int(np.searchsorted(p.q, p.x // lo, side="right"))
        if end > first:
            values.append(np.uint64(p.x) // p.q[first:end])
            weights.append(-np.ones(end - first, dtype=np.int64))
    if not values:
        return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64)
    return np.concatenate(values), np.concatenate(weights)


def prime_count_reference(x: int, y: int | None = None, segment_bits: int = 1 << 16) -> int:
    """pi(x) by LMO with the NumPy reference special sum (x >= 8; slow past about 10^10)."""
    p = plan(x, y)
    return combine(p, special_reference(p, segment_bits))


def special_cuda(p: Plan, kernels: object = None) -> int:
    """The special sum by the GPU (kernels: a loom.backend.cuda.lmo.Lmo; default the backend's)."""
    from .. import backend
    kernels = kernels or backend.get("cuda").lmo
    return kernels.special(p.x, p.y, p.primes, p.leaf, p.pi, p.q, p.b_star)


def prime_count(x: int, device: str = "cpu", y: int | None = None) -> int:
    """pi(x) by LMO (x >= 8, checked by the caller): on "cuda" the special sum is the GPU's and the q
    of P2 are listed by the GPU sieve; on "cpu" it is the NumPy reference."""
    if device == "cuda":
        from .. import backend
        from . import primes_cuda
        be = backend.get("cuda")
        p = plan(x, y, lambda lo, hi: be.to_numpy(primes_cuda.listing(lo, hi)))
        return combine(p, special_cuda(p))
    p = plan(x, y)
    return combine(p, special_reference(p))

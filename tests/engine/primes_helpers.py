"""Shared by the prime sieve tests (test_primes_reference.py, test_primes_fast.py): known values of
pi(10^k) and a slow primality test to check sieves against."""

# pi(10^k), k = 0..10 (OEIS A006880)
KNOWN = [0, 4, 25, 168, 1229, 9592, 78498, 664579, 5761455, 50847534, 455052511]


def slow_is_prime(n: int) -> bool:
    """Miller-Rabin with the first 12 primes as bases: exact for every n < 3.3 * 10^24."""
    if n < 2:
        return False
    bases = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)
    if n in bases:
        return True
    if any(n % p == 0 for p in bases):
        return False
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for a in bases:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True

"""The compiled CPU sieve (loom/backend/cpu/primes.py) against the NumPy reference (loom/engine/sieve.py)
and Miller-Rabin, in its shipped layout and in shrunk ones (segments of 64 odd numbers, every prime
in the buckets, no buckets, the streamed mode of base primes above BASE_LIMIT), so every boundary
case occurs in small ranges; and the public door (loom/engine/primes.py): devices, threads, the
NumPy fallback, bad input."""
import importlib
import importlib.util
from types import SimpleNamespace

import numpy as np
import pytest
from primes_helpers import KNOWN, slow_is_prime

from loom import backend
from loom.backend.cpu import primes as fast
from loom.engine import count_primes, prime_count, primes, sieve
from loom.errors import BackendError, ConfigError

door = importlib.import_module("loom.engine.primes")      # loom.engine.primes, the attribute, is the function

compiled = pytest.mark.skipif(importlib.util.find_spec("numba") is None or not fast.available(),
                              reason="the compiled sieve needs numba (pip install 'loom[cpu]') and LOOM_JIT != 0")

LAYOUTS = {
    "shipped": {},
    # 64 odd numbers a segment: every base prime (all above the presieved 191) goes to the buckets,
    # in blocks of 4 entries (long chains)
    "tiny": dict(SEGMENT_BYTES=8, SUB_BYTES=8, SMALL_MAX=0, BUCKET=4),
    "small": dict(SEGMENT_BYTES=64, SUB_BYTES=16, SMALL_MAX=300),
    "mixed": dict(SEGMENT_BYTES=512, SUB_BYTES=128, SMALL_MAX=150, MEDIUM_MAX=5000, BUCKET=8),
    "no buckets": dict(MEDIUM_MAX=1 << 40),
    # base primes above 2^10 struck into the mask of chunks of 2^12 odd numbers, as above 2^52
    "streamed": dict(BASE_LIMIT=1 << 10, CHUNK_BITS=1 << 12, SEGMENT_BYTES=256, SUB_BYTES=64),
}


@pytest.fixture(params=list(LAYOUTS))
def layout(request, monkeypatch):
    for name, value in LAYOUTS[request.param].items():
        monkeypatch.setattr(fast, name, value)
    return request.param


def mr_primes(lo: int, hi: int) -> list[int]:
    """The primes in [lo, hi) by Miller-Rabin, after striking the multiples of the primes below 200
    (uint64 arithmetic, so ranges up to 2^64 work)."""
    n = np.uint64(lo) + np.arange(hi - lo, dtype=np.uint64)
    keep = np.ones(len(n), dtype=bool)
    for p in (p for p in range(2, 200) if slow_is_prime(p)):
        keep &= (n % np.uint64(p) != 0) | (n == np.uint64(p))
    return [int(v) for v in n[keep] if slow_is_prime(int(v))]


# --- against known values and the reference -------------------------------------------------------

@compiled
@pytest.mark.parametrize("k", range(len(KNOWN)))
def test_known_values(k):
    assert count_primes(0, 10**k + 1) == KNOWN[k]          # the compiled sieve
    assert prime_count(10**k) == KNOWN[k]                  # (LMO from LMO_FROM["cpu"])


@compiled
def test_pi_2_32_on_one_thread_and_all():
    assert count_primes(0, 2**32 + 1, threads=1) == 203280221
    assert count_primes(0, 2**32) == 203280221 and count_primes(0, 2**32 - 5) == 203280220   # 2^32 - 5 is prime
    assert prime_count(2**32, threads=1) == 203280221 and prime_count(2**32 - 6) == 203280220


@compiled
def test_small_n_one_by_one():
    want = np.cumsum([slow_is_prime(n) for n in range(3000)])
    assert [fast.count(0, n + 1, 1) for n in range(3000)] == want.tolist()


def _random_ranges(seed: int, count: int):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        lo = int(rng.integers(0, 10 ** int(rng.integers(1, 12))))
        yield lo, lo + int(rng.integers(0, 60000))


@compiled
def test_from_zero(layout):
    """The presieved primes (3..191) and 1 in the first segments, whatever their size."""
    assert fast.primes(0, 3000).tolist() == mr_primes(0, 3000)
    want = np.cumsum([slow_is_prime(n) for n in range(500)]).tolist()
    assert [fast.count(0, n + 1, 1) for n in range(500)] == want
    assert [fast.count(lo, 400, 1) for lo in range(400)] == [want[399] - (want[lo - 1] if lo else 0)
                                                              for lo in range(400)]


REFERENCE = {}          # (lo, hi) -> the reference sieve's primes, shared by the layouts


@compiled
def test_random_ranges_against_the_reference(layout):
    for lo, hi in _random_ranges(11, 40):
        if (lo, hi) not in REFERENCE:
            REFERENCE[lo, hi] = sieve.primes(lo, hi)
        want = REFERENCE[lo, hi]
        assert fast.count(lo, hi, 1) == len(want), (layout, lo, hi)
        got = fast.primes(lo, hi)
        assert got.dtype == np.uint64 and np.array_equal(got, want), (layout, lo, hi)


@compiled
def test_segment_and_sub_block_boundaries(layout):
    """Ranges that start, end or straddle where segments and sub-blocks meet (in odd-number space a
    segment of B bytes spans 16 B integers), and for small segments ranges over several of them."""
    for size in (fast.SEGMENT_BYTES, fast.SUB_BYTES):
        span = 16 * size
        for k in (1, 2, 3, 7, 1000 // size + 1):
            ranges = [(max(0, k * span - 300), k * span + 300), (k * span, k * span + 1), (k * span - 1, k * span)]
            if span <= 4096:
                ranges.append((max(0, k * span - 2 * span - 5), k * span + 3))
            for lo, hi in ranges:
                want = mr_primes(lo, hi)
                assert fast.primes(lo, hi).tolist() == want, (layout, lo, hi)
                assert fast.count(lo, hi, 1) == len(want), (layout, lo, hi)


@compiled
def test_around_the_squares_of_the_thresholds(layout):
    """A prime joins the sieve at p^2: ranges around the squares of the primes on either side of the
    small / medium / bucket thresholds (and of BASE_LIMIT in the streamed layout)."""
    medium = fast.SEGMENT_BYTES * 8 if fast.MEDIUM_MAX is None else fast.MEDIUM_MAX
    for threshold in (fast.SMALL_MAX, fast.SUB_BYTES * 8, fast.SEGMENT_BYTES * 8, min(medium, 1 << 22),
                      min(fast.BASE_LIMIT, 1 << 22)):
        below = max(p for p in range(max(3, threshold - 400), threshold + 1) if slow_is_prime(p)) \
            if threshold > 3 else 3
        above = next(p for p in range(threshold + 1, threshold + 1000) if slow_is_prime(p))
        for p in (below, above):
            lo, hi = max(0, p * p - 200), p * p + 200
            want = mr_primes(lo, hi)
            assert fast.primes(lo, hi).tolist() == want, (layout, threshold, p)
            assert fast.count(lo, hi, 1) == len(want), (layout, threshold, p)


@compiled
def test_a_wide_range_over_a_bucketed_square():
    """About 10^7 integers around p^2 for the first prime in the buckets (p just above 2^21): the
    bucket sieve and the medium primes over many segments, against the reference."""
    p = next(q for q in range(fast.SEGMENT_BYTES * 8 + 1, fast.SEGMENT_BYTES * 8 + 200) if slow_is_prime(q))
    lo, hi = p * p - 5 * 10**6, p * p + 5 * 10**6
    assert fast.count(lo, hi, 1) == sieve.count_primes(lo, hi)


@compiled
def test_near_2_64():
    """The last 10^6 integers below 2^64 (base primes up to 2^32, streamed): every number checked."""
    lo, hi = 2**64 - 10**6, 2**64
    got = fast.primes(lo, hi)
    assert got.dtype == np.uint64
    assert got.tolist() == mr_primes(lo, hi)
    assert fast.count(lo, hi, 1) == len(got) and int(got[-1]) == 2**64 - 59     # the largest prime below 2^64
    assert count_primes(2**64 - 59, 2**64) == 1


@compiled
@pytest.mark.parametrize("lo, hi", [(0, 3 * 10**7), (10**12, 10**12 + 2 * 10**7), (12345, 12345 + 10**6 + 7)])
def test_threads_agree(monkeypatch, lo, hi):
    monkeypatch.setattr(fast, "BLOCK_BITS", 1 << 12)              # many blocks even for small ranges
    one = fast.count(lo, hi, 1)
    assert fast.count(lo, hi, 2) == one and fast.count(lo, hi, None) == one
    assert one == sieve.count_primes(lo, hi)


@compiled
def test_threads_agree_in_the_streamed_mode(monkeypatch):
    for name, value in LAYOUTS["streamed"].items():
        monkeypatch.setattr(fast, name, value)
    monkeypatch.setattr(fast, "CHUNK_BITS", 1 << 17)
    monkeypatch.setattr(fast, "BLOCK_BITS", 1 << 8)
    lo, hi = 10**9, 10**9 + 10**6
    assert fast.count(lo, hi, 2) == fast.count(lo, hi, 1) == sieve.count_primes(lo, hi)


@compiled
def test_threads_up_to_2_64(monkeypatch):
    """Blocks whose last one ends at g = 2^63 - 1 (the top of int64), in the streamed mode."""
    monkeypatch.setattr(fast, "BASE_LIMIT", 1 << 10)
    monkeypatch.setattr(fast, "CHUNK_BITS", 1 << 20)
    monkeypatch.setattr(fast, "BLOCK_BITS", 1 << 12)
    assert fast.count(2**64 - 10**6, 2**64, 2) == 22475      # test_near_2_64 checks the count on one thread


@compiled
def test_empty_and_degenerate_ranges():
    assert fast.primes(5, 5).tolist() == [] and fast.count(5, 5, 1) == 0
    assert fast.primes(0, 2).tolist() == [] and fast.primes(2, 3).tolist() == [2]
    assert fast.primes(0, 3).tolist() == [2] and fast.primes(0, 104).tolist() == mr_primes(0, 104)
    assert fast.primes(2**64, 2**64).dtype == np.uint64


# --- the public door -------------------------------------------------------------------------------

def test_without_the_jit_the_reference_runs_and_says_so(monkeypatch, loom_log):
    monkeypatch.setenv("LOOM_JIT", "0")
    monkeypatch.setattr(fast, "count", lambda *a: pytest.fail("the compiled sieve ran with LOOM_JIT=0"))
    monkeypatch.setattr(fast, "primes", lambda *a: pytest.fail("the compiled sieve ran with LOOM_JIT=0"))
    assert prime_count(10**5) == 9592 and count_primes(100, 200, threads=1) == 21
    assert primes(90, 110).tolist() == [97, 101, 103, 107, 109]
    notices = [m for m in loom_log() if "prime sieve" in m]
    assert len(notices) == 1 and "LOOM_JIT=0" in notices[0] and "loom[cpu]" in notices[0]


class _SieveOnTheHost:
    """The cuda backend's `primes` object (loom/backend/cuda/primes.py) emulated with NumPy, number by
    number: which odd numbers of [lo, hi) survive pre-sieving by 3..31 (their multiples, themselves
    included) and the base primes above 31 (their multiples from p^2 on). primes_cuda turns that into
    prime counts and lists; the real kernel is compared with it on the GPU (tests/gpu)."""
    PRESIEVED = (3, 5, 7, 11, 13, 17, 19, 23, 29, 31)

    def __init__(self):
        self.calls = []

    def _survivors(self, lo, hi, base):
        odd = np.arange(2 * (lo // 2) + 1, hi, 2, dtype=np.uint64)
        alive = np.ones(odd.size, bool)
        for p in self.PRESIEVED:
            alive &= odd % np.uint64(p) != 0
        for p in (int(q) for q in base if q > 31):
            alive &= (odd % np.uint64(p) != 0) | (odd < np.uint64(p * p))
        return odd[alive]

    def sieve(self, lo, hi, base):
        self.calls.append((lo, hi, int(base[-1]) if len(base) else None))
        return int(self._survivors(lo, hi, base).size)

    def odd_survivors(self, lo, hi, base):
        return self._survivors(lo, hi, base)


@pytest.fixture
def host_gpu(monkeypatch):
    """device 'cuda' served by _SieveOnTheHost (the backend's asarray and xp are NumPy's)."""
    fake = _SieveOnTheHost()
    monkeypatch.setattr(backend, "get", lambda name: SimpleNamespace(primes=fake, xp=np, asarray=np.asarray))
    return fake


def test_cuda_counts_and_lists_from_the_backends_survivors(host_gpu):
    for lo, hi in [(0, 0), (0, 1), (0, 2), (0, 3), (1, 2), (2, 3), (0, 32), (3, 32), (30, 40), (0, 1000),
                   (961, 1400), (999_000, 1_002_000), (10**9, 10**9 + 20_000)]:
        assert count_primes(lo, hi, device="cuda") == sieve.count_primes(lo, hi), (lo, hi)
        assert np.array_equal(primes(lo, hi, device="cuda"), sieve.primes(lo, hi)), (lo, hi)
    assert prime_count(np.int64(100), device="cuda") == 25
    assert (10**9, 10**9 + 20_000, 31607) in host_gpu.calls      # every base prime up to sqrt(hi - 1)


def test_cuda_without_a_gpu_is_a_backend_error(monkeypatch):
    def no_gpu(name):
        raise BackendError("device 'cuda' needs CuPy: pip install 'loom[cuda]' (cupy-cuda12x)")
    monkeypatch.setattr(backend, "get", no_gpu)
    with pytest.raises(BackendError, match="device 'cuda' needs CuPy"):
        prime_count(10, device="cuda")
    with pytest.raises(BackendError, match="device 'cuda' needs CuPy"):
        primes(0, 10, device="cuda")


@pytest.mark.parametrize("call, match", [
    (lambda: prime_count(10, device="tpu"), r"^device: unknown device 'tpu'"),
    (lambda: primes(0, 10, device=None), r"^device: unknown device None"),
    (lambda: count_primes(0, 10, threads=0), r"^threads: expected threads >= 1"),
    (lambda: count_primes(0, 10, threads=1.5), r"^threads: expected an integer, got 1.5"),
    (lambda: count_primes(0, 10, device="cuda", threads=2), r"^threads: applies to device 'cpu' only"),
    (lambda: prime_count(-1), r"^n: expected n >= 0, got -1"),
    (lambda: prime_count(2.0), r"^n: expected an integer, got 2.0"),
    (lambda: prime_count(2**64), r"^n: expected n < 2\^64, got 18446744073709551616"),
    (lambda: count_primes(10, 5), r"^hi: expected hi >= lo, got lo 10 and hi 5"),
    (lambda: primes(-3, 5, device="cuda"), r"^lo: expected lo >= 0, got -3"),
    (lambda: count_primes(0, 2**64 + 1), r"^hi: expected hi <= 2\^64, got 18446744073709551617"),
])
def test_bad_input(call, match):
    with pytest.raises(ConfigError, match=match):
        call()


def test_the_door_is_what_loom_engine_exports():
    assert (prime_count, count_primes, primes) == (door.prime_count, door.count_primes, door.primes)

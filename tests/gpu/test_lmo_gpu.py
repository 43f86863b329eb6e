"""LMO prime counting on the GPU (loom/backend/cuda/lmo.py): its special sum is the NumPy reference's
integer for many x, y, segment sizes and block sizes (one wave and many), and pi(x) is right for the
known values up to 10^18 and for random x against the GPU sieve."""
import math
import random

import pytest

from loom import backend
from loom import engine as E
from loom.backend.cuda import lmo as cuda_lmo
from loom.engine import lmo

pytestmark = pytest.mark.gpu

SHAPES = [(20, 1024), (10, 32), (12, 128), (19, 512)]      # (log2 bits a segment, threads a block)
KNOWN = {10**13: 346065536839, 10**14: 3204941750802, 10**15: 29844570422669,
         10**16: 279238341033925, 10**17: 2623557157654233}


@pytest.fixture(scope="module")
def kernels():
    cp = backend.get("cuda").xp
    return {shape: cuda_lmo.Lmo(cp, *shape) for shape in SHAPES}


def _ys(x):
    root = lmo.icbrt(x)
    return [y for y in sorted({root + 1, lmo.default_y(x), min(4 * root, math.isqrt(x))})
            if y > root and y * y * (y + 1) >= x]


def test_special_sum_matches_the_reference(kernels):
    rng = random.Random(2026)
    xs = [8, 9, 27, 28, 100, 1000, 4096, 10**5, 10**6, 2**24, 10**7 + 19, 10**8, 10**9]
    xs += [rng.randrange(8, 10**9) for _ in range(12)]
    for x in xs:
        for y in _ys(x):
            plan = lmo.plan(x, y)
            want = lmo.special_reference(plan, 1 << 12)
            for shape, kernel in kernels.items():
                assert lmo.special_cuda(plan, kernel) == want, (x, y, shape)


def test_many_waves_give_the_same_sum(kernels, monkeypatch):
    monkeypatch.setattr(cuda_lmo, "TABLE_BYTES", 1 << 16)
    for x in (10**9, 123456789):
        plan = lmo.plan(x)
        want = lmo.special_reference(plan)
        for shape, kernel in kernels.items():
            assert lmo.special_cuda(plan, kernel) == want, (x, shape)


def test_random_x_against_the_gpu_sieve():
    rng = random.Random(11)
    for _ in range(10):
        x = rng.randrange(10**9, 10**12)
        assert lmo.prime_count(x, "cuda") == E.count_primes(0, x + 1, device="cuda"), x


@pytest.mark.parametrize("x", [pytest.param(x, marks=pytest.mark.smoke if x == 10**13 else ()) for x in sorted(KNOWN)],
                         ids=str)
def test_known_values(x):
    assert E.prime_count(x, device="cuda") == KNOWN[x]


@pytest.mark.slow
def test_pi_of_10_to_the_18():
    assert E.prime_count(10**18, device="cuda") == 24739954287740860


@pytest.mark.slow
def test_pi_at_the_top_of_the_range():
    """About 110 s on an H100; the value is OEIS A007053's pi(2^64), which primecount 8.7 also gives."""
    assert E.prime_count(2**64 - 1, device="cuda") == 425656284035217743


def test_kernel_shapes_are_checked():
    cp = backend.get("cuda").xp
    with pytest.raises(ValueError, match="threads must be a power of two in 32..1024, got 768"):
        cuda_lmo.Lmo(cp, 20, 768)
    with pytest.raises(ValueError, match="2\\^9 bits gives 32 threads less than a word each"):
        cuda_lmo.Lmo(cp, 9, 32)

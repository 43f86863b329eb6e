"""The one-pass scan kernels (loom/backend/cuda/scan.py): the exact one gives exact.cumsum's CPU bits
for float32 rows of every length around the tile size, past the look-back's 32-tile window, with
zeros of both signs, values that round to -0, infinities and NaNs, the same on every run; the float one
is as close to the float64 sums as float32 additions allow; shapes the kernels do not take go to
CuPy."""
import numpy as np
import pytest

from loom import backend, mode
from loom.kernels import exact, ops

from .cpu_gpu import same_bits

pytestmark = pytest.mark.gpu
cupy = pytest.importorskip("cupy")
scan = pytest.importorskip("loom.backend.cuda.scan")

TILE = scan.TILE
LENGTHS = [1, 2, 31, TILE - 1, TILE, TILE + 1, 3 * TILE + 17, 40 * TILE + 3, 97 * TILE]


def noisy(rng, shape, specials=True):
    x = (rng.standard_normal(shape) * np.exp2(rng.integers(-20, 20, shape))).astype(np.float32)
    flat = x.reshape(-1)
    if specials and flat.size > 8:
        flat[rng.integers(0, flat.size, 4)] = -0.0
        flat[rng.integers(0, flat.size, 4)] = 0.0
        flat[rng.integers(0, flat.size, 2)] = np.inf
        flat[rng.integers(0, flat.size, 1)] = -np.inf
        flat[rng.integers(0, flat.size, 1)] = np.nan
    return x


def exact_on_both(x):
    g = cupy.asarray(x)
    assert scan.takes(g, -1)
    return exact.cumsum(g, axis=-1), exact.cumsum(x, axis=-1)


@pytest.mark.parametrize("n", [pytest.param(n, marks=pytest.mark.smoke if n == 3 * TILE + 17 else ()) for n in LENGTHS])
def test_exact_scan_gives_the_cpus_bits(n):
    rng = np.random.default_rng(n)
    for specials in (False, True):
        gpu, cpu = exact_on_both(noisy(rng, n, specials))
        same_bits(gpu, cpu, f"exact scan n={n} specials={specials}")


@pytest.mark.parametrize("shape", [(3, 5), (7, TILE + 9), (2, 35 * TILE + 1), (1000, 300)])
def test_exact_scan_of_rows(shape):
    gpu, cpu = exact_on_both(noisy(np.random.default_rng(sum(shape)), shape))
    same_bits(gpu, cpu, f"exact scan of rows {shape}")


def test_zero_signs_infinities_and_nans():
    tiny = np.float32(1e-30)             # below the grid of a row holding 1: rounds to -0 when negative
    rows = np.array([[-0.0, -0.0, -tiny, -0.0, 0.0, 1.0],
                     [-tiny, 1.0, -1.0, -0.0, -tiny, 2.0],
                     [np.inf, 1.0, -np.inf, 2.0, 3.0, 4.0],
                     [-np.inf, -np.inf, 5.0, np.nan, 1.0, 1.0],
                     [0.0, -0.0, -0.0, -0.0, -0.0, -0.0]], dtype=np.float32)
    long = np.tile(rows, (1, 3 * TILE))          # the same mixtures met by the look-back
    for x in (rows, long):
        gpu, cpu = exact_on_both(x)
        same_bits(gpu, cpu, f"special values {x.shape}")
    gpu, _ = exact_on_both(rows)
    assert np.signbit(cupy.asnumpy(gpu)[0]).tolist() == [True, True, True, True, False, False]


def test_exact_scan_is_the_same_on_every_run():
    x = cupy.asarray(noisy(np.random.default_rng(3), 200 * TILE + 5))
    first = exact.cumsum(x)
    for _ in range(5):
        same_bits(exact.cumsum(x), cupy.asnumpy(first), "a second run")


@pytest.mark.parametrize("n", [1, TILE + 1, 60 * TILE + 7])
def test_float_scan_is_close_to_the_float64_sums(n):
    x = np.random.default_rng(n).standard_normal((2, n)).astype(np.float32)
    with mode.deterministic(False):
        got = ops.cumsum(cupy.asarray(x), axis=-1)
    assert isinstance(got, cupy.ndarray) and got.dtype == np.float32
    want = np.cumsum(x.astype(np.float64), axis=-1)
    bound = 2 * n * np.finfo(np.float32).eps * np.cumsum(np.abs(x.astype(np.float64)), axis=-1) + 1e-30
    err = np.abs(cupy.asnumpy(got) - want)
    assert (err <= bound).all(), f"largest error {err.max()} against a bound of {bound.max()}"


def test_other_shapes_go_to_cupy():
    cuda = backend.get("cuda")
    m = cupy.asarray(np.random.default_rng(5).standard_normal((64, 33)).astype(np.float32))
    for x, axis in ((m, 0), (m[:, ::2], 1), (m.astype(np.float64), 1), (m[:0], 1)):
        assert not scan.takes(x, axis)
        got = cuda.cumsum(x, axis)
        assert isinstance(got, cupy.ndarray) and got.shape == x.shape and got.dtype == x.dtype
        np.testing.assert_allclose(cupy.asnumpy(got), np.cumsum(cupy.asnumpy(x), axis=axis), rtol=1e-5, atol=1e-5)
    x = noisy(np.random.default_rng(6), (64, 33))
    gpu = exact.cumsum(cupy.asarray(x), axis=0)             # the float64 passes, the same bits
    same_bits(gpu, exact.cumsum(x, axis=0), "exact scan along axis 0")

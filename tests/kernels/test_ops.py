import math

import numpy as np
import pytest

from loom.kernels import ops


def test_erf_within_8_ulp_of_math_erf():
    x = np.concatenate([np.linspace(-7, 7, 20001), np.random.default_rng(0).normal(0, 2, 20000),
                        np.geomspace(1e-300, 1e-3, 200), [2.9999999999, 3.0, 3.0000000001]])
    ref = np.array([math.erf(v) for v in x])
    ulp = np.abs(ops.erf(x) - ref) / np.spacing(np.abs(ref))
    assert ulp.max() <= 8


def test_erf_special_values_and_float32():
    y = ops.erf(np.array([np.inf, -np.inf, np.nan, -0.0, 0.0, 40.0, -40.0]))
    assert y[0] == 1 and y[1] == -1 and np.isnan(y[2])
    assert y[3] == 0 and np.signbit(y[3]) and not np.signbit(y[4])
    assert y[5] == 1 and y[6] == -1
    x32 = np.linspace(-4, 4, 1001, dtype=np.float32)
    y32 = ops.erf(x32)
    assert y32.dtype == np.float32
    assert np.max(np.abs(y32 - np.array([math.erf(v) for v in x32.astype(np.float64)]))) < 1e-7


def test_sigmoid_and_softplus_do_not_overflow():
    x = np.array([-1000.0, -40.0, 0.0, 40.0, 1000.0])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        s = ops.sigmoid(x)
        sp = ops.softplus(x)
    np.testing.assert_allclose(s, [0.0, 1 / (1 + math.exp(40)), 0.5, 1 / (1 + math.exp(-40)), 1.0], rtol=1e-15)
    np.testing.assert_allclose(sp, [0.0, math.log1p(math.exp(-40)), math.log(2), 40 + math.log1p(math.exp(-40)), 1000.0],
                               rtol=1e-15)


@pytest.mark.parametrize("axis", [None, 0, 1, (0, 2), -1])
def test_mean_and_sum_match_numpy(axis):
    x = np.random.default_rng(1).normal(size=(3, 4, 5))
    np.testing.assert_allclose(ops.mean(x, axis=axis), np.mean(x, axis=axis), rtol=1e-14)
    np.testing.assert_allclose(ops.sum(x, axis=axis), np.sum(x, axis=axis), rtol=1e-14)
    assert ops.mean(x.astype(np.float32), axis=axis).dtype == np.float32


@pytest.mark.parametrize("count", [1, 3, 9, 12])
def test_stack_and_concatenate_written_into_one_array_equal_numpys(count):
    """ops.stack / ops.concatenate on a device copy each array into its slice of one new array (CuPy
    joins more than 8 arrays with a host-copied address table a recorded step refuses); that path,
    run with NumPy here, gives NumPy's arrays for every axis, and NumPy's own on the host."""
    rng = np.random.default_rng(count)
    same = [rng.standard_normal((4, 5)).astype(np.float32) for _ in range(count)]
    widths = [rng.standard_normal((4, k + 1)).astype(np.float32) for k in range(count)]
    for axis in (0, 1, 2, -1, -2, -3):
        np.testing.assert_array_equal(ops._joined(np, same, axis, True), np.stack(same, axis=axis))
    for axis in (1, -1):
        np.testing.assert_array_equal(ops._joined(np, widths, axis, False), np.concatenate(widths, axis=axis))
    np.testing.assert_array_equal(ops.stack(same, axis=1), np.stack(same, axis=1))
    np.testing.assert_array_equal(ops.concatenate(widths), np.concatenate(widths, axis=-1))


def test_joined_refuses_what_numpy_refuses():
    with pytest.raises(ValueError, match=r"same shape: \[4, 5\] and \[4, 1\]"):
        ops._joined(np, [np.zeros((4, 5)), np.zeros((4, 1))], 0, True)     # a slice assignment would broadcast
    with pytest.raises(ValueError, match="off the axis"):
        ops._joined(np, [np.zeros((4, 5)), np.zeros((3, 5))], 1, False)
    with pytest.raises(ValueError, match="out of bounds"):
        ops._joined(np, [np.zeros((4, 5))], 3, True)

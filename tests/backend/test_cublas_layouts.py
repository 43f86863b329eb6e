"""The cuBLAS operand mapping (op, leading dimension, batch stride) checked without a GPU: a NumPy
emulation reads each operand's memory exactly as cuBLAS would (column-major, with the given leading
dimension and batch stride) and must reproduce np.matmul for every layout the layers produce."""
import numpy as np
import pytest
from numpy.lib.stride_tricks import as_strided

from loom.backend.cuda import cublas


def _stored(op, ld, stride, x, rows, cols, count):
    """The matrices cuBLAS sees for one operand: [count, r, c] in column-major terms, op applied,
    returned in row-major terms (so that they equal the logical operand)."""
    item = x.itemsize
    if op == cublas._OP_N:        # stored: cols x rows, column-major, ld >= cols -> logical = its transpose
        mats = as_strided(x, (count, cols, rows), (stride * item, item, ld * item))
        return np.swapaxes(mats, 1, 2)
    mats = as_strided(x, (count, rows, cols), (stride * item, item, ld * item))   # stored rows x cols
    return mats


def _emulate(a, b):
    batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    count = int(np.prod(batch)) if batch else 1
    ops = [cublas._operand(np, x, batch) for x in (a, b)]
    (m, k), n = a.shape[-2:], b.shape[-1]
    A = _stored(*ops[0], m, k, count)
    B = _stored(*ops[1], k, n, count)
    return np.matmul(A, B).reshape(batch + (m, n))


def _layouts(rng, shape):
    """The same logical matrix stack as C order, a transposed view, a sliced view, a broadcast."""
    x = rng.standard_normal(shape)
    yield x
    yield np.swapaxes(np.ascontiguousarray(np.swapaxes(x, -1, -2)), -1, -2)   # F order in the last two
    big = rng.standard_normal(shape[:-1] + (shape[-1] + 3,))
    big[..., :shape[-1]] = x
    yield big[..., :shape[-1]]                                                   # padded rows (ld > cols)
    if len(shape) > 2:
        yield np.broadcast_to(x[:1], shape)                                      # batch stride 0


@pytest.mark.parametrize("ashape,bshape", [((5, 7), (7, 3)), ((1, 7), (7, 1)), ((4, 5, 7), (4, 7, 3)),
                                           ((2, 3, 5, 7), (2, 3, 7, 6)), ((2, 3, 5, 7), (7, 6)),
                                           ((6, 1), (1, 4)), ((3, 1, 5), (3, 5, 1))])
def test_operand_mapping_reproduces_matmul(ashape, bshape):
    rng = np.random.default_rng(0)
    for a in _layouts(rng, ashape):
        for b in _layouts(rng, bshape):
            np.testing.assert_allclose(_emulate(a, b), np.matmul(a, b), rtol=1e-12, atol=1e-12)


def test_non_uniform_batch_strides_are_copied():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 4, 5, 6))[:, :2]           # batch strides 120, 30: no single stride
    op, ld, stride, arr = cublas._operand(np, x, (3, 2))
    assert arr.flags.c_contiguous and stride == 30
    np.testing.assert_array_equal(arr, x)


def test_supports_only_float32_and_float64():
    f32, f64, i64 = (np.zeros((2, 2), d) for d in ("float32", "float64", "int64"))
    assert cublas.supports(f32, f32) and cublas.supports(f64, f64)
    assert not cublas.supports(f32, f64) and not cublas.supports(i64, i64)

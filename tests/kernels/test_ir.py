"""The kernel IR: typing rules, the NumPy lowering's semantics, and the CUDA C lowering's bits
(compiled for the host with g++ through cuda_prelude_c.h) against the NumPy lowering's."""
import math

import cuda_host
import numpy as np
import pytest

from loom.kernels import ir
from loom.kernels.ir import lower_cuda, lower_numpy


def run(fn, *arrays, **kw):
    return lower_numpy.evaluate(fn, *arrays, **kw)


# -- typing -----------------------------------------------------------------------------------
def test_python_constants_take_the_partner_type_and_f32_never_promotes():
    fn = ir.function("f", [ir.F32], lambda b, x: x * 0.1 + 1)
    mul = fn.results[0].args[0]
    assert fn.results[0].type == ir.F32 and mul.args[1].type == ir.F32
    assert mul.args[1].const_value() == np.float32(0.1)
    y = run(fn, np.array([1.0, 2.0], np.float32))
    assert y.dtype == np.float32
    assert np.array_equal(y, np.float32([1.0, 2.0]) * np.float32(0.1) + np.float32(1))


@pytest.mark.parametrize("build, words", [
    (lambda b, x, y: x + y, ["add", "f32", "f64"]),
    (lambda b, x, y: b.select(x < 0.0, x, y), ["select", "f32", "f64"]),
    (lambda b, x, y: x < y, ["lt", "f32", "f64"]),
])
def test_mixing_f32_and_f64_is_a_type_error_naming_the_op(build, words):
    with pytest.raises(TypeError) as err:
        ir.function("f", [ir.F32, ir.F64], build)
    assert all(w in str(err.value) for w in words)


@pytest.mark.parametrize("build", [
    lambda b, x: b.const(1.5, ir.I32),                       # float constant for an int type
    lambda b, x: x.convert(ir.I32) + 0.5,
    lambda b, x: x.bitcast(ir.I32),                          # width mismatch
    lambda b, x: x.convert(ir.BOOL),                         # compare instead
    lambda b, x: b.select(x, x, x),                          # condition must be bool
    lambda b, x: x.convert(ir.I64) << 64,                    # constant shift out of range
    lambda b, x: x & x,                                      # bit ops are for ints and bools
    lambda b, x: x.convert(ir.I64) / 2,                      # integer division is not an op
    lambda b, x: b.const(2 ** 31, ir.I32),                   # does not fit
])
def test_ill_typed_operations_raise(build):
    with pytest.raises(TypeError):
        ir.function("f", [ir.F64], build)


def test_a_value_has_no_truth_value():
    with pytest.raises(TypeError, match="select"):
        ir.function("f", [ir.F64], lambda b, x: x if x > 0 else -x)


def test_nodes_are_shared_and_constants_folded():
    def body(b, x):
        c = b.const(3.0, ir.F64) * 2.0 + 1.0           # folded to 7.0 at build time
        return (x + c) * (x + c)                        # x + c recorded once
    fn = ir.function("f", [ir.F64], body)
    ops = [n.op for n in fn.live_nodes()]
    assert ops.count("add") == 1 and ops.count("mul") == 1
    assert [n.const_value() for n in fn.live_nodes() if n.op == "const"] == [7.0]


def test_source_text_is_deterministic():
    def body(b, x):
        return b.select(x > 1.5, b.sqrt(x) * 3.0, -x) + x.bitcast(ir.I64).convert(ir.F64)
    a = lower_cuda.elementwise_kernel(ir.function("k", [ir.F64], body), "k")
    c = lower_cuda.elementwise_kernel(ir.function("k", [ir.F64], body), "k")
    assert a == c and "__dsqrt_rn" in a and "__dmul_rn" in a and "0x3ff8000000000000" in a


def test_wrong_argument_dtype_is_rejected():
    fn = ir.function("f", [ir.F32], lambda b, x: x + 1.0)
    with pytest.raises(TypeError, match="float64"):
        run(fn, np.zeros(3))


# -- NumPy lowering semantics -------------------------------------------------------------------
def test_float_to_int_truncates_saturates_and_maps_nan_to_zero():
    x = np.array([np.nan, np.inf, -np.inf, 3.99, -3.99, 2.0 ** 31, -2.0 ** 31 - 1, -2.0 ** 31, 1e300,
                  2.0 ** 63, -2.0 ** 63, -0.5, 5e9])
    got = run(ir.function("f", [ir.F64], lambda b, x: (x.convert(ir.I32), x.convert(ir.I64),
                                                       x.convert(ir.U32), x.convert(ir.U64))), x)
    i32, i64, u32, u64 = (np.iinfo(t) for t in (np.int32, np.int64, np.uint32, np.uint64))
    assert got[0].tolist() == [0, i32.max, i32.min, 3, -3, i32.max, i32.min, i32.min, i32.max,
                               i32.max, i32.min, 0, i32.max]
    assert got[1].tolist() == [0, i64.max, i64.min, 3, -3, 2 ** 31, -2 ** 31 - 1, -2 ** 31, i64.max,
                               i64.max, i64.min, 0, 5_000_000_000]
    assert got[2].tolist() == [0, u32.max, 0, 3, 0, 2 ** 31, 0, 0, u32.max, u32.max, 0, 0, u32.max]
    assert got[3].tolist() == [0, u64.max, 0, 3, 0, 2 ** 31, 0, 0, u64.max, 2 ** 63, 0, 0, 5_000_000_000]


def test_min_max_propagate_nan_and_rint_rounds_half_to_even():
    x = np.array([np.nan, 1.0, 2.5, -0.5, 3.5, -2.5, 0.0])
    y = np.array([1.0, np.nan, 2.0, -0.0, 4.0, -3.0, -0.0])
    lo, hi, r, f = run(ir.function("f", [ir.F64, ir.F64],
                                   lambda b, x, y: (b.min(x, y), b.max(x, y), b.rint(x), b.floor(x))), x, y)
    assert np.isnan(lo[:2]).all() and np.isnan(hi[:2]).all()
    assert lo[2:5].tolist() == [2.0, -0.5, 3.5] and hi[2:5].tolist() == [2.5, -0.0, 4.0]
    assert np.signbit(lo[6]) and np.signbit(hi[6])          # equal operands: the second one
    assert r[1:6].tolist() == [1.0, 2.0, -0.0, 4.0, -2.0] and np.signbit(r[3])
    assert f[1:6].tolist() == [1.0, 2.0, -1.0, 3.0, -3.0]


def test_integer_ops_wrap_and_value_shifts_are_masked():
    def body(b, x, s):
        return x + (2 ** 31 - 1), x * x, -x, x << s, x >> s, x.bitcast(ir.U32) >> s.bitcast(ir.U32)
    x = np.array([1, -1, 2 ** 31 - 1, -2 ** 31], np.int32)
    s = np.array([1, 33, 31, 0], np.int32)
    add, mul, neg, shl, shr, shru = run(ir.function("f", [ir.I32, ir.I32], body), x, s)
    with np.errstate(over="ignore"):
        assert add.tolist() == (x + np.int32(2 ** 31 - 1)).tolist()
        assert mul.tolist() == (x * x).tolist() and neg.tolist() == (-x).tolist()
    assert shl.tolist() == [2, -2, -2 ** 31, -2 ** 31]     # 33 & 31 = 1
    assert shr.tolist() == [0, -1, 0, -2 ** 31]
    assert shru.tolist() == [0, 2 ** 31 - 1, 0, 2 ** 31]


def test_bitcasts_and_exact_conversions():
    x = np.array([1.0, -0.0, np.inf, 2.0 ** -1074, 16777217.0])
    bits, back, f32, i = run(ir.function("f", [ir.F64], lambda b, x: (
        x.bitcast(ir.U64), x.bitcast(ir.I64).bitcast(ir.F64), x.convert(ir.F32),
        x.convert(ir.I64).convert(ir.F32))), x)
    assert bits.tolist() == x.view(np.uint64).tolist()
    assert back.view(np.uint64).tolist() == x.view(np.uint64).tolist()
    assert f32.tolist() == x.astype(np.float32).tolist()      # 16777217 rounds to even
    assert i[-1] == np.float32(16777216.0)


def test_chunked_evaluation_gives_the_same_bits():
    fn = ir.function("f", [ir.F64, ir.F64], lambda b, x, y: b.sqrt(b.abs(x)) * y - x / (y + 1.5))
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(300, 70)), rng.normal(size=(1, 70))
    whole = run(fn, x, y, chunk=0)
    assert whole.shape == (300, 70)
    assert np.array_equal(run(fn, x, y, chunk=1000).view(np.uint64), whole.view(np.uint64))


# -- CUDA C lowering, compiled for the host ------------------------------------------------------
def _all_ops(b, x, y):
    """One expression using every node kind, on f64 inputs (and their f32/int images)."""
    i = x.bitcast(ir.I64)
    u = y.bitcast(ir.U64)
    s = (i & 63).convert(ir.I64)
    ints = ((i << s) ^ (i >> 3)) | (u.bitcast(ir.I64) >> s)
    ints = ints + (i * 3) - (-i)
    uints = (u >> s.bitcast(ir.U64)) + (u << 2)
    xf = x.convert(ir.F32)
    yf = y.convert(ir.F32)
    f32 = b.sqrt(b.abs(xf)) / (yf * yf + 1.0) - b.rint(xf) + b.floor(yf)
    f32 = b.select((xf < yf) & ~(xf == yf) | (xf >= 2.0), f32, b.max(xf, yf) - b.min(xf, yf))
    f64 = b.sqrt(b.abs(x)) / (y * y + 1.0) - b.rint(x) + b.floor(y) + (x != y).convert(ir.F64)
    i32 = x.convert(ir.I32) + xf.convert(ir.I32) + (xf.convert(ir.U32)).bitcast(ir.I32)
    return (f64 + f32.convert(ir.F64) + ints.convert(ir.F64) + uints.convert(ir.F64)
            + i32.convert(ir.F64) + x.convert(ir.U64).convert(ir.F32).convert(ir.F64)
            + (i32.convert(ir.F32) * xf).convert(ir.F64) + b.abs(i32).convert(ir.F64)
            + (x <= y).convert(ir.I32).convert(ir.F64) + (x > y).convert(ir.F64) - b.isinf(y).convert(ir.F64),
            f32 + i32.convert(ir.F32))


@pytest.fixture(scope="module")
def host_ops(tmp_path_factory):
    if cuda_host.COMPILER is None:
        pytest.skip("g++ not available")
    fn = ir.function("all_ops", [ir.F64, ir.F64], _all_ops)
    lib = cuda_host.build([lower_cuda.elementwise_kernel(fn, "all_ops")], tmp_path_factory.mktemp("ir"))
    return fn, lib


def test_every_op_lowers_to_cuda_c_with_identical_bits(host_ops):
    fn, lib = host_ops
    rng = np.random.default_rng()
    n = 100_000
    x = rng.integers(0, 2 ** 64, n, dtype=np.uint64).view(np.float64)
    x[: n // 2] = rng.normal(0, 1e3, n // 2)
    x[::97] = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 2.5, -2.5, 5e-324, 3e9, -1e19])[
        np.arange(x[::97].size) % 10]
    y = rng.permutation(x)
    want = run(fn, x, y)
    got = cuda_host.call(lib, "all_ops", [x, y], [np.float64, np.float32])
    for g, w, bits in zip(got, want, (np.uint64, np.uint32)):
        # NaN payloads are not part of the IR's meaning (hardware picks them); mathlib canonicalizes
        assert np.array_equal(np.isnan(g), np.isnan(w))
        keep = ~np.isnan(w)
        assert np.array_equal(g[keep].view(bits), w[keep].view(bits))


def test_fold_matches_evaluation():
    fn = ir.function("f", [ir.F64], lambda b, x: (x * math.pi + 1e-17) / 3.0)
    folded = ir.function("g", [ir.F64], lambda b, x: x * 0.0 + (b.const(2.0, ir.F64) * math.pi + 1e-17) / 3.0)
    assert run(folded, np.zeros(1))[0] == run(fn, np.array([2.0]))[0]

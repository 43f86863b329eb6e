"""Exact GEMM and sums (deterministic mode): order independence, accuracy against float64, IEEE
special values, shapes as NumPy's."""
import math
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import loom
from loom.backend.cpu import CPU, exact_jit
from loom.backend.cpu import exact as exact_cpu
from loom.kernels import exact, ops
from loom.kernels.exact import dispatch as exact_dispatch

RNG = np.random.default_rng(20261121)


def _wide(shape):
    return RNG.standard_normal(shape) * np.exp2(RNG.integers(-20, 21, shape))


GENERATORS = {"normal": RNG.standard_normal, "uniform": RNG.random, "wide": _wide}


def _err(c, ref):
    return np.max(np.abs(c.astype(np.float64) - ref)) / np.max(np.abs(ref))


def _bits(x):
    return np.ascontiguousarray(x).view(np.uint8).tobytes()


@pytest.mark.parametrize("kind", sorted(GENERATORS))
@pytest.mark.parametrize("k", [1, 9, 784, 4096])
def test_gemm_is_at_least_half_as_accurate_as_float32_blas(kind, k, cpu_path):
    a = GENERATORS[kind]((48, k)).astype(np.float32)
    b = GENERATORS[kind]((k, 40)).astype(np.float32)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    assert _err(exact.matmul(a, b), ref) <= 2 * max(_err(a @ b, ref), np.finfo(np.float32).eps / 2)


def test_float64_gemm_is_as_accurate_as_float64_blas():
    a, b = RNG.standard_normal((30, 500)), _wide((500, 20))
    ref = a.astype(np.longdouble) @ b.astype(np.longdouble)
    got = exact.matmul(a, b)
    assert got.dtype == np.float64
    assert _err(got, ref) <= 2 * max(_err(a @ b, ref), np.finfo(np.float64).eps)


def test_gemm_bits_do_not_depend_on_summation_order(cpu_path):
    a = _wide((33, 300)).astype(np.float32)
    b = RNG.standard_normal((300, 17)).astype(np.float32)
    want = exact.matmul(a, b)
    perm = RNG.permutation(300)
    assert _bits(exact.matmul(a[:, perm], b[perm])) == _bits(want)            # shuffled K
    assert _bits(exact.matmul(a[::-1], b)[::-1]) == _bits(want)                 # reversed rows
    halves = np.concatenate([exact.matmul(a[:10], b), exact.matmul(a[10:], b)])
    assert _bits(halves) == _bits(want)                                         # another batch split
    assert _bits(exact.matmul(a, b[:, 5:])) == _bits(want[:, 5:])               # a column split


def test_gemm_bits_do_not_depend_on_the_blas(monkeypatch, cpu_path):
    """A float64 GEMM adding its products in the opposite order gives the same bits."""
    a = RNG.standard_normal((9, 70)).astype(np.float32)
    b = _wide((70, 6)).astype(np.float32)
    want = exact.matmul(a, b)

    def reversed_order_matmul(x, y, out=None):
        prod = x[..., :, :, None] * y[..., None, :, :]            # [.., M, K, N] exact products
        total = np.zeros(prod.shape[:-3] + (x.shape[-2], y.shape[-1]))
        for k in reversed(range(x.shape[-1])):
            total = total + prod[..., k, :]
        return total
    monkeypatch.setattr(CPU, "matmul", reversed_order_matmul, raising=False)
    assert _bits(exact.matmul(a, b)) == _bits(want)


def test_gemm_bits_do_not_depend_on_blas_threads():
    code = ("import hashlib, numpy as np; from loom.kernels import exact; r = np.random.default_rng(3); "
            "a = r.standard_normal((256, 784)).astype(np.float32); b = r.standard_normal((784, 256)).astype(np.float32); "
            "print(hashlib.sha256(exact.matmul(a, b).tobytes()).hexdigest())")
    outs = set()
    for threads in ("1", "2"):
        env = {**os.environ, "OPENBLAS_NUM_THREADS": threads, "OMP_NUM_THREADS": threads}
        outs.add(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                check=True).stdout)
    assert len(outs) == 1


def test_gemm_shapes_and_broadcasting_match_numpy():
    cases = [((5,), (5,)), ((5,), (5, 3)), ((4, 5), (5,)), ((2, 4, 5), (5, 3)), ((4, 5), (3, 5, 2)),
             ((2, 1, 4, 5), (3, 5, 2)), ((0, 5), (5, 3)), ((4, 0), (0, 3))]
    for sa, sb in cases:
        a, b = RNG.standard_normal(sa).astype(np.float32), RNG.standard_normal(sb).astype(np.float32)
        got, ref = exact.matmul(a, b), np.matmul(a, b)
        assert np.shape(got) == ref.shape and np.asarray(got).dtype == ref.dtype, (sa, sb)
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    out = np.empty((4, 3), np.float32)
    a, b = RNG.standard_normal((4, 5)).astype(np.float32), RNG.standard_normal((5, 3)).astype(np.float32)
    assert exact.matmul(a, b, out=out) is out and _bits(out) == _bits(exact.matmul(a, b))
    ints = np.arange(6).reshape(2, 3)
    assert np.array_equal(exact.matmul(ints, ints.T), ints @ ints.T)


def test_gemm_is_exact_where_float32_products_sum_exactly():
    a = RNG.integers(-1000, 1000, (20, 64)).astype(np.float32)
    b = RNG.integers(-1000, 1000, (64, 8)).astype(np.float32)
    assert np.array_equal(exact.matmul(a, b), (a.astype(np.int64) @ b.astype(np.int64)).astype(np.float32))


@pytest.mark.parametrize("dtype, chunk_bits", [(np.float32, None), (np.float64, None), (np.float32, 1)])
def test_gemm_special_values_follow_ieee(dtype, chunk_bits, monkeypatch, cpu_path):
    if chunk_bits is not None:
        monkeypatch.setattr(exact_dispatch, "CHUNK_BITS", chunk_bits)     # the chunked general path
    a = RNG.standard_normal((6, 5)).astype(dtype)
    b = RNG.standard_normal((5, 4)).astype(dtype)
    a[1, 2], a[2, 0], a[3, 1], a[3, 3] = np.inf, np.nan, np.inf, -np.inf
    b[2, 1] = 0.0
    b[4, 3] = -np.inf
    ref = a.astype(np.float64) @ b.astype(np.float64)
    got = exact.matmul(a, b)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    np.testing.assert_array_equal(np.isposinf(got), np.isposinf(ref))
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(ref))
    finite = np.isfinite(ref)
    # the scheme's own error bound: b rounded to 24 bits of its column's largest finite magnitude, a
    # to twice bits_a of its row's (negligible here), then one rounding of the result
    a64, b64 = np.where(np.isfinite(a), a, 0).astype(np.float64), np.where(np.isfinite(b), b, 0).astype(np.float64)
    eps = np.finfo(np.float32).eps
    bound = eps / 2 * (np.abs(a64) @ np.broadcast_to(np.abs(b64).max(axis=0), b.shape)) + eps / 2 * np.abs(ref)
    assert np.all(np.abs(got[finite] - ref[finite]) <= bound[finite])
    assert finite.any() and (~finite).any()


def test_gemm_long_k_is_summed_in_chunks(monkeypatch):
    monkeypatch.setattr(exact_dispatch, "CHUNK_BITS", 6)          # chunks of 64 over K = 300
    a = RNG.standard_normal((7, 300)).astype(np.float32)
    b = RNG.standard_normal((300, 5)).astype(np.float32)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    assert _err(exact.matmul(a, b), ref) <= 2 * _err(a @ b, ref) + 1e-7


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("axis", [None, 0, 1, -1, (0, 2)])
def test_sum_matches_numpy_shapes_and_is_accurate(dtype, axis):
    x = _wide((6, 50, 7)).astype(dtype)
    for keepdims in (False, True):
        got = exact.sum(x, axis=axis, keepdims=keepdims)
        ref = np.sum(x.astype(np.longdouble), axis=axis, keepdims=keepdims)
        assert np.shape(got) == np.shape(ref) and got.dtype == dtype
        tol = np.finfo(dtype).eps * np.max(np.sum(np.abs(x.astype(np.longdouble)), axis=axis, keepdims=keepdims))
        assert np.max(np.abs(got - ref)) <= tol


def test_sum_bits_do_not_depend_on_order():
    x = _wide((40, 1000)).astype(np.float32)
    want = exact.sum(x, axis=1)
    assert _bits(exact.sum(x[:, RNG.permutation(1000)], axis=1)) == _bits(want)
    assert _bits(exact.sum(x.T, axis=0)) == _bits(want)
    assert _bits(exact.sum(x.T.copy(), axis=0)) == _bits(want)


def test_sum_is_exact_where_the_true_sum_is_representable():
    x = np.array([1e8, 1.0, -1e8, 1.0, 2.0**-20], np.float32)
    assert exact.sum(x) == np.float32(2.0 + 2.0**-20)              # float32 left to right loses the ones


def test_sum_special_values():
    x = np.array([[1, np.inf, 2], [np.inf, -np.inf, 0], [np.nan, 1, 1], [3e38, 3e38, -np.inf],
                  [3e38, 3e38, 0]], np.float32)
    got = exact.sum(x, axis=1)
    assert got[0] == np.inf and np.isnan(got[1]) and np.isnan(got[2]) and got[3] == -np.inf
    assert got[4] == np.inf                                          # 6e38 rounds to float32 inf


def test_cumsum_is_exact_and_order_free():
    x = _wide((5, 200)).astype(np.float32)
    got = exact.cumsum(x, axis=1)
    ref = np.cumsum(x.astype(np.longdouble), axis=1)
    assert got.dtype == np.float32 and got.shape == x.shape
    # one rounding to float32, plus each element's rounding to 53 - 8 bits of its row's maximum
    grid = np.exp2(-45.0) * np.max(np.abs(x), axis=1, keepdims=True) * np.arange(1, 201)
    assert np.all(np.abs(got - ref) <= np.finfo(np.float32).eps / 2 * np.abs(ref) + grid)
    y = x.copy()
    y[2, 7] = np.inf
    got = exact.cumsum(y, axis=1)
    assert np.all(np.isfinite(got[2, :7])) and np.all(got[2, 7:] == np.inf) and np.isfinite(got[3]).all()


def test_ops_use_exact_sums_in_deterministic_mode_only(monkeypatch):
    calls = []
    monkeypatch.setattr(CPU, "matmul", lambda a, b, out=None: calls.append(a.dtype) or np.matmul(a, b), raising=False)
    a = RNG.standard_normal((3, 4)).astype(np.float32)
    assert loom.is_deterministic()
    d = ops.matmul(a, a.T)
    assert calls == [np.float64]                                     # the integer slices, one GEMM
    with loom.deterministic(False):
        assert not loom.is_deterministic()
        f = ops.matmul(a, a.T)
        assert calls == [np.float64, np.float32]
        with loom.deterministic(True):
            assert loom.is_deterministic()
    assert loom.is_deterministic()
    # fast mode's float32 sums err by up to about K u sum|a_k b_k| (~1e-6 here): an entry that cancels
    # to 0.017 differed by 2.4e-6 relative on some draws of the module's RNG (the order xdist runs in)
    np.testing.assert_allclose(d, f, rtol=1e-6, atol=1e-5)


def test_mode_is_per_thread_and_checked():
    seen = []
    with loom.deterministic(False):
        t = threading.Thread(target=lambda: seen.append(loom.is_deterministic()))
        t.start()
        t.join()
        assert not loom.is_deterministic()
    assert seen == [True]
    with pytest.raises(TypeError, match="True or False"):
        with loom.deterministic("fast"):
            pass


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_index_add_is_exact_and_order_free(dtype):
    rows = _wide((300, 6)).astype(dtype)
    ids = RNG.integers(0, 5, 300)
    dst = RNG.standard_normal((5, 6)).astype(dtype)
    got = dst.copy()
    exact.index_add(got, ids, rows)
    perm = RNG.permutation(300)
    again = dst.copy()
    exact.index_add(again, ids[perm], rows[perm])
    assert _bits(got) == _bits(again)
    ref = dst.astype(np.longdouble)
    np.add.at(ref, ids, rows.astype(np.longdouble))
    scale = np.abs(dst) + np.max(np.abs(rows), axis=0)
    assert np.all(np.abs(got - ref) <= 2 * np.finfo(dtype).eps * scale)
    rows[3, 2], rows[7, 2] = np.inf, -np.inf
    got = dst.copy()
    exact.index_add(got, ids, rows)
    want_nan = ids[3] == ids[7]
    assert np.isnan(got[ids[3], 2]) == want_nan and np.isfinite(np.delete(got, 2, axis=1)).all()


# The slice scheme (float32 with K > 2048, and float64): the CPU kernels (exact_cpu) against the
# reference arithmetic, step by step, bit for bit. Small K keeps these fast: the scheme is the same.

def _reference_narrow(a, b):
    """exact._matmul_narrow's reference arithmetic for float32 a, b (K <= 2^14), one step a line."""
    amax = np.maximum(a.max(axis=-1, keepdims=True), -a.min(axis=-1, keepdims=True))
    bmax = np.maximum(b.max(axis=-2, keepdims=True), -b.min(axis=-2, keepdims=True))
    bits_a, shift_a, shift_b, row_scale, col_scale = exact_cpu.narrow_scales(amax, bmax, exact.narrow_bits(a.shape[-1]))
    s = np.ldexp(a, shift_a)
    hi = np.rint(s).astype(np.float64)
    lo = np.rint((s - hi) * 2.0 ** bits_a)
    b_int = np.rint(np.ldexp(b, shift_b)).astype(np.float64)
    acc = np.matmul(lo, b_int) * 2.0 ** -bits_a + np.matmul(hi, b_int)        # the one rounding
    return ((acc * row_scale) * col_scale).astype(np.float32)


def _sliced(a, b):
    return exact._matmul_sliced(CPU, a, b, np.float32)


def _rows_of_every_range(shape):
    """normal values, each row scaled by its own power of two from subnormal to near float32's max,
    with a zero row and a row of negative zeros"""
    x = RNG.standard_normal(shape) * np.exp2(RNG.integers(-160, 127, shape[:-1] + (1,)).astype(np.float64))
    with np.errstate(over="ignore"):
        x = np.clip(x, -3e38, 3e38).astype(np.float32)
    x[..., 0, :] = 0.0
    x[..., 1, :] = -0.0
    return x


@pytest.mark.parametrize("shapes", [((40, 300), (300, 30)),    # scales applied to the product
                                    ((120, 3), (3, 70)),       # folded into the slices (output largest)
                                    ((2, 9, 40), (40, 12)), ((3, 1, 6, 20), (2, 20, 50))])
@pytest.mark.parametrize("data", ["normal", "rows", "columns"])
@pytest.mark.parametrize("layout", ["C", "F"])
def test_cpu_gemm_has_the_reference_bits(shapes, data, layout, cpu_path):
    sa, sb = shapes
    a, b = RNG.standard_normal(sa).astype(np.float32), RNG.standard_normal(sb).astype(np.float32)
    if data == "rows":
        a = _rows_of_every_range(sa)
    if data == "columns":                   # per-column ranges of b, wide values in a
        b = np.swapaxes(_rows_of_every_range(sb[:-2] + (sb[-1], sb[-2])), -1, -2).copy()
        a = _wide(sa).astype(np.float32)
    if layout == "F" and a.ndim == 2:       # transposed views, as x.T @ dy and x @ W.T pass them
        a, b = np.asfortranarray(a), np.asfortranarray(b)
    with np.errstate(over="ignore"):
        assert _bits(_sliced(a, b)) == _bits(_reference_narrow(a, b))


@pytest.mark.parametrize("edge, folded", [("normal", True), ("tiny rows", False), ("largest float32", False),
                                          ("small columns", True), ("tiny columns", False)])
def test_cpu_gemm_keeps_the_reference_bits_at_the_edges_of_float32(edge, folded, cpu_path):
    """The output is the largest array here, so the scales go into the slices where those stay
    float32s: not where lo's unit 2^(e - 2 bits_a) is below 2^-149, nor where hi rounds up to 2^128
    (bits_a = 23 for K = 64), nor where a column's unit 2^-shift_b is below 2^-149."""
    a, b = RNG.standard_normal((300, 64)).astype(np.float32), RNG.standard_normal((64, 300)).astype(np.float32)
    if edge == "tiny rows":                 # every row's maximum in [2^-105, 2^-104)
        a = (a * 2.0 ** -108).astype(np.float32)
        a[:, 0] = 0.75 * 2.0 ** -104
    if edge == "largest float32":
        a[5, 1] = np.finfo(np.float32).max
    if edge == "small columns":             # units 2^-135 or so: subnormal, still float32s
        b = (b * 2.0 ** -112).astype(np.float32)
    if edge == "tiny columns":
        b = (b * np.exp2(RNG.integers(-140, -120, (1, 300)).astype(np.float64))).astype(np.float32)
    amax = exact._absmax(CPU, a, -1)
    bmax = exact._absmax(CPU, b, -2)
    bits_a, shift_a, shift_b, _, _ = exact_cpu.narrow_scales(amax, bmax, exact.narrow_bits(64))
    assert exact_cpu._foldable(a, b, bits_a, shift_a, shift_b) == folded
    with np.errstate(over="ignore"):
        assert _bits(_sliced(a, b)) == _bits(_reference_narrow(a, b))


@pytest.mark.parametrize("layout_a, layout_b", [("C", "C"), ("F", "F"), ("C", "F"), ("F", "C")])
def test_compiled_loops_give_the_numpy_passes_bits(layout_a, layout_b, monkeypatch):
    """exact_jit against exact_cpu's NumPy passes on fresh shapes and ranges: subnormal to near
    float32's maximum per row and column, zero and negative-zero rows, K = 1 to 2^14, one-row and
    one-column products, both folded and scaled products."""
    if not exact_jit.available():
        pytest.skip("numba is not installed (the loom[cpu] extra)")
    taken = []
    original = exact_cpu.matmul_2d

    def spy(*args):
        result = original(*args)
        taken.append(result is not None)
        return result
    monkeypatch.setattr(exact_cpu, "matmul_2d", spy)
    for m, k, n in [(1, 1, 1), (7, 1, 300), (300, 3, 200), (33, 784, 17), (1, 500, 40), (40, 500, 1),
                    (5, 1 << 14, 3), (64, 64, 300)]:
        for data in ("normal", "rows", "columns"):
            a = RNG.standard_normal((m, k)).astype(np.float32)
            b = RNG.standard_normal((k, n)).astype(np.float32)
            if data == "rows" and m > 2:
                a = _rows_of_every_range((m, k))
            if data == "columns" and n > 2:
                b = _rows_of_every_range((n, k)).T.copy()
            a = np.asfortranarray(a) if layout_a == "F" else np.ascontiguousarray(a)
            b = np.asfortranarray(b) if layout_b == "F" else np.ascontiguousarray(b)
            with np.errstate(over="ignore"):
                monkeypatch.setenv("LOOM_JIT", "1")
                got = _sliced(a, b)
                monkeypatch.setenv("LOOM_JIT", "0")
                want = _sliced(a, b)
            assert _bits(got) == _bits(want), (m, k, n, data)
    assert taken == [True, False] * 8 * 3          # the compiled loops ran, then the NumPy passes


def test_cpu_gemm_results_are_fresh_arrays_and_threads_share_nothing(cpu_path):
    a, b = RNG.standard_normal((30, 50)).astype(np.float32), RNG.standard_normal((50, 20)).astype(np.float32)
    c, d = RNG.standard_normal((30, 50)).astype(np.float32), RNG.standard_normal((50, 20)).astype(np.float32)
    first = exact.matmul(a, b)
    kept = first.copy()
    second = exact.matmul(c, d)                  # the same scratch memory, reused
    assert _bits(first) == _bits(kept) and not np.shares_memory(first, second)
    want = {i: _bits(exact.matmul(a * (i + 1), b)) for i in range(4)}
    got = {}

    def work(i):
        for _ in range(20):
            got.setdefault(i, set()).add(_bits(exact.matmul(a * (i + 1), b)))
    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == {i: {want[i]} for i in range(4)}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", [(40, 30), (300, 200)])        # |x|'s maximum, and the bit patterns'
def test_cpu_absmax_matches_max_and_min(dtype, size, cpu_path):
    x = _wide(size).astype(dtype)
    x[0] = -0.0
    x[1, :5] = [np.inf, -1.0, 0.0, 1e-45, -3.0]
    x[2, 3] = -np.inf
    x[3, 7] = np.nan
    x[4, 9] = -np.nan
    x[5] = -np.abs(x[5])                          # negative values only
    x[6, :] = np.finfo(dtype).smallest_subnormal
    for axis in (-1, -2):
        want = np.maximum(x.max(axis=axis, keepdims=True), -x.min(axis=axis, keepdims=True))
        got = exact_cpu.absmax(x, axis)
        assert got.dtype == dtype and np.array_equal(got, want, equal_nan=True)


@pytest.mark.parametrize("axis", [None, 0, 1, (0, 2)])
def test_cpu_float32_sum_has_the_general_paths_bits(axis):
    x = _rows_of_every_range((6, 50, 40))
    x[2, :, 5] = RNG.standard_normal(50).astype(np.float32) * 1e-30
    axes = tuple(range(3)) if axis is None else (axis if isinstance(axis, tuple) else (axis,))
    bits = 53 - exact._log2_ceil(math.prod(x.shape[i] for i in axes))
    with np.errstate(over="ignore"):
        want = exact._sum_general(CPU, x, axes, bits).astype(np.float32)
        got = exact.sum(x, axis=axis, keepdims=True)
    assert _bits(got) == _bits(want)
    x[1, 3, 4] = np.inf                           # the general path's special values
    with np.errstate(over="ignore"):
        assert np.isinf(exact.sum(x, axis=1)[1, 4])


def test_cpu_kernels_leave_numpys_buffer_size_as_they_found_it():
    a = RNG.standard_normal((40, 600)).astype(np.float32)       # rows long enough to cut the buffer
    before = np.getbufsize()
    exact.matmul(a, a.T)
    exact.sum(a, axis=1)
    assert np.getbufsize() == before


@pytest.mark.parametrize("layout", ["C", "F"])
@pytest.mark.parametrize("axis", [None, 0, 1])
def test_compiled_sums_give_the_numpy_passes_bits(layout, axis, monkeypatch):
    if not exact_jit.available():
        pytest.skip("numba is not installed (the loom[cpu] extra)")
    for shape in [(1, 1), (1, 300), (300, 1), (33, 257)]:
        for x in (_rows_of_every_range(shape) if shape[0] > 2 else RNG.standard_normal(shape).astype(np.float32),
                  _rows_of_every_range(shape[::-1]).T.copy() if shape[1] > 2 else _wide(shape).astype(np.float32)):
            x = np.asfortranarray(x) if layout == "F" else np.ascontiguousarray(x)
            axes = (0, 1) if axis is None else (axis,)
            bits = 53 - exact._log2_ceil(math.prod(x.shape[i] for i in axes))
            got = exact_jit.sum_float32(x, axes, bits)
            monkeypatch.setenv("LOOM_JIT", "0")
            want = exact_cpu.sum_float32(x, axes, bits)
            monkeypatch.setenv("LOOM_JIT", "1")
            assert got is not None and got.shape == want.shape and _bits(got) == _bits(want), (shape, axis)
    x = RNG.standard_normal((5, 7)).astype(np.float32)
    x[2, 3] = np.nan
    assert exact_jit.sum_float32(x, (1,), 50) is None          # the general path handles specials


@pytest.mark.parametrize("n", [1, 7, 576, 2048, 3000])
def test_compiled_rms_rows_give_the_array_codes_bits(n):
    """exact_jit.rms_rows (deterministic CPU decode steps' RMSNorms) against fused.rms_norm in
    deterministic mode: rows of normal, tiny, huge, subnormal and zero values; a row whose square is
    inf or NaN is refused (the caller runs the array code)."""
    if not exact_jit.available():
        pytest.skip("numba is not installed (the loom[cpu] extra)")
    rng = np.random.default_rng(n)
    x = (rng.standard_normal((6, n)) * np.array([[1], [1e-20], [3e18], [1e-41], [0], [1]])).astype(np.float32)
    x[5, :4] = np.array([1e-30, 0.0, 2.5e7, -1e-38], np.float32)[:n]
    weight = (1 + 0.1 * rng.standard_normal(n)).astype(np.float32)
    out = np.empty_like(x)
    assert exact_jit.rms_rows(x, weight, 1e-5, out)
    with loom.deterministic(True):
        assert _bits(out) == _bits(loom.kernels.fused.rms_norm(x, weight, 1e-5)[0])
    for bad in (np.inf, np.nan, 3e20):
        y = x.copy()
        y[2, n // 2] = bad
        assert not exact_jit.rms_rows(y, weight, 1e-5, np.empty_like(y))


def test_padded_sums_take_their_bits_from_their_nonzero_terms():
    """1 + 2^-24 + 2^-50: the last term decides the rounding of a tie. Summed alone (3 terms, 51 bits)
    it is kept; padded with zeros to 16 terms (49 bits) the plain scheme rounds it away and the total
    ties to even, while a padded sum still sizes its bits for its 3 nonzero terms."""
    row = np.array([1.0, 2.0 ** -24, 2.0 ** -50], np.float32)
    wide = np.zeros((2, 16), np.float32)
    wide[0, 5:8], wide[1, :3] = row, row[::-1]
    alone = exact.sum(row[None], axis=-1)
    assert alone[0] == np.float32(1 + 2.0 ** -23)
    assert exact.sum(wide, axis=-1)[0] == np.float32(1.0)            # the padding changed the bits
    got = exact.sum(wide, axis=-1, padded=True)
    assert got.view(np.uint32).tolist() == [alone.view(np.uint32)[0]] * 2
    assert exact.sum(wide, axis=-1, keepdims=True, padded=True).shape == (2, 1)
    wide64 = wide.astype(np.float64)
    wide64[0, 9] = 2.0 ** -80                                       # float64: two slices, still exact
    assert exact.sum(wide64, axis=-1, padded=True)[0] == 1 + 2.0 ** -24 + 2.0 ** -50 + 2.0 ** -80


def test_padded_sums_keep_special_values():
    x = np.array([[1.0, np.inf, 0, 0], [np.nan, 1.0, 0, 0], [0, 0, 0, 0]], np.float32)
    got = exact.sum(x, axis=-1, padded=True)
    assert got[0] == np.inf and np.isnan(got[1]) and got[2] == 0 and not np.signbit(got[2])

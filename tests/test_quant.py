"""Quantization (loom/kernels/quant/affine.py) against references written out independently in this file."""
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import loom
from loom import dtypes
from loom.formats import safetensors
from loom.kernels.quant import affine as quant

NAMES = list(dtypes.TABLE)
INTS = [n for n, r in dtypes.TABLE.items() if r.kind in ("int", "uint")]
SCALED_FLOATS = ["fp8_e4m3", "fp8_e5m2", "fp4_e2m1"]
SMALL_FLOATS = ["float16", "bfloat16"] + SCALED_FLOATS
RNG = np.random.default_rng(7)


def row(name):
    return dtypes.TABLE[name]


# --- float rounding oracle: every finite value of the type, nearest by exact fractions ---------

_GRIDS = {}


def _grid(name):
    if name not in _GRIDS:
        r = row(name)
        codes = np.arange(2 ** r.bits, dtype=np.uint16 if r.bits == 16 else np.uint8)
        with np.errstate(invalid="ignore"):       # NaN codes
            vals = codes.view(r.numpy).astype(np.float64)
        ok = np.isfinite(vals)
        even = {float(v): int(c) % 2 == 0 for v, c in zip(vals[ok], codes[ok])}
        _GRIDS[name] = (np.array(sorted(even)), even)
    return _GRIDS[name]


def oracle(x, name):
    """Round-half-even of float64 x onto the finite values of `name`, saturating."""
    grid, even = _grid(name)
    out = []
    for v in np.clip(np.asarray(x, np.float64).reshape(-1), grid[0], grid[-1]):
        i = int(np.searchsorted(grid, v))
        cands = [float(grid[j]) for j in (i - 1, i) if 0 <= j < len(grid)]
        dist = [abs(Fraction(c) - Fraction(float(v))) for c in cands]
        best = min(dist)
        ties = [c for c, d in zip(cands, dist) if d == best]
        out.append(ties[0] if len(ties) == 1 else next(c for c in ties if even[c]))
    return np.array(out)


def midpoints(name, n):
    """Exact midpoints between neighbouring values, and the doubles just beside them: the inputs a
    cast through float32 double-rounds."""
    grid, _ = _grid(name)
    i = RNG.integers(0, len(grid) - 1, n)
    mid = (grid[i] + grid[i + 1]) / 2
    return np.concatenate([mid, mid * (1 + 2.0 ** -40), mid * (1 - 2.0 ** -40)])


@pytest.mark.parametrize("name", SMALL_FLOATS)
def test_float_rounding_is_correct_half_even(name):
    x = np.concatenate([midpoints(name, 300), RNG.standard_normal(300) * RNG.choice([1e-6, 1e-3, 1, 1e3], 300)])
    got = quant.round_to(x, name)
    assert got.dtype == row(name).numpy
    np.testing.assert_array_equal(got.astype(np.float64), oracle(x, name))


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(SMALL_FLOATS), v=st.floats(allow_nan=False, allow_infinity=True, width=64))
def test_float_rounding_property(name, v):
    assert quant.round_to(np.array([v]), name).astype(np.float64)[0] == oracle([v], name)[0]


@pytest.mark.parametrize("name", ["float64", "float32", "float16", "bfloat16"])
def test_cast_types_saturate_and_keep_nan(name):
    x = np.array([1e300, -np.inf, np.inf, np.nan, 7e4, -1.5])
    qt = quant.quantize(x, name)
    assert qt.scale is None and qt.zero_point is None and qt.q.dtype == row(name).numpy
    q = qt.q.astype(np.float64)
    fmax = row(name).fmax
    assert q[0] == min(1e300, fmax) and q[1] == -fmax and q[2] == fmax and np.isnan(q[3]) and q[5] == -1.5
    assert q[4] == (65504.0 if name == "float16" else oracle([7e4], name)[0] if name == "bfloat16" else 7e4)
    np.testing.assert_array_equal(quant.ste_mask(x, name), [name == "float64", 0, 0, 0, name != "float16", 1])


# --- integers ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["int32", "int16", "int8", "int4", "int2"])
def test_signed_round_half_even(name):
    qmax = row(name).qmax
    units = np.array([qmax, 2.5, 3.5, -2.5, 0.5, -0.5, 1.5, -qmax])
    units = units[np.abs(units) <= qmax]
    qt = quant.quantize(units * 0.25, name)          # amax = qmax/4, so the scale is exactly 0.25
    assert qt.scale.dtype == np.float32 and qt.scale.shape == () and qt.scale == 0.25
    np.testing.assert_array_equal(qt.q.astype(np.int64), np.rint(units).astype(np.int64))
    if qmax > 3:
        assert qt.q.astype(np.int64).tolist()[1:4] == [2, 4, -2]


@pytest.mark.parametrize("name", ["uint8", "uint4", "uint16"])
def test_unsigned_round_half_even(name):
    qmax = row(name).qmax
    qt = quant.quantize(np.array([qmax, 2.5, 3.5, 0.5, 1.5, 0]) * 0.5, name)
    assert qt.scale == 0.5 and qt.zero_point == 0
    assert qt.q.astype(np.int64).tolist() == [qmax, 2, 4, 0, 2, 0]


def _rounded_down_amax(den):
    """An amax whose float32 scale amax/den rounds down: x/scale then lands just above the range."""
    while True:
        a = float(RNG.uniform(1, 2))
        if float(np.float32(a / den)) < a / den:
            return a


@pytest.mark.parametrize("name", ["int64", "int32", "int8", "int4", "uint64", "uint32", "uint2"]
                         + SCALED_FLOATS)
def test_own_range_never_clips_or_wraps(name):
    """A scale rounded down to float32 would push the tensor's extreme just past the range: floats
    round it back to the finite max; integer types with 2^23+ levels take the next float32 scale up
    so nothing clips by more than half a step; nothing wraps or becomes inf."""
    r = row(name)
    a = _rounded_down_amax(r.fmax if r.is_float else r.qmax)
    x = np.array([a, -a, a / 3, 0.0])
    qt = quant.quantize(x, name)
    q = qt.q.astype(np.float64)
    assert np.isfinite(q).all() and np.all(quant.ste_mask(x, name) == 1)
    if r.is_float:
        assert q[0] == r.fmax and q[1] == -r.fmax and qt.scale == np.float32(a / r.fmax)
        return
    plain = np.float32(a / r.qmax if r.kind == "int" else 2 * a / r.qmax)
    up = np.nextafter(plain, np.float32(np.inf))
    if r.kind == "int":                  # int8, int4: the float32 shortfall is far below half a step
        assert qt.scale == (up if r.qmax >= 2**23 else plain)
    else:                                # uint: the zero point's rounding can also push past the top
        assert qt.scale in (plain, up) and (qt.scale == up or r.qmax < 2**23)
    assert (q[0] > 0 and q[1] < 0) if r.kind == "int" else q[1] == 0
    assert q[0] >= r.qmax * (1 - 2.0**-22) or r.qmax < 2**23
    err = np.abs(qt.dequantize("float64") - x)
    assert np.all(err <= float(qt.scale) / 2 * (1 + 2.0**-30) + a * 2.0**-48)


@pytest.mark.parametrize("name", SMALL_FLOATS)
def test_float_saturation(name):
    got = quant.round_to(np.array([1e300, -np.inf, 2 * row(name).fmax]), name).astype(np.float64)
    assert got.tolist() == [row(name).fmax, -row(name).fmax, row(name).fmax]


def test_64bit_quotients_that_round_to_2_63_are_clamped():
    # 1.5 and 3.0 have short mantissas: the scale is exact and x/scale is exactly 2^63 (2^64) in
    # float64, one past the type's range; the clamp keeps it at the largest float64 below qmax.
    q = quant.quantize(np.array([1.5, -1.5, 0.25]), "int64").q
    assert q.tolist()[:2] == [2**63 - 1024, -(2**63 - 1024)]
    u = quant.quantize(np.array([3.0, 0.0]), "uint64")
    assert u.q.tolist() == [2**64 - 2048, 0] and u.zero_point == 0


@pytest.mark.parametrize("name", ["int64", "uint64"])
def test_64bit_edges(name):
    x = RNG.standard_normal((4, 50)) * 1e3
    for per in ("tensor", "channel"):
        qt = quant.quantize(x, name, per=per)
        q = qt.q
        i = np.unravel_index(np.argmax(np.abs(x)), x.shape)
        if name == "int64":
            top = abs(int(q[i]))                           # float32 scale: within 2^-23 of qmax
            assert 2**63 - 2**41 <= top <= 2**63 - 1024 and np.all((q > 0) == (x > 0))
        else:
            assert q.max() <= 2**64 - 2048 and (q.max() >= 2**64 * (1 - 2.0**-22) or per == "channel")
        err = np.abs(qt.dequantize("float64") - x)
        assert err.max() <= np.abs(x).max() * 2.0 ** -50


@pytest.mark.parametrize("name", INTS)
@pytest.mark.parametrize("per", ["tensor", "channel"])
def test_integer_error_is_at_most_half_a_step(name, per):
    x = RNG.standard_normal((6, 33)) * RNG.uniform(0.01, 100, (6, 1))
    qt = quant.quantize(x, name, per=per)
    assert qt.q.dtype == row(name).numpy
    s = qt.scale.astype(np.float64)
    assert s.shape == ((6, 1) if per == "channel" else ())
    amax = np.abs(x).max(axis=1, keepdims=True) if per == "channel" else np.abs(x).max()
    err = np.abs(qt.dequantize("float64") - x)
    assert np.all(err <= s / 2 * (1 + 2.0 ** -30) + amax * 2.0 ** -48)
    if row(name).kind == "int":        # float32(amax / qmax), one float32 up where that would clip
        qmax = row(name).qmax
        plain = (amax / qmax).astype(np.float32)
        up = np.nextafter(plain, np.float32(np.inf))
        np.testing.assert_array_equal(qt.scale, np.where(amax / plain - qmax > 0.5, up, plain))
        assert qt.zero_point is None


@pytest.mark.parametrize("name", SCALED_FLOATS + ["float16", "bfloat16"])
def test_float_error_is_within_half_an_ulp(name):
    r = row(name)
    x = RNG.standard_normal((4, 40)) * RNG.uniform(0.1, 10, (4, 1))
    qt = quant.quantize(x, name, per="channel")
    s = 1.0 if qt.scale is None else qt.scale.astype(np.float64)
    err = np.abs(qt.dequantize("float64") - x)
    half_ulp = np.maximum(np.abs(x) * 2.0 ** -(r.nmant + 1), s * 2.0 ** (r.minexp - r.nmant - 1))
    assert np.all(err <= half_ulp * (1 + 1e-12))
    if qt.scale is not None:
        np.testing.assert_array_equal(qt.scale, (np.abs(x).max(1, keepdims=True) / r.fmax).astype(np.float32))


def test_per_channel_axis_shapes():
    w = RNG.standard_normal((5, 7, 3)) * np.arange(1, 6)[:, None, None]
    for axis, shape in ((0, (5, 1, 1)), (1, (1, 7, 1)), (-1, (1, 1, 3)), (2, (1, 1, 3))):
        qt = quant.quantize(w, "int8", per="channel", axis=axis)
        assert qt.scale.shape == shape
        amax = np.abs(w).max(axis=tuple(a for a in range(3) if a != axis % 3), keepdims=True)
        np.testing.assert_array_equal(qt.scale, (amax / 127).astype(np.float32))
    t = quant.quantize(w, "int8", per="tensor")
    c = quant.quantize(w, "int8", per="channel")
    assert t.scale.shape == () and np.abs(c.dequantize("float64") - w).sum() < np.abs(t.dequantize("float64") - w).sum()


@pytest.mark.parametrize("name", ["uint2", "uint4", "uint8", "uint16", "uint32", "uint64"])
def test_uint_zero_point_represents_zero_exactly(name):
    qmax = row(name).qmax
    for x, zp in ((RNG.standard_normal(30) - 0.3, None), (np.abs(RNG.standard_normal(30)) + 0.1, 0),
                  (-np.abs(RNG.standard_normal(30)) - 0.1, qmax)):
        x[5] = 0.0
        qt = quant.quantize(x, name)
        assert qt.zero_point.dtype == np.dtype(f"u{max(1, row(name).bits // 8)}")
        assert qt.dequantize("float64")[5] == 0.0 and qt.dequantize()[5] == 0.0
        if zp is not None:
            assert abs(int(qt.zero_point) - zp) <= (0 if qmax < 2**16 else qmax * 2.0**-23)


def test_ternary_follows_twn_and_binary_follows_xnor():
    x = RNG.standard_normal((3, 50))
    t = quant.quantize(x, "ternary", per="channel")
    b = quant.quantize(x, "binary", per="channel")
    assert set(np.unique(t.q)) <= {-1, 0, 1} and set(np.unique(b.q)) == {-1, 1}
    for c in range(3):
        a = np.abs(x[c])
        keep = a > 0.7 * (math.fsum(a) / a.size)
        np.testing.assert_array_equal(t.q[c], np.sign(x[c]) * keep)
        assert t.scale[c, 0] == np.float32(math.fsum(a[keep]) / keep.sum())
        np.testing.assert_array_equal(b.q[c], np.where(x[c] >= 0, 1, -1))
        assert b.scale[c, 0] == np.float32(math.fsum(a) / a.size)
    assert quant.quantize(np.array([-0.0, 0.0]), "binary").q.tolist() == [1, 1]
    zeros = quant.quantize(np.zeros(4), "ternary")
    assert zeros.scale == 1 and zeros.q.tolist() == [0, 0, 0, 0]
    np.testing.assert_array_equal(quant.ste_mask(np.array([-2, -1, 0.5, 1.5]), "binary"), [0, 1, 1, 0])


@pytest.mark.parametrize("name", [n for n in NAMES if row(n).bits <= 8 or not row(n).is_float])
def test_nonfinite_input_is_refused(name):
    x = np.array([1.0, -2.0, 0.5, np.nan, np.inf])
    with pytest.raises(loom.ConfigError, match=r"quantize: .*2 NaN/inf values, the first at flat index 3"):
        quant.quantize(x, name)


def test_errors_name_the_bad_value():
    x = RNG.standard_normal((3, 4))
    with pytest.raises(loom.ConfigError, match="int9"):
        quant.quantize(x, "int9")
    with pytest.raises(loom.ConfigError, match="'row'"):
        quant.quantize(x, "int8", per="row")
    with pytest.raises(loom.ConfigError, match="axis 2"):
        quant.quantize(x, "int8", per="channel", axis=2)
    with pytest.raises(loom.ConfigError, match="int64"):
        quant.quantize(np.arange(4), "int8")
    w = quant.quantize(x, "int8")
    with pytest.raises(loom.ShapeError, match="in = 4"):
        quant.qmatmul(np.ones((2, 5), np.float32), w)
    with pytest.raises(loom.ConfigError, match="float type"):
        w.dequantize("int8")
    with pytest.raises(loom.ShapeError, match="per-output-channel"):
        quant.qmatmul(np.ones((2, 4)), quant.quantize(x, "int8", per="channel", axis=1))


# --- qmatmul -------------------------------------------------------------------------------------

def reference_qmatmul(x, w, out):
    """x @ dequant(w).T: integer types with activations quantized per row to int8 (int16 for weights
    wider than 8 bits) and the code products summed in Python integers, float types in float64."""
    x2 = x.reshape(-1, x.shape[-1]).astype(np.float64)
    wq = w.q.reshape(w.shape[0], -1)
    n = wq.shape[0]
    sw = np.ones(n) if w.scale is None else np.broadcast_to(w.scale.astype(np.float64).reshape(-1), (n,))
    if row(w.dtype).is_float:
        y = x2 @ (wq.astype(np.float64) * sw[:, None]).T
    else:
        top = 127 if row(w.dtype).bits <= 8 else 32767
        amax = np.abs(x2).max(axis=1)
        sx = np.where(amax == 0, 1.0, amax / top).astype(np.float32).astype(np.float64)
        qx = np.clip(np.rint(x2 / sx[:, None]), -top, top).astype(np.int64)
        zp = [0] * n if w.zero_point is None else np.broadcast_to(w.zero_point.reshape(-1), (n,)).tolist()
        qw = [[int(v) - int(zp[j]) for v in wq[j].tolist()] for j in range(n)]
        acc = np.array([[float(sum(a * b for a, b in zip(qx[i].tolist(), qw[j]))) for j in range(n)]
                        for i in range(len(qx))])
        y = acc * sx[:, None] * sw[None, :]
    return y.astype(out).reshape(x.shape[:-1] + (n,))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("per", ["tensor", "channel"])
def test_qmatmul_matches_the_exact_reference(name, per):
    w = quant.quantize(RNG.standard_normal((5, 37)), name, per=per)
    x = (RNG.standard_normal((2, 3, 37)) * 3).astype(np.float32)
    x[0, 1] = 0                                   # an all-zero row: scale 1, output 0
    y = quant.qmatmul(x, w, "float32")
    assert y.dtype == np.float32 and y.shape == (2, 3, 5)
    np.testing.assert_array_equal(y, reference_qmatmul(x, w, np.float32))
    y64 = quant.qmatmul(x.astype(np.float64), w)
    np.testing.assert_array_equal(y64, reference_qmatmul(x.astype(np.float64), w, np.float64))
    dense = x.astype(np.float64) @ w.dequantize("float64").T
    assert np.abs(y64 - dense).max() <= 0.02 * np.abs(dense).max() + 1e-12 or not quant.is_integer(name)


@pytest.mark.parametrize("name,k", [("int32", 20000), ("uint32", 20000), ("int64", 10000), ("uint64", 10000),
                                    ("int64", 300), ("uint64", 300)])
def test_qmatmul_exact_beyond_2_53(name, k):
    """Sums past 2^53, where float64 BLAS would round partial sums: the int64 path (and the 64-bit
    hi/lo split, whose high half then needs more than 53 bits) must give the correctly rounded
    exact sum. The all-ones row makes every product large and of one sign."""
    w = quant.quantize(RNG.uniform(0.9, 1.0, (3, k)) * np.array([[1], [-1], [1]]), name, per="channel")
    x = np.concatenate([np.ones((1, k)), RNG.standard_normal((2, k))]).astype(np.float32)
    d = w.q.astype(np.float64) - (0 if w.zero_point is None else w.zero_point.astype(np.float64))
    assert k * 32767 * np.abs(d).max() >= 2.0**53        # float64 BLAS would not be exact here
    np.testing.assert_array_equal(quant.qmatmul(x, w, np.float64), reference_qmatmul(x, w, np.float64))


def test_qmatmul_flattens_conv_weights_and_split_rows_take_rows_agree():
    w = quant.quantize(RNG.standard_normal((6, 2, 3)), "uint4", per="channel")
    x = RNG.standard_normal((4, 6)).astype(np.float32)
    y = quant.qmatmul(x, w)
    flat = quant.AffineQuantized("uint4", w.q.reshape(6, 6), w.scale.reshape(6, 1), w.zero_point.reshape(6, 1))
    np.testing.assert_array_equal(y, quant.qmatmul(x, flat))
    parts = quant.split_rows(w, 3)
    assert [p.shape for p in parts] == [(2, 6)] * 3
    np.testing.assert_array_equal(np.concatenate([quant.qmatmul(x, p) for p in parts], axis=1), y)
    e = quant.quantize(RNG.standard_normal((10, 4)), "int4", per="channel")
    ids = np.array([[3, 3, 9], [0, 1, 2]])
    np.testing.assert_array_equal(quant.take_rows(e, ids, "float32"), e.dequantize("float32")[ids])


# --- QAT helpers and storage ---------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_fake_quantize_keeps_the_dtype(name):
    for dt in (np.float32, np.float64):
        x = RNG.standard_normal((3, 8)).astype(dt)
        fq = quant.fake_quantize(x, name, per="channel")
        assert fq.dtype == dt and fq.shape == x.shape
        np.testing.assert_array_equal(fq, quant.quantize(x, name, per="channel").dequantize(dt))
        mask = quant.ste_mask(x, name, per="channel")
        assert mask.dtype == dt and set(np.unique(mask)) <= {0, 1}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(5, 3), (3, 7, 2), (1,)])
def test_storage_round_trip_is_exact(name, shape):
    x = RNG.standard_normal(shape)
    qt = quant.quantize(x, name, per="channel")
    arrays = quant.to_storage(qt)
    assert qt.nbytes == sum(a.nbytes for a in arrays.values())
    if row(name).packed:
        assert arrays["q"].dtype == np.uint8 and arrays["q"].size == dtypes.packed_size(x.size, name)
    loaded, _ = safetensors.loads(safetensors.dumps(arrays))      # through a real file format
    back = quant.from_storage(loaded, name, shape)
    assert back.dtype == name and back.q.dtype == qt.q.dtype
    assert np.array_equal(back.q.view(np.uint8), qt.q.view(np.uint8))
    for k in ("scale", "zero_point"):
        a, b = getattr(qt, k), getattr(back, k)
        assert (a is None and b is None) or (a.dtype == b.dtype and np.array_equal(a, b))
    np.testing.assert_array_equal(back.dequantize(), qt.dequantize())
    with pytest.raises((loom.FormatError, loom.ShapeError)):
        quant.from_storage({**arrays, "q": arrays["q"].reshape(-1)[:-1]}, name, shape)


def test_qmatmul_refuses_sums_it_cannot_keep_exact():
    """int16 activations times 64-bit codes overflow int64 halves past K = 2^14: a clear error,
    never a wrapped sum."""
    w = quant.quantize(RNG.standard_normal((2, 20000)), "int64", per="tensor")
    with pytest.raises(loom.ShapeError, match="too large"):
        quant.qmatmul(RNG.standard_normal((1, 20000)).astype(np.float32), w)

"""Mixed precision's products on the GPU (issue 61): the CUDA backend's one-pass bfloat16 rounding has
mixed_precision.round_bf16's bits (deterministic mode's operands), and fast mode's bfloat16 GEMM
(cuBLAS, tensor cores, float32 sums) equals the float64 product of the rounded operands within float32
summation's error, for every operand layout the layers pass (transposed views, batches, broadcasts,
vectors, `out=`), eagerly and recorded into a graph."""
import numpy as np
import pytest
from catalogue import SAMPLES, config

import loom
from loom.mixed_precision import round_bf16

from .cpu_gpu import same_bits

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def be():
    return loom.backend.get("cuda")


def _hostile(rng, n):
    """float32 values at every scale, with bfloat16 ties, overflow, subnormals, infinities and NaNs
    with payloads."""
    with np.errstate(over="ignore"):            # the largest scales overflow to infinity, on purpose
        x = (rng.standard_normal(n) * np.exp2(rng.integers(-140, 128, n))).astype(np.float32)
    bits = x.view(np.uint32)
    bits[: n // 8] = (bits[: n // 8] & 0xFFFF0000) | 0x8000               # exact ties
    bits[n // 8: n // 4] = (bits[n // 8: n // 4] & 0xFFFF0000) | 0x7FFF
    x[-8:] = [np.inf, -np.inf, 3.4e38, -3.4e38, 1e-45, -0.0, 0.0, 1.17e-38]
    bits[-12:-8] = [0x7FC00001, 0xFFC12345, 0x7F800001, 0x7FBFFFFF]          # NaNs, quiet and signalling
    return x


@pytest.mark.smoke
def test_round_bf16_has_the_reference_bits(be):
    rng = np.random.default_rng(0)
    x = _hostile(rng, 1 << 16).reshape(256, 256)
    dx = be.asarray(x)
    for device, host in ((dx, x), (dx[:, ::3], x[:, ::3]), (dx.T, x.T)):    # contiguous, strided, transposed
        got = be.to_numpy(be.round_bf16(device))
        want = round_bf16(np.ascontiguousarray(host), np)
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("n, offset", [(4096, 0), (4100, 0), (4096, 1), (8, 0), (3, 0)],
                         ids=["eight a thread", "a tail", "unaligned", "one group", "short"])
def test_bf16_bits_of_every_layout(be, n, offset):
    """quant.to_bf16 (the fast bf16 GEMM's operands) against the bit arithmetic in NumPy, on the
    vectorised path (eight values a thread) and the plain one (unaligned or a tail)."""
    from loom.backend.cuda import quant
    x = _hostile(np.random.default_rng(n + offset), 64 + offset + n)     # its special values at the end
    start = 64 + offset                                                  # (64 floats: 256 bytes)
    got = be.to_numpy(quant.to_bf16(be.asarray(x)[start:]))
    u = x[start:].view(np.uint32).astype(np.uint64)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    want = np.where(nan, (u >> 16) | 0x40, (u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    np.testing.assert_array_equal(got, want)


def _reference(a, b):
    """The float64 product of a and b rounded to bfloat16, and the bound on float32 summation's error
    (every partial sum rounded: K * 2^-24 of the sum of magnitudes, doubled for the tensor cores'
    own order)."""
    ra, rb = (round_bf16(np.ascontiguousarray(v), np).astype(np.float64) for v in (a, b))
    k = a.shape[-1]
    return np.matmul(ra, rb), 2 * k * 2.0 ** -24 * np.matmul(np.abs(ra), np.abs(rb)) + 1e-30


CASES = {
    "x @ W.T": lambda r: (r.standard_normal((37, 300)), r.standard_normal((130, 300)).T),
    "x @ W": lambda r: (r.standard_normal((64, 129)), r.standard_normal((129, 96))),
    "g.T @ x": lambda r: (r.standard_normal((200, 33)).T, r.standard_normal((200, 48))),
    "batched heads": lambda r: (r.standard_normal((2, 4, 17, 64)), r.standard_normal((2, 4, 64, 17))),
    "batched @ broadcast": lambda r: (r.standard_normal((3, 20, 40)), r.standard_normal((40, 24))),
    "broadcast batch": lambda r: (r.standard_normal((1, 5, 32)), r.standard_normal((6, 32, 8))),
    "vector @ matrix": lambda r: (r.standard_normal(50), r.standard_normal((50, 7))),
    "matrix @ vector": lambda r: (r.standard_normal((9, 50)), r.standard_normal(50)),
    "K large": lambda r: (r.standard_normal((16, 4100)), r.standard_normal((4100, 64))),
}


@pytest.mark.parametrize("case", CASES)
def test_fast_bf16_product_matches_the_rounded_operands(be, case):
    rng = np.random.default_rng(len(case))
    a, b = (v.astype(np.float32) * 3 for v in CASES[case](rng))
    want, bound = _reference(a, b)
    with loom.deterministic(False):
        da = be.asarray(np.ascontiguousarray(a.T)).T if not a.flags.c_contiguous else be.asarray(a)
        db = be.asarray(np.ascontiguousarray(b.T)).T if not b.flags.c_contiguous else be.asarray(b)
        got = be.to_numpy(be.matmul_bf16(da, db))
        out = be.xp.full(want.shape, np.nan, dtype=np.float32)
        be.matmul_bf16(da, db, out=out)
    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.all(np.abs(got - want) <= bound), f"{case}: off by {np.max(np.abs(got - want) / bound):.2f}x the bound"
    np.testing.assert_array_equal(be.to_numpy(out), got)
    # the float32 GEMM of unrounded operands is not what it computed (rounding happened)
    assert not np.array_equal(got, a @ b)


def test_fast_bf16_product_records_and_replays(be):
    rng = np.random.default_rng(7)
    a = be.asarray(rng.standard_normal((48, 256)).astype(np.float32))
    w = be.asarray(rng.standard_normal((128, 256)).astype(np.float32))
    eager = be.to_numpy(be.matmul_bf16(a, w.T))
    graph, out = be.record(lambda: be.matmul_bf16(a, w.T))
    graph.launch()
    be.synchronize()
    np.testing.assert_array_equal(be.to_numpy(out), eager)
    a[...] = be.asarray(rng.standard_normal((48, 256)).astype(np.float32))   # new inputs, same buffers
    graph.launch()
    be.synchronize()
    np.testing.assert_array_equal(be.to_numpy(out), be.to_numpy(be.matmul_bf16(a, w.T)))


@pytest.mark.parametrize("kind", ["dense", "conv2d", "lstm", "multi_head_attention"])
def test_fast_bf16_training_records_and_follows_the_cpu(kind):
    """A fast-mode bf16 train step on CUDA records as a chain (its products on the tensor cores) and
    trains to weights near the CPU's bf16 run (float32 sums in another order)."""
    _, layers, shape, idt = next(s for s in SAMPLES if s[0] == kind)
    cfg = config(layers + [{"type": "flatten"}, {"type": "dense", "units": 3}], shape, idt)
    rng = np.random.default_rng(3)
    X = rng.standard_normal((64,) + tuple(shape)).astype(np.float32)
    Y = rng.integers(0, 3, 64)
    trained = {}
    with loom.deterministic(False):
        for device in ("cpu", "cuda"):
            net = loom.Network.from_config(cfg)
            loom.train(net, X, Y, device=device, epochs=2, batch_size=16, shuffle=False, verbose=False,
                       precision="bf16")
            trained[device] = net.to("cpu").state_dict()
    for name, value in trained["cpu"].items():
        np.testing.assert_allclose(trained["cuda"][name], value, rtol=2e-2, atol=2e-2, err_msg=f"{kind} {name}")


# --- deterministic mode: the exact product of bfloat16-valued operands --------------------------------------

def _bf16_operand(rng, shape, spread):
    """bfloat16 values (as float32) whose binades spread over 2 * spread + 1."""
    x = rng.standard_normal(shape) * np.exp2(rng.integers(-spread, spread + 1, shape))
    return round_bf16(x.astype(np.float32), np)


def _exact_on_both(be, a, b):
    from loom.kernels import exact
    with loom.deterministic(True):
        return be.to_numpy(exact.matmul(be.asarray(a), be.asarray(b))), exact.matmul(a, b)


@pytest.mark.parametrize("spread", [0, 3, 12, 40, 100])
@pytest.mark.parametrize("shape", [(70, 300, 90), (640, 96, 600)], ids=["one launch", "listed"])
def test_exact_product_of_bf16_values_has_the_cpus_bits(be, spread, shape):
    """Products of bfloat16 values are exact in float64 where their binades are few (the certification
    rounds the float64 product then), and often fall exactly halfway between two float32 values (the
    settling's compensated sum, shown exact by the products' least set bit, rounds them then); wider
    spreads still reach the integer limbs. Every way gives the CPU's bits."""
    m, k, n = shape
    rng = np.random.default_rng(spread + m)
    a, b = _bf16_operand(rng, (m, k), spread), _bf16_operand(rng, (k, n), spread)
    got, want = _exact_on_both(be, a, b)
    same_bits(got, want, f"bf16 values, spread {spread}")


def test_exact_product_rounds_halfway_sums_by_what_lies_below_them(be):
    """Rows whose exact sums sit at, just above and just below float32 halfway points (1 + 2^-24 and
    its kind), at both signs, in the subnormals and at the overflow threshold 2^128 - 2^103."""
    big = float(np.finfo(np.float32).max)
    rows = []
    for head, half in ((1.0, 2.0 ** -24), (3.0, 2.0 ** -23), (2.0 ** -126, 2.0 ** -150), (big, 2.0 ** 103)):
        for tail in (0.0, 2.0 ** -60, -(2.0 ** -60), 2.0 ** -140, -(2.0 ** -140)):
            tail = tail * head if head != big else tail * 2.0 ** 120
            for sign in (1.0, -1.0):
                rows.append([sign * head, sign * half, sign * tail, 0.0])
    for units in (1.0, 3.0):                     # 2^-150 and 3 2^-150: halfway between subnormals (column 3)
        for tail in (0.0, 2.0 ** -95, -(2.0 ** -95)):
            for sign in (1.0, -1.0):
                rows.append([sign * units * 2.0 ** -75, 0.0, sign * tail, 0.0])
    a = np.array(rows, dtype=np.float32)
    b = np.ones((4, 4), dtype=np.float32)
    b[:, 1] = [1.0, 1.0, 1.0, 5.0]               # a zero column of a times anything
    b[:, 2] = [1.0, 1.0, -1.0, 0.0]              # the tail's sign flipped
    b[:, 3] = [2.0 ** -75, 0.0, 2.0 ** -75, 0.0]
    got, want = _exact_on_both(be, a, b)
    assert np.any((want[:, 3] != 0) & (np.abs(want[:, 3]) < np.finfo(np.float32).tiny)), "no subnormal result"
    same_bits(got, want, "halfway sums")


_I, _T = (lambda x: x), (lambda x: x.swapaxes(-1, -2))
LAYOUTS = {  # name: (stored shape of a, its view, stored shape of b, its view)
    "2-D": ((70, 300), _I, (300, 90), _I), "a transposed": ((300, 70), _T, (300, 90), _I),
    "b transposed": ((70, 300), _I, (90, 300), _T), "batched": ((3, 40, 64), _I, (3, 64, 50), _I),
    "batch @ matrix": ((3, 40, 64), _I, (64, 50), _I), "broadcast a": ((1, 40, 64), _I, (5, 64, 50), _I),
    "two batch axes": ((2, 3, 20, 64), _I, (2, 3, 64, 30), _I),
    "two broadcast": ((2, 1, 20, 64), _I, (1, 3, 64, 30), _I),
    "two broadcast, transposed": ((2, 1, 64, 20), _T, (3, 30, 64), _T),
    "three batch axes": ((2, 3, 2, 20, 64), _I, (2, 3, 2, 64, 30), _I),
    "three broadcast": ((2, 1, 2, 20, 64), _I, (1, 3, 1, 64, 30), _I),
    "batched, both transposed": ((3, 64, 40), _T, (3, 50, 64), _T),
    "listed": ((640, 96), _I, (96, 600), _I), "long sums": ((16, 4100), _I, (4100, 20), _I),
}


@pytest.mark.parametrize("spread", [0, 3, 12])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_rounded_scheme_on_bf16_values_in_every_layout(be, layout, spread):
    """The rounded scheme itself (exact_rounded.matmul, also past K = 2048, where the dispatch table
    would take the slices) on bfloat16 values: each line's quantum indexed as its norm is, in batched,
    broadcast and transposed products, the CPU's bits."""
    from loom.kernels.exact import rounded
    sa, va, sb, vb = LAYOUTS[layout]
    rng = np.random.default_rng(spread + len(layout))
    a, b = _bf16_operand(rng, sa, spread), _bf16_operand(rng, sb, spread)
    want = rounded.matmul(loom.backend.get("cpu"), va(a), vb(b))[0]
    got = be.to_numpy(rounded.matmul(be, va(be.asarray(a)), vb(be.asarray(b)))[0])
    same_bits(got, want, f"{layout}, spread {spread}")

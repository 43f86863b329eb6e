"""Integer products with a language model's stored weights: the dispatch table's "weight" rule (the
scheme of determinism spec 4).

Why: spec 3 makes a weight product of float32 activations correctly rounded (K <= 2048) or sums two
integer slices of x against 24-bit columns (K > 2048). Both need float64 arithmetic, which the GPU runs
at a fifteenth of its bfloat16 tensor-core rate: deterministic prompts cannot come near fast mode's
speed, and decode products hold float64 sums in registers. Rounding both operands to 16-bit integers
makes the sums exact in int32 on the int8 tensor cores (two int8 planes a side, four products), in
int32/int64 on any core, and in a float64 GEMM on the CPU, whatever the order: any hardware gives the
same bits with no certification and no settling. Measured on SmolLM2-135M over 400 tokens of Hamlet
(benchmarks/product_schemes.py, "fixed 14/14", one bit coarser than this): mean |logit difference| from
the correctly rounded products 0.008, against fast mode's bfloat16 activations' 0.036.

The scheme. Each row v of x (a token's activations) and each row of W (an output's weights, decoded to
float32 from its stored type) is rounded once to integers

    q_k = rint(v_k * 2^(15 - e))          (to nearest, ties to even)

at the finest power-of-two scale that keeps every |q_k| <= 32767: e is the exponent of the row's largest
magnitude m (2^(e-1) <= m < 2^e), plus one where m * 2^(15 - e) rounds past 32767 (m within half a unit
of 2^e). A row of zeros takes e = 0. The product's entry is the exact integer sum S = sum_k qx_k qw_k
(|S| < 2^30 K: exact in float64 for K < 2^23, in any order), times 2^(ex + ew - 30), rounded once to
float32: to nearest, ties to even, an exact zero +0, overflow to inf. Rows and columns holding inf or
NaN take IEEE's special value as the other exact schemes do (exact._with_specials).

An int16 row splits into planes for int8 hardware: hi = q >> 8 (signed, -128 .. 127) and lo = q & 255
(unsigned, 0 .. 255), q = 256 hi + lo, so S = 65536 HH + 256 (HL + LH) + LL with each plane product
exact in int32 for K < 2^15 (`planes`).
"""
from __future__ import annotations

from types import ModuleType

import numpy as np

from ...backend import Array, Backend
from ...errors import ShapeError

BITS = 15                       # |q| <= 2^BITS - 1
LIMIT = (1 << BITS) - 1
MAX_K = 1 << 23                 # past it a float64 sum of products below 2^30 could round


def row_exponents(xp: ModuleType, v: Array) -> Array:
    """int32 [..., rows]: each row's e (the module's docstring) for v [..., rows, K] float32 whose
    rows are finite (non-finite rows: any value, their entries are overwritten with IEEE's)."""
    a = xp.abs(v)                                           # (float32: the maximum is exact in it)
    xp.copyto(a, 0, where=~xp.isfinite(a))
    top = xp.max(a, axis=-1).astype(np.float64)
    _, e = xp.frexp(top)                                    # top = f 2^e, 0.5 <= f < 1 (0: e = 0)
    e = e.astype(np.int32)
    spills = xp.rint(xp.ldexp(top, BITS - e)) > LIMIT
    return e + spills.astype(np.int32)


def to_integers(xp: ModuleType, v: Array, e: Array) -> Array:
    """float64 [..., rows, K]: the rows' integers q (exact in float64), non-finite values as 0. Each row
    is multiplied by its 2^(BITS - e), a float64 (|BITS - e| < 170): exact, as ldexp, and in place, 3.6x
    faster in NumPy than ldexp and a where (the decoders' products without numba: the browser's)."""
    q = v.astype(np.float64)
    q *= xp.ldexp(1.0, (BITS - e).astype(np.int32))[..., None]
    xp.rint(q, out=q)
    q += 0.0                                                # (-0 -> +0: a product's exact zero is +0)
    xp.copyto(q, 0.0, where=~xp.isfinite(q))                # (in place: no second float64 array)
    return q


def planes(xp: ModuleType, q: Array) -> tuple[Array, Array]:
    """(hi int8, lo uint8) with q = 256 hi + lo for integers q of to_integers."""
    qi = q.astype(np.int32)
    return (qi >> 8).astype(np.int8), (qi & 255).astype(np.uint8)


def finish(xp: ModuleType, s: Array, ex: Array, ew: Array) -> Array:
    """float32 [M, N]: the exact integer sums s [M, N] (float64) scaled by 2^(ex[m] + ew[n] - 30),
    rounded once."""
    scaled = xp.ldexp(s + 0.0, (ex[:, None] + ew[None, :] - 2 * BITS).astype(np.int32))
    with np.errstate(over="ignore"):
        return scaled.astype(np.float32)


def matmul_t(be: Backend, x: Array, w: Array, w_exponents: Array | None = None) -> Array:
    """float32 [M, N] = x [M, K] @ w [N, K]^T in this scheme, for float32 x and w (w the decoded
    weight rows; w_exponents their row_exponents, where the caller keeps them). The integers' product is
    one float64 GEMM: every partial sum is an integer below 2^53, exact in any order."""
    xp = be.xp
    if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[1]:
        raise ShapeError(f"fixed.matmul_t takes x [M, K] and w [N, K], got {x.shape} and {w.shape}")
    ex = row_exponents(xp, x)
    return matmul_t_integers(be, x, to_integers(xp, x, ex), ex, w, w_exponents)


def matmul_t_integers(be: Backend, x: Array, qx: Array, ex: Array, w: Array,
                      w_exponents: Array | None = None) -> Array:
    """matmul_t for x whose integers qx and exponents ex the caller made once (a weight decoded block by
    block: each block's product reuses them)."""
    xp = be.xp
    if x.shape[1] >= MAX_K:
        raise ShapeError(f"fixed.matmul_t sums at most {MAX_K - 1} products exactly, got K = {x.shape[1]}")
    ew = row_exponents(xp, w) if w_exponents is None else w_exponents
    s = be.matmul(qx, to_integers(xp, w, ew).T)
    result = finish(xp, s, ex, ew)
    # IEEE's values where a row holds inf or NaN (while a step is recorded the host cannot look: always
    # patched there, an exact no-op on finite rows)
    if be.may_be_true(~(xp.all(xp.isfinite(x)) & xp.all(xp.isfinite(w)))):
        from . import _with_specials
        with np.errstate(invalid="ignore"):
            result = _with_specials(be, x, w.T, result).astype(np.float32)
    return result

"""The slice scheme's exact products on int8 tensor cores, with the float64 slices' bits.

exact.py's slice scheme (`_matmul_narrow`) makes each entry of a float32 product from one integer,
G = sum_k A_k B_k, where A_k = hi 2^bits_a + lo is the row's element as an integer at its row's
scale (|A_k| <= 2^(2 bits_a)) and B_k the column's at its column's (|B_k| <= 2^bits_b); it finds G
as two exact float64 GEMMs (hi and lo against B) and rounds G 2^-bits_a once, to float64. float64
tensor cores run at about SGEMM's speed on the H100, so that scheme costs two SGEMMs.

Here G comes from its residues instead (the Chinese remainder theorem, as in Ozaki, Uchino and
Imamura's "Ozaki scheme II", 2025): for each of nine pairwise coprime moduli p <= 256, A_k mod p
and B_k mod p, balanced into [-128, 127], are int8; one int8 GEMM per modulus sums their products
in int32, exactly (|sum| <= K 2^14 < 2^31 for K <= 2^14), and its sum mod p is G mod p. Garner's
algorithm turns the nine residues into G's mixed-radix digits, Horner's rule those into a 128-bit
integer (two uint64 words), and that integer is rounded once to float64, to nearest with ties to
even: the float64 path's one rounding, so every entry has its bits. The moduli's product, 2^71.41,
exceeds 2 |G| <= K 2^(2 bits_a + bits_b + 1) = 2^(107 - log2 K - bits_b) <= 2^71 for the K that
reach it (2048 < K <= 2^14, bits_b = 24; `takes` checks the bound itself), so G is the balanced
representative.

Besides the nine int8 GEMMs, the cost is memory traffic: the residues (nine bytes per element of each
operand) and the nine int32 products (36 bytes per entry, written and read once); docs/performance.md,
"Deterministic GEMM and train steps", has the measured speed against SGEMM. The right operand's
residues are stored transposed, as the int8 GEMM's fast "TN" layout wants (cublas.CuBLAS.gemm_int8).
"""
from __future__ import annotations

import math
from functools import cache
from typing import TYPE_CHECKING

import cupy
import numpy as np
from numpy.typing import DTypeLike

from .. import Array
from .compile import OPTIONS, translating
from .exact_reduce import TOP_EXPONENT

if TYPE_CHECKING:
    from . import CUDABackend

MODULI = (256, 255, 253, 251, 247, 241, 239, 233, 229)
_PRODUCT = math.prod(MODULI)        # 2^71.41
# smaller slice products run as float64 GEMMs; tests lower it to run the path on small products
MIN_WORK = 1 << 33
# the left residues and int32 products of one panel of rows held at once (with b's residues):
# larger products run panel by panel
PANEL_BYTES = 1 << 30


def takes(a: Array, b: Array, bits: tuple) -> bool:
    """Whether the int8 path computes this slice product: float32 matrices, K within one chunk and
    long enough that the moduli cover G (the module's docstring), dimensions multiples of 16 (int8
    tensor-core GEMMs' alignment), and large enough to pay off."""
    if a.ndim != 2 or b.ndim != 2 or a.dtype != np.float32 or b.dtype != np.float32:
        return False
    m, k = a.shape
    n = b.shape[1]
    if m % 16 or k % 16 or n % 16 or k > 1 << 14:
        return False
    bits_a, bits_b = bits
    if k * 2.0 ** (2 * bits_a + bits_b + 1) >= _PRODUCT:
        return False
    return m * n * k >= MIN_WORK


def _garner_source(load: str) -> str:
    """CUDA C: G mod each modulus (`load`, a format string of the modulus' index q: an integer
    congruent to G) -> the balanced G as (negative, high word, low word), from Garner's algorithm
    with the inverses worked out here, exactly."""
    count = len(MODULI)
    lines = [f"int r[{count}];"]
    lines += [f"r[{q}] = (int)({load.format(q=q)} % {p}); if (r[{q}] < 0) r[{q}] += {p};" for q, p in enumerate(MODULI)]
    lines.append("const int v0 = r[0];")
    for i in range(1, count):
        p = MODULI[i]
        lines.append(f"int v{i} = r[{i}];")
        for j in range(i):
            inverse = pow(MODULI[j], -1, p)
            # (v_i - v_j) / p_j mod p_i, one reduction: below 2^17 * 2^8 before it, in int32
            lines.append(f"v{i} = (v{i} - v{j} + {p * 256}) * {inverse} % {p};")
    horner = [f"unsigned long long lo = (unsigned long long)v{count - 1}, hi = 0ull;"]
    for i in range(count - 2, -1, -1):
        p = MODULI[i]
        horner.append(f"{{ const unsigned long long t = lo * {p}ull; "
                      f"hi = hi * {p}ull + __umul64hi(lo, {p}ull); lo = t + (unsigned long long)v{i}; "
                      f"hi += lo < t; }}")
    half = _PRODUCT // 2
    return "\n".join(lines + horner + [
        # X >= M / 2: G = X - M < 0, |G| = M - X
        f"const unsigned long long mhi = {_PRODUCT >> 64}ull, mlo = {_PRODUCT & (2 ** 64 - 1)}ull;",
        f"const bool negative = hi > {half >> 64}ull || (hi == {half >> 64}ull && lo >= {half & (2 ** 64 - 1)}ull);",
        "if (negative) { const unsigned long long nlo = mlo - lo; hi = mhi - hi - (mlo < lo); lo = nlo; }",
    ])


# |G| = hi 2^64 + lo rounded once to double, to nearest with ties to even: the top 64 bits, with
# the bits shifted out ORed into the lowest (a sticky bit below the rounding position, which is bit
# 10 or above), converted by the correctly rounded __ull2double_rn, then scaled back (exactly)
_TO_DOUBLE = r"""
__device__ __forceinline__ double loom_u128_to_double(unsigned long long hi, unsigned long long lo) {
    if (hi == 0ull) return __ull2double_rn(lo);
    const int shift = 64 - __clzll(hi);                  // 1 .. 64: bits of hi
    const unsigned long long top = shift == 64 ? hi : (hi << (64 - shift)) | (lo >> shift);
    const unsigned long long lost = shift == 64 ? lo : lo & ((1ull << shift) - 1ull);
    return ldexp(__ull2double_rn(top | (lost != 0ull)), shift);
}
"""


def _residues(store: str, value: str = "x % {p}") -> str:
    """CUDA C: an integer mod each modulus (`value`, a format string of p, in int32 and in (-p, p)),
    balanced into [-128, 127] and stored by `store` (a format string of the modulus' index q and
    the value v)."""
    return "\n".join(f"{{ int v = {value.format(p=p)}; if (v > 127) v -= {p}; else if (v < -128) v += {p}; "
                     + store.format(q=q, v="(signed char)v") + " }" for q, p in enumerate(MODULI))


# b's residues, transposed ([9, N, K]: the int8 GEMM's fast layout) through shared memory: a block
# reads a 32 x 32 tile of b along its rows and writes 32 bytes of K per row of the transpose (for
# b stored by columns, as a weight's transpose W.T, `right_rows` writes them straight)
_RIGHT = TOP_EXPONENT + r"""
extern "C" __global__ void loom_exact_int8_right(const float* b, long long sk, long long sn, const float* top,
                                                 int bits, long long k, long long n, signed char* r) {
    __shared__ __align__(4) signed char tile[MODULI_COUNT][32][36];   // [q][n][k], rows 4-byte aligned
    // N's tiles on the grid's x axis (2^31 - 1 of them allowed), K's (at most 512) on y (65535)
    const long long n0 = (long long)blockIdx.x * 32, k0 = (long long)blockIdx.y * 32, col = n0 + threadIdx.x;
    if (col < n) {
        const int shift = bits - loom_top_exponent(top[col]);
        for (int j = threadIdx.y; j < 32 && k0 + j < k; j += 8) {
            const int x = (int)rintf(ldexpf(b[(k0 + j) * sk + col * sn], shift));    // |x| <= 2^24
            RESIDUES
        }
    }
    __syncthreads();
    const int t = threadIdx.y * 32 + threadIdx.x, row = t >> 3, part = t & 7;
    if (n0 + row < n && k0 + 4 * part < k)                  // K is a multiple of 16: whole words
        for (int q = 0; q < MODULI_COUNT; ++q)
            *(int*)&r[q * n * k + (n0 + row) * k + k0 + 4 * part] = *(const int*)&tile[q][row][4 * part];
}
""".replace("MODULI_COUNT", str(len(MODULI))).replace(
    "RESIDUES", _residues("tile[{q}][threadIdx.x][j] = {v};"))


@cache
def _kernels():
    # the slices of exact._matmul_narrow (exact_slices.py's loom_exact_slice_left/right), as integers
    left = cupy.ElementwiseKernel(
        "float32 a, float32 top, int32 bits, int64 plane", "raw int8 r",
        """const float s = ldexpf(a, bits - loom_top_exponent(top));
           const float h = rintf(s);
           const double lo = rint(__dmul_rn(__dsub_rn((double)s, (double)h), ldexp(1.0, bits)));
           // x = h 2^bits + lo (|h| <= 2^bits, |lo| <= 2^(bits - 1), bits <= 18) mod p, in int32:
           // ((h mod p) (2^bits mod p) + lo) mod p, every term below 2^18
           const int high = (int)h, low = (int)lo, unit = 1 << bits;
           """ + _residues("r[{q} * plane + i] = {v};", "((high % {p}) * (unit % {p}) + low) % {p}"),
        "loom_exact_int8_left", preamble=TOP_EXPONENT, options=OPTIONS)
    right = cupy.RawModule(code=_RIGHT, options=OPTIONS).get_function("loom_exact_int8_right")
    right_rows = cupy.ElementwiseKernel(          # bt = b.T, C-ordered [N, K]: its residues in its own order
        "float32 bt, float32 top, int32 bits, int64 plane", "raw int8 r",
        """const int x = (int)rintf(ldexpf(bt, bits - loom_top_exponent(top)));    // |x| <= 2^24
           """ + _residues("r[{q} * plane + i] = {v};"),
        "loom_exact_int8_right_rows", preamble=TOP_EXPONENT, options=OPTIONS)
    # the int32 sums of the nine GEMMs ([9, M, N]) -> G -> loom_exact_combine's arithmetic
    combine = cupy.ElementwiseKernel(
        "raw int32 s, float32 atop, float32 btop, int32 abits, int32 bbits, int64 plane", "T out",
        _garner_source("s[{q} * plane + i]") + """
           double acc = ldexp(loom_u128_to_double(hi, lo), -abits);    // G 2^-bits_a, rounded once
           if (negative) acc = -acc;
           acc = __dmul_rn(acc, ldexp(1.0, loom_top_exponent(atop) - abits));
           out = (T)__dmul_rn(acc, ldexp(1.0, loom_top_exponent(btop) - bbits));""",
        "loom_exact_int8_combine", preamble=TOP_EXPONENT + _TO_DOUBLE, options=OPTIONS)
    return left, right, right_rows, combine


def matmul_narrow(be: CUDABackend, a: Array, b: Array, amax: Array, bmax: Array, bits: tuple,
                  dtype: DTypeLike) -> Array:
    """exact.matmul_narrow's product (without the special values) for operands `takes` accepts:
    b's residues once, then a's and the product panel by panel of rows (PANEL_BYTES)."""
    bits_a, bits_b = bits
    m, k = a.shape
    n = b.shape[1]
    count = len(MODULI)
    amax, bmax = amax.astype(np.float32, copy=False), bmax.astype(np.float32, copy=False)
    left, right, right_rows, combine = _kernels()
    with translating("exact GEMM int8 slicing", a, b):
        rbt = cupy.empty((count, n, k), dtype=np.int8)
        if b.T.flags.c_contiguous:
            right_rows(b.T, bmax.reshape(n, 1), np.int32(bits_b), np.int64(n * k), rbt)
        else:
            top = cupy.ascontiguousarray(bmax.reshape(-1))
            right((-(-n // 32), -(-k // 32)), (32, 8), (b, np.int64(b.strides[0] // 4), np.int64(b.strides[1] // 4),
                                                        top, np.int32(bits_b), np.int64(k), np.int64(n), rbt))
        out = cupy.empty((m, n), dtype=dtype)
    rows = max(16, PANEL_BYTES // (count * (k + 4 * n)) // 16 * 16)
    for first in range(0, m, rows):
        last = min(m, first + rows)
        with translating("exact GEMM int8 slicing", a, b):
            ra = cupy.empty((count, last - first, k), dtype=np.int8)
            left(a[first:last], amax[first:last], np.int32(bits_a), np.int64((last - first) * k), ra)
        s = be.blas.gemm_int8(ra, rbt)
        del ra
        with translating("exact GEMM int8 recombination", s):
            combine(s, amax[first:last], bmax, np.int32(bits_a), np.int32(bits_b), np.int64((last - first) * n),
                    out[first:last])
        del s
    return out


@cache
def _crt_kernel():
    return cupy.ElementwiseKernel(
        "raw int64 s, int64 plane", "float64 out",
        _garner_source("s[{q} * plane + i]") + """
           const double d = loom_u128_to_double(hi, lo);
           out = negative ? -d : d;""",
        "loom_exact_int8_crt_test", preamble=_TO_DOUBLE, options=OPTIONS)


def crt_to_double(residues: Array) -> Array:
    """Test hook: the balanced G for int64 residues [9, N] (G mod each modulus), rounded once to
    float64, by the combine kernel's device code."""
    out = cupy.empty(residues.shape[1], dtype=np.float64)
    _crt_kernel()(residues, np.int64(residues.shape[1]), out)
    return out

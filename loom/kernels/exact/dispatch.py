"""Deterministic mode's one dispatch table: the scheme of every exact reduction, by operation,
dtype and reduced length, and nothing else.

A scheme fixes the bits of each result entry as a function of that entry's own operands (a GEMM
entry: its row of a and its column of b; a sum: the values it adds). Choosing the scheme from the
dtype and the reduced length K alone is what makes results batch-invariant: a row's bits do not
depend on the batch size, its position, its batch-mates, padding, a memory budget, a chunk size,
the backend or the GPU. Memory limits may split a product into tiles of rows and columns, or a
kernel may run on other hardware (the GPU's int8 tensor cores, compiled CPU loops), but only inside
a scheme, where the bits are the scheme's.

docs/determinism.md quotes this table (`describe()` prints it); `loom.DETERMINISM_SPEC` names the
version of these rules (loom/spec.py), and tests/golden/spec<N>.json pins their bits.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import DTypeLike

ROUNDED_MAX_K = 1 << 11     # uncertified entries grow as K^1.5 on random data: 0.05% at 784, 0.2% at 2048
CHUNK_BITS = 14             # slice products longer than 2^14 are summed in chunks of 2^14, in order

ROUNDED = "rounded"               # exact dot product, rounded once (exact_rounded.py)
SLICES_2X1 = "slices 2x1"         # two integer slices of a's rows, b's columns at 24 bits (exact.py)
SLICES_3X3 = "slices 3x3"         # three slices on each side, the six pairs that matter (exact.py)
SUM_1 = "sum 1 slice"             # one integer slice per element, exact float64 sum (exact.py)
SUM_2 = "sum 2 slices"            # two integer slices per element
SLICES_2X1_INT = "slices 2x1, int64 chunks"   # the 2x1 slices, the chunks' integers added exactly
INT16 = "int16 rows"              # rows of x and W as int16 at their own scales, exact integer sums (fixed.py)
INT_ATTENTION = "integer attention"   # q, k, v rows as int16, fixed-point exp, one quotient (attention.py; spec 5)


@dataclass(frozen=True)
class Rule:
    op: str                 # "matmul", "gradient" (a matmul over the batch: ops.grad_matmul), "weight" (a
                            # decoder language model's product with its weight: block.linear), "attention" (a
                            # decoder's attention, K its keys: exact.attention) or "sum" (sums, means,
                            # variances, norms, softmax, cumsum, index_add; over the batch too)
    dtype: str              # the operands' dtype class: "float32" (and narrower) or "float64"
    k_min: int              # reduced length K (a GEMM's inner dimension, a sum's count), inclusive
    k_max: int | None       # None: no upper limit
    scheme: str
    detail: str


TABLE = (
    Rule("matmul", "float32", 1, ROUNDED_MAX_K, ROUNDED,
         "each entry the exact dot product rounded once to float32: one float64 GEMM, an error bound "
         "certifies the rounding, the rest settled exactly"),
    Rule("matmul", "float32", ROUNDED_MAX_K + 1, 1 << CHUNK_BITS, SLICES_2X1,
         "a's rows as two integer slices of 29 - ceil(log2 K) bits, b's columns at 24 bits, summed "
         "exactly in float64 (GPU, large aligned products: the same integers on int8 tensor cores)"),
    Rule("matmul", "float32", (1 << CHUNK_BITS) + 1, None, SLICES_2X1,
         "as above with the bits of K = 2^14, in chunks of 2^14 along K, the chunks' float64 results "
         "added in order and rounded once"),
    Rule("matmul", "float64", 1, 1 << CHUNK_BITS, SLICES_3X3,
         "three slices of (53 - ceil(log2 K)) / 2 bits on each side, the six products that matter, "
         "summed smallest first"),
    Rule("matmul", "float64", (1 << CHUNK_BITS) + 1, None, SLICES_3X3,
         "as above per chunk of 2^14 along K, the chunks added in order"),
    Rule("gradient", "float32", 1, 1 << CHUNK_BITS, SLICES_2X1,
         "a product over the batch (a parameter gradient): the 2x1 slices at every K, with the maxima "
         "and K of the global batch, so ranks of a data-parallel world add their integers exactly"),
    Rule("gradient", "float32", (1 << CHUNK_BITS) + 1, None, SLICES_2X1_INT,
         "as above with the bits of K = 2^14, each chunk of at most 2^14 summed exactly in float64, "
         "the chunks' (and ranks') integers added exactly in int64, rounded once"),
    Rule("gradient", "float64", 1, None, SLICES_3X3,
         "as matmul on float64 (one device only: a float64 gradient is not split across ranks)"),
    Rule("weight", "float32", 1, None, INT16,
         "a decoder language model's product with its weight: each row of x and of W (decoded) rounded once to "
         "integers of at most 32767 at the finest power-of-two scale of its largest magnitude, the exact "
         "integer sum (int8 tensor cores: four plane products) rounded once to float32; K < 2^23 (longer "
         "products are refused)"),
    Rule("attention", "float32", 1, None, INT_ATTENTION,
         "a decoder language model's attention (spec 5): each row of q, k and v rounded once to integers of at "
         "most 32767 as for weight, exact integer scores, p = exp(-(max - score) scale) in fixed point (a "
         "256-entry table of 2^(-k/256) and a linear step, 2^-31 units), w = p with v's row scale folded in at "
         "14 bits, and one float64 quotient of the exact sums (w v) / (p) a row, rounded once to float32; "
         "windows below 2^22 keys"),
    Rule("sum", "float32", 1, None, SUM_1,
         "each value rounded to 53 - ceil(log2 n) bits of the largest magnitude it is summed with, "
         "the integers summed exactly in float64, rounded once (a padded sum: n counts its nonzero terms)"),
    Rule("sum", "float64", 1, None, SUM_2,
         "two slices of 53 - ceil(log2 n) bits each (padded: as above)"),
)


def dtype_class(dtype: DTypeLike) -> str:
    """"float64" for float64 operands, "float32" for float32 and the narrower float types (computed
    in float32)."""
    return "float64" if np.dtype(dtype).itemsize > 4 else "float32"


def rule(op: str, dtype: DTypeLike, k: int) -> Rule:
    """The table's rule for `op` on operands of `dtype` reducing over `k` values. Its arguments are
    the only things a scheme may depend on."""
    cls = dtype_class(dtype)
    for r in TABLE:
        if r.op == op and r.dtype == cls and r.k_min <= k and (r.k_max is None or k <= r.k_max):
            return r
    raise ValueError(f"no exact scheme for {op} on {np.dtype(dtype)} with reduced length {k}")


def matmul_scheme(dtype: DTypeLike, k: int) -> str:
    return rule("matmul", dtype, k).scheme


def describe() -> str:
    """The table as Markdown (docs/determinism.md holds a copy; a test keeps them equal)."""
    lines = ["| op | dtype | K | scheme | what |", "|---|---|---|---|---|"]
    for r in TABLE:
        span = f"{r.k_min} .. {r.k_max}" if r.k_max is not None else f">= {r.k_min}"
        lines.append(f"| {r.op} | {r.dtype} | {span} | {r.scheme} | {r.detail} |")
    return "\n".join(lines)

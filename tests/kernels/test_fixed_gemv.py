"""The CPU's compiled loops for the integer scheme of decoder weight products (backend/cpu/fixed_gemv.py):
the integer sums, scaled and rounded by BlockQuantized, give exact.fixed's bits for every
type they take and 1 to 16 rows of x, the rows' exponents are fixed.row_exponents', and rows holding inf
or NaN take IEEE's values through the decoded path."""
import numpy as np
import pytest
from quant_rows import random_rows

pytest.importorskip("numba")

import loom  # noqa: E402
from loom import backend  # noqa: E402
from loom.backend.cpu import fixed_gemv  # noqa: E402
from loom.kernels.exact import fixed  # noqa: E402
from loom.kernels.quant.block import BlockQuantized  # noqa: E402

CPU = backend.get("cpu")


@pytest.mark.parametrize("qtype", fixed_gemv.TYPES)
@pytest.mark.parametrize("m", [1, 5, 16])
def test_integer_sums_give_the_schemes_bits(qtype, m):
    rng = np.random.default_rng(m + len(qtype))
    rows, cols = 37, 576
    data = random_rows(qtype, rows, cols, rng, scale=0.01, plain=0.05)
    w = BlockQuantized(data, qtype, (rows, cols))
    x = rng.standard_normal((m, cols)).astype(np.float32)
    x[0] *= 3e4
    assert fixed_gemv.supports(qtype, m)
    ew, bad = fixed_gemv.w_exponents(data, qtype, cols)
    dense = w.dequantize()
    assert np.array_equal(ew, fixed.row_exponents(np, dense)) and not bad.any()
    with loom.deterministic(True):
        got = w.matmul_t(x)
    assert np.array_equal(got.view(np.uint32), fixed.matmul_t(CPU, x, dense).view(np.uint32))


def test_rows_holding_inf_or_nan_take_ieees_values():
    rng = np.random.default_rng(3)
    rows, cols = 9, 64
    values = rng.standard_normal((rows, cols)).astype(np.float32)
    values[2, 5], values[4, 0] = np.inf, np.nan
    w = BlockQuantized(values.view(np.uint8).reshape(rows, -1), "F32", (rows, cols))
    x = rng.standard_normal((2, cols)).astype(np.float32)
    _, bad = fixed_gemv.w_exponents(w.data, "F32", cols)
    assert bad.tolist() == [False, False, True, False, True] + [False] * 4
    with loom.deterministic(True), np.errstate(invalid="ignore"):
        got = w.matmul_t(x)
        want = fixed.matmul_t(CPU, x, values)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    assert not np.isfinite(got[:, [2, 4]]).any() and np.isfinite(got[:, [0, 1, 3]]).all()

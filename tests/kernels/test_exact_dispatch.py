"""The dispatch table: one scheme per (op, dtype class, reduced length), covering every length once,
chosen from nothing else, and quoted verbatim in docs/determinism.md."""
import inspect
import pathlib

import numpy as np
import pytest

from loom.kernels.exact import dispatch

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "determinism.md"


@pytest.mark.parametrize("op, cls", sorted({(r.op, r.dtype) for r in dispatch.TABLE}))
def test_every_length_has_exactly_one_rule(op, cls):
    rules = sorted((r for r in dispatch.TABLE if (r.op, r.dtype) == (op, cls)), key=lambda r: r.k_min)
    assert rules[0].k_min == 1 and rules[-1].k_max is None
    for before, after in zip(rules, rules[1:]):
        assert after.k_min == before.k_max + 1


def test_the_scheme_depends_on_the_dtype_and_length_only():
    assert list(inspect.signature(dispatch.rule).parameters) == ["op", "dtype", "k"]
    assert list(inspect.signature(dispatch.matmul_scheme).parameters) == ["dtype", "k"]
    assert dispatch.matmul_scheme(np.float32, 2048) == dispatch.ROUNDED
    assert dispatch.matmul_scheme(np.float32, 2049) == dispatch.SLICES_2X1
    assert dispatch.matmul_scheme(np.float16, 784) == dispatch.ROUNDED
    assert dispatch.matmul_scheme(np.float64, 10) == dispatch.SLICES_3X3
    assert dispatch.rule("sum", np.float32, 10 ** 9).scheme == dispatch.SUM_1
    with pytest.raises(ValueError, match="no exact scheme for conv"):
        dispatch.rule("conv", np.float32, 3)


def test_the_docs_quote_the_table():
    assert dispatch.describe() in DOC.read_text()

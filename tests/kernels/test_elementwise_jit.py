"""elementwise_jit's compiled optimizer loops against fused.py's NumPy references, bit for bit, on
fresh random values with special values mixed in; and the cases that must stay on NumPy."""
import numpy as np
import pytest

from loom.backend.cpu import elementwise as elementwise_jit
from loom.kernels import fused

pytestmark = pytest.mark.skipif(not elementwise_jit.available(), reason="numba is not installed (loom[cpu])")

SPECS = [dict(momentum=0.0, dampening=0.0, nesterov=False, wd=0.0),
         dict(momentum=0.0, dampening=0.0, nesterov=False, wd=0.01),
         dict(momentum=0.9, dampening=0.0, nesterov=False, wd=0.0),
         dict(momentum=0.9, dampening=0.3, nesterov=False, wd=0.02),
         dict(momentum=0.8, dampening=0.0, nesterov=True, wd=0.001)]


def _values(rng, shape, dtype):
    x = (rng.standard_normal(shape) * np.exp2(rng.integers(-30, 30, shape))).astype(dtype)
    flat = x.reshape(-1)
    flat[:6] = [np.nan, np.inf, -np.inf, -0.0, np.finfo(dtype).smallest_subnormal, np.finfo(dtype).max]
    return x


def _steps(monkeypatch, jit: str, p, grads, buf, lr, spec):
    monkeypatch.setenv("LOOM_JIT", jit)
    p, buf = p.copy(), None if buf is None else buf.copy()
    for t, g in enumerate(grads, 1):
        before = g.copy()
        with np.errstate(all="ignore"):
            fused.sgd_update(p, g, buf, lr, spec["momentum"], spec["dampening"], spec["nesterov"], spec["wd"], t == 1)
        assert np.array_equal(g, before, equal_nan=True)          # the gradient is not modified
    return p, buf


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("lr_kind", ["float", "0d_array", "int"])
def test_sgd_loop_has_the_numpy_bits(monkeypatch, spec, dtype, lr_kind):
    rng = np.random.default_rng(7)
    p = _values(rng, (37, 11), dtype)
    grads = [_values(rng, p.shape, dtype) for _ in range(3)]
    buf = np.zeros_like(p) if spec["momentum"] else None
    lr = {"float": 0.0375, "0d_array": np.asarray(0.0375, dtype=dtype), "int": 1}[lr_kind]
    calls = []
    original = elementwise_jit.sgd_update
    monkeypatch.setattr(elementwise_jit, "sgd_update", lambda *a: calls.append(1) or original(*a))
    got = _steps(monkeypatch, "1", p, grads, buf, lr, spec)
    assert len(calls) == 3                                        # the loop ran
    want = _steps(monkeypatch, "0", p, grads, buf, lr, spec)
    assert len(calls) == 3                                        # and NumPy ran here
    for g_arr, w_arr in zip(got, want):
        if w_arr is not None:
            assert g_arr.tobytes() == w_arr.tobytes()


def test_cases_the_loop_does_not_take_stay_on_numpy(monkeypatch):
    monkeypatch.setenv("LOOM_JIT", "1")
    calls = []
    monkeypatch.setattr(elementwise_jit, "sgd_update", lambda *a: calls.append(1))
    rng = np.random.default_rng(1)
    p32 = rng.standard_normal((8, 6)).astype(np.float32)
    cases = [
        (p32.copy(), rng.standard_normal((8, 6)).astype(np.float32), np.asarray(0.1)),   # float64 0-d lr: promotes
        (p32.copy(), rng.standard_normal((8, 6)), 0.1),                                  # mixed dtypes
        (np.asfortranarray(p32), np.asfortranarray(p32), 0.1),                           # not C-ordered
        (p32.astype(np.float16), p32.astype(np.float16), 0.1),                           # float16
    ]
    for p, g, lr in cases:
        want = p.copy()
        want -= lr * g
        fused.sgd_update(p, g, None, lr, 0.0, 0.0, False, 0.0, True)
        assert np.array_equal(p, want)
    assert calls == []

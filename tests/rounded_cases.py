"""Operands for the correctly rounded float32 GEMM (loom/kernels/exact/rounded.py), shared by the
CPU tests and the GPU ones: random data, sparse data (entries with no nonzero product), data whose exact products land
on float32's midpoints, subnormals, overflow threshold and signed zeros."""
import numpy as np

from loom.kernels.exact import rounded as exact_rounded


def case(name, rng=None):
    """(a, b) float32 operands of the named kind."""
    rng = rng or np.random.default_rng(20261121)
    if name == "normal":
        return rng.standard_normal((24, 300)).astype(np.float32), rng.standard_normal((300, 20)).astype(np.float32)
    if name == "wide":                         # every element its own power of two, subnormal to 2^100
        a = rng.standard_normal((16, 40)) * np.exp2(rng.integers(-149, 100, (16, 40)))
        b = rng.standard_normal((40, 12)) * np.exp2(rng.integers(-149, 20, (40, 12)))
        return a.astype(np.float32), b.astype(np.float32)
    if name == "integers":                     # exact results, odd ones above 2^24 on float32 midpoints
        a = rng.integers(-3, 4, (20, 40)) * 2.0 ** 20
        a[:, 0] += 1
        return a.astype(np.float32), rng.integers(-3, 4, (40, 30)).astype(np.float32)
    if name == "midpoints":                    # 2^24 + 1 (a midpoint) plus a tiny term that decides
        a = np.zeros((7, 3), np.float32)
        a[:, 0], a[:, 1] = 2.0 ** 24, 1.0
        a[:, 2] = [2.0 ** -30, -2.0 ** -30, 0.0, 2.0 ** -100, -2.0 ** -100, 2.0 ** -149, -2.0 ** -149]
        b = np.ones((3, 4), np.float32)
        b[2, 1], b[2, 2] = -1.0, 0.0
        return a, b
    if name == "subnormal":                    # results on midpoints between subnormals, and tiny ones
        a = np.array([[3 * 2.0 ** -75, 2.0 ** -120], [3 * 2.0 ** -75, -2.0 ** -120], [3 * 2.0 ** -75, 0.0],
                      [5 * 2.0 ** -75, 0.0], [-2.0 ** -100, 0.0], [2.0 ** -100, -2.0 ** -100]], np.float32)
        return a, np.array([[2.0 ** -75, 2.0 ** -75], [2.0 ** -60, 1e-30]], np.float32).T.copy()
    if name == "overflow":                     # around 2^128 - 2^103, where float32 rounds to inf
        top = float(np.finfo(np.float32).max)
        a = np.array([[top, 2.0 ** 103], [top, 2.0 ** 102], [top, -2.0 ** 102], [-top, -2.0 ** 103],
                      [top, 2.0 ** 102 + 2.0 ** 90]], np.float32)
        return a, np.ones((2, 3), np.float32)
    if name == "sparse":                       # 90% zeros: half the entries have no nonzero product
        a = rng.standard_normal((64, 64)) * (rng.random((64, 64)) < 0.1)
        b = rng.standard_normal((64, 48)) * (rng.random((64, 48)) < 0.1)
        return a.astype(np.float32), b.astype(np.float32)
    raise ValueError(name)


CASES = ["normal", "wide", "integers", "midpoints", "subnormal", "overflow", "sparse"]


def doubtful(a, b):
    """Boolean [M, N]: the entries of a @ b whose float64 GEMM's error bound cannot certify them (they
    take exact_rounded's later stages)."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    r = a64 @ b64
    e = np.linalg.norm(a64, axis=1)[:, None] * np.linalg.norm(b64, axis=0) * exact_rounded.error_factor(
        a.shape[1]) + np.abs(r) * 2.0 ** -52
    with np.errstate(over="ignore"):
        return (r - e).astype(np.float32).view(np.uint32) != (r + e).astype(np.float32).view(np.uint32)

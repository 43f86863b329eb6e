"""Random stored rows of every GGML type (loom.kernels.quant.gguf) for product and decoder tests: random
code bytes with finite, moderate float16 scale fields (random bytes there would give inf and NaN)."""
import numpy as np

import loom
from loom.kernels import exact, fused
from loom.kernels.quant import gguf as gq

PLAIN = ("F32", "F16", "BF16")


def random_rows(qtype: str, rows: int, cols: int, rng: np.random.Generator, scale: float = 0.02,
                plain: float = 1.0) -> np.ndarray:
    """uint8 [rows, row bytes] of `qtype`: block scales in [1e-3, scale + 1e-3); plain types hold normal
    values times `plain`."""
    if qtype in PLAIN:
        values = (rng.standard_normal((rows, cols)) * plain).astype(np.float32)
        stored = {"F32": values, "F16": values.astype(np.float16),
                  "BF16": (values.view(np.uint32) >> 16).astype(np.uint16)}[qtype]
        return stored.view(np.uint8).reshape(rows, -1)
    block, size = gq.BLOCKS[qtype]
    blocks = rng.integers(0, 256, (rows * (cols // block), size), dtype=np.uint8)
    for at in gq.SCALE_FIELDS[qtype]:
        fields = (rng.random(len(blocks)) * scale + 1e-3).astype(np.float16)
        blocks[:, at:at + 2] = fields.view(np.uint8).reshape(-1, 2)
    return blocks.reshape(rows, -1)


def float32_edges(m: int, rows: int, cols: int, rng: np.random.Generator) -> tuple:
    """x float32 [m, cols] and w [rows, cols] (m > 7, rows > 10, cols > 100) of normal values with rows at
    float32's edges: x's row 1 overflows the products, 2 subnormal, 3 zero, 4 and 5 holding inf and NaN,
    6 the smallest values and signed zeros, 7 products that cancel to an exact zero; w's row 2 tiny, 3
    negative zeros, 5 and 8 holding -inf and NaN, 9 pairs of equal values, 10 near float32's maximum."""
    x = rng.standard_normal((m, cols)).astype(np.float32)
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    x[1] *= np.float32(3e36)
    x[2] *= np.float32(1e-38)
    x[3] = 0.0
    x[4, 17] = np.inf
    x[5, 3] = np.nan
    x[6, :7] = [1e-45, -1e-45, 2e-39, 0.0, -0.0, 3.0, -3.0]
    x[7, ::2] = -x[7, 1::2]
    w[2] *= np.float32(1e-30)
    w[3] = -0.0
    w[5, 11] = -np.inf
    w[8, 100] = np.nan
    w[9, ::2] = w[9, 1::2]
    w[10] = np.float32(3e38)
    return x, w


def gemv_reference(x, w, norm, eps, bias, residual, swiglu):
    """float64 residual + pro(x) @ w.T + bias (pro: RMSNorm times norm when given; swiglu: silu(gate) * up of
    the two halves of the product): what the decode step's fused products compute."""
    x = x.astype(np.float64)
    if norm is not None:
        x = x / np.sqrt((x * x).mean(axis=1, keepdims=True) + eps) * norm
    y = x @ w.T + (0 if bias is None else bias)
    if swiglu:
        g, u = np.split(y, 2, axis=1)
        y = g / (1 + np.exp(-g)) * u
    return y + (0 if residual is None else residual)


def exact_reference(x, w, norm, bias, residual, swiglu, eps=1e-5, product=None):
    """The decoder's array code on the CPU, deterministic mode: (residual +) pro(x) @ w.T (+ bias), or
    SwiGLU of the two halves; `product(x, w)` in place of the exact GEMM where given."""
    with loom.deterministic(True):
        if norm is not None:
            x = fused.rms_norm(x, norm, eps)[0]
        y = exact.matmul(x, w.T) if product is None else product(x, w)
        if bias is not None:
            y = y + bias
        if swiglu:
            rows = w.shape[0] // 2
            return fused.activation("silu", y[:, :rows]) * y[:, rows:]
        return y if residual is None else residual + y

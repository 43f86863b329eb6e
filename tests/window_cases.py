"""Convolution and pooling geometries shared by the window-kernel tests of each backend (CPU loops:
tests/backend/test_cpu_windows.py; CUDA: tests/gpu/test_window_kernels.py): 1-, 2- and 3-d, with
strides, dilations, asymmetric padding and groups; and pooling layers with inputs full of ties and
specials."""
import numpy as np

from loom.kernels import windows as conv


def geometry(k, s, d, lo, hi, big, groups):
    small = tuple((b + a + h - d_ * (k_ - 1) - 1) // s_ + 1 for b, a, h, k_, s_, d_ in zip(big, lo, hi, k, s, d))
    return conv.Geometry(tuple(k), tuple(s), tuple(d), tuple(lo), tuple(hi), tuple(big), small, groups)


GEOMETRIES = [
    # k, s, d, lo, hi, big, groups, channels
    ((3,), (1,), (1,), (1,), (1,), (9,), 1, 3),
    ((3,), (2,), (2,), (0,), (1,), (11,), 1, 2),
    ((3, 3), (1, 1), (1, 1), (1, 1), (1, 1), (7, 6), 1, 4),
    ((2, 3), (1, 2), (1, 1), (0, 1), (1, 1), (6, 7), 2, 4),
    ((3, 3), (2, 2), (2, 1), (2, 0), (1, 2), (9, 8), 3, 6),
    ((2, 2, 2), (1, 2, 1), (1, 1, 2), (0, 1, 1), (1, 0, 1), (4, 5, 5), 1, 2),
]

POOLS = [
    ({"type": "max_pool1d", "pool_size": 3, "stride": 1, "padding": 1}, (2, 9)),
    ({"type": "max_pool2d", "pool_size": 2}, (3, 8, 6)),
    ({"type": "max_pool2d", "pool_size": 2}, (3, 7, 5)),            # tiling with a remainder
    ({"type": "max_pool2d", "pool_size": 3, "stride": 2, "padding": 1}, (2, 7, 9)),
    ({"type": "max_pool3d", "pool_size": [2, 3, 2], "stride": [1, 2, 2]}, (1, 4, 7, 6)),
]


def pool_inputs(cfg, shape, dtype, seed=7):
    """(x [4, *shape] with few distinct values, so windows tie, and -inf and NaN where the tie rule and
    padding matter; a random upstream gradient of the pooled shape)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-2, 3, size=(4,) + shape).astype(dtype)
    flat = x.reshape(-1)
    flat[rng.choice(flat.size, flat.size // 10, replace=False)] = -np.inf
    flat[rng.choice(flat.size, flat.size // 20, replace=False)] = np.nan
    n = len(shape) - 1
    k = cfg["pool_size"] if isinstance(cfg["pool_size"], list) else [cfg["pool_size"]] * n
    s = cfg.get("stride", k)
    s = s if isinstance(s, list) else [s] * n
    p = cfg.get("padding", 0)
    out = [(shape[1 + i] + 2 * p - k[i]) // s[i] + 1 for i in range(n)]
    dy = rng.standard_normal((4, shape[0], *out)).astype(dtype)
    dy.reshape(-1)[::7] = -0.0
    return x, dy

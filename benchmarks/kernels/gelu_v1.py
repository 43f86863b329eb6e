"""gelu v1: the composition the dense layer ran before the fused kernels: ops.erf, a 50-term series and a
30-term continued fraction evaluated in float64 by CuPy, a few hundred launches per call."""
import math

from loom.kernels import ops

_INV_SQRT2 = 1 / math.sqrt(2)
_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)


def gelu(x):
    return 0.5 * x * (1 + ops.erf(x * _INV_SQRT2))


def gelu_grad(x, dy):
    cdf = 0.5 * (1 + ops.erf(x * _INV_SQRT2))
    return dy * (cdf + x * _INV_SQRT_2PI * ops.exp(-0.5 * x * x))

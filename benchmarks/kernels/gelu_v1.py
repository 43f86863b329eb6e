"""gelu v1: what the dense layer runs today, activation.apply / activation.grad with ops.erf, a 50-term
series and a 30-term continued fraction evaluated in float64 by CuPy: a few hundred launches per call."""
from loom.nn.layers import activation


def gelu(x):
    return activation.apply("gelu", x)


def gelu_grad(x, dy):
    return activation.grad("gelu", x, None, dy)

"""layer_norm v1: the CuPy composition LayerNorm runs today (mean, subtract, square, mean, add eps, sqrt,
reciprocal, scale, affine: about ten launches and as many temporaries); backward likewise."""
from loom.kernels import ops


def layer_norm(x, weight, bias, eps):
    mu = ops.mean(x, axis=-1, keepdims=True)
    xc = x - mu
    var = ops.mean(xc * xc, axis=-1, keepdims=True)
    rstd = 1 / ops.sqrt(var + x.dtype.type(eps))
    xhat = xc * rstd
    return xhat * weight + bias, xhat, rstd


def layer_norm_grad(dy, xhat, rstd, weight):
    dy = dy * weight
    mean_dy = ops.mean(dy, axis=-1, keepdims=True)
    mean_dy_xhat = ops.mean(dy * xhat, axis=-1, keepdims=True)
    return rstd * (dy - mean_dy - xhat * mean_dy_xhat)

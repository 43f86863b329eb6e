"""max_pool v1 (the array-module code, loom/nn/layers/pool.py max_pool_arrays / max_pool_grad_arrays): a
-inf padded window view copied flat, argmax and take_along_axis; the gradient as a one-hot where over
every window offset, scattered back with one strided add per offset."""
import cupy

from loom.nn.layers.pool import max_pool_arrays, max_pool_grad_arrays


def max_pool(x, k, s, p, out):
    return max_pool_arrays(cupy, x, k, s, p, out)


def max_pool_grad(dy, arg, k, s, p, size):
    return max_pool_grad_arrays(cupy, dy, arg, k, s, p, size)

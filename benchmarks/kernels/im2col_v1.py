"""im2col v1 (the array-module code, loom/kernels/windows.py im2col_arrays / col2im_arrays): pad, a strided
window view and a copy; col2im as one strided add per kernel offset into a zeroed padded array, then a crop."""
import cupy

from loom.kernels.windows import col2im_arrays, im2col_arrays


def im2col(x, geom):
    return im2col_arrays(cupy, x, geom)


def col2im(cols, b, c, geom):
    return col2im_arrays(cupy, cols, b, c, geom)

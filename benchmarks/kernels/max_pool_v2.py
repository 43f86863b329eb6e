"""max_pool v2 (ships, loom/backend/cuda/windows.py): the forward one thread per output scanning its window
(NaN and tie rules of numpy.argmax, padding as -inf), writing y and an int32 offset; the gradient in gather
form, one thread per input position adding dy of the windows whose maximum it was, in offset order (v1's
bits). Geometry compiled in, as im2col v2."""
from loom.backend.cuda.windows import max_pool, max_pool_grad

__all__ = ["max_pool", "max_pool_grad"]

"""Evaluate IR functions on arrays with an array module: NumPy here, CuPy unchanged.

Each IR node becomes one element-wise ufunc call with an explicit result dtype (conversion,
bitcast and select are astype, view and where), so nothing is fused, contracted or reassociated,
and every correctly rounded node gives the same bits as the CUDA lowering's intrinsic. Constants are
0-d scalars of their exact dtype, never Python floats, so NumPy's promotion rules never apply. Only
the `xp.` namespace touches data; `np` is used for dtypes.

The rules are rules.py's table (LOWER), the one the IR folds constant operands with while a kernel
is built, so folding and evaluation cannot disagree. The few nodes whose IR meaning is more than one
IEEE operation spell it out there exactly as lower_cuda.py does: float -> int conversion (NaN -> 0,
saturation) and shifts by a Value (masked).
"""
from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType

import numpy as np

from ... import backend
from ...backend import Array
from .. import ir
from .rules import LOWER

CHUNK = 8192     # NumPy: elements per pass, so a kernel's temporaries stay in cache (2x faster)


def evaluate(fn: ir.Function, *arrays: Array, xp: ModuleType = np,
             chunk: int | None = None) -> Array | tuple[Array, ...]:
    """Run `fn` element-wise on `arrays` (one per parameter, of exactly its dtype, broadcastable).
    Returns one array, or a tuple when `fn` has several results.

    With NumPy, large arrays go through in slices of `chunk` elements (CHUNK by default; 0 turns
    it off); elements are independent, so the bits are the same either way. Other array modules
    (CuPy) get whole arrays: there each ufunc is a kernel launch."""
    shape = check_arguments(fn, arrays)
    size = int(np.prod(shape, dtype=np.int64))
    if chunk is None:           # host arrays: cache-sized passes; a device: whole arrays, a launch per ufunc
        chunk = CHUNK if not arrays or backend.of(arrays[0]).host else 0
    if not chunk or size <= chunk:
        outs = _run(fn, arrays, shape, xp)
    else:
        flat = [xp.broadcast_to(a, shape).reshape(-1) for a in arrays]
        outs = tuple(xp.empty(size, dtype=r.type.dtype) for r in fn.results)
        for start in range(0, size, chunk):
            stop = min(start + chunk, size)
            for out, part in zip(outs, _run(fn, [f[start:stop] for f in flat], (stop - start,), xp)):
                out[start:stop] = part
        outs = tuple(o.reshape(shape) for o in outs)
    return outs[0] if len(outs) == 1 else outs


def check_arguments(fn: ir.Function, arrays: Sequence[Array]) -> tuple[int, ...]:
    """The broadcast shape of `arrays`, one per parameter of `fn` and each of exactly its dtype
    (TypeError naming the argument otherwise): every lowering's evaluate takes the same arguments."""
    if len(arrays) != len(fn.params):
        raise TypeError(f"{fn.name} takes {len(fn.params)} arrays, got {len(arrays)}")
    for i, (a, p) in enumerate(zip(arrays, fn.params)):
        if np.dtype(a.dtype) != p.type.dtype:
            raise TypeError(f"{fn.name}: argument {i} has dtype {a.dtype}, expected {p.type.dtype}")
    return np.broadcast_shapes(*(tuple(np.shape(a)) for a in arrays)) if arrays else ()


def _run(fn, arrays, shape, xp):
    env = {}
    with np.errstate(all="ignore"):     # IEEE overflow/invalid are results here, not errors
        for node in fn.live_nodes():
            if node.op == "param":
                env[node.index] = arrays[node.attr]
            elif node.op == "const":
                env[node.index] = node.const_value()
            else:
                env[node.index] = LOWER[node.op](xp, node.type, node.attr, [env[a.index] for a in node.args])
    return tuple(_full(xp, env[r.index], shape, r.type.dtype, copy=r.op == "param") for r in fn.results)


def _full(xp, value, shape, dtype, copy):
    if getattr(value, "shape", ()) == shape and not isinstance(value, np.generic):
        return value.copy() if copy else value
    return xp.broadcast_to(xp.asarray(value, dtype=dtype), shape).copy()

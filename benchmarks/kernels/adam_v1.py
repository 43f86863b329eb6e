"""adam v1: optim.Adam.update as CuPy runs it today: about twelve launches and five temporaries the size
of the parameter per update."""
from loom.kernels import ops


def adam_update(p, g, m, v, vmax, step_size, bc2_sqrt, b1, b2, eps, l2, decay):
    if l2 != 0:
        g = g + l2 * p
    if decay is not None:
        p *= decay
    w = 1 - b1
    if abs(w) < 0.5:
        m += w * (g - m)
    else:
        m[...] = g - (g - m) * (1 - w)
    v *= b2
    v += (1 - b2) * g * g
    if vmax is not None:
        ops._xp(vmax).maximum(vmax, v, out=vmax)
        v = vmax
    denom = ops.sqrt(v) / bc2_sqrt + eps
    p += (-step_size * m) / denom

"""Kernel lab: every numbered version in this folder (softmax_v1.py, softmax_v2.py, ...) is checked against
the NumPy reference (loom.kernels.fused on the CPU) on fresh random inputs, then timed on the GPU, beside
PyTorch's kernel for the same operation when a CUDA build of torch is installed. Run on the device machine:

    PYTHONPATH=. python benchmarks/kernels/run.py [family ...]
    # families: softmax layer_norm gelu adam im2col max_pool

Shapes come from the transformer encoder of benchmarks/gpu_train.py (d=512, 8 heads, sequence 256,
batch 32): norms over 8192 rows of 512, softmax over [32, 8, 256, 256], gelu on 8192 x 2048, Adam on a
1M-element parameter. float32. A version whose relative error (max abs difference over max abs value)
is not below 1e-5 is marked FAIL and the script exits 1. GB/s counts each input read once and each
output written once (the least traffic the operation needs). Times are medians of CUDA-event timings.
"""
from __future__ import annotations

import glob
import importlib
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from loom import backend  # noqa: E402  (after the path set-up above)
from loom.kernels import fused  # noqa: E402

TOL = 1e-5
REPEAT, WARMUP = 50, 5


@dataclass
class Case:
    family: str                        # version modules are named <family>_v<N>.py
    op: str                            # the function every version (and loom.kernels.fused) defines
    shape: str
    make: Callable                     # rng -> positional arguments (NumPy arrays and Python scalars)
    inplace: tuple[int, ...] = ()      # arguments the op updates in place: they are its outputs
    torch: Callable | None = None      # (torch, tensors) -> a callable timing PyTorch's kernel
    reference: Callable | None = None  # the NumPy reference (default: loom.kernels.fused.<op>)


def _f32(rng, *shape, scale=1.0):
    return (rng.normal(size=shape) * scale).astype(np.float32)


def _adam_args(rng):
    n = 1 << 20
    p, g = _f32(rng, n), _f32(rng, n)
    m, v = _f32(rng, n, scale=0.01), np.abs(_f32(rng, n, scale=1e-4))
    t, lr, b1, b2 = 10, 1e-3, 0.9, 0.999
    return [p, g, m, v, None, lr / (1 - b1 ** t), math.sqrt(1 - b2 ** t), b1, b2, 1e-8, 0.0, 1 - lr * 0.01]


def _norm_rows(rng):
    return [_f32(rng, 8192, 512, scale=2), _f32(rng, 512), _f32(rng, 512), 1e-5]


def _norm_grad(rng):
    _, xhat, rstd = fused.layer_norm(_f32(rng, 8192, 512, scale=2), None, None, 1e-5)
    return [_f32(rng, 8192, 512), xhat, rstd, _f32(rng, 512)]


def _softmax_grad(rng):
    return [fused.softmax(_f32(rng, 32, 8, 256, 256, scale=3)), _f32(rng, 32, 8, 256, 256)]


def _torch_softmax(torch, t):
    return lambda: torch.softmax(t[0], -1)


def _torch_softmax_grad(torch, t):
    return lambda: torch._softmax_backward_data(t[1], t[0], -1, t[0].dtype)


def _torch_layer_norm(torch, t):
    return lambda: torch.nn.functional.layer_norm(t[0], (t[0].shape[-1],), t[1], t[2], t[3])


def _torch_gelu(torch, t):
    return lambda: torch.nn.functional.gelu(t[0])


def _torch_gelu_grad(torch, t):
    return lambda: torch.ops.aten.gelu_backward(t[1], t[0])


def _torch_adam(torch, t):
    p = t[0].clone().requires_grad_(True)
    p.grad = t[1]
    opt = torch.optim.Adam([p], lr=1e-3, fused=True)
    return opt.step


# the convnet of benchmarks/gpu_train.py: its second convolution (32 -> 64 channels, 3x3, same padding
# on 14x14, batch 256) and its first pooling (32 channels, 28x28 -> 14x14)
def _conv_geometry():
    from loom.kernels.windows import Geometry
    return Geometry((3, 3), (1, 1), (1, 1), (1, 1), (1, 1), (14, 14), (14, 14), 1)


def _np_im2col(x, g):
    from loom.kernels.windows import im2col_arrays
    return im2col_arrays(np, x, g)


def _np_col2im(cols, b, c, g):
    from loom.kernels.windows import col2im_arrays
    return col2im_arrays(np, cols, b, c, g)


def _np_max_pool(x, k, s, p, out):
    from loom.nn.layers.pool import max_pool_arrays
    y, arg = max_pool_arrays(np, x, k, s, p, out)
    return y, arg.astype(np.float32)


def _np_max_pool_grad(dy, arg, k, s, p, size):
    from loom.nn.layers.pool import max_pool_grad_arrays
    return max_pool_grad_arrays(np, dy, arg, k, s, p, size)


def _pool_grad_args(rng):
    from loom.nn.layers.pool import max_pool_arrays
    x = _f32(rng, 256, 32, 28, 28)
    arg = max_pool_arrays(np, x, (2, 2), (2, 2), (0, 0), (14, 14))[1].astype(np.int32)
    return [_f32(rng, 256, 32, 14, 14), arg, (2, 2), (2, 2), (0, 0), (28, 28)]


def _torch_unfold(torch, t):
    return lambda: torch.nn.functional.unfold(t[0], 3, padding=1)


def _torch_max_pool(torch, t):
    return lambda: torch.nn.functional.max_pool2d(t[0], 2, return_indices=True)


CASES = [
    Case("softmax", "softmax", "[32, 8, 256, 256]", lambda rng: [_f32(rng, 32, 8, 256, 256, scale=3)],
         torch=_torch_softmax),
    Case("softmax", "softmax_grad", "[32, 8, 256, 256]", _softmax_grad, torch=_torch_softmax_grad),
    Case("layer_norm", "layer_norm", "[8192, 512]", _norm_rows, torch=_torch_layer_norm),
    Case("layer_norm", "layer_norm_grad", "[8192, 512]", _norm_grad),
    Case("gelu", "gelu", "[8192, 2048]", lambda rng: [_f32(rng, 8192, 2048, scale=3)], torch=_torch_gelu),
    Case("gelu", "gelu_grad", "[8192, 2048]", lambda rng: [_f32(rng, 8192, 2048, scale=3), _f32(rng, 8192, 2048)],
         torch=_torch_gelu_grad),
    Case("adam", "adam_update", "[1048576]", _adam_args, inplace=(0, 2, 3), torch=_torch_adam),
    Case("im2col", "im2col", "[256, 32, 14, 14] 3x3", lambda rng: [_f32(rng, 256, 32, 14, 14), _conv_geometry()],
         torch=_torch_unfold, reference=_np_im2col),
    Case("im2col", "col2im", "[256, 32, 14, 14] 3x3",
         lambda rng: [_f32(rng, 1, 256 * 196, 288), 256, 32, _conv_geometry()], reference=_np_col2im),
    Case("max_pool", "max_pool", "[256, 32, 28, 28] 2x2",
         lambda rng: [_f32(rng, 256, 32, 28, 28), (2, 2), (2, 2), (0, 0), (14, 14)], torch=_torch_max_pool,
         reference=_np_max_pool),
    Case("max_pool", "max_pool_grad", "[256, 32, 28, 28] 2x2", _pool_grad_args, reference=_np_max_pool_grad),
]


def versions(family: str):
    """(name, module) for each <family>_v<N>.py here, in version order."""
    paths = glob.glob(os.path.join(HERE, f"{family}_v*.py"))
    names = sorted((os.path.basename(p)[:-3] for p in paths), key=lambda n: int(n.rsplit("_v", 1)[1]))
    return [(n, importlib.import_module(n)) for n in names]


def _outputs(result, args, inplace):
    if inplace:
        return [args[i] for i in inplace]
    return list(result) if isinstance(result, tuple) else [result]


def rel_error(got: list, ref: list) -> float:
    err = 0.0
    for g, r in zip(got, ref):
        g, r = g.astype(np.float64), r.astype(np.float64)      # integer outputs (argmax offsets) too
        scale = max(float(np.max(np.abs(r))), float(np.finfo(r.dtype).tiny))
        err = max(err, float(np.max(np.abs(g.astype(np.float64) - r.astype(np.float64)))) / scale)
    return err


def traffic(args, outs) -> int:
    return sum(a.nbytes for a in args if hasattr(a, "nbytes")) + sum(o.nbytes for o in outs)


def time_us(fn) -> float:
    from cupyx.profiler import benchmark
    result = benchmark(fn, n_repeat=REPEAT, n_warmup=WARMUP)
    return float(np.median(result.gpu_times[0])) * 1e6


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


def run_case(case: Case, cuda, torch, rng) -> tuple[list[tuple], bool]:
    args = case.make(rng)
    ref_args = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
    reference = case.reference or getattr(fused, case.op)
    ref = _outputs(reference(*ref_args), ref_args, case.inplace)
    rows, ok = [], True
    base = None
    for name, module in versions(case.family):
        fn = getattr(module, case.op, None)
        if fn is None:
            continue
        dev = [cuda.asarray(a) if isinstance(a, np.ndarray) else a for a in args]
        outs = _outputs(fn(*dev), dev, case.inplace)
        err = rel_error([cuda.to_numpy(o) for o in outs], ref)
        passed = err < TOL
        ok &= passed
        us = time_us(lambda: fn(*dev))
        base = base or us
        gbs = traffic(dev, outs) / (us * 1e-6) / 1e9
        rows.append((f"{case.op} {case.shape}", name, f"{err:.2e}", "ok" if passed else "FAIL", f"{us:.1f}",
                     f"{gbs:.0f}", f"{base / us:.2f}x"))
    if torch is not None and case.torch is not None:
        tensors = [torch.as_tensor(a, device="cuda") if isinstance(a, np.ndarray) else a for a in args]
        us = time_us(case.torch(torch, tensors))
        rows.append((f"{case.op} {case.shape}", "torch", "-", "-", f"{us:.1f}", "-", f"{base / us:.2f}x"))
    return rows, ok


def print_table(rows):
    head = ("case", "version", "rel err", "check", "median us", "GB/s", "speed vs v1")
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, tuple("-" * w for w in widths), *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))


def main(argv):
    families = set(argv) or {c.family for c in CASES}
    cuda = backend.get("cuda")
    if getattr(cuda, "fused", None) is None:
        print("note: CUDABackend.fused is not attached; versions import loom.backend.cuda.fused directly", file=sys.stderr)
    seed = int(np.random.SeedSequence().entropy % (1 << 63))
    rng = np.random.default_rng(seed)
    torch = _torch()
    name = cuda.devices()[0]["name"]
    print(f"device {name}; inputs from seed {seed}; torch {'yes' if torch else 'not available (CUDA build)'}")
    rows, ok = [], True
    for case in CASES:
        if case.family in families:
            case_rows, case_ok = run_case(case, cuda, torch, rng)
            rows += case_rows
            ok &= case_ok
    print_table(rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""What every CUDA kernel module of the backend shares, in a module of its own so that none of them
imports the backend class: the compile options and the translation of CUDA failures into Loom's
errors."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ...errors import BackendError
from .. import Array

if TYPE_CHECKING:
    import cupy

# Every kernel is compiled with IEEE arithmetic: no fused multiply-add contraction, correctly rounded
# division and square root, subnormals kept (the CPU's results, bit for bit).
OPTIONS = ("--fmad=false", "--prec-div=true", "--prec-sqrt=true", "--ftz=false")


@contextlib.contextmanager
def translating(op: str, *arrays: Array) -> Iterator[None]:
    """Turn CUDA/CuPy failures inside the block into BackendError naming `op` and the shapes."""
    try:
        yield
    except BackendError:
        raise
    except Exception as exc:
        name = type(exc).__name__
        if "OutOfMemory" in name or "CUDA" in name.upper() or "cuda" in type(exc).__module__:
            shapes = ", ".join(f"{list(a.shape)} {a.dtype}" for a in arrays if hasattr(a, "shape"))
            raise BackendError(f"CUDA {op} failed on {shapes or 'its inputs'}: {name}: {exc}") from None
        raise


def arch_module(code: str, options: tuple[str, ...], arch: str) -> cupy.RawModule:
    """A module compiled for one architecture's own instructions (arch "90a": Hopper's wgmma and setmaxnreg), which
    run on that compute capability alone (CuPy's RawModule otherwise targets the device's portable sm_XX). CuPy
    appends its own -arch=sm_90 after this one; NVRTC keeps the last architecture number and the "a" of an earlier
    option for it (seen with NVRTC 12.9 and, through CuPy 14.2 on an H200, CUDA 13: wgmma compiled and gave numpy's
    sums), which no documentation promises: callers fall back where the compile fails."""
    import cupy  # (this module loads without CuPy)
    return cupy.RawModule(code=code, options=options + (f"-arch=sm_{arch}",))

"""Compile generated CUDA C for the host with g++ (through cuda_prelude_c.h) and call it with ctypes.

The prelude maps each CUDA intrinsic to the one IEEE operation it names, and -ffp-contract=off
-fno-fast-math keep g++ from fusing or reordering them, so the host run computes what the device
will: comparing its bits with the NumPy lowering checks lower_cuda.py without a GPU.
"""
from __future__ import annotations

import ctypes
import pathlib
import shutil
import subprocess

import numpy as np

PRELUDE = pathlib.Path(__file__).with_name("cuda_prelude_c.h")
COMPILER = shutil.which("g++")
FLAGS = ["-x", "c++", "-O2", "-ffp-contract=off", "-fno-fast-math", "-shared", "-fPIC"]


def build(sources: list[str], directory: pathlib.Path, stem: str = "kernels") -> ctypes.CDLL:
    """One shared library holding every source (kernel names must differ)."""
    src = directory / f"{stem}.cc"
    src.write_text(f'#include "{PRELUDE}"\n' + "\n".join(sources))
    lib = directory / f"{stem}.so"
    subprocess.run([COMPILER, *FLAGS, "-o", str(lib), str(src), "-lm"], check=True,
                   capture_output=True, text=True)
    return ctypes.CDLL(str(lib))


def call(lib: ctypes.CDLL, name: str, inputs, out_dtypes):
    """Run kernel `name` over 1-d contiguous inputs; returns its outputs."""
    inputs = [np.ascontiguousarray(a) for a in inputs]
    n = inputs[0].size
    outs = [np.empty(n, dtype=d) for d in out_dtypes]
    fn = getattr(lib, name)
    fn.restype = None
    fn.argtypes = [ctypes.c_void_p] * (len(inputs) + len(outs)) + [ctypes.c_longlong]
    fn(*[a.ctypes.data for a in inputs + outs], n)
    return outs

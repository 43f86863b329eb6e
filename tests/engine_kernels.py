"""Kernels the engine's CPU tests (tests/engine) and GPU tests (tests/gpu) both dispatch into units."""
from loom import engine as E


@E.kernel
def axpy(k, r: E.Buffer(E.F32), g: E.Buffer(E.F32), a: E.F32, n: E.I64):
    i = k.global_id()
    with k.if_(i < n):
        r[i] = r[i] + a * g[i]


@E.kernel
def add_one(k, r: E.Buffer(E.I64), n: E.I64):
    i = k.global_id()
    with k.if_(i < n):
        r[i] = r[i] + 1

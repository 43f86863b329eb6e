"""loom.engine: compute beyond neural networks, on the GPU (CuPy) and the CPU (NumPy) behind one API.

- Tier 1, one-call patterns (patterns.py; also at loom's top level): sum, scan, sort, topk, ...
- Tier 2, units and dispatch chains (unit.py) and swarms (swarm.py): boot a unit, dispatch kernels
  into its chain, build the chain into one replayable submission (a CUDA graph), run it.
- Tier 3, kernels written in Python (`kernel`, the IR of loom.kernels.ir.kernel), lowered to CUDA C and
  run with NumPy.
- Exact prime counting and listing (primes.py; sieve.py is the NumPy reference).

docs/engine.md is the reference.
"""
from __future__ import annotations

from ..kernels.ir import BOOL, F32, F64, I32, I64, U32, U64
from ..kernels.ir.kernel import Buffer, Kernel, kernel
from .primes import count_primes, prime_count, primes
from .swarm import build_all, swarm
from .unit import Program, Unit, boot

__all__ = ["count_primes", "prime_count", "primes", "boot", "Unit", "Program", "swarm", "build_all",
           "kernel", "Kernel", "Buffer", "F32", "F64", "I32", "I64", "U32", "U64", "BOOL"]

"""gelu v3 (ships, loom/backend/cuda_kernels.py): v2 with erf widened to float64 for float32 inputs,
exactly as the reference (ops.erf) widens, so float32 results round like the CPU's almost everywhere.
The kernel is memory-bound on GPUs with full-rate float64 (H100, H200), where the widening should be free."""
from loom.backend.cuda_kernels import gelu, gelu_grad

__all__ = ["gelu", "gelu_grad"]

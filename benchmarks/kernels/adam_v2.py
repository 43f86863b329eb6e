"""adam v2 (ships, loom/backend/cuda/fused.py): the whole update as one ElementwiseKernel: p, g, m, v
read once, p, m, v written once, no temporaries; the same operation order as v1 without FMA, so the bits
equal v1's. Scalars may be 0-d device arrays, so a recorded CUDA graph can change lr between replays."""
from loom.backend.cuda.fused import adam_update

__all__ = ["adam_update"]

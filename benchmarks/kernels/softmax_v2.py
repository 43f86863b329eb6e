"""softmax v2 (ships, loom/backend/cuda/fused.py): one RawKernel launch, one block per row; the row
max and the sum of exponentials are warp-shuffle + shared-memory reductions, exp(x - max) is stored once
and scaled in place, so x is read twice and y written once. The causal mask and the scale are folded into
the same kernel (scaled_masked_softmax). Backward: one launch, one dot-product reduction per row."""
from loom.backend.cuda.fused import softmax, softmax_grad

__all__ = ["softmax", "softmax_grad"]

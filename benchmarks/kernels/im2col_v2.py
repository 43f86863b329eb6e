"""im2col v2 (ships, loom/backend/cuda/windows.py): one kernel each, one thread per output element, the
geometry compiled in (every division by a constant, fixed loop trip counts), 32-bit indexing; col2im in
gather form: each input position adds the entries that read it in kernel-offset order, the same bits as
v1's scatter. A first v2 with the geometry as 18 runtime int arguments measured 103 us (im2col) and
82 us (col2im) per call in the convnet step on the H200 (torch.profiler): integer division dominated."""
from loom.backend.cuda.windows import col2im, im2col

__all__ = ["im2col", "col2im"]

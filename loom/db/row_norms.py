"""Row norms of stored vectors and queries: normalize for cosine scores, norms for the search
filter's bounds. k-means (kmeans.py), the search (search.py) and the store (vectors.py) take them
from here, so that k-means, which the index (ivf.py) runs, does not import the search, which
probes the index; search.py re-exports them.
"""
from __future__ import annotations

from types import ModuleType

import numpy as np

from ..backend import Array
from ..kernels import exact


def normalize(xp: ModuleType, v: Array) -> Array:
    """Rows divided by their L2 norm (exact sum of squares, correctly rounded sqrt and division: the
    same bits on every backend); zero rows stay zero."""
    norms = xp.sqrt(exact.sum(v.astype(np.float64) ** 2, axis=1, keepdims=True))
    return xp.where(norms > 0, v / xp.where(norms > 0, norms, 1.0), 0.0).astype(np.float32)


def norms(xp: ModuleType, v: Array) -> Array:
    """Each row's L2 norm in float64 (for the filter's bounds only)."""
    return xp.sqrt(xp.sum(v.astype(np.float64) ** 2, axis=1))

"""Deterministic k-means for the IVF index (ivf.py): the same centroids and assignments, bit for bit,
on the CPU and the GPU, with any BLAS and any thread count.

Scores follow the store's metric: the inner product for "dot" and "cosine" (spherical k-means:
cosine centroids are normalized after each average), 2 x.c - |c|^2 (the squared distance, less
|x|^2, negated) for "l2". Initial centroids: `nlist` rows drawn with loom.rng (faiss's random
initialization, not k-means++). A list left empty is refilled by splitting the largest (faiss's rule,
made deterministic: the largest, ties to the lower number; SPLIT_EPS apart).

- Assignment is exact-safe: the float32 GEMM picks a row's best centroid only when its lead over the
  second is more than twice the GEMM's error bound ((dim + 2) 2^-23 |x| |c|, as in search.py); else
  the centroids within reach are scored again exactly (float64 products, loom.kernels.exact.sum),
  ties to the lower centroid number. On 60k clustered rows of dim 384 about 0.2% of rows needed this.
- Averages are exact: rows are scaled to integers at one power of two (52 - log2(rows) bits of the
  largest magnitude), summed in float64 where every partial sum is an integer below 2^53 (so any
  order, bincount's or the GPU's atomics, gives the same bits), divided once. After the first round
  only the rows that changed list are moved between sums.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import rng
from ..backend import Array
from ..backend.protocols import Backend
from ..engine.order_keys import lexsort
from ..kernels import exact
from .row_norms import normalize

ASSIGN_ROWS = 16384             # rows scored against every centroid at a time
SPLIT_EPS = 1.0 / 1024          # faiss's EPS for splitting a large list into an empty one


def kmeans(be: Backend, x: Array, metric: str, nlist: int, iters: int, seed: int) -> Array:
    """Centroids [nlist, dim] float32 on be after `iters` rounds of assign-then-average over the rows
    x (float32 [n, dim], n >= nlist; normalized for cosine); seed draws the initial centroids."""
    xp = be.xp
    centroids = x[xp.asarray(draw(x.shape[0], nlist, seed, "ivf.init"))]
    if metric == "cosine":
        centroids = normalize(xp, centroids)
    sums = _Sums(be, x)
    norms = row_norms(xp, x)
    for _ in range(iters):
        labels = nearest(be, x, Centroids(be, metric, centroids), norms)
        centroids = _average(be, metric, sums, labels, centroids)
    return xp.ascontiguousarray(centroids)


class _Sums:
    """Sums by label of the training rows scaled to integers at one power of two (52 - log2(n) bits
    of their largest magnitude), so that any sum of them is an exact integer in float64."""

    def __init__(self, be: Backend, x: Array):
        xp = be.xp
        self.be, self.x = be, x
        top = float(xp.max(xp.abs(x))) if x.size else 0.0
        bits = 52 - max(0, (int(x.shape[0]) - 1).bit_length())
        self.exp = bits - math.frexp(top)[1] if top > 0 else 0       # top * 2^exp < 2^bits
        self.labels = self.total = None

    def by_label(self, labels: Array, nlist: int) -> Array:
        """The exact sum [nlist, dim] (float64, scaled) of the rows of each label. After the first
        call only the rows whose label changed are taken from their old sum and added to the new:
        exact integers all along (each partial sum below 2^52), so the same bits as summing anew."""
        xp = self.be.xp
        n, dim = self.x.shape
        if self.total is None:
            self.total = xp.zeros(nlist * dim, dtype=np.float64)
            self._add(xp.arange(n), labels, 1)
        else:
            moved = xp.flatnonzero(labels != self.labels)
            self._add(moved, self.labels[moved], -1)
            self._add(moved, labels[moved], 1)
        self.labels = labels.copy()
        return self.total.reshape(nlist, dim)

    def _add(self, rows: Array, labels: Array, sign: int) -> None:
        xp = self.be.xp
        dim = self.x.shape[1]
        cols = xp.arange(dim, dtype=np.int64)
        for s in range(0, rows.shape[0], ASSIGN_ROWS):
            r = rows[s:s + ASSIGN_ROWS]
            block = xp.rint(_times_power_of_two(xp, self.x[r].astype(np.float64), self.exp))
            slots = (labels[s:s + ASSIGN_ROWS].astype(np.int64)[:, None] * dim + cols).reshape(-1)
            self.total += sign * xp.bincount(slots, weights=block.reshape(-1), minlength=self.total.shape[0])


def _average(be: Backend, metric: str, sums: _Sums, labels: Array, old: Array) -> Array:
    """New centroids: each list's mean (normalized for cosine); an empty list takes half of the
    largest (faiss's split: that centroid nudged apart by SPLIT_EPS, alternate coordinates each way)."""
    xp = be.xp
    nlist, dim = old.shape
    counts = xp.bincount(labels, minlength=nlist)
    total = _times_power_of_two(xp, sums.by_label(labels, nlist), -sums.exp)
    c = (total / xp.maximum(counts, 1)[:, None].astype(np.float64)).astype(np.float32)
    sizes = be.to_numpy(counts).astype(np.int64)
    empty = np.flatnonzero(sizes == 0)
    if empty.size:
        c = xp.where(xp.asarray(sizes == 0)[:, None], old, c)
        up = xp.asarray(np.where(np.arange(dim) % 2 == 0, 1 + SPLIT_EPS, 1 - SPLIT_EPS).astype(np.float32))
        down = xp.asarray(np.where(np.arange(dim) % 2 == 0, 1 - SPLIT_EPS, 1 + SPLIT_EPS).astype(np.float32))
        for j in empty.tolist():
            big = int(np.argmax(sizes))
            c[j] = c[big] * up
            c[big] = c[big] * down
            sizes[j] = sizes[big] // 2
            sizes[big] -= sizes[j]
    return normalize(xp, c) if metric == "cosine" else c


class Centroids:
    """Centroids ready for float32 scoring: transposed (and doubled for l2, exactly) for one GEMM,
    with their exact squared norms and the largest norm (the GEMM's error bound)."""

    def __init__(self, be: Backend, metric: str, centroids: Array):
        xp = be.xp
        self.be, self.metric, self.centroids = be, metric, centroids
        self.sq = exact.sum(centroids.astype(np.float64) ** 2, axis=1)
        self.sq32 = self.sq.astype(np.float32)
        self.ct = xp.ascontiguousarray(centroids.T) * np.float32(2 if metric == "l2" else 1)
        self.top = float(xp.sqrt(xp.max(self.sq)))

    def scores(self, x: Array) -> Array:
        """float32 [m, nlist], larger better: x.c, or for l2 2 x.c - |c|^2 (|x - c|^2 less |x|^2,
        negated)."""
        s = self.be.matmul(x, self.ct)
        if self.metric == "l2":
            s -= self.sq32[None, :]
        return s


def row_norms(xp: Any, x: Array) -> Array:
    """Each row's norm in float64 from a float32 sum of squares, raised by that sum's error bound
    (the GEMM bound needs an upper bound, not the exact value)."""
    dim = x.shape[1]
    return xp.sqrt(xp.einsum("ij,ij->i", x, x).astype(np.float64)) * (1 + (dim + 2) * 2.0 ** -23)


def nearest(be: Backend, x: Array, coarse: Centroids, x_norms: Array | None = None) -> Array:
    """The best centroid of each row of x (int32 [n]): exact-safe, the same on every backend (module
    docstring), ties to the lower centroid number. x_norms: the rows' norms from row_norms, when
    known (training scores the same rows every round)."""
    xp = be.xp
    n, dim = x.shape
    nlist = coarse.centroids.shape[0]
    out = xp.empty(n, dtype=np.int32)
    cmax = coarse.top
    slack = (dim + 2) * 2.0 ** -23
    for s in range(0, n, ASSIGN_ROWS):
        block = x[s:s + ASSIGN_ROWS]
        scores = coarse.scores(block)
        r = xp.arange(block.shape[0])
        best = xp.argmax(scores, axis=1)
        first = scores[r, best]
        scores[r, best] = -np.inf
        second = scores.max(axis=1) if nlist > 1 else xp.full(block.shape[0], -np.inf, np.float32)
        scores[r, best] = first
        xn = row_norms(xp, block) if x_norms is None else x_norms[s:s + ASSIGN_ROWS]
        if coarse.metric == "l2":    # 2 x.c, then the rounding of 2 x.c - |c|^2 and of |c|^2 in float32
            bound = 2 * slack * xn * cmax + 2.0 ** -22 * (2 * xn * cmax + cmax * cmax)
        else:
            bound = slack * xn * cmax
        bound = bound + 2.0 ** -120         # underflow: a strictly positive margin
        gap = first.astype(np.float64) - second.astype(np.float64)
        unsure = xp.flatnonzero(~(gap > 2 * bound))
        if unsure.size:
            floor = first[unsure].astype(np.float64) - 2 * bound[unsure]
            best[unsure] = _exact_nearest(be, coarse.metric, block[unsure], coarse.centroids, scores[unsure], floor)
        out[s:s + block.shape[0]] = best
    return out


def _exact_nearest(be: Backend, metric: str, x: Array, centroids: Array, scores: Array, floor: Array) -> Array:
    """The best centroid of each row of x by exactly computed scores, among those whose float32
    score reaches floor (every one that could be the best), ties to the lower number."""
    xp = be.xp
    row, col = xp.nonzero(scores.astype(np.float64) >= floor[:, None])
    exact_scores = xp.empty(row.shape[0], dtype=np.float64)
    step = max(1, (1 << 22) // x.shape[1])
    for s in range(0, row.shape[0], step):
        a = x[row[s:s + step]].astype(np.float64)
        c = centroids[col[s:s + step]].astype(np.float64)
        exact_scores[s:s + step] = (-exact.sum((a - c) ** 2, axis=1) if metric == "l2"
                                    else exact.sum(a * c, axis=1))
    # pairs come ordered by (row, col): stable sorts by score, then by row, keep that order for ties
    order = lexsort(xp, (-exact_scores, row))
    row, col = row[order], col[order]
    head = xp.concatenate([xp.ones(1, dtype=bool), row[1:] != row[:-1]])
    return col[head]


def _times_power_of_two(xp: Any, x: Array, e: int) -> Array:
    """x * 2^e, exactly (a multiplication where 2^e is a float64, ldexp's slower pass otherwise)."""
    return x * (2.0 ** e) if -1000 < e < 1000 else xp.ldexp(x, e)


def draw(n: int, count: int, seed: int, stream: str) -> np.ndarray:
    """`count` distinct numbers of range(n), ascending, drawn by loom.rng (host int64)."""
    if count >= n:
        return np.arange(n, dtype=np.int64)
    keys = rng.Generator(seed, stream).bits(n)
    return np.sort(np.argsort(keys, kind="stable")[:count]).astype(np.int64)

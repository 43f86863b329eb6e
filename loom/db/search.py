"""Exact k-nearest-neighbour search with the same answer on every backend: filter with the library's
GEMM, refine the few candidates with exact arithmetic.

1. Filter: the float32 scores of each block of rows by the backend's GEMM (BLAS, cuBLAS), keeping each
   query's `keep` best (k plus a margin). A float32 dot product of dim terms is within
   (dim + 2) 2^-23 |q| |v| of the true one (twice the textbook bound gamma_dim, whatever the
   summation order or fusing), so the kept rows certainly hold the true top k when the best score
   dropped, plus its bound, stays below the k-th best lower bound among the kept; a query where that
   fails (many near-equal scores) is searched again with every row that could be in its top k.
2. Refine: each candidate's score again, in float64 from products that are exact (float32 times
   float32), summed by loom.kernels.exact.sum (the same bits on every backend), rounded once to
   float32. The top k by those scores, ties broken by the smaller id.

Scores: "dot" the dot product, "cosine" the dot product of the vectors normalized when stored (the
queries too), "l2" the squared distance (smallest first). Rows short of k are padded with id -1 and
score -inf (+inf for l2).
"""
from __future__ import annotations

from types import ModuleType

import numpy as np

from ..backend import Array
from ..backend.protocols import Backend
from ..kernels import exact

BLOCK_ROWS = 1 << 16            # database rows scored at a time
QUERY_BLOCK = 256


def normalize(xp: ModuleType, v: Array) -> Array:
    """Rows divided by their L2 norm (exact sum of squares, correctly rounded sqrt and division: the
    same bits on every backend); zero rows stay zero."""
    norms = xp.sqrt(exact.sum(v.astype(np.float64) ** 2, axis=1, keepdims=True))
    return xp.where(norms > 0, v / xp.where(norms > 0, norms, 1.0), 0.0).astype(np.float32)


def norms(xp: ModuleType, v: Array) -> Array:
    """Each row's L2 norm in float64 (for the filter's bounds only)."""
    return xp.sqrt(xp.sum(v.astype(np.float64) ** 2, axis=1))


def search(be: Backend, matrix: Array, row_norms: Array, ids: Array, queries: Array, k: int, metric: str,
           rows: Array | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(ids [m, k] int64, scores [m, k] float32) of the k best rows of `matrix` (float32 [n, dim] on
    be, ids[i] the id of row i, row_norms their norms) for each query [m, dim]; `rows`: only these
    row numbers may be returned (a filter's)."""
    if rows is not None:
        matrix, row_norms, ids = matrix[rows], row_norms[rows], ids[rows]
    m, n = queries.shape[0], matrix.shape[0]
    out_ids = np.full((m, k), -1, dtype=np.int64)
    out_scores = np.full((m, k), np.inf if metric == "l2" else -np.inf, dtype=np.float32)
    if n == 0 or m == 0:
        return out_ids, out_scores
    for start in range(0, m, QUERY_BLOCK):
        q = queries[start:start + QUERY_BLOCK]
        found = _block(be, matrix, row_norms, ids, q, min(k, n), metric)
        for i, (rid, score) in enumerate(found):
            out_ids[start + i, :len(rid)] = rid
            out_scores[start + i, :len(rid)] = score
    return out_ids, out_scores


def _fast_scores(be, q, block, block_norms, q_norms, metric):
    """Float32 scores, larger better (l2: minus the squared distance), and their error bounds."""
    xp = be.xp
    s = be.matmul(q, block.T)
    dim = q.shape[1]
    slack = (dim + 2) * 2.0 ** -23
    if metric == "l2":
        s = 2 * s - (block_norms.astype(np.float32) ** 2)[None, :] - (q_norms.astype(np.float32) ** 2)[:, None]
        bound = 4 * slack * (q_norms[:, None] + block_norms[None, :]) ** 2
    else:
        bound = slack * q_norms[:, None] * block_norms[None, :]
    return s.astype(np.float64), bound + xp.float64(2.0 ** -120)


def _block(be, matrix, row_norms, ids, q, k, metric):
    """[(ids, scores)] of each query of block q."""
    xp = be.xp
    n = matrix.shape[0]
    keep = min(n, 2 * k + 16)
    q_norms = norms(xp, q)
    m = q.shape[0]
    kept_s = xp.full((m, 0), -np.inf)
    kept_b = xp.zeros((m, 0))
    kept_r = xp.zeros((m, 0), dtype=np.int64)
    dropped = xp.full((m,), -np.inf)             # the best fast score among rows not kept
    bound_max = xp.zeros((m,))
    for start in range(0, n, BLOCK_ROWS):
        block = matrix[start:start + BLOCK_ROWS]
        s, b = _fast_scores(be, q, block, row_norms[start:start + BLOCK_ROWS], q_norms, metric)
        bound_max = xp.maximum(bound_max, b.max(axis=1))
        r = xp.broadcast_to(xp.arange(start, start + block.shape[0]), s.shape)
        take = min(keep + 1, s.shape[1])
        if take < s.shape[1]:
            part = xp.argpartition(-s, take - 1, axis=1)[:, :take]
            s, b, r = (xp.take_along_axis(a, part, axis=1) for a in (s, b, r))
        s, b, r = (xp.concatenate([kept, new], axis=1) for kept, new in ((kept_s, s), (kept_b, b), (kept_r, r)))
        order = xp.argsort(-s, axis=1)
        s, b, r = (xp.take_along_axis(a, order, axis=1) for a in (s, b, r))
        if s.shape[1] > keep:
            dropped = xp.maximum(dropped, s[:, keep])
        kept_s, kept_b, kept_r = s[:, :keep], b[:, :keep], r[:, :keep]
    # the k-th best lower bound among the kept, less a margin of several float32 ulps of any score: a
    # row below it cannot round to the k-th score and win the tie by a smaller id
    lower = xp.sort(kept_s - kept_b, axis=1)[:, -k]
    floor = lower - xp.abs(lower) * 2.0 ** -20 - bound_max / 4
    certain = be.to_numpy(dropped + bound_max < floor)
    kept_r = be.to_numpy(kept_r)
    out = []
    for i in range(m):
        if certain[i]:
            candidates = kept_r[i]
        else:                                     # every row whose score could reach the top k
            s, b = _fast_scores(be, q[i:i + 1], matrix, row_norms, q_norms[i:i + 1], metric)
            candidates = be.to_numpy(xp.flatnonzero(s[0] + b[0] >= floor[i]))
        out.append(_refine(be, matrix, ids, q[i], candidates, k, metric))
    return out


def _refine(be, matrix, ids, query, candidates, k, metric):
    """(ids, float32 scores) of the k best candidate rows by exactly computed scores, ties by id."""
    xp = be.xp
    scores = []
    for start in range(0, len(candidates), 4096):
        rows = matrix[xp.asarray(candidates[start:start + 4096])].astype(np.float64)
        q = query.astype(np.float64)[None, :]
        terms = (rows - q) ** 2 if metric == "l2" else rows * q
        scores.append(be.to_numpy(exact.sum(terms, axis=1)).astype(np.float32))
    score = np.concatenate(scores)
    cand_ids = be.to_numpy(ids[xp.asarray(candidates)])
    order = np.lexsort((cand_ids, score if metric == "l2" else -score))[:k]
    return cand_ids[order], score[order]

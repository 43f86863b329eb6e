"""Exact k-nearest-neighbour search with the same answer on every backend: filter with the library's
GEMM, refine the few candidates with certified exact arithmetic.

1. Filter: float32 scores of a block of queries against a block of rows by the backend's GEMM
   (BLAS, cuBLAS). A float32 dot product of dim terms is within (dim + 2) 2^-23 |q| |v| of the true
   one (twice the textbook bound gamma_dim, whatever the summation order or fusing), so with B that
   bound for the largest stored norm, a row whose fast score is below s_k - 2B - margin, where s_k
   is the k-th best fast score seen so far, is certainly below the k rows that gave those scores
   (margin: a few float32 ulps, so it cannot round to their score and win a tie by a smaller id).
   Each query keeps every row at or above its threshold; the threshold rises as blocks go by, so a
   query keeps about k log(n / block) rows. A query whose kept rows pass DENSE (many equal scores)
   is searched again alone, with its candidates refined chunk by chunk.
2. Refine: each candidate's score again from float64 terms (exact products of float32 values, or
   the float64 squared differences), summed in float64 with its error bound: where the interval
   rounds to one float32 that is the exact sum's rounding; elsewhere (rare) loom.kernels.exact.sum
   decides. Every score is therefore the exact sum rounded to float64 then to float32, the same
   bits on every backend. The top k by those scores, ties broken by the smaller id.

On CUDA the filter's comparisons and the refinement each run as one kernel (backend/cuda/search.py)
with the same arithmetic; elsewhere they are the array operations below. A block of queries whose
scores fit one GEMM is searched on CUDA in one pass with one copy back: each query's threshold from
the k-th best of its group maxima (a radix select), its candidates kept in slots on the device,
refined and ranked there; a query keeping too many candidates, or one with a score that exact.sum
must settle, goes the general way.

Scores: "dot" the dot product, "cosine" the dot product of the vectors normalized when stored (the
queries too), "l2" the squared distance (smallest first). Rows short of k are padded with id -1 and
score -inf (+inf for l2).
"""
from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from ..backend import Array
from ..backend.protocols import Backend
from ..engine.order_keys import lexsort
from ..kernels import exact
from .row_norms import normalize, norms  # noqa: F401 - normalize re-exported (tests, callers)

if TYPE_CHECKING:
    from .ivf import IVFIndex

REFINE_CHUNK = 1 << 14          # candidates scored exactly at a time
GROUPS = 1 << 14               # a GPU block's threshold: the k-th best of GROUPS / queries group maxima
KEPT = 1 << 24                  # candidates one block may keep on a GPU (20 bytes each)
HOST_SORT = 1 << 14             # fewer candidates than this are ranked on the host
DENSE = 1 << 16                 # a query keeping more rows than this is searched alone
LARGEST = 2.0 ** 50             # bigger components could overflow the float32 filter


def blocks(be: Backend) -> tuple[int, int]:
    """(queries per block, scores per block): a CPU keeps the score block near its caches, a GPU
    fills the device. Rows per block: as many as fit the scores, a multiple of 8."""
    return (1024, 1 << 24) if be.host else (2048, 1 << 27)


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
    k = min(k, n)
    sq = (row_norms ** 2).astype(np.float32) if metric == "l2" else None
    peak = row_norms.max()              # the largest norm, left on the device for the kernels
    step = blocks(be)[0]
    for start in range(0, m, step):
        q = queries[start:start + step]
        todo = None
        if be.search is not None:
            found = _top_on_device(be, matrix, sq, ids, q, k, metric, peak)
            if found is not None:
                got_ids, got_scores, todo = found
                out_ids[start:start + q.shape[0], :k], out_scores[start:start + q.shape[0], :k] = got_ids, got_scores
                if not todo.size:
                    continue
                q = q[be.xp.asarray(todo)]
        got_ids, got_scores = _block(be, matrix, sq, ids, q, k, metric, float(peak))
        at = start + (np.arange(q.shape[0]) if todo is None else todo)
        out_ids[at, :k], out_scores[at, :k] = got_ids, got_scores
    return out_ids, out_scores


def _block(be, matrix, sq, ids, q, k, metric, largest):
    """search() for one block of queries, through the filter's candidate lists (the general path)."""
    m = q.shape[0]
    out_ids = np.full((m, k), -1, dtype=np.int64)
    out_scores = np.full((m, k), np.inf if metric == "l2" else -np.inf, dtype=np.float32)
    if be.search is not None:
        # a few queries' bounds on the host: one copy, where the device would launch eight kernels
        host = q.shape[0] * q.shape[1] <= 1 << 16
        bound = _bound(np, be.to_numpy(q), largest, metric) if host else be.to_numpy(_bound(be.xp, q, largest, metric))
        qi, r, dense = _filter_kernels(be, matrix, sq, q, k, bound)
        bound = be.xp.asarray(bound)
    else:
        bound = _bound(be.xp, q, largest, metric)
        qi, r, dense = _filter(be, matrix, sq, q, k, metric, bound)
    _place(_refine(be, matrix, ids, q, qi, r, k, metric), out_ids, out_scores)
    for i in dense:
        r, score = _alone(be, matrix, sq, ids, q[i:i + 1], k, metric, bound[i:i + 1])
        out_ids[i, :len(r)] = be.to_numpy(ids[be.xp.asarray(r)])
        out_scores[i, :len(r)] = score
    return out_ids, out_scores


def _top_on_device(be, matrix, sq, ids, q, k, metric, peak):
    """(ids, scores, queries left over) of one block of queries by the backend's one-pass selection
    (all rows scored by one GEMM, each query's threshold from its group maxima, its candidates kept
    and ranked on the device, one copy back), or None where it does not apply. peak: the largest
    row norm (on the device). Queries left over (host int array: too many candidates, or a score to
    settle with exact.sum) go the general way."""
    m, n = q.shape[0], matrix.shape[0]
    q = be.xp.ascontiguousarray(q)
    groups = min(max(GROUPS // m, 4 * k), GROUPS)
    if m * n > blocks(be)[1] or n < 2 * groups or groups < k or 4 * k > be.search.CAPACITY \
            or not _fused(be, matrix, q):
        return None
    s = _fast(be, be.xp.ascontiguousarray(q.T), matrix, sq, None)
    th = be.search.threshold(be.search.group_max(s, groups), None, q, peak, metric == "l2", k)
    return settle(be, matrix, q, ids, *be.search.collect(s, th), k, metric)


def settle(be: Backend, matrix: Array, q: Array, ids: Array, rows: Array, count: Array, k: int,
           metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids [m, k], scores [m, k], queries left over) on the host from each query's candidate rows
    kept on the device (SearchKernels.collect): ranked there by exact score; a query with more
    candidates than the kernels hold, or a score they could not certify, is left over (its rows of
    the answer are padding)."""
    got_ids, got_scores, status = be.search.top(matrix, q, ids, rows, count, k, metric == "l2")
    return got_ids, got_scores, np.flatnonzero(status)


def rescore(be: Backend, matrix: Array, ids: Array, queries: Array, rows: Array, k: int,
            metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(ids [m, k], scores [m, k]) of each query's k best among its candidate rows (rows [m, c],
    -1 for none), by the exact scores search() gives; padded as search() pads."""
    xp = be.xp
    m = queries.shape[0]
    out_ids = np.full((m, k), -1, dtype=np.int64)
    out_scores = np.full((m, k), np.inf if metric == "l2" else -np.inf, dtype=np.float32)
    step = blocks(be)[0]
    for start in range(0, m, step):
        block = rows[start:start + step]
        valid = block >= 0
        qi = xp.broadcast_to(xp.arange(block.shape[0])[:, None], block.shape)[valid]
        _place(_refine(be, matrix, ids, queries[start:start + step], qi, block[valid], k, metric),
               out_ids[start:], out_scores[start:])
    return out_ids, out_scores


def probed(be: Backend, index: IVFIndex, matrix: Array, row_norms: Array, ids: Array, queries: Array, k: int, nprobe: int,
           metric: str, allowed: Array | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(ids [m, k], scores [m, k]) of each query's k best rows of the `nprobe` lists it probes in
    `index` (an ivf.IVFIndex over matrix's rows), by exact score, padded as search() pads; `allowed`
    an optional bool mask of the rows that may be returned. On a backend with search kernels every
    probed row is scored on the device and each query keeps every row the certified threshold of its
    k-th best allows, so its answer is the exact top k of its probed lists (ties to the smaller id; a
    query keeping too many is searched exactly over its probed rows); elsewhere the index's
    `candidates` (its best 2k + 16 by filter score) are refined, which is the same answer unless
    more than k + 16 rows tie at the k-th score."""
    m = queries.shape[0]
    out_ids = np.full((m, k), -1, dtype=np.int64)
    out_scores = np.full((m, k), np.inf if metric == "l2" else -np.inf, dtype=np.float32)
    queries = be.xp.ascontiguousarray(queries)
    gpu = (be.search is not None and index.n and be.search.probe_group(index.dim) > 0
           and 4 * k <= be.search.CAPACITY and _fused(be, matrix, queries))
    if not gpu:
        return rescore(be, matrix, ids, queries, index.candidates(matrix, queries, k, nprobe, allowed), k, metric)
    peak = row_norms.max()
    step = index.query_block(nprobe)
    for start in range(0, m, step):
        q = queries[start:start + step]
        scores, rows, seg = index.probe_scores(matrix, q, nprobe, allowed)
        th = be.search.threshold(scores, seg, q, peak, metric == "l2", k)
        got_ids, got_scores, todo = settle(be, matrix, q, ids, *be.search.collect_segments(scores, rows, seg, th),
                                           k, metric)
        out_ids[start:start + q.shape[0]], out_scores[start:start + q.shape[0]] = got_ids, got_scores
        seg = be.to_numpy(seg) if todo.size else seg
        for i in todo.tolist():                  # exact search over the query's probed rows
            part = slice(int(seg[i]), int(seg[i + 1]))
            mine = rows[part][scores[part] != -np.inf]
            got_ids, got_scores = search(be, matrix, row_norms, ids, q[i:i + 1], k, metric, mine)
            out_ids[start + i], out_scores[start + i] = got_ids[0], got_scores[0]
    return out_ids, out_scores


def _place(found, out_ids, out_scores):
    """Write _refine's (query numbers, rows, scores, ids) into the output rows by rank."""
    qi, _, score, row_ids = found
    rank = np.arange(len(qi)) - np.searchsorted(qi, qi)
    out_ids[qi, rank] = row_ids
    out_scores[qi, rank] = score


def _bound(xp, q, largest, metric):
    """Each query's bound on a fast score's error (float64 [m]), underflow included."""
    dim = q.shape[1]
    slack = (dim + 2) * 2.0 ** -23
    qn = norms(xp, q)
    if metric == "l2":                       # 2 q.v - |v|^2, each part and the difference rounded
        bound = 2 * slack * (2 * qn * largest + largest ** 2)
    else:
        bound = slack * qn * largest
    # float32 underflow, or a GPU flushing subnormal inputs, products and sums to zero: each term
    # off by at most 2^-126 (1 + |q| + |v|)
    return bound + 4 * dim * 2.0 ** -120 * (1 + qn + largest)


def _fast(be, qt, block, sq, out):
    """Float32 scores [rows, queries] of block's rows against the queries qt [dim, m] (transposed:
    the orientation BLAS runs fastest here), larger better (l2: 2 q.v - |v|^2, the squared distance
    less |q|^2)."""
    s = be.matmul(block, qt, out=out)
    if sq is not None:
        s *= 2
        s -= sq[:, None]
    return s


def _threshold(xp, sk, bound):
    """The lowest fast score a row may have and still rank with the row scoring sk (float32,
    rounded down so that comparing float32 scores keeps every such row)."""
    low = sk - 2 * bound - (xp.abs(sk) + bound) * 2.0 ** -20
    low32 = low.astype(np.float32)
    return xp.where(low32 > low, xp.nextafter(low32, np.float32(-np.inf)), low32)


def _filter(be, matrix, sq, q, k, metric, bound):
    """(query numbers, row numbers) of every candidate, sorted by query, and the queries to search
    alone (host list)."""
    xp = be.xp
    m, n = q.shape[0], matrix.shape[0]
    width = min(max(blocks(be)[1] // m // 8 * 8, 8), n)
    qt = xp.ascontiguousarray(q.T)
    scores = xp.empty((width, m), dtype=np.float32)
    mask = xp.empty((width, m), dtype=bool)
    th = xp.full((m,), -np.inf, dtype=np.float32)
    kept: list[tuple[Array, Array, Array]] = []
    dense: list[int] = []
    pending = 0
    for start in range(0, n, width):
        block = matrix[start:start + width]
        w = block.shape[0]
        whole = w == width
        s = _fast(be, qt, block, None if sq is None else sq[start:start + w], scores if whole else None)
        head = min(w, max(4096, (1 << 20) // m))
        if start == 0 and head >= k:         # a first threshold from the first rows' k-th best
            th = _threshold(xp, xp.partition(s[:head], head - k, axis=0)[head - k], bound)
        at = _above(be, s, th, mask if whole else xp.empty(s.shape, dtype=bool))
        if at.size:
            c, qi = at // m, at % m
            kept.append((qi, c + start, s[c, qi]))
            pending += at.size
        if pending > 8 * m * k and start + width < n:
            kept, th, more = _prune(xp, kept, th, k, bound)
            dense += more
            pending = 0
    total = sum(part[0].size for part in kept)
    if not be.host and total <= min(DENSE, 1 << 16):
        # a GPU spends more on the prune's dozens of small launches than on refining these few
        # more rows; no query can hold more than DENSE of them
        return (xp.concatenate([part[0] for part in kept]) if kept else xp.zeros(0, dtype=np.int64),
                xp.concatenate([part[1] for part in kept]) if kept else xp.zeros(0, dtype=np.int64), dense)
    kept, th, more = _prune(xp, kept, th, k, bound)
    return kept[0][0], kept[0][1], dense + more


def _filter_kernels(be, matrix, sq, q, k, bound):
    """_filter with the backend's kernels (backend/cuda/search.py). Per block of rows: the fast
    scores [rows, queries] by the GEMM; each query's threshold raised to the k-th best of its group
    maxima (the rows taken in interleaved groups, GROUPS maxima in all, at least 4k per query: k
    groups with a maximum at or above t hold k rows at or above t, so that k-th best is at most the
    block's k-th best score, and close to it); one kernel lists every (query, row) at or above the threshold. Candidates
    of earlier blocks below a query's final threshold are dropped. Queries keeping too many rows
    (many equal scores) are returned to be searched alone, as _filter does. `bound` on the host."""
    xp = be.xp
    m, n = q.shape[0], matrix.shape[0]
    width = min(max(blocks(be)[1] // m, k), n)
    qt = xp.ascontiguousarray(q.T)
    scores = xp.empty((width, m), dtype=np.float32)
    th_host = np.full(m, -np.inf, dtype=np.float32)
    groups = min(max(GROUPS // m, 4 * k), GROUPS)
    kept: list[tuple[Array, Array, Array]] = []
    alone = np.zeros(m, dtype=bool)
    for start in range(0, n, width):
        block = matrix[start:start + width]
        w = block.shape[0]
        s = _fast(be, qt, block, None if sq is None else sq[start:start + w], scores if w == width else None)
        if w >= k:
            # the maxima selected on the host: a GPU partition costs more launches than the copy
            # one slice: the host's partition costs about its row length per query
            tops = be.to_numpy(be.search.group_max(s, groups, 1) if w >= 2 * groups and groups >= k else s)
            kth = np.partition(np.ascontiguousarray(tops.T), tops.shape[0] - k, axis=1)[:, tops.shape[0] - k]
            th_host = np.maximum(th_host, _threshold(np, kth.astype(np.float64), bound))
            th_host[alone] = np.inf
        th = xp.asarray(th_host)
        found = be.search.above(s, th, start, KEPT)
        if found is None:                   # too many to hold: the queries keeping the most go alone
            counts = be.to_numpy((s >= th[None, :]).sum(axis=0))
            order = np.argsort(-counts, kind="stable")
            over = np.cumsum(counts[order]) > KEPT
            alone[order[over | (counts[order] > DENSE)]] = True
            th_host[alone] = np.inf
            found = be.search.above(s, xp.asarray(th_host), start, KEPT)
        kept.append(found)
    qi, r, fast = (xp.concatenate([part[j] for part in kept]) for j in range(3))
    if len(kept) > 1:
        keep = fast >= xp.asarray(th_host)[qi]
        qi, r = qi[keep], r[keep]
    if qi.size > DENSE:                     # else no query can hold more than DENSE
        alone |= be.to_numpy(xp.bincount(qi, minlength=m)) > DENSE
        if alone.any():
            keep = ~xp.asarray(alone)[qi]
            qi, r = qi[keep], r[keep]
    return qi, r, _host_list(np.flatnonzero(alone))


def _above(be, s, th, mask):
    """Flat positions in s [w, m] of the scores at or above their query's threshold. On the host the
    two halves of the rows are scanned by two threads (NumPy releases the GIL in both passes): the
    BLAS threads are idle meanwhile."""
    xp = be.xp

    def scan(a, b):
        xp.greater_equal(s[a:b], th[None, :], out=mask[a:b])
        return _true_at(xp, mask[a:b]) + a * s.shape[1]
    w = s.shape[0]
    if not be.host or w < 1024:
        return scan(0, w)
    half = w // 2
    second = _pool().submit(scan, half, w)
    return xp.concatenate([scan(0, half), second.result()])


@functools.cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(1, thread_name_prefix="loom-db-scan")


def _true_at(xp, mask):
    """Flat positions of the True entries of a contiguous boolean array that is mostly False: the
    nonzero 8-byte words first, then the bytes of those words."""
    flat = mask.reshape(-1)
    if flat.size % 8:
        return xp.flatnonzero(flat)
    words = xp.flatnonzero(flat.view(np.uint64))
    word, byte = xp.nonzero(flat.reshape(-1, 8)[words])
    return words[word] * 8 + byte


def _prune(xp, kept, th, k, bound):
    """The kept candidates merged, sorted by query then fast score, thresholds raised to each query's
    k-th best, rows below dropped; queries keeping more than DENSE rows are dropped (and returned)."""
    qi, r, s = (xp.concatenate([part[j] for part in kept]) if kept else xp.zeros(0, dtype=dt)
                for j, dt in ((0, np.int64), (1, np.int64), (2, np.float32)))
    order = lexsort(xp, (-s, qi))
    qi, r, s = qi[order], r[order], s[order]
    rank = xp.arange(qi.size) - xp.searchsorted(qi, qi)
    at = rank == k - 1
    th = th.copy()
    th[qi[at]] = xp.maximum(th[qi[at]], _threshold(xp, s[at].astype(np.float64), bound[qi[at]]))
    counts = xp.bincount(qi, minlength=th.size)
    dense = _host_list(xp.flatnonzero(counts > DENSE))
    if dense:
        th[xp.asarray(dense)] = np.inf
    keep = s >= th[qi]
    return [(qi[keep], r[keep], s[keep])], th, dense


def _host_list(x):
    """A small index array as a host list."""
    return [int(v) for v in x.tolist()]


def _alone(be, matrix, sq, ids, q, k, metric, bound):
    """(rows, scores) of one query's top k when many rows score alike: every row at or above the
    threshold of the k-th best fast score, refined chunk by chunk, keeping the best k."""
    xp = be.xp
    n = matrix.shape[0]
    width = max(blocks(be)[1] // 8 * 8, 8)
    fast = xp.concatenate([_fast(be, q.T, matrix[s:s + width], None if sq is None else sq[s:s + width], None)[:, 0]
                           for s in range(0, n, width)])
    th = _threshold(xp, xp.partition(fast, n - k)[n - k:n - k + 1].astype(np.float64), bound)
    candidates = xp.flatnonzero(fast >= th[0])
    best = xp.zeros(0, dtype=np.int64)
    score = np.zeros(0, dtype=np.float32)
    for s in range(0, candidates.size, REFINE_CHUNK):
        r = xp.concatenate([best, candidates[s:s + REFINE_CHUNK]])
        _, best, score, _ = _refine(be, matrix, ids, q, xp.zeros(r.size, dtype=np.int64), r, k, metric)
        best = xp.asarray(best)
    return be.to_numpy(best), score


def _refine(be, matrix, ids, q, qi, r, k, metric):
    """(query numbers, rows, float32 scores, ids) of each query's k best candidates (qi, r), sorted
    by query then rank, on the host; scores certified exact (module docstring), ties to the smaller
    id."""
    xp = be.xp
    chunk = max(qi.size, 1) if _fused(be, matrix, q) else REFINE_CHUNK     # the kernel keeps no terms
    score = xp.concatenate([_exact_scores(be, matrix, q, qi[s:s + chunk], r[s:s + chunk], metric)
                            for s in range(0, qi.size, chunk)] or [xp.zeros(0, dtype=np.float32)])
    row_ids = ids[r]
    if not be.host and qi.size <= HOST_SORT:
        # a few thousand candidates rank faster in NumPy than through a GPU sort's dozen launches
        xp, qi, r, score, row_ids = np, *(be.to_numpy(a) for a in (qi, r, score, row_ids))
    key = (score if metric == "l2" else -score) + np.float32(0)     # -0 and +0 sort as equal everywhere
    order = lexsort(xp, (row_ids, key, qi))
    qi, r, score, row_ids = qi[order], r[order], score[order], row_ids[order]
    top = (xp.arange(qi.size) - xp.searchsorted(qi, qi)) < k
    return tuple(be.to_numpy(a[top]) for a in (qi, r, score, row_ids))


def _exact_scores(be, matrix, q, qi, r, metric):
    """float32 score of query qi[j] with row r[j]: the exact sum of the float64 terms, rounded to
    float64 then float32. The float64 sum and its error bound settle almost all; exact.sum the rest."""
    xp = be.xp
    if _fused(be, matrix, q):
        out, unsure = be.search.exact_scores(matrix, q, qi, r, metric == "l2")
        if unsure.size:
            out[unsure] = exact.sum(_terms(matrix, q, qi[unsure], r[unsure], metric), axis=1).astype(np.float32)
        return out
    terms = _terms(matrix, q, qi, r, metric)
    approx = terms.sum(axis=1)
    err = terms.shape[1] * 2.0 ** -52 * xp.abs(terms).sum(axis=1) + 2.0 ** -1000
    low, high = (approx - err).astype(np.float32), (approx + err).astype(np.float32)
    out = low
    unsure = xp.flatnonzero(low.view(np.int32) != high.view(np.int32))
    if unsure.size:
        out[unsure] = exact.sum(terms[unsure], axis=1).astype(np.float32)
    return out


def _terms(matrix, q, qi, r, metric):
    """The float64 terms whose exact sum is the score of query qi[j] with row r[j]."""
    rows = matrix[r].astype(np.float64)
    qq = q[qi].astype(np.float64)
    return (rows - qq) ** 2 if metric == "l2" else rows * qq


def _fused(be, matrix, q):
    """Whether the backend's refinement kernel takes these operands (float32, C-contiguous)."""
    return (be.search is not None and matrix.dtype == np.float32 and q.dtype == np.float32
            and matrix.flags.c_contiguous and q.flags.c_contiguous)

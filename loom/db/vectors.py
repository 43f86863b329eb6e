"""LoomDB: a vector store that never loses an acknowledged write, searched exactly on the CPU or the GPU.

    with VectorStore.open("shelf", dim=384, metric="cosine") as store:
        store.add([1, 2], vectors, metadata=[{"play": "Hamlet"}, {"play": "Lear"}])
        ids, scores = store.search(query, k=10, filter={"play": {"in": ["Hamlet", "Lear"]}})

A store is a directory:
- `catalog.sqlite`: settings, and each live id's record location and JSON metadata (catalog.py);
- `segments/NNNNNN.seg`: the vectors, append-only records with checksums (segments.py);
- `ivf.index`: the IVF-Flat index when one was built (ivf.py); a derived file: rows written after it
  was saved are assigned again on opening;
- `LOCK`: held (flock) by the one writer.

A write appends its records and fsyncs them, then commits their catalog rows in one SQLite
transaction (WAL, synchronous=FULL), then returns: once `add`, `upsert` or `delete` has returned, the
change survives kill -9 or a power cut, and before the commit nothing of it is visible. On opening,
the writer cuts each segment back to its committed size and deletes segment files the catalog does
not name (left by a crash during `compact`). Every vector read is checked against its checksum.

All live vectors are held in memory (device="cuda": in GPU memory) for search; `get` reads the stored
bytes back from disk, so it returns exactly what was added. Readers (readonly=True) may open a store
while its writer works; each sees the state committed when it opened (or last called `refresh`).
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import sqlite3
from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import backend
from ..atomic import describe
from ..engine.unit import Unit
from ..errors import BackendError, ConfigError, FormatError, NotFoundError, NumericError, ShapeError, StoreError
from . import catalog, filters, ivf, search, segments
from .catalog import transaction
from .row_norms import normalize, norms

METRICS = ("cosine", "dot", "l2")
SEGMENT_BYTES = 1 << 28          # a new segment file past this size
_SEGMENT_NAME = re.compile(r"^(\d{6})\.seg$")
MAX_ID = (1 << 63) - 1


class VectorStore:
    """An open store: see the module docstring. Create or open with VectorStore.open."""

    def __init__(self, path: str, db: sqlite3.Connection, settings: dict, device: str, readonly: bool, lock_fd: int | None):
        self.path, self.readonly, self.device = path, readonly, device
        self.dim, self.metric = int(settings["dim"]), settings["metric"]
        self._db, self._lock_fd = db, lock_fd
        self._be = backend.get(device)
        self._closed = False
        self._load()

    # --- opening and closing ---------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike[str], dim: int | None = None, metric: str | None = None,
             device: str = "cpu", readonly: bool = False) -> VectorStore:
        """Open the store at `path` (a directory), creating it when missing (then dim and metric are
        needed; metric defaults to "cosine"). dim and metric, when given for an existing store, must
        match it. device: "cpu" or "cuda" (vectors held in GPU memory). readonly: a reader, which
        never takes the writer's lock; a second writer raises StoreError."""
        path = os.fspath(path)
        if metric is not None and metric not in METRICS:
            raise ConfigError("metric", f"expected one of {', '.join(METRICS)}, got {metric!r}")
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int | np.integer) or dim <= 0):
            raise ConfigError("dim", f"expected a positive integer, got {dim!r}")
        db_path = os.path.join(path, "catalog.sqlite")
        exists = os.path.exists(db_path)
        if not exists:
            if readonly:
                raise NotFoundError(f"{path}: no vector store here (no catalog.sqlite)")
            if dim is None:
                raise ConfigError("dim", f"{path} is a new store: give its dimension")
            try:
                os.makedirs(os.path.join(path, "segments"), exist_ok=True)
            except OSError as exc:
                raise describe(exc, path) from None
        lock_fd = None if readonly else _lock(path)
        try:
            db = catalog.connect(db_path, readonly)
            settings = catalog.settings(db)
            if not settings:
                if readonly:
                    raise FormatError(f"{db_path}: the catalog has no settings (a store being created?)")
                with transaction(db):
                    db.executemany("INSERT INTO settings VALUES (?, ?)",
                                   [("format", "1"), ("dim", str(int(dim))), ("metric", metric or "cosine")])
                settings = catalog.settings(db)
            if settings.get("format") != "1" or "dim" not in settings or settings.get("metric") not in METRICS:
                raise FormatError(f"{db_path}: not a LoomDB catalog of format 1 (settings {settings})")
            for name, given in (("dim", dim), ("metric", metric)):
                if given is not None and str(given) != settings[name]:
                    raise ConfigError(name, f"the store at {path} has {name} {settings[name]}, got {given!r}")
            if not readonly:
                _recover(path, db, int(settings["dim"]))
            return cls(path, db, settings, device, readonly, lock_fd)
        except BaseException:
            if lock_fd is not None:
                os.close(lock_fd)
            raise

    def close(self) -> None:
        """Close the catalog and release the writer's lock (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._index is not None and not self._index_saved and not self.readonly:
                self._index.save(self._index_path(), self._ids[:self._n])
        finally:
            self._db.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
        self._matrix = self._norms = None

    def __enter__(self) -> VectorStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        self._open_or_raise()
        return self._n

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self._n} vectors"
        return f"VectorStore({self.path!r}, dim={self.dim}, metric={self.metric!r}, {state}, device={self.device!r})"

    def refresh(self) -> None:
        """Reload the committed state (a reader following its writer)."""
        self._open_or_raise()
        self._load()

    # --- writing ---------------------------------------------------------------------------------

    def add(self, ids: Any, vectors: Any, metadata: Sequence[Any] | None = None) -> None:
        """Add new vectors: ids (ints in [0, 2^63)), vectors [n, dim] (or one id and one [dim]
        vector), metadata None or one JSON-serializable value (or None) per vector. An id already in
        the store, or twice in ids, raises ConfigError naming it; nothing is written then."""
        self._write(ids, vectors, metadata, replace=False)

    def upsert(self, ids: Any, vectors: Any, metadata: Sequence[Any] | None = None) -> None:
        """add, replacing the vector and metadata of ids already in the store."""
        self._write(ids, vectors, metadata, replace=True)

    def capture(self, source: Any, offset: int, count: int, ids: Any,
                metadata: Sequence[Any] | None = None, buffer: str = "globals") -> None:
        """Add `count` vectors straight from a compute-engine unit's buffer (its elements offset ..
        offset + count * dim) or from a CuPy/NumPy array [rows, dim] (rows offset .. offset + count):
        on the GPU they reach the store's GPU memory without a trip through the host (the segment
        file still gets a copy)."""
        if isinstance(source, Unit):
            flat = source.copy(offset, count * self.dim, buffer)
            rows = flat.reshape(count, self.dim)
        else:
            array = source if hasattr(source, "shape") else np.asarray(source)
            if array.ndim != 2 or array.shape[1] != self.dim:
                raise ShapeError(f"capture: expected rows of {self.dim} values, got shape {tuple(array.shape)}")
            if not 0 <= offset <= offset + count <= array.shape[0]:
                raise ConfigError("offset", f"rows [{offset}, {offset + count}) lie outside {array.shape[0]} rows")
            rows = array[offset:offset + count]
        self._write(ids, rows, metadata, replace=False)

    def delete(self, ids: Any) -> int:
        """Remove these ids; returns how many were in the store (the others are not an error)."""
        self._writable("delete from")
        ids = _ids(ids)
        with transaction(self._db) as db:
            gone = catalog.existing(db, ids.tolist())
            for start in range(0, len(gone), 500):
                chunk = gone[start:start + 500]
                db.execute(f"DELETE FROM vectors WHERE id IN ({','.join('?' * len(chunk))})", chunk)
        for i in gone:
            self._remove_row(i)
        return len(gone)

    def compact(self) -> int:
        """Rewrite the live records of segments that hold deleted or replaced ones into a new segment
        and delete the old files; returns the bytes reclaimed. Crash-safe: the new file is written and
        fsynced before one transaction moves the catalog to it, and files the catalog no longer names
        are deleted (again on the next open, if a crash came first)."""
        self._writable("compact")
        size = segments.record_size(self.dim)
        sizes = catalog.segment_sizes(self._db)
        live = dict(self._db.execute("SELECT segment, COUNT(*) FROM vectors GROUP BY segment"))
        stale = sorted(s for s, b in sizes.items() if b > live.get(s, 0) * size)
        if not stale:
            return 0
        ids, segs, offsets = catalog.live(self._db)
        moving = np.isin(segs, stale)
        ids, segs, offsets = ids[moving], segs[moving], offsets[moving]
        vectors = self._read(ids, segs, offsets)
        seq = max(sizes) + 1
        start = segments.append(self._segment_path(seq), segments.encode(ids, vectors)) if ids.size else 0
        with transaction(self._db) as db:
            db.executemany("UPDATE vectors SET segment = ?, offset = ? WHERE id = ?",
                           [(seq, start + i * size, int(v)) for i, v in enumerate(ids.tolist())])
            db.execute("INSERT INTO segments VALUES (?, ?)", (seq, start + len(ids) * size))
            db.executemany("DELETE FROM segments WHERE seq = ?", [(s,) for s in stale])
        _remove_unnamed(self.path, self._db)
        return sum(sizes[s] for s in stale) - len(ids) * size

    def build_index(self, nlist: int | None = None, nprobe: int | None = None, iters: int = 10,
                    seed: int = 0) -> None:
        """Train an IVF-Flat index (ivf.py: k-means into `nlist` lists, default about 4 sqrt(n))
        over the vectors now in the store, for search(exact=False). nprobe: the lists a query probes
        by default (default nlist / 32, at least 1). Later writes keep it current (new vectors join
        their nearest list); it is saved in the store (ivf.index) and loaded on open. Rebuild it
        when the data has drifted far from what it was trained on."""
        self._writable("index")
        n = self._n
        if nlist is None:
            nlist = max(1, min(n, round(4 * n ** 0.5)))
        index = ivf.IVFIndex.train(self._be, self._matrix[:n], self.metric, nlist, iters=iters, seed=seed)
        if nprobe is not None and (isinstance(nprobe, bool) or not isinstance(nprobe, int | np.integer) or nprobe <= 0):
            raise ConfigError("nprobe", f"expected a positive integer, got {nprobe!r}")
        probes = max(1, index.nlist // 32) if nprobe is None else int(nprobe)
        index.save(self._index_path(), self._ids[:n])
        with transaction(self._db) as db:
            db.execute("INSERT OR REPLACE INTO settings VALUES ('nprobe', ?)", (str(probes),))
        self._index, self._nprobe, self._index_saved = index, probes, True

    def drop_index(self) -> None:
        """Remove the IVF index (search(exact=False) then raises until build_index)."""
        self._writable("drop the index of")
        if os.path.exists(self._index_path()):
            os.remove(self._index_path())
        self._index = None

    @property
    def index(self) -> ivf.IVFIndex | None:
        """The IVF index, or None."""
        return self._index

    # --- reading ---------------------------------------------------------------------------------

    def get(self, ids: Any) -> tuple[np.ndarray, list[Any]]:
        """(vectors [n, dim] float32 as stored, metadata list) of these ids, read back from disk and
        checked; an id not in the store raises NotFoundError naming it."""
        self._open_or_raise()
        ids = _ids(ids)
        rows = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500].tolist()
            rows.update({r[0]: r[1:] for r in self._db.execute(
                f"SELECT id, segment, offset, metadata FROM vectors WHERE id IN ({','.join('?' * len(chunk))})", chunk)})
        missing = [i for i in ids.tolist() if i not in rows]
        if missing:
            raise NotFoundError(f"id {missing[0]} is not in the store at {self.path}"
                                + (f" ({len(missing)} ids missing)" if len(missing) > 1 else ""))
        segs = np.array([rows[i][0] for i in ids.tolist()], dtype=np.int64)
        offsets = np.array([rows[i][1] for i in ids.tolist()], dtype=np.int64)
        out = self._read(ids, segs, offsets)
        meta = [None if rows[i][2] is None else json.loads(rows[i][2]) for i in ids.tolist()]
        return out, meta

    def ids(self) -> np.ndarray:
        """Every live id, ascending."""
        self._open_or_raise()
        return np.sort(self._ids[:self._n])

    def search(self, queries: Any, k: int, filter: dict | None = None, exact: bool = True,  # noqa: A002
               nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The k best vectors for each query ([dim] or [m, dim]): (ids, scores), int64 and float32,
        [k] or [m, k] on the host. Exact: every vector is scored (search.py: a GEMM then exact
        refinement), ties go to the smaller id, and the answer is the same on the CPU and the GPU.
        Scores: cosine similarity, dot product, or squared L2 distance (ascending). `filter`: a
        metadata predicate (filters.py) applied before the top k. Fewer than k matches are padded with
        id -1 and score -inf (+inf for l2). exact=False: only the rows of each query's `nprobe`
        nearest lists of the index (build_index; nprobe defaults to the one given there) are
        scored, exactly as above: the scores are exact, a true neighbour in a list not probed is
        missed."""
        self._open_or_raise()
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k <= 0:
            raise ConfigError("k", f"expected a positive integer, got {k!r}")
        xp = self._be.xp
        q = self._vectors(queries, "queries")
        single = q.ndim == 1
        q = xp.asarray(q.reshape(1, -1) if single else q)
        if self.metric == "cosine":
            q = normalize(xp, q)
        if not exact and self._index is None:
            raise StoreError(f"the vector store at {self.path} has no index: call build_index() first, or "
                             f"search with exact=True")
        rows = None
        if filter is not None:
            sql, params = filters.to_sql(filter)
            allowed = [r[0] for r in self._db.execute(f"SELECT id FROM vectors WHERE {sql}", params)]
            rows = xp.asarray(np.array([self._row[i] for i in allowed if i in self._row], dtype=np.int64))
        n = self._n
        probes = self._nprobe if nprobe is None else nprobe
        if not exact and rows is not None and rows.shape[0] * self._index.nlist <= 4 * n * probes:
            exact = True            # the filter leaves fewer rows than the probed lists hold: score them all
        if exact:
            ids, scores = search.search(self._be, self._matrix[:n], self._norms[:n], self._dev_ids[:n], q, int(k),
                                        self.metric, rows)
        else:
            mask = None
            if rows is not None:
                mask = xp.zeros(n, dtype=bool)
                mask[rows] = True
            ids, scores = search.probed(self._be, self._index, self._matrix[:n], self._norms[:n], self._dev_ids[:n],
                                        q, int(k), probes, self.metric, mask)
        return (ids[0], scores[0]) if single else (ids, scores)

    # --- internals -------------------------------------------------------------------------------

    def _open_or_raise(self) -> None:
        if self._closed:
            raise StoreError(f"the vector store at {self.path} is closed")

    def _writable(self, what: str) -> None:
        self._open_or_raise()
        if self.readonly:
            raise StoreError(f"cannot {what} the vector store at {self.path}: it was opened read-only")

    def _index_path(self) -> str:
        return os.path.join(self.path, "ivf.index")

    def _segment_path(self, seq: int) -> str:
        return os.path.join(self.path, "segments", f"{seq:06d}.seg")

    def _read(self, ids: np.ndarray, segs: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """The checked vectors [len(ids), dim] of the records at (segs[i], offsets[i]), in ids' order."""
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        for s in np.unique(segs).tolist():
            at = segs == s
            out[at] = segments.read(self._segment_path(s), offsets[at], ids[at], self.dim)
        return out

    def _vectors(self, vectors: Any, what: str) -> Any:
        """vectors as float32 [n, dim] (or [dim]) on their own library, checked: shape and finite."""
        v = vectors if _on_a_device(vectors) else np.asarray(vectors)
        xp = backend.of(v).xp
        if v.dtype.kind not in "fiu":
            raise ShapeError(f"{what}: expected numbers, got dtype {v.dtype}")
        v = v.astype(np.float32, copy=False)
        if v.ndim not in (1, 2) or v.shape[-1] != self.dim:
            raise ShapeError(f"{what}: expected vectors of dimension {self.dim}, got shape {tuple(v.shape)}")
        if v.size and not float(xp.abs(v).max()) <= search.LARGEST:    # NaN fails the comparison too
            bad = ~(xp.abs(v) <= search.LARGEST)
            nonfinite = ~xp.isfinite(v)
            at = tuple(int(i) for i in xp.argwhere(nonfinite if bool(nonfinite.any()) else bad)[0])
            if not bool(xp.isfinite(v[at])):
                raise NumericError(f"{what}: {v[at]} at index {list(at)} is not finite")
            raise NumericError(f"{what}: {v[at]} at index {list(at)} exceeds 2^50 in magnitude: scores could "
                               f"overflow float32")
        return v

    def _write(self, ids, vectors, metadata, replace: bool) -> None:
        self._writable("write to")
        ids = _ids(ids)
        v = self._vectors(vectors, "vectors")
        if v.ndim == 1:
            v = v.reshape(1, -1)
        if v.shape[0] != len(ids):
            raise ShapeError(f"vectors: {v.shape[0]} rows for {len(ids)} ids")
        if metadata is not None and (isinstance(metadata, str | bytes | dict) or len(metadata) != len(ids)):
            raise ConfigError("metadata", f"expected a list of {len(ids)} values (one per id), got {metadata!r:.80}")
        texts = [None] * len(ids) if metadata is None else [_json(m, f"metadata[{i}]") for i, m in enumerate(metadata)]
        uniq, counts = np.unique(ids, return_counts=True)
        if (counts > 1).any():
            raise ConfigError("ids", f"id {int(uniq[counts > 1][0])} appears more than once")
        if not len(ids):
            return
        host = backend.of(v).to_numpy(v)
        size = segments.record_size(self.dim)
        with transaction(self._db) as db:
            present = catalog.existing(db, ids.tolist())
            if present and not replace:
                raise ConfigError("ids", f"id {present[0]} is already in the store (use upsert to replace it)")
            seq, used = db.execute("SELECT seq, size FROM segments ORDER BY seq DESC LIMIT 1").fetchone() or (1, 0)
            if used >= SEGMENT_BYTES:
                seq, used = seq + 1, 0
            path = self._segment_path(seq)
            segments.truncate(path, used)             # records of a write that failed before its commit
            start = segments.append(path, segments.encode(ids, host))
            db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?, ?, ?)",
                           [(i, seq, start + r * size, t) for r, (i, t) in enumerate(zip(ids.tolist(), texts))])
            db.execute("INSERT OR REPLACE INTO segments VALUES (?, ?)", (seq, start + len(ids) * size))
        for i in present:
            self._remove_row(i)
        self._append_rows(ids, v)

    def _load(self) -> None:
        """Read every live vector (checked) into memory; a reader retries when a compaction moved
        records while it read."""
        for attempt in range(5):
            try:
                self._db.execute("BEGIN")
                try:
                    ids, segs, offsets = catalog.live(self._db)
                    host = self._read(ids, segs, offsets)
                finally:
                    self._db.execute("COMMIT")
                break
            except FormatError:
                if not self.readonly or attempt == 4:
                    raise
        self._n = 0
        self._ids = np.zeros(0, dtype=np.int64)
        self._row: dict[int, int] = {}
        xp = self._be.xp
        self._matrix = xp.zeros((0, self.dim), dtype=np.float32)
        self._norms = xp.zeros(0, dtype=np.float64)
        self._dev_ids = xp.zeros(0, dtype=np.int64)
        self._index = None
        self._append_rows(ids, host)
        self._nprobe = int(catalog.settings(self._db).get("nprobe", 1))
        self._index_saved = True
        if os.path.exists(self._index_path()):
            n = self._n
            try:
                self._index = ivf.IVFIndex.load(self._be, self._index_path(), self._ids[:n], dim=self.dim,
                                                metric=self.metric, matrix=self._matrix[:n])
            except FormatError as exc:
                raise FormatError(f"{exc} (the index is derived data: delete the file to open the store "
                                  f"without it, then build_index again)") from None
            self._index_saved = not self._index.reassigned

    def _append_rows(self, ids: np.ndarray, v: Any) -> None:
        """Put rows for these (new) ids at the end of the in-memory matrix, growing it by doubling."""
        xp = self._be.xp
        v = xp.asarray(v, dtype=np.float32)
        if self.metric == "cosine":
            v = normalize(xp, v)
        n, m = self._n, len(ids)
        if n + m > self._matrix.shape[0]:
            cap = max(n + m, 2 * self._matrix.shape[0], 1024)
            grown = xp.zeros((cap, self.dim), dtype=np.float32)
            grown[:n] = self._matrix[:n]
            self._matrix = grown
            self._norms = xp.concatenate([self._norms[:n], xp.zeros(cap - n)])
            self._dev_ids = xp.concatenate([self._dev_ids[:n], xp.zeros(cap - n, dtype=np.int64)])
            self._ids = np.concatenate([self._ids[:n], np.zeros(cap - n, dtype=np.int64)])
        self._matrix[n:n + m] = v
        self._norms[n:n + m] = norms(xp, v)
        self._dev_ids[n:n + m] = xp.asarray(ids)
        self._ids[n:n + m] = ids
        for r, i in enumerate(ids.tolist()):
            self._row[i] = n + r
        self._n = n + m
        if self._index is not None and m:
            self._index.add_rows(self._matrix[n:n + m])
            self._index_saved = False

    def _remove_row(self, i: int) -> None:
        """Drop id i's row, moving the last row into its place."""
        r = self._row.pop(i)
        last = self._n - 1
        if self._index is not None:
            self._index.remove_row(r, last)
            self._index_saved = False
        if r != last:
            moved = int(self._ids[last])
            self._matrix[r] = self._matrix[last]
            self._norms[r] = self._norms[last]
            self._dev_ids[r] = self._dev_ids[last]
            self._ids[r] = moved
            self._row[moved] = r
        self._n = last


def _on_a_device(value: Any) -> bool:
    """Whether a device backend owns value (a CuPy array): such arrays are used where they live;
    NumPy reads anything else."""
    try:
        return not backend.of(value).host
    except BackendError:            # no backend owns lists, tuples or other libraries' arrays
        return False


def _ids(ids: Any) -> np.ndarray:
    """ids as int64 [n], each in [0, 2^63): ConfigError naming the first bad one."""
    if isinstance(ids, int | np.integer) and not isinstance(ids, bool):
        ids = [ids]
    if _on_a_device(ids):
        ids = backend.of(ids).to_numpy(ids)
    values = list(ids.tolist() if isinstance(ids, np.ndarray) else ids)
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or not 0 <= int(v) <= MAX_ID:
            raise ConfigError(f"ids[{i}]", f"expected an integer in [0, 2^63), got {v!r}")
    return np.array([int(v) for v in values], dtype=np.int64)


def _json(value: Any, where: str) -> str | None:
    if value is None:
        return None
    try:
        return json.dumps(value, allow_nan=False, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise ConfigError(where, f"not JSON-serializable: {exc}") from None


def _lock(path: str) -> int:
    """The writer's lock on path/LOCK (released when its descriptor closes, or the process dies)."""
    lock_path = os.path.join(path, "LOCK")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise describe(exc, lock_path) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreError(f"{path}: another writer has this vector store open (open it with readonly=True "
                         f"to read alongside)") from None
    return fd


def _recover(path: str, db, dim: int) -> None:
    """After a crash: cut each segment back to its committed size, delete files the catalog does not
    name."""
    for seq, size in catalog.segment_sizes(db).items():
        segments.truncate(os.path.join(path, "segments", f"{seq:06d}.seg"), size)
    _remove_unnamed(path, db)


def _remove_unnamed(path: str, db) -> None:
    named = set(catalog.segment_sizes(db))
    folder = os.path.join(path, "segments")
    for name in os.listdir(folder):
        match = _SEGMENT_NAME.match(name)
        if match and int(match.group(1)) not in named:
            os.remove(os.path.join(folder, name))

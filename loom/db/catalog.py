"""A vector store's catalog: SQLite in WAL mode with synchronous=FULL, so a committed transaction
survives a crash. It holds the store's settings, and for each live id the segment and byte offset of
its record and its JSON metadata: an id is in the store exactly when its row is committed here.
"""
from __future__ import annotations

import sqlite3
from collections.abc import Iterable

import numpy as np

from ..errors import FormatError

SCHEMA = """
CREATE TABLE IF NOT EXISTS settings(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS vectors(id INTEGER PRIMARY KEY, segment INTEGER NOT NULL, offset INTEGER NOT NULL,
                                   metadata TEXT);
CREATE TABLE IF NOT EXISTS segments(seq INTEGER PRIMARY KEY, size INTEGER NOT NULL);
"""


def connect(path: str, readonly: bool) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit: `with transaction(db)`)."""
    try:
        if readonly:
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False)
        else:
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA busy_timeout=10000")
        if not readonly:
            db.executescript(SCHEMA)
        return db
    except sqlite3.DatabaseError as exc:
        raise FormatError(f"{path}: not a vector store catalog ({exc})") from None


class transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on an exception."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, kind, exc, tb) -> None:
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")


def settings(db: sqlite3.Connection) -> dict[str, str]:
    return dict(db.execute("SELECT key, value FROM settings"))


def live(db: sqlite3.Connection) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, segments, offsets) of every live id, in id order."""
    rows = np.array(db.execute("SELECT id, segment, offset FROM vectors ORDER BY id").fetchall(),
                    dtype=np.int64).reshape(-1, 3)
    return rows[:, 0].copy(), rows[:, 1].copy(), rows[:, 2].copy()


def segment_sizes(db: sqlite3.Connection) -> dict[int, int]:
    return dict(db.execute("SELECT seq, size FROM segments"))


def existing(db: sqlite3.Connection, ids: Iterable[int]) -> list[int]:
    """The ids among these that are live."""
    found = []
    ids = list(ids)
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        marks = ",".join("?" * len(chunk))
        found += [r[0] for r in db.execute(f"SELECT id FROM vectors WHERE id IN ({marks})", chunk)]
    return found


def metadata(db: sqlite3.Connection, ids: Iterable[int]) -> dict[int, str | None]:
    out = {}
    ids = list(ids)
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        marks = ",".join("?" * len(chunk))
        out.update(db.execute(f"SELECT id, metadata FROM vectors WHERE id IN ({marks})", chunk))
    return out

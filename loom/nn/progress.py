"""A one-line progress bar for training, on stderr.

Hand-written rather than tqdm/rich because Loom's runtime dependencies are numpy and ml_dtypes only,
and a training bar needs ~40 lines. On a terminal the line redraws in place (at most 10 times a
second) with the running loss, samples/s and the epoch's ETA; elsewhere (CI logs, pipes) only the
finished epoch's summary line is printed.
"""
from __future__ import annotations

import sys
import time
from typing import Any, TextIO

_WIDTH = 24


class Progress:
    def __init__(self, title: str, total: int, enabled: bool = True, stream: TextIO | None = None):
        self.title, self.total, self.enabled = title, max(total, 1), enabled
        self.stream = stream or sys.stderr
        self.live = enabled and getattr(self.stream, "isatty", lambda: False)()
        self.start = self.last = time.perf_counter()

    def update(self, done: int, samples: int = 0, **values: Any) -> None:
        """Redraw (at most 10 times a second); a value may be a callable, evaluated only when drawn."""
        if not self.live:
            return
        now = time.perf_counter()
        if now - self.last < 0.1 and done < self.total:
            return
        self.last = now
        filled = _WIDTH * done // self.total
        elapsed = max(now - self.start, 1e-9)
        rate = samples / elapsed
        eta = elapsed * (self.total - done) / max(done, 1)
        text = " ".join(f"{k} {_fmt(v() if callable(v) else v)}" for k, v in values.items())
        self.stream.write(f"\r{self.title} [{'#' * filled}{'.' * (_WIDTH - filled)}] {done}/{self.total} "
                          f"{text} {rate:,.0f} samples/s ETA {_clock(eta)}\033[K")
        self.stream.flush()

    def close(self, rate: float = 0.0, **values: Any) -> None:
        if not self.enabled:
            return
        text = " ".join(f"{k} {_fmt(v)}" for k, v in values.items())
        line = f"{self.title} {text} | {rate:,.0f} samples/s, {time.perf_counter() - self.start:.1f}s"
        # on a terminal, overwrite the live bar and clear what is left of it
        self.stream.write(f"\r{line}\033[K\n" if self.live else f"{line}\n")
        self.stream.flush()


def _clock(seconds: float) -> str:
    """0:07, 12:34, 1:02:03."""
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)

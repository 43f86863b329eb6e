"""What Loom does where it cannot run something the way it was asked ("strict by default").

Deterministic mode promises what runs, not only the bits: where it cannot keep that promise (a step
that cannot be recorded as the dispatch chain the caller asked for, a GPU that flushes subnormals)
it raises DeterminismError naming the operation and the reason. Fast mode, or a caller that passed
strict=False, takes the slower path instead and says so once per process and message through the
"loom" logger. Logging, not warnings: a fallback hit on every step would otherwise repeat its
message on every step wherever warnings are shown "always" (test runners, notebooks), and logging
lets an application route or silence it (`logging.getLogger("loom").setLevel(logging.ERROR)`).
"""
from __future__ import annotations

import logging
import threading

from .errors import DeterminismError
from .mode import is_deterministic

log = logging.getLogger("loom")
_reported: set = set()          # notices already logged in this process
_lock = threading.Lock()


def notice_once(message: str, level: int = logging.WARNING) -> bool:
    """Log `message` on the "loom" logger the first time this process sees it; True if it logged."""
    if message in _reported:        # the common case, on paths hit every step: no lock
        return False
    with _lock:
        if message in _reported:
            return False
        _reported.add(message)
    log.log(level, message)
    return True


def refuse(error: str, notice: str, strict: bool = True, level: int = logging.WARNING) -> None:
    """In deterministic mode with strict set, raise DeterminismError(error); otherwise the caller
    falls back, and `notice` (what runs instead, and why) is logged once."""
    if strict and is_deterministic():
        raise DeterminismError(error)
    notice_once(notice, level)

"""The one graph cache: steps recorded once per key into replayable graphs (CUDA graphs), used by
train-step and inference chains (loom/nn/chain.py) and by LLM decoding (loom/llm/decoder.py).

A key is everything that changes a step's device work (shapes, dtypes, mode, an optimizer's phase,
a KV cache's shape). A key is recorded on its `record_from`-th sighting: chains run a key's first
step eagerly (kernels compile, lazily created state appears) and record the second; a decode step
warms itself up inside its recording, so it records the first. The least recently used entry is
evicted first, and an evicted key counts as unseen again, so keys taken in turn by more steps than the
cache holds run eagerly instead of being recorded anew at every sighting. Keys seen once are remembered
up to SEEN_KEPT of them, the most recent (a server's prompt steps, keyed by their mix of chunks, seldom
repeat: the set would otherwise grow with every step).

Recording needs device work free of host synchronization. When a key cannot be recorded, refuse()
applies the determinism contract (loom/fallback.py): in deterministic mode a `strict` cache raises
DeterminismError naming the step (the caller asked for a recorded chain); otherwise the key runs
eagerly from then on (the same bits, slower), its reason is kept in `eager_reasons` and logged once.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

from .. import fallback
from ..errors import ConfigError, LoomError
from ..mode import is_deterministic

SEEN_KEPT = 4096        # keys seen once (not yet recorded) remembered, the most recent


class GraphCache:
    """Recorded entries by key. describe(key) names a key's step and shapes in messages."""

    def __init__(self, size: int, describe: Callable[[Any], str] = repr, strict: bool = True,
                 record_from: int = 2):
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"cache_size must be a positive integer, got {size!r}")
        if not isinstance(strict, bool):
            raise ConfigError("strict", f"expected True or False, got {strict!r}")
        if record_from not in (1, 2):
            raise ValueError(f"record_from must be 1 or 2, got {record_from!r}")
        self.size = size
        self.describe = describe
        self.strict = strict
        self.record_from = record_from
        self.entries: OrderedDict = OrderedDict()
        self.seen: OrderedDict = OrderedDict()   # keys seen once, oldest first (used as an ordered set)
        self.eager_reasons: dict = {}

    def get(self, key: Hashable) -> Any | None:
        entry = self.entries.get(key)
        if entry is not None:
            self.entries.move_to_end(key)
        return entry

    def clear(self) -> None:
        """Drop every recorded entry (their graphs are freed once nothing else holds them)."""
        self.entries.clear()

    def put(self, key: Hashable, entry: Any) -> None:
        self.entries[key] = entry
        while len(self.entries) > self.size:
            evicted, _ = self.entries.popitem(last=False)
            self.seen.pop(evicted, None)     # recorded again only if seen twice again: keys in turn do not churn

    def wants_recording(self, key: Hashable) -> bool:
        """True on the record_from-th sighting (and later) of a key that is neither recorded nor
        known to be eager-only."""
        if key in self.eager_reasons:
            return False
        if self.record_from == 2 and key not in self.seen:
            self.seen[key] = None
            while len(self.seen) > SEEN_KEPT:
                self.seen.popitem(last=False)
            return False
        return True

    def lookup(self, key: Hashable, record: Callable[[], Any]) -> Any | None:
        """The recorded entry for key, recording it with record() when wants_recording(key); None
        when this call runs eagerly (too early, or the step cannot be recorded). The exceptions
        caught are how CuPy refuses work inside a stream capture: RuntimeError for a host transfer,
        NotImplementedError (CuPy's, not Loom's) for a cuBLAS call it cannot capture, as its integer
        GEMM; either refuses the key (refuse()). Running out of device memory (CuPy's OutOfMemoryError
        is a MemoryError: a recording holds buffers of its own) refuses nothing: this call runs
        eagerly, said once, and a later sighting tries again; a strict cache in deterministic mode
        re-raises it (the chain asked for cannot run)."""
        entry = self.get(key)
        if entry is None and self.wants_recording(key):
            try:
                entry = record()
            except (LoomError, RuntimeError, NotImplementedError) as exc:
                self.refuse(key, exc)
            except MemoryError as exc:
                if self.strict and is_deterministic():
                    raise
                fallback.notice_once(f"{self.describe(key)} runs eagerly: no memory to record it ({exc})")
            else:
                self.put(key, entry)
        return entry

    def refuse(self, key: Hashable, exc: BaseException) -> None:
        """A key whose step cannot be recorded: DeterminismError in deterministic mode unless strict
        is False (the caller asked for a chain, and eager steps are not one); otherwise the key runs
        eagerly from now on, which changes no bits, and that is logged once."""
        reason = f"{type(exc).__name__}: {exc}"
        what = self.describe(key)
        fallback.refuse(
            f"{what} cannot be recorded as a dispatch chain ({reason}); deterministic mode runs the "
            "recorded chain it was asked for or nothing: pass strict=False to run such steps eagerly "
            "(the same bits, slower)",
            f"{what} cannot be recorded as a dispatch chain and runs eagerly ({reason})", self.strict)
        self.eager_reasons[key] = reason

"""Small device tables that kernels read, made from host values by key and kept (a kernel's item tables: a prompt
step's layers and its replays read the same ones).

A CUDA graph cannot capture the copy that makes one, so while this thread records, only a table an earlier run made
serves, and the recording keeps it alive as long as the graph (keep_while_recorded): evicting it from the cache
cannot free memory a graph reads."""
from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import cupy

from . import keep_while_recorded


class KeptTables:
    """The `size` most recently used tables (or tuples of them and plain values) by key and device; `what` names
    the kernel in the error a recording gets for a table no run made before it."""

    def __init__(self, size: int, what: str):
        self.size, self.what = size, what
        self.entries: OrderedDict = OrderedDict()

    def get(self, key: Hashable, make: Callable[[], Any]) -> Any:
        """The entry for key on the current device, made by make() (on the host side of no recording) where
        missing; RuntimeError while recording where missing."""
        key, capturing = (key, cupy.cuda.runtime.getDevice()), cupy.cuda.get_current_stream().is_capturing()
        entry = self.entries.get(key)        # (never popped here: another thread's recording may want it)
        if entry is None:
            if capturing:
                raise RuntimeError(f"{self.what} records only shapes an eager run has made the item table of")
            entry = self.entries[key] = make()
            while len(self.entries) > self.size:
                self.entries.popitem(last=False)
        else:
            with contextlib.suppress(KeyError):  # (evicted meanwhile by another thread)
                self.entries.move_to_end(key)
        if capturing:
            for part in entry if isinstance(entry, tuple) else (entry,):
                if isinstance(part, cupy.ndarray):
                    keep_while_recorded(part)
        return entry

    def clear(self) -> None:
        self.entries.clear()

"""Helpers of the tests of loom.distributed: a world of stores in one process, and running one function
per rank on threads."""
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from loom.distributed.store import Store


@contextmanager
def world(size: int, timeout: float = 5.0) -> Iterator[list[Store]]:
    """Stores of ranks 0..size-1 on 127.0.0.1 (rank 0 picks a free port), closed at the end, rank 0 last
    (its close waits for the others to disconnect)."""
    stores = [Store("127.0.0.1", 0, 0, size, timeout=timeout)]
    try:
        stores += [Store("127.0.0.1", stores[0].port, r, size, timeout=timeout) for r in range(1, size)]
        yield stores
    finally:
        for store in reversed(stores):
            store.close(wait=1.0)


def on_threads(items: Sequence, fn: Callable) -> list:
    """fn(item) for every item, each on its own thread; the results in order, an exception in place of
    the result of a call that raised."""
    results: list = [None] * len(items)

    def run(i: int) -> None:
        try:
            results[i] = fn(items[i])
        except BaseException as exc:          # handed to the test, which checks it
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(items))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30.0)
    assert not any(t.is_alive() for t in threads), "a rank's thread is still running after 30 s"
    return results

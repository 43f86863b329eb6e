"""A batch split across the ranks of a data-parallel world, as the reductions over the batch see it.

Data parallelism gives each rank a slice of the global batch. Everything a sample computes alone is
the same bits on any rank (deterministic mode is batch-invariant); what differs is every reduction
over the batch: parameter gradients, batch-norm statistics, the loss's mean. Those go through the
`*_over_batch` functions of loom.kernels.ops, which read the split in effect here and, when there is
one, combine the ranks' partial results through its collective (an all-reduce: NCCL on GPUs).

    with batch_split.split(collective, local=8, total=32, offset=8):
        ...                                  # forward and backward of this rank's 8 samples

`offset` is the number of samples on the ranks before this one: random draws (dropout) take the
global batch's words at that offset, so rank r draws what one device would for those rows.
The split is a context variable: it covers the current thread (each thread of a loopback world has
its own) and asyncio task.
"""
from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from ..backend import Array


class Collective(Protocol):
    """What a split needs from a communicator (loom.distributed's NCCL one, or a test's loopback)."""
    rank: int
    size: int

    def all_reduce(self, x: Array, op: str) -> None:
        """x, on every rank, replaced in place by the elementwise "sum" or "max" over the ranks; the
        same bits on every rank. Sums of integer-valued arrays whose every partial sum is exactly
        representable (int64; float64 below 2^53) are exact in any order."""
        ...


@dataclass(frozen=True)
class BatchSplit:
    collective: Collective
    local: int              # this rank's samples
    total: int              # the global batch
    offset: int             # samples on the ranks before this one

    def global_count(self, count: int) -> int:
        """The count over the global batch of a reduction that covers `count` values here: a
        reduction over the batch covers the same number of values per sample on every rank."""
        per_sample, rest = divmod(int(count), self.local)
        if rest:
            raise ValueError(f"a reduction over the batch covers {count} values on a rank with {self.local} "
                             "samples: not a whole number per sample")
        return per_sample * self.total


_SPLIT: contextvars.ContextVar[BatchSplit | None] = contextvars.ContextVar("loom_batch_split", default=None)


def current() -> BatchSplit | None:
    """The split in effect, or None (one process holds the whole batch)."""
    return _SPLIT.get()


def offset() -> int:
    """Samples before this rank's first one in the global batch (0 without a split)."""
    s = _SPLIT.get()
    return 0 if s is None else s.offset


@contextlib.contextmanager
def split(collective: Collective, local: int, total: int, offset: int) -> Iterator[BatchSplit]:
    """Run the block as rank collective.rank holding `local` of the `total` samples of the batch,
    starting at sample `offset`."""
    if not 0 < local <= total or not 0 <= offset <= total - local:
        raise ValueError(f"a rank's batch slice needs 0 < local <= total and 0 <= offset <= total - local, "
                         f"got local={local}, total={total}, offset={offset}")
    token = _SPLIT.set(BatchSplit(collective, int(local), int(total), int(offset)))
    try:
        yield _SPLIT.get()
    finally:
        _SPLIT.reset(token)

"""Run a Kernel (kernel.py) with NumPy: every thread of a group of blocks at once, in lockstep.

Each IR value is an array with one lane per thread (or a NumPy scalar where all threads agree:
constants, parameters, block sizes); pure nodes are rules.py's rules, the ones lower_numpy and
constant folding use, so their bits are the CUDA lowering's. Control flow keeps a mask of the active
lanes: `if` narrows it, a loop runs until no lane is active, variables and stores change only active
lanes. Statements run in program order for all lanes before the next, which is one valid schedule of
the kernel on a GPU; it is stronger than any barrier, so barriers are no-ops here and shared memory
(one array per block) works as on the GPU. Blocks are independent, so they run in groups
(GROUP_THREADS lanes at a time) to bound memory.

Atomics are applied in thread order (lane order), which is one order a GPU may take: integer results
are the same in every order; float atomic_add's follow this one. An access outside a buffer or a
shared array raises KernelFault naming the kernel, the buffer, the index and the thread.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ...errors import KernelFault
from .kernel import Assign, Barrier, Declare, For, If, Kernel, Let, Shared, Store, While
from .rules import LOWER

GROUP_THREADS = 1 << 16          # lanes evaluated at once (whole blocks)


def run(kernel: Kernel, args: Sequence, grid: tuple[int, int]) -> None:
    """Execute `kernel` over `grid` = (blocks, threads per block). args follow the kernel's
    signature: a 1-d contiguous NumPy array of the element dtype per buffer (written in place), a
    NumPy scalar of the exact type per scalar."""
    blocks, threads = grid
    per_group = max(1, GROUP_THREADS // threads)
    with np.errstate(all="ignore"):         # IEEE overflow and invalid are results, as in the lowerings
        for first in range(0, blocks, per_group):
            _Group(kernel, args, blocks, threads, first, min(per_group, blocks - first)).block(kernel.body, None)


class _Group:
    def __init__(self, kernel, args, blocks, threads, first, count):
        self.kernel, self.args, self.threads = kernel, args, threads
        self.lanes = count * threads
        local = np.arange(self.lanes, dtype=np.int64)
        self.block_of = local // threads
        self.ids = {"global": local + first * threads, "local": local % threads,
                    "block": self.block_of + first, "block_dim": np.int64(threads),
                    "grid_dim": np.int64(blocks)}
        self.shared = [np.zeros((count, s.length), dtype=s.element.dtype) for s in kernel.shared_arrays]
        self.env: dict[int, object] = {p.index: args[p.attr] for p in kernel.params}
        self.vars: dict[int, object] = {}

    # -- statements --------------------------------------------------------------------------------
    def block(self, statements, mask) -> None:
        for s in statements:
            _STATEMENTS[type(s)](self, s, mask)

    def let(self, s: Let, mask) -> None:
        node = s.node
        op = node.op
        if op == "const":
            value = node.const_value()
        elif op == "thread":
            value = self.ids[node.attr]
        elif op == "buffer_size":
            value = np.int64(self.args[node.attr.position].size)
        elif op == "read":
            value = self.vars[node.attr.index]
        elif op == "load":
            value = self.load(node.attr, self.env[node.args[0].index], mask)
        elif op == "atomic":
            value = self.atomic(node, mask)
        else:
            operands = [self.env[a.index] for a in node.args]
            if op in ("shl", "shr") and not node.args[1].is_const:
                # rules.py masks a shift amount that is an array; here a NumPy scalar may be a value
                # all lanes share (a parameter, a uniform load), not a constant: mask it too
                operands[1] = np.asarray(operands[1])
            value = LOWER[op](np, node.type, node.attr, operands)
            if isinstance(value, np.ndarray) and value.ndim == 0:
                value = value[()]
        self.env[node.index] = value

    def store(self, s: Store, mask) -> None:
        array, flat = self.locate(s.target, self.env[s.index.index], mask)
        value = np.broadcast_to(self.env[s.value.index], (self.lanes,))
        if mask is not None:
            value = value[mask]
        array[flat] = value

    def declare(self, s: Declare, mask) -> None:
        self.assign(Assign(s.var, s.init), mask)

    def assign(self, s: Assign, mask) -> None:
        value = self.env[s.value.index]
        if mask is None:
            self.vars[s.var.index] = value
        else:
            old = self.vars.get(s.var.index, s.var.type.dtype.type(0))
            self.vars[s.var.index] = np.where(mask, value, old).astype(s.var.type.dtype)

    def if_(self, s: If, mask) -> None:
        cond = self.env[s.cond.index]
        if mask is None and isinstance(cond, np.generic):       # the same for every lane
            self.block(s.then if cond else (s.orelse or ()), None)
            return
        for branch, taken in ((s.then, cond), (s.orelse, np.logical_not(cond))):
            if branch:
                active = _and(mask, taken, self.lanes)
                if active.any():
                    self.block(branch, active)

    def for_(self, s: For, mask) -> None:
        t = s.index.type.dtype
        u = np.dtype(f"uint{t.itemsize * 8}")
        start, stop, step = (self.env[v.index] for v in (s.start, s.stop, s.step))
        if mask is None and all(isinstance(v, np.generic) for v in (start, stop, step)):
            i = start                         # the same for every lane: one Python loop of scalars
            while step > 0 and i < stop:
                self.env[s.index.index] = i
                self.block(s.body, None)
                if stop.astype(u) - i.astype(u) <= step.astype(u):
                    break
                i = (i.astype(u) + step.astype(u)).astype(t)
            return
        i = np.broadcast_to(start, (self.lanes,)).astype(t)
        active = _and(mask, np.logical_and(np.less(i, stop), np.greater(step, 0)), self.lanes)
        while active.any():
            self.env[s.index.index] = i
            self.block(s.body, active)
            more = np.subtract(np.asarray(stop).astype(u), i.astype(u)) > np.asarray(step).astype(u)
            i = np.where(active, np.add(i.astype(u), np.asarray(step).astype(u)).astype(t), i)
            active = np.logical_and(active, more)

    def while_(self, s: While, mask) -> None:
        active = mask
        while True:
            self.block(s.header, active)
            cond = self.env[s.cond.index]
            if active is None and isinstance(cond, np.generic):
                if not cond:
                    return
            else:
                active = _and(active, cond, self.lanes)
                if not active.any():
                    return
            self.block(s.body, active)

    def barrier(self, s: Barrier, mask) -> None:
        pass                                  # lockstep: every lane is already here

    # -- memory ------------------------------------------------------------------------------------
    def locate(self, target, index, mask, lanes=None) -> tuple[np.ndarray, np.ndarray]:
        """The array behind target and the flat positions of the active lanes' accesses; KernelFault
        for an index outside it."""
        index = np.broadcast_to(index, (lanes or self.lanes,))
        if mask is not None:
            index = index[mask]
        if isinstance(target, Shared):
            array, length = self.shared[target.index].reshape(-1), target.length
            blocks = self.block_of if mask is None else self.block_of[mask]
        else:
            array, length = self.args[target.position], self.args[target.position].size
        bad = index >= length if index.dtype.kind == "u" else (index < 0) | (index >= length)
        if bad.any():
            lane = np.flatnonzero(bad)[0]
            thread = (self.ids["global"] if mask is None else self.ids["global"][mask])[lane]
            raise KernelFault(f"kernel {self.kernel.name}: thread {thread} accessed {target.name}[{index[lane]}] "
                              f"outside its {length} elements")
        flat = index.astype(np.int64)
        if isinstance(target, Shared):
            flat = blocks * length + flat
        return array, flat

    def load(self, target, index, mask):
        if mask is None and isinstance(index, np.generic) and not isinstance(target, Shared):
            array, flat = self.locate(target, np.asarray([index]), None, lanes=1)
            return array[flat[0]]              # every lane reads one element: a scalar
        array, flat = self.locate(target, index, mask)
        if mask is None:
            return array[flat]
        out = np.zeros(self.lanes, dtype=target.element.dtype)
        out[mask] = array[flat]
        return out

    def atomic(self, node, mask):
        op, target = node.attr
        array, flat = self.locate(target, self.env[node.args[0].index], mask)
        value = np.broadcast_to(self.env[node.args[1].index], (self.lanes,))
        if mask is not None:
            value = value[mask]
        old = _atomic(op, array, flat, value.astype(target.element.dtype))
        if mask is None:
            return old
        out = np.zeros(self.lanes, dtype=target.element.dtype)
        out[mask] = old
        return out


_UFUNC = {"add": np.add, "min": np.minimum, "max": np.maximum, "and": np.bitwise_and,
          "or": np.bitwise_or, "xor": np.bitwise_xor}


def _atomic(op: str, array: np.ndarray, flat: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Apply the lanes' atomics in lane order; returns each lane's old value."""
    dtype = array.dtype
    order = np.argsort(flat, kind="stable")
    sorted_flat = flat[order]
    starts = np.r_[True, sorted_flat[1:] != sorted_flat[:-1]] if flat.size else np.zeros(0, bool)
    old = np.empty(flat.size, dtype=dtype)
    if op == "add" and dtype.kind in "iu":      # wrapping sums: the prefix of each address's run
        v = value[order]
        inclusive = np.cumsum(v, dtype=dtype)
        exclusive = inclusive - v
        first = np.flatnonzero(starts)
        run = np.cumsum(starts) - 1
        base = exclusive[first][run]
        old[order] = array[sorted_flat] + (exclusive - base)
        last = np.r_[first[1:] - 1, flat.size - 1] if flat.size else first
        array[sorted_flat[first]] = array[sorted_flat[first]] + (inclusive[last] - base[first])
        return old
    # every other op: lane order within each address. Few addresses (contention): one accumulate per
    # address's run; many: round r applies each address's r-th lane, all addresses at once.
    first = np.flatnonzero(starts)
    ends = np.r_[first[1:], flat.size]
    longest = int((ends - first).max()) if flat.size else 0
    if first.size <= longest:
        for a, b in zip(first.tolist(), ends.tolist()):
            lanes = order[a:b]
            where = sorted_flat[a]
            run = np.concatenate([array[where:where + 1], value[lanes]])
            if op != "exchange":       # accumulate is sequential, in the element type
                run = _UFUNC[op].accumulate(run, dtype=dtype)
            old[lanes] = run[:-1]
            array[where] = run[-1]
        return old
    rank = np.arange(flat.size) - np.repeat(first, ends - first)
    by_rank = order[np.argsort(rank, kind="stable")]
    counts = np.bincount(rank)
    for lanes in np.split(by_rank, np.cumsum(counts)[:-1]):
        where = flat[lanes]
        current = array[where]
        old[lanes] = current
        array[where] = value[lanes] if op == "exchange" else _UFUNC[op](current, value[lanes]).astype(dtype)
    return old


def _and(mask, cond, lanes: int) -> np.ndarray:
    cond = np.broadcast_to(np.asarray(cond, dtype=bool), (lanes,))
    return cond.copy() if mask is None else np.logical_and(mask, cond)


_STATEMENTS = {Let: _Group.let, Store: _Group.store, Declare: _Group.declare, Assign: _Group.assign,
               If: _Group.if_, For: _Group.for_, While: _Group.while_, Barrier: _Group.barrier}

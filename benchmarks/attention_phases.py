"""Where the deterministic decode attention kernel's time goes (loom/backend/cuda/decode_exact.py, its
split form in decode_exact_split.py): the kernel built with LOOM_PHASE_CLOCK, whose thread 0 of every
block writes the GPU's global timer at each phase, launched as the engine launches it (one block a
(sequence, head), or a window split over several) on SmolLM2's heads (9 query heads, 3 key/value
heads, head_dim 64) over a paged cache of random keys and values. Prints, per case, each phase's
microseconds (median and largest over the blocks that ran it) and the launch's total.

    PYTHONPATH=. python benchmarks/attention_phases.py
"""
from __future__ import annotations

import functools

import cupy as cp
import numpy as np

from loom.backend.cuda import decode_exact
from loom.kernels.exact import rounded as exact_rounded

H, KV, D, BS = 9, 3, 64, 16
SLOTS = 400 * decode_exact.PHASES   # decode_exact's PHASES slots for up to 400 blocks
ONE_BLOCK = [("wait", 0, 1), ("q, k, v", 1, 2), ("scores", 2, 3), ("max, exp", 3, 4), ("sum, divide", 4, 5),
             ("p v", 5, 6)]
SPLIT = [("wait", 0, 1), ("q, k, v", 1, 2), ("scores", 2, 3), ("max (, |v|)", 3, 7), ("barrier 1", 7, 8),
         ("exp, sum, barrier 2", 8, 9), ("p v", 9, 10), ("last part", 10, 11)]

@functools.cache
def _clocked(head_dim: int, threads: int, group: int = 0):
    """decode_exact's module with the phase clock compiled in."""
    return cp.RawModule(code=f"#define LOOM_PHASE_CLOCK {SLOTS}\n" + decode_exact.source(head_dim, threads, group),
                        options=decode_exact.COMPILE)


def case(rng, batch: int, keys: int):
    per = -(-keys // BS)
    order = rng.permutation(batch * per)
    tables = order.reshape(batch, per).astype(np.int64)
    shape = (batch * per * BS, KV, D)
    ck = cp.asarray(rng.standard_normal(shape).astype(np.float32))
    cv = cp.asarray(rng.standard_normal(shape).astype(np.float32))
    qkv = cp.asarray(rng.standard_normal((batch, (H + 2 * KV) * D)).astype(np.float32))
    angles = rng.uniform(-3, 3, (per * BS, D))
    cos, sin = (cp.asarray(f(angles).astype(np.float32)) for f in (np.cos, np.sin))
    pos = cp.asarray(np.full(batch, keys - 1, dtype=np.int64))
    return qkv, ck, cv, cos, sin, pos, cp.asarray(tables), per * BS


def run(batch: int, keys: int, split: bool) -> None:
    rng = np.random.default_rng(batch * 100003 + keys)
    qkv, ck, cv, cos, sin, pos, tables, max_keys = case(rng, batch, keys)
    out = cp.empty((batch, H * D), dtype=np.float32)
    work = decode_exact.split_work(batch, H, D, max_keys) if split else None
    if split and work is None:
        print(f"\n{batch} sequences x {keys} keys: the heads fill the device, nothing to split")
        return

    def launch():
        decode_exact.paged_attention(qkv, ck, cv, out, cos, sin, None, pos, tables, BS, H, None, 0.125, 1e-6,
                                     exact_rounded.error_factor(D), max_keys=max_keys, split=work)
    for _ in range(3):
        launch()
    modules = [m for m in (_clocked(D, decode_exact.THREADS), _clocked(D, decode_exact.FEW_THREADS))]
    clocks = [cp.ndarray((SLOTS,), np.uint64, m.get_global("loom_phase_clock")) for m in modules]
    for c in clocks:
        c[:] = 0
    start, end = cp.cuda.Event(), cp.cuda.Event()
    start.record()
    launch()
    end.record()
    end.synchronize()
    stamps = max((c.get().astype(np.int64).reshape(-1, decode_exact.PHASES) for c in clocks),
                 key=lambda a: np.count_nonzero(a))
    parts = 1 if work is None else work.splits
    print(f"\n{batch} sequences x {keys} keys, {'split in up to ' + str(parts) if split else 'one block a head'}: "
          f"{cp.cuda.get_elapsed_time(start, end) * 1e3:.1f} us the launch (events)")
    print("| phase | median (us) | largest (us) | blocks |")
    print("|---|---|---|---|")
    for name, a, b in (SPLIT if split else ONE_BLOCK):
        ran = (stamps[:, a] > 0) & (stamps[:, b] > 0)
        if ran.any():
            d = (stamps[ran, b] - stamps[ran, a]) / 1e3
            print(f"| {name} | {np.median(d):.2f} | {d.max():.2f} | {int(ran.sum())} |")


def main() -> None:
    decode_exact._module = _clocked            # paged_attention launches the clocked kernels
    decode_exact.GROUPED = False               # (a block a query head: the phases clocked here)
    print(f"# {cp.cuda.runtime.getDeviceProperties(0)['name'].decode()}, deterministic decode attention phases")
    for batch, keys, split in ((1, 300, False), (1, 1000, True), (1, 3000, False), (1, 3000, True),
                               (4, 3000, True), (16, 300, False), (16, 1000, False), (16, 3000, False),
                               (64, 300, False)):
        run(batch, keys, split)


if __name__ == "__main__":
    main()

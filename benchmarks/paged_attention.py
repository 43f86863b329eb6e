"""The fast paged decode attention kernel (loom/backend/cuda/decode.paged_attention) alone, with
SmolLM2-135M's heads (9 query heads, 3 key/value heads, head_dim 64) and blocks of 16 positions
scattered through the pool; microseconds per launch, replayed from a CUDA graph of 30 launches (10
replays). First 64 sequences at 80, 300 and 1,000 keys with each number of warps a block; then
batches of 1 to 64 sequences at 128 to 8,192 keys, each head in one block against windows cut over
several (split_work's default parts). With --deterministic: deterministic mode's kernel
(loom/backend/cuda/decode_exact.paged_attention, the same bits whatever the split) beside fast mode's,
both one block a head and split, at batches of 1 to 16 sequences. With --grouped: deterministic mode's
kernel a block a query head against a block a key/value head (decode_exact_group, the same bits) and fast mode's,
on SmolLM2-135M's, Qwen2-0.5B's and Llama-3.2-1B's heads, 1 to 64 sequences at 24 to 1,000 keys.

    PYTHONPATH=. python benchmarks/paged_attention.py [--deterministic | --grouped]
"""
from __future__ import annotations

import argparse

import cupy as cp
import numpy as np

from loom.backend.cuda import decode, decode_exact
from loom.kernels.exact import rounded as exact_rounded

B, H, KV, D, BS = 64, 9, 3, 64, 16


def case(rng, keys: int, B: int = B):
    pos = rng.integers(keys - 20, keys, B)
    need = pos // BS + 1
    blocks = int(need.sum()) + 1
    order = rng.permutation(blocks)
    tables = np.full((B, int(need.max())), blocks, dtype=np.int64)
    start = 0
    for b in range(B):
        tables[b, :need[b]] = order[start:start + need[b]]
        start += need[b]
    ck = cp.asarray(rng.standard_normal(((blocks + 1) * BS, KV, D)).astype(np.float32))
    cv = cp.asarray(rng.standard_normal(((blocks + 1) * BS, KV, D)).astype(np.float32))
    qkv = cp.asarray(rng.standard_normal((B, (H + 2 * KV) * D)).astype(np.float32))
    angles = np.arange(keys)[:, None] * 0.01 * np.ones(D)
    cos, sin = (cp.asarray(f(angles).astype(np.float32)) for f in (np.cos, np.sin))
    return qkv, ck, cv, cos, sin, cp.asarray(pos), cp.asarray(np.asfortranarray(tables))


def microseconds(launch) -> float:
    launch()
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        for _ in range(30):
            launch()
        graph = stream.end_capture()
    graph.launch(stream)
    stream.synchronize()
    start, end = cp.cuda.Event(), cp.cuda.Event()
    start.record(stream)
    for _ in range(10):
        graph.launch(stream)
    end.record(stream)
    end.synchronize()
    return cp.cuda.get_elapsed_time(start, end) * 1e3 / 300


def deterministic_rows(rng) -> None:
    """Deterministic mode's kernel against fast mode's, each one block a head and split (deterministic mode's
    block a key/value head, which some of these batches would take, is --grouped's table)."""
    grouped, decode_exact.GROUPED = decode_exact.GROUPED, False
    try:
        _deterministic_rows(rng)
    finally:
        decode_exact.GROUPED = grouped


def _deterministic_rows(rng) -> None:
    print("\n| sequences | keys | det. one block (us) | det. split (us) | fast one block (us) | fast split (us) "
          "| det/fast split |")
    print("|---|---|---|---|---|---|---|")
    factor = exact_rounded.error_factor(D)
    for batch in (1, 4, 16):
        for keys in (300, 1000, 3000, 8192):
            qkv, ck, cv, cos, sin, pos, tables = case(rng, keys, batch)
            out = cp.empty((batch, H * D), dtype=np.float32)
            max_keys = tables.shape[1] * BS
            exact_split = decode_exact.split_work(batch, H, D, max_keys)
            fast_split = decode.split_work(batch, H, D)
            args = (qkv, ck, cv, out, cos, sin, None, pos, tables, BS, H, None, D ** -0.5, 1e-6)
            times = [microseconds(lambda s=s: decode_exact.paged_attention(*args, factor, max_keys=max_keys, split=s))
                     for s in (None, exact_split)]
            times += [microseconds(lambda s=s: decode.paged_attention(*args, split=s)) for s in (None, fast_split)]
            print(f"| {batch} | {keys} | " + " | ".join(f"{t:.1f}" for t in times) + f" | {times[3] / times[1]:.2f} |")


def grouped_rows(rng) -> None:
    """Deterministic mode's kernel a block a query head, then a block a key/value head (its threads forced to
    each of 128, 256 and 512; without GROUP_FEWEST's choice, at every batch), and fast mode's one block a head."""
    global H, KV, D
    print("\n| heads over kv heads | sequences | keys | a block a query head (us) | grouped 128 / 256 / 512 threads (us) "
          "| fast (us) | default dispatch / fast (us) |")
    print("|---|---|---|---|---|---|---|")
    saved = {name: getattr(decode_exact, name) for name in ("GROUPED", "GROUP_FEWEST", "GROUP_FEW_THREADS",
                                                            "GROUP_THREADS", "GROUP_MANY_THREADS")}
    try:
        for H, KV, D in ((9, 3, 64), (14, 2, 64), (32, 8, 64)):
            for batch in (1, 16, 64):
                for keys in (24, 300, 1000):
                    qkv, ck, cv, cos, sin, pos, tables = case(rng, keys, batch)
                    out = cp.empty((batch, H * D), dtype=np.float32)
                    max_keys = tables.shape[1] * BS
                    args = (qkv, ck, cv, out, cos, sin, None, pos, tables, BS, H, None, D ** -0.5, 1e-6)

                    def exact() -> float:       # (the workspace made before the launches are recorded)
                        work = decode_exact.probability_work(batch, H, KV, D, max_keys)
                        return microseconds(lambda: decode_exact.paged_attention(
                            *args, exact_rounded.error_factor(D), max_keys=max_keys, p_work=work))
                    decode_exact.GROUPED = False
                    one = exact()
                    decode_exact.GROUPED, decode_exact.GROUP_FEWEST = True, 1 << 20
                    grouped = []
                    for threads in (128, 256, 512):
                        for name in ("GROUP_FEW_THREADS", "GROUP_THREADS", "GROUP_MANY_THREADS"):
                            setattr(decode_exact, name, threads)
                        grouped.append(exact())
                    for name, value in saved.items():
                        setattr(decode_exact, name, value)
                    default = exact()
                    fast = microseconds(lambda: decode.paged_attention(*args))
                    print(f"| {H} / {KV} | {batch} | {keys} | {one:.1f} | " + " / ".join(f"{t:.1f}" for t in grouped)
                          + f" | {fast:.1f} | {default:.1f} / {fast:.1f} |", flush=True)
    finally:
        for name, value in saved.items():
            setattr(decode_exact, name, value)
        H, KV, D = 9, 3, 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deterministic", action="store_true", help="deterministic mode's kernel beside fast mode's")
    parser.add_argument("--grouped", action="store_true",
                        help="deterministic mode's kernel a block a query head against a block a key/value head")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    if args.grouped:
        grouped_rows(rng)
        return
    if args.deterministic:
        deterministic_rows(rng)
        return
    print(f"# {cp.cuda.runtime.getDeviceProperties(0)['name'].decode()}, {B} sequences x {H} heads, head_dim {D}")
    print("| keys | " + " | ".join(f"{w} warps (us)" for w in (2, 4, 8)) + f" | default ({decode.batch_warps(B * H, D)}) |")
    print("|---|---|---|---|---|")
    for keys in (80, 300, 1000):
        qkv, ck, cv, cos, sin, pos, tables = case(rng, keys)
        out = cp.empty((B, H * D), dtype=np.uint16)
        times = [microseconds(lambda w=w: decode.paged_attention(qkv, ck, cv, out, cos, sin, None, pos, tables, BS, H,
                                                                 None, D ** -0.5, 1e-6, warps=w))
                 for w in (2, 4, 8, None)]
        print(f"| {keys} | " + " | ".join(f"{t:.1f}" for t in times) + " |")
    print("\n| sequences | keys | one block a head (us) | split (us) | parts |")
    print("|---|---|---|---|---|")
    for batch in (1, 4, 16, 64):
        split = decode.split_work(batch, H, D)
        for keys in (128, 300, 600, 1000, 2048, 8192):
            qkv, ck, cv, cos, sin, pos, tables = case(rng, keys, batch)
            out = cp.empty((batch, H * D), dtype=np.float32)
            times = [microseconds(lambda s=s: decode.paged_attention(qkv, ck, cv, out, cos, sin, None, pos, tables, BS,
                                                                     H, None, D ** -0.5, 1e-6, split=s))
                     for s in (None, split)]
            parts = 1 if split is None else split.splits
            print(f"| {batch} | {keys} | {times[0]:.1f} | {times[1]:.1f} | {parts} |")


if __name__ == "__main__":
    main()

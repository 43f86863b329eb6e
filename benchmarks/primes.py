"""Exact prime counting, side by side with primesieve (the anchor: `pip install primesieve`, not a Loom
dependency) in the same run: pi(10^8), pi(10^9) (and pi(10^10) with --big) by Loom's compiled CPU
sieve (loom/backend/cpu/primes.py; count_primes(0, n + 1)) on one thread and on all cores, by
prime_count where it counts by LMO (loom/engine/lmo.py, one thread), and by primesieve.count_primes on
one thread and on all cores; "ratio" is Loom's time over primesieve's with as many threads. Every
count is checked against the known pi(10^k).

    .venv/bin/python benchmarks/primes.py                   # CPU
    .venv/bin/python benchmarks/primes.py --big --repeat 3  # adds pi(10^10)
    .venv/bin/python benchmarks/primes.py --primesieve PATH # the primesieve program where the module is missing
    .venv/bin/python benchmarks/primes.py --device cuda     # adds the GPU rows (device machine)
    python benchmarks/primes.py --device cuda --gpu-only --primesieve PATH   # pi(10^10..10^12) on the
        GPU against the primesieve command-line program on every core (where the module is missing)
    python benchmarks/primes.py --device cuda --gpu-only --lmo --primecount PATH   # adds pi(10^13..10^18)
        by LMO on the GPU against the primecount program on every core

Seconds, best of --repeat (default 5), after one untimed call that compiles (or loads) the sieve.
"""
from __future__ import annotations

import argparse
import importlib
import os
import platform
import time

from loom.backend.cpu import primes as cpu_sieve
from loom.errors import LoomError

KNOWN = {10**8: 5761455, 10**9: 50847534, 10**10: 455052511, 10**11: 4118054813, 10**12: 37607912018,
         10**13: 346065536839, 10**14: 3204941750802, 10**15: 29844570422669, 10**16: 279238341033925,
         10**17: 2623557157654233, 10**18: 24739954287740860}
GPU_NS = [10**10, 10**11, 10**12]
LMO_NS = [10**13, 10**14, 10**15, 10**16, 10**17, 10**18]


def machine() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            names = [line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")]
    except OSError:
        names = []
    return f"{names[0] if names else platform.machine()}, {os.cpu_count()} cores"


def best_of(fn, repeat: int) -> tuple[int, float]:
    result, best = None, float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return result, best


def primesieve_or_none():
    try:
        return importlib.import_module("primesieve")
    except ImportError:
        return None


def cpu_rows(ns: list[int], repeat: int, program: str | None = None) -> list[tuple]:
    """(n, what, threads, seconds, ratio to primesieve with as many threads or None) for the CPU."""
    if not cpu_sieve.available():
        print(f"loom's compiled sieve does not run here ({cpu_sieve.jit.unavailable_reason()}): no CPU rows")
        return []
    engine = importlib.import_module("loom.engine.primes")
    ps = primesieve_or_none()
    if ps is None and not program:
        print("primesieve is not importable (pip install primesieve) and no --primesieve program: "
              "its rows and the ratios are left out")
    cores = cpu_sieve._threads(None)
    engine.prime_count(10, "cpu", 1)                       # compile (or load) the sieve: untimed
    rows = []
    for n in ns:
        anchor = {}
        if ps is not None or program:
            for threads in (1, cores):
                if ps is not None:
                    ps.set_num_threads(threads)
                    count, seconds = best_of(lambda: ps.count_primes(n), repeat)
                else:
                    count, seconds = program_best(program, n, threads, repeat)
                assert count == KNOWN[n], (n, count)
                anchor[threads] = seconds
                rows.append((n, "primesieve", threads, seconds, None))
        for threads in sorted({1, cores}):
            count, seconds = best_of(lambda: engine.count_primes(0, n + 1, "cpu", threads), repeat)
            assert count == KNOWN[n], (n, count)
            ratio = seconds / anchor[threads] if threads in anchor else None
            rows.append((n, "loom (compiled sieve)", threads, seconds, ratio))
        if n >= engine.LMO_FROM["cpu"]:                    # prime_count's own path: LMO, one thread
            count, seconds = best_of(lambda: engine.prime_count(n, "cpu"), repeat)
            assert count == KNOWN[n], (n, count)
            rows.append((n, "loom (LMO, NumPy)", 1, seconds, seconds / anchor[1] if 1 in anchor else None))
    return rows


def primesieve_program(path: str, n: int, threads: int) -> tuple[int, float]:
    """(count, seconds) of the primesieve program counting the primes <= n, as it reports them."""
    import subprocess
    lines = subprocess.run([path, str(n), "--count", f"--threads={threads}", "--time", "--quiet"],
                           capture_output=True, text=True, check=True).stdout.split("\n")
    seconds = next(float(line.split(":")[1]) for line in lines if line.startswith("Seconds:"))
    count = next(int(line) for line in lines if line.strip().isdigit())
    return count, seconds


def program_best(path: str, n: int, threads: int, repeat: int) -> tuple[int, float]:
    """(count, best seconds) of `repeat` runs of the primesieve program."""
    runs = [primesieve_program(path, n, threads) for _ in range(repeat)]
    return runs[0][0], min(seconds for _, seconds in runs)


def anchor_rows(ns: list[int], repeat: int, program: str | None) -> list[tuple]:
    """primesieve on every core, for the GPU rows: the module if importable, else the program."""
    cores = os.cpu_count() or 1
    ps = primesieve_or_none()
    rows = []
    for n in ns:
        if ps is not None:
            ps.set_num_threads(cores)
            count, seconds = best_of(lambda: ps.count_primes(n), repeat)
        elif program:
            count, seconds = program_best(program, n, cores, repeat)
        else:
            print("no primesieve (module or --primesieve PATH): the GPU rows have no anchor")
            return []
        assert count == KNOWN[n], (n, count)
        rows.append((n, "primesieve", cores, seconds, None))
    return rows


def cuda_rows(ns: list[int], repeat: int, lmo_ns: list[int]) -> list[tuple]:
    """The GPU rows: loom's cuda sieve (count_primes(0, n + 1)) for ns, and pi(n) by prime_count (LMO
    from 10^10) for ns and lmo_ns, when there is a GPU."""
    engine = importlib.import_module("loom.engine.primes")
    try:
        engine.prime_count(10**10, "cuda")                 # compile the kernels: untimed
        engine.count_primes(0, 10**10, "cuda")
    except LoomError as exc:                               # no GPU, no CuPy, or no sieve there yet
        print(f"no GPU rows: {exc}")
        return []
    rows = []
    for n in ns:
        count, seconds = best_of(lambda: engine.count_primes(0, n + 1, "cuda"), repeat)
        assert count == KNOWN[n], (n, count)
        rows.append((n, "loom (cuda sieve)", "gpu", seconds, None))
    for n in ns + lmo_ns:
        count, seconds = best_of(lambda: engine.prime_count(n, "cuda"), repeat if n < 10**17 else 1)
        assert count == KNOWN[n], (n, count)
        rows.append((n, "loom (cuda LMO)", "gpu", seconds, None))
    return rows


def primecount_rows(ns: list[int], repeat: int, program: str) -> list[tuple]:
    """The primecount program (Gourdon's algorithm) on every core: the anchor of the LMO rows."""
    import subprocess
    cores = os.cpu_count() or 1
    rows = []
    for n in ns:
        best = float("inf")
        for _ in range(repeat if n < 10**17 else 1):
            lines = subprocess.run([program, str(n), "--time", f"--threads={cores}"], capture_output=True,
                                   text=True, check=True).stdout.split("\n")
            assert int(lines[0]) == KNOWN[n], (n, lines[0])
            best = min(best, next(float(line.split(":")[1]) for line in lines if line.startswith("Seconds:")))
        rows.append((n, "primecount", cores, best, None))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big", action="store_true", help="add pi(10^10)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cuda: the GPU rows as well as the CPU's")
    parser.add_argument("--gpu-only", action="store_true", help="only the GPU rows and their anchor")
    parser.add_argument("--primesieve", help="the primesieve program, the anchor where the module is missing")
    parser.add_argument("--lmo", action="store_true", help="add pi(10^13..10^18) by LMO on the GPU")
    parser.add_argument("--primecount", help="the primecount program, the anchor of the LMO rows")
    args = parser.parse_args()
    ns = [10**8, 10**9] + ([10**10] if args.big else [])
    print(f"machine: {machine()}; best of {args.repeat}")
    rows = [] if args.gpu_only else cpu_rows(ns, args.repeat, args.primesieve)
    if args.device == "cuda":
        lmo_ns = LMO_NS if args.lmo else []
        gpu = cuda_rows(GPU_NS, args.repeat, lmo_ns)
        anchors = anchor_rows(GPU_NS, args.repeat, args.primesieve)
        if args.primecount:
            anchors += primecount_rows(lmo_ns, args.repeat, args.primecount)
        by_n = {n: seconds for n, _, _, seconds, _ in anchors}
        rows += anchors + [(n, what, threads, seconds, seconds / by_n[n] if n in by_n else None)
                           for n, what, threads, seconds, _ in gpu]
    print(f"{'n':>12}  {'what':<22} {'threads':>7}  {'seconds':>9}  {'ratio':>6}")
    for n, what, threads, seconds, ratio in rows:
        shown = f"{ratio:6.2f}" if ratio is not None else f"{'':>6}"
        print(f"{n:>12}  {what:<22} {threads!s:>7}  {seconds:9.4f}  {shown}")


if __name__ == "__main__":
    main()

"""`loom primes N [--lo LO] [--device cpu|cuda] [--threads T]`: pi(N), the number of primes <= N (or
the primes in [LO, N]), exactly, and the time it took.

N and LO are integers below 2^64, written out (1000000000, 1_000_000_000) or as a power, exactly:
1e9, 10^9, 2^32, 2**32, with an optional integer added or taken away (2^64-1, 10^9+7). A form that
is not an exact integer (1.5e3, 1e-3), a negative number or anything else is an error naming it.
"""
from __future__ import annotations

import argparse
import re
import time

HELP = "count the primes up to N exactly (pi(N)), or those in [LO, N], and time it"

_FORM = re.compile(r"([0-9][0-9_]*)(?:([eE]|\^|\*\*)([0-9]+))?(?:([+-])([0-9][0-9_]*))?")
_MAX_CHARS = 80             # longer text is no integer below 2^64 (and int() refuses 4300 digits anyway)
_MAX_BITS = 256             # a power past this is refused before it is computed (10^100000 would take a while)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("n", metavar="N", help="the upper end, included: an integer below 2^64, e.g. 1000000000, "
                                          "1e9, 10^9, 2^32 or 2^64-1")
    p.add_argument("--lo", metavar="LO", help="count the primes in [LO, N] instead (the same forms as N)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda (needs loom[cuda] and an NVIDIA GPU)")
    p.add_argument("--threads", type=int, metavar="T",
                   help="CPU threads (default: all cores, as numba counts them); the count is the same")


def parse_integer(text: str, name: str) -> int:
    """The non-negative integer `text` writes (see the module docstring), else ConfigError naming it."""
    from ..errors import ConfigError

    match = _FORM.fullmatch(text.strip()) if len(text) <= _MAX_CHARS else None
    if match is None:
        raise ConfigError(name, f"expected a non-negative integer such as 1000000000, 1e9, 10^9 or 2^32, got {text!r}")
    mantissa, power, exponent, sign, offset = match.groups()
    try:
        value, offset = int(mantissa), int(offset or 0)
    except ValueError:                      # misplaced underscores: 1__0, 10_
        raise ConfigError(name, f"expected a non-negative integer, got {text!r}") from None
    if power:
        base, exp = (10, int(exponent)) if power in "eE" else (value, int(exponent))
        if base > 1 and exp * (base.bit_length() - 1) > _MAX_BITS:
            raise ConfigError(name, f"expected a value below 2^64, got {text!r}")
        value = value * base**exp if power in "eE" else base**exp
    value += -offset if sign == "-" else offset
    if value < 0:
        raise ConfigError(name, f"expected a non-negative integer, got {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    from ..engine.primes import LMO_FROM, count_primes, prime_count
    from ..errors import ConfigError, renamed_paths

    n = parse_integer(args.n, "N")
    lo = parse_integer(args.lo, "--lo") if args.lo is not None else 0
    if n >= 1 << 64:
        raise ConfigError("N", f"expected N < 2^64, got {n}")
    if lo > n:
        raise ConfigError("--lo", f"expected --lo <= N, got --lo {lo} and N {n}")
    if args.threads is not None and args.threads < 1:
        raise ConfigError("--threads", f"expected a positive integer, got {args.threads}")
    with renamed_paths({"threads": "--threads", "device": "--device"}):
        # untimed: compiles (or loads) the sieve; a range up to 10^8 also reaches the multi-threaded
        # CPU kernel, which numba compiles on its first call
        count_primes(0, min(n + 1, 10 ** 8), args.device, args.threads)
        if args.lo is None and args.device == "cuda" and n >= LMO_FROM["cuda"]:
            prime_count(LMO_FROM["cuda"], "cuda")          # compiles the GPU's LMO kernel
        start = time.perf_counter()
        if args.lo is None:                                # pi(N): by LMO past LMO_FROM
            found = prime_count(n, args.device, args.threads)
        else:
            found = count_primes(lo, n + 1, args.device, args.threads)
        elapsed = time.perf_counter() - start
    what = f"pi({n})" if args.lo is None else f"primes in [{lo}, {n}]"
    took = f"{elapsed:.2f} s" if elapsed >= 0.01 else f"{elapsed * 1000:.2f} ms"
    print(f"{what} = {found}  ({took}, {args.device})")
    return 0

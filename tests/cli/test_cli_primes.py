"""`loom primes N [--lo LO] [--device cpu|cuda] [--threads T]` (loom/cli/primes.py), run in-process:
the count and the time on one line, the exact integer forms N may take, and one-line errors (exit 3
for a bad value, naming it; exit 2 for usage)."""
from __future__ import annotations

import importlib
import re
from types import SimpleNamespace

import pytest
from cli_run import loom

from loom import backend
from loom.backend.cpu import primes as cpu_primes
from loom.cli.primes import parse_integer
from loom.errors import BackendError, ConfigError


def one_error(code: int, err: str, expected: int = 3) -> str:
    assert code == expected, err
    lines = err.splitlines()
    assert len(lines) == 1 and "internal error" not in err and "Traceback" not in err, err
    assert lines[0].startswith("loom: usage error:" if expected == 2 else "loom: error:"), err
    return lines[0]


@pytest.mark.parametrize("argv, line", [
    (["1000000"], "pi(1000000) = 78498"),
    (["1e6"], "pi(1000000) = 78498"),
    (["10^6", "--threads", "1"], "pi(1000000) = 78498"),
    (["2^20"], "pi(1048576) = 82025"),
    (["2**10"], "pi(1024) = 172"),
    (["1_000"], "pi(1000) = 168"),
    (["0"], "pi(0) = 0"),
    (["1000", "--lo", "100"], "primes in [100, 1000] = 143"),
    (["10^9+9", "--lo", "10^9+7"], "primes in [1000000007, 1000000009] = 2"),
    (["97", "--lo", "97"], "primes in [97, 97] = 1"),
])
def test_counts_and_time_on_one_line(capsys, argv, line):
    code, out, err = loom(capsys, "primes", *argv)
    assert code == 0, err
    assert re.fullmatch(re.escape(line) + r"  \([0-9.]+ m?s, cpu\)\n", out), out


@pytest.mark.skipif(not cpu_primes.available(), reason="the NumPy reference sieve takes minutes up there "
                                                      "(numba: pip install 'loom[cpu]'; LOOM_JIT != 0)")
def test_the_top_of_the_range(capsys):
    code, out, err = loom(capsys, "primes", "2^64-1", "--lo", "2^64-100")
    assert code == 0, err
    assert out.startswith("primes in [18446744073709551516, 18446744073709551615] = 3  (")   # 2^64 - 95, 83, 59


@pytest.mark.parametrize("text, value", [
    ("12345", 12345), ("1e9", 10**9), ("1E3", 1000), ("3e2", 300), ("10^13", 10**13), ("2^32", 2**32),
    ("2**64", 2**64), ("2^64-1", 2**64 - 1), ("10^9+7", 10**9 + 7), ("1_000_000", 10**6), (" 42 ", 42),
    ("0^0", 1), ("1^99999", 1), ("0e5", 0),
])
def test_integer_forms(text, value):
    assert parse_integer(text, "N") == value


@pytest.mark.parametrize("text, reason", [
    ("1.5e3", "expected a non-negative integer"), ("1e-3", "expected a non-negative integer"),
    ("-5", "expected a non-negative integer"), ("abc", "expected a non-negative integer"),
    ("", "expected a non-negative integer"), ("1e9.0", "expected a non-negative integer"),
    ("2^", "expected a non-negative integer"), ("1__0", "expected a non-negative integer"),
    ("5-10", "expected a non-negative integer"), ("10^100000", "expected a value below 2^64"),
    ("9" * 200, "expected a non-negative integer"),
])
def test_bad_integer_forms_name_the_text(text, reason):
    with pytest.raises(ConfigError, match=rf"^N: {re.escape(reason)}.*, got {re.escape(repr(text))}$") as info:
        parse_integer(text, "N")
    assert info.value.path == "N"


@pytest.mark.parametrize("argv, message", [
    (["1.5e3"], "loom: error: N: expected a non-negative integer such as 1000000000, 1e9, 10^9 or 2^32, got '1.5e3'"),
    (["-5"], "loom: error: N: expected a non-negative integer such as 1000000000, 1e9, 10^9 or 2^32, got '-5'"),
    (["lots"], "loom: error: N: expected a non-negative integer such as 1000000000, 1e9, 10^9 or 2^32, got 'lots'"),
    (["2^64"], "loom: error: N: expected N < 2^64, got 18446744073709551616"),
    (["100", "--lo", "200"], "loom: error: --lo: expected --lo <= N, got --lo 200 and N 100"),
    (["100", "--lo", "x"], "loom: error: --lo: expected a non-negative integer such as 1000000000, 1e9, 10^9 or "
                           "2^32, got 'x'"),
    (["100", "--threads", "0"], "loom: error: --threads: expected a positive integer, got 0"),
    (["100", "--device", "tpu"], "loom: error: --device: unknown device 'tpu'; expected cpu or cuda"),
])
def test_bad_values_exit_3_naming_them(capsys, argv, message):
    code, out, err = loom(capsys, "primes", *argv)
    assert one_error(code, err) == message and out == ""


@pytest.mark.parametrize("argv", [[], ["10", "20"], ["10", "--threads", "two"], ["10", "--frobnicate"]])
def test_usage_errors_exit_2(capsys, argv):
    code, out, err = loom(capsys, "primes", *argv)
    one_error(code, err, expected=2)


def test_cuda_runs_the_gpu_sieve(capsys, monkeypatch):
    from loom.engine import primes_cuda
    monkeypatch.setattr(backend, "get", lambda name: SimpleNamespace())
    monkeypatch.setattr(primes_cuda, "count", lambda lo, hi: 78498 if (lo, hi) == (0, 10**6 + 1) else 4)
    code, out, err = loom(capsys, "primes", "1e6", "--device", "cuda")
    assert code == 0, err
    assert re.fullmatch(r"pi\(1000000\) = 78498  \([0-9.]+ m?s, cuda\)\n", out), out
    code, out, err = loom(capsys, "primes", "1e6", "--device", "cuda", "--threads", "2")
    assert one_error(code, err) == ("loom: error: --threads: applies to device 'cpu' only, got threads=2 with "
                                    "device 'cuda'")


def test_cuda_without_a_gpu_is_one_line(capsys, monkeypatch):
    def no_gpu(name):
        raise BackendError("device 'cuda' needs CuPy: pip install 'loom[cuda]' (cupy-cuda12x)")
    monkeypatch.setattr(backend, "get", no_gpu)
    code, out, err = loom(capsys, "primes", "100", "--device", "cuda")
    assert one_error(code, err) == "loom: error: device 'cuda' needs CuPy: pip install 'loom[cuda]' (cupy-cuda12x)"


def test_listed_in_help(capsys):
    code, out, err = loom(capsys, "--help")
    assert code == 0 and "primes" in out
    code, out, err = loom(capsys, "primes", "--help")
    assert code == 0 and "--lo" in out and "2^32" in out


def test_pi_of_n_is_counted_by_lmo_past_its_threshold(capsys, monkeypatch):
    door = importlib.import_module("loom.engine.primes")
    monkeypatch.setitem(door.LMO_FROM, "cpu", 10**6)
    used = []
    real = door.lmo.prime_count
    monkeypatch.setattr(door.lmo, "prime_count", lambda n, device: used.append(n) or real(n, device))
    code, out, err = loom(capsys, "primes", "10^7")
    assert code == 0, err
    assert out.startswith("pi(10000000) = 664579  (") and used == [10**7]
    code, out, err = loom(capsys, "primes", "10^7", "--lo", "2")       # a range is always sieved
    assert code == 0 and out.startswith("primes in [2, 10000000] = 664579  (") and used == [10**7], err

"""Misuse of every function in loom.h (misuse.c): NULL, freed, wrong-kind and made-up handles, NULL
out-pointers, bad shapes, dtypes and enum values, buffers one element short, invalid JSON, unknown
training keys, bad model files and bytes, CSR / gemm / reduce_sum / copy misfits, and every call after
loom_shutdown(). Each must return its status code (or NULL) with a message that starts with the
function's name, crash nothing and leave no handle behind; the same program runs under valgrind,
where an invalid read or write or a definite leak fails the test."""
import re
import shutil
from pathlib import Path

import pytest
from capi_programs import run

from loom.capi import build

HERE = Path(__file__).parent
# the CHECK lines misuse.c prints (its checks are the same with and without a GPU): update this when
# adding checks there, so that a program that stops early, or skips checks, fails
EXPECTED_CHECKS = 354
CHECK = re.compile(r"CHECK (?P<name>(?P<fn>loom_\w+)\.\w+) rc=(?P<rc>-?\d+|NULL|ptr) "
                   r"expect=(?P<expect>-?\d+|NULL) msg=(?P<msg>.*)")
FUNCTIONS = {f.name: f for f in build.declarations()[1]}
CANNOT_FAIL = set(build.C_FUNCTIONS)        # loom_version, loom_last_error, loom_free
VALGRIND = shutil.which("valgrind")


@pytest.fixture(scope="module")
def misuse(compile_c):
    return compile_c(HERE / "misuse.c", "misuse")


@pytest.fixture(scope="module")
def checks(misuse, tmp_path_factory):
    """misuse.c's CHECK lines, parsed, once it ran to the end without a failure of its own."""
    return _parse(run(misuse, tmp_path_factory.mktemp("misuse"), check=False))


def _parse(done) -> list[dict]:
    out = done.stdout
    tail = f"stdout (end):\n{out[-3000:]}\nstderr (end):\n{done.stderr[-3000:]}"
    assert done.returncode >= 0, f"misuse crashed (signal {-done.returncode})\n{tail}"
    assert re.search(r"^DONE checks=\d+ failures=\d+$", out, re.M), f"misuse stopped early\n{tail}"
    fails = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert not fails, "misuse.c's own checks failed:\n" + "\n".join(fails)
    assert done.returncode == 0, f"misuse exited {done.returncode}\n{tail}"
    assert re.search(r"^LIVE 0$", out, re.M), "handles were left after freeing everything"
    lines = [line for line in out.splitlines() if line.startswith("CHECK ")]
    parsed = [CHECK.fullmatch(line) for line in lines]
    bad = [line for line, m in zip(lines, parsed) if m is None]
    assert not bad, "CHECK lines that do not parse:\n" + "\n".join(bad)
    rows = [m.groupdict() for m in parsed]
    assert len(rows) == EXPECTED_CHECKS, f"{len(rows)} CHECK lines, expected {EXPECTED_CHECKS}"
    names = [r["name"] for r in rows]
    assert len(set(names)) == len(names), f"repeated names: {sorted({n for n in names if names.count(n) > 1})}"
    return rows


def test_every_misuse_returns_its_status_and_a_message(checks):
    wrong = [f"{r['name']}: rc={r['rc']}, expected {r['expect']} ({r['msg']})" for r in checks
             if r["rc"] != r["expect"]]
    assert not wrong, "wrong status:\n" + "\n".join(wrong)
    failed = [r for r in checks if r["rc"] != "0"]
    assert len(failed) > 0.9 * len(checks)
    for r in failed:
        fn, msg = r["fn"], r["msg"]
        assert msg.startswith(f"{fn}: "), f"{r['name']}: the message does not name {fn}: {msg!r}"
        assert len(msg) > len(fn) + 8, f"{r['name']}: the message says nothing: {msg!r}"
        assert "internal error" not in msg and "Traceback" not in msg, f"{r['name']}: {msg!r}"


def test_every_function_is_misused_and_refused_after_shutdown(checks):
    """Each function of the header (but the three that cannot fail) has misuse checks and an
    after-shutdown check; each check names a function of the header, with the status type it returns."""
    seen: dict[str, set[str]] = {}
    for r in checks:
        fn = FUNCTIONS.get(r["fn"])
        assert fn is not None, f"{r['name']} names no function of loom.h"
        pointer = fn.ret.endswith("*")
        assert (r["expect"] == "NULL") == pointer, f"{r['name']}: {fn.ret} {fn.name} expects {r['expect']}"
        seen.setdefault(fn.name, set()).add(r["name"].split(".", 1)[1])
    for name in FUNCTIONS.keys() - CANNOT_FAIL:
        cases = seen.get(name, set())
        assert cases - {"after_shutdown", "ok"}, f"{name} has no misuse check"
        if name != "loom_shutdown":
            assert "after_shutdown" in cases, f"{name} is not called after loom_shutdown()"
    shutdown = {r["name"]: r for r in checks if r["name"].endswith(".after_shutdown")}
    for r in shutdown.values():
        assert r["expect"] in ("8", "NULL") and "shut down" in r["msg"], r
    assert {"loom_shutdown.ok", "loom_shutdown.again"} <= {r["name"] for r in checks}


@pytest.mark.slow
@pytest.mark.skipif(VALGRIND is None, reason="valgrind is not installed (apt-get install valgrind)")
def test_misuse_under_valgrind(misuse, tmp_path):
    """The same program under memcheck: an invalid read or write, an invalid free or a definite leak
    anywhere fails (--error-exitcode), as do misuse.c's own checks.

    - PYTHONMALLOC=malloc: CPython's small-object allocator reads memory it does not own by design
      (address_in_range); with malloc every Python object is a block valgrind tracks.
    - LOOM_JIT=0: Loom's numba-compiled loops would spend minutes compiling with LLVM under valgrind
      (3 min 20 s measured, against about 20 s without) and report LLVM's own uninitialised reads; the
      NumPy path runs the same C-ABI calls.
    - --undef-value-errors=no: CPython 3.11 reads the uninitialised digit of every int 0 it builds
      (_PyLong_New, then maybe_small_long), and the pointer derived from it taints every use of that
      small int, in any frame, beyond what a suppression limited to CPython's frames could bound;
      what this test is for, bad reads and writes and definite leaks, does not need that check.
    - valgrind.supp: the dynamic loader's strncmp reading past "$ORIGIN" while CPython imports an
      extension module (the file says why it is harmless); --num-callers=40 shows the import frame the
      suppression requires.
    """
    cmd = ["--error-exitcode=99", "--errors-for-leak-kinds=definite", "--leak-check=full",
           "--undef-value-errors=no", "--num-callers=40", f"--suppressions={HERE / 'valgrind.supp'}", misuse, tmp_path]
    done = run(Path(VALGRIND), *cmd, env={"PYTHONMALLOC": "malloc", "LOOM_JIT": "0"}, timeout=900, check=False)
    report = [line for line in done.stderr.splitlines() if line.startswith("==")]
    assert done.returncode != 99, "valgrind found errors:\n" + "\n".join(report[-300:])
    assert re.search(r"ERROR SUMMARY: 0 errors", done.stderr), "\n".join(report[-50:])
    _parse(done)


def test_the_headers_dtype_enum_is_loom_dtypes_table():
    """LoomDType's names and numbers are loom.dtypes' (docs/dtypes.md: stable, never reused)."""
    import re

    from loom import dtypes
    from loom.capi.build import header_text
    body = re.search(r"enum LoomDType \{([^}]*)\}", header_text()).group(1)
    enum = {name.lower(): int(value) for name, value in re.findall(r"LOOM_(\w+) = (\d+)", body)}
    assert enum == {name: row.c_enum for name, row in dtypes.TABLE.items()}


def test_a_library_built_from_another_header_refuses_to_start(tmp_path, monkeypatch, capi):
    """The library carries its header's SHA-256; against a Loom whose loom.h differs it does not start:
    every call is LOOM_ERR_RUNTIME with a message saying to rebuild (never a wrong enum or a no-op)."""
    import subprocess

    from capi_programs import flags, run

    from loom.capi import build
    monkeypatch.setattr(build, "header_sha256", lambda: "0" * 64)
    stale = tmp_path / "stale"
    build.build(stale)
    source = tmp_path / "stale.c"
    source.write_text('#include <stdio.h>\n#include <loom.h>\nint main(void) { int on = 7;\n'
                      '  int rc = loom_get_deterministic(&on);\n'
                      '  printf("%d %d %s\\n", rc, on, loom_last_error()); return 0; }\n')
    exe = tmp_path / "stale_program"
    subprocess.run(["cc", "-o", str(exe), str(source), *flags(stale)], check=True)
    rc, on, message = run(exe).stdout.strip().split(" ", 2)
    assert (int(rc), int(on)) == (9, 7)                  # LOOM_ERR_RUNTIME; the out-parameter untouched
    assert "built from another loom.h" in message and "loom capi build" in message

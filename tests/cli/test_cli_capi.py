"""`loom capi build`: the three files, and its errors as one line with exit 3 (2 for usage)."""
import shutil

import pytest
from cli_run import loom

pytest.importorskip("cffi", reason="the C ABI needs cffi (pip install 'loom[capi]')")
needs_cc = pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler (cc) on PATH")


@needs_cc
def test_build_writes_the_library_the_header_and_the_pkgconfig_file(capsys, tmp_path):
    code, out, err = loom(capsys, "capi", "build", "--out", tmp_path / "lib")
    assert code == 0, err
    folder = tmp_path / "lib"
    assert {p.name for p in folder.iterdir()} == {"libloom.so", "loom.h", "loom.pc"}
    assert (folder / "libloom.so").read_bytes()[:4] == b"\x7fELF"
    pc = (folder / "loom.pc").read_text()
    assert f"prefix={folder}" in pc and "-lloom" in pc and "Cflags: -I${includedir}" in pc
    assert "LOOM_ABI_VERSION" in (folder / "loom.h").read_text()
    assert "pkg-config --cflags --libs loom" in out


def test_a_missing_compiler_is_one_line_exit_3(capsys, tmp_path, monkeypatch):
    code, _, err = loom(capsys, "capi", "build", "--out", tmp_path, "--cc", "no-such-cc-1234")
    assert code == 3 and err.count("\n") == 1 and "no-such-cc-1234" in err
    monkeypatch.setenv("CC", "no-such-cc-5678")
    code, _, err = loom(capsys, "capi", "build", "--out", tmp_path)
    assert code == 3 and err.count("\n") == 1 and "CC='no-such-cc-5678'" in err


@needs_cc
def test_an_out_path_that_is_a_file_is_one_line_exit_3(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = loom(capsys, "capi", "build", "--out", blocker)
    assert code == 3 and err.count("\n") == 1 and str(blocker) in err


def test_usage_errors_exit_2(capsys):
    assert loom(capsys, "capi")[0] == 2
    assert loom(capsys, "capi", "install")[0] == 2

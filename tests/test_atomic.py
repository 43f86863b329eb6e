"""loom/atomic.py: files and folders with the modes other tools give them, errors naming the user's
path, valid JSON, and output folders that a failure leaves as they were."""
import json
import os
import stat

import pytest

from loom import atomic


@pytest.fixture
def umask022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_new_file_gets_the_umask_mode(tmp_path, umask022):
    atomic.write_bytes(tmp_path / "a.bin", b"x")
    assert mode(tmp_path / "a.bin") == 0o644
    os.umask(0o077)
    atomic.write_bytes(tmp_path / "b.bin", b"x")
    assert mode(tmp_path / "b.bin") == 0o600


def test_existing_file_keeps_its_mode(tmp_path, umask022):
    path = tmp_path / "a.bin"
    path.write_bytes(b"old")
    os.chmod(path, 0o640)
    atomic.write_bytes(path, b"new")
    assert path.read_bytes() == b"new" and mode(path) == 0o640


def test_errors_name_the_users_path(tmp_path):
    with pytest.raises(atomic.FileError, match=f"^{tmp_path}/missing/a.bin: folder .*missing does not exist"):
        atomic.write_bytes(tmp_path / "missing" / "a.bin", b"x")
    with pytest.raises(atomic.FileError, match="is a directory"):
        atomic.write_bytes(tmp_path, b"x")
    assert os.listdir(tmp_path) == []          # no temporary file left behind


def test_describe_names_the_path():
    exc = atomic.describe(FileNotFoundError(2, "No such file or directory", "/x/y"), "model.loom")
    assert isinstance(exc, atomic.FileError) and str(exc) == "model.loom: no such file or directory"


def test_json_text_writes_nan_as_null():
    text, notes = atomic.json_text({"loss": [1.0, float("nan")], "best": float("inf"), "n": 3})
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in JSON")) == \
        {"loss": [1.0, None], "best": None, "n": 3}
    assert notes == ["loss[1]: nan", "best: inf"]


def test_new_folder_removes_what_a_failure_created(tmp_path, umask022):
    out = tmp_path / "a" / "b"
    with pytest.raises(RuntimeError), atomic.new_folder(out):
        assert mode(tmp_path / "a") == 0o755
        (out / "partial.loom").write_bytes(b"x")
        raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


def test_new_folder_keeps_old_files_and_drops_new_ones(tmp_path):
    (tmp_path / "old.txt").write_text("keep")
    with pytest.raises(RuntimeError), atomic.new_folder(tmp_path):
        (tmp_path / "new.txt").write_text("drop")
        raise RuntimeError("boom")
    assert os.listdir(tmp_path) == ["old.txt"]


def test_new_folder_keeps_files_on_ctrl_c(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt), atomic.new_folder(out):
        (out / "checkpoint.loom").write_bytes(b"x")
        raise KeyboardInterrupt
    assert os.listdir(out) == ["checkpoint.loom"]


def test_new_folder_refuses_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(atomic.FileError, match="exists and is not a folder"), atomic.new_folder(tmp_path / "f"):
        pass

"""One error taxonomy for every `loom` command (loom/cli/main.py's docstring): a failure the user can fix
is one line `loom: error: ...` naming the user's path or value, exit 3; a usage error is one line
`loom: usage error: ...`, exit 2; "internal error" (exit 1) and tracebacks are for bugs only; and a
failed command leaves no new file or folder behind.

Every case runs `loom.cli.main.main` in-process in an empty folder (tmp_path) that holds only the files
the case writes; the shared inputs (configs, data, a trained model) live in a module-scoped folder.
"""
from __future__ import annotations

import io
import json
import os
import shlex
from dataclasses import dataclass, field

import numpy as np
import pytest

from loom.cli.main import main
from loom.version import __version__

NET = {"loom": 1, "input": {"shape": [4]},
       "layers": [{"type": "dense", "units": 8, "activation": "relu"}, {"type": "dense", "units": 3}]}
REG = {"loom": 1, "input": {"shape": [4]}, "layers": [{"type": "dense", "units": 1}]}


# --- helpers --------------------------------------------------------------------------------------

def listing(root) -> list[str]:
    """Every file and folder under root, as paths relative to it."""
    found = []
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            found.append(os.path.relpath(os.path.join(folder, name), root))
    return sorted(found)


def loom(capsys, argv: list[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `loom ARGV`, run in this process."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def check_error(code: int, err: str, expected: int = 3) -> str:
    """The one line of a failure's stderr, after checking its exit code and form."""
    assert code == expected, err
    assert "internal error" not in err and "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("loom: usage error:" if expected == 2 else "loom: error:"), err
    return lines[0]


def fails(capsys, root, argv: list[str], expected: int = 3) -> str:
    """Run a command that must fail: check the exit code, the one-line message, and that it left no
    new file or folder under root. Returns the message."""
    before = listing(root)
    code, _, err = loom(capsys, argv)
    line = check_error(code, err, expected)
    assert listing(root) == before, line
    return line


def fill(arg: str, shared: dict) -> str:
    """arg with each {name} of a shared file replaced by its path."""
    for name, path in shared.items():
        arg = arg.replace("{" + name + "}", path)
    return arg


def npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def strict_json(text: str):
    """json.loads that fails on NaN / Infinity (which no other JSON reader accepts)."""
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"invalid JSON constant {c}"))


def classes(n: int = 30, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    return (rng.normal(size=(n, 4)) + np.eye(3, 4)[y]).astype(np.float32), y


# --- shared inputs --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """A folder with net.json (4 -> 3 classes), reg.json (4 -> 1), data.npz, reg.npz, x.npy and
    model.loom (net.json trained one epoch on data.npz); returns {name: absolute path}."""
    root = tmp_path_factory.mktemp("shared")
    x, y = classes()
    (root / "net.json").write_text(json.dumps(NET))
    (root / "reg.json").write_text(json.dumps(REG))
    np.savez(root / "data.npz", x=x, y=y)
    np.savez(root / "reg.npz", x=x, y=x.sum(axis=1, keepdims=True))
    np.save(root / "x.npy", x)
    code = main(["train", str(root / "net.json"), "--data", str(root / "data.npz"), "--out", str(root / "run"),
                 "--quiet", "--epochs", "1"])
    assert code == 0
    paths = {name: str(root / name) for name in ("net.json", "reg.json", "data.npz", "reg.npz", "x.npy")}
    paths["model.loom"] = str(root / "run" / "model.loom")
    paths["checkpoint.loom"] = str(root / "run" / "checkpoint.loom")
    paths["history"] = str(root / "run" / "history.json")
    return paths


@pytest.fixture
def here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


# --- the table: a command, the files it needs, the exit code, what the message must name ----------

def _truncated_npz() -> bytes:
    data = npz_bytes(x=np.ones((20, 4), np.float32), y=np.zeros(20, np.int64))
    return data[:len(data) // 2]


def _nan_npz() -> bytes:
    x, y = classes()
    x[7, 2] = np.nan
    return npz_bytes(x=x, y=y)


def _csv_with_text_cell() -> bytes:
    return b"1,2,3,4,0\n1,2,x,4,1\n5,6,7,8,2\n"


RANDOM = np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes()
DIR = object()      # a files entry: make a folder


@dataclass
class Case:
    argv: str                                      # shlex text; {name} is a shared file's path
    names: tuple[str, ...]                         # what the message must contain
    files: dict = field(default_factory=dict)      # name -> bytes, a callable giving bytes, or DIR
    code: int = 3
    absent: tuple[str, ...] = ()                   # what the message must not contain


TRAIN = "train {net.json} --data {data.npz} --out out --quiet --epochs 1"
CASES = {
    # train: the config
    "train-config-missing": Case("train missing.json --data {data.npz} --out out", ("missing.json",)),
    "train-config-not-json": Case("train bad.json --data {data.npz} --out out", ("invalid JSON", "line 1"),
                                  {"bad.json": b"{not json"}),
    "train-config-not-json-names-file": Case("train bad.json --data {data.npz} --out out", ("bad.json",),
                                             {"bad.json": b"{not json"}),
    "train-config-version": Case("train v2.json --data {data.npz} --out out", ('config key "loom"',),
                                 {"v2.json": json.dumps({**NET, "loom": 2}).encode()},
                                 absent=("loom: error: loom:",)),
    "train-config-huge-layer": Case("train huge.json --data {data.npz} --out out", ("layers[0]",),
                                    {"huge.json": json.dumps({**NET, "layers": [
                                        {"type": "dense", "units": 10**12}]}).encode()}),
    "train-config-directory": Case("train cfgdir --data {data.npz} --out out", ("cfgdir",), {"cfgdir": DIR}),
    # train: the data
    "train-data-missing": Case("train {net.json} --data missing.npz --out out", ("missing.npz",)),
    "train-data-truncated": Case("train {net.json} --data cut.npz --out out", ("cut.npz",),
                                 {"cut.npz": _truncated_npz}),
    "train-data-no-y": Case("train {net.json} --data noy.npz --out out", ("noy.npz", "y"),
                            {"noy.npz": lambda: npz_bytes(x=np.ones((5, 4), np.float32))}),
    "train-data-zero-rows": Case("train {net.json} --data empty.npz --out out", ("empty.npz",),
                                 {"empty.npz": lambda: npz_bytes(x=np.ones((0, 4), np.float32),
                                                                 y=np.zeros(0, np.int64))}),
    "train-data-csv-text-cell": Case("train {net.json} --data bad.csv --out out", ("bad.csv", "line 2", "'x'"),
                                     {"bad.csv": _csv_with_text_cell}),
    "train-data-wrong-width": Case("train {net.json} --data wide.npz --out out", ("wide.npz", "[4]"),
                                   {"wide.npz": lambda: npz_bytes(x=np.ones((5, 6)), y=np.zeros(5, np.int64))}),
    "train-csv-target-missing": Case("train {net.json} --data d.csv --out out --target nosuch", ("d.csv", "nosuch"),
                                     {"d.csv": b"a,b,c,d,t\n1,2,3,4,0\n5,6,7,8,1\n"}),
    "train-seed-negative": Case(TRAIN + " --seed -1", ("--seed", "-1")),
    "train-device-bogus": Case(TRAIN + " --device bogus", ("--device", "bogus")),
    "train-data-unknown-extension": Case("train {net.json} --data data.txt --out out", ("data.txt",),
                                         {"data.txt": b"1,2,3,4,0\n"}),
    "train-data-nan": Case("train {net.json} --data nan.npz --out out --quiet --epochs 1",
                           ("nan", "sample 7", "--allow-nonfinite"), {"nan.npz": _nan_npz}),
    "train-data-nan-names-file": Case("train {net.json} --data nan.npz --out out --quiet --epochs 1", ("nan.npz",),
                                      {"nan.npz": _nan_npz}),
    # train: --out
    "train-out-is-file": Case(TRAIN.replace("--out out", "--out taken"), ("taken",), {"taken": b"keep"}),
    "train-out-under-file": Case(TRAIN.replace("--out out", "--out taken/run"), ("taken/run",), {"taken": b"keep"}),
    # train: flag values, named as the flag
    "train-epochs-0": Case(TRAIN + " --epochs 0", ("--epochs", "0"), absent=("training.epochs",)),
    "train-batch-size-0": Case(TRAIN + " --batch-size 0", ("--batch-size", "0"), absent=("training.",)),
    "train-lr-negative": Case(TRAIN + " --lr -1", ("--lr", "-1"), absent=("training.",)),
    "train-validation-1.5": Case(TRAIN + " --validation 1.5", ("--validation", "1.5"), absent=("training.",)),
    "train-loss-misfit": Case("train {reg.json} --data {reg.npz} --out out --quiet --epochs 1 --loss cross_entropy",
                              ("cross_entropy", "mse")),
    "train-loss-bogus": Case(TRAIN + " --loss bogus", ("--loss", "bogus")),
    "train-loss-bad-json": Case(TRAIN + " --loss '{\"type\": '", ("--loss",)),
    "train-optimizer-bogus": Case(TRAIN + " --optimizer bogus", ("--optimizer", "bogus")),
    "train-optimizer-schedule": Case(
        TRAIN + ' --optimizer \'{"type": "sgd", "lr": 0.1, "schedule": {"type": "bogus"}}\'',
        ("--optimizer.schedule.type", "bogus")),
    "train-metrics-bogus": Case(TRAIN + " --metrics bogus", ("--metrics[0]", "bogus")),
    "train-optimizer-bogus-not-quiet": Case(TRAIN.replace(" --quiet", "") + " --optimizer bogus",
                                            ("--optimizer.type", "bogus")),
    "train-resume-missing": Case(TRAIN + " --resume nockpt.loom", ("nockpt.loom",)),
    "train-resume-garbage": Case(TRAIN + " --resume junk.loom", ("junk.loom",), {"junk.loom": RANDOM}),
    "train-no-data": Case("train {net.json} --out out", ("--data",), code=2),
    # eval
    "eval-model-missing": Case("eval missing.loom --data {data.npz}", ("missing.loom",)),
    "eval-model-garbage": Case("eval junk.loom --data {data.npz}", ("junk.loom",), {"junk.loom": RANDOM}),
    "eval-model-truncated": Case("eval cut.loom --data {data.npz}", ("cut.loom",),
                                 {"cut.loom": lambda s: open(s["model.loom"], "rb").read()[:300]}),
    "eval-model-directory": Case("eval mdir --data {data.npz}", ("mdir",), {"mdir": DIR}),
    "eval-data-missing": Case("eval {model.loom} --data missing.npz", ("missing.npz",)),
    "eval-data-wrong-width": Case("eval {model.loom} --data wide.npz", ("wide.npz", "[6]", "[4]"),
                                  {"wide.npz": lambda: npz_bytes(x=np.ones((5, 6)), y=np.zeros(5, np.int64))}),
    "eval-json-missing-folder": Case("eval {model.loom} --data {data.npz} --json nodir/report.json",
                                     ("nodir/report.json",)),
    "eval-json-directory": Case("eval {model.loom} --data {data.npz} --json rdir", ("rdir",), {"rdir": DIR}),
    "eval-task-misfit": Case("eval {model.loom} --data {data.npz} --task regression", ("data.npz", "--task")),
    "eval-data-npy": Case("eval {model.loom} --data {x.npy}", ("x.npy", "targets")),
    "eval-text-labels-unknown": Case("eval {model.loom} --data lab.csv", ("lab.csv", "class names"),
                                     {"lab.csv": b"a,b,c,d,s\n1,2,3,4,cat\n1,2,3,4,dog\n"}),
    # run
    "run-model-missing": Case("run missing.loom --input {x.npy} --output y.npy", ("missing.loom",)),
    "run-model-is-config": Case("run {net.json} --input {x.npy} --output y.npy",
                                ("net.json", "not a readable Loom model file")),
    "run-model-is-data": Case("run {data.npz} --input {x.npy} --output y.npy",
                              ("data.npz", "not a readable Loom model file")),
    "run-input-missing": Case("run {model.loom} --input nox.npy --output y.npy", ("nox.npy",)),
    "run-input-wrong-width": Case("run {model.loom} --input wide.npy --output y.npy", ("wide.npy", "[4]"),
                                  {"wide.npy": lambda: _npy(np.ones((3, 5), np.float32))}),
    "run-input-garbage-npy": Case("run {model.loom} --input junk.npy --output y.npy", ("junk.npy", "not a readable"),
                                  {"junk.npy": RANDOM}, absent=("pickle",)),
    "run-input-garbage-npz": Case("run {model.loom} --input junk.npz --output y.npy", ("junk.npz", "not a readable"),
                                  {"junk.npz": RANDOM}, absent=("pickle",)),
    "run-input-empty-npy": Case("run {model.loom} --input e.npy --output y.npy", ("e.npy", "empty"), {"e.npy": b""}),
    "run-input-directory": Case("run {model.loom} --input xdir --output y.npy", ("xdir",), {"xdir": DIR}),
    "run-device-bogus": Case("run {model.loom} --input {x.npy} --output y.npy --device bogus", ("bogus",)),
    "run-output-missing-folder": Case("run {model.loom} --input {x.npy} --output nodir/y.npy", ("nodir/y.npy",),
                                      absent=(".tmp",)),
    "run-output-dot": Case("run {model.loom} --input {x.npy} --output .", ("--output",)),
    "run-output-txt": Case("run {model.loom} --input {x.npy} --output out.txt", ("out.txt", ".txt")),
    "run-output-is-folder": Case("run {model.loom} --input {x.npy} --output y.npy", ("y.npy",), {"y.npy": DIR}),
    "run-batch-size-0": Case("run {model.loom} --input {x.npy} --output y.npy --batch-size 0",
                             ("--batch-size", "0")),
    "run-target-not-csv": Case("run {model.loom} --input {x.npy} --output y.npy --target 0", ("--target",)),
    "run-no-output": Case("run {model.loom} --input {x.npy}", ("--output",), code=2),
    # convert
    "convert-missing-input": Case("convert nothere.loom --dtype int8 --out q.loom", ("nothere.loom",)),
    "convert-dtype-bogus": Case("convert {model.loom} --dtype bogus --out q.loom", ("--dtype", "bogus"),
                                absent=("quantization.",)),
    "convert-not-a-model": Case("convert {data.npz} --dtype int8 --out q.loom",
                                ("data.npz", "not a readable Loom model file")),
    "convert-welvet-garbage": Case("convert --from welvet w.json w.loom", ("w.json",),
                                   {"w.json": b'{"id": "network", "layers": [{'}),
    "convert-welvet-missing": Case("convert --from welvet nothere.json w.loom", ("nothere.json",)),
    "convert-to-hf-not-gguf": Case("convert {model.loom} --to hf hfdir", ("model.loom",)),
    "convert-to-hf-garbage": Case("convert junk.gguf --to hf hfdir", ("junk.gguf",), {"junk.gguf": RANDOM}),
    "convert-out-missing-folder": Case("convert {model.loom} --dtype int8 --out nodir/q.loom", ("nodir/q.loom",)),
    "convert-no-input": Case("convert", ("IN",), code=2),
    "convert-no-mode": Case("convert {model.loom} q.loom", ("--from",), code=2),
    "convert-from-bogus": Case("convert --from bogus a b", ("bogus",), code=2),
    # verify
    "verify-device-bogus": Case("verify --device bogus", ("bogus",), code=2),
    "verify-sample-missing": Case("verify --sample nosuch --device cpu --steps 1", ("--sample", "nosuch")),
    "verify-json-missing-folder": Case("verify --sample dense --device cpu --steps 1 --json nodir/v.json",
                                       ("nodir/v.json",)),
    "verify-steps-0": Case("verify --steps 0", ("--steps", "0")),
    # generate / chat / embed: never a download
    "generate-model-missing": Case("generate --model nomodel --prompt hi", ("nomodel",)),
    "generate-model-empty-dir": Case("generate --model mdir --prompt hi", ("mdir", "config.json"), {"mdir": DIR}),
    "generate-model-garbage-gguf": Case("generate --model junk.gguf --prompt hi", ("junk.gguf",),
                                        {"junk.gguf": RANDOM}),
    "generate-model-short-gguf": Case("generate --model short.gguf --prompt hi", ("short.gguf",),
                                      {"short.gguf": b"GGUF\x03\x00\x00\x00\x05"}),
    "generate-model-bad-config": Case("generate --model mdir --prompt hi", ("mdir",),
                                      {"mdir": DIR, "mdir/config.json": b"{not json"}),
    "chat-model-missing": Case("chat --model nomodel", ("nomodel",)),
    "chat-model-empty-dir": Case("chat --model mdir", ("mdir", "config.json"), {"mdir": DIR}),
    "chat-model-garbage-gguf": Case("chat --model junk.gguf", ("junk.gguf",), {"junk.gguf": RANDOM}),
    "chat-max-tokens-0": Case("chat --model nomodel --max-tokens 0", ("--max-tokens", "0")),
    "chat-top-p": Case("chat --model nomodel --top-p 2", ("--top-p", "2")),
    "generate-top-p-before-load": Case("generate --model nomodel --prompt hi --top-p 2", ("--top-p", "2")),
    "generate-temperature": Case("generate --model nomodel --prompt hi --temperature -1", ("--temperature", "-1")),
    "generate-stop-empty": Case("generate --model nomodel --prompt hi --stop ''", ("--stop",)),
    "generate-max-tokens-negative": Case("generate --model nomodel --prompt hi --max-tokens -1", ("--max-tokens",)),
    "generate-model-loom-file": Case("generate --model {model.loom} --prompt hi", ("model.loom", "GGUF")),
    "embed-model-missing": Case("embed --model nomodel hello", ("nomodel", "no such file"),
                                absent=("nomodel/config.json",)),
    "embed-model-no-tokenizer": Case("embed --model mdir hello", ("mdir", "tokenizer.json"),
                                     {"mdir": DIR, "mdir/config.json": json.dumps({"model_type": "bert"}).encode(),
                                      "mdir/model.safetensors": b"\x02\0\0\0\0\0\0\0{}"},
                                     absent=("path:",)),
    "embed-model-empty-dir": Case("embed --model mdir hello", ("mdir", "config.json"), {"mdir": DIR}),
    "embed-model-garbage-gguf": Case("embed --model junk.gguf hello", ("junk.gguf", "not a directory"),
                                     {"junk.gguf": RANDOM}, absent=("junk.gguf/",)),
    "embed-batch-size-0": Case("embed --model nomodel --batch-size 0 hello", ("--batch-size", "0")),
    # plot
    "plot-missing": Case("plot nohistory.json", ("nohistory.json",)),
    "plot-not-json": Case("plot h.json", ("h.json",), {"h.json": b"{not json"}),
    "plot-list": Case("plot h.json", ("h.json", "list"), {"h.json": b"[1, 2, 3]"}),
    "plot-text-values": Case("plot h.json", ("h.json", "loss"), {"h.json": b'{"loss": ["a", "b"]}'}),
    "plot-only-seconds": Case("plot h.json", ("h.json",), {"h.json": b'{"seconds": [1.0]}'}),
    "plot-directory": Case("plot hdir", ("hdir",), {"hdir": DIR}),
    "plot-out-missing-folder": Case("plot {history} --out nodir/h.png", ("nodir/h.png",)),
    # top level
    "unknown-command": Case("frobnicate", ("frobnicate",), code=2),
    "demo-epochs-0": Case("demo --epochs 0 --out d", ("--epochs", "0")),
}


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _write_files(root, files: dict, shared: dict) -> None:
    for name, content in files.items():
        path = root / name
        if content is DIR:
            path.mkdir()
            continue
        if callable(content):
            content = content(shared) if content.__code__.co_argcount else content()
        path.write_bytes(content)


@pytest.mark.parametrize("name", list(CASES))
def test_failure_is_one_line_naming_the_value(name, here, shared, capsys):
    case = CASES[name]
    if name == "plot-out-missing-folder":
        pytest.importorskip("matplotlib")
    _write_files(here, case.files, shared)
    argv = [fill(a, shared) for a in shlex.split(case.argv)]
    line = fails(capsys, here, argv, case.code)

    for text in case.names:
        assert text in line, (text, line)
    for text in case.absent:
        assert text not in line, (text, line)



# --- failures that need more than a table row -----------------------------------------------------

def test_out_under_a_read_only_folder(here, shared, capsys):
    if os.geteuid() == 0:
        pytest.skip("root ignores folder permissions")
    (here / "ro").mkdir()
    os.chmod(here / "ro", 0o555)
    try:
        line = fails(capsys, here, ["train", shared["net.json"], "--data", shared["data.npz"], "--out", "ro/run",
                                    "--quiet", "--epochs", "1"])
    finally:
        os.chmod(here / "ro", 0o755)
    assert "ro/run" in line and "permission denied" in line.lower()


@pytest.mark.parametrize("existing", [False, True])
def test_a_failure_after_files_were_written_leaves_none(existing, here, shared, capsys, monkeypatch):
    """history.json cannot be written after model.loom and checkpoint.loom were: all three go, and so
    does the --out folder unless it was there before (then its old files stay)."""
    import loom.atomic
    if existing:
        (here / "out").mkdir()
        (here / "out" / "old.txt").write_text("keep")
    written = []

    def full_disk(path, value, indent=2):
        written.extend(sorted(os.listdir(here / "out")))
        raise loom.atomic.FileError(f"{path}: no space left on device")

    monkeypatch.setattr(loom.atomic, "write_json", full_disk)
    line = fails(capsys, here, ["train", shared["net.json"], "--data", shared["data.npz"], "--out", "out",
                                "--quiet", "--epochs", "1"])
    assert "history.json" in line
    assert "model.loom" in written and "checkpoint.loom" in written      # the failure came late
    assert listing(here) == (["out", "out/old.txt"] if existing else [])
    if existing:
        assert (here / "out" / "old.txt").read_text() == "keep"


# --- what succeeds --------------------------------------------------------------------------------

def test_version_and_no_command(capsys):
    code, out, _ = loom(capsys, ["--version"])
    assert code == 0 and out.strip() == f"loom {__version__}"
    code, _, _ = loom(capsys, [])
    assert code == 2


def test_info_json_lists_the_extras(capsys):
    code, out, err = loom(capsys, ["info", "--json"])
    assert code == 0, err
    data = strict_json(out)
    assert data["extras"] and all("version" in extra for extra in data["extras"].values())


def test_train_writes_files_with_the_umask_mode(here, shared, capsys):
    old = os.umask(0o022)
    try:
        code, out, err = loom(capsys, ["train", shared["net.json"], "--data", shared["data.npz"], "--out", "run",
                                       "--quiet", "--epochs", "1"])
    finally:
        os.umask(old)
    assert code == 0, err
    assert sorted(os.listdir(here / "run")) == ["checkpoint.loom", "history.json", "model.loom"]
    for name in os.listdir(here / "run"):
        assert oct(os.stat(here / "run" / name).st_mode & 0o777) == oct(0o644), name
    assert oct(os.stat(here / "run").st_mode & 0o777) == oct(0o755)
    assert "run/model.loom" in out


def test_allow_nonfinite_trains_and_writes_valid_json(here, shared, capsys):
    (here / "nan.npz").write_bytes(_nan_npz())
    code, _, err = loom(capsys, ["train", shared["net.json"], "--data", "nan.npz", "--out", "run", "--quiet",
                                 "--epochs", "1", "--allow-nonfinite"])
    assert code == 0, err
    history = strict_json((here / "run" / "history.json").read_text())
    assert history["loss"] == [None]
    assert "null" in err                                   # the note says NaN was written as null
    assert "internal error" not in err and "Traceback" not in err


@pytest.mark.parametrize("ext", [".npy", ".csv", ".npz"])
def test_run_writes_the_format_of_the_extension(ext, here, shared, capsys):
    import loom as L
    expected = L.load(shared["model.loom"])(np.load(shared["x.npy"]))
    code, out, err = loom(capsys, ["run", shared["model.loom"], "--input", shared["x.npy"], "--output", "y" + ext])
    assert code == 0, err
    assert listing(here) == ["y" + ext] and "y" + ext in out
    if ext == ".npy":
        got = np.load(here / "y.npy")
    elif ext == ".npz":
        with np.load(here / "y.npz") as data:
            got = data["y"]
    else:
        got = np.loadtxt(here / "y.csv", delimiter=",", dtype=np.float32)
    np.testing.assert_array_equal(got, expected)


def test_plot_draws_a_history_with_null(here, capsys):
    pytest.importorskip("matplotlib")
    (here / "h.json").write_text(json.dumps({"loss": [1.0, None, 0.5], "accuracy": [0.2, 0.4, 0.6],
                                             "seconds": [0.1, 0.1, 0.1]}))
    code, out, err = loom(capsys, ["plot", "h.json"])
    assert code == 0, err
    assert (here / "h.png").read_bytes().startswith(b"\x89PNG") and "h.png" in out


def test_divergence_keeps_the_last_finite_checkpoint(capsys, tmp_path, monkeypatch):
    """Training that diverges in epoch 2 stops with one line, and the checkpoint of epoch 1 stays
    (the file to resume from with a lower learning rate); nothing else is left."""
    monkeypatch.chdir(tmp_path)
    cfg = {"loom": 1, "input": {"shape": [4]},
           "layers": [{"type": "dense", "units": 16, "activation": "relu"}, {"type": "batch_norm"},
                      {"type": "dropout", "rate": 0.2}, {"type": "dense", "units": 1}]}
    (tmp_path / "net.json").write_text(json.dumps(cfg))
    rng = np.random.default_rng(0)
    X = rng.normal(size=(256, 4))
    (tmp_path / "d.npz").write_bytes(npz_bytes(x=X, y=(X @ np.array([1.0, -2.0, 0.5, 3.0]))[:, None] * 10))
    code, _, err = loom(capsys, ["train", "net.json", "--data", "d.npz", "--out", "run", "--quiet", "--epochs", "8",
                                 "--batch-size", "16", "--optimizer", '{"type": "sgd", "lr": 0.008, "momentum": 0.9}'])
    line = check_error(code, err)
    assert "epoch 2, batch 12" in line and "run/checkpoint.loom holds the last finite epoch" in line
    assert os.listdir(tmp_path / "run") == ["checkpoint.loom"]
    resume = ["train", "net.json", "--data", "d.npz", "--out", "run2", "--quiet", "--epochs", "2", "--batch-size", "16",
              "--resume", "run/checkpoint.loom"]
    line = check_error(*loom(capsys, resume)[::2])
    assert "trained with optimizer 'sgd', this run uses 'adam'" in line
    code, _, err = loom(capsys, resume + ["--optimizer", '{"type": "sgd", "lr": 0.001, "momentum": 0.9}'])
    assert code == 0, err          # a real, resumable checkpoint, resumed at a lower learning rate
    assert json.loads((tmp_path / "run2" / "history.json").read_text())["lr"] == [0.008, 0.001]

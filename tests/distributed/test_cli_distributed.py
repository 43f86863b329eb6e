"""`loom train --gpus N` and `loom verify --gpus N` with CPU ranks (--device cpu: the store's
collective), and their errors: one line, exit 3."""
import pathlib

import numpy as np
from cli_run import loom

from loom import cli as loom_cli

CONVNET = pathlib.Path(loom_cli.__file__).with_name("digits-convnet.json")


def data(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    np.savez(path, x=rng.standard_normal((40, 1, 8, 8)).astype(np.float32), y=rng.integers(0, 10, 40))
    return path


def test_train_on_two_ranks_writes_the_model_one_process_writes(tmp_path, capsys):
    d = data(tmp_path)
    common = ["train", CONVNET, "--data", d, "--epochs", "2", "--batch-size", "8", "--quiet"]
    code, out, err = loom(capsys, *common, "--out", tmp_path / "one")
    assert code == 0, err
    code, out, err = loom(capsys, *common, "--out", tmp_path / "two", "--gpus", "2", "--device", "cpu")
    assert code == 0, err
    assert (tmp_path / "one" / "model.loom").read_bytes() == (tmp_path / "two" / "model.loom").read_bytes()
    assert (tmp_path / "two" / "checkpoint.loom").exists()


def test_verify_compares_data_parallel_training(tmp_path, capsys):
    code, out, err = loom(capsys, "verify", "--device", "cpu", "--sample", "dense", "--steps", "2",
                          "--gpus", "2", "--json", tmp_path / "v.json")
    assert code == 0, err
    assert out.count(" same") == 3 and "DIFFERENT" not in out


def test_bad_rank_counts_are_one_line_errors(tmp_path, capsys):
    d = data(tmp_path)
    code, _, err = loom(capsys, "train", CONVNET, "--data", d, "--out", tmp_path / "o", "--gpus", "0")
    assert code == 3 and "--gpus" in err and len(err.strip().splitlines()) == 1
    code, _, err = loom(capsys, "train", CONVNET, "--data", d, "--out", tmp_path / "o", "--gpus", "64")
    assert code == 3 and "64 GPUs" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
    code, _, err = loom(capsys, "verify", "--gpus", "1")
    assert code == 3 and "--gpus" in err

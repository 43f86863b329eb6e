"""Faults in a multi-process world on the CPU: a rank that dies or hangs stops the world within a
bounded time with an error naming it, and a run killed after a checkpoint resumes bit-exactly."""
import time

import numpy as np
import pytest

from loom.errors import DistributedError

from .train_rank import spawn_world as run


def weights(out):
    with np.load(out / "weights.npz") as f:
        return {k: f[k] for k in f.files}


def test_a_rank_that_dies_is_named(tmp_path):
    t0 = time.monotonic()
    with pytest.raises(DistributedError, match="rank 1 exited with code 1"):
        run(tmp_path, "die:1:5")
    assert time.monotonic() - t0 < 30


def test_a_rank_that_hangs_is_named_by_the_others(tmp_path, capfd):
    t0 = time.monotonic()
    with pytest.raises(DistributedError, match="rank 0 exited with code 3"):
        run(tmp_path, "hang:1:4")
    assert time.monotonic() - t0 < 30
    assert "ranks [1] of 2 did not arrive" in capfd.readouterr().err


def test_a_killed_run_resumes_bit_exactly_on_another_world_size(tmp_path):
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    straight.mkdir()
    broken.mkdir()
    run(straight, "none", ranks=2)
    with pytest.raises(DistributedError):
        run(broken, "die:0:8")                  # epoch 3 (3 batches an epoch): two checkpoints written
    assert (broken / "ck.loom").exists()
    run(broken, "none", ranks=3, resume=broken / "ck.loom")
    a, b = weights(straight), weights(broken)
    assert all(np.array_equal(a[k], b[k]) for k in a)

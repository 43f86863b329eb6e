"""loom.train runs in the mode it is given: argument, then the config's training.deterministic, then
the mode in effect; the CLI's --fast selects fast mode for one command."""
import numpy as np
import pytest

import loom
from loom.cli.main import main

CFG = {"loom": 1, "input": {"shape": [3]}, "layers": [{"type": "dense", "units": 2}],
       "training": {"loss": "mse", "epochs": 1, "batch_size": 4}}


def _mode_seen(cfg, **kwargs):
    seen = []
    net = loom.Network.from_config(cfg)
    x, y = np.ones((4, 3), np.float32), np.zeros((4, 2), np.float32)
    loom.train(net, x, y, verbose=False, callbacks=[lambda epoch, logs: seen.append(loom.is_deterministic())],
               **kwargs)
    return seen


def test_train_takes_its_mode_from_argument_config_or_context():
    assert _mode_seen(CFG) == [True]
    assert _mode_seen(CFG, deterministic=False) == [False]
    fast_cfg = {**CFG, "training": {**CFG["training"], "deterministic": False}}
    assert _mode_seen(fast_cfg) == [False]
    assert _mode_seen(fast_cfg, deterministic=True) == [True]
    with loom.deterministic(False):
        assert _mode_seen(CFG) == [False]
    assert loom.is_deterministic()


def test_config_rejects_a_non_boolean_mode():
    bad = {**CFG, "training": {**CFG["training"], "deterministic": "yes"}}
    with pytest.raises(loom.ConfigError, match="training.deterministic"):
        loom.Network.from_config(bad)


def test_cli_fast_flag_is_scoped_to_the_command(capsys):
    assert main(["info", "--fast"]) == 0
    assert loom.is_deterministic()

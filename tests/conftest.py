import logging
import os
import sys

import pytest

# Test helpers (gradcheck.py) live beside this file.
sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture
def loom_log(monkeypatch, caplog):
    """loom_log() -> the messages logged on the "loom" logger so far in the test, with loom/fallback.py's
    once-per-process memory of logged notices cleared first (so a notice an earlier test logged shows)."""
    from loom import fallback
    monkeypatch.setattr(fallback, "_reported", set())
    caplog.set_level(logging.INFO, logger="loom")
    return lambda: [r.getMessage() for r in caplog.records if r.name == "loom" or r.name.startswith("loom.")]

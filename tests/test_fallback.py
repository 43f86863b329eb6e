"""loom/fallback.py: deterministic mode refuses what it cannot run as asked; fast mode and strict=False
fall back and log once per message on the "loom" logger."""
import logging

import pytest

import loom
from loom import fallback


def test_deterministic_mode_raises_the_error_text(loom_log):
    with pytest.raises(loom.DeterminismError, match="^op X: reason Y$"):
        fallback.refuse("op X: reason Y", "op X falls back (reason Y)")
    assert loom_log() == []


@pytest.mark.parametrize("deterministic, strict", [(True, False), (False, True), (False, False)])
def test_fast_mode_or_strict_false_falls_back_and_logs_once(loom_log, deterministic, strict):
    with loom.deterministic(deterministic):
        for _ in range(3):
            fallback.refuse("op X: reason Y", "op X falls back (reason Y)", strict)
        fallback.refuse("op X: reason Z", "op X falls back (reason Z)", strict)
    assert loom_log() == ["op X falls back (reason Y)", "op X falls back (reason Z)"]


def test_notice_once_at_its_level(loom_log, caplog):
    assert fallback.notice_once("a notice", logging.INFO)
    assert not fallback.notice_once("a notice", logging.INFO)
    assert loom_log() == ["a notice"] and caplog.records[-1].levelno == logging.INFO

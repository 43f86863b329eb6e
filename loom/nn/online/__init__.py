"""Online learning under real-time constraints: six training modes on one harness.

    from loom.nn import online
    stream = online.stream("abrupt", ticks=2000, seed=0)
    result = online.run(net, stream, "StepTweenChain")          # net learns in place
    result.summary["accuracy"], result.summary["recovery_ticks"], result.windows[3]

The stream ticks every `period` seconds (default 5 ms); the network must answer each tick within
`deadline` (default: the period) while it learns. Modes (learners.py): NormalBP, StepBP, Tween,
TweenChain, StepTween, StepTweenChain. Metrics per window and per run (metrics.py): accuracy
(right answers in time / ticks), availability, loss, decision latency, recovery after a task change.
Streams (streams.py): stationary, abrupt, drift, noisy, grid. The assessment over networks, streams,
modes and seeds (`loom bench online`) is assessment.py; docs/online.md is its output.
"""
from __future__ import annotations

from .harness import PERIOD, WINDOW, FixedCosts, OnlineResult, WallClock, run
from .learners import DEFAULTS, MODES, Learner, settings
from .streams import STREAMS, Stream
from .streams import build as stream

__all__ = ["DEFAULTS", "MODES", "PERIOD", "STREAMS", "WINDOW", "FixedCosts", "Learner", "OnlineResult", "Stream",
           "WallClock", "run", "settings", "stream"]

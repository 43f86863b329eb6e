"""The real-time loop: a stream ticks every `period` seconds, the network must answer each tick within
`deadline` seconds of its arrival, and learning happens in between.

One learner does everything in order, on a virtual clock advanced by the measured duration of its
work. Tick t arrives at t * period; its work starts when both it has arrived and the learner is free,
the answer (forward pass, output copied to the host) takes what it takes, and the tick counts as
answered when that answer is ready within the deadline. Then the learner learns (a per-tick update,
or NormalBP's blocking burst), and is free again after that. Every tick is computed, even a late one,
so what is learned never depends on timing; only `answered` (and through it, the grid's closed loop)
does. An unanswered tick's decision is not used (the grid's agents stand still).

Timing is wall-clock by default (`WallClock`: perf_counter, and on the GPU a synchronize after the
learning, so its real cost is charged); `FixedCosts` charges set durations instead, which makes
availability reproducible (tests use it).
"""
from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ... import config as configs
from ...config import number
from ...errors import ConfigError
from .. import losses
from . import learners, metrics
from .streams import Stream

if TYPE_CHECKING:
    from ..network import Network

PERIOD = 0.005            # 200 ticks per second
WINDOW = 100


class WallClock:
    """Durations by perf_counter; the backend is synchronized after learning (GPU work is async)."""

    def __init__(self, backend: Any):
        self.backend = backend

    def __call__(self, kind: str, fn: Callable[[], Any]) -> tuple[Any, float]:
        t = time.perf_counter()
        out = fn()
        if kind == "learn":
            self.backend.synchronize()
        return out, time.perf_counter() - t


@dataclass(frozen=True)
class FixedCosts:
    """Set durations: `answer` per answer, `learn` per per-tick update, `sample` per sample a burst
    trains on (seconds)."""
    answer: float = 1e-4
    learn: float = 1e-4
    sample: float = 1e-4

    def __call__(self, kind: str, fn: Callable[[], Any]) -> tuple[Any, float]:
        out = fn()
        if kind == "answer":
            return out, self.answer
        return out, self.sample * out if out else self.learn


@dataclass
class OnlineResult:
    """One run: the settings, per-tick records, per-window metrics and the summary."""
    mode: str
    stream: str
    ticks: int
    period: float
    deadline: float
    delay: int
    settings: dict
    summary: dict
    windows: list = field(default_factory=list)
    records: dict = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict:
        """Everything but the per-tick records, as plain JSON values."""
        return {"mode": self.mode, "stream": self.stream, "ticks": self.ticks, "period": self.period,
                "deadline": self.deadline, "delay": self.delay, "settings": self.settings,
                "summary": self.summary, "windows": self.windows}


def run(net: Network, stream: Stream, mode: str, settings: dict | None = None, *, period: float = PERIOD,
        deadline: float | None = None, window: int = WINDOW,
        timing: Callable[[str, Callable[[], Any]], tuple[Any, float]] | None = None) -> OnlineResult:
    """Run `stream` through `net` (trained in place) with training mode `mode` (learners.MODES) and
    its settings (merged over learners.DEFAULTS[mode]). `deadline` defaults to `period`."""
    period = number(0, lo_open=True)(period, "online.period")
    deadline = period if deadline is None else number(0, lo_open=True)(deadline, "online.deadline")
    window = configs.positive_int(window, "online.window")
    learner = learners.build(net, mode, settings)
    timing = WallClock(net.backend) if timing is None else timing
    shape = tuple(net.output_spec.shape)
    per_agent = math.prod(shape) // stream.agents
    if per_agent * stream.agents != math.prod(shape) or per_agent < stream.classes:
        raise ConfigError("online.network", f"the network's output {list(shape)} cannot hold {stream.agents} x "
                          f"{stream.classes} class scores for stream {stream.name!r}")
    score = losses.build(learner.settings.get("loss") or learner.settings["tween"]["loss"])
    n = stream.ticks
    rec = {"output": np.zeros(n, bool), "answered": np.zeros(n, bool), "correct": np.zeros(n),
           "latency": np.full(n, np.nan), "work": np.zeros(n), "loss": np.full(n, np.nan)}
    with np.errstate(all="ignore"):       # a diverging learner is reported (diverged_at), not warned about
        _loop(net, stream, learner, timing, score, rec, period, deadline, per_agent)
    summary = metrics.summarize(rec, window, stream.changes)
    summary.update(stream.stats())
    return OnlineResult(mode, stream.name, n, period, deadline, learner.delay, learner.settings, summary,
                        metrics.windows(rec, window), rec)


def _loop(net, stream, learner, timing, score, rec, period, deadline, per_agent) -> None:
    pending: deque = deque(maxlen=learner.delay + 1)     # (tick, shown label, scored label) in flight
    free = 0.0
    for t in range(stream.ticks):
        arrive = t * period
        x, shown, scored = stream.observe(t)
        pending.append((t, shown, scored))
        start = max(arrive, free)
        host, spent = timing("answer", lambda: _answer(learner, x, net))
        done = start + spent
        decision = None
        if host is not None:
            origin, shown_then, scored_then = pending[0]
            scores = host.reshape(stream.agents, per_agent)[:, :stream.classes]
            decision = np.argmax(scores, axis=1)
            rec["output"][t] = True
            rec["answered"][t] = done - arrive <= deadline
            rec["correct"][t] = float(np.mean(decision == np.asarray(scored_then).reshape(-1)))
            rec["latency"][t] = done - origin * period
            rec["loss"][t] = float(score(host[None], _target(scored_then, score, host, stream)[None])[0])
            target = _target(shown_then, score, host, stream)          # bookkeeping: not charged
            _, learn_s = timing("learn", lambda: learner.learn(target))
        else:
            learn_s = 0.0
        stream.act(t, decision if rec["answered"][t] else None)
        rec["work"][t] = spent + learn_s
        free = done + learn_s


def _answer(learner: learners.Learner, x: np.ndarray, net: Network) -> np.ndarray | None:
    out = learner.answer(x)
    return None if out is None else np.asarray(net.backend.to_numpy(out[0]), dtype=np.float64)


def _target(label: np.ndarray, loss: losses.Loss, host: np.ndarray, stream: Stream) -> np.ndarray:
    """What the loss takes for `label`: class ids when the loss reads them and the output is shaped
    [..., classes]; otherwise one-hot rows laid out like the output."""
    label = np.asarray(label)
    if loss.CLASS_IDS and host.shape[-1] == stream.classes and host.size == stream.agents * stream.classes:
        return label.reshape(host.shape[:-1])
    onehot = np.zeros((stream.agents, host.size // stream.agents), dtype=np.float32)
    onehot[np.arange(stream.agents), label.reshape(-1)] = 1
    return onehot.reshape(host.shape)

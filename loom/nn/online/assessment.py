"""The online-learning assessment (`loom bench online`): every network family on every stream with
every training mode over several seeds; a text table, and docs/online.md written from the results
(every number and every conclusion in it is computed here, none is typed in).

Networks take the streams' [6, 8] observations (all end in a dense layer with a score per class
and agent; the grid's multi-agent output is reshaped to [agents, classes]):
  dense      flatten, dense 32 relu, dense
  conv2d     reshape [1, 6, 8], conv2d 8 3x3 same relu, flatten, dense
  rnn        rnn 32 (the six rows as a sequence), dense
  lstm       lstm 32, dense
  attention  multi-head self-attention (2 heads) over the six rows, flatten, dense
"""
from __future__ import annotations

import datetime
import json
import math
import os
import platform
from collections.abc import Callable
from typing import Any

import numpy as np

from ... import mode as run_mode
from ... import version
from ...config import positive_int
from ...errors import ConfigError
from ..network import Network
from . import harness, learners
from .streams import SHAPE, STREAMS
from .streams import build as build_stream

ARCHS = ("dense", "conv2d", "rnn", "lstm", "attention")
_BODIES = {
    "dense": [{"type": "flatten"}, {"type": "dense", "units": 32, "activation": "relu"}],
    "conv2d": [{"type": "reshape", "shape": [1, *SHAPE]},
               {"type": "conv2d", "filters": 8, "kernel_size": 3, "padding": "same", "activation": "relu"},
               {"type": "flatten"}],
    "rnn": [{"type": "rnn", "hidden": 32}],
    "lstm": [{"type": "lstm", "hidden": 32}],
    "attention": [{"type": "multi_head_attention", "heads": 2}, {"type": "flatten"}],
}
METRICS = ("accuracy", "final_accuracy", "availability", "loss", "tick_ms", "latency_ms_p99", "recovery_ticks",
           "dip", "goals_per_1000")


def network_config(arch: str, stream: str, seed: int) -> dict:
    """The config of network family `arch` for `stream`'s classes and agents."""
    if arch not in _BODIES:
        raise ConfigError("online.arch", f"unknown network {arch!r}; expected one of {', '.join(ARCHS)}")
    cls = STREAMS[stream]
    head = [{"type": "dense", "units": cls.classes * cls.agents}]
    if cls.agents > 1:
        head.append({"type": "reshape", "shape": [cls.agents, cls.classes]})
    return {"loom": 1, "name": f"online-{arch}", "seed": seed, "input": {"shape": list(SHAPE)},
            "layers": [*_BODIES[arch], *head]}


def _choose(values: Any, known: tuple[str, ...], what: str) -> tuple[str, ...]:
    values = tuple(known if values is None else values)
    for v in values:
        if v not in known:
            raise ConfigError(f"online.{what}", f"unknown {what[:-1]} {v!r}; expected one of {', '.join(known)}")
    return values


def run(archs: Any = None, streams: Any = None, modes: Any = None, seeds: int = 3, ticks: int = 2000,
        device: str = "cpu", period: float = harness.PERIOD,
        progress: Callable[[str], None] | None = None) -> dict:
    """Every (arch, stream, mode, seed); returns {"meta": ..., "runs": [row, ...]} where a row is the
    run's summary with its arch, stream, mode and seed."""
    seeds = positive_int(seeds, "online.seeds")
    archs = _choose(archs, ARCHS, "archs")
    streams = _choose(streams, tuple(STREAMS), "streams")
    modes = _choose(modes, learners.MODES, "modes")
    rows = []
    for stream in streams:
        for arch in archs:
            for mode in modes:
                for seed in range(seeds):
                    net = Network.from_config(network_config(arch, stream, seed))
                    if device != "cpu":
                        net.to(device)
                    result = harness.run(net, build_stream(stream, ticks, seed), mode, period=period)
                    rows.append({"arch": arch, "stream": stream, "mode": mode, "seed": seed, **result.summary})
            if progress:
                last = [r for r in rows if r["arch"] == arch and r["stream"] == stream]
                progress(f"{stream:10s} {arch:9s} " + "  ".join(
                    f"{m} {mean(select(last, mode=m), 'accuracy'):.2f}" for m in modes))
    meta = {"date": datetime.date.today().isoformat(), "loom": version.__version__, "device": device,
            "mode": run_mode.name(), "machine": machine(), "ticks": ticks, "seeds": seeds, "period_ms": period * 1e3,
            "archs": list(archs), "streams": list(streams), "modes": list(modes),
            "settings": {m: learners.settings(m) for m in modes}}
    return {"meta": meta, "runs": rows}


def machine() -> str:
    """The CPU's model name and core count (and nothing else: no host names)."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores, {platform.system()}"


def stats(rows: list[dict], key: str) -> tuple[float, float, int]:
    """(mean, sample std, count) of `key` over rows, leaving out None and non-finite values."""
    values = [r[key] for r in rows if r.get(key) is not None and math.isfinite(r[key])]
    if not values:
        return math.nan, math.nan, 0
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0, len(values)


def mean(rows: list[dict], key: str) -> float:
    """stats()'s mean (NaN when no row has a value)."""
    return stats(rows, key)[0]


def cell(rows: list[dict], key: str, digits: int = 2, scale: float = 1.0) -> str:
    """"mean ± std" of `key` (scaled), with "(k/n)" when only k of the n runs have a value."""
    mean, std, k = stats(rows, key)
    if k == 0:
        return "-"
    text = f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"
    return text if k == len(rows) else f"{text} ({k}/{len(rows)})"


def select(runs: list[dict], **match: Any) -> list[dict]:
    return [r for r in runs if all(r[k] == v for k, v in match.items())]


def table(result: dict, key: str = "accuracy") -> str:
    """A text table of `key` (mean ± std over seeds): one block per stream, a row per network."""
    meta, runs = result["meta"], result["runs"]
    lines = []
    for stream in meta["streams"]:
        lines.append(f"{stream}: {key} (mean ± std over {meta['seeds']} seeds, {meta['ticks']} ticks)")
        head = ["network", *meta["modes"]]
        body = [[arch, *(cell(select(runs, stream=stream, arch=arch, mode=m), key) for m in meta["modes"])]
                for arch in meta["archs"]]
        widths = [max(len(str(r[i])) for r in [head, *body]) for i in range(len(head))]
        for r in [head, *body]:
            lines.append("  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip())
        lines.append("")
    return "\n".join(lines)


def to_json(result: dict) -> str:
    return json.dumps(result, indent=1, allow_nan=False, default=lambda v: None)

"""Activity telemetry: per-layer activation statistics and per-parameter gradient norms, step by step.

    tel = Telemetry(net, every=10)
    for s, (x, y) in enumerate(batches):
        if tel.due(s):
            with tel.step(s):               # hooks on every layer's forward and on net.backward
                train_step(x, y)            # this step's activations and gradient norms are kept
        else:
            train_step(x, y)                # no hooks: nothing recorded, nothing slowed
    tel.to_json("telemetry.json")

`loom.train(..., telemetry=...)` does this for every training step (loom/nn/train.py). For each
watched layer (every layer by default, containers too) and recorded step the first forward's
floating-point output gives mean, std (population), min, max and the fraction of exact zeros
(-0.0 included), over all its elements; after the step's backward each parameter's gradient gives
its L2 norm. The statistics are computed on the arrays' device in float64, with Loom's sums (exact
and order-independent in deterministic mode, so CPU and GPU record the same numbers), and read back
to the host once per step as one small array. Hooks only read the arrays (loom/nn/hooks.py): the
network computes the same bits with and without them.

A step recorded on a GPU runs eagerly: the hooks cannot run inside a replayed CUDA graph, and
loom.train asks its TrainStep for an eager step there (the same bits). Forward passes that a compiled
network (Network.compile) replays as graphs in eval mode are not seen either.

The JSON document (to_dict / to_json) is column-oriented, one list per statistic aligned with
"steps" (null where a layer did not run, or a value was NaN or infinite):

    {"loom_telemetry": 1, "network": "mlp", "every": 10, "stats": ["mean", "std", "min", "max", "zero_fraction"],
     "steps": [0, 10], "epoch": [0, 0], "batch": [0, 10],
     "activations": {"layers.0": {"type": "dense", "count": [96, 96], "mean": [...], "std": [...], ...}},
     "gradients": {"layers.0.weight": [0.52, 0.31], ...}}
"""
from __future__ import annotations

import contextlib
import io
import math
import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import atomic
from .. import backend as backends
from ..backend import Array
from ..errors import ConfigError, FormatError, LoomError
from ..kernels import ops
from . import hooks

if TYPE_CHECKING:
    from .layers import Layer
    from .network import Network

FORMAT = 1
STATS = ("mean", "std", "min", "max", "zero_fraction")


def activation_stats(y: Array) -> Array:
    """float64 [5] on y's device: mean, std (population), min, max and the fraction of exact zeros of
    all of y's elements (sums through loom.kernels.ops: exact in deterministic mode)."""
    xp = _xp(y)
    v = y.reshape(-1).astype(np.float64)
    n = np.float64(v.size)
    mean = ops.sum(v) / n
    d = v - mean
    std = xp.sqrt(ops.sum(d * d) / n)
    zeros = xp.asarray(xp.count_nonzero(y == 0), dtype=np.float64) / n
    return xp.stack([xp.asarray(s, dtype=np.float64) for s in (mean, std, xp.min(v), xp.max(v), zeros)])


def gradient_norm(g: Array) -> Array:
    """The L2 norm of g as a float64 0-d array on its device (sum of squares through ops.sum)."""
    v = g.reshape(-1).astype(np.float64)
    return _xp(g).sqrt(ops.sum(v * v))


def _xp(a):
    return backends.of(a).xp


class Telemetry:
    """Records activation statistics and gradient norms of `net` (see the module docstring).

    every: loom.train records steps 0, every, 2 every, ... (`due`); layers: the dotted paths of the
    layers to watch (default: all, in build order); gradients: record gradient norms (default True).
    Record a step with `with telemetry.step(i):`; the hooks exist only inside that block."""

    def __init__(self, net: Network, every: int = 1, layers: Sequence[str] | None = None, gradients: bool = True):
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise ConfigError("telemetry.every", f"expected a positive integer, got {every!r}")
        if not isinstance(gradients, bool):
            raise ConfigError("telemetry.gradients", f"expected true or false, got {gradients!r}")
        self.net, self.every, self.gradients = net, every, gradients
        self.paths = _watched(net, layers)
        layer = dict(net.root.walk())
        self.types = {p: layer[p].type for p in self.paths}
        self.params = list(net.gradients()) if gradients else []    # frozen parameters have none
        self._rows: list[tuple[int, int | None, int | None, np.ndarray, np.ndarray, list[int | None]]] = []
        self._open: dict[str, Any] | None = None

    def due(self, step: int) -> bool:
        """Whether loom.train records training step `step` (0-based, counted over epochs)."""
        return step % self.every == 0

    @contextlib.contextmanager
    def step(self, index: int | None = None, epoch: int | None = None, batch: int | None = None) -> Iterator[None]:
        """Record the forward and backward passes inside the block as step `index` (default: one past
        the last recorded step): hooks on the network's current layers (so also after net.to()) and
        on net.backward, removed when the block ends. A block that raises records nothing."""
        if self._open is not None:
            raise ConfigError("telemetry", f"step {self._open['index']} is still being recorded")
        if index is None:
            index = self._rows[-1][0] + 1 if self._rows else 0
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise ConfigError("telemetry.step", f"expected a non-negative integer, got {index!r}")
        layer = dict(self.net.root.walk())
        self._open = {"index": index, "acts": {}, "counts": {}, "grads": None}
        try:
            with contextlib.ExitStack() as stack:
                stack.enter_context(hooks.forward_hooks([(p, layer[p]) for p in self.paths], self._forward))
                if self.gradients:
                    stack.enter_context(hooks.after_call(self.net, "backward", self._backward))
                yield
            self._close(epoch, batch)
        finally:
            self._open = None

    def _forward(self, path: str, layer: Layer, x: Array, y: Array) -> None:
        rec = self._open
        if rec is None or path in rec["acts"] or y.dtype.kind != "f" or y.size == 0:
            return      # outside a step, a second forward in the step, integer ids
        rec["acts"][path] = activation_stats(y)
        rec["counts"][path] = int(y.size)

    def _backward(self) -> None:
        rec = self._open
        if rec is not None:
            grads = self.net.gradients()
            rec["grads"] = [gradient_norm(grads[n]) if n in grads else None for n in self.params]

    def _close(self, epoch: int | None, batch: int | None) -> None:
        rec = self._open
        xp = self.net.backend.xp
        parts = [rec["acts"][p] for p in self.paths if p in rec["acts"]]
        norms = [g for g in rec["grads"] or [] if g is not None]
        pieces = parts + ([xp.stack(norms)] if norms else [])
        flat = self.net.backend.to_numpy(xp.concatenate(pieces)) if pieces else np.zeros(0)   # one read
        acts = np.full((len(self.paths), len(STATS)), np.nan)
        counts: list[int | None] = [None] * len(self.paths)
        at = 0
        for i, p in enumerate(self.paths):
            if p in rec["acts"]:
                acts[i] = flat[at:at + len(STATS)]
                counts[i] = rec["counts"][p]
                at += len(STATS)
        grads = np.full(len(self.params), np.nan)
        if rec["grads"] is not None:
            for i, g in enumerate(rec["grads"]):
                if g is not None:
                    grads[i] = flat[at]
                    at += 1
        self._rows.append((rec["index"], epoch, batch, acts, grads, counts))

    # --- results ---
    def __len__(self) -> int:
        return len(self._rows)

    def to_dict(self) -> dict[str, Any]:
        """The recorded steps as the column-oriented JSON document of the module docstring."""
        acts = np.stack([r[3] for r in self._rows]) if self._rows else np.zeros((0, len(self.paths), len(STATS)))
        grads = np.stack([r[4] for r in self._rows]) if self._rows else np.zeros((0, len(self.params)))
        activations = {}
        for i, p in enumerate(self.paths):
            entry: dict[str, Any] = {"type": self.types.get(p), "count": [r[5][i] for r in self._rows]}
            entry.update({s: _floats(acts[:, i, j]) for j, s in enumerate(STATS)})
            activations[p] = entry
        return {"loom_telemetry": FORMAT, "network": self.net.config["name"], "every": self.every,
                "stats": list(STATS), "steps": [r[0] for r in self._rows], "epoch": [r[1] for r in self._rows],
                "batch": [r[2] for r in self._rows], "activations": activations,
                "gradients": {n: _floats(grads[:, i]) for i, n in enumerate(self.params)}}

    def to_json(self, path: str | os.PathLike[str]) -> list[str]:
        """Write to_dict() atomically as compact JSON (NaN and infinities as null); returns where they were."""
        return atomic.write_json(path, self.to_dict(), indent=None)

    def __repr__(self) -> str:
        return (f"Telemetry({self.net.config['name']!r}, layers={len(self.paths)}, every={self.every}, "
                f"steps={len(self._rows)})")


def _floats(column: np.ndarray) -> list[float | None]:
    return [float(v) if math.isfinite(v) else None for v in column.tolist()]


def _watched(net: Network, layers: Sequence[str] | None) -> list[str]:
    """The watched layer paths, in build order; ConfigError naming an unknown one."""
    known = [p for p, _ in net.root.walk() if p]
    if layers is None:
        return known
    if isinstance(layers, str) or not isinstance(layers, Sequence):
        raise ConfigError("telemetry.layers", f"expected a list of layer paths, got {layers!r}")
    for i, p in enumerate(layers):
        if p not in known:
            shown = ", ".join(known[:8]) + (", ..." if len(known) > 8 else "")
            raise ConfigError(f"telemetry.layers[{i}]", f"no layer {p!r} in the network (layers: {shown})")
    wanted = set(layers)
    return [p for p in known if p in wanted]


# --- the JSON document -----------------------------------------------------------------------------

def check(data: Any, where: str = "telemetry") -> dict[str, Any]:
    """`data` if it is a telemetry document (to_dict), else FormatError naming `where` and what is wrong."""
    if not isinstance(data, dict) or data.get("loom_telemetry") != FORMAT:
        raise FormatError(f"{where}: not a Loom telemetry document (no \"loom_telemetry\": {FORMAT})")
    steps = data.get("steps")
    if not isinstance(steps, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in steps):
        raise FormatError(f"{where}: \"steps\" must be a list of step numbers")
    for key in ("activations", "gradients"):
        if not isinstance(data.get(key), dict):
            raise FormatError(f"{where}: \"{key}\" must be an object")
    for name, entry in data["activations"].items():
        if not isinstance(entry, dict):
            raise FormatError(f"{where}: activations[{name!r}] must be an object")
        for stat in STATS:
            _column(entry.get(stat), len(steps), f"{where}: activations[{name!r}].{stat}")
    for name, column in data["gradients"].items():
        _column(column, len(steps), f"{where}: gradients[{name!r}]")
    return data


def _column(values: Any, n: int, where: str) -> None:
    if not isinstance(values, list) or len(values) != n or not all(
            v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in values):
        raise FormatError(f"{where}: expected a list of {n} numbers or nulls (one per step)")


def series(data: dict[str, Any], name: str, stat: str = "mean") -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of one layer's activation statistic, or (stat="norm") one parameter's gradient
    norm, from a telemetry document; null values are NaN. ConfigError for an unknown name or stat."""
    steps = np.asarray(data["steps"], dtype=np.int64)
    if stat == "norm":
        if name not in data["gradients"]:
            raise ConfigError("name", f"no gradient norms recorded for {name!r}")
        column = data["gradients"][name]
    else:
        if stat not in STATS:
            raise ConfigError("stat", f"expected one of {', '.join(STATS)} or norm, got {stat!r}")
        if name not in data["activations"]:
            raise ConfigError("name", f"no activations recorded for layer {name!r}")
        column = data["activations"][name][stat]
    return steps, np.array([math.nan if v is None else v for v in column], dtype=np.float64)


def from_setting(net: Network, spec: Any) -> tuple[Telemetry | None, str | None]:
    """loom.train's `telemetry` argument as (recorder, path to write after every epoch): None or False
    (off); True (every step); a positive integer N (every N steps); a path (every step, written
    there); {"every", "layers", "gradients", "path"}; or a Telemetry of this network."""
    if spec is None or spec is False:
        return None, None
    if isinstance(spec, Telemetry):
        if spec.net is not net:
            raise ConfigError("telemetry", "this Telemetry records another network")
        return spec, None
    if spec is True:
        return Telemetry(net), None
    if isinstance(spec, int) and not isinstance(spec, bool):
        return Telemetry(net, every=spec), None
    if isinstance(spec, (str, os.PathLike)):
        return Telemetry(net), os.fspath(spec)
    if not isinstance(spec, dict):
        raise ConfigError("telemetry", f"expected true, a step interval, a path, an object or a Telemetry, "
                                       f"got {spec!r}")
    unknown = sorted(set(spec) - {"every", "layers", "gradients", "path"})
    if unknown:
        raise ConfigError(f"telemetry.{unknown[0]}", "unknown key; expected every, layers, gradients, path")
    path = spec.get("path")
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise ConfigError("telemetry.path", f"expected a file path, got {path!r}")
    tel = Telemetry(net, every=spec.get("every", 1), layers=spec.get("layers"), gradients=spec.get("gradients", True))
    return tel, None if path is None else os.fspath(path)


# --- the optional picture (the `plot` extra) ---------------------------------------------------------

PANELS = (("mean", "activation mean"), ("std", "activation std"), ("zero_fraction", "fraction of zeros"),
          ("norm", "gradient L2 norm"))


def plot(data: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Activity over time as a PNG: activation mean, std and fraction of zeros of every recorded layer
    and each parameter's gradient norm (log scale), against the step. `data` is a telemetry document
    (Telemetry.to_dict, or its JSON loaded); needs the `plot` extra (matplotlib); written atomically."""
    data = check(data)
    if not data["steps"]:
        raise FormatError("telemetry: no recorded steps to plot")
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise LoomError("plotting telemetry needs matplotlib: pip install 'loom[plot]'") from e
    panels = [(stat, title) for stat, title in PANELS if stat != "norm" or data["gradients"]]
    fig = Figure(figsize=(6.5, 2.6 * len(panels)), dpi=100)
    FigureCanvasAgg(fig)
    for i, (stat, title) in enumerate(panels):
        ax = fig.add_subplot(len(panels), 1, i + 1)
        names = data["gradients"] if stat == "norm" else data["activations"]
        for name in names:
            steps, values = series(data, name, stat)
            ax.plot(steps, values, linewidth=1, label=name)
        if stat == "norm":
            ax.set_yscale("symlog", linthresh=1e-8)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        if len(names) <= 20:
            ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    atomic.write_bytes(path, buf.getvalue())

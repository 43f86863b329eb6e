"""Learning-rate schedules: pure functions of the update index, built from JSON specs.

`build(spec)(step)` is the learning rate of update `step` (0-based). A schedule keeps no state, so
`s(500)` is the same whether or not `s(0..499)` were called first, and resuming training needs only
the step count. Each type follows the closed form of its torch.optim.lr_scheduler counterpart
(torch computes most of them recursively; the two agree to rounding). Every schedule round-trips
through `config`. Errors are ConfigErrors naming the JSON path ("schedule.steps: ...").

Scalar math runs on the host in float64: + - * / and sqrt are correctly rounded everywhere; integer
powers use repeated squaring (the same bits on every machine); `cos` and fractional powers come from
the platform's libm, whose last bit may differ between C libraries.
"""
from __future__ import annotations

import copy
import math
import operator
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from .. import config as configs
from ..config import REQUIRED, nonneg_int, number, one_of, optional, positive_int
from ..errors import ConfigError

RATE = number(0)                       # a learning rate: finite, >= 0


def power(base: float, n: int) -> float:
    """base ** n for an integer n >= 0 by repeated squaring: IEEE multiplies only, so every
    machine gets the same bits (libm's pow may differ in the last bit between C libraries)."""
    result = 1.0
    while n:
        if n & 1:
            result *= base
        base *= base
        n >>= 1
    return result


class Schedule(ABC):
    """Base class: a validated config and `__call__(step) -> float`."""
    type: str = ""
    KEYS: dict[str, tuple[Callable, Any]] = {}

    def __init__(self, cfg: dict, path: str):
        self._cfg = cfg
        self._check(path)

    def _check(self, path: str) -> None:
        """Rules across keys; subclasses override."""

    @property
    def config(self) -> dict:
        return copy.deepcopy(self._cfg)

    def __call__(self, step: int) -> float:
        return float(self.at(_step(step)))

    @abstractmethod
    def at(self, t: int) -> float:
        """The learning rate at update index t."""

    def __repr__(self) -> str:
        keys = ", ".join(f"{k}={v!r}" for k, v in self._cfg.items() if k != "type")
        return f"Schedule({self.type}: {keys})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Schedule) and other._cfg == self._cfg

    __hash__ = None


def _step(step) -> int:
    try:
        if isinstance(step, bool):
            raise TypeError
        t = operator.index(step)
    except TypeError:
        raise ConfigError("step", f"expected a non-negative integer, got {step!r}") from None
    return nonneg_int(t, "step")


class Constant(Schedule):
    """lr at every step."""
    type = "constant"
    KEYS = {"lr": (RATE, REQUIRED)}

    def at(self, t: int) -> float:
        return self._cfg["lr"]


class Linear(Schedule):
    """lr + (end_lr - lr) * t / steps for t < steps, then end_lr (torch LinearLR with
    start_factor 1 and end_factor end_lr / lr)."""
    type = "linear"
    KEYS = {"lr": (RATE, REQUIRED), "steps": (positive_int, REQUIRED), "end_lr": (RATE, 0.0)}

    def at(self, t: int) -> float:
        c = self._cfg
        if t >= c["steps"]:
            return c["end_lr"]
        return c["lr"] + (c["end_lr"] - c["lr"]) * t / c["steps"]


def _restarts(v, path):
    return configs._record({"period": (positive_int, REQUIRED), "mult": (positive_int, 1)},
                           "cosine restarts")(v, path)


class Cosine(Schedule):
    """min_lr + (lr - min_lr) * (1 + cos(pi * t / steps)) / 2 for t < steps, then min_lr
    (torch CosineAnnealingLR, held at the bottom instead of rising again). With restarts
    {period P, mult m}: the cosine restarts from lr after P steps, then after m*P, m*m*P, ...
    (torch CosineAnnealingWarmRestarts with T_0=P, T_mult=m); steps is then left out (null)."""
    type = "cosine"
    KEYS = {"lr": (RATE, REQUIRED), "steps": (optional(positive_int), None), "min_lr": (RATE, 0.0),
            "restarts": (optional(_restarts), None)}

    def _check(self, path):
        c = self._cfg
        if c["restarts"] is None and c["steps"] is None:
            raise ConfigError(f"{path}.steps", "missing required key for schedule type cosine "
                              "(or give restarts {period, mult})")
        if c["restarts"] is not None and c["steps"] is not None:
            raise ConfigError(f"{path}.steps", "cosine with restarts takes its cycle lengths from "
                              "restarts.period and restarts.mult; leave steps out")

    def at(self, t: int) -> float:
        c = self._cfg
        if c["restarts"] is None:
            cur, length = t, c["steps"]
            if cur >= length:
                return c["min_lr"]
        else:
            length, mult = c["restarts"]["period"], c["restarts"]["mult"]
            if mult == 1:
                cur = t % length
            else:
                cur = t
                while cur >= length:     # cycles grow geometrically: O(log t) iterations
                    cur -= length
                    length *= mult
        return c["min_lr"] + (c["lr"] - c["min_lr"]) * (1 + math.cos(math.pi * cur / length)) / 2


class Exponential(Schedule):
    """lr * gamma**t (torch ExponentialLR)."""
    type = "exponential"
    KEYS = {"lr": (RATE, REQUIRED), "gamma": (number(0, lo_open=True), REQUIRED)}

    def at(self, t: int) -> float:
        return self._cfg["lr"] * power(self._cfg["gamma"], t)


class Step(Schedule):
    """lr * gamma**(t // step_size) (torch StepLR)."""
    type = "step"
    KEYS = {"lr": (RATE, REQUIRED), "step_size": (positive_int, REQUIRED),
            "gamma": (number(0, lo_open=True), 0.1)}

    def at(self, t: int) -> float:
        c = self._cfg
        return c["lr"] * power(c["gamma"], t // c["step_size"])


class Polynomial(Schedule):
    """(lr - end_lr) * (1 - t / steps)**power + end_lr for t < steps, then end_lr
    (torch PolynomialLR when end_lr is 0)."""
    type = "polynomial"
    KEYS = {"lr": (RATE, REQUIRED), "steps": (positive_int, REQUIRED),
            "power": (number(0, lo_open=True), 1.0), "end_lr": (RATE, 0.0)}

    def at(self, t: int) -> float:
        c = self._cfg
        if t >= c["steps"]:
            return c["end_lr"]
        return (c["lr"] - c["end_lr"]) * (1.0 - t / c["steps"]) ** c["power"] + c["end_lr"]


def _spec(v, path):
    return parse(v, path)


class Warmup(Schedule):
    """Linear warmup into another schedule `after`: for t < steps,
    after(0) * (start_factor + (1 - start_factor) * t / steps); then after(t - steps)."""
    type = "warmup"
    KEYS = {"steps": (positive_int, REQUIRED), "start_factor": (number(0, 1), 0.0),
            "after": (_spec, REQUIRED)}

    def __init__(self, cfg: dict, path: str):
        super().__init__(cfg, path)
        self.after = _build_checked(cfg["after"], f"{path}.after")

    def at(self, t: int) -> float:
        c = self._cfg
        if t >= c["steps"]:
            return self.after.at(t - c["steps"])
        return self.after.at(0) * (c["start_factor"] + (1.0 - c["start_factor"]) * t / c["steps"])


class OneCycle(Schedule):
    """torch OneCycleLR's learning rate (two phases): from max_lr / div_factor up to max_lr over the
    first pct_start * total_steps - 1 steps, then down to max_lr / div_factor / final_div_factor
    at step total_steps - 1 (held there afterwards); anneal "cos" or "linear"."""
    type = "one_cycle"
    KEYS = {"max_lr": (RATE, REQUIRED), "total_steps": (positive_int, REQUIRED),
            "pct_start": (number(0, 1, lo_open=True, hi_open=True), 0.3),
            "div_factor": (number(0, lo_open=True), 25.0),
            "final_div_factor": (number(0, lo_open=True), 1e4),
            "anneal": (one_of("cos", "linear"), "cos")}

    def _check(self, path):
        c = self._cfg
        up = c["pct_start"] * c["total_steps"] - 1
        if up <= 0 or up >= c["total_steps"] - 1:
            raise ConfigError(f"{path}.pct_start", f"pct_start * total_steps - 1 must lie strictly "
                              f"between 0 and total_steps - 1 = {c['total_steps'] - 1} (each phase needs "
                              f"a length), got {up:g}")

    def at(self, t: int) -> float:
        c = self._cfg
        peak = c["max_lr"]
        start = peak / c["div_factor"]
        bottom = start / c["final_div_factor"]
        up_end = c["pct_start"] * c["total_steps"] - 1
        last = c["total_steps"] - 1
        if t <= up_end:
            a, b, pct = start, peak, t / up_end
        else:
            a, b, pct = peak, bottom, (min(t, last) - up_end) / (last - up_end)
        if c["anneal"] == "linear":
            return (b - a) * pct + a
        return b + (a - b) / 2.0 * (math.cos(math.pi * pct) + 1)


TYPES: dict[str, type[Schedule]] = {cls.type: cls for cls in
                                    (Constant, Linear, Cosine, Exponential, Step, Polynomial, Warmup, OneCycle)}


def parse(spec: Any, path: str = "schedule", default_lr: float | None = None) -> dict:
    """Validate a schedule spec and return its canonical config. `default_lr` (given by an optimizer
    for its embedded schedule) fills a missing "lr" ("max_lr" for one_cycle, the innermost for warmup)."""
    return _build_checked(spec, path, default_lr).config


def _build_checked(spec, path, default_lr=None) -> Schedule:
    if isinstance(spec, Schedule):
        spec = spec.config
    spec, kind = configs.resolve_type(spec, path, TYPES, "schedule")
    cls = TYPES[kind]
    rest = {k: v for k, v in spec.items() if k != "type"}
    if default_lr is not None:
        if kind == "warmup" and isinstance(rest.get("after"), (dict, str)):
            after = {"type": rest["after"]} if isinstance(rest["after"], str) else rest["after"]
            rest["after"] = _build_checked(after, f"{path}.after", default_lr).config
        elif kind == "one_cycle":
            rest.setdefault("max_lr", default_lr)
        elif kind != "warmup":
            rest.setdefault("lr", default_lr)
    cfg = {"type": kind, **configs._apply_schema(rest, cls.KEYS, path, f"schedule type {kind}")}
    return cls(cfg, path)


def build(spec: Any, path: str = "schedule", default_lr: float | None = None) -> Schedule:
    """A Schedule from a spec dict (or a Schedule, returned as is)."""
    if isinstance(spec, Schedule):
        return spec
    return _build_checked(spec, path, default_lr)


__all__ = ["Schedule", "TYPES", "build", "parse", "power"]

"""Optimizers: torch.optim's update rules on a network's live parameter arrays, built from JSON specs.

    opt = optim.build({"type": "adam", "lr": 1e-3}, net.parameters())
    opt.step(net.gradients())          # updates the parameters in place

Each type reproduces its torch.optim counterpart (single-tensor path, same defaults, same order of
operations), Lion follows its paper / lion-pytorch. On top of the rule: parameter groups chosen by
glob patterns over parameter names, `no_decay` patterns, gradient clipping by global norm or by
value, gradient accumulation over k calls, and an optional schedule. Gradients passed to `step` are
never modified. `state_dict()` is flat (arrays and Python scalars) and restores exactly.
Parameters frozen in the network (Network.freeze; net.parameters() lists them in `.frozen`) are
left out entirely: no state, no update, no decay, not in the clipping norm.
Spec errors are ConfigErrors at "optimizer.<key>"; gradient mismatches are ShapeErrors.
"""
from __future__ import annotations

import contextlib
import copy
import math
import operator
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from fnmatch import fnmatchcase
from typing import Any

import numpy as np

from .. import backend as backends
from .. import config as configs
from ..backend import Array
from ..config import REQUIRED, boolean, list_of, number, optional, positive_int, string
from ..errors import ConfigError, ShapeError
from ..kernels import fused, ops
from . import schedules
from .schedules import Schedule, power

PATH = "optimizer"
RATE = number(0)
NONNEG = number(0)
CLIP_EPS = 1e-6          # torch.nn.utils.clip_grad_norm_ adds this to the norm
_UNSET = object()        # a group key that was not overridden


def _betas(v, path):
    betas = list_of(number(0, 1, hi_open=True))(v, path)
    if len(betas) != 2:
        raise ConfigError(path, f"expected [beta1, beta2], got {configs._describe(v)}")
    return betas


class Optimizer(ABC):
    """Base class. A subclass names its hyperparameters (HYPER: key -> (check, default); "lr" and
    "weight_decay" always among them), the state slots a parameter needs, and the update of one
    parameter; the base class does groups, clipping, accumulation, schedules and state."""
    type: str = ""
    HYPER: dict[str, tuple[Callable, Any]] = {}

    @abstractmethod
    def slots(self, hp: dict) -> dict[str, float]:
        """State arrays this parameter needs: slot name -> initial fill value."""

    @abstractmethod
    def update(self, p: Array, g: Array, state: dict, hp: dict, s: dict) -> None:
        """Apply one update to p in place, with this step's values `s` from scalars() (Python floats,
        or 0-d arrays of p's dtype on p's device inside a recorded step). g must not be written to."""

    def check(self, hp: dict, path: str) -> None:
        """Rules across hyperparameters of one group (path names the group)."""

    # --- construction ---
    def __init__(self, spec: dict, params: dict):
        if not isinstance(params, dict):
            raise ShapeError(f"parameters must be a dict of name -> array (net.parameters()), "
                             f"got {type(params).__name__}")
        for name, p in params.items():
            if getattr(p, "dtype", None) is None or np.dtype(p.dtype).kind != "f":
                raise ShapeError(f"parameter {name} must be a floating-point array, got {type(p).__name__} "
                                 f"{getattr(p, 'dtype', '')}")
        # names frozen in the network (net.parameters().frozen): no state, never updated; patterns
        # may still name them, so a spec stays valid whatever is frozen
        self._frozen = frozenset(getattr(params, "frozen", ())) & set(params)
        self._names = list(params)
        self._params = {name: p for name, p in params.items() if name not in self._frozen}
        schema = {"lr": self.HYPER["lr"], **self.HYPER,
                  "groups": (list_of(self._group_check), []),
                  "no_decay": (list_of(string), []),
                  "clip_norm": (optional(number(0, lo_open=True)), None),
                  "clip_value": (optional(number(0, lo_open=True)), None),
                  "accumulate": (positive_int, 1),
                  "schedule": (lambda v, p: v, None)}
        rest = {k: v for k, v in spec.items() if k != "type"}
        cfg = {"type": self.type, **configs._apply_schema(rest, schema, PATH, f"optimizer type {self.type}")}
        if cfg["schedule"] is not None:
            cfg["schedule"] = schedules.parse(cfg["schedule"], f"{PATH}.schedule", default_lr=cfg["lr"])
        self._cfg = cfg
        self._lr0 = cfg["lr"]
        self._lr = cfg["lr"]
        self._schedule = None if cfg["schedule"] is None else schedules.build(cfg["schedule"])
        self._hp, self._own_lr = self._resolve(cfg)
        self._state = {name: {slot: backends.of(p).xp.full_like(p, fill) for slot, fill in self.slots(hp).items()}
                       for (name, p), hp in zip(self._params.items(), self._hp.values())}
        k = cfg["accumulate"]
        self._accum = {name: backends.of(p).xp.zeros_like(p) for name, p in self._params.items()} if k > 1 else {}
        self._count = 0      # gradients in the accumulation buffer
        self._steps = 0      # updates applied

    def _group_check(self, v, path):
        keys = {"params": (list_of(string, min_len=1), REQUIRED),
                **{k: (check, _UNSET) for k, (check, _) in self.HYPER.items()}}
        if not isinstance(v, dict):
            raise ConfigError(path, f"expected an object (a parameter group), got {configs._describe(v)}")
        out = configs._apply_schema(v, keys, path, f"a parameter group of {self.type}")
        return {k: val for k, val in out.items() if val is not _UNSET}

    def _resolve(self, cfg):
        """Each parameter's hyperparameters: the first group whose pattern matches, else the top level;
        no_decay patterns then set weight_decay to 0."""
        top = {k: cfg[k] for k in self.HYPER}
        self.check(top, PATH)
        merged = []
        for i, group in enumerate(cfg["groups"]):
            hp = {**top, **{k: v for k, v in group.items() if k != "params"}}
            self.check(hp, f"{PATH}.groups[{i}]")
            if "lr" in group and self._lr0 == 0:
                raise ConfigError(f"{PATH}.lr", "must be positive when a group sets its own lr "
                                  "(a group's lr scales with the base lr)")
            merged.append(hp)
        patterns = [(f"{PATH}.groups[{i}].params[{j}]", pat) for i, g in enumerate(cfg["groups"])
                    for j, pat in enumerate(g["params"])]
        patterns += [(f"{PATH}.no_decay[{j}]", pat) for j, pat in enumerate(cfg["no_decay"])]
        for path, pat in patterns:
            if not any(fnmatchcase(name, pat) for name in self._names):
                example = next(iter(self._names), "layers.0.bias")
                raise ConfigError(path, f"pattern {pat!r} matches no parameter name (names look like "
                                  f"{example!r}; patterns are globs such as '*.bias')")
        hps, own_lr = {}, {}
        for name in self._params:
            index = next((i for i, g in enumerate(cfg["groups"])
                          if any(fnmatchcase(name, pat) for pat in g["params"])), None)
            hp = dict(top if index is None else merged[index])
            if any(fnmatchcase(name, pat) for pat in cfg["no_decay"]):
                hp["weight_decay"] = 0.0
            hps[name] = hp
            own_lr[name] = index is not None and "lr" in cfg["groups"][index]
        return hps, own_lr

    # --- public state ---
    @property
    def config(self) -> dict:
        cfg = copy.deepcopy(self._cfg)
        cfg["schedule"] = None if self._schedule is None else self._schedule.config
        return cfg

    @property
    def steps(self) -> int:
        return self._steps

    @property
    def lr(self) -> float:
        """The base lr the next update uses: schedule(steps) when a schedule is set."""
        return self._schedule(self._steps) if self._schedule is not None else self._lr

    @lr.setter
    def lr(self, value: float) -> None:
        if self._schedule is not None:
            raise ConfigError(f"{PATH}.lr", "the lr follows the schedule; set opt.schedule = None first")
        self._lr = RATE(value, f"{PATH}.lr")

    @property
    def schedule(self) -> Schedule | None:
        return self._schedule

    @schedule.setter
    def schedule(self, spec: Schedule | dict | str | None) -> None:
        self._schedule = None if spec is None else schedules.build(spec, f"{PATH}.schedule", default_lr=self._lr)

    def hyperparameters(self, name: str) -> dict:
        """The resolved hyperparameters of one parameter (after groups and no_decay)."""
        return copy.deepcopy(self._hp[name])

    def __repr__(self) -> str:
        return f"Optimizer({self.type}, lr={self.lr:g}, params={len(self._params)}, steps={self._steps})"

    # --- stepping ---
    def step(self, grads: dict, scalars: dict | None = None) -> bool:
        """Feed one set of gradients; returns True when an update was applied (every accumulate-th call).
        `scalars` replaces plan() (a recorded graph passes the same values as device arrays)."""
        self._check_grads(grads)
        k = self._cfg["accumulate"]
        if k > 1:
            for name, buf in self._accum.items():
                if self._count == 0:
                    buf[...] = grads[name]
                else:
                    buf += grads[name]
            self._count += 1
            if self._count < k:
                return False
            grads = {name: buf / k for name, buf in self._accum.items()}
            for buf in self._accum.values():
                buf[...] = 0
            self._count = 0
        grads = self._clip(grads)
        plan = self.plan() if scalars is None else scalars
        for name, p in self._params.items():
            self.update(p, grads[name], self._state[name], self._hp[name], plan[name])
        self._steps += 1
        return True

    def plan(self) -> dict:
        """The host values the next update uses, per parameter: {name: {key: float or bool}}. Floats
        (learning rates, bias corrections) change from step to step; a recorded train step reads
        them from device memory. Bools are control flow (the first step) and belong to phase()."""
        base = self.lr
        # A group's own lr keeps its ratio to the base lr (as torch schedulers scale every group);
        # unscaled while the base is unchanged, so group rates are used exactly as written.
        scale = None if base == self._lr0 or not self._lr0 else base / self._lr0   # _lr0 > 0 if any group has an lr
        t = self._steps + 1
        out = {}
        for name in self._params:
            hp = self._hp[name]
            lr = base if not self._own_lr[name] else hp["lr"] if scale is None else hp["lr"] * scale
            out[name] = self.scalars(hp, lr, t)
        return out

    def plan_values(self, plan: dict) -> list[tuple[np.dtype, float]]:
        """The float entries of plan() as (dtype of their parameter, value), in plan order: what a
        recorded step reads from device memory and has refreshed before each launch."""
        return [(np.dtype(self._params[name].dtype), v) for name, vals in plan.items()
                for v in vals.values() if isinstance(v, float)]

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        """While a step is recorded rather than taken: the step and accumulation counters the
        recording advanced are put back (advance() counts each replay)."""
        saved = self._steps, self._count
        try:
            yield
        finally:
            self._steps, self._count = saved

    def advance(self) -> None:
        """The host bookkeeping of one step() whose device work ran elsewhere (a replayed graph)."""
        k = self._cfg["accumulate"]
        if k > 1:
            self._count += 1
            if self._count < k:
                return
            self._count = 0
        self._steps += 1

    def phase(self) -> tuple:
        """What decides which device work the next step() does (besides shapes): the position in the
        accumulation cycle and whether this is the first update."""
        return self._count, self._steps == 0

    def scalars(self, hp: dict, lr: float, t: int) -> dict:
        """This rule's per-step host values for one parameter (default: the learning rate)."""
        return {"lr": float(lr)}

    def _check_grads(self, grads) -> None:
        if not isinstance(grads, dict):
            raise ShapeError(f"gradients must be a dict of name -> array (net.gradients()), got {type(grads).__name__}")
        unknown = [n for n in grads if n not in self._params]
        if unknown and unknown[0] in self._frozen:
            raise ShapeError(f"gradient for parameter {unknown[0]}, which was frozen when the optimizer was built "
                             "(after net.unfreeze, build a new optimizer over net.parameters())")
        if unknown:
            raise ShapeError(f"gradient for unknown parameter {unknown[0]} (the optimizer holds {len(self._params)} "
                             f"parameters: {', '.join(list(self._params)[:4])}{', ...' if len(self._params) > 4 else ''})")
        for name, p in self._params.items():
            if name not in grads:
                raise ShapeError(f"gradient for parameter {name} is missing (frozen after the optimizer was built? "
                                 "after net.freeze, build a new optimizer over net.parameters())")
            g = grads[name]
            shape = getattr(g, "shape", None)
            if shape is None or tuple(shape) != tuple(p.shape):
                got = list(shape) if shape is not None else type(g).__name__
                raise ShapeError(f"gradient {name} has shape {got}, expected {list(p.shape)}")
            if g.dtype != p.dtype:
                raise ShapeError(f"gradient {name} has dtype {g.dtype}, expected {p.dtype}")

    def _clip(self, grads: dict) -> dict:
        """clip_value (clamp to [-v, v]) then clip_norm (scale by min(1, c / (norm + 1e-6))), as new arrays.

        The norm stays on the device (no synchronization, so a train step can be recorded): the
        per-tensor sums of squares are added in float64 in parameter order, as Python's sum() of
        their float() values would, and the coefficient is applied as min(coef, 1), which leaves
        the gradients unchanged bit for bit when no clipping is needed."""
        v, c = self._cfg["clip_value"], self._cfg["clip_norm"]
        if v is not None:
            grads = {n: backends.of(g).xp.clip(g, -v, v) for n, g in grads.items()}
        if c is not None and grads:
            xp = backends.of(next(iter(grads.values()))).xp
            total = xp.zeros((), dtype=np.float64)
            for g in grads.values():
                total = total + ops.sum(g * g).astype(np.float64)
            coef = xp.minimum(c / (xp.sqrt(total) + CLIP_EPS), 1.0)
            grads = {n: g * coef.astype(g.dtype) for n, g in grads.items()}
        return grads

    # --- saving ---
    def _state_arrays(self):
        for name, buf in self._accum.items():
            yield f"accumulate.{name}", buf
        for name, slots in self._state.items():
            for slot, arr in slots.items():
                yield f"state.{name}.{slot}", arr

    def state_dict(self) -> dict:
        """Flat copy: "step", "lr", ("accumulate.count", "accumulate.<param>"), "state.<param>.<slot>"."""
        out: dict[str, Any] = {"step": self._steps, "lr": self._lr}
        if self._accum:
            out["accumulate.count"] = self._count
        for key, arr in self._state_arrays():
            out[key] = np.array(backends.of(arr).to_numpy(arr), copy=True)
        return out

    def load_state_dict(self, state: dict) -> None:
        """Restore exactly what state_dict() returned (all checks happen before anything changes)."""
        arrays = dict(self._state_arrays())
        expected = {"step", "lr", *(("accumulate.count",) if self._accum else ()), *arrays}
        unknown, missing = sorted(set(state) - expected), sorted(expected - set(state))
        if unknown or missing:
            raise ShapeError(f"optimizer state mismatch: unexpected {unknown}, missing {missing}")
        steps = _int_value(state["step"], "step", 0)
        count = _int_value(state["accumulate.count"], "accumulate.count", 0, self._cfg["accumulate"] - 1) \
            if self._accum else 0
        lr = _scalar(state["lr"])
        try:
            lr = RATE(lr, "lr")
        except ConfigError as exc:
            raise ShapeError(f"optimizer state lr: {exc.reason}") from None
        for key, dst in arrays.items():
            src = state[key]
            shape, dtype = getattr(src, "shape", None), getattr(src, "dtype", None)
            if shape is None or tuple(shape) != tuple(dst.shape) or dtype != dst.dtype:
                raise ShapeError(f"optimizer state {key}: got {_what(src)}, expected {dst.dtype} {list(dst.shape)}")
        for key, dst in arrays.items():
            src = state[key]
            dst[...] = backends.of(dst).asarray(src)
        self._steps, self._count, self._lr = steps, count, lr


def _scalar(v):
    return v.item() if getattr(v, "shape", None) == () and hasattr(v, "item") else v


def _int_value(v, key, lo, hi=None):
    v = _scalar(v)
    try:
        n = operator.index(v)
    except TypeError:
        n = None
    if n is None or isinstance(v, bool) or n < lo or (hi is not None and n > hi):
        raise ShapeError(f"optimizer state {key}: expected an integer in [{lo}, {'inf' if hi is None else hi}], got {v!r}")
    return n


def _what(v):
    shape = getattr(v, "shape", None)
    return f"{getattr(v, 'dtype', type(v).__name__)} {list(shape)}" if shape is not None else repr(v)


# --- the update rules ------------------------------------------------------------------------------

class SGD(Optimizer):
    """torch.optim.SGD: g += wd p; buf = g (first) or m buf + (1 - dampening) g;
    g = g + m buf (nesterov) or buf; p -= lr g."""
    type = "sgd"
    HYPER = {"lr": (RATE, 1e-3), "momentum": (NONNEG, 0.0), "dampening": (number(0, 1), 0.0),
             "nesterov": (boolean, False), "weight_decay": (NONNEG, 0.0)}

    def check(self, hp: dict, path: str) -> None:
        if hp["nesterov"] and (hp["momentum"] <= 0 or hp["dampening"] != 0):
            raise ConfigError(f"{path}.nesterov", f"nesterov needs momentum > 0 and dampening 0, got momentum "
                              f"{hp['momentum']:g} and dampening {hp['dampening']:g}")

    def slots(self, hp: dict) -> dict[str, float]:
        return {"momentum_buffer": 0.0} if hp["momentum"] != 0 else {}

    def scalars(self, hp: dict, lr: float, t: int) -> dict:
        return {"lr": float(lr), "first": t == 1}

    def update(self, p: Array, g: Array, state: dict, hp: dict, s: dict) -> None:
        fused.sgd_update(p, g, state.get("momentum_buffer"), s["lr"], hp["momentum"], hp["dampening"],
                         hp["nesterov"], hp["weight_decay"], s["first"])


class Adam(Optimizer):
    """torch.optim.Adam: g += wd p (L2); m = lerp(m, g, 1 - b1); v = b2 v + (1 - b2) g g;
    p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps), v -> max over time with amsgrad."""
    type = "adam"
    DECOUPLED = False
    HYPER = {"lr": (RATE, 1e-3), "betas": (_betas, [0.9, 0.999]), "eps": (NONNEG, 1e-8),
             "weight_decay": (NONNEG, 0.0), "amsgrad": (boolean, False)}

    def slots(self, hp: dict) -> dict[str, float]:
        return {"exp_avg": 0.0, "exp_avg_sq": 0.0, **({"max_exp_avg_sq": 0.0} if hp["amsgrad"] else {})}

    def scalars(self, hp: dict, lr: float, t: int) -> dict:
        b1, b2 = hp["betas"]
        return {"decay": 1 - lr * hp["weight_decay"], "step_size": lr / (1 - power(b1, t)),
                "bc2_sqrt": math.sqrt(1 - power(b2, t))}

    def update(self, p: Array, g: Array, state: dict, hp: dict, s: dict) -> None:
        b1, b2 = hp["betas"]
        wd = hp["weight_decay"]
        fused.adam_update(p, g, state["exp_avg"], state["exp_avg_sq"], state.get("max_exp_avg_sq"),
                          s["step_size"], s["bc2_sqrt"], b1, b2, hp["eps"], 0.0 if self.DECOUPLED else wd,
                          s["decay"] if self.DECOUPLED and wd != 0 else None)


class AdamW(Adam):
    """torch.optim.AdamW: Adam with decoupled decay p *= 1 - lr wd before the update."""
    type = "adamw"
    DECOUPLED = True
    HYPER = {**Adam.HYPER, "weight_decay": (NONNEG, 1e-2)}


class RMSprop(Optimizer):
    """torch.optim.RMSprop: g += wd p; s = alpha s + (1 - alpha) g g; avg = sqrt(s - gavg^2) (centered,
    gavg = lerp(gavg, g, 1 - alpha)) or sqrt(s); avg += eps; buf = m buf + g / avg, p -= lr buf
    (momentum > 0) or p -= lr g / avg."""
    type = "rmsprop"
    HYPER = {"lr": (RATE, 1e-2), "alpha": (number(0, 1), 0.99), "eps": (NONNEG, 1e-8),
             "weight_decay": (NONNEG, 0.0), "momentum": (NONNEG, 0.0), "centered": (boolean, False)}

    def slots(self, hp: dict) -> dict[str, float]:
        return {"square_avg": 0.0, **({"momentum_buffer": 0.0} if hp["momentum"] > 0 else {}),
                **({"grad_avg": 0.0} if hp["centered"] else {})}

    def update(self, p: Array, g: Array, state: dict, hp: dict, s: dict) -> None:
        lr = s["lr"]
        alpha = hp["alpha"]
        if hp["weight_decay"] != 0:
            g = g + hp["weight_decay"] * p
        sq = state["square_avg"]
        sq *= alpha
        sq += (1 - alpha) * g * g
        if hp["centered"]:
            ga = state["grad_avg"]
            fused.lerp(ga, g, 1 - alpha)
            avg = ops.sqrt(sq - ga * ga)
        else:
            avg = ops.sqrt(sq)
        avg = avg + hp["eps"]
        if hp["momentum"] > 0:
            buf = state["momentum_buffer"]
            buf *= hp["momentum"]
            buf += g / avg
            p -= lr * buf
        else:
            p += (-lr * g) / avg


class Adagrad(Optimizer):
    """torch.optim.Adagrad: g += wd p; sum += g g; p -= lr / (1 + (t - 1) lr_decay) * g / (sqrt(sum) + eps)."""
    type = "adagrad"
    HYPER = {"lr": (RATE, 1e-2), "lr_decay": (NONNEG, 0.0), "weight_decay": (NONNEG, 0.0),
             "initial_accumulator_value": (NONNEG, 0.0), "eps": (NONNEG, 1e-10)}

    def slots(self, hp: dict) -> dict[str, float]:
        return {"sum": hp["initial_accumulator_value"]}

    def scalars(self, hp: dict, lr: float, t: int) -> dict:
        return {"clr": lr / (1 + (t - 1) * hp["lr_decay"])}

    def update(self, p: Array, g: Array, state: dict, hp: dict, s: dict) -> None:
        if hp["weight_decay"] != 0:
            g = g + hp["weight_decay"] * p
        total = state["sum"]
        total += g * g
        p += (-s["clr"] * g) / (ops.sqrt(total) + hp["eps"])


class Lion(Optimizer):
    """Lion (Chen et al. 2023, as lion-pytorch): p *= 1 - lr wd; p -= lr sign(b1 m + (1 - b1) g);
    m = b2 m + (1 - b2) g."""
    type = "lion"
    HYPER = {"lr": (RATE, 1e-4), "betas": (_betas, [0.9, 0.99]), "weight_decay": (NONNEG, 0.0)}

    def slots(self, hp: dict) -> dict[str, float]:
        return {"exp_avg": 0.0}

    def scalars(self, hp: dict, lr: float, t: int) -> dict:
        return {"lr": float(lr), "decay": 1 - lr * hp["weight_decay"]}

    def update(self, p: Array, g: Array, state: dict, hp: dict, s: dict) -> None:
        b1, b2 = hp["betas"]
        if hp["weight_decay"] != 0:
            p *= s["decay"]
        m = state["exp_avg"]
        p -= s["lr"] * backends.of(m).xp.sign(m * b1 + g * (1 - b1))
        m *= b2
        m += g * (1 - b2)


TYPES: dict[str, type[Optimizer]] = {cls.type: cls for cls in (SGD, Adam, AdamW, RMSprop, Adagrad, Lion)}


def build(spec: Any, params: dict) -> Optimizer:
    """An optimizer over `params` (name -> live array) from a spec dict or a type name ("adam")."""
    spec, kind = configs.resolve_type(spec, PATH, TYPES, "optimizer")
    return TYPES[kind](spec, params)


__all__ = ["Optimizer", "TYPES", "build"]

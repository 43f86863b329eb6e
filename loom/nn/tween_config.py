"""TweenConfig: every setting of loom.nn.tween, validated, with a JSON round trip.

    cfg = TweenConfig(mode="gap", rate=0.05, momentum=0.5)
    TweenConfig.from_dict(cfg.to_dict()) == cfg          # plain JSON values only
    TweenConfig.from_dict({"mode": "gapp"})              # ConfigError at "tween.mode"

Errors are ConfigErrors whose path starts with "tween." and names the key (and, for the per-type
rates, the layer type). The meaning of each setting and the formulas that use it: docs/tween.md.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field, fields
from typing import Any

from .. import config as configs
from ..config import boolean, number, one_of, optional
from ..errors import ConfigError, renamed_paths
from . import losses
from .layers import REGISTRY as LAYER_TYPES

PATH = "tween"
MODES = ("gap", "chain")
PROJECTIONS = ("gap", "target")
DEFAULT_RATES = {"chain": 0.01, "gap": 0.1}    # rate None: the mode's default
_NONNEG = number(0)
_POSITIVE = number(0, lo_open=True)


def _loss(v: Any, path: str) -> dict:
    with renamed_paths({"loss": path}):
        return losses.build(v).config      # the canonical form: {"type": ..., every key}


def _type_rates(v: Any, path: str) -> dict[str, float]:
    if not isinstance(v, dict):
        raise ConfigError(path, f"expected an object of layer type -> rate multiplier, got {configs._describe(v)}")
    out = {}
    for kind, rate in v.items():
        if kind not in LAYER_TYPES:
            raise ConfigError(f"{path}.{kind}", f"unknown layer type {kind!r}; expected one of "
                              f"{configs.preview(sorted(LAYER_TYPES))}")
        out[kind] = _NONNEG(rate, f"{path}.{kind}")
    return out


def _layer_rates(v: Any, path: str) -> list[float] | None:
    return None if v is None else configs.list_of(_NONNEG, min_len=1)(v, path)


def _mode(v: Any, path: str) -> str:
    if not isinstance(v, str) or v not in MODES:
        raise ConfigError(path, f"unknown tween mode {configs._describe(v)}; expected one of {', '.join(MODES)}")
    return v


# key -> checker, in the order to_dict() writes them. The defaults are the dataclass's.
_CHECKS = {
    "mode": _mode,
    "rate": optional(_NONNEG),
    "momentum": number(0, 1, hi_open=True),
    "depth_decay": _POSITIVE,
    "layer_rates": _layer_rates,
    "type_rates": _type_rates,
    "clip_norm": optional(_POSITIVE),
    "clip_value": optional(_POSITIVE),
    "loss": _loss,
    "normalize": boolean,
    "projection": one_of(*PROJECTIONS),
    "min_weight_sum": _NONNEG,
    "budget_threshold": _NONNEG,
    "clamp_to_activation": boolean,
    "target_clamp": optional(_POSITIVE),
}


@dataclass
class TweenConfig:
    """The settings of a Tween (defaults after `=`; docs/tween.md has the formulas).

    Both modes
      mode = "chain"        "gap": gap-closing Hebbian updates; "chain": the true gradients (backward)
      rate = None           base step size; None: 0.01 in chain mode, 0.1 in gap mode (where, with
                            normalize, it is the fraction of a linear layer's gap closed per update)
      momentum = 0.0        heavy-ball momentum in [0, 1): buf = momentum * buf + g; p -= lr * buf
      depth_decay = 1.0     a parameter of the top-level layer d steps before the output layer has
                            its rate multiplied by depth_decay ** d
      layer_rates = None    optional list of multipliers, one per top-level layer (input first)
      type_rates = {}       multiplier per layer type ("dense", "conv2d", ...), by the type of the
                            layer that owns the parameter (the innermost one); types not listed: 1
      clip_norm = None      per top-level layer: its update direction scaled by
                            min(1, clip_norm / (norm + 1e-6)), norm over all its parameters
      clip_value = None     each component clamped to [-clip_value, clip_value] (before clip_norm)
      loss = "mse"          the loss reported (and, in chain mode, differentiated); any loss spec
    Gap mode
      normalize = True      divide each sample's Hebbian step by (sum of its squared inputs + number
                            of positions), so that rate is the fraction of a linear layer's gap one
                            update closes (normalized LMS); false: the plain step, stable only while
                            rate * |x|^2 < 2
      projection = "gap"    back-project the gap (est = x + W^T gap / sum|W|) or, as the seeds
                            write it, the target (est = W^T t / sum|W|)
      min_weight_sum = 1e-6 an input whose sum_out |W[out, in]| is not above this gets est = x
      budget_threshold = 0.1  a layer whose link budget b is below it has its update scaled by
                            b / budget_threshold (0 turns gating off)
      clamp_to_activation = True  estimated targets clamped to the range of the producing layer's
                            activation (relu [0, inf), tanh [-1, 1], sigmoid and softmax [0, 1], ...)
      target_clamp = None   estimated targets also clamped to [-target_clamp, target_clamp]
    """
    mode: str = "chain"
    rate: float | None = None
    momentum: float = 0.0
    depth_decay: float = 1.0
    layer_rates: list[float] | None = None
    type_rates: dict[str, float] = field(default_factory=dict)
    clip_norm: float | None = None
    clip_value: float | None = None
    loss: dict | str = "mse"
    normalize: bool = True
    projection: str = "gap"
    min_weight_sum: float = 1e-6
    budget_threshold: float = 0.1
    clamp_to_activation: bool = True
    target_clamp: float | None = None

    def __post_init__(self) -> None:
        for key, check in _CHECKS.items():
            setattr(self, key, check(copy.deepcopy(getattr(self, key)), f"{PATH}.{key}"))
        if self.rate is None:
            self.rate = DEFAULT_RATES[self.mode]

    @classmethod
    def from_dict(cls, d: dict | str | None) -> TweenConfig:
        """From a dict (or its JSON text; None: all defaults). Missing keys take their defaults;
        an unknown key is a ConfigError naming it."""
        if d is None:
            return cls()
        if isinstance(d, str):
            try:
                d = json.loads(d)
            except json.JSONDecodeError as exc:
                raise ConfigError(PATH, f"not valid JSON: {exc}") from None
        if not isinstance(d, dict):
            raise ConfigError(PATH, f"expected an object of tween settings, got {configs._describe(d)}")
        for key in d:
            if key not in _CHECKS:
                raise ConfigError(f"{PATH}.{key}", f"unknown tween setting; expected one of {', '.join(_CHECKS)}")
        return cls(**d)

    def to_dict(self) -> dict:
        """Every setting, as plain JSON values (json.dumps works; from_dict reads it back equal)."""
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self)}

    def replace(self, **changes: Any) -> TweenConfig:
        """A copy with some settings changed (validated like from_dict)."""
        return TweenConfig.from_dict({**self.to_dict(), **changes})


def resolve(config: TweenConfig | dict | str | None) -> TweenConfig:
    """A TweenConfig from a TweenConfig, a dict or JSON text of settings, a mode name, or None."""
    if isinstance(config, TweenConfig):
        return config
    if isinstance(config, str) and config in MODES:
        return TweenConfig(mode=config)
    return TweenConfig.from_dict(config)


__all__ = ["DEFAULT_RATES", "MODES", "PROJECTIONS", "TweenConfig", "resolve"]

"""The six training modes of online learning, each as a learner that answers a tick, then learns.

  NormalBP        answers with a full forward pass; keeps the latest samples and every `train_every`
                  ticks trains on them in minibatches for `epochs` epochs (batch backprop). That
                  training blocks: ticks arriving meanwhile wait (and miss their deadline)
  StepBP          the network as a pipeline (net.step_state()): one tick per sample, then per-sample
                  backprop through what each layer computed in that tick, and an optimizer step
  Tween           gap-mode tweening after a full forward pass (Tween.forward, then Tween.learn)
  TweenChain      chain-mode tweening (the true gradients) after a full forward pass
  StepTween       gap-mode tweening of the pipeline's latest tick (Tween.step_update)
  StepTweenChain  chain-mode tweening of the pipeline's latest tick

A pipelined learner's answer at tick t belongs to the input of tick t - delay (delay = the number of
top-level layers less one); the others answer the current input (delay 0). Settings are JSON
objects merged over DEFAULTS[mode]; unknown modes and keys are ConfigErrors naming them.
"""
from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections import deque
from typing import TYPE_CHECKING, Any

import numpy as np

from ... import config as configs
from ...config import positive_int
from ...errors import ConfigError
from .. import losses, optim
from ..tween import Tween

if TYPE_CHECKING:
    from ...backend import Array
    from ..network import Network

MODES = ("NormalBP", "StepBP", "Tween", "TweenChain", "StepTween", "StepTweenChain")
DEFAULTS: dict[str, dict[str, Any]] = {
    "NormalBP": {"optimizer": {"type": "sgd", "lr": 0.05, "momentum": 0.9}, "loss": "cross_entropy",
                 "batch": 16, "epochs": 3, "train_every": 250, "buffer": 250},
    "StepBP": {"optimizer": {"type": "sgd", "lr": 0.01, "momentum": 0.9}, "loss": "cross_entropy"},
    "Tween": {"tween": {"mode": "gap", "rate": 0.1, "momentum": 0.5, "loss": "cross_entropy"}},
    "TweenChain": {"tween": {"mode": "chain", "rate": 0.01, "momentum": 0.9, "clip_norm": 1.0,
                             "loss": "cross_entropy"}},
    "StepTween": {"tween": {"mode": "gap", "rate": 0.1, "momentum": 0.5, "loss": "cross_entropy"}},
    "StepTweenChain": {"tween": {"mode": "chain", "rate": 0.01, "momentum": 0.9, "clip_norm": 1.0,
                             "loss": "cross_entropy"}},
}
_INTS = ("batch", "epochs", "train_every", "buffer")


def settings(mode: str, overrides: dict | None = None) -> dict[str, Any]:
    """DEFAULTS[mode] with `overrides` merged in (the tween and optimizer objects key by key)."""
    if mode not in MODES:
        raise ConfigError("online.mode", f"unknown training mode {configs._describe(mode)}; expected one of "
                          f"{', '.join(MODES)}")
    out = copy.deepcopy(DEFAULTS[mode])
    if overrides is None:
        return out
    if not isinstance(overrides, dict):
        raise ConfigError("online.settings", f"expected an object of settings, got {configs._describe(overrides)}")
    for key, value in overrides.items():
        if key not in out:
            raise ConfigError(f"online.settings.{key}", f"unknown setting for mode {mode}; expected one of "
                              f"{', '.join(out)}")
        if key in ("tween", "optimizer") and isinstance(value, dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    if "tween" in out:
        wanted = DEFAULTS[mode]["tween"]["mode"]
        if out["tween"].get("mode") != wanted:
            raise ConfigError("online.settings.tween.mode", f"mode {mode} tweens in {wanted!r} mode, got "
                              f"{configs._describe(out['tween'].get('mode'))}; pick the mode by its name")
    for key in _INTS:
        if key in out:
            out[key] = positive_int(out[key], f"online.settings.{key}")
    return out


class Learner(ABC):
    """Answers a tick (`answer`), then learns from the target of the answered input (`learn`)."""
    delay = 0

    def __init__(self, net: Network, mode: str, overrides: dict | None):
        self.net, self.mode = net, mode
        self.settings = settings(mode, overrides)
        net.train()

    @abstractmethod
    def answer(self, x: np.ndarray) -> Array | None:
        """The network's output [1, ...] for this tick (None while a pipeline is still filling)."""

    @abstractmethod
    def learn(self, target: np.ndarray) -> int:
        """Learn from the target of the latest answer; returns the samples a blocking burst trained on
        (0 for a per-tick update)."""


class _Backprop(Learner):
    def __init__(self, net: Network, mode: str, overrides: dict | None):
        super().__init__(net, mode, overrides)
        self.loss = losses.build(self.settings["loss"])
        self.opt = optim.build(self.settings["optimizer"], net.parameters())

    def backprop(self, out: Array, target: Array) -> Array:
        """dL/dout: what the network's backward takes."""
        return self.loss(out, target, checked=False)[1]


class NormalBP(_Backprop):
    def __init__(self, net: Network, mode: str, overrides: dict | None):
        super().__init__(net, mode, overrides)
        s = self.settings
        self.samples: deque = deque(maxlen=s["buffer"])
        self.rng = np.random.default_rng(net.config.get("seed") or 0)     # minibatch order
        self.seen = 0
        self.x = None

    def answer(self, x: np.ndarray) -> Array | None:
        self.x = x
        return self.net.forward(x[None])

    def learn(self, target: np.ndarray) -> int:
        self.samples.append((self.x, target))
        self.seen += 1
        if self.seen % self.settings["train_every"]:
            return 0
        s, net = self.settings, self.net
        xs = np.stack([a for a, _ in self.samples])
        ts = np.stack([b for _, b in self.samples])
        for _ in range(s["epochs"]):
            order = self.rng.permutation(len(xs))
            for lo in range(0, len(xs), s["batch"]):
                rows = order[lo:lo + s["batch"]]
                out = net.forward(xs[rows])
                net.backward(self.backprop(out, net.backend.asarray(ts[rows])), input_grad=False)
                net.apply_gradients(self.opt)
        return len(xs) * s["epochs"]


class _Stepped(Learner):
    """Pipelined modes: the network advances one tick per sample through a StepState."""

    def __init__(self, net: Network, mode: str, overrides: dict | None):
        super().__init__(net, mode, overrides)
        self.state = net.step_state()
        self.delay = self.state.depth - 1

    def answer(self, x: np.ndarray) -> Array | None:
        self.state.set_input(x[None])
        self.state.step()
        return self.state.output()


class StepBP(_Stepped, _Backprop):
    def learn(self, target: np.ndarray) -> int:
        out = self.state.output()
        self.state.backward(self.backprop(out, self.net.backend.asarray(target[None])))
        self.net.apply_gradients(self.opt)
        return 0


class _Tweened(Learner):
    def __init__(self, net: Network, mode: str, overrides: dict | None):
        super().__init__(net, mode, overrides)
        self.tween = Tween(net, self.settings["tween"])


class TweenLearner(_Tweened):
    """Tween and TweenChain: a full forward pass answers, then the tween learns from it."""

    def answer(self, x: np.ndarray) -> Array | None:
        self.p = self.tween.forward(x[None])
        return self.p.output

    def learn(self, target: np.ndarray) -> int:
        self.tween.learn(self.p, target[None], checked=False)
        return 0


class StepTweenLearner(_Stepped, _Tweened):
    """StepTween and StepTweenChain: the pipeline's latest tick learns."""

    def learn(self, target: np.ndarray) -> int:
        self.tween.step_update(self.state, target[None], checked=False)
        return 0


_CLASSES = {"NormalBP": NormalBP, "StepBP": StepBP, "Tween": TweenLearner, "TweenChain": TweenLearner,
            "StepTween": StepTweenLearner, "StepTweenChain": StepTweenLearner}


def build(net: Network, mode: str, overrides: dict | None = None) -> Learner:
    """The learner of `mode` (one of MODES) on `net`, with settings merged over DEFAULTS[mode]."""
    settings(mode, overrides)              # the mode and settings checked before anything is built
    return _CLASSES[mode](net, mode, overrides)

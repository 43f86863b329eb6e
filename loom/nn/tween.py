"""Tweening: online learning, one sample (or batch) at a time, by gap closing or by the chain rule.

    tw = Tween(net, {"mode": "gap", "rate": 0.05})
    report = tw.update(x, target)          # forward, learn; float(report) is the loss
    p = tw.forward(x); act_on(p.output); tw.learn(p, target)     # answer first, learn after
    state = net.step_state()               # or pipelined: one tick, then learn from that tick
    state.set_input(x); state.step(); tw.step_update(state, target)

The unit is the network's top-level layer (what StepState advances). Both modes first write an
update direction for every parameter into the network's gradient buffers (zeroed at the start of
every update), then apply the same per-layer steps to them:

  chain   the direction is the true gradient of the loss: the layers' own backward passes
  gap     the output target is pulled down layer by layer (loom/nn/tween_rules.py): each layer gets
          the target of its output, writes its Hebbian gap direction and hands an estimated target
          to the layer before it; the direction is then scaled by the layer's link-budget gate
  then    g *= gate (gap); g = clip(g, -clip_value, clip_value); g *= min(1, clip_norm / (|g_layer|
          + 1e-6)); buf = momentum * buf + g (buf = g the first time); p -= lr * buf with
          lr = rate * depth_decay ** (layers after this one) * layer_rates[i] * type_rates[type]

With uniform rates, no clipping and momentum 0, chain mode is optim.SGD on the same gradients, bit
for bit. Everything stays on the network's device (gates, norms and the loss are 0-d device arrays;
nothing is read back per layer), and every sum goes through kernels.ops, so deterministic mode gives
the same bits on every backend. Frozen parameters (no gradient buffer) are not updated. Formulas
and settings: docs/tween.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import backend as backends
from ..backend import Array
from ..errors import ConfigError, ShapeError
from ..kernels import fused, ops
from . import losses, tween_rules
from .layers import ForwardContext
from .layers.structure import backward_chain
from .tween_config import MODES, TweenConfig, resolve

if TYPE_CHECKING:
    from .network import Network
    from .step import StepState

CLIP_EPS = 1e-6      # as optim's clip_norm and torch.nn.utils.clip_grad_norm_


@dataclass
class TweenReport:
    """What one update saw: the loss (0-d, on the network's device; float(report) reads it), the
    output it learned from and, in gap mode, each top-level layer's link budget (0-d float64)."""
    loss: Array
    output: Array
    budgets: tuple[Array, ...] = ()

    def __float__(self) -> float:
        return float(self.loss)


@dataclass(frozen=True)
class TweenPass:
    """What Tween.forward ran: each top-level layer's input and output (`output` is the answer)."""
    inputs: tuple
    outputs: tuple
    root: Any

    @property
    def output(self) -> Array:
        return self.outputs[-1]


@dataclass
class _Entry:
    name: str          # the network's dotted parameter name
    owner: Any         # the layer holding it
    key: str           # its key in owner.params / owner.grads
    lr: float


class Tween:
    """Online updates of `net` with the settings of `config` (a TweenConfig, a dict or JSON text of
    settings, a mode name "gap" / "chain", or None for the defaults)."""

    def __init__(self, net: Network, config: TweenConfig | dict | str | None = None):
        if net.quantized:
            raise ConfigError("quantization", f"a network quantized to {net.config['quantization']['dtype']} "
                              "cannot be tweened: its weights are stored quantized for inference; tween the "
                              "float network (with qat for quantization-aware training) and quantize it after")
        self.net = net
        self._config = resolve(config).replace()       # a private copy: the plan is built from it
        self.loss = losses.build(self._config.loss)
        self.steps = 0
        self._momentum: dict[str, Array] = {}
        self._root = None
        self._bind()

    @property
    def config(self) -> TweenConfig:
        """The settings (a copy: they are fixed when the Tween is built; make a new Tween, carrying
        the momentum over with state_dict / load_state_dict, to change them)."""
        return self._config.replace()

    # --- the per-layer plan ---
    def _bind(self) -> None:
        """The plan for the network's current layers (again after net.to() rebuilt them)."""
        cfg, net = self._config, self.net
        tops = list(net.root.children.items())
        n = len(tops)
        if cfg.layer_rates is not None and len(cfg.layer_rates) != n:
            raise ConfigError("tween.layer_rates", f"has {len(cfg.layer_rates)} entries but the network has {n} "
                              "top-level layers (one multiplier each, input side first)")
        self._plan: list[list[_Entry]] = []
        for i, (key, top) in enumerate(tops):
            mult = cfg.depth_decay ** (n - 1 - i) * (1.0 if cfg.layer_rates is None else cfg.layer_rates[i])
            self._plan.append([_Entry(f"{prefix}.{k}", owner, k, cfg.rate * mult * cfg.type_rates.get(owner.type, 1.0))
                               for prefix, owner in top.walk(key) for k in owner.params])
        self._layers = [top for _, top in tops]
        self._ranges = [tween_rules.clamp_range(top, cfg.clamp_to_activation, cfg.target_clamp)
                        for top in self._layers]
        self._eyes: dict[tuple[int, str], Array] = {}   # one-hot rows for class-id targets
        if self._root is not None:            # moved: momentum follows the parameters
            self._momentum = {k: net.backend.asarray(backends.of(v).to_numpy(v)) for k, v in self._momentum.items()}
        self._root = net.root

    def rates(self) -> dict[str, float]:
        """The learning rate of every parameter by dotted name (before gates and clipping)."""
        self._rebind()
        return {e.name: e.lr for entries in self._plan for e in entries}

    def _rebind(self) -> None:
        if self.net.root is not self._root:
            self._bind()

    # --- updates ---
    def forward(self, x: Array) -> TweenPass:
        """Run x (a batch, often of one sample) forward through the top-level layers, keeping what
        learn() needs; `.output` is the network's answer, available before any learning."""
        self._rebind()
        net = self.net
        x = net.check_input(x)
        fc = ForwardContext(training=net.training, counter=net.rng_counter)
        xs, ys = [], []
        for layer in self._layers:
            xs.append(x)
            x = layer.forward(x, fc)
            ys.append(x)
        if net.training:
            net.rng_counter += 1
        return TweenPass(tuple(xs), tuple(ys), net.root)

    def learn(self, p: TweenPass, target: Array, checked: bool = True) -> TweenReport:
        """One update toward `target` (what the loss takes: values shaped like the output, or class
        ids) from a forward() of this network, the latest one: the layers' backward passes use
        what they cached in it. checked=False skips the loss's data-dependent target checks (they
        synchronize with the GPU)."""
        self._rebind()
        if p.root is not self.net.root:
            raise ShapeError("learn: the pass was run by another network (or by this one before net.to() "
                             "rebuilt its layers); run forward() again")
        return self._learn(list(p.inputs), list(p.outputs), target, checked)

    def update(self, x: Array, target: Array, checked: bool = True) -> TweenReport:
        """forward(x), then learn() toward `target`: one online update."""
        return self.learn(self.forward(x), target, checked)

    def step_update(self, state: StepState, target: Array, checked: bool = True) -> TweenReport:
        """One update from the latest tick of a StepState: `target` goes with state.output(), each
        layer learns from what it computed in that tick (in a pipeline those are different inputs:
        the approximation the step API describes)."""
        self._rebind()
        if state.net is not self.net or state.layers != self._layers:
            raise ShapeError("step_update: the StepState belongs to another network (or to this one before "
                             "net.to() rebuilt its layers); make a new one with net.step_state()")
        if state.output() is None:
            raise ShapeError(f"step_update needs an output: step() {state.depth} times after set_input")
        return self._learn(list(state.inputs), list(state.buffers), target, checked)

    def _learn(self, xs, ys, target, checked) -> TweenReport:
        net, y = self.net, ys[-1]
        target = net.backend.asarray(target)
        wanted = None if self._config.mode == "chain" else self._output_target(y, target)
        net.zero_grad()
        value, dy = self.loss(y, target, checked=checked)
        gates: list[Array | None] = [None] * len(self._layers)
        budgets: tuple[Array, ...] = ()
        if wanted is None:
            backward_chain(net.root, dy, need_dx=False)
        else:
            budgets = self._gap(xs, ys, wanted)
            if self._config.budget_threshold > 0:
                th = np.float64(self._config.budget_threshold)
                gates = [net.backend.xp.minimum(b / th, 1.0) for b in budgets]
        net.settle_grads()
        self._apply(gates)
        self.steps += 1
        return TweenReport(value, y, budgets)

    def _output_target(self, y, target):
        """The wanted output: float targets as they are, class ids one-hot over the last axis."""
        if target.dtype.kind in "iu" and tuple(target.shape) == tuple(y.shape[:-1]):
            key = (y.shape[-1], y.dtype.str)
            if key not in self._eyes:                  # made once per size, not per update
                self._eyes[key] = self.net.backend.xp.eye(y.shape[-1], dtype=y.dtype)
            return self._eyes[key][target]
        if tuple(target.shape) != tuple(y.shape):
            raise ShapeError(f"tween: target has shape {list(target.shape)}, expected the output's "
                             f"{list(y.shape)} (or class ids of shape {list(y.shape[:-1])})")
        return target.astype(y.dtype, copy=False)

    def _gap(self, xs, ys, t) -> tuple[Array, ...]:
        """Gap mode's sweep from the output down: directions into the gradient buffers; returns the
        link budgets."""
        cfg, xp = self._config, self.net.backend.xp
        for i in reversed(range(len(self._layers))):
            layer, x, y = self._layers[i], xs[i], ys[i]
            need = i > 0
            if tween_rules.is_matrix(layer):
                est = tween_rules.matrix_rule(layer, x, y, t, cfg, need)
            else:
                est = tween_rules.fallback_rule(self.net.root, layer, x, y, t, need)
            if est is None or i == 0:
                break                          # nothing to hand down (the first layer, or integer input)
            if cfg.projection == "gap" and ys[i - 1] is not x:
                # a pipeline tick: the layer below wrote ys[i-1] from a newer sample than the x this
                # layer read; hand down the gap (est - x), not a target for another sample's output
                est = est + (ys[i - 1] - x)
            bounds = self._ranges[i - 1]
            t = est if bounds is None else xp.clip(est, est.dtype.type(bounds[0]), est.dtype.type(bounds[1]))
        return tuple(tween_rules.link_budget(x, y) for x, y in zip(xs, ys))

    def _apply(self, gates: list[Array | None]) -> None:
        cfg = self._config
        for entries, gate in zip(self._plan, gates):
            live = [e for e in entries if e.key in e.owner.grads]     # frozen parameters have no buffer
            if not live:
                continue
            grads = [e.owner.grads[e.key] for e in live]
            xp = backends.of(grads[0]).xp
            if gate is not None:
                for g in grads:
                    g *= gate.astype(g.dtype)
            if cfg.clip_value is not None:
                for g in grads:
                    xp.clip(g, -cfg.clip_value, cfg.clip_value, out=g)
            if cfg.clip_norm is not None:
                total = xp.zeros((), dtype=np.float64)
                for g in grads:
                    total = total + ops.sum(g * g).astype(np.float64)
                coef = xp.minimum(cfg.clip_norm / (xp.sqrt(total) + CLIP_EPS), 1.0)
                for g in grads:
                    g *= coef.astype(g.dtype)
            for e, g in zip(live, grads):
                p = e.owner.params[e.key]
                buf, first = None, False
                if cfg.momentum != 0:
                    buf = self._momentum.get(e.name)
                    first = buf is None                # torch's first step: buf = g
                    if first:
                        buf = self._momentum[e.name] = xp.zeros_like(p)
                fused.sgd_update(p, g, buf, e.lr, cfg.momentum, 0.0, False, 0.0, first)

    # --- state ---
    def state_dict(self) -> dict:
        """{"steps": n, "momentum.<parameter>": host array, ...}: what load_state_dict restores."""
        out: dict[str, Any] = {"steps": self.steps}
        for name, buf in self._momentum.items():
            out[f"momentum.{name}"] = np.array(backends.of(buf).to_numpy(buf), copy=True)
        return out

    def load_state_dict(self, state: dict) -> None:
        """Restore what state_dict() returned (ShapeError for a name or shape this network lacks)."""
        self._rebind()
        params = self.net.parameters()
        loaded = {}
        for key, value in state.items():
            if key == "steps":
                continue
            name = key[len("momentum."):] if key.startswith("momentum.") else None
            if name not in params or tuple(np.shape(value)) != tuple(params[name].shape):
                raise ShapeError(f"tween state {key}: no momentum of that name and shape in this network")
            loaded[name] = self.net.backend.asarray(np.asarray(value).astype(params[name].dtype))
        self.steps = int(state.get("steps", 0))
        self._momentum = loaded

    def __repr__(self) -> str:
        return f"Tween(mode={self._config.mode!r}, rate={self._config.rate:g}, steps={self.steps})"


__all__ = ["MODES", "Tween", "TweenConfig", "TweenPass", "TweenReport"]

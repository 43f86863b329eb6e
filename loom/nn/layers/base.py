"""What every layer is: a forward/backward pair over batch-first arrays, with named parameters.

A layer is built from its normalized config (see loom/config.py) and the `Spec` of one input
sample (shape without the batch, dtype name). Building infers the output spec, raising
`ConfigError` at the layer's JSON path when the shapes cannot work, and draws initial parameters
from the counter RNG keyed by the parameter's dotted name.

`forward(x, fc)` caches what `backward` needs; `backward(dy)` adds parameter gradients into
`self.grads` (they accumulate until `zero_grad`) and returns the gradient of the input (None for
integer inputs). Nested layers live in `self.children`, named as their parameters are prefixed.

A parameter without an entry in `self.grads` is frozen (Network.freeze): backward computes no
gradient for it (`accumulate` skips it; direct writes check `trains(name)` first) but still returns
the input gradient, so gradients flow through frozen layers to trainable ones before them.
"""
from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from ... import rng
from ...backend import Array
from ...errors import ConfigError
from ...kernels import batch_split, ops

REGISTRY: dict[str, type[Layer]] = {}
_LayerClass = TypeVar("_LayerClass", bound="type[Layer]")


def register(*types: str) -> Callable[[_LayerClass], _LayerClass]:
    """Class decorator: the layer class that builds configs of these `type`s."""
    def deco(cls: _LayerClass) -> _LayerClass:
        for t in types:
            if t in REGISTRY:
                raise RuntimeError(f"layer type {t!r} registered twice")
            REGISTRY[t] = cls
        return cls
    return deco


@dataclass(frozen=True)
class Spec:
    """One sample's shape (batch excluded) and dtype name."""
    shape: tuple[int, ...]
    dtype: str

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def is_float(self) -> bool:
        return self.dtype.startswith("float")


@dataclass
class BuildContext:
    """Where a layer is being built: backend, compute dtype, seed, JSON path and parameter prefix."""
    backend: Any
    dtype: str
    seed: int
    path: str = ""    # JSON path for errors: "layers[2].branches[0]"
    prefix: str = ""  # parameter-name prefix: "layers.2.branches.0"

    def child(self, key: str, index: int | None = None) -> BuildContext:
        path = f"{self.path}.{key}" if self.path else key
        prefix = f"{self.prefix}.{key}" if self.prefix else key
        if index is not None:
            path, prefix = f"{path}[{index}]", f"{prefix}.{index}"
        return BuildContext(self.backend, self.dtype, self.seed, path, prefix)

    def error(self, message: str, key: str | None = None) -> ConfigError:
        where = self.path if key is None else (f"{self.path}.{key}" if self.path else key)
        return ConfigError(where, message)

    def stream(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    # --- initial values, drawn on the host in float64 and rounded once to the compute dtype ---
    def _check_size(self, name: str, shape: tuple[int, ...]) -> None:
        """A parameter whose float64 draw cannot fit in this machine's memory is a config error
        naming the layer, not a MemoryError (or the kernel's OOM killer) halfway through building."""
        need = math.prod(shape) * 8
        if need > _physical_memory():
            raise self.error(f"parameter {self.stream(name)} of shape {list(shape)} needs {_size(need)} to "
                             f"initialize; this machine has {_size(_physical_memory())} of memory")

    def _put(self, host: np.ndarray) -> Array:
        return self.backend.asarray(host.astype(self.dtype))

    def uniform(self, name: str, shape: tuple[int, ...], bound: float) -> Array:
        self._check_size(name, shape)
        u = rng.Generator(self.seed, self.stream(name)).uniform(shape)
        return self._put((2.0 * u - 1.0) * bound)

    def normal(self, name: str, shape: tuple[int, ...], std: float = 1.0) -> Array:
        self._check_size(name, shape)
        return self._put(rng.Generator(self.seed, self.stream(name)).normal(shape) * std)

    def full(self, shape: tuple[int, ...], value: float) -> Array:
        self._check_size("constant", shape)
        return self._put(np.full(shape, value, dtype=np.float64))


@dataclass
class ForwardContext:
    """Per-call state: train or eval, the RNG counter of this call, the optional attention mask."""
    training: bool = False
    counter: Any = 0            # an int, or a device uint32 [lo, hi] inside a recorded step
    attention_mask: Any = None  # [batch, T] with 1 for real tokens, 0 for padding
    checked: bool = True        # False inside a recorded step: input ids were validated beforehand
    extras: dict = field(default_factory=dict)


class Layer(ABC):
    USES_NOISE = False      # draws from the counter RNG in training (dropout, gumbel softmax)

    def __init__(self, cfg: dict[str, Any], in_spec: Spec, ctx: BuildContext):
        self.cfg = cfg
        self.type: str = cfg["type"]
        self.in_spec = in_spec
        self.ctx = ctx
        self.path, self.name = ctx.path, ctx.prefix
        self.B = ctx.backend
        self.xp = ctx.backend.xp
        self.dtype = ctx.dtype
        self.params: dict[str, Any] = {}
        self.grads: dict[str, Any] = {}
        self.buffers: dict[str, Any] = {}
        self.children: dict[str, Layer] = {}
        # Quantization-aware training: (dtype, per) when the network's config has "qat" and this layer
        # supports it (SUPPORTS_QAT); qat_cache holds the fake-quantized operands its backward needs.
        self.qat: tuple[str, str] | None = None
        self.qat_cache: dict[str, Any] = {}
        # Gradients cleared by zero_grad but not yet written: the next accumulation overwrites them
        # instead of adding to zeros (see clear_grads).
        self.stale_grads: set[str] = set()
        # False when nobody needs dL/d(input) (the network's first layer during training): layers that
        # can save work then return None from backward.
        self.input_grad = True
        self.out_spec: Spec = self.build(cfg, in_spec, ctx)

    # --- every layer implements these three ---
    @abstractmethod
    def build(self, cfg: dict[str, Any], in_spec: Spec, ctx: BuildContext) -> Spec:
        """Check shapes, create parameters and children; return the output spec."""

    @abstractmethod
    def forward(self, x: Array, fc: ForwardContext) -> Array:
        """y for a batch x; caches what backward needs."""

    @abstractmethod
    def backward(self, dy: Array) -> Array | None:
        """Add parameter gradients for the cached forward; return the input gradient."""

    # --- helpers for subclasses ---
    def add_param(self, name: str, value: Array) -> Array:
        self.params[name] = value
        self.grads[name] = self.xp.zeros_like(value)
        return value

    # --- freezing: a frozen parameter has no gradient buffer ---
    def trains(self, name: str | None = None) -> bool:
        """Whether parameter `name` (of this layer) receives gradients; without a name, whether any
        parameter of this layer or of a nested layer does (backward can skip a subtree that does not)."""
        if name is not None:
            return name in self.grads
        return any(layer.grads for _, layer in self.walk())

    def freeze_param(self, name: str) -> None:
        """Drop the gradient buffer of parameter `name`: backward stops computing its gradient."""
        self.grads.pop(name, None)
        self.stale_grads.discard(name)

    def unfreeze_param(self, name: str) -> None:
        """Give parameter `name` a zeroed gradient buffer again (nothing when it has one)."""
        if name not in self.grads:
            self.grads[name] = self.xp.zeros_like(self.params[name])

    def backward_child(self, child: Layer, dy: Array, need_dx: bool) -> Array | None:
        """child.backward(dy) with child.input_grad = need_dx; skipped (None) when neither the input
        gradient nor any parameter gradient of the child's subtree is needed (all frozen)."""
        if not need_dx and not child.trains():
            return None
        child.input_grad = need_dx
        try:
            return child.backward(dy)
        finally:
            child.input_grad = True

    # --- quantization ---
    # Parameters that are GEMM weights [out, in, ...]: a quantized network stores and runs them in
    # its storage type (loom/kernels/quant/affine.py), per channel along axis 0. Everything else stays float.
    QUANT_WEIGHTS: tuple[str, ...] = ()
    # Whether the layer fake-quantizes its QUANT_WEIGHTS (and, for integer types, its GEMM inputs)
    # in forward and passes straight-through gradients in backward when self.qat is set.
    SUPPORTS_QAT = False

    # --- gradient accumulation ---
    # Layers whose every gradient write goes through accumulate/accumulate_matmul set this: their
    # zero_grad is deferred, and the first backward writes the gradient instead of adding it to
    # zeros (PyTorch's set_to_none, without the None). It saves a fill and an add over every weight.
    LAZY_GRADS = False

    def clear_grads(self) -> None:
        if self.LAZY_GRADS:
            self.stale_grads = set(self.grads)
        else:
            for g in self.grads.values():
                g[...] = 0

    def settle_grads(self) -> None:
        """Zero the gradients still pending from clear_grads (those no backward has written)."""
        for name in self.stale_grads:
            self.grads[name][...] = 0
        self.stale_grads.clear()

    def accumulate(self, name: str, value: Array) -> None:
        if name not in self.grads:          # frozen
            return
        if name in self.stale_grads:
            self.stale_grads.discard(name)
            self.grads[name][...] = value
        else:
            self.grads[name] += value

    def accumulate_matmul(self, name: str, a: Array, b: Array) -> None:
        """grads[name] += a @ b for a product over the batch (ops.grad_matmul: over every rank of a
        data-parallel world), written in place when the gradient is pending a clear; nothing (not
        even the product) for a frozen parameter."""
        if name not in self.grads:
            return
        if name in self.stale_grads:
            self.stale_grads.discard(name)
            ops.grad_matmul(a, b, out=self.grads[name])
        else:
            self.grads[name] += ops.grad_matmul(a, b)

    def add_buffer(self, name: str, value: Array) -> Array:
        self.buffers[name] = value
        return value

    def add_child(self, key: str, cfg: dict[str, Any], in_spec: Spec, ctx: BuildContext) -> Layer:
        """Build a nested layer registered as `key` ("layers.0", "gate")."""
        layer = build(cfg, in_spec, ctx)
        self.children[key] = layer
        return layer

    def require_float(self, in_spec: Spec, ctx: BuildContext) -> None:
        if not in_spec.is_float:
            raise ctx.error(f"{self.type} needs floating-point input, got {in_spec.dtype} "
                            "(only embedding takes integer ids)")

    def noise_uniform(self, shape: tuple[int, ...], fc: ForwardContext) -> Array:
        """Uniform [0, 1) noise for this call, from the stream '<layer>.noise' at the call's counter.
        shape is batch first."""
        gen = rng.Generator(self.ctx.seed, self.ctx.stream("noise"))
        # a rank of a data-parallel world draws the global batch's noise for its own rows
        offset = batch_split.offset() * math.prod(shape[1:])
        if isinstance(fc.counter, int):
            return self.B.asarray(gen.uniform(shape, counter=fc.counter, dtype=np.dtype(self.dtype), offset=offset))
        # a recorded step: the counter lives in device memory and the bits are drawn there
        return gen.uniform(shape, counter=fc.counter, dtype=np.dtype(self.dtype), xp=self.xp, offset=offset)

    def walk(self, prefix: str = "") -> Iterator[tuple[str, Layer]]:
        """Yield (dotted prefix, layer) for this layer and every nested layer."""
        yield prefix, self
        for key, child in self.children.items():
            yield from child.walk(f"{prefix}.{key}" if prefix else key)

    def param_count(self) -> int:
        own = sum(int(np.prod(p.shape)) for p in self.params.values())
        return own + sum(c.param_count() for c in self.children.values())

    def describe(self) -> str:
        """A short detail for summaries (e.g. "units=10, relu")."""
        keys = [k for k in self.cfg if k not in ("type", "layers", "branches", "gate", "grid")]
        return ", ".join(f"{k}={self.cfg[k]}" for k in keys if self.cfg[k] is not None)


def build(cfg: dict[str, Any], in_spec: Spec, ctx: BuildContext) -> Layer:
    cls = REGISTRY.get(cfg["type"])
    if cls is None:
        raise ctx.error(f"layer type {cfg['type']!r} has no implementation", "type")
    try:
        return cls(cfg, in_spec, ctx)
    except MemoryError as exc:    # fits the machine on paper but not in the memory free now
        raise ctx.error(f"the layer's arrays do not fit in memory ({exc})") from None


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):      # not POSIX: no limit known
        return 1 << 62


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:,} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024


def dims(value: int | list[int], n: int, ctx: BuildContext, key: str) -> tuple[int, ...]:
    """Expand an int-or-list config value to one int per spatial dimension."""
    if isinstance(value, list):
        if len(value) != n:
            raise ctx.error(f"expected 1 or {n} values, got {len(value)}: {value}", key)
        return tuple(value)
    return (value,) * n

"""Step-based execution: the network as a pipeline that advances one tick at a time.

Every top-level layer owns an output buffer. `step()` runs all layers at once, each from the
previous tick's buffer of the layer before it (layer 0 from the current input), so a new input
reaches the output after L ticks (L = number of top-level layers) and L inputs are in flight at
once. `backward(dy)` sends dy from the output back through the layers, each using what it cached
in its latest tick; when the input has been held for L ticks every cache belongs to the same input
and this is exact backpropagation, otherwise it is the pipelined approximation the seeds describe.
"""
from __future__ import annotations

from ..backend import Array
from ..errors import ShapeError
from .built_network import BuiltNetwork
from .layers import ForwardContext


class StepState:
    def __init__(self, net: BuiltNetwork):
        self.net = net
        self.layers = list(net.root.children.values())
        self.buffers = [None] * len(self.layers)
        self.inputs = [None] * len(self.layers)   # what each layer read in the latest tick (tween uses them)
        self.x = None
        self.ticks = 0

    @property
    def depth(self) -> int:
        """Ticks an input needs to reach the output."""
        return len(self.layers)

    def set_input(self, x: Array) -> None:
        self.x = self.net.check_input(x)

    def step(self) -> None:
        """Advance every layer one tick from the previous tick's buffers."""
        if self.x is None:
            raise ShapeError("step() needs an input: call set_input(x) first")
        net = self.net
        fc = ForwardContext(training=net.training, counter=net.rng_counter)
        sources = [self.x] + self.buffers[:-1]          # what each layer reads: last tick's values
        self.inputs = sources
        self.buffers = [layer.forward(src, fc) if src is not None else None
                        for layer, src in zip(self.layers, sources)]
        if net.training:
            net.rng_counter += 1
        self.ticks += 1

    def output(self) -> Array | None:
        """The last layer's buffer (None until the first input has travelled through all layers)."""
        return self.buffers[-1]

    def backward(self, dy: Array) -> Array | None:
        """Accumulate parameter gradients for the current output; return the input gradient."""
        if self.output() is None:
            raise ShapeError(f"backward() needs an output: step() {self.depth} times after set_input")
        out = self.output()
        dy = self.net.backend.asarray(dy)
        if dy.shape != out.shape:
            raise ShapeError(f"backward: dy has shape {list(dy.shape)}, expected {list(out.shape)}")
        try:
            for layer in reversed(self.layers):
                dy = layer.backward(dy)
        finally:
            self.net.settle_grads()
        return dy

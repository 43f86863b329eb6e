"""What the modules a Network delegates to (blueprint.py, chain.py, freezing.py, step.py) read and
call on it, as a protocol: network.Network is the one implementation.

Network imports those modules to implement blueprint(), compile(), freeze() and step_state(); they
take this protocol instead of importing Network, so neither side imports the other.
"""
from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Protocol

from ..backend import Array, Backend
from .layers import Spec
from .layers.structure import Sequential


class BuiltNetwork(Protocol):
    backend: Backend
    root: Sequential
    input_spec: Spec
    output_spec: Spec
    training: bool
    rng_counter: int        # advances once per training-mode forward; seeds dropout/gumbel noise

    @property
    def config(self) -> dict: ...

    @property
    def device(self) -> str: ...

    @property
    def quantized(self) -> bool: ...

    # the hooks a recorder needs (chain.py)
    def forward_unchecked(self, x: Array, attention_mask: Array | None = None,
                          counter: Array | None = None) -> Array: ...

    def note_forward(self, batch: int) -> None: ...

    def recording(self) -> AbstractContextManager[None]: ...

    def uses_noise(self) -> bool: ...

    def backward(self, dy: Array, input_grad: bool = True) -> Array | None: ...

    def check_input(self, x: Array) -> Array: ...

    def check_spec(self, x: Array) -> Array: ...

    def check_mask(self, mask: Array, batch: int) -> Array: ...

    def check_ids(self, x: Array) -> None: ...

    def gradients(self) -> dict: ...

    def zero_grad(self) -> None: ...

    def settle_grads(self) -> None: ...

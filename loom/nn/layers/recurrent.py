"""Recurrent layers: rnn (tanh), lstm and gru, single layer, batch first, PyTorch's equations.

Input [B, T, F]; output [B, T, H] with return_sequences, else the last state [B, H]. Parameters
as in torch.nn.RNN/LSTM/GRU without the "_l0" suffix: weight_ih [G*H, F], weight_hh [G*H, H],
bias_ih [G*H], bias_hh [G*H], gates stacked in torch's order (lstm i, f, g, o; gru r, z, n).

With an attention mask ([B, T], True = real token) a padded step keeps the state (and outputs it
again), so the last state is the state at the last real token, as with PyTorch packed sequences.

The input projection of all steps is one GEMM before the loop; the loop over T then does one
[B, H] x [H, G*H] GEMM per step. Backward is full BPTT over the same loop; the weight gradients
are two GEMMs over all steps after it.
"""
from __future__ import annotations

import math
from abc import abstractmethod
from typing import Any

from ...backend import Array
from ...errors import ShapeError
from ...kernels import fused, ops
from ...kernels.quant import affine as quant
from . import linear
from .base import BuildContext, ForwardContext, Layer, Spec, register


def _sequence_mask(layer: Layer, fc, batch: int, steps: int):
    """fc.attention_mask as a bool [B, T, 1] array, or None when there is none."""
    mask = fc.attention_mask
    if mask is None:
        return None
    if tuple(mask.shape) != (batch, steps):
        raise ShapeError(f"{layer.path}: attention_mask has shape {list(mask.shape)}, "
                         f"expected [batch={batch}, T={steps}]")
    return mask.astype(bool)[:, :, None]


class _Recurrent(Layer):
    QUANT_WEIGHTS = ("weight_ih", "weight_hh")
    GATES = 1          # stacked gate blocks in weight_ih / weight_hh
    STATES = 1         # h, or (h, c) for lstm

    def build(self, cfg: dict[str, Any], in_spec: Spec, ctx: BuildContext) -> Spec:
        self.require_float(in_spec, ctx)
        if len(in_spec.shape) != 2:
            raise ctx.error(f"{self.type} needs a sequence [T, F] per sample, got shape {list(in_spec.shape)}")
        steps, features = in_spec.shape
        self.H = hidden = cfg["hidden"]
        self.seqs = cfg["return_sequences"]
        gh = self.GATES * hidden
        bound = 1.0 / math.sqrt(hidden)   # torch's init for every weight and bias
        self.add_param("weight_ih", ctx.uniform("weight_ih", (gh, features), bound))
        self.add_param("weight_hh", ctx.uniform("weight_hh", (gh, hidden), bound))
        if cfg["bias"]:
            self.add_param("bias_ih", ctx.uniform("bias_ih", (gh,), bound))
            self.add_param("bias_hh", ctx.uniform("bias_hh", (gh,), bound))
        return Spec((steps, hidden) if self.seqs else (hidden,), in_spec.dtype)

    # --- one step of the cell; subclasses implement these two ---
    @abstractmethod
    def cell(self, ax: Array, ah: Array, state: tuple[Array, ...]) -> tuple[tuple[Array, ...], Any]:
        """New state from ax = W_ih x_t + b_ih and ah = W_hh h + b_hh ([B, G*H] each); returns
        (new state tuple, cache for cell_back)."""

    @abstractmethod
    def cell_back(self, dstate: list[Array], cache: Any) -> tuple[Array, Array, tuple[Array | int, ...]]:
        """Gradients for one step given the gradient of the new state: (d ax, d ah, direct
        gradient of the previous state, excluding the W_hh path of h)."""

    # --- the loop over time ---
    def forward(self, x: Array, fc: ForwardContext) -> Array:
        xp = self.xp
        B, T, _ = x.shape
        p = self.params
        mask = _sequence_mask(self, fc, B, T)
        ax = linear.project(self, "weight_ih", x)                    # [B, T, G*H]
        if "bias_ih" in p:
            ax = ax + p["bias_ih"]
        state = tuple(xp.zeros((B, self.H), dtype=x.dtype) for _ in range(self.STATES))
        hprev = xp.empty((B, T, self.H), dtype=x.dtype)
        hs = xp.empty((B, T, self.H), dtype=x.dtype)
        caches = []
        for t in range(T):
            h = state[0]
            hprev[:, t] = h
            ah = linear.project(self, "weight_hh", h)                  # [B, G*H]
            if "bias_hh" in p:
                ah = ah + p["bias_hh"]
            new, cache = self.cell(ax[:, t], ah, state)
            if mask is not None:
                m = mask[:, t]
                new = tuple(xp.where(m, n, s) for n, s in zip(new, state))
            caches.append(cache)
            state = new
            hs[:, t] = state[0]
        self.x, self.mask, self.hprev, self.caches = x, mask, hprev, caches
        return hs if self.seqs else state[0]

    def backward(self, dy: Array) -> Array:
        xp = self.xp
        x, p, mask = self.x, self.params, self.mask
        B, T, F = x.shape
        gh = self.GATES * self.H
        zero = xp.zeros((B, self.H), dtype=x.dtype)
        d = [zero] * self.STATES
        if not self.seqs:
            d[0] = dy
        # written step by step (as forward writes hs): CuPy stacks more than 8 arrays with one kernel
        # whose table of their addresses it copies from the host, which a recorded step cannot hold
        dax = xp.empty((B, T, gh), dtype=x.dtype)
        dah = xp.empty((B, T, gh), dtype=x.dtype)
        for t in reversed(range(T)):
            if self.seqs:
                d[0] = d[0] + dy[:, t]
            if mask is not None:
                m = mask[:, t]
                d_new = [xp.where(m, g, 0) for g in d]
                carry = [xp.where(m, 0, g) for g in d]   # a padded step passes its gradient through
            else:
                d_new, carry = d, [zero] * self.STATES
            da_x, da_h, direct = self.cell_back(d_new, self.caches[t])
            dax[:, t], dah[:, t] = da_x, da_h
            d = [carry[0] + direct[0] + ops.matmul(da_h, p["weight_hh"])]
            d += [carry[k] + direct[k] for k in range(1, self.STATES)]
        dax2 = dax.reshape(B * T, gh)
        dah2 = dah.reshape(B * T, gh)
        if self.trains("weight_ih"):
            self.grads["weight_ih"] += ops.grad_matmul(dax2.T, x.reshape(B * T, F))
        if self.trains("weight_hh"):
            self.grads["weight_hh"] += ops.grad_matmul(dah2.T, self.hprev.reshape(B * T, self.H))
        if self.trains("bias_ih"):
            self.grads["bias_ih"] += ops.grad_sum(dax2, axis=0)
        if self.trains("bias_hh"):
            self.grads["bias_hh"] += ops.grad_sum(dah2, axis=0)
        return ops.matmul(dax2, p["weight_ih"]).reshape(B, T, F)


@register("rnn")
class RNN(_Recurrent):
    """h' = tanh(W_ih x + b_ih + W_hh h + b_hh)."""
    GATES, STATES = 1, 1

    def cell(self, ax: Array, ah: Array, state: tuple[Array, ...]) -> tuple[tuple[Array, ...], Any]:
        h = ops.tanh(ax + ah)
        return (h,), h

    def cell_back(self, dstate: list[Array], h: Array) -> tuple[Array, Array, tuple[Array | int, ...]]:
        da = dstate[0] * (1 - h * h)
        return da, da, (0,)


@register("lstm")
class LSTM(_Recurrent):
    """i, f, g, o = sig, sig, tanh, sig of (W_ih x + b_ih + W_hh h + b_hh); c' = f c + i g;
    h' = o tanh(c').

    Where the backend has fused LSTM steps (the GPU: one launch a step each way beside its GEMM, the
    composed cell's results, its bits in deterministic mode) and no attention mask or quantization is
    involved, the loop runs those; otherwise the cell is composed (_Recurrent's loop)."""
    GATES, STATES = 4, 2

    def _fused(self, x: Array, mask: Array | None):
        if mask is not None or self.qat is not None or any(
                isinstance(self.params[k], quant.AffineQuantized) for k in self.QUANT_WEIGHTS):
            return None
        return fused.lstm_kernels(x)

    def forward(self, x: Array, fc: ForwardContext) -> Array:
        B, T, _ = x.shape
        kernels = self._fused(x, _sequence_mask(self, fc, B, T))
        self.fused_loop = kernels is not None
        if kernels is None:
            return super().forward(x, fc)
        xp, p, H = self.xp, self.params, self.H
        ax = linear.project(self, "weight_ih", x)                    # [B, T, 4H]
        if "bias_ih" in p:
            ax = ax + p["bias_ih"]
        hs = xp.empty((B, T, H), dtype=x.dtype)
        hprev = xp.empty((B, T, H), dtype=x.dtype)                   # h before each step (weight_hh's gradient)
        hprev[:, 0] = 0
        cs = xp.zeros((T + 1, B, H), dtype=x.dtype)                  # c before each step, and the last
        gates = xp.empty((T, 5, B, H), dtype=x.dtype)                # i, f, g, o, tanh(c) of each step
        for t in range(T):
            mm = linear.project(self, "weight_hh", hprev[:, t])
            kernels.lstm_step(ax[:, t], mm, p.get("bias_hh"), cs[t], cs[t + 1], gates[t], hs[:, t],
                              hprev[:, t + 1] if t + 1 < T else None)
        self.x, self.mask, self.hprev, self.cs, self.gates = x, None, hprev, cs, gates
        return hs if self.seqs else xp.ascontiguousarray(hs[:, -1])

    def backward(self, dy: Array) -> Array:
        if not self.fused_loop:
            return super().backward(dy)
        kernels = fused.lstm_kernels(self.x)
        xp, x, p, H = self.xp, self.x, self.params, self.H
        B, T, F = x.shape
        dy = xp.ascontiguousarray(dy)           # (a combining layer passes views; the kernels read rows)
        dax = xp.empty((B, T, 4 * H), dtype=x.dtype)                 # da of every step (= d ah for an LSTM)
        d1 = [xp.empty((B, H), dtype=x.dtype) for _ in range(2)]    # the cell state's gradient, two buffers
        mm = None
        for t in reversed(range(T)):
            kernels.lstm_step_back(mm, None if self.seqs or t < T - 1 else dy, dy[:, t] if self.seqs else None,
                                   self.gates[t], self.cs[t], None if t == T - 1 else d1[t % 2], dax[:, t],
                                   d1[(t + 1) % 2])
            if t:
                mm = ops.matmul(dax[:, t], p["weight_hh"])
        dax2 = dax.reshape(B * T, 4 * H)
        if self.trains("weight_ih"):
            self.grads["weight_ih"] += ops.grad_matmul(dax2.T, x.reshape(B * T, F))
        if self.trains("weight_hh"):
            self.grads["weight_hh"] += ops.grad_matmul(dax2.T, self.hprev.reshape(B * T, H))
        if self.trains("bias_ih"):
            self.grads["bias_ih"] += ops.grad_sum(dax2, axis=0)
        if self.trains("bias_hh"):
            self.grads["bias_hh"] += ops.grad_sum(dax2, axis=0)
        return ops.matmul(dax2, p["weight_ih"]).reshape(B, T, F)

    def cell(self, ax: Array, ah: Array, state: tuple[Array, ...]) -> tuple[tuple[Array, ...], Any]:
        H = self.H
        a = ax + ah
        i = ops.sigmoid(a[:, :H])
        f = ops.sigmoid(a[:, H:2 * H])
        g = ops.tanh(a[:, 2 * H:3 * H])
        o = ops.sigmoid(a[:, 3 * H:])
        c_prev = state[1]
        c = f * c_prev + i * g
        tc = ops.tanh(c)
        return (o * tc, c), (i, f, g, o, tc, c_prev)

    def cell_back(self, dstate: list[Array], cache: Any) -> tuple[Array, Array, tuple[Array | int, ...]]:
        i, f, g, o, tc, c_prev = cache
        dh, dc = dstate
        dc = dc + dh * o * (1 - tc * tc)
        da = self.xp.concatenate([dc * g * i * (1 - i),
                                  dc * c_prev * f * (1 - f),
                                  dc * i * (1 - g * g),
                                  dh * tc * o * (1 - o)], axis=1)
        return da, da, (0, dc * f)


@register("gru")
class GRU(_Recurrent):
    """r = sig(a_r), z = sig(a_z) with a = W_i. x + b_i. + W_h. h + b_h.;
    n = tanh(W_in x + b_in + r (W_hn h + b_hn)); h' = (1 - z) n + z h."""
    GATES, STATES = 3, 1

    def cell(self, ax: Array, ah: Array, state: tuple[Array, ...]) -> tuple[tuple[Array, ...], Any]:
        H = self.H
        h_prev = state[0]
        r = ops.sigmoid(ax[:, :H] + ah[:, :H])
        z = ops.sigmoid(ax[:, H:2 * H] + ah[:, H:2 * H])
        hn = ah[:, 2 * H:]
        n = ops.tanh(ax[:, 2 * H:] + r * hn)
        return ((1 - z) * n + z * h_prev,), (r, z, n, hn, h_prev)

    def cell_back(self, dstate: list[Array], cache: Any) -> tuple[Array, Array, tuple[Array | int, ...]]:
        r, z, n, hn, h_prev = cache
        dh = dstate[0]
        dan = dh * (1 - z) * (1 - n * n)
        dar = dan * hn * r * (1 - r)
        daz = dh * (h_prev - n) * z * (1 - z)
        cat = self.xp.concatenate
        return cat([dar, daz, dan], axis=1), cat([dar, daz, dan * r], axis=1), (dh * z,)

"""Finite-difference gradient checks for layers and networks, in float64.

`check(layers, input_shape)` builds a float64 network from layer configs, runs forward and
backward with a random upstream gradient dy, and compares the analytic input gradient and every
parameter gradient with central differences of L = sum(y * dy). Randomness inside the network
(dropout, gumbel) is frozen by restoring the RNG counter before each forward.
"""
from __future__ import annotations

import numpy as np

import loom

STEP = 1e-5
TOL = 1e-6
FLOOR = 1e-3     # tensors whose gradients are all below this are compared absolutely
MAX_ENTRIES = 150  # entries probed per tensor (a seeded random subset of larger tensors)


def make_net(layers, input_shape, seed=0, input_dtype=None, **extra):
    cfg = {"loom": 1, "dtype": "float64", "seed": seed, "input": {"shape": list(input_shape)}, "layers": layers}
    if input_dtype:
        cfg["input"]["dtype"] = input_dtype
    cfg.update(extra)
    return loom.Network.from_config(cfg)


def rel_error(analytic, numeric) -> float:
    scale = max(np.max(np.abs(analytic)), np.max(np.abs(numeric)), FLOOR)
    return float(np.max(np.abs(analytic - numeric)) / scale)


def check(layers, input_shape, *, batch=2, seed=0, training=False, x=None, attention_mask=None,
          tol=TOL, input_dtype=None, net=None):
    """Assert analytic == numeric gradients; return the network (for further checks)."""
    rng = np.random.default_rng(seed)
    net = net or make_net(layers, input_shape, seed=seed, input_dtype=input_dtype)
    net.train(training)
    if x is None:
        x = rng.normal(size=(batch, *input_shape))
    counter = net.rng_counter

    def loss():
        net.rng_counter = counter
        return float(np.sum(net.forward(x, attention_mask=attention_mask) * dy))

    net.rng_counter = counter
    y = net.forward(x, attention_mask=attention_mask)
    dy = np.random.default_rng([seed, 1]).normal(size=y.shape)   # its own stream: never equal to x
    net.zero_grad()
    dx = net.backward(dy)
    analytic = {name: g.copy() for name, g in net.gradients().items()}

    targets = dict(net.parameters())
    if np.issubdtype(x.dtype, np.floating):
        targets = {"input": x, **targets}
        analytic["input"] = dx
    failures = []
    for name, arr in targets.items():
        flat = arr.reshape(-1)
        idx = np.arange(flat.size)
        if flat.size > MAX_ENTRIES:
            idx = rng.choice(flat.size, MAX_ENTRIES, replace=False)
        numeric = np.zeros(len(idx))
        for j, i in enumerate(idx):
            old = flat[i]
            flat[i] = old + STEP
            up = loss()
            flat[i] = old - STEP
            down = loss()
            flat[i] = old
            numeric[j] = (up - down) / (2 * STEP)
        err = rel_error(analytic[name].reshape(-1)[idx], numeric)
        if not err < tol:
            failures.append(f"{name}: relative error {err:.3g}")
    assert not failures, "gradient check failed: " + "; ".join(failures)
    return net

"""The same computation on the CPU and on the GPU, as (what, gpu result, cpu result) triples: every
layer sample's forward, gradients and buffers; each loss; optimizer steps. The fast-mode tolerance
tests and the deterministic-mode bit tests compare these with their own rule."""
import numpy as np
from catalogue import config

import loom
from loom import backend
from loom.nn import losses, optim


def layer_results(name, layers, shape, idt, training, dtype):
    cfg = config(layers, shape, idt, dtype=dtype)
    cpu = loom.Network.from_config(cfg).train(training)
    gpu = loom.Network.from_config(cfg).to("cuda").train(training)
    assert gpu.device == "cuda"
    rng = np.random.default_rng(7)
    x = rng.integers(0, 10, size=(3, *shape)) if idt else rng.normal(size=(3, *shape)).astype(dtype)
    y = cpu(x)
    out = [(f"{name} forward", gpu(x), y)]
    dy = np.random.default_rng(8).normal(size=y.shape).astype(dtype)
    dx_cpu, dx_gpu = cpu.backward(dy), gpu.backward(dy)
    if dx_cpu is not None:
        out.append((f"{name} input gradient", dx_gpu, dx_cpu))
    out += [(f"{name} gradient {k}", gpu.gradients()[k], g) for k, g in cpu.gradients().items()]
    out += [(f"{name} buffer {k}", gpu.buffers()[k], b) for k, b in cpu.buffers().items()]
    return out


def loss_results(name, dtype):
    """[(value), (gradient)] of loss `name` on fixed inputs of `dtype`."""
    rng = np.random.default_rng(3)
    pred = rng.normal(size=(6, 5))
    if name in ("cross_entropy", "nll"):
        target = rng.integers(0, 5, 6)
    elif name == "binary_cross_entropy":
        target = rng.integers(0, 2, (6, 5)).astype(dtype)
    elif name == "kl_div":
        t = rng.random((6, 5))
        target = (t / t.sum(axis=1, keepdims=True)).astype(dtype)
        pred = pred - np.log(np.exp(pred).sum(axis=1, keepdims=True))
    else:
        target = rng.normal(size=(6, 5)).astype(dtype)
    pred = pred.astype(dtype)
    fn = losses.build(name)
    cuda = backend.get("cuda")
    v_cpu, g_cpu = fn(pred, target)
    v_gpu, g_gpu = fn(cuda.asarray(pred), cuda.asarray(target))
    return [(f"{name} value", v_gpu, v_cpu), (f"{name} gradient", g_gpu, g_cpu)]


def optimizer_results(kind, dtype, steps=4):
    """Parameters after `steps` steps of optimizer `kind` with clip_norm and a cosine schedule."""
    cuda = backend.get("cuda")
    rng = np.random.default_rng(4)
    p = {"w": rng.normal(size=(4, 3)).astype(dtype), "b": rng.normal(size=3).astype(dtype)}
    spec = {"type": kind, "lr": 0.01, "clip_norm": 0.5, "schedule": {"type": "cosine", "steps": 10}}
    p_gpu = {k: cuda.asarray(v) for k, v in p.items()}
    o_cpu, o_gpu = optim.build(spec, p), optim.build(spec, p_gpu)
    for _ in range(steps):
        g = {k: rng.normal(size=v.shape).astype(dtype) for k, v in p.items()}
        o_cpu.step(g)
        o_gpu.step({k: cuda.asarray(v) for k, v in g.items()})
    return [(f"{kind} {k}", p_gpu[k], p[k]) for k in p]


def host(a):
    return backend.get("cuda").to_numpy(a) if not isinstance(a, (np.ndarray, np.generic)) else np.asarray(a)


def same_bits(gpu, cpu, what):
    """gpu and cpu hold the same bits (NaN payloads aside), or an error naming the first differences."""
    g, c = host(gpu), np.asarray(cpu)
    assert g.dtype == c.dtype and g.shape == c.shape, f"{what}: {g.dtype}{g.shape} vs {c.dtype}{c.shape}"
    if g.dtype.kind == "f":          # NaN payloads are not part of the contract; NaN-ness is
        g, c = np.where(np.isnan(g), np.nan, g).astype(g.dtype), np.where(np.isnan(c), np.nan, c).astype(c.dtype)
    if np.ascontiguousarray(g).tobytes() != np.ascontiguousarray(c).tobytes():
        bad = np.flatnonzero(g.reshape(-1) != c.reshape(-1))
        raise AssertionError(f"{what}: {bad.size} of {c.size} elements differ, first at {bad[:3]}: "
                             f"{g.reshape(-1)[bad[:3]]} vs {c.reshape(-1)[bad[:3]]}")

"""Gradient checks on randomly composed networks: seeded loops draw a layer stack that fits the
shapes (images -> conv/pool, sequences -> recurrent/attention/conv1d, vectors -> everything else),
then every input and parameter gradient is compared with finite differences in float64."""
import gradcheck
import numpy as np
import pytest

ACTS = ["relu", "tanh", "gelu", "silu", "sigmoid", "elu", "softplus", "mish", "linear"]


def _vector_layer(r, f):
    """One layer for a [f] input; returns (config, new width)."""
    kind = r.choice(["dense", "activation", "layer_norm", "rms_norm", "batch_norm", "swiglu", "softmax",
                     "kmeans", "residual", "parallel_add", "parallel_concat", "filter", "dropout"])
    units = int(r.integers(2, 6))
    if kind == "dense":
        return {"type": "dense", "units": units, "activation": str(r.choice(ACTS))}, units
    if kind == "activation":
        return {"type": "activation", "fn": str(r.choice(ACTS))}, f
    if kind in ("layer_norm", "rms_norm", "batch_norm"):
        return {"type": kind}, f
    if kind == "swiglu":
        return {"type": "swiglu", "hidden": units}, f
    if kind == "dropout":
        return {"type": "dropout", "rate": 0.3}, f
    if kind == "softmax":
        variant = str(r.choice(["standard", "temperature", "sparsemax", "entmax", "mixture"]))
        return {"type": "softmax", "variant": variant, "temperature": float(r.choice([0.5, 1.0, 2.0]))}, f
    if kind == "kmeans":
        return {"type": "kmeans", "clusters": units, "output": "features"}, f
    if kind == "residual":
        return {"type": "residual", "layers": [{"type": "dense", "units": f, "activation": "tanh"}]}, f
    if kind == "parallel_add":
        return {"type": "parallel", "combine": "add", "branches": [{"type": "dense", "units": units},
                                                                   {"type": "dense", "units": units, "activation": "relu"}]}, units
    if kind == "parallel_concat":
        return {"type": "parallel", "branches": [{"type": "dense", "units": units}, {"type": "activation", "fn": "tanh"}]}, units + f
    return {"type": "parallel", "combine": "filter", "top_k": int(r.integers(1, 3)),
            "branches": [{"type": "dense", "units": units} for _ in range(3)]}, units


def _sequence_layer(r, t, f):
    kind = r.choice(["lstm", "gru", "rnn", "attention", "conv1d", "dense"])
    h = int(r.integers(2, 5))
    if kind in ("lstm", "gru", "rnn"):
        return {"type": kind, "hidden": h, "return_sequences": True}, (t, h)
    if kind == "attention":
        heads = int(r.choice([1, 2]))
        return {"type": "multi_head_attention", "heads": heads, "head_dim": 2, "causal": bool(r.integers(2)),
                "rope": {"theta": 100.0} if r.integers(2) else None}, (t, f)
    if kind == "conv1d":   # a [t, f] sample read as t channels of length f
        return {"type": "conv1d", "filters": t, "kernel_size": 2, "padding": "same", "activation": "tanh"}, (t, f)
    return {"type": "dense", "units": h, "activation": "gelu"}, (t, h)


def _image_layer(r, shape):
    c, h, w = shape
    kind = r.choice(["conv2d", "conv_transpose2d", "pool", "batch_norm"])
    if kind == "conv2d":
        filters = int(r.choice([2, 4]))
        return {"type": "conv2d", "filters": filters, "kernel_size": 3, "padding": "same",
                "groups": 2 if c % 2 == 0 and filters % 2 == 0 else 1, "activation": str(r.choice(ACTS))}, (filters, h, w)
    if kind == "conv_transpose2d":
        return {"type": "conv_transpose2d", "filters": 2, "kernel_size": 2}, (2, h + 1, w + 1)
    if kind == "pool" and h >= 4:
        return {"type": str(r.choice(["max_pool2d", "avg_pool2d"])), "pool_size": 2}, (c, h // 2, w // 2)
    return {"type": "batch_norm"}, shape


def random_network(seed):
    r = np.random.default_rng(seed)
    start = r.choice(["vector", "sequence", "image"])
    layers = []
    if start == "image":
        shape = (2, 5, 5)
        for _ in range(int(r.integers(1, 3))):
            layer, shape = _image_layer(r, shape)
            layers.append(layer)
        layers.append({"type": "flatten"})
        f, input_shape = int(np.prod(shape)), [2, 5, 5]
    elif start == "sequence":
        shape = (4, 3)
        for _ in range(int(r.integers(1, 3))):
            layer, shape = _sequence_layer(r, *shape)
            layers.append(layer)
        layers.append({"type": "flatten"})
        f, input_shape = int(np.prod(shape)), [4, 3]
    else:
        f = input_shape = 4
        input_shape = [4]
    for _ in range(int(r.integers(1, 4))):
        layer, f = _vector_layer(r, f)
        layers.append(layer)
    return layers, input_shape


@pytest.mark.parametrize("seed", range(30))
def test_random_network_gradients(seed):
    layers, shape = random_network(seed)
    gradcheck.check(layers, shape, batch=3, seed=seed, training=bool(seed % 2))

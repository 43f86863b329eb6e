"""kmeans: gradients in both output modes, forward values against the definition, training."""
import gradcheck
import numpy as np
import pytest

import loom


def km(clusters, output="probabilities", temperature=1.0):
    return {"type": "kmeans", "clusters": clusters, "output": output, "temperature": temperature}


def reference(x, c, temperature):
    """p and sum_k p_k c_k straight from the definition: softmax(-||x - c_k||^2 / T)."""
    d = ((x[..., None, :] - c) ** 2).sum(-1)
    e = np.exp(-(d - d.min(-1, keepdims=True)) / temperature)
    p = e / e.sum(-1, keepdims=True)
    return p, p @ c


@pytest.mark.parametrize("output", ["probabilities", "features"])
@pytest.mark.parametrize("temperature", [1.0, 2.5, 0.3])
def test_gradients(output, temperature):
    net = gradcheck.check([km(4, output, temperature)], [3], batch=5, seed=1)
    assert np.any(net.gradients()["layers.0.centroids"] != 0)


@pytest.mark.parametrize("output", ["probabilities", "features"])
def test_gradients_rank2_input_inside_a_network(output):
    layers = [{"type": "dense", "units": 3, "activation": "tanh"}, km(5, output, 0.7),
              {"type": "dense", "units": 2}]
    net = gradcheck.check(layers, [4, 6], batch=2, seed=2)
    assert net.parameters()["layers.1.centroids"].shape == (5, 3)


@pytest.mark.parametrize("output", ["probabilities", "features"])
def test_forward_matches_definition_and_shapes(output):
    net = gradcheck.make_net([km(3, output, 1.7)], [2, 4])
    x = np.random.default_rng(0).normal(size=(5, 2, 4))
    y = net(x)
    p, f = reference(x, net.parameters()["layers.0.centroids"], 1.7)
    if output == "probabilities":
        assert y.shape == (5, 2, 3) and net.output_spec.shape == (2, 3)
        np.testing.assert_allclose(y, p, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(y.sum(-1), 1.0, rtol=1e-14)
    else:
        assert y.shape == x.shape and net.output_spec.shape == (2, 4)
        np.testing.assert_allclose(y, f, rtol=1e-12, atol=1e-14)


def test_far_points_stay_finite():
    # huge distances: a naive exp(-d) underflows to 0/0; the shifted softmax must not
    net = gradcheck.make_net([km(3)], [2])
    x = np.array([[1e3, -1e3], [0.0, 0.0]])
    y = net(x)
    assert np.all(np.isfinite(y)) and np.allclose(y.sum(-1), 1.0)
    c = net.parameters()["layers.0.centroids"]
    assert np.argmax(y[0]) == np.argmin(((x[0] - c) ** 2).sum(-1))


def test_float32():
    for output in ("probabilities", "features"):
        cfg = {"loom": 1, "dtype": "float32", "input": {"shape": [3]}, "layers": [km(4, output, 0.5)]}
        net = loom.Network.from_config(cfg)
        x = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
        y = net(x)
        assert y.dtype == np.float32
        dx = net.backward(np.ones_like(y))
        assert dx.dtype == np.float32 and net.gradients()["layers.0.centroids"].dtype == np.float32
        p, f = reference(x.astype(np.float64), net.parameters()["layers.0.centroids"].astype(np.float64), 0.5)
        np.testing.assert_allclose(y, p if output == "probabilities" else f, atol=1e-5)


def test_centroids_learn_two_clusters():
    rng = np.random.default_rng(0)
    centers = np.array([[3.0, 3.0], [-3.0, 1.0]])
    x = np.concatenate([centers[0] + 0.3 * rng.normal(size=(40, 2)), centers[1] + 0.3 * rng.normal(size=(40, 2))])
    net = gradcheck.make_net([km(2, "features")], [2], seed=3)
    c = net.parameters()["layers.0.centroids"]
    g = net.gradients()["layers.0.centroids"]

    def step():
        net.zero_grad()
        y = net(x)
        net.backward(2 * (y - x) / len(x))   # loss = mean over points of ||x - reconstruction||^2
        return float(np.sum((y - x) ** 2) / len(x))

    first = step()
    for _ in range(40):
        c -= 0.2 * g
        last = step()
    assert last < 0.1 * first, (first, last)
    # each cluster centre now has a centroid close to it
    dist = np.sqrt(((centers[:, None] - c[None]) ** 2).sum(-1))
    assert np.all(dist.min(axis=1) < 0.5), (c, dist)


def test_config_and_errors():
    net = gradcheck.make_net([km(3)], [4])
    assert list(net.parameters()) == ["layers.0.centroids"]
    assert net.root.children["layers.0"].describe() == "clusters=3, output=probabilities, temperature=1"
    with pytest.raises(loom.ConfigError) as err:
        gradcheck.make_net([km(2)], [3], input_dtype="int32")
    assert str(err.value).startswith("layers[0]: kmeans needs floating-point input")

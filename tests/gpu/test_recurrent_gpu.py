"""The GPU's fused LSTM steps (loom/backend/cuda/recurrent.py, one launch a step each way) against the
CPU's composed cell: the same bits in deterministic mode (mathlib's transcendentals, the composition's
operations in its order), forward, input gradient and every weight gradient, float32 and float64, with
and without biases and return_sequences, sizes that leave a partial block; fast mode within float32
rounding of the composition. tests/nn/layers/test_recurrent.py holds the loop's bookkeeping to the
composed loop's bits on the CPU."""
import numpy as np
import pytest

import loom

from .cpu_gpu import same_bits

pytestmark = pytest.mark.gpu


def _run(cfg, x, dy, device):
    net = loom.Network.from_config(cfg).to(device)
    be = net.backend
    y = net.forward(be.asarray(x))
    wide = be.xp.zeros(dy.shape[:-1] + (2 * dy.shape[-1],), dtype=dy.dtype)
    wide[..., ::2] = be.asarray(dy)
    dx = net.backward(wide[..., ::2])           # a strided view, as a combining layer passes
    if device == "cuda":
        lstm = dict(net.root.walk())["layers.0"]
        assert lstm.fused_loop, "the fused LSTM loop did not run on the GPU"
    return be.to_numpy(y), be.to_numpy(dx), {k: be.to_numpy(v) for k, v in net.gradients().items()}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("seqs, bias, batch, hidden", [
    pytest.param(True, True, 5, 37, marks=pytest.mark.smoke), (False, True, 64, 256), (True, False, 3, 8),
    (False, False, 1, 300)])
def test_fused_lstm_has_the_cpus_bits(dtype, seqs, bias, batch, hidden):
    cfg = {"loom": 1, "dtype": dtype, "seed": hidden, "input": {"shape": [9, 7]},
           "layers": [{"type": "lstm", "hidden": hidden, "return_sequences": seqs, "bias": bias}]}
    rng = np.random.default_rng(batch)
    x = (rng.standard_normal((batch, 9, 7)) * 3).astype(dtype)
    dy = rng.standard_normal((batch, 9, hidden) if seqs else (batch, hidden)).astype(dtype)
    with loom.deterministic(True):
        cpu, gpu = _run(cfg, x, dy, "cpu"), _run(cfg, x, dy, "cuda")
    for what, a, b in (("output", gpu[0], cpu[0]), ("input gradient", gpu[1], cpu[1])):
        same_bits(a, b, what)
    for name in cpu[2]:
        same_bits(gpu[2][name], cpu[2][name], name)


@pytest.mark.parametrize("seqs", [True, False])
def test_fused_lstm_fast_mode_follows_the_composition(seqs):
    cfg = {"loom": 1, "seed": 2, "input": {"shape": [16, 12]},
           "layers": [{"type": "lstm", "hidden": 64, "return_sequences": seqs}]}
    rng = np.random.default_rng(3)
    x = rng.standard_normal((8, 16, 12)).astype(np.float32)
    dy = rng.standard_normal((8, 16, 64) if seqs else (8, 64)).astype(np.float32)
    with loom.deterministic(False):
        cpu, gpu = _run(cfg, x, dy, "cpu"), _run(cfg, x, dy, "cuda")
    np.testing.assert_allclose(gpu[0], cpu[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(gpu[1], cpu[1], rtol=1e-3, atol=1e-4)
    for name in cpu[2]:
        np.testing.assert_allclose(gpu[2][name], cpu[2][name], rtol=1e-3, atol=1e-4, err_msg=name)

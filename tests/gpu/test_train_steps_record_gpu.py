"""Networks whose steps join many arrays train on the GPU in the default (deterministic) mode (issue
61): every train step records as a dispatch chain, so nothing in it copies from the host (CuPy joins
more than 8 arrays with an address table it copies from the host: the recurrent backward writes its
steps into one array, parallel layers join their branches through ops.stack / ops.concatenate), and
the trained weights have the CPU's bits. A step that cannot be recorded raises (strict, the default)."""
import json

import numpy as np
import pytest
from catalogue import SAMPLES, config

import loom

from .cpu_gpu import same_bits

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("sequences", [False, True])
@pytest.mark.parametrize("kind", [pytest.param("lstm", marks=pytest.mark.smoke), "gru", "rnn"])
def test_recurrent_network_trains_with_the_cpus_bits(kind, sequences):
    cfg = {"loom": 1, "input": {"shape": [12, 5]},
           "layers": [{"type": kind, "hidden": 16, "return_sequences": sequences}, {"type": "flatten"},
                      {"type": "dense", "units": 3}]}
    _trains_alike(cfg, (12, 5), len(kind) + sequences, kind)


@pytest.mark.parametrize("fast", [False, True])
def test_the_issues_lstm_trains_from_the_command_line_with_every_step_recorded(tmp_path, capsys, fast):
    """Issue 61's report at its benchmark's LSTM shape (sequence 64, hidden 256, batch 64): `loom train
    lstm.json --data d.npz --device cuda` (an lstm layer, then a dense one) exits 0 in the default mode, where
    a step that cannot be recorded raises, and with --fast; fast mode would fall back to eager steps with a
    log line only, so its TrainStep is checked to have recorded every step at this shape too."""
    from cli_run import loom as run

    from loom.nn import losses, optim
    from loom.nn.chain import TrainStep
    cfg = {"loom": 1, "input": {"shape": [64, 32]},
           "layers": [{"type": "lstm", "hidden": 256}, {"type": "dense", "units": 3}]}
    rng = np.random.default_rng(61)
    X, Y = rng.standard_normal((128, 64, 32)).astype(np.float32), rng.integers(0, 3, 128)
    (tmp_path / "lstm.json").write_text(json.dumps(cfg))
    np.savez(tmp_path / "d.npz", x=X, y=Y)
    code, out, err = run(capsys, "train", tmp_path / "lstm.json", "--data", tmp_path / "d.npz", "--out",
                         tmp_path / "m", "--device", "cuda", "--epochs", "1", "--batch-size", "64", "--quiet",
                         *(["--fast"] if fast else []))
    assert code == 0, err
    with loom.deterministic(not fast):
        net = loom.Network.from_config(cfg).to("cuda").train()
        step = TrainStep(net, losses.build("cross_entropy"), optim.build({"type": "adam"}, net.parameters()))
        for start in (0, 64, 0):
            step(X[start:start + 64], Y[start:start + 64])
        assert step.eager_reasons == {}, f"LSTM train step not recorded: {step.eager_reasons}"


@pytest.mark.parametrize("combine", ["concat", "add", "filter"])
def test_parallel_layer_of_ten_branches_trains_with_the_cpus_bits(combine):
    branches = [{"type": "dense", "units": 4, "activation": "tanh"} for _ in range(10)]
    layer = {"type": "parallel", "combine": combine, "branches": branches}
    if combine == "filter":
        layer["top_k"] = 3
    cfg = {"loom": 1, "input": {"shape": [6]}, "layers": [layer, {"type": "dense", "units": 3}]}
    _trains_alike(cfg, (6,), 7, combine)


@pytest.mark.parametrize("name, layers, shape, idt", SAMPLES, ids=[s[0] for s in SAMPLES])
def test_every_catalogue_sample_trains_with_the_cpus_bits(name, layers, shape, idt):
    """Issue 61's rule: every layer family (each catalogue sample, then a dense layer over its flattened
    output, so that every network has weights to train and class targets) trains on CUDA through
    loom.train in the default mode, every step a recorded dispatch chain, with the CPU's bits."""
    cfg = config(layers + [{"type": "flatten"}, {"type": "dense", "units": 3}], shape, idt)
    vocab = layers[0].get("vocab_size") if idt else None
    _trains_alike(cfg, tuple(shape), sum(map(ord, name)), name, vocab)


@pytest.mark.parametrize("name", ["dense", "conv2d", "lstm", "multi_head_attention", "swiglu", "batch_norm"])
def test_bf16_training_has_the_cpus_bits(name):
    """bf16 mixed precision (every product's operands rounded to bfloat16) trains on CUDA, each step a
    recorded chain, with the CPU's bits."""
    _, layers, shape, idt = next(s for s in SAMPLES if s[0] == name)
    cfg = config(layers + [{"type": "flatten"}, {"type": "dense", "units": 3}], shape, idt)
    _trains_alike(cfg, tuple(shape), sum(map(ord, name)), f"bf16 {name}", precision="bf16")


def _trains_alike(cfg, shape, seed, what, vocab=None, precision="float32"):
    rng = np.random.default_rng(seed)
    X = (rng.integers(0, vocab, (64,) + shape) if vocab else rng.standard_normal((64,) + shape).astype(np.float32))
    Y = rng.integers(0, 3, 64)
    trained = {}
    with loom.deterministic(True):
        for device in ("cpu", "cuda"):
            net = loom.Network.from_config(cfg)
            loom.train(net, X, Y, device=device, epochs=2, batch_size=16, shuffle=False, verbose=False,
                       precision=precision)
            trained[device] = net.to("cpu").state_dict()
    assert trained["cpu"].keys() == trained["cuda"].keys()
    for name, value in trained["cpu"].items():
        same_bits(trained["cuda"][name], value, f"{what} {name}")


@pytest.mark.parametrize("name, layers, shape, idt", SAMPLES, ids=[s[0] for s in SAMPLES])
def test_every_family_records_in_fast_mode_and_as_an_inference_chain(name, layers, shape, idt):
    """Issue 61's rule in fast mode too (which would fall back to eager steps silently, with a log):
    every catalogue sample's train step records, and its eval forward records through net.compile() in
    both modes, with the eager forward's result (its bits in deterministic mode)."""
    from loom.nn import losses, optim
    from loom.nn.chain import TrainStep
    cfg = config(layers + [{"type": "flatten"}, {"type": "dense", "units": 3}], shape, idt)
    rng = np.random.default_rng(sum(map(ord, name)))
    vocab = layers[0].get("vocab_size") if idt else None
    X = rng.integers(0, vocab, (16,) + tuple(shape)) if vocab else rng.standard_normal((16,) + tuple(shape)).astype(
        np.float32)
    Y = rng.integers(0, 3, 16)
    with loom.deterministic(False):
        net = loom.Network.from_config(cfg).to("cuda").train()
        step = TrainStep(net, losses.build("cross_entropy"), optim.build({"type": "adam"}, net.parameters()))
        for _ in range(3):
            step(X, Y)
        assert step.eager_reasons == {}, f"{name}: fast-mode train step not recorded: {step.eager_reasons}"
    for deterministic in (True, False):
        with loom.deterministic(deterministic):
            net = loom.Network.from_config(cfg).to("cuda").eval()
            eager = net.backend.to_numpy(net.forward(net.backend.asarray(X)))
            net.compile()
            outs = [net.backend.to_numpy(net(X)) for _ in range(3)]        # eager, recorded, replayed
            assert net._compiled.eager_reasons == {}, f"{name}: forward not recorded: {net._compiled.eager_reasons}"
            for out in outs:
                if deterministic:
                    same_bits(out, eager, f"{name} compiled forward")
                else:
                    np.testing.assert_allclose(out, eager, rtol=1e-5, atol=1e-6)

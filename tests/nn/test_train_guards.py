"""Training cannot silently do nothing: the default loss from the targets, losses that cannot fit
their targets, non-finite data and losses, valid JSON, error paths named as the user set them."""
import json
import math

import numpy as np
import pytest

import loom
from loom import atomic
from loom.errors import ConfigError, NumericError
from loom.nn import finite_guard, loss_choice, losses
from loom.nn.progress import Progress
from loom.nn.train import train

REGRESSION = {"loom": 1, "input": {"shape": [4]},
              "layers": [{"type": "dense", "units": 16, "activation": "relu"}, {"type": "dense", "units": 1}]}
CLASSES = {"loom": 1, "input": {"shape": [4]},
           "layers": [{"type": "dense", "units": 8, "activation": "relu"}, {"type": "dense", "units": 3}]}


def regression_data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    return X, (X @ np.array([1.0, -2.0, 0.5, 3.0]))[:, None]


def test_regression_default_loss_is_mse_and_learns(capsys):
    X, Y = regression_data()
    net = loom.Network.from_config(REGRESSION)
    history = train(net, X, Y, epochs=5, optimizer={"type": "adam", "lr": 0.01}, verbose=True)
    assert "loss mse (default for numeric targets float32 [N, 1]" in capsys.readouterr().err
    assert history["loss"][-1] < history["loss"][0] * 0.8      # it learns: the bug trained nothing at 0.0
    assert history["loss"][0] > 0


def test_single_column_targets_fit_a_single_output():
    X, Y = regression_data()
    a, b = loom.Network.from_config(REGRESSION), loom.Network.from_config(REGRESSION)
    ha = train(a, X, Y, epochs=2, verbose=False)
    hb = train(b, X, Y[:, 0], epochs=2, verbose=False)                  # [N] against output [1]
    assert ha["loss"] == hb["loss"]


@pytest.mark.parametrize("Y, expected", [
    (np.array([0, 2, 1, 1]), "cross_entropy"),
    (np.eye(3)[[0, 2, 1, 1]], "cross_entropy"),
    (np.full((4, 3), 0.25), "mse"),                    # rows not summing to one: numbers
    (np.arange(12.0).reshape(4, 3), "mse"),
])
def test_infer(Y, expected):
    assert loss_choice.infer(Y, (3,))[0] == expected


def test_infer_refuses_targets_that_fit_nothing():
    with pytest.raises(ConfigError, match=r"loss: no default loss fits targets float64 \[N, 5\].*output \[3\]"):
        loss_choice.infer(np.zeros((4, 5)), (3,))


def test_cross_entropy_over_one_output_is_refused():
    X, Y = regression_data()
    net = loom.Network.from_config(REGRESSION)
    with pytest.raises(ConfigError, match=r"^loss: cross_entropy cannot learn .* single output .* use mse"):
        train(net, X, Y, loss="cross_entropy", verbose=False)
    block = dict(REGRESSION, training={"loss": "cross_entropy"})
    with pytest.raises(ConfigError, match=r"^training\.loss: cross_entropy"):
        train(loom.Network.from_config(block), X, Y, verbose=False)


def test_mse_against_class_ids_suggests_cross_entropy():
    rng = np.random.default_rng(1)
    net = loom.Network.from_config(CLASSES)
    with pytest.raises(ConfigError, match=r"mse cannot learn from targets int64 \[N\].*\[N, 3\]; use cross_entropy"):
        train(net, rng.normal(size=(16, 4)), rng.integers(0, 3, 16), loss="mse", verbose=False)


def test_classification_default_and_explicit_agree():
    rng = np.random.default_rng(2)
    X, Y = rng.normal(size=(48, 4)), rng.integers(0, 3, 48)
    a, b = loom.Network.from_config(CLASSES), loom.Network.from_config(CLASSES)
    assert train(a, X, Y, epochs=2, verbose=False)["loss"] == \
        train(b, X, Y, epochs=2, loss="cross_entropy", verbose=False)["loss"]


def test_nan_input_is_named_before_training():
    X, Y = regression_data()
    X[5, 2] = np.nan
    net = loom.Network.from_config(REGRESSION)
    with pytest.raises(NumericError, match=r"^X: nan at sample 5, index \[2\]"):
        train(net, X, Y, verbose=False)
    Y[7, 0] = np.inf
    with pytest.raises(NumericError, match=r"^Y: inf at sample 7"):
        train(net, np.nan_to_num(X), Y, verbose=False)


def test_divergence_stops_at_the_first_bad_batch_and_names_the_layer():
    X, Y = regression_data(128)
    net = loom.Network.from_config(REGRESSION)
    with pytest.raises(NumericError, match=r"epoch \d+, batch \d+ is not finite; (first at layers\.\d|the update)"):
        train(net, X, Y * 1e3, optimizer={"type": "sgd", "lr": 1e3}, epochs=5, batch_size=16, verbose=False)


def test_the_named_batch_is_the_first_non_finite_one():
    """Replay from the epoch's start gives the same losses as the run itself: compare against a run
    with the guard off, recording each batch's loss through the step's running total."""
    X, Y = regression_data(128)
    opts = dict(optimizer={"type": "sgd", "lr": 300.0}, epochs=1, batch_size=16, verbose=False, shuffle=False)
    with pytest.raises(NumericError) as info:
        train(loom.Network.from_config(REGRESSION), X, Y * 10, **opts)
    named = int(str(info.value).split("batch ")[1].split(" ")[0])
    net = loom.Network.from_config(REGRESSION)
    first = None
    for b in range(8):
        h = train(net, X[b * 16:(b + 1) * 16], Y[b * 16:(b + 1) * 16] * 10, allow_nonfinite=True, **opts)
        if first is None and not math.isfinite(h["loss"][0]):
            first = b + 1
    assert first is not None and named == first


def test_allow_nonfinite_trains_on_and_writes_valid_json(tmp_path):
    X, Y = regression_data()
    X[0, 0] = np.nan
    net = loom.Network.from_config(REGRESSION)
    history = train(net, X, Y, epochs=2, verbose=False, allow_nonfinite=True)
    assert math.isnan(history["loss"][0])
    notes = atomic.write_json(tmp_path / "h.json", history.logs)
    assert notes and notes[0].startswith("loss[0]")
    text = (tmp_path / "h.json").read_text()
    assert "NaN" not in text and json.loads(text)["loss"][0] is None


def test_checkpoint_with_nan_history_is_valid_json(tmp_path):
    X, Y = regression_data()
    X[0, 0] = np.nan
    net = loom.Network.from_config(REGRESSION)
    train(net, X, Y, epochs=1, verbose=False, allow_nonfinite=True, checkpoint=tmp_path / "c.loom")
    raw = (tmp_path / "c.loom").read_bytes()
    assert b"NaN" not in raw


def test_schedule_error_named_where_it_was_set():
    X, Y = regression_data()
    net = loom.Network.from_config(REGRESSION)
    with pytest.raises(ConfigError, match=r"^schedule\.type"):
        train(net, X, Y, schedule={"type": "bogus"}, verbose=False)


def test_loss_error_from_bad_loss_name():
    with pytest.raises(ConfigError, match="unknown loss type"):
        losses.build("crossentropy")


def test_progress_bar_has_eta():
    class Tty:
        def __init__(self):
            self.text = ""

        def isatty(self):
            return True

        def write(self, s):
            self.text += s

        def flush(self):
            pass

    out = Tty()
    bar = Progress("epoch 1/1", 4, stream=out)
    bar.update(4, samples=128, loss=0.5)
    assert "ETA 0:00" in out.text and "samples/s" in out.text and "loss 0.5000" in out.text


@pytest.mark.parametrize("copy_ratio", [0, 10**9])
def test_replay_over_a_range_restores_momentum_dropout_and_batch_norm(monkeypatch, copy_ratio):
    """The GPU's path (the total read only at the epoch's end, the epoch searched by replay), run on
    the CPU: with momentum buffers, dropout's counter and batch-norm statistics to restore, the replay
    names the same batch and layer as checking every batch does. copy_ratio 0 copies the state at
    every epoch; 10**9 only at the first, so the replay runs the whole first epoch again."""
    cfg = {"loom": 1, "input": {"shape": [4]},
           "layers": [{"type": "dense", "units": 16, "activation": "relu"}, {"type": "batch_norm"},
                      {"type": "dropout", "rate": 0.2}, {"type": "dense", "units": 1}]}
    X, Y = regression_data(256)
    opts = dict(optimizer={"type": "sgd", "lr": 0.008, "momentum": 0.9}, epochs=8, batch_size=16, verbose=False)

    def message():
        with pytest.raises(NumericError) as info:
            train(loom.Network.from_config(cfg), X, Y * 10, **opts)
        return str(info.value)

    every_batch = message()
    assert "epoch 2, batch 12" in every_batch          # past the first epoch: the state to restore is not fresh
    real = finite_guard.Guard.__init__

    def device_like(self, *args, **kwargs):
        real(self, *args, **kwargs)
        self.host = False
    monkeypatch.setattr(finite_guard.Guard, "__init__", device_like)
    monkeypatch.setattr(finite_guard, "_EVERY", 3600.0)
    monkeypatch.setattr(finite_guard, "_COPY_RATIO", copy_ratio)
    assert message() == every_batch


def test_an_overflowing_last_update_is_caught():
    X, Y = regression_data(32)
    net = loom.Network.from_config(REGRESSION)
    with pytest.raises(NumericError, match=r"after epoch 1 parameter layers\.\d\.(weight|bias) holds"):
        train(net, X, Y * 1e10, optimizer={"type": "sgd", "lr": 1e30}, epochs=1, batch_size=32, verbose=False)


def test_resume_after_a_nan_epoch(tmp_path):
    """A checkpoint's history holds null for NaN; resuming reads it back as NaN."""
    X, Y = regression_data()
    X[0, 0] = np.nan
    net = loom.Network.from_config(REGRESSION)
    train(net, X, Y, epochs=1, verbose=False, allow_nonfinite=True, checkpoint=tmp_path / "c.loom")
    again = loom.Network.from_config(REGRESSION)
    history = train(again, X, Y, epochs=2, verbose=False, allow_nonfinite=True, resume=tmp_path / "c.loom")
    assert len(history["loss"]) == 2 and all(isinstance(v, float) and math.isnan(v) for v in history["loss"])


def test_float_class_ids_are_ids():
    rng = np.random.default_rng(5)
    X, ids = rng.normal(size=(32, 4)), rng.integers(0, 3, 32)
    a = train(loom.Network.from_config(CLASSES), X, ids, epochs=1, verbose=False)
    b = train(loom.Network.from_config(CLASSES), X, ids.astype(np.float64), epochs=1, verbose=False)
    assert a["loss"] == b["loss"]

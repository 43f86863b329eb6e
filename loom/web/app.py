"""What the browser page runs (in Pyodide, called from worker.js), and what `loom web build` runs
natively for the reference fingerprints: the same code on both sides.

The example networks train on the bundled digits (digits_split(0.2, seed 0)) with their config's
training block, for a given number of epochs, in deterministic mode; a run's result is the trained
weights' fingerprint (loom.verify.combined of the state dict), the held-out accuracy and confusion
matrix, the per-epoch losses and the time it took.
"""
from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from importlib import resources
from typing import Any

import numpy as np

from .. import datasets, mode, verify
from ..errors import ConfigError
from ..formats import from_bytes
from ..nn import Network
from ..nn.train import train as loom_train

MAX_EPOCHS = 1000          # the page's limit: training runs in the tab, with no way to stop it halfway
_MLP = {"loom": 1, "name": "digits-mlp", "seed": 0, "input": {"shape": [1, 8, 8]},
        "layers": [{"type": "flatten"}, {"type": "dense", "units": 64, "activation": "relu"},
                   {"type": "dense", "units": 10}],
        "training": {"loss": "cross_entropy", "optimizer": {"type": "adam", "lr": 0.003}, "batch_size": 32}}


def networks() -> dict[str, dict]:
    """The page's example networks by name; the first is the default."""
    convnet = json.loads(resources.files("loom.cli").joinpath("digits-convnet.json").read_text())
    return {"digits-convnet": convnet, "digits-mlp": copy.deepcopy(_MLP)}


class Session:
    """The page's state: the data split and the current network (trained here or loaded)."""

    def __init__(self):
        (self.x, self.y), (self.x_test, self.y_test) = datasets.digits_split(0.2, seed=0)
        self.net: Network | None = None

    def train(self, name: str, epochs: int, on_epoch: Callable[[dict], Any] | None = None) -> dict:
        """Train network `name` from its seed for `epochs` epochs; on_epoch gets {"epoch", "epochs",
        "loss", "seconds"} after each."""
        table = networks()
        if name not in table:
            raise ConfigError("network", f"unknown network {name!r}; expected one of {sorted(table)}")
        if not isinstance(epochs, int) or isinstance(epochs, bool) or not 1 <= epochs <= MAX_EPOCHS:
            raise ConfigError("epochs", f"expected an integer in 1..{MAX_EPOCHS}, got {epochs!r}")
        with mode.deterministic(True):
            self.net = Network.from_config(table[name])
            start = time.perf_counter()

            def report(epoch: int, logs: dict) -> None:
                if on_epoch is not None:
                    on_epoch({"epoch": epoch + 1, "epochs": epochs, "loss": float(logs["loss"]),
                              "seconds": time.perf_counter() - start})

            history = loom_train(self.net, self.x, self.y, epochs=epochs, verbose=False, callbacks=[report])
            seconds = time.perf_counter() - start
            result = self.evaluate()
        result.update(network=name, epochs=epochs, losses=[float(v) for v in history["loss"]], seconds=seconds,
                      samples_per_s=len(self.x) * epochs / seconds,
                      fingerprint=verify.combined(self.net.state_dict()))
        return result

    def evaluate(self) -> dict:
        """Held-out accuracy and confusion matrix (rows: true class, columns: predicted)."""
        net = self._require()
        predicted = np.argmax(net.eval().forward(self._fit(self.x_test)), axis=-1).reshape(-1)
        net.train()
        confusion = np.zeros((10, 10), np.int64)
        np.add.at(confusion, (self.y_test, predicted), 1)
        correct = int(np.trace(confusion))
        return {"accuracy": correct / len(self.y_test), "correct": correct, "total": len(self.y_test),
                "confusion": confusion.tolist()}

    def classify(self, pixels: list[float]) -> list[float]:
        """Class probabilities of one 8x8 image (64 values in [0, 1], row-major)."""
        net = self._require()
        if not self._takes_digits(net):
            raise ConfigError("network", f"this network takes {list(net.input_spec.shape)} and gives "
                                         f"{list(net.output_spec.shape)}, not an 8x8 digit and 10 classes")
        x = np.asarray(pixels, np.float32).reshape(1, 1, 8, 8)
        logits = net.eval().forward(self._fit(x)).reshape(-1).astype(np.float64)
        net.train()
        e = np.exp(logits - logits.max())
        return (e / e.sum()).tolist()

    def load(self, data: bytes) -> dict:
        """Make a Loom model file's network the current one; its summary, and the held-out accuracy
        when it takes the digits (an input of [1, 8, 8] or [64]) and has 10 outputs."""
        raw = data.to_bytes() if hasattr(data, "to_bytes") else bytes(data)    # a JS Uint8Array under Pyodide
        net = from_bytes(raw)
        self.net = net
        out: dict[str, Any] = {"summary": net.summary(), "fingerprint": verify.combined(net.state_dict())}
        if self._takes_digits(net):
            out.update(self.evaluate())
        return out

    def _require(self) -> Network:
        if self.net is None:
            raise ConfigError("network", "no network yet: train one or load a model file")
        return self.net

    def _fit(self, x: np.ndarray) -> np.ndarray:
        """x [n, 1, 8, 8] in the network's input shape ([n, 64] for a flat input)."""
        shape = tuple(self.net.input_spec.shape)
        return x.reshape((len(x),) + shape)

    @staticmethod
    def _takes_digits(net: Network) -> bool:
        return tuple(net.input_spec.shape) in ((1, 8, 8), (64,)) and tuple(net.output_spec.shape) == (10,)

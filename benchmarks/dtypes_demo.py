"""The demo model (the digits convnet of `loom demo`) in every numeric type: model-file bytes,
held-out accuracy, and max abs output (logit) difference from the float32 network.

float32 is the trained network; float64 is the same weights in a float64 network; every other type
is `net.quantize(type)` (per-channel scales; GEMM weights in the type, integer types run exact
integer GEMMs on int8-quantized activations). Run: .venv/bin/python benchmarks/dtypes_demo.py
For int8, int4, ternary and binary the last column is the held-out accuracy of the quantized network
after quantization-aware training: the float network fine-tuned QAT_EPOCHS epochs with "qat" set,
then quantized. Prints a Markdown table (pasted into docs/dtypes.md).
"""
import sys

import numpy as np

import loom
from loom import datasets, dtypes
from loom.cli.demo import demo_config
from loom.nn.train import predict, train

QAT_TYPES, QAT_EPOCHS = ("int8", "int4", "ternary", "binary"), 6


def qat_accuracy(net, dtype, data) -> float:
    (x_train, y_train), (x_test, y_test) = data
    cfg = {**net.config, "qat": {"dtype": dtype, "per": "channel"}}
    cfg["training"] = {**cfg["training"], "schedule": None, "optimizer": {"type": "adam", "lr": 1e-3}}
    tuned = loom.Network.from_config(cfg)
    tuned.load_state_dict(net.state_dict())
    train(tuned, x_train, y_train, epochs=QAT_EPOCHS, verbose=False)
    return float((predict(tuned.quantize(dtype), x_test).argmax(1) == y_test).mean())


def main() -> None:
    data = datasets.digits_split(test_fraction=0.2, seed=0)
    (x_train, y_train), (x_test, y_test) = data
    net = loom.Network.from_config(demo_config())
    train(net, x_train, y_train, verbose=False)
    base = predict(net, x_test)
    print("| type | model file bytes | held-out accuracy | max abs logit error vs float32 | accuracy after QAT |")
    print("|---|---|---|---|---|")
    for name in dtypes.TABLE:
        if name == "float32":
            model, x = net, x_test
        elif name == "float64":
            model = loom.Network.from_config({**net.config, "dtype": "float64",
                                              "input": {**net.config["input"], "dtype": "float64"}})
            model.load_state_dict({k: np.asarray(v, np.float64) for k, v in net.state_dict().items()})
            x = x_test.astype(np.float64)
        else:
            model, x = net.quantize(name), x_test
        out = np.asarray(predict(model, x), np.float64)
        size = len(model.to_bytes())
        acc = float((out.argmax(1) == y_test).mean())
        err = float(np.abs(out - base).max())
        qat = f"{100 * qat_accuracy(net, name, data):.1f}%" if name in QAT_TYPES else ""
        print(f"| {name} | {size:,} | {100 * acc:.1f}% | {err:.3g} | {qat} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()

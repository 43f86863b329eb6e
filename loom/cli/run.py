"""`loom run MODEL --input X.npy --output Y.npy`: run a saved model on an array of inputs."""
from __future__ import annotations

import argparse

import numpy as np

HELP = "run a saved model on inputs and save the outputs"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a .loom model file")
    p.add_argument("--input", required=True, help=".npy array [N, *input shape] (or .npz / .csv inputs)")
    p.add_argument("--output", required=True, help="where to write the outputs (.npy)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda (needs loom[cuda] and an NVIDIA GPU)")


def run(args: argparse.Namespace) -> int:
    from ..atomic import write_bytes
    from ..datasets.files import load_x
    from ..errors import ConfigError
    from ..formats import load
    from ..nn.train import predict

    if args.batch_size < 1:
        raise ConfigError("--batch-size", f"expected a positive integer, got {args.batch_size}")
    net = load(args.model).to(args.device)
    X = load_x(args.input, net.input_spec.shape)
    if net.input_spec.is_float:
        X = X.astype(net.input_spec.dtype)
    Y = predict(net, X, args.batch_size)
    import io
    buf = io.BytesIO()
    np.save(buf, Y)
    write_bytes(args.output, buf.getvalue())
    print(f"wrote {list(Y.shape)} {Y.dtype} outputs to {args.output}")
    return 0

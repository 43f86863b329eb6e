"""`loom run MODEL --input X --output Y`: run a saved model on inputs and save the outputs."""
from __future__ import annotations

import argparse

HELP = "run a saved model on inputs and save the outputs"

EPILOG = """\
inputs: .npy (an array [N, *input shape]); .npz (array x; a y there is ignored); .csv / .csv.gz (one
sample a line, an optional header row; every column is an input unless --target names one to drop).
outputs, by the extension of --output: .npy; .npz (array y); .csv (one row per sample, outputs
flattened, numbers written so that they parse back to the same floats). When the model carries class
names ("labels", saved by `loom train` from a CSV with text labels), a .csv output starts with a header
row (the class names, then "label") and ends each row with a "label" column: the name of the highest
output."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EPILOG
    p.add_argument("model", help="a .loom model file")
    p.add_argument("--input", required=True, help="inputs: .npy, .npz (array x) or .csv / .csv.gz (see below)")
    p.add_argument("--output", required=True, help="where to write the outputs: .npy, .npz or .csv, chosen by the "
                                                   "extension (see below)")
    p.add_argument("--target", help="CSV only: a column to drop as the target (a 0-based index, negative from "
                                    "the end, a header name, first or last); default: none, every column is an "
                                    "input")
    p.add_argument("--batch-size", type=int, default=256, help="samples per forward pass (default: 256)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda (needs loom[cuda] and an NVIDIA GPU)")


def run(args: argparse.Namespace) -> int:
    from ..config import check_labels
    from ..datasets.files import as_inputs, load_x, output_format, save_outputs
    from ..errors import ConfigError
    from ..formats import load
    from ..nn.train import predict

    if args.batch_size < 1:
        raise ConfigError("--batch-size", f"expected a positive integer, got {args.batch_size}")
    if args.target is not None and not args.input.lower().endswith((".csv", ".csv.gz")):
        raise ConfigError("--target", f"names a column of a CSV input; {args.input} is not a .csv file")
    fmt = output_format(args.output)               # an extension we cannot write fails before any work
    net = load(args.model).to(args.device)
    labels = net.config.get("labels")
    check_labels(labels, net.output_spec.shape, args.model)
    X = as_inputs(load_x(args.input, net.input_spec.shape, args.target), net.input_spec.dtype, args.input)
    Y = predict(net, X, args.batch_size)
    save_outputs(args.output, Y, labels if fmt == ".csv" else None)
    print(f"wrote {list(Y.shape)} {Y.dtype} outputs to {args.output}")
    return 0

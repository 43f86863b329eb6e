"""`loom eval MODEL --data FILE`: evaluate a saved model and print (or export) a report."""
from __future__ import annotations

import argparse

HELP = "evaluate a saved model on a data file"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a .loom model file")
    p.add_argument("--data", required=True, help=".npz with arrays x and y, or .csv with a target column")
    p.add_argument("--target", default="last", help="CSV target column: index, header name, first or last")
    p.add_argument("--task", choices=["classification", "regression"], help="default: inferred from the targets")
    p.add_argument("--json", help="also write the report as JSON to this path")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda (needs loom[cuda] and an NVIDIA GPU)")


def run(args: argparse.Namespace) -> int:
    from ..datasets.files import load_xy
    from ..formats import load
    from ..nn import metrics
    from ..nn.train import predict

    net = load(args.model).to(args.device)
    X, Y = load_xy(args.data, net.input_spec.shape, args.target)
    if net.input_spec.is_float:
        X = X.astype(net.input_spec.dtype)
    report = metrics.evaluate(predict(net, X), Y, task=args.task)
    print(report.summary())
    if args.json:
        report.to_json(args.json)
    return 0

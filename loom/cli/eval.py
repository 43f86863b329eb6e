"""`loom eval MODEL --data FILE`: evaluate a saved model and print (or export) a report."""
from __future__ import annotations

import argparse

HELP = "evaluate a saved model on a data file"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a .loom model file")
    p.add_argument("--data", required=True,
                   help=".npz with arrays x and y, or .csv / .csv.gz with a target column and an optional header "
                        "row; text labels in the target column are mapped to ids by the class names saved with "
                        "the model (its \"labels\"); numbers are class ids or regression values")
    p.add_argument("--target", default="last",
                   help="CSV target column: a 0-based index, negative from the end, a header name, first or last "
                        "(default: last)")
    p.add_argument("--task", choices=["classification", "regression"],
                   help="default: inferred (whole-number targets and a vector of at least 2 outputs: "
                        "classification; else regression)")
    p.add_argument("--json", help="also write the report as JSON to this path (default: none)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda (needs loom[cuda] and an NVIDIA GPU)")


def run(args: argparse.Namespace) -> int:
    from ..config import check_labels, preview
    from ..datasets.files import as_inputs, load_labeled
    from ..errors import FormatError, ShapeError
    from ..formats import load
    from ..nn import metrics
    from ..nn.train import predict

    net = load(args.model).to(args.device)
    labels = net.config.get("labels")
    check_labels(labels, net.output_spec.shape, args.model)
    X, Y, names = load_labeled(args.data, net.input_spec.shape, args.target, labels)
    if labels is None and names is not None:
        raise FormatError(f"{args.data}: the target column holds class names ({preview(names)}), but "
                          f"{args.model} has none saved (it was trained on numeric targets); give numeric targets "
                          "instead")
    X = as_inputs(X, net.input_spec.dtype, args.data)
    try:
        report = metrics.evaluate(predict(net, X), Y, task=args.task, labels=labels)
    except ShapeError as exc:        # the targets do not fit the model's outputs (or --task)
        task = f" (--task {args.task})" if args.task else ""
        raise ShapeError(f"{args.data}: the targets do not fit {args.model}'s outputs{task}: {exc}") from None
    print(report.summary())
    if args.json:
        report.to_json(args.json)
    return 0

"""`loom train CONFIG --data FILE --out DIR`: train a network config on a data file.

Settings come from the flags, else the config's "training" block, else Loom's defaults (stated in
--help). The output folder holds model.loom, checkpoint.loom (rewritten after every epoch) and
history.json; a run that fails leaves no new files and no new folder behind (Ctrl-C keeps the last
checkpoint).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

HELP = "train a network config on an .npz or .csv data file"

# the name loom.train's errors use for a setting -> its flag
_FLAGS = {"loss": "--loss", "optimizer": "--optimizer", "epochs": "--epochs", "batch_size": "--batch-size",
          "seed": "--seed", "validation": "--validation", "metrics": "--metrics", "precision": "--precision"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .. import mixed_precision
    from ..datasets.files import TARGET_DEFAULT
    from ..nn import losses, metrics, optim
    p.add_argument("config", help="network config (JSON file)")
    p.add_argument("--data", required=True, help=".npz with arrays x and y, or .csv with a target column")
    p.add_argument("--target", default=TARGET_DEFAULT,
                   help=f"CSV target column: index, header name, first or last (default: {TARGET_DEFAULT}); "
                        "text labels become class ids, saved with the model as \"labels\"")
    p.add_argument("--loss", metavar="NAME|JSON",
                   help=f"loss: {', '.join(losses.NAMES)} or a JSON object (default: the training block's, else "
                        "chosen from the targets: class ids or one-hot rows -> cross_entropy, numbers of the "
                        "output's shape -> mse; printed at the start)")
    p.add_argument("--optimizer", metavar="NAME|JSON",
                   help=f"optimizer: {', '.join(sorted(optim.TYPES))} or a JSON object such as "
                        "'{\"type\": \"sgd\", \"lr\": 0.1, \"momentum\": 0.9}' (default: the training block's, "
                        "else adam with lr 0.001)")
    p.add_argument("--lr", type=float, help="learning rate, replacing the optimizer's lr (default: the optimizer's)")
    p.add_argument("--epochs", type=int, help="epochs (default: the training block's, else 10)")
    p.add_argument("--batch-size", type=int, help="batch size (default: the training block's, else 32)")
    p.add_argument("--seed", type=int, help="shuffle seed (default: the training block's, else 0)")
    p.add_argument("--validation", type=float,
                   help="fraction held out for validation, e.g. 0.1 (default: the training block's, else none)")
    p.add_argument("--metrics", help=f"comma-separated metrics from {', '.join(sorted(metrics.METRICS))} "
                                     "(default: the training block's, else none)")
    p.add_argument("--precision", choices=mixed_precision.PRECISIONS, default=None,
                   help="bf16: mixed precision, every product's operands rounded to bfloat16, weights, optimizer "
                        "and the rest float32 (default: the training block's, else float32)")
    p.add_argument("--allow-nonfinite", action="store_true",
                   help="train on through NaN or infinite data and losses (default: stop at the first, "
                        "naming the sample, or the batch and the layer)")
    p.add_argument("--resume", help="continue from this checkpoint file, with its optimizer state and learning rate "
                                    "(--lr or an lr in --optimizer overrides that; default: start fresh)")
    p.add_argument("--out", required=True, help="output folder (created): model.loom, checkpoint.loom, history.json")
    p.add_argument("--quiet", action="store_true", help="no progress output (default: a progress bar on a terminal, "
                                                        "one line per epoch otherwise)")
    p.add_argument("--device", default=None,
                   help="cpu (default) or cuda (needs loom[cuda] and an NVIDIA GPU; the default with --gpus)")
    p.add_argument("--gpus", type=int, default=None, metavar="N",
                   help="data-parallel training on N GPUs of this host, one process each, through NCCL (deterministic "
                        "mode: the weights one GPU or the CPU gives); with --device cpu, N CPU processes (slow: for "
                        "testing). Under torchrun or srun (RANK/WORLD_SIZE set) each rank runs this command instead "
                        "(default: one process)")


def _spec(text: str | None, flag: str) -> str | dict | None:
    """A --loss / --optimizer value: a type name, or a JSON object."""
    from ..errors import ConfigError
    if text is None or not text.lstrip().startswith("{"):
        return text
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(flag, f"not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ConfigError(flag, f"expected a name or a JSON object, got {text!r}")
    return value


def _check_flags(args: argparse.Namespace) -> None:
    from ..errors import ConfigError
    for flag, value, lo in (("--epochs", args.epochs, 1), ("--batch-size", args.batch_size, 1), ("--seed", args.seed, 0)):
        if value is not None and value < lo:
            raise ConfigError(flag, f"expected an integer >= {lo}, got {value}")
    if args.lr is not None and not args.lr > 0:
        raise ConfigError("--lr", f"expected a positive number, got {args.lr}")
    if args.validation is not None and not 0 < args.validation < 1:
        raise ConfigError("--validation", f"expected a fraction between 0 and 1, got {args.validation}")
    if args.gpus is not None and args.gpus < 1:
        raise ConfigError("--gpus", f"expected a positive number of GPUs, got {args.gpus}")
    if args.device not in (None, "cpu", "cuda"):
        raise ConfigError("--device", f"expected cpu or cuda, got {args.device!r}")
    if args.out is not None and os.path.exists(args.out) and not os.path.isdir(args.out):
        raise ConfigError("--out", f"{args.out} is a file; give a folder (created when missing)")


def run(args: argparse.Namespace) -> int:
    from .. import distributed

    _check_flags(args)
    rank_of_world = distributed.World.from_env() is not None     # started by torchrun, srun or loom's launcher
    device = args.device or ("cuda" if args.gpus or rank_of_world else "cpu")
    if rank_of_world:
        group = distributed.init(device=device)
        try:
            return _run(args, group.rank == 0, device)
        finally:
            distributed.shutdown()
    return _run(args, True, device)


def _run(args: argparse.Namespace, writer: bool, device: str) -> int:
    """The training; `writer`: this process writes the outputs (rank 0 of a world)."""
    from .. import distributed
    from ..atomic import new_folder, write_json
    from ..config import check_labels
    from ..datasets.files import load_labeled
    from ..errors import NumericError, renamed_paths
    from ..nn import Network
    from ..nn.train import DEFAULTS, check_finite_data

    loss, optimizer = _spec(args.loss, "--loss"), _spec(args.optimizer, "--optimizer")
    net = Network.from_config(args.config)
    check_labels(net.config.get("labels"), net.output_spec.shape)
    X, Y, labels = load_labeled(args.data, net.input_spec.shape, args.target, net.config.get("labels"))
    if labels != net.config.get("labels"):      # class names read from the data file: saved with the model
        check_labels(labels, net.output_spec.shape, f"the target column of {args.data}")
        net = Network.from_config({**net.config, "labels": labels})
    if not args.allow_nonfinite:
        check_finite_data(X, f"{args.data}: x")
        check_finite_data(Y, f"{args.data}: y")
    if args.lr is not None:
        base = optimizer or (net.config.get("training") or {}).get("optimizer") or DEFAULTS["optimizer"]
        optimizer = dict({"type": base} if isinstance(base, str) else base, lr=args.lr)
    checkpoint = os.path.join(args.out, "checkpoint.loom")
    if not writer:          # a rank other than 0: it trains, rank 0 writes
        with renamed_paths(_FLAGS):
            distributed.train(net, X, Y, loss=loss, device=device, optimizer=optimizer, epochs=args.epochs,
                              batch_size=args.batch_size, seed=args.seed, validation=args.validation,
                              metrics=args.metrics.split(",") if args.metrics else None, verbose=False,
                              checkpoint=checkpoint, resume=args.resume, allow_nonfinite=args.allow_nonfinite,
                              devices=args.gpus, precision=args.precision)
        return 0
    with new_folder(args.out, keep_on=(KeyboardInterrupt, NumericError)):
        try:
            with renamed_paths(_FLAGS):
                history = distributed.train(
                    net, X, Y, loss=loss, device=device, optimizer=optimizer, epochs=args.epochs,
                    batch_size=args.batch_size, seed=args.seed, validation=args.validation,
                    metrics=args.metrics.split(",") if args.metrics else None, verbose=not args.quiet,
                    checkpoint=checkpoint, resume=args.resume, allow_nonfinite=args.allow_nonfinite,
                    devices=args.gpus, precision=args.precision)
        except NumericError as exc:          # the last good epoch's checkpoint stays, to resume from
            if not os.path.exists(checkpoint):
                raise
            raise NumericError(f"{exc}; {checkpoint} holds the last finite epoch (--resume it)") from None
        net.save(os.path.join(args.out, "model.loom"))
        notes = write_json(os.path.join(args.out, "history.json"), history.logs)
    if notes:
        print(f"note: history.json holds null for {len(notes)} non-finite values ({', '.join(notes[:3])}"
              f"{', ...' if len(notes) > 3 else ''})", file=sys.stderr)
    last = {k: v[-1] for k, v in history.logs.items() if k != "seconds"}
    print(f"trained {history.epochs} epochs; " + ", ".join(f"{k} {v:.4g}" for k, v in last.items()))
    print(f"wrote {os.path.join(args.out, 'model.loom')}")
    return 0


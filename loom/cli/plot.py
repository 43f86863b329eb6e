"""`loom plot HISTORY [--out FILE]`: training curves from a history.json as a PNG, or the activity
over time of a telemetry JSON (loom.train(..., telemetry=PATH), loom/nn/telemetry.py)."""
from __future__ import annotations

import argparse
import json
import os

HELP = "plot the training curves of a history.json (written by loom train), or a telemetry JSON, as a PNG"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("history", help="a history.json written by loom train, or a telemetry JSON (Telemetry.to_json)")
    p.add_argument("--out", help="the PNG to write (default: HISTORY with .png for .json, e.g. run/history.png)")


def run(args: argparse.Namespace) -> int:
    from ..atomic import describe
    from ..errors import FormatError, ShapeError
    from ..nn.reports import plot_history

    try:
        with open(args.history, encoding="utf-8") as fh:
            history = json.load(fh)
    except OSError as exc:
        raise describe(exc, args.history) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FormatError(f"{args.history}: not a JSON file ({exc})") from None
    if isinstance(history, dict) and "loom_telemetry" in history:
        return _telemetry(history, args)
    if not isinstance(history, dict):
        raise FormatError(f"{args.history}: expected an object of name -> list of numbers, got "
                          f"{type(history).__name__}")
    history = {k: v for k, v in history.items() if k != "seconds"}     # wall time is not a training curve
    out = args.out or os.path.splitext(args.history)[0] + ".png"
    try:
        plot_history(history, out)
    except ShapeError as exc:        # not curves: name the user's file
        raise FormatError(f"{args.history}: {exc}") from None
    print(f"wrote {out}")
    return 0


def _telemetry(data: dict, args: argparse.Namespace) -> int:
    from ..errors import FormatError
    from ..nn.telemetry import plot

    out = args.out or os.path.splitext(args.history)[0] + ".png"
    try:
        plot(data, out)
    except FormatError as exc:       # name the user's file
        raise FormatError(f"{args.history}: {str(exc).removeprefix('telemetry: ')}") from None
    print(f"wrote {out}")
    return 0

"""`loom` entry point: parse the subcommand, run it, turn errors into one line and an exit code.

Exit codes: 0 success, 2 usage error, 3 bad input (any LoomError), 1 anything unexpected.
Tracebacks are shown only with --debug.
"""
from __future__ import annotations

import argparse
import sys
import traceback

from .. import mode
from ..errors import LoomError
from . import chat, convert, demo, embed, generate, info, run, train, verify
from . import eval as eval_cmd

COMMANDS = {"demo": demo, "train": train, "eval": eval_cmd, "run": run, "info": info, "convert": convert,
            "verify": verify, "generate": generate, "chat": chat, "embed": embed}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints usage + exits 2; keep it to one line
        raise _UsageError(message)


class _UsageError(Exception):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="loom", description="Loom: deterministic neural compute runtime.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, module in COMMANDS.items():
        command = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(command)
        if "--fast" not in command._option_string_actions:
            command.add_argument("--fast", action="store_true",
                                 help="fast mode: vendor BLAS and libm, results not bit-reproducible across "
                                      "machines (deterministic mode is the default; docs/determinism.md)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
        if args.command is None:
            build_parser().print_help()
            return 2
        with mode.deterministic(not getattr(args, "fast", False)):
            return COMMANDS[args.command].run(args) or 0
    except _UsageError as exc:
        print(f"loom: usage error: {exc} (see loom --help)", file=sys.stderr)
        return 2
    except LoomError as exc:
        if debug:
            traceback.print_exc()
        print(f"loom: error: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("loom: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # an unexpected failure is a bug: say so in one line unless debugging
        if debug:
            traceback.print_exc()
        print(f"loom: internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1

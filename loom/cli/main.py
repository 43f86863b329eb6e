"""`loom` entry point: parse the subcommand, run it, turn errors into one line and an exit code.

Exit codes: 0 success, 2 usage error, 3 a failure the user can fix (any LoomError, a file the OS
cannot read or write, memory), 130 interrupted, 1 anything unexpected (a bug: "internal error").
Tracebacks are shown only with --debug.
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback
import warnings

from .. import mode
from ..atomic import describe
from ..errors import ConfigError, LoomError
from ..version import __version__
from . import (
    bench,
    capi,
    chat,
    convert,
    db,
    demo,
    embed,
    generate,
    info,
    plot,
    primes,
    run,
    search,
    serve,
    train,
    verify,
    web,
)
from . import eval as eval_cmd

COMMANDS = {"demo": demo, "train": train, "eval": eval_cmd, "run": run, "info": info, "convert": convert,
            "verify": verify, "generate": generate, "chat": chat, "embed": embed, "plot": plot, "primes": primes,
            "bench": bench, "db": db, "search": search, "capi": capi, "web": web, "serve": serve}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints usage + exits 2; keep it to one line
        raise _UsageError(message)


class _UsageError(Exception):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="loom", description="Loom: deterministic neural compute runtime.")
    parser.add_argument("--version", action="version", version=f"loom {__version__}")
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
        device = getattr(args, "device", None)
        if args.command != "verify" and device not in (None, "cpu", "cuda"):   # verify has its own choices
            raise ConfigError("--device", f"unknown device {device!r}; expected cpu or cuda")
        with warnings.catch_warnings(), mode.deterministic(not getattr(args, "fast", False)):
            if not debug:   # NumPy's overflow warnings say less than the error Loom raises about it
                warnings.simplefilter("ignore", RuntimeWarning)
            return COMMANDS[args.command].run(args) or 0
    except SystemExit as exc:             # --help and --version print and exit through argparse
        return exc.code if isinstance(exc.code, int) else 0
    except _UsageError as exc:
        print(f"loom: usage error: {exc} (see loom --help)", file=sys.stderr)
        return 2
    except LoomError as exc:
        if debug:
            traceback.print_exc()
        text = str(exc)
        if isinstance(exc, ConfigError) and exc.path == "loom":   # the config's version key, not the program
            text = f'config key "loom": {exc.reason}'
        print(f"loom: error: {text}", file=sys.stderr)
        return 3
    except BrokenPipeError:               # `loom info | head -1`: the reader left; nothing more to say
        sys.stdout = open(os.devnull, "w")   # Python flushes stdout at exit: give it somewhere to go
        return 141
    except OSError as exc:
        if exc.filename is None:          # not about a path the user gave: a bug
            return _internal(exc, debug)
        if debug:
            traceback.print_exc()
        print(f"loom: error: {describe(exc)}", file=sys.stderr)
        return 3
    except MemoryError as exc:
        if debug:
            traceback.print_exc()
        print(f"loom: error: out of memory{f' ({exc})' if str(exc) else ''}; try a smaller batch or model",
              file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("loom: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # an unexpected failure is a bug: say so in one line unless debugging
        return _internal(exc, debug)


def _internal(exc: BaseException, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    print(f"loom: internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)",
          file=sys.stderr)
    return 1

"""`loom capi build [--out DIR]`: libloom.so, loom.h and loom.pc for this installation (loom.capi.build)."""
from __future__ import annotations

import argparse

HELP = "build the C library (libloom.so, loom.h, loom.pc) for this installation"


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True, parser_class=type(p))
    build = sub.add_parser("build", help="compile libloom.so and write loom.h and loom.pc into DIR",
                           description="compile libloom.so and write loom.h and loom.pc into DIR")
    build.add_argument("--out", default="loom-capi", metavar="DIR",
                       help="the folder to write (created if missing; default: ./loom-capi)")
    build.add_argument("--cc", default=None, help="the C compiler (default: $CC, else cc, gcc or clang)")


def run(args: argparse.Namespace) -> int:
    from ..capi.build import build
    paths = build(args.out, cc=args.cc)
    folder = paths["lib"].parent
    print(f"wrote {paths['lib']}, {paths['header'].name} and {paths['pkgconfig'].name}")
    print(f"compile and link:  cc app.c $(PKG_CONFIG_PATH={folder} pkg-config --cflags --libs loom)")
    return 0

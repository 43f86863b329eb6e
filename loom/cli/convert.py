"""`loom convert`: turn another format into a Loom model file.

    loom convert --from welvet IN OUT [--input-shape 4,16]   an openfluke welvet model (JSON wire or
                                                            .entity) -> a Loom model file (net.save)

Each source format is one mode, chosen by --from; a mode is a function taking the parsed args and
returning the Network to write. Other conversions (e.g. `--dtype` re-quantization of a Loom model)
add their own mode to MODES and their options to add_arguments.
"""
from __future__ import annotations

HELP = "convert a model from another format into a Loom model file"


def add_arguments(p):
    p.add_argument("input", metavar="IN", help="the model to convert")
    p.add_argument("output", metavar="OUT", nargs="?", help="where to write the Loom model file")
    p.add_argument("--from", dest="source_format", default=None, choices=sorted(MODES),
                   help="format of IN: welvet (an openfluke welvet JSON wire or .entity file)")
    p.add_argument("--input-shape", default=None, metavar="D1,D2,...",
                   help="--from welvet: per-sample input shape (batch excluded), when the first layer "
                        "does not imply the one wanted")
    # a mode for Loom models (IN a .loom file, e.g. --dtype ... --out OUT) adds its options here
    p.set_defaults(convert_parser=p)


def run(args) -> int:
    if args.source_format is None:
        args.convert_parser.error("say what IN is: --from welvet")
    net = MODES[args.source_format](args)
    net.save(args.output)
    print(f"wrote {args.output}: {net!r}")
    return 0


def _shape(text):
    from ..errors import ConfigError
    if text is None:
        return None
    try:
        dims = [int(d) for d in text.split(",")]
    except ValueError:
        dims = []
    if not dims or min(dims) < 1:
        raise ConfigError("--input-shape", f"expected positive sizes separated by commas, got {text!r}")
    return dims


def _from_welvet(args):
    from ..formats import welvet
    if args.output is None:
        args.convert_parser.error("--from welvet needs IN and OUT")
    return welvet.load(args.input, input_shape=_shape(args.input_shape))


MODES = {"welvet": _from_welvet}

"""`loom convert`: turn another format into a Loom model file.

    loom convert --from welvet IN OUT [--input-shape 4,16]   an openfluke welvet model (JSON wire or
                                                            .entity) -> a Loom model file (net.save)
    loom convert MODEL --dtype int8 [--per channel] --out OUT
                                                            a Loom model with its GEMM weights
                                                            quantized (net.quantize; docs/dtypes.md)
    loom convert MODEL.gguf --to hf DIR                     a GGUF language model -> a HuggingFace
                                                            directory (loom.llm.convert)

Each source format is one mode, chosen by --from; a mode is a function taking the parsed args and
returning the Network to write. Other conversions (e.g. `--dtype` re-quantization of a Loom model)
add their own mode to MODES and their options to add_arguments.
"""
from __future__ import annotations

import argparse

HELP = "convert a model from another format into a Loom model file (or a GGUF model into an HF directory)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", metavar="IN", help="the model to convert")
    p.add_argument("output", metavar="OUT", nargs="?", help="where to write the Loom model file (or --out)")
    p.add_argument("--out", dest="out", default=None, help="where to write the Loom model file")
    p.add_argument("--from", dest="source_format", default=None, choices=sorted(MODES),
                   help="format of IN: welvet (an openfluke welvet JSON wire or .entity file)")
    p.add_argument("--input-shape", default=None, metavar="D1,D2,...",
                   help="--from welvet: per-sample input shape (batch excluded), when the first layer "
                        "does not imply the one wanted")
    p.add_argument("--dtype", default=None, metavar="TYPE",
                   help="quantize a Loom model's weights to TYPE (int8, int4, ternary, ...; docs/dtypes.md)")
    # `--to hf DIR` takes the directory with it: argparse cannot give a positional OUT after an option
    p.usage = ("%(prog)s --from welvet IN OUT [--input-shape D1,D2,...]\n"
               "       %(prog)s MODEL --dtype TYPE [--per {channel,tensor}] --out OUT\n"
               "       %(prog)s MODEL.gguf --to hf DIR")
    p.add_argument("--to", dest="target", default=None, nargs="+", metavar=("hf", "DIR"),
                   help="--to hf DIR: write a GGUF language model as a HuggingFace directory (config.json, "
                        "model.safetensors in float32, tokenizer.json); DIR may also be OUT")
    p.add_argument("--per", default="channel", choices=["channel", "tensor"],
                   help="--dtype: one scale per output channel (default) or per tensor")
    p.set_defaults(convert_parser=p)


def run(args: argparse.Namespace) -> int:
    if args.out is not None:
        if args.output is not None:
            args.convert_parser.error("give OUT once: as the second argument or as --out")
        args.output = args.out
    if args.target is not None:
        return _to_hf(args)
    if args.source_format is None and args.dtype is None:
        args.convert_parser.error("say what to do: --from welvet (import) or --dtype TYPE (quantize a Loom model)")
    net = _quantize(args) if args.source_format is None else MODES[args.source_format](args)
    if args.source_format is not None and args.dtype is not None:
        net = _quantized(net, args)
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


def _to_hf(args) -> int:
    from ..llm.convert import gguf_to_hf
    kind, *where = args.target
    if kind != "hf" or len(where) > 1:
        args.convert_parser.error(f"--to takes 'hf' and the output directory, got {' '.join(args.target)!r}")
    if where and args.output is not None:
        args.convert_parser.error("give the output directory once: after --to hf, as OUT or as --out")
    args.output = where[0] if where else args.output
    if args.output is None:
        args.convert_parser.error("--to hf needs MODEL.gguf and an output directory")
    if args.source_format is not None or args.dtype is not None:
        args.convert_parser.error("--to hf takes a GGUF file as it is: no --from or --dtype")
    config = gguf_to_hf(args.input, args.output)
    print(f"wrote {args.output}: {config.get('model_type')} with {config.get('num_hidden_layers')} layers "
          f"(config.json, model.safetensors, tokenizer.json)")
    return 0


def _from_welvet(args):
    from ..formats import openfluke
    if args.output is None:
        args.convert_parser.error("--from welvet needs IN and OUT")
    return openfluke.load(args.input, input_shape=_shape(args.input_shape))


def _quantize(args):
    from ..formats import load
    if args.output is None:
        args.convert_parser.error("--dtype needs MODEL and --out OUT")
    return _quantized(load(args.input), args)


def _quantized(net, args):
    """net.quantize(--dtype, --per), its errors naming the flag (not the config key quantization.dtype)."""
    from ..errors import renamed_paths
    with renamed_paths({"quantization.dtype": "--dtype", "quantization.per": "--per"}):
        return net.quantize(args.dtype, per=args.per)


MODES = {"welvet": _from_welvet}

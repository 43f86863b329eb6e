"""`loom serve --model PATH`: an OpenAI-compatible HTTP server (loom/serve/app.py).

    loom serve --model SmolLM2-135M-Instruct.Q4_1.gguf --port 8000
    curl localhost:8000/v1/chat/completions -d '{"model": "SmolLM2-135M-Instruct.Q4_1", "messages": [...]}'

The model is served under its file or folder name (--name to choose another). Language models
answer /v1/chat/completions and /v1/completions, decoding up to --max-batch requests together
(continuous batching) with up to --max-queue more waiting (beyond that: 429); encoder models answer
/v1/embeddings. With --api-key (or LOOM_API_KEY) every route but /health needs `Authorization: Bearer
KEY`; serving beyond loopback without one prints a warning. SIGTERM or Ctrl-C shuts down gracefully
(loom/serve/lifecycle.py, --shutdown-timeout). Deterministic mode is the default: a
request's tokens are then the bits the CPU gives for it alone, whatever else is batched with it;
--fast trades that for speed.
"""
from __future__ import annotations

import argparse
import os
import sys

HELP = "serve a model over an OpenAI-compatible HTTP API (chat, completions, embeddings)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a .gguf file or a HuggingFace model directory")
    p.add_argument("--name", help="the model name clients ask for (default: the file or folder name)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--shutdown-timeout", type=float, default=10.0, metavar="SECONDS",
                   help="on SIGTERM or Ctrl-C, how long requests in flight may run before they are cancelled "
                        "(default 10)")
    p.add_argument("--api-key", action="append", metavar="KEY",
                   help="require 'Authorization: Bearer KEY' on every route but /health (repeatable; "
                        "LOOM_API_KEY adds one)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--max-batch", type=int, default=16, help="requests decoded together (default 16)")
    p.add_argument("--max-queue", type=int, default=64, help="requests waiting beyond those (default 64)")
    p.add_argument("--cache-tokens", type=int, default=None,
                   help="positions of the paged KV cache (default: max-batch x min(context, 4096))")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--deterministic", action="store_true",
                       help="deterministic mode (the default): each request's tokens do not depend on its batch")
    group.add_argument("--fast", action="store_true", help="fast mode: vendor BLAS, results may differ in last bits")


def run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..llm import load
    from ..serve import Server
    from ..serve.app import need_extra
    from ..serve.lifecycle import serve
    need_extra()
    if not 0 <= args.port <= 65535:
        raise ConfigError("--port", f"expected 0-65535, got {args.port}")
    for flag, value in (("--max-batch", args.max_batch), ("--max-queue", args.max_queue)):
        if value < 1:
            raise ConfigError(flag, f"expected a positive integer, got {value}")
    if not 0 <= args.shutdown_timeout <= 24 * 3600:          # (NaN fails both)
        raise ConfigError("--shutdown-timeout", f"expected seconds in [0, 86400], got {args.shutdown_timeout}")
    keys = api_keys(args.api_key, os.environ.get("LOOM_API_KEY"))
    model = load(args.model, device=args.device)
    name = args.name or os.path.splitext(os.path.basename(os.path.normpath(args.model)))[0]
    server = Server(model, name, max_batch=args.max_batch, max_queue=args.max_queue, cache_tokens=args.cache_tokens,
                    api_keys=keys)
    guarded = f", {len(keys)} API key{'s' if len(keys) > 1 else ''} required" if keys else ""
    print(f"loom: serving {name!r} ({server.mode_name} mode, {args.device}{guarded}) on http://{args.host}:{args.port}/v1",
          file=sys.stderr, flush=True)
    warning = exposure_warning(args.host, args.port, keys)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    serve(server, args.host, args.port, args.shutdown_timeout)
    return 0


def api_keys(flags: list[str] | None, environ: str | None) -> list[str]:
    """The keys of --api-key (each) and LOOM_API_KEY, in that order; an empty one is a ConfigError that
    names where it came from (the keys themselves are never printed)."""
    from ..errors import ConfigError
    keys = list(flags or [])
    for i, key in enumerate(keys):
        if not key.strip() or key != key.strip():
            raise ConfigError("--api-key", f"key {i + 1} is empty or has surrounding spaces")
    if environ is not None:
        if not environ.strip() or environ != environ.strip():
            raise ConfigError("LOOM_API_KEY", "the key is empty or has surrounding spaces")
        keys.append(environ)
    return keys


def exposure_warning(host: str, port: int, keys: list[str]) -> str | None:
    """A one-line warning when the server listens beyond this machine without a key, else None."""
    import ipaddress
    if keys or host == "localhost":
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass                                # a host name: it may resolve to any interface
    return (f"loom: warning: {host}:{port} is reachable from other machines and no --api-key is set: "
            "anyone who can reach it can use the model")

"""`loom web build DIR [--epochs N] [--llm GGUF]` and `loom web serve DIR [--port P]`: Loom in the browser (loom.web)."""
from __future__ import annotations

import argparse

HELP = "build the in-browser site (Pyodide, NumPy, Loom, the page) or serve it on loopback"


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True, parser_class=type(p))
    b = sub.add_parser("build", help="write the static site into DIR", description="write the static site into DIR")
    b.add_argument("dir", metavar="DIR")
    b.add_argument("--epochs", type=int, default=3,
                   help="epochs the page trains by default and the native reference runs (default 3)")
    b.add_argument("--llm", metavar="GGUF", help="also a language model for the page: a GGUF decoder file "
                                                 "(e.g. SmolLM2-135M-Instruct's), copied into the site")
    s = sub.add_parser("serve", help="serve a built site on 127.0.0.1", description="serve a built site on 127.0.0.1")
    s.add_argument("dir", metavar="DIR")
    s.add_argument("--port", type=int, default=8000, help="the port (default 8000; 0: any free one)")


def run(args: argparse.Namespace) -> int:
    if args.action == "build":
        from ..web.site import build
        folder = build(args.dir, epochs=args.epochs, llm_path=args.llm)
        print(f"wrote the site to {folder}; serve it with: loom web serve {folder}")
        return 0
    from ..web.serve import server
    httpd = server(args.dir, args.port)
    host, port = httpd.server_address[:2]
    print(f"serving {args.dir} at http://{host}:{port}/ (Ctrl-C stops)", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
    return 0

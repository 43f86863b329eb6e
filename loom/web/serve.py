"""`loom web serve DIR [--port]`: the built site over HTTP on loopback (127.0.0.1 only), with the
MIME types the page needs (application/wasm, so the browser compiles the runtime while it streams)."""
from __future__ import annotations

import functools
import http.server
import os
import sys
from pathlib import Path

from ..errors import ConfigError

HOST = "127.0.0.1"
TYPES = {".wasm": "application/wasm", ".js": "text/javascript", ".whl": "application/zip",
         ".json": "application/json", ".zip": "application/zip"}


class _Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, **TYPES}

    def log_message(self, format: str, *args) -> None:      # quiet: the command prints its one line
        pass

    def translate_path(self, path: str) -> str:
        """The file for a URL path, only inside the site: a symlink out of it is not found (404)."""
        full = super().translate_path(path)
        root = os.path.realpath(self.directory)
        real = os.path.realpath(full)
        return full if real == root or real.startswith(root + os.sep) else os.path.join(root, ".outside-the-site")


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        """A browser that drops a connection (a closed tab, a cancelled fetch) is no error to print;
        anything else is, as the standard server does."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def server(folder: str | os.PathLike[str], port: int = 8000) -> http.server.ThreadingHTTPServer:
    """A server for the site in `folder` on HOST:port (port 0: any free one); call serve_forever()."""
    root = Path(folder)
    if not (root / "site.json").is_file():
        raise ConfigError("DIR", f"{root} is not a site built by `loom web build` (no site.json)")
    if not 0 <= port <= 65535:
        raise ConfigError("--port", f"expected a port in 0..65535, got {port}")
    handler = functools.partial(_Handler, directory=str(root))
    try:
        return _Server((HOST, port), handler)
    except OSError as exc:
        raise ConfigError("--port", f"cannot serve on {HOST}:{port}: {exc.strerror or exc}") from None

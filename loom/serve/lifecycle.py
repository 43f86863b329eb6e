"""Running a `Server` under uvicorn until SIGTERM or SIGINT, then shutting down as vLLM's and llama.cpp's
servers do: stop accepting connections, answer 503 to new generation requests on open ones, let the
requests in flight finish for `shutdown_timeout` seconds, then cancel the rest through the engine (each
ends with finish_reason "cancelled": a streamed one with its last chunk and [DONE], so no client is
left waiting without a final event), wait for the connections to close, stop the engine, return.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .app import Server

FLUSH_SECONDS = 5.0     # after the cancellation: for the last events to reach their clients


def serve(server: Server, host: str, port: int, shutdown_timeout: float) -> None:
    import uvicorn

    class Uvicorn(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            if not self.should_exit:            # the first signal: a graceful shutdown
                server.begin_shutdown(shutdown_timeout)
            super().handle_exit(sig, frame)
            # uvicorn raises the signals it caught again once it has shut down, so that the process ends
            # by them; a finished graceful shutdown exits with status 0, as process supervisors expect
            getattr(self, "_captured_signals", []).clear()

    config = uvicorn.Config(server.app(), host=host, port=port, log_level="warning",
                            timeout_graceful_shutdown=shutdown_timeout + FLUSH_SECONDS)
    Uvicorn(config).run()

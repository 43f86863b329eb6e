"""A streamed reply's generator is closed as soon as its response ends, however it ends (loom/serve/app.py's
_closing_stream): its `finally`, which cancels the request's engine slots, runs before the response returns
even with the garbage collector off, where Starlette would leave a generator cut by a gone client
suspended at a `yield`."""
import asyncio
import gc

import pytest

pytest.importorskip("starlette")
from starlette.requests import ClientDisconnect  # noqa: E402

from loom.serve.app import _closing_stream  # noqa: E402


@pytest.mark.parametrize("spec_version", ["2.4", "2.0"])
def test_a_cut_stream_runs_its_generators_finally_before_the_response_returns(spec_version):
    closed = []

    async def body():
        try:
            for i in range(100):
                yield f"data: {i}\n\n"
        finally:
            closed.append(True)

    sent = []

    async def send(message):
        sent.append(message)
        if len(sent) == 3:                      # the start, two chunks: then the client is gone
            raise OSError("the client went away")

    async def receive():
        await asyncio.sleep(3600)               # (the client says nothing)

    async def serve():
        response = _closing_stream()(body(), media_type="text/event-stream")
        scope = {"type": "http", "asgi": {"spec_version": spec_version}}
        with pytest.raises((ClientDisconnect, OSError)):
            await response(scope, receive, send)
        return list(closed)

    gc.disable()
    try:
        assert asyncio.run(serve()) == [True]
    finally:
        gc.enable()

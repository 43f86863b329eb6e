"""`loom serve` shutting down (issue 62): once it begins, new generation requests answer 503 and, after
--shutdown-timeout, the requests in flight are cancelled with a final event (a stream's last chunk with
finish_reason "cancelled", then [DONE]); SIGTERM to a real `loom serve` process does that and exits 0;
a bad --shutdown-timeout is a one-line error."""
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import serve_extras

import loom
import loom.llm

_, httpx = serve_extras.need()

from test_openai_server import Running  # noqa: E402

from loom.serve import Server  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "llm"))
import tiny_decoders as td  # noqa: E402

LONG = 400          # tokens a request asks for: running when the shutdown begins


@pytest.fixture(scope="module")
def long_model(tmp_path_factory):
    """(folder, model, prompt ids) of a tiny llama with 1024 positions whose greedy continuation of the
    prompt runs LONG tokens without its end-of-sequence token."""
    folder = tmp_path_factory.mktemp("tiny-long")
    td.save(td.build("llama", seed=11, max_position_embeddings=1024), folder)
    td.write_tokenizer(folder, chat_template=td.CHAT_TEMPLATE)
    model = loom.llm.load(folder)
    with loom.deterministic(True):
        for k in range(40):
            prompt = [5, 17 + k, 33]
            if len(list(model.generate_ids(prompt, max_tokens=LONG))) == LONG:
                return folder, model, prompt
    pytest.skip("no prompt of the tiny model runs 400 greedy tokens without its end token")


def _stream(url: str, prompt: list[int], lines: list, first: threading.Event) -> threading.Thread:
    """A streamed completion read on a thread into `lines` (data payloads); `first` is set at the first chunk."""
    def read():
        body = {"model": "tiny", "prompt": prompt, "max_tokens": LONG, "temperature": 0, "stream": True}
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    lines.append(line[6:])
                    first.set()
    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def _ended_cancelled(lines: list) -> None:
    assert lines[-1] == "[DONE]", lines[-3:]
    chunks = [json.loads(x) for x in lines[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "cancelled"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert len(chunks) - 1 < LONG                        # cut short: it was running


def test_begin_shutdown_refuses_new_work_and_ends_streams_with_a_final_event(long_model):
    folder, model, prompt = long_model
    with loom.deterministic(True):
        running = Running(Server(model, "tiny", max_batch=2, max_queue=4))
    try:
        lines, first = [], threading.Event()
        reader = _stream(running.url, prompt, lines, first)
        assert first.wait(30)
        running.server.begin_shutdown(0.0)
        refused = httpx.post(running.url + "/v1/completions", json={"model": "tiny", "prompt": "hi"}, timeout=30)
        assert refused.status_code == 503 and refused.json()["error"]["type"] == "server_error"
        reader.join(30)
        assert not reader.is_alive()
        _ended_cancelled(lines)
    finally:
        running.close()


def test_sigterm_cancels_in_flight_streams_and_exits_0(long_model):
    folder, _, prompt = long_model
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-m", "loom", "serve", "--model", str(folder), "--name", "tiny",
                             "--port", str(port), "--shutdown-timeout", "0.2"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read()
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.time() < deadline, "the server did not start"
            time.sleep(0.1)
        lines, first = [], threading.Event()
        reader = _stream(url, prompt, lines, first)
        assert first.wait(30)
        proc.send_signal(signal.SIGTERM)
        reader.join(30)
        assert not reader.is_alive()
        _ended_cancelled(lines)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def test_a_bad_shutdown_timeout_is_one_line(tmp_path, capsys):
    from cli_run import loom as run_loom
    for value in ("-1", "nan"):
        code, _, err = run_loom(capsys, "serve", "--model", tmp_path, "--shutdown-timeout", value)
        assert code == 3 and "--shutdown-timeout" in err and err.count("\n") == 1

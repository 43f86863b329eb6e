"""A small Chrome DevTools protocol client over `--remote-debugging-pipe`, for driving headless
Chromium from the tests (tests/web) and the browser benchmark (benchmarks/browser.py): the Python
standard library and a Chromium executable, nothing else (no websocket library, no driver).

Chromium started with --remote-debugging-pipe reads the protocol's commands from its fd 3 and writes
replies and events to its fd 4, each message one JSON object ended by a NUL byte. `Chromium` starts
the browser headless in a process group of its own with a throwaway profile, a reader thread
collects replies and events, and `close()` (or leaving the `with` block) asks the browser to close,
then kills whatever is left of its process group and reaps it, so no Chromium outlives the client
(one never closed is killed when the interpreter exits). Chromium's own helpers that it leaves behind
as zombies are reparented to init, which reaps them.

    with Chromium() as browser:
        page = browser.new_page()
        page.navigate("http://127.0.0.1:8000/?auto=1")
        page.wait_for("document.body.dataset.state === 'done'", timeout=300,
                      fail="document.body.dataset.state === 'error'")
        result = page.evaluate("window.loomResult")
        png = page.screenshot()

A page collects the console messages of the page and its workers (Runtime.consoleAPICalled,
Runtime.exceptionThrown, Log.entryAdded) in `page.console`; a `wait_for` that times out or fails
raises `PageError` with the body's data-state, the start of its text and the messages, so a failure
says what the page said. $LOOM_CHROMIUM names the executable where it is not on PATH as `chromium`.
POSIX only (the pipe is handed over as fds 3 and 4).
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BackendError

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
HEADLESS_ARGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
                 "--disable-background-networking", "--disable-background-timer-throttling",
                 "--disable-backgrounding-occluded-windows", "--disable-renderer-backgrounding",
                 "--disable-component-update", "--disable-sync", "--mute-audio", "--hide-scrollbars",
                 "--window-size=1280,1000")
_DIAGNOSTIC = ("JSON.stringify({state: document.body ? document.body.dataset.state ?? null : null, "
               "title: document.title, url: location.href, "
               "text: document.body ? document.body.innerText.slice(0, 400) : ''})")


class CDPError(BackendError):
    """Chromium could not be started, answered a command with an error, or exited."""


class PageError(CDPError):
    """A page did not reach a condition in time (or reached its failure condition); the message
    carries the body's data-state and the console messages collected so far."""

    def __init__(self, message: str, state: str | None = None, console: Sequence[ConsoleMessage] = ()):
        self.state = state
        self.console = list(console)
        super().__init__(message)


@dataclass(frozen=True)
class ConsoleMessage:
    """One console line: where it came from ("page" or "worker"), its kind (a console API type such
    as "log" or "error", "exception", or a Log domain level such as "warning") and its text."""
    source: str
    level: str
    text: str

    def __str__(self) -> str:
        return f"[{self.source} {self.level}] {self.text}"

    @property
    def is_error(self) -> bool:
        """An error, an assertion, or an exception that was not caught."""
        return self.level in ("error", "assert", "exception")


def find_chromium() -> str | None:
    """The Chromium (or Chrome) executable: $LOOM_CHROMIUM if set, else the first of CANDIDATES on
    PATH; None when there is none."""
    override = os.environ.get("LOOM_CHROMIUM")
    if override:
        return override if os.path.isfile(override) and os.access(override, os.X_OK) else shutil.which(override)
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def not_found() -> str:
    """Why find_chromium() found nothing, in a sentence."""
    override = os.environ.get("LOOM_CHROMIUM")
    if override:
        return f"no Chromium: LOOM_CHROMIUM={override} is not an executable"
    return f"no Chromium found (looked for {', '.join(CANDIDATES)} on PATH; LOOM_CHROMIUM names one elsewhere)"


def _remote_text(obj: dict) -> str:
    """A Runtime.RemoteObject as console text."""
    if "value" in obj:
        value = obj["value"]
        return value if isinstance(value, str) else json.dumps(value)
    return str(obj.get("description") or obj.get("unserializableValue") or obj.get("type", ""))


def _kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()


class Chromium:
    """A headless Chromium driven over the DevTools pipe. `timeout` is how long one command may take
    to be answered (seconds); `args` are extra command-line flags."""

    def __init__(self, executable: str | None = None, *, args: Iterable[str] = (), timeout: float = 30.0):
        if os.name != "posix":
            raise CDPError("driving Chromium over --remote-debugging-pipe needs a POSIX system")
        exe = executable or find_chromium()
        if exe is None:
            raise CDPError(not_found())
        self.executable = exe
        self.timeout = timeout
        self._profile = tempfile.TemporaryDirectory(prefix="loom-chromium-", ignore_cleanup_errors=True)
        self._lock = threading.Lock()              # guards the ids, the replies and the sessions
        self._write_lock = threading.Lock()        # one message at a time into the pipe
        self._answered = threading.Condition(self._lock)
        self._next_id = 0
        self._replies: dict[int, dict] = {}
        self._pages: dict[str, Page] = {}          # session id (the page's and its workers') -> page
        self._worker_of: dict[str, Page] = {}
        self._closed = False
        self._stderr_path = Path(self._profile.name) / "stderr.txt"
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        flags = [*HEADLESS_ARGS, "--remote-debugging-pipe", f"--user-data-dir={self._profile.name}/profile", *args]
        # the shell gets the pipe's ends as its stdin and stdout, moves them to the fds Chromium expects
        # (3: commands, 4: replies) and execs it, so the browser keeps the pid (and leads the process
        # group) that Popen gave the shell
        script = 'exec "$0" "$@" 3<&0 4>&1 0</dev/null 1>/dev/null'
        try:
            with open(self._stderr_path, "wb") as err:
                self.process = subprocess.Popen(["/bin/sh", "-c", script, exe, *flags], stdin=to_browser_r,
                                                stdout=from_browser_w, stderr=err, start_new_session=True)
        except OSError as exc:
            os.close(self._to_browser)
            os.close(self._from_browser)
            self._profile.cleanup()
            raise CDPError(f"starting {exe} failed: {exc}") from None
        finally:
            os.close(to_browser_r)
            os.close(from_browser_w)
        # a client never closed still ends its browser when the interpreter exits
        self._finalizer = weakref.finalize(self, _kill_group, self.process)
        self._reader = threading.Thread(target=self._read, name="loom-cdp-reader", daemon=True)
        self._reader.start()
        try:
            self.version = self.send("Browser.getVersion", timeout=max(timeout, 30.0))
        except BaseException:
            self.close()
            raise

    # -- the pipe ----------------------------------------------------------------------------------

    def _read(self) -> None:
        buffer = b""
        try:
            while True:
                try:
                    chunk = os.read(self._from_browser, 1 << 16)
                except OSError:
                    chunk = b""
                if not chunk:
                    break
                buffer += chunk
                *messages, buffer = buffer.split(b"\0")
                for raw in messages:
                    if raw:
                        self._dispatch(json.loads(raw))
        finally:        # the end of input, or a message this client cannot read: no more answers
            with self._lock:
                self._closed = True
                self._answered.notify_all()

    def _dispatch(self, message: dict) -> None:
        if "id" in message:
            with self._lock:
                self._replies[message["id"]] = message
                self._answered.notify_all()
            return
        method, params, session = message.get("method"), message.get("params", {}), message.get("sessionId")
        with self._lock:
            page, worker = self._pages.get(session), session in self._worker_of
            if method == "Target.attachedToTarget" and page is not None:
                child = params["sessionId"]
                self._worker_of[child] = page
                self._pages[child] = page
        if page is None:
            return
        if method == "Target.attachedToTarget":
            # a page's worker: collect its console too (fire and forget: this is the reader thread)
            try:
                self._post("Runtime.enable", {}, child)
                if params.get("waitingForDebugger"):
                    self._post("Runtime.runIfWaitingForDebugger", {}, child)
            except CDPError:
                pass
            return
        page._event(method, params, "worker" if worker else "page")

    def _post(self, method: str, params: dict | None, session: str | None) -> int:
        """Send a command without waiting; its id."""
        with self._lock:
            if self._closed:
                raise CDPError(f"Chromium has exited{self._exit_note()}")
            self._next_id += 1
            ident = self._next_id
        message: dict[str, Any] = {"id": ident, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        data = json.dumps(message).encode() + b"\0"
        with self._write_lock:
            try:
                while data:
                    data = data[os.write(self._to_browser, data):]
            except OSError as exc:
                raise CDPError(f"writing to Chromium failed: {exc}{self._exit_note()}") from None
        return ident

    def send(self, method: str, params: dict | None = None, *, session: str | None = None,
             timeout: float | None = None) -> dict:
        """Run one protocol command (in `session`, a target's session id, if given) and return its
        result; raises CDPError with the protocol's message when it fails."""
        ident = self._post(method, params, session)
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        with self._lock:
            while ident not in self._replies:
                left = deadline - time.monotonic()
                if self._closed:
                    raise CDPError(f"Chromium exited before answering {method}{self._exit_note()}")
                if left <= 0:
                    raise CDPError(f"Chromium did not answer {method} within {limit:g} s")
                self._answered.wait(min(left, 1.0))
            reply = self._replies.pop(ident)
        if "error" in reply:
            error = reply["error"]
            data = f" {error['data']}" if "data" in error else ""
            raise CDPError(f"{method}: {error.get('message')} ({error.get('code')}){data}")
        return reply.get("result", {})

    def _exit_note(self) -> str:
        # whether it exited, without reaping it: a reaped leader's pid (the group's id) could be reused,
        # and close() could then no longer end the browser's helper processes
        proc = getattr(self, "process", None)
        rc = proc.returncode if proc is not None else None
        if proc is not None and rc is None and self._exited_unreaped(proc):
            rc = "exited"
        tail = self.stderr_tail()
        return (f" (exit status {rc})" if rc is not None else "") + (f"; its stderr ends:\n{tail}" if tail else "")

    def stderr_tail(self, lines: int = 20) -> str:
        """The last lines Chromium wrote to its stderr."""
        try:
            text = self._stderr_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    # -- targets -----------------------------------------------------------------------------------

    @property
    def product(self) -> str:
        """The browser's product and version, e.g. "HeadlessChrome/150.0.7871.100"."""
        return str(self.version.get("product", ""))

    def new_page(self, url: str = "about:blank", width: int = 1280, height: int = 1000) -> Page:
        """Open a tab of width x height CSS pixels, attached with its own session (page, runtime and log
        events on; its workers attached as they start), and navigate it to `url`."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, target, session)
        with self._lock:
            self._pages[session] = page
        for method in ("Page.enable", "Runtime.enable", "Log.enable"):
            page.send(method)
        page.send("Target.setAutoAttach", {"autoAttach": True, "waitForDebuggerOnStart": False, "flatten": True})
        page.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1,
                                                         "mobile": False})
        if url != "about:blank":
            page.navigate(url)
        return page

    # -- the end -----------------------------------------------------------------------------------

    def close(self, timeout: float = 10.0) -> None:
        """Close the browser: Browser.close, then (once the browser has exited, or after `timeout`
        seconds) SIGKILL to whatever is left in its process group, then reap it. Idempotent."""
        proc = getattr(self, "process", None)
        if proc is not None and proc.returncode is None:
            if not self._closed:
                try:
                    self._post("Browser.close", None, None)
                except CDPError:
                    pass
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and not self._exited_unreaped(proc):
                time.sleep(0.05)
            # the leader is a zombie (its pid, hence the group's id, is still taken) or still running:
            # either way the group is ours to end
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()
        finalizer = getattr(self, "_finalizer", None)
        if finalizer is not None:
            finalizer.detach()
        # the browser's end of the pipes died with it: the reader sees the end of its input and stops
        reader = getattr(self, "_reader", None)
        if reader is not None and reader is not threading.current_thread():
            reader.join(timeout=5)
        for fd in ("_to_browser", "_from_browser"):
            value = getattr(self, fd, None)
            if value is not None and not (fd == "_from_browser" and reader is not None and reader.is_alive()):
                try:
                    os.close(value)
                except OSError:
                    pass
                setattr(self, fd, None)
        self._profile.cleanup()

    @staticmethod
    def _exited_unreaped(proc: subprocess.Popen) -> bool:
        """Whether the process has exited, without reaping it (so its pid is not reused meanwhile)."""
        if hasattr(os, "waitid"):
            try:
                return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
            except ChildProcessError:
                return True
        return proc.poll() is not None

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Page:
    """One tab, attached through its own session."""

    def __init__(self, browser: Chromium, target_id: str, session_id: str):
        self.browser = browser
        self.target_id = target_id
        self.session_id = session_id
        self.console: list[ConsoleMessage] = []
        self._console_lock = threading.Lock()

    def _event(self, method: str | None, params: dict, source: str) -> None:
        message = None
        if method == "Runtime.consoleAPICalled":
            message = ConsoleMessage(source, params.get("type", "log"),
                                     " ".join(_remote_text(a) for a in params.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            text = details.get("exception", {}).get("description") or details.get("text", "")
            message = ConsoleMessage(source, "exception", f"{text} ({details.get('url', '')}:{details.get('lineNumber', '')})")
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            text = entry.get("text", "") + (f" ({entry['url']})" if entry.get("url") else "")
            message = ConsoleMessage(source, entry.get("level", "info"), text)
        if message is not None:
            with self._console_lock:
                self.console.append(message)

    def send(self, method: str, params: dict | None = None, timeout: float | None = None) -> dict:
        """A protocol command in this page's session."""
        return self.browser.send(method, params, session=self.session_id, timeout=timeout)

    def close(self) -> None:
        """Close the tab (the browser stays)."""
        try:
            self.browser.send("Target.closeTarget", {"targetId": self.target_id})
        except CDPError:
            pass

    def navigate(self, url: str) -> None:
        """Start loading `url`; raises CDPError when the navigation fails at once (no server, say)."""
        result = self.send("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise CDPError(f"navigating to {url} failed: {result['errorText']}")

    def evaluate(self, expression: str, await_promise: bool = False, timeout: float | None = None) -> Any:
        """The value of a JavaScript expression in the page (returned by value: JSON-like data);
        raises CDPError with the exception when it throws."""
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": await_promise, "userGesture": True},
                           timeout=timeout)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text", "")
            raise CDPError(f"evaluating {expression!r} threw: {text}")
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 30.0, interval: float = 0.1, fail: str | None = None) -> Any:
        """Poll `expression` until it is truthy and return its value; raise PageError (with the page's
        state and console messages) after `timeout` seconds, or as soon as `fail` (an expression) is
        truthy. Evaluation errors (say, while a navigation replaces the document) count as not yet."""
        deadline = time.monotonic() + timeout
        last_error = ""
        while True:
            try:
                if fail is not None and self.evaluate(fail):
                    raise self._error(f"the page reached {fail!r} while waiting for {expression!r}")
                value = self.evaluate(expression)
                if value:
                    return value
            except PageError:
                raise
            except CDPError as exc:
                if self.browser._exited_unreaped(self.browser.process) or self.browser._closed:
                    raise self._error(f"Chromium exited while waiting for {expression!r}: {exc}") from None
                last_error = str(exc)
            if time.monotonic() >= deadline:
                note = f" (last evaluation error: {last_error})" if last_error else ""
                raise self._error(f"timed out after {timeout:.0f} s waiting for {expression!r}{note}")
            time.sleep(interval)

    def diagnostics(self) -> dict:
        """The body's data-state, the title, the URL and the start of the page's text, as far as they
        can be read."""
        try:
            return json.loads(self.evaluate(_DIAGNOSTIC, timeout=5))
        except (CDPError, TypeError, ValueError):
            return {}

    def errors(self) -> list[ConsoleMessage]:
        """The console messages so far that are errors or uncaught exceptions."""
        with self._console_lock:
            return [m for m in self.console if m.is_error]

    def _error(self, message: str) -> PageError:
        info = self.diagnostics()
        with self._console_lock:
            console = list(self.console)
        errors = [m for m in console if m.is_error]
        shown = errors or console[-20:]
        lines = [message, f"body data-state: {info.get('state')!r}, url: {info.get('url')}"]
        if info.get("text"):
            lines.append("the page begins: " + " | ".join(t for t in info["text"].splitlines() if t.strip())[:300])
        if shown:
            lines.append("console errors:" if errors else "last console messages:")
            lines += [f"  {m}" for m in shown[-30:]]
        else:
            lines.append("no console messages")
        return PageError("\n".join(lines), info.get("state"), console)

    def screenshot(self, path: str | os.PathLike[str] | None = None, full_page: bool = True) -> bytes:
        """A PNG of the page (the whole page when full_page, else the viewport); written to `path` too
        if given."""
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            metrics = self.send("Page.getLayoutMetrics")
            size = metrics.get("cssContentSize") or metrics["contentSize"]
            params.update(captureBeyondViewport=True,
                          clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1})
        data = base64.b64decode(self.send("Page.captureScreenshot", params, timeout=60)["data"])
        if path is not None:
            Path(path).write_bytes(data)
        return data

    def set_files(self, selector: str, paths: Sequence[str | os.PathLike[str]]) -> None:
        """Choose files for the <input type=file> matching `selector` (its input and change events fire)."""
        root = self.send("DOM.getDocument", {"depth": 0})["root"]["nodeId"]
        node = self.send("DOM.querySelector", {"nodeId": root, "selector": selector})["nodeId"]
        if not node:
            raise CDPError(f"no element matches {selector!r}")
        self.send("DOM.setFileInputFiles", {"nodeId": node, "files": [str(Path(p).resolve()) for p in paths]})

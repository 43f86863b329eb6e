"""A TCP key-value store for the rendezvous of a data-parallel world.

Before NCCL can connect the ranks, the processes must find each other and agree on a few things: the
NCCL unique id, the world size, a fingerprint of the config. That needs a channel that exists before
any GPU code runs, so rank 0 serves a small key-value store from a thread and every rank (rank 0 too)
is a client of it, in the spirit of torch.distributed's TCPStore: `set`, `get` (blocks until the key
exists), `add` (an atomic counter), `delete`; and on top of them the helpers start-up checks use:
`barrier` and `exchange` (an all-gather of bytes), whose timeouts name the ranks that did not come,
and heartbeats, so that a watchdog can name a rank that stopped.

Every wait has a deadline and every socket a timeout: a rank that cannot reach rank 0, or loses it,
raises DistributedError naming host:port and the rank instead of hanging.

Wire protocol, both ways a frame: a 4-byte big-endian length, then the body (at most MAX_FRAME bytes).
A request body is op (1 byte), key length (4 bytes), the UTF-8 key, then the op's payload; a reply body
is a status (1 byte) then its payload. The server answers a malformed frame with an error status and
drops that connection only; the other clients never notice.
"""
from __future__ import annotations

import socket
import struct
import threading
import time
from types import TracebackType

from loom.errors import DistributedError

MAX_FRAME = 1 << 30                   # 1 GiB: far above any rendezvous value, low enough to refuse garbage lengths
_LEN = struct.Struct("!I")
_REQ = struct.Struct("!BI")           # op, key length
_F64 = struct.Struct("!d")
_I64 = struct.Struct("!q")

_SET, _GET, _ADD, _DELETE, _NUM_KEYS = 1, 2, 3, 4, 5
_OP_NAMES = {_SET: "set", _GET: "get", _ADD: "add", _DELETE: "delete", _NUM_KEYS: "num_keys"}
_OK, _MISSING, _ERR = 0, 1, 2
# A blocking get is a series of server-side waits this long, so the socket timeout of each request stays
# short and a hung server is noticed within about this plus the store's timeout.
_WAIT_SLICE = 1.0
_MAX_WAIT = 3600.0                    # the longest wait the server accepts in one request


class _FrameError(Exception):
    """A frame that breaks the protocol (too long, too short, unknown op): the connection is unusable."""


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], min(n - got, 1 << 20))
        if k == 0:
            raise ConnectionError("connection closed by the peer")
        got += k
    return bytes(buf)


def _read_frame(sock: socket.socket) -> bytes:
    (n,) = _LEN.unpack(_recv_exact(sock, _LEN.size))
    if n > MAX_FRAME:
        raise _FrameError(f"a frame of {n} bytes is over the {MAX_FRAME}-byte cap")
    return _recv_exact(sock, n)


def _send_frame(sock: socket.socket, body: bytes) -> None:
    sock.sendall(_LEN.pack(len(body)) + body)


class _Server:
    """The store itself: a dict under a condition variable, one thread per client connection."""

    def __init__(self, host: str, port: int):
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # a port freed by a previous run is still in TIME_WAIT; without this a relaunch fails to bind
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._sock.bind((host, port))
            self._sock.listen(128)
        except OSError as exc:
            self._sock.close()
            raise DistributedError(f"rank 0 cannot serve the rendezvous at {host}:{port}: {exc}") from exc
        # accept() is not woken by close() from another thread on Linux: poll a stop flag instead
        self._sock.settimeout(0.25)
        self.port: int = self._sock.getsockname()[1]
        self._data: dict[str, bytes] = {}
        self._cond = threading.Condition()
        self._conns: set[socket.socket] = set()
        self._stopping = False
        self._thread = threading.Thread(target=self._accept_loop, name=f"loom-store-server:{self.port}", daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        while not self._stopping:
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._cond:
                if self._stopping:
                    conn.close()
                    return
                self._conns.add(conn)
            threading.Thread(target=self._serve, args=(conn,), name="loom-store-conn", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            while True:
                try:
                    status, payload = self._handle(_read_frame(conn))
                except _FrameError as exc:
                    # answer so that a confused client sees why, then drop only this connection
                    _send_frame(conn, bytes([_ERR]) + str(exc).encode())
                    return
                _send_frame(conn, bytes([status]) + payload)
        except OSError:
            pass                              # the client left (or stop() shut the socket): nothing to answer
        finally:
            conn.close()
            with self._cond:
                self._conns.discard(conn)
                self._cond.notify_all()

    def _handle(self, body: bytes) -> tuple[int, bytes]:
        if len(body) < _REQ.size:
            raise _FrameError(f"a request of {len(body)} bytes is shorter than its {_REQ.size}-byte header")
        op, klen = _REQ.unpack_from(body)
        if _REQ.size + klen > len(body):
            raise _FrameError(f"a key length of {klen} runs past the end of a {len(body)}-byte request")
        try:
            key = body[_REQ.size:_REQ.size + klen].decode()
        except UnicodeDecodeError as exc:
            raise _FrameError(f"the key is not UTF-8 ({exc})") from None
        payload = body[_REQ.size + klen:]
        if op == _SET:
            with self._cond:
                self._data[key] = payload
                self._cond.notify_all()
            return _OK, b""
        if op == _GET:
            if len(payload) != _F64.size:
                raise _FrameError(f"get {key!r} carries {len(payload)} payload bytes, not an 8-byte wait")
            (wait,) = _F64.unpack(payload)
            if not 0.0 <= wait <= _MAX_WAIT:
                raise _FrameError(f"get {key!r} asks to wait {wait} s, outside [0, {_MAX_WAIT:g}]")
            with self._cond:
                self._cond.wait_for(lambda: key in self._data or self._stopping, timeout=wait)
                value = self._data.get(key)
            return (_OK, value) if value is not None else (_MISSING, b"")
        if op == _ADD:
            if len(payload) != _I64.size:
                raise _FrameError(f"add {key!r} carries {len(payload)} payload bytes, not an 8-byte amount")
            (amount,) = _I64.unpack(payload)
            with self._cond:
                old = self._data.get(key, b"0")
                try:
                    new = int(old) + amount
                except ValueError:
                    return _ERR, f"key {key!r} holds {old[:40]!r}, not an integer counter".encode()
                self._data[key] = str(new).encode()
                self._cond.notify_all()
            return _OK, _I64.pack(new)
        if op == _DELETE:
            with self._cond:
                existed = self._data.pop(key, None) is not None
            return _OK, bytes([existed])
        if op == _NUM_KEYS:
            with self._cond:
                return _OK, _I64.pack(len(self._data))
        raise _FrameError(f"unknown op {op}")

    def stop(self, wait: float) -> None:
        """Wait up to `wait` seconds for the clients to disconnect (so that a rank still finishing its last
        request is not cut off), then shut every connection and stop listening."""
        with self._cond:
            self._cond.wait_for(lambda: not self._conns, timeout=wait)
            self._stopping = True
            conns = list(self._conns)
            self._cond.notify_all()           # wakes waiting gets; their clients then find the socket shut
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        try:
            self._sock.shutdown(socket.SHUT_RDWR)     # wakes accept() now on Linux; elsewhere it sees the flag
        except OSError:
            pass
        self._thread.join(1.0)
        self._sock.close()


def _connect(host: str, port: int, rank: int, timeout: float) -> socket.socket:
    """A connection to the store, retried until `timeout`: the other ranks may start before rank 0 listens."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        remaining = deadline - time.monotonic()
        try:
            sock = socket.create_connection((host, port), timeout=max(min(remaining, 5.0), 0.05))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)   # small request/reply: no Nagle delay
            return sock
        except OSError as exc:
            last = exc
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DistributedError(f"rank {rank} could not reach the rendezvous at {host}:{port} within {timeout:g} s "
                                   f"({last}); is rank 0 running, and are MASTER_ADDR/MASTER_PORT the same on "
                                   f"every rank?")
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, 0.5)


class _Client:
    """One connection to the server; requests from several threads take turns."""

    def __init__(self, host: str, port: int, rank: int, timeout: float):
        self._where = f"{host}:{port}"
        self._rank = rank
        self._timeout = timeout
        self._sock = _connect(host, port, rank, timeout)
        self._lock = threading.Lock()
        self._broken: str | None = None

    def request(self, op: int, key: str, payload: bytes = b"", wait: float = 0.0) -> tuple[int, bytes]:
        raw_key = key.encode()
        body = _REQ.pack(op, len(raw_key)) + raw_key + payload
        if len(body) > MAX_FRAME:
            raise ValueError(f"rank {self._rank}: {_OP_NAMES[op]} {key!r}: {len(body)} bytes is over the store's "
                             f"{MAX_FRAME}-byte frame cap")
        with self._lock:
            if self._broken is not None:
                raise DistributedError(self._broken)
            try:
                self._sock.settimeout(wait + self._timeout)
                _send_frame(self._sock, body)
                reply = _read_frame(self._sock)
                if not reply:
                    raise _FrameError("an empty reply")
            except (OSError, _FrameError) as exc:
                why = f"no answer within {wait + self._timeout:g} s" if isinstance(exc, TimeoutError) else str(exc)
                self._broken = (f"rank {self._rank} lost the connection to the rendezvous at {self._where} (rank 0's "
                                f"store server) during {_OP_NAMES[op]} {key!r}: {why}")
                self._sock.close()
                raise DistributedError(self._broken) from exc
        if reply[0] == _ERR:
            raise DistributedError(f"rank {self._rank}: the rendezvous at {self._where} refused {_OP_NAMES[op]} "
                                   f"{key!r}: {reply[1:].decode(errors='replace')}")
        return reply[0], reply[1:]

    def close(self) -> None:
        with self._lock:
            if self._broken is None:
                self._broken = f"rank {self._rank}: the store client of the rendezvous at {self._where} is closed"
            self._sock.close()


class Store:
    """A rank's handle on the rendezvous store at host:port; rank 0 also serves it (port 0 there picks a
    free port: read it back from `.port`). `timeout` bounds connecting, every default wait, and how long
    one request may go unanswered."""

    def __init__(self, host: str, port: int, rank: int, world_size: int, timeout: float = 60.0):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a world of size {world_size}")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        if port == 0 and rank != 0:
            raise ValueError(f"rank {rank}: port 0 only lets rank 0 pick a free port; the others need the real one")
        self.host = host
        self.rank = rank
        self.world_size = world_size
        self.timeout = float(timeout)
        self._server = _Server(host, port) if rank == 0 else None
        self.port: int = self._server.port if self._server is not None else port
        try:
            self._client = _Client(host, self.port, rank, self.timeout)
        except BaseException:
            if self._server is not None:
                self._server.stop(0.0)
            raise
        self._generations: dict[str, int] = {}
        self._beat_stop = threading.Event()
        self._beat_thread: threading.Thread | None = None
        self._beats_seen: dict[int, tuple[bytes | None, float]] = {}
        self._closed = False

    def __repr__(self) -> str:
        return f"Store({self.host}:{self.port}, rank {self.rank} of {self.world_size})"

    # -- the key-value operations ------------------------------------------------------------------

    def set(self, key: str, value: bytes) -> None:
        """Store `value` under `key`, replacing any earlier value, and wake every rank waiting for it."""
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise TypeError(f"store value for {key!r} must be bytes, got {type(value).__name__}")
        self._client.request(_SET, key, bytes(value))

    def get(self, key: str, timeout: float | None = None) -> bytes:
        """The value of `key`, waiting up to `timeout` seconds (default: the store's) for some rank to set it."""
        limit = self.timeout if timeout is None else timeout
        value = self._get_until(key, time.monotonic() + limit)
        if value is None:
            raise DistributedError(f"rank {self.rank}: get({key!r}) timed out after {limit:g} s: no rank set the key "
                                   f"(rendezvous at {self.host}:{self.port})")
        return value

    def add(self, key: str, amount: int) -> int:
        """Atomically add `amount` to the integer counter at `key` (absent counts as 0); the new value."""
        return _I64.unpack(self._client.request(_ADD, key, _I64.pack(amount))[1])[0]

    def delete(self, key: str) -> bool:
        """Remove `key`; whether it was there."""
        return self._client.request(_DELETE, key)[1] == b"\x01"

    def num_keys(self) -> int:
        """How many keys the store holds (all ranks' together): lets tests check that nothing piles up."""
        return _I64.unpack(self._client.request(_NUM_KEYS, "")[1])[0]

    def _get_until(self, key: str, deadline: float) -> bytes | None:
        while True:
            wait = max(0.0, min(deadline - time.monotonic(), _WAIT_SLICE))
            status, value = self._client.request(_GET, key, _F64.pack(wait), wait=wait)
            if status == _OK:
                return value
            if time.monotonic() >= deadline:
                return None

    # -- collective helpers ------------------------------------------------------------------------

    def _next_generation(self, name: str) -> int:
        # Every rank calls a barrier or exchange of one name the same number of times, so a local count
        # agrees across ranks without asking the store, and keys of successive uses never collide.
        gen = self._generations.get(name, 0)
        self._generations[name] = gen + 1
        return gen

    def _gather(self, what: str, prefix: str, limit: float) -> list[bytes | None]:
        """The values of prefix+<rank> for every rank but this one (None in its place), waiting up to `limit`
        seconds in all; on timeout, raise naming every rank whose key is still missing."""
        deadline = time.monotonic() + limit
        out: list[bytes | None] = []
        for r in range(self.world_size):
            value = None if r == self.rank else self._get_until(prefix + str(r), deadline)
            if value is None and r != self.rank:
                missing = [q for q in range(self.world_size) if q != self.rank and
                           self._client.request(_GET, prefix + str(q), _F64.pack(0.0))[0] != _OK]
                raise DistributedError(f"rank {self.rank}: {what} timed out after {limit:g} s: ranks {missing} of "
                                       f"{self.world_size} did not arrive (rendezvous at {self.host}:{self.port})")
            out.append(value)
        return out

    def barrier(self, name: str, timeout: float | None = None) -> None:
        """Return once all world_size ranks have called barrier(name) as many times as this one."""
        gen = self._next_generation("barrier/" + name)
        prefix = f"barrier/{name}/{gen}/"
        self.set(prefix + str(self.rank), b"1")
        self._gather(f"barrier {name!r} (use {gen})", prefix, self.timeout if timeout is None else timeout)
        # Every rank has now arrived here, so every rank has left the previous use: its keys can go.
        if gen > 0:
            self.delete(f"barrier/{name}/{gen - 1}/{self.rank}")

    def exchange(self, name: str, value: bytes, timeout: float | None = None) -> list[bytes]:
        """All-gather through the store: every rank contributes `value` and gets every rank's, in rank order."""
        gen = self._next_generation("exchange/" + name)
        prefix = f"exchange/{name}/{gen}/"
        self.set(prefix + str(self.rank), value)
        values = self._gather(f"exchange {name!r} (use {gen})", prefix, self.timeout if timeout is None else timeout)
        values[self.rank] = bytes(value)
        if gen > 0:                           # as in barrier: every rank has read the previous use
            self.delete(f"exchange/{name}/{gen - 1}/{self.rank}")
        return values                         # type: ignore[return-value]  # no None is left

    # -- heartbeats --------------------------------------------------------------------------------

    def start_heartbeat(self, interval: float = 1.0) -> None:
        """Set heartbeat/<rank> to a growing counter every `interval` seconds from a daemon thread, on a
        connection of its own (so that a long get() never delays a beat), until close()."""
        if interval <= 0:
            raise ValueError(f"heartbeat interval must be positive, got {interval}")
        if self._beat_thread is not None:
            raise DistributedError(f"rank {self.rank}: the heartbeat is already running")
        client = _Client(self.host, self.port, self.rank, self.timeout)
        key = f"heartbeat/{self.rank}"

        def beat() -> None:
            count = 0
            try:
                while not self._beat_stop.is_set():
                    count += 1
                    client.request(_SET, key, str(count).encode())
                    self._beat_stop.wait(interval)
            except DistributedError:
                pass                          # the rendezvous is gone: the main thread's next call says so
            finally:
                client.close()

        self._beat_thread = threading.Thread(target=beat, name=f"loom-heartbeat-{self.rank}", daemon=True)
        self._beat_thread.start()

    def dead_ranks(self, stale: float) -> list[int]:
        """Ranks whose heartbeat this process has not seen change for `stale` seconds (by its own monotonic
        clock, so clocks of other machines do not matter). The first call sets the baseline: call it
        periodically, e.g. from a watchdog loop, with `stale` several heartbeat intervals."""
        now = time.monotonic()
        dead = []
        for r in range(self.world_size):
            status, value = self._client.request(_GET, f"heartbeat/{r}", _F64.pack(0.0))
            beat = value if status == _OK else None
            seen = self._beats_seen.get(r)
            if seen is None or seen[0] != beat:
                self._beats_seen[r] = (beat, now)
            elif now - seen[1] >= stale:
                dead.append(r)
        return dead

    # -- closing -----------------------------------------------------------------------------------

    def close(self, wait: float | None = None) -> None:
        """Stop the heartbeat and disconnect. On rank 0 also stop the server, after waiting up to `wait`
        seconds (default: the store's timeout) for the other ranks to disconnect first, so that one still
        finishing its last request is not cut off; a rank that died has already disconnected."""
        if self._closed:
            return
        self._closed = True
        self._beat_stop.set()
        if self._beat_thread is not None:
            self._beat_thread.join(self.timeout)
        self._client.close()
        if self._server is not None:
            self._server.stop(self.timeout if wait is None else wait)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        # after an error the other ranks may never disconnect: do not wait for them
        self.close(wait=0.0 if exc_type is not None else None)

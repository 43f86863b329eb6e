"""The rendezvous store (loom/distributed/store.py): key-value semantics, barrier and exchange across
threads and processes, every timeout naming what it waited for, and the server surviving bad clients
and its clients not hanging when it dies."""
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from loom.distributed.launch import free_port, spawn
from loom.distributed.store import Store
from loom.errors import DistributedError

from .worlds import on_threads, world

RANKS_MAIN = str(Path(__file__).with_name("ranks_main.py"))


def test_set_get_add_delete():
    with world(1) as (s,):
        s.set("a", b"\x00\x01 bytes")
        assert s.get("a") == b"\x00\x01 bytes"
        s.set("a", b"")                                   # replacing, and an empty value
        assert s.get("a") == b""
        assert s.add("n", 5) == 5 and s.add("n", -2) == 3
        assert s.get("n") == b"3"                        # counters read back as decimal text, as in TCPStore
        assert s.delete("a") is True and s.delete("a") is False
        assert s.num_keys() == 1
        s.set("ü/κ", bytearray(b"x"))
        assert s.get("ü/κ") == b"x"
        with pytest.raises(TypeError, match="'s'"):
            s.set("s", "text")
        s.set("text", b"abc")
        with pytest.raises(DistributedError, match="not an integer counter"):
            s.add("text", 1)
        assert s.add("n", 1) == 4                         # the refused add left the connection usable


def test_get_waits_for_another_rank_to_set():
    with world(2) as (s0, s1):
        threading.Timer(0.2, s1.set, ("late", b"here")).start()
        assert s0.get("late", timeout=3.0) == b"here"


def test_get_timeout_names_the_key():
    with world(1) as (s,):
        start = time.monotonic()
        with pytest.raises(DistributedError, match=r"rank 0: get\('never-set'\) timed out after 0.3 s"):
            s.get("never-set", timeout=0.3)
        assert time.monotonic() - start < 3.0


def test_add_is_atomic_across_clients():
    with world(4) as stores:
        results = on_threads(stores, lambda s: [s.add("counter", 1) for _ in range(100)])
        seen = sorted(v for r in results for v in r)
        assert seen == list(range(1, 401))                # every increment returned a distinct value
        assert stores[0].get("counter") == b"400"


def test_barrier_and_exchange_across_threads_are_reusable():
    with world(3) as stores:
        def rank(s: Store) -> list:
            out = []
            for i in range(20):
                s.barrier("step")
                out.append(s.exchange("vals", f"{s.rank}:{i}".encode()))
            return out
        results = on_threads(stores, rank)
        for res in results:
            assert res == [[f"{r}:{i}".encode() for r in range(3)] for i in range(20)]
        # the keys of earlier uses were deleted: at most one use of each name is left per rank
        assert stores[0].num_keys() <= 2 * 3


def test_barrier_timeout_names_the_missing_ranks():
    with world(3) as stores:
        results = on_threads(stores[:2], lambda s: s.barrier("start", timeout=0.5))
        for rank, exc in enumerate(results):
            assert isinstance(exc, DistributedError)
            assert f"rank {rank}: barrier 'start'" in str(exc) and "ranks [2] of 3 did not arrive" in str(exc)


def test_exchange_timeout_names_the_missing_ranks():
    with world(4) as stores:
        results = on_threads([stores[0], stores[2]], lambda s: s.exchange("fingerprint", b"abc", timeout=0.5))
        assert all(isinstance(e, DistributedError) and "ranks [1, 3] of 4 did not arrive" in str(e) for e in results)


def test_unreachable_rendezvous_errors_within_its_timeout():
    port = free_port()                                    # nobody listens there
    start = time.monotonic()
    with pytest.raises(DistributedError, match=rf"rank 1 could not reach the rendezvous at 127.0.0.1:{port} within 1 s"):
        Store("127.0.0.1", port, 1, 2, timeout=1.0)
    assert time.monotonic() - start < 4.0


def test_a_rank_started_before_rank_0_waits_for_it():
    port = free_port()
    holder: list[Store] = []
    late = threading.Timer(0.3, lambda: holder.append(Store("127.0.0.1", port, 0, 2, timeout=3.0)))
    late.start()
    s1 = Store("127.0.0.1", port, 1, 2, timeout=3.0)
    late.join()
    try:
        on_threads([holder[0], s1], lambda s: s.barrier("hello"))
    finally:
        s1.close()
        holder[0].close()


def test_clients_raise_when_the_server_stops():
    s0 = Store("127.0.0.1", 0, 0, 2, timeout=5.0)
    s1 = Store("127.0.0.1", s0.port, 1, 2, timeout=5.0)
    try:
        threading.Timer(0.3, s0.close, kwargs={"wait": 0.0}).start()
        start = time.monotonic()
        with pytest.raises(DistributedError, match=rf"rank 1 lost the connection to the rendezvous at "
                                                   rf"127.0.0.1:{s0.port} \(rank 0's store server\)"):
            s1.get("never-set", timeout=30.0)
        assert time.monotonic() - start < 4.0
        with pytest.raises(DistributedError, match="lost the connection"):
            s1.set("x", b"1")
    finally:
        s1.close()


def test_clients_raise_when_the_server_process_dies():
    port = free_port()
    server = subprocess.Popen([sys.executable, RANKS_MAIN, "serve", str(port)], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "ready"
        with Store("127.0.0.1", port, 1, 2, timeout=5.0) as s1:
            s1.set("k", b"v")
            assert s1.get("k") == b"v"
            server.kill()
            server.wait()
            start = time.monotonic()
            with pytest.raises(DistributedError, match=rf"rank 1 lost the connection to the rendezvous at "
                                                       rf"127.0.0.1:{port} \(rank 0"):
                s1.get("never-set", timeout=30.0)
            assert time.monotonic() - start < 4.0
    finally:
        server.kill()
        server.wait()


def _raw_exchange(port: int, data: bytes) -> bytes:
    """Send raw bytes to the store, then read until it closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=3.0) as sock:
        sock.sendall(data)
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
    return reply


@pytest.mark.parametrize("frame, says", [
    (struct.pack("!I", 0xFFFFFFFF), b"over the 1073741824-byte cap"),
    (struct.pack("!I", 2) + b"\x01\x00", b"shorter than its 5-byte header"),
    (struct.pack("!I", 9) + struct.pack("!BI", 1, 99) + b"abcd", b"runs past the end"),
    (struct.pack("!I", 6) + struct.pack("!BI", 42, 1) + b"k", b"unknown op 42"),
    (struct.pack("!I", 6) + struct.pack("!BI", 2, 1) + b"k", b"not an 8-byte wait"),
    (struct.pack("!I", 7) + struct.pack("!BI", 1, 2) + b"\xff\xfe", b"not UTF-8"),
])
def test_a_malformed_frame_is_refused_and_the_server_keeps_serving(frame, says):
    with world(2) as (s0, s1):
        reply = _raw_exchange(s0.port, frame)
        assert reply[4] == 2 and says in reply[5:]          # an error status, saying what was wrong
        with socket.create_connection(("127.0.0.1", s0.port)) as sock:
            sock.sendall(struct.pack("!I", 100) + b"half")   # a frame cut short by a client that leaves
        s1.set("after", b"fine")
        assert s0.get("after") == b"fine"
        on_threads([s0, s1], lambda s: s.barrier("still"))


def test_heartbeats_name_a_rank_that_stopped():
    with world(3) as (s0, s1, s2):
        s0.start_heartbeat(0.05)
        s1.start_heartbeat(0.05)                          # rank 2 never beats
        with pytest.raises(DistributedError, match="already running"):
            s1.start_heartbeat(0.05)
        assert s0.dead_ranks(0.6) == []                   # the first look is the baseline
        time.sleep(0.3)
        assert s0.dead_ranks(0.6) == []
        s1.close()                                        # its heartbeat stops
        deadline = time.monotonic() + 3.0
        while (dead := s0.dead_ranks(0.6)) != [1, 2] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert dead == [1, 2]


def test_store_world_across_processes():
    assert spawn([sys.executable, RANKS_MAIN, "store"], 3, timeout=30.0, grace=2.0) == [0, 0, 0]


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="rank 2 is not in a world of size 2"):
        Store("127.0.0.1", 1234, 2, 2)
    with pytest.raises(ValueError, match="port 0"):
        Store("127.0.0.1", 0, 1, 2)
    with world(1) as (s,):
        with pytest.raises(DistributedError, match=f"rank 0 cannot serve the rendezvous at 127.0.0.1:{s.port}"):
            Store("127.0.0.1", s.port, 0, 1)               # the port is taken
        assert repr(s) == f"Store(127.0.0.1:{s.port}, rank 0 of 1)"

"""Units, dispatch chains and swarms on the CPU (loom.engine.unit, swarm): results against NumPy,
asynchronous launches, and every misuse the engine refuses. The same on the GPU:
tests/gpu/test_engine_gpu.py."""
import threading

import numpy as np
import pytest
from engine_kernels import add_one, axpy

from loom import engine
from loom.engine import unit as unit_module
from loom.errors import ConfigError, EngineError, KernelFault


def test_a_chain_runs_its_dispatches_in_order():
    rng = np.random.default_rng()
    g = rng.normal(size=1000).astype(np.float32)
    with engine.boot("cpu", registers=1000, globals=1000, dtype="float32") as unit:
        unit.write(0, g, buffer="globals")
        scales = rng.normal(size=7).astype(np.float32)
        for a in scales:
            unit.dispatch(axpy, (float(a), 1000), grid=1000)
        assert len(unit) == 7
        prog = unit.build()
        prog.run()
        want = np.zeros(1000, np.float32)
        for a in scales:
            want = want + a * g
        assert np.array_equal(unit.read(0, 1000), want)
        prog.run()                                   # a program replays
        for a in scales:
            want = want + a * g
        assert np.array_equal(unit.read(), want)
        assert np.array_equal(unit.read(10, 5, buffer="globals"), g[10:15])


def test_a_chain_of_ten_thousand_dispatches_replays():
    with engine.boot("cpu", registers=10, dtype="int64") as unit:
        for _ in range(10_000):
            unit.dispatch(add_one, (10,), grid=10)
        prog = unit.build()
        prog.run()
        prog.run()
        assert unit.read().tolist() == [20_000] * 10


def _blocked(monkeypatch):
    """Programs that wait for the returned event before running."""
    gate = threading.Event()
    original = unit_module.Program._run_on_cpu

    def run(self):
        assert gate.wait(10)
        original(self)
    monkeypatch.setattr(unit_module.Program, "_run_on_cpu", run)
    return gate


def test_launch_poll_wait_and_no_io_while_in_flight(monkeypatch):
    gate = _blocked(monkeypatch)
    with engine.boot("cpu", registers=4, dtype="int64") as unit:
        unit.dispatch(add_one, (4,), grid=4)
        prog = unit.build()
        prog.launch()
        assert prog.in_flight and not prog.poll()
        for call in (lambda: unit.read(0, 1), lambda: unit.write(0, [1]), lambda: unit.fill(0)):
            with pytest.raises(EngineError, match="while its program is in flight"):
                call()
        with pytest.raises(EngineError, match="already in flight"):
            prog.launch()
        gate.set()
        prog.wait()
        assert not prog.in_flight and prog.poll()
        assert unit.read().tolist() == [1] * 4


def test_dispatching_into_a_built_chain_or_after_shutdown_is_refused():
    unit = engine.boot("cpu", registers=4, dtype="int64")
    unit.dispatch(add_one, (4,), grid=4)
    prog = unit.build()
    with pytest.raises(EngineError, match="chain is built"):
        unit.dispatch(add_one, (4,), grid=4)
    with pytest.raises(EngineError, match="already built"):
        unit.build()
    unit.clear()
    with pytest.raises(EngineError, match="discarded"):
        prog.launch()
    unit.dispatch(add_one, (4,), grid=4)
    prog = unit.build()
    unit.shutdown()
    unit.shutdown()                              # twice is harmless
    for call in (lambda: unit.dispatch(add_one, (4,), grid=4), lambda: unit.read(), lambda: unit.write(0, [1]),
                 lambda: unit.build(), lambda: prog.run()):
        with pytest.raises(EngineError, match="after shutdown"):
            call()
    assert "shut down" in repr(unit)


def test_shutdown_waits_for_the_program_in_flight(monkeypatch):
    gate = _blocked(monkeypatch)
    unit = engine.boot("cpu", registers=4, dtype="int64")
    unit.dispatch(add_one, (4,), grid=4)
    prog = unit.build().launch()
    threading.Timer(0.05, gate.set).start()
    unit.shutdown()
    assert not prog.in_flight


def test_bad_arguments_name_the_value():
    with pytest.raises(ConfigError, match="device: expected 'cpu' or 'cuda', got 'tpu'"):
        engine.boot("tpu")
    with pytest.raises(ConfigError, match="dtype: expected one of float32"):
        engine.boot("cpu", registers=4, dtype="complex64")
    with pytest.raises(ConfigError, match="registers: expected a count"):
        engine.boot("cpu", registers=-1)
    with engine.boot("cpu", registers=8, globals=4, dtype="float32") as unit:
        with pytest.raises(ConfigError, match=r"offset: elements \[6, 10\) lie outside registers's 8"):
            unit.write(6, np.zeros(4, np.float32))
        with pytest.raises(ConfigError, match=r"offset: elements \[2, 6\) lie outside globals's 4"):
            unit.read(2, 4, buffer="globals")
        with pytest.raises(ConfigError, match="buffer: expected 'registers' or 'globals'"):
            unit.read(0, 1, buffer="heap")
        with pytest.raises(ConfigError, match="not exact in the buffer's float32"):
            unit.write(0, [0.1])
        with pytest.raises(ConfigError, match=r"params\[0\] \(a\): 1e\+300 overflows f32"):
            unit.dispatch(axpy, (1e300, 8), grid=8)
        unit.write(0, [0.5, 2, 3])                   # exact values of another dtype are fine
        assert unit.read(0, 3).tolist() == [0.5, 2, 3]
        with pytest.raises(ConfigError, match=r"params: kernel axpy takes 2 scalars \(a, n\), got 1"):
            unit.dispatch(axpy, (1.0,), grid=8)
        with pytest.raises(ConfigError, match=r"params\[1\] \(n\): expected an integer for i64, got 'x'"):
            unit.dispatch(axpy, (1.0, "x"), grid=8)
        with pytest.raises(ConfigError, match="grid: expected a thread count"):
            unit.dispatch(axpy, (1.0, 8), grid=0)
        with pytest.raises(ConfigError, match="threads per block must be an integer in"):
            unit.dispatch(axpy, (1.0, 8), grid=(1, 2048))
        with pytest.raises(EngineError, match="buffer 'r' holds i64, but this unit's registers hold f32"):
            unit.dispatch(add_one, (8,), grid=8)
        with pytest.raises(EngineError, match="kernel made with loom.engine.kernel"):
            unit.dispatch(lambda: None, (), grid=8)
    with engine.boot("cpu", registers=4, dtype="int32") as unit:
        @engine.kernel
        def small(k, r: engine.Buffer(engine.I32), v: engine.I32):
            r[0] = v
        with pytest.raises(ConfigError, match=r"params\[0\] \(v\): 4294967296 does not fit in i32"):
            unit.dispatch(small, (2 ** 32,), grid=1)
    with engine.boot("cpu", registers=4, dtype="uint64") as unit:
        for bad, shown in ((-1, "-1"), (np.array([2 ** 63], np.uint64).astype(np.int64)[0], "-9223372036854775808"),
                           (2.0 ** 64, "1.8446744073709552e"), (0.5, "0.5")):
            with pytest.raises(ConfigError, match=f"{shown}.*not exact in the buffer's uint64"):
                unit.fill(bad)
        unit.write(0, [2 ** 64 - 1, 7])
        assert unit.read(0, 2).tolist() == [2 ** 64 - 1, 7]


def test_a_kernel_fault_is_raised_by_run_and_the_unit_stays_usable():
    with engine.boot("cpu", registers=4, dtype="int64") as unit:
        unit.dispatch(add_one, (8,), grid=8)          # n beyond the buffer
        with pytest.raises(KernelFault, match=r"accessed r\[4\] outside its 4 elements"):
            unit.build().run()
        unit.clear()
        unit.dispatch(add_one, (4,), grid=4)
        unit.build().run()


def test_a_swarm_runs_every_units_program_and_build_all_builds_on_threads():
    units = [engine.boot("cpu", registers=100, globals=100, dtype="float32") for _ in range(16)]
    for i, u in enumerate(units):
        u.write(0, np.full(100, i, np.float32), buffer="globals")
        for _ in range(3):
            u.dispatch(axpy, (2.0, 100), grid=100)
    programs = engine.build_all(units[:8])
    assert programs == [u.program for u in units[:8]]
    engine.swarm(units)                               # the other 8 are built by swarm
    for i, u in enumerate(units):
        assert u.read().tolist() == [6.0 * i] * 100
        u.shutdown()
    with pytest.raises(EngineError, match="swarm takes units or programs"):
        engine.swarm([1])


def test_a_swarm_that_cannot_launch_one_program_waits_for_those_it_launched(monkeypatch):
    gate = _blocked(monkeypatch)
    units = [engine.boot("cpu", registers=4, dtype="int64") for _ in range(3)]
    for u in units:
        u.dispatch(add_one, (4,), grid=4)
    programs = [u.build() for u in units]
    units[2].clear()                                  # its program is discarded
    threading.Timer(0.05, gate.set).start()
    with pytest.raises(EngineError, match="discarded"):
        engine.swarm(programs)
    assert not programs[0].in_flight and not programs[1].in_flight
    assert units[0].read().tolist() == [1] * 4

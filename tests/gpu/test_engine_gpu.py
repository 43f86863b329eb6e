"""The compute engine on the GPU: kernels written in Python give the NumPy run's bits when lowered
to CUDA C; units, chains of 100,000 dispatches, 16-unit swarms and their misuse on 'cuda'; the GPU
sieve against known prime counts and the CPU reference."""
import numpy as np
import pytest
from engine_kernels import add_one, axpy

from loom import backend, engine
from loom.engine import sieve
from loom.errors import ConfigError, EngineError, KernelFault
from loom.kernels.ir import kernel_numpy

pytestmark = pytest.mark.gpu
E = engine


def _both(kernel, args, grid):
    """Run kernel with NumPy and on the GPU from the same inputs; returns (numpy args, gpu args)."""
    cp = backend.get("cuda").xp
    cpu_args = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
    kernel_numpy.run(kernel, cpu_args, grid)
    compute = backend.get("cuda").compute
    fn = compute.function(kernel.source, f"loom_{kernel.name}")
    fault = cp.zeros(1, np.uint32)
    gpu_args, flat = [], []
    for a in args:
        if isinstance(a, np.ndarray):
            d = cp.asarray(a)
            gpu_args.append(d)
            flat += [d, np.int64(d.size)]
        else:
            gpu_args.append(a)
            flat.append(a)
    stream = compute.stream()
    compute.launch(fn, grid, (*flat, fault), stream)
    stream.synchronize()
    assert int(fault.get()[0]) == 0
    return cpu_args, [cp.asnumpy(a) if isinstance(a, cp.ndarray) else a for a in gpu_args]


@E.kernel
def integer_rows(k, a: E.Buffer(E.I64), b: E.Buffer(E.I64), out: E.Buffer(E.U64), n: E.I64):
    i = k.global_id()
    with k.if_(i < n):
        x, y = a[i], b[i]
        u, v = x.bitcast(E.U64), y.bitcast(E.U64)
        x32, y32 = x.convert(E.I32), y.convert(E.I32)
        out[i * 8] = (x // y).bitcast(E.U64)
        out[i * 8 + 1] = (x % y).bitcast(E.U64)
        out[i * 8 + 2] = u // v + u % v
        out[i * 8 + 3] = k.popcount(u) + k.popcount(x32).convert(E.U64)
        out[i * 8 + 4] = ((x32 // y32) ^ (x32 % y32)).convert(E.U64)
        out[i * 8 + 5] = (u >> v) ^ (u << (v & 7)) ^ (x >> y).bitcast(E.U64)
        out[i * 8 + 6] = x.convert(E.F64).bitcast(E.U64) ^ u.convert(E.F32).convert(E.F64).bitcast(E.U64)
        total = k.var(E.U64, 0)
        for j in k.range(0, (v & 63).bitcast(E.I64), 1 + (u & 3).bitcast(E.I64)):
            total.value = total.value * 31 + j.bitcast(E.U64)
        out[i * 8 + 7] = total.value


def test_integer_rows_loops_and_conversions_give_numpys_bits():
    rng = np.random.default_rng()
    n = 100_003
    a = rng.integers(-2 ** 63, 2 ** 63, n, dtype=np.int64)
    b = rng.integers(-2 ** 63, 2 ** 63, n, dtype=np.int64)
    b[: n // 2] = rng.integers(-20, 20, n // 2)
    edges = np.array([0, 1, -1, 2 ** 63 - 1, -2 ** 63, 7, -7], dtype=np.int64)
    a[: 49] = np.repeat(edges, 7)
    b[: 49] = np.tile(edges, 7)
    cpu, gpu = _both(integer_rows, [a, b, np.zeros(8 * n, np.uint64), np.int64(n)], (n // 256 + 1, 256))
    assert np.array_equal(cpu[2], gpu[2])


@E.kernel
def block_sums(k, x: E.Buffer(E.F32), out: E.Buffer(E.F64), counts: E.Buffer(E.U32), n: E.I64):
    s = k.shared(E.F64, 256)
    t = k.local_id()
    i = k.global_id()
    s[t] = k.select(i < n, x[k.min(i, n - 1)].convert(E.F64), 0.0)
    k.barrier()
    stride = k.var(E.I64, 128)
    with k.while_(lambda: stride.value > 0):
        with k.if_(t < stride.value):
            s[t] = s[t] + s[t + stride.value]
        k.barrier()
        stride.value = stride.value // 2
    with k.if_(t == 0):
        out[k.block_id()] = s[0]
    with k.if_(i < n):
        k.atomic_add(counts, (x[i] > 0).convert(E.I64), 1)
        k.atomic("max", counts, 2, x[i].bitcast(E.U32) >> 8)
        k.atomic("xor", counts, 3, x[i].bitcast(E.U32))


def test_shared_memory_barriers_and_integer_atomics_give_numpys_bits():
    x = np.random.default_rng().normal(size=300_001).astype(np.float32)
    blocks = 300_001 // 256 + 1
    cpu, gpu = _both(block_sums, [x, np.zeros(blocks), np.zeros(4, np.uint32), np.int64(x.size)], (blocks, 256))
    assert np.array_equal(cpu[1].view(np.uint64), gpu[1].view(np.uint64))     # one tree order: same bits
    assert np.array_equal(cpu[2], gpu[2])                                      # integer atomics: any order


@pytest.mark.smoke
def test_a_unit_on_cuda_gives_the_cpu_units_bits():
    rng = np.random.default_rng()
    g = rng.normal(size=5000).astype(np.float32)
    scales = rng.normal(size=50)
    results = []
    for device in ("cpu", "cuda"):
        with E.boot(device, registers=5000, globals=5000, dtype="float32") as unit:
            unit.write(0, g, buffer="globals")
            for a in scales:
                unit.dispatch(axpy, (float(a), 5000), grid=5000)
            prog = unit.build()
            prog.run()
            prog.launch()
            while not prog.poll():
                pass
            results.append(unit.read())
    assert np.array_equal(results[0].view(np.uint32), results[1].view(np.uint32))


def test_a_device_array_is_written_without_a_host_copy_and_checked_like_host_data():
    cp = backend.get("cuda").xp
    with E.boot("cuda", registers=8, globals=4, dtype="float32") as unit:
        unit.write(2, cp.arange(4, dtype=cp.float32).reshape(2, 2))
        assert unit.read().tolist() == [0, 0, 0, 1, 2, 3, 0, 0]
        with pytest.raises(ConfigError, match=r"offset: elements \[3, 7\) lie outside globals's 4"):
            unit.write(3, cp.zeros(4, cp.float32), buffer="globals")
        with pytest.raises(ConfigError, match="not exact in the buffer's float32"):
            unit.write(0, cp.asarray([0.1]))            # float64 data goes through the exactness check
        unit.write(0, cp.asarray([0.5, 4.0]))
        assert unit.read(0, 3).tolist() == [0.5, 4, 0]


def test_a_chain_of_100000_dispatches_builds_and_replays():
    with E.boot("cuda", registers=64, dtype="int64") as unit:
        for _ in range(100_000):
            unit.dispatch(add_one, (64,), grid=64)
        prog = unit.build()
        prog.run()
        prog.run()
        assert unit.read().tolist() == [200_000] * 64


def test_no_io_while_a_program_is_in_flight_and_faults_name_the_buffer():
    with E.boot("cuda", registers=1 << 20, dtype="int64") as unit:
        for _ in range(3000):
            unit.dispatch(add_one, (1 << 20,), grid=1 << 20)
        prog = unit.build()
        prog.launch()
        with pytest.raises(EngineError, match="in flight"):
            unit.read(0, 1)
        with pytest.raises(EngineError, match="in flight"):
            unit.write(0, [1])
        prog.wait()
        assert unit.read(0, 2).tolist() == [3000, 3000]
        unit.clear()
        unit.dispatch(add_one, ((1 << 20) + 5,), grid=(1 << 20) + 5)
        with pytest.raises(KernelFault, match="registers outside its bounds"):
            unit.build().run()
        unit.clear()
        unit.dispatch(add_one, (1 << 20,), grid=1 << 20)
        unit.build().run()                       # the fault word was reset
        assert unit.read(0, 1).tolist() == [3002]
    with pytest.raises(EngineError, match="after shutdown"):
        unit.read()


def test_a_swarm_of_16_units_runs_concurrently_built_on_threads():
    units = [E.boot("cuda", registers=4096, globals=4096, dtype="float32") for _ in range(16)]
    for i, u in enumerate(units):
        u.write(0, np.full(4096, i, np.float32), buffer="globals")
        for _ in range(500):
            u.dispatch(axpy, (1.0, 4096), grid=4096)
    E.build_all(units)
    E.swarm(units)
    for i, u in enumerate(units):
        assert u.read(0, 3).tolist() == [500.0 * i] * 3
        u.shutdown()


# -- primes -----------------------------------------------------------------------------------------
KNOWN = {10 ** 1: 4, 10 ** 2: 25, 10 ** 3: 168, 10 ** 4: 1229, 10 ** 5: 9592, 10 ** 6: 78498,
         10 ** 7: 664579, 10 ** 8: 5761455, 10 ** 9: 50847534, 10 ** 10: 455052511,
         10 ** 11: 4118054813, 10 ** 12: 37607912018, 10 ** 13: 346065536839, 2 ** 32: 203280221}


@pytest.mark.parametrize("n", sorted(KNOWN), ids=str)
def test_gpu_prime_count_matches_the_known_values(n):
    assert E.prime_count(n, device="cuda") == KNOWN[n]          # by LMO from 10^10
    assert E.count_primes(0, n + 1, device="cuda") == KNOWN[n]   # by the sieve


def test_gpu_counts_and_lists_match_the_cpu_reference_on_random_ranges():
    rng = np.random.default_rng()
    for _ in range(40):
        base = int(rng.choice([0, 10 ** 6, 2 ** 32 - 5 * 10 ** 6, 10 ** 12, 2 ** 40, 10 ** 15]))
        lo = base + int(rng.integers(0, 10 ** 6))
        hi = lo + int(rng.integers(0, 5 * 10 ** 6))
        assert E.count_primes(lo, hi, device="cuda") == sieve.count_primes(lo, hi), (lo, hi)
    for n in range(0, 3000):
        assert E.count_primes(0, n, device="cuda") == sieve.count_primes(0, n)
    listed = E.primes(10 ** 12, 10 ** 12 + 10 ** 6, device="cuda")
    assert np.array_equal(backend.get("cuda").to_numpy(listed), sieve.primes(10 ** 12, 10 ** 12 + 10 ** 6))

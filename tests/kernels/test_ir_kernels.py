"""Kernels written in Python (loom.kernels.ir.kernel) run with NumPy (kernel_numpy): thread ids,
loads and stores, variables, branches, loops, shared memory with barriers, atomics, bounds faults and
the type errors of building one. The CUDA lowering of the same kernels is compared bit for bit on the
GPU (tests/gpu/test_engine_gpu.py)."""
import numpy as np
import pytest

from loom.errors import KernelFault
from loom.kernels import ir
from loom.kernels.ir import kernel_numpy
from loom.kernels.ir.kernel import Buffer, kernel


def test_saxpy_matches_numpy_with_a_guarded_tail():
    @kernel
    def saxpy(k, x: Buffer(ir.F32), y: Buffer(ir.F32), a: ir.F32, n: ir.I64):
        i = k.global_id()
        with k.if_(i < n):
            y[i] = a * x[i] + y[i]
    rng = np.random.default_rng()
    x, y = rng.normal(size=1000).astype(np.float32), rng.normal(size=1000).astype(np.float32)
    want = np.float32(1.5) * x + y
    kernel_numpy.run(saxpy, [x, y, np.float32(1.5), np.int64(1000)], (4, 256))     # 1024 threads
    assert np.array_equal(y, want)


def test_thread_ids_describe_the_grid():
    @kernel
    def ids(k, out: Buffer(ir.I64)):
        g = k.global_id()
        out[g * 5] = g
        out[g * 5 + 1] = k.local_id()
        out[g * 5 + 2] = k.block_id()
        out[g * 5 + 3] = k.block_dim()
        out[g * 5 + 4] = k.grid_dim()
    out = np.zeros(3 * 64 * 5, np.int64)
    kernel_numpy.run(ids, [out], (3, 64))
    g = np.arange(192)
    assert np.array_equal(out.reshape(-1, 5), np.stack([g, g % 64, g // 64, np.full(192, 64), np.full(192, 3)], 1))


def test_counted_loops_with_per_thread_bounds_and_no_overflow():
    @kernel
    def loops(k, out: Buffer(ir.U64), top: ir.U64):
        i = k.global_id().convert(ir.U64)
        total = k.var(ir.U64, 0)
        for j in k.range(i, i * 3 + 1, i % 4):          # step 0 for every fourth thread: no iteration
            total.value = total.value + j
        near = k.var(ir.U64, 0)
        for _ in k.range(top - 10, top, 4):              # top = 2^64 - 1: ends without wrapping
            near.value = near.value + 1
        out[i * 2] = total.value
        out[i * 2 + 1] = near.value
    out = np.zeros(2 * 100, np.uint64)
    kernel_numpy.run(loops, [out, np.uint64(2 ** 64 - 1)], (1, 100))
    want = [sum(range(i, 3 * i + 1, i % 4)) if i % 4 else 0 for i in range(100)]
    assert out[0::2].tolist() == want
    assert out[1::2].tolist() == [3] * 100


def test_while_loops_branches_and_variables():
    @kernel
    def collatz(k, out: Buffer(ir.I64)):
        i = k.global_id()
        x = k.var(ir.I64, i + 1)
        steps = k.var(ir.I64, 0)
        with k.while_(lambda: x.value != 1):
            with k.if_(x.value % 2 == 0):
                x.value = x.value // 2
            with k.else_():
                x.value = x.value * 3 + 1
            steps.value = steps.value + 1
        out[i] = steps.value

    def steps(n):
        s = 0
        while n != 1:
            n = n // 2 if n % 2 == 0 else 3 * n + 1
            s += 1
        return s
    out = np.zeros(300, np.int64)
    kernel_numpy.run(collatz, [out], (3, 100))
    assert out.tolist() == [steps(i + 1) for i in range(300)]


def test_shared_memory_tree_reduction_with_barriers():
    @kernel
    def block_sums(k, x: Buffer(ir.I64), out: Buffer(ir.I64)):
        s = k.shared(ir.I64, 128)
        t = k.local_id()
        s[t] = x[k.global_id()]
        k.barrier()
        stride = k.var(ir.I64, 64)
        with k.while_(lambda: stride.value > 0):
            with k.if_(t < stride.value):
                s[t] = s[t] + s[t + stride.value]
            k.barrier()
            stride.value = stride.value // 2
        with k.if_(t == 0):
            out[k.block_id()] = s[0]
    x = np.random.default_rng().integers(-2 ** 40, 2 ** 40, 128 * 700)
    out = np.zeros(700, np.int64)
    kernel_numpy.run(block_sums, [x, out], (700, 128))     # several groups of blocks
    assert np.array_equal(out, x.reshape(700, 128).sum(1))


@pytest.mark.parametrize("op", ["add", "min", "max", "and", "or", "xor", "exchange"])
def test_atomics_are_applied_in_thread_order_and_return_the_old_value(op):
    @kernel
    def hit(k, slots: Buffer(ir.I32), values: Buffer(ir.I32), old: Buffer(ir.I32), n: ir.I64):
        i = k.global_id()
        with k.if_(i < n):
            old[i] = k.atomic(op, slots, values[i] % 5 + 5 * (values[i] < 0).convert(ir.I32), values[i])
    rng = np.random.default_rng()
    values = rng.integers(-2 ** 31, 2 ** 31, 3000).astype(np.int32)
    slots = rng.integers(-100, 100, 10).astype(np.int32)
    want_slots, want_old = slots.copy().tolist(), []
    fn = {"add": lambda a, b: (a + b + 2 ** 31) % 2 ** 32 - 2 ** 31, "min": min, "max": max,
          "and": lambda a, b: a & b, "or": lambda a, b: a | b, "xor": lambda a, b: a ^ b,
          "exchange": lambda a, b: b}[op]
    for v in values.tolist():
        slot = v % 5 + 5 * (v < 0)          # the IR's % is Python's (floor) modulo
        want_old.append(want_slots[slot])
        want_slots[slot] = fn(want_slots[slot], v)
    old = np.zeros(3000, np.int32)
    kernel_numpy.run(hit, [slots, values, old, np.int64(3000)], (12, 256))
    assert slots.tolist() == want_slots
    assert old.tolist() == want_old


def test_float_atomic_add_follows_thread_order():
    @kernel
    def acc(k, total: Buffer(ir.F32), x: Buffer(ir.F32)):
        k.atomic_add(total, 0, x[k.global_id()])
    x = np.random.default_rng().normal(size=512).astype(np.float32)
    total = np.zeros(1, np.float32)
    kernel_numpy.run(acc, [total, x], (2, 256))
    want = np.float32(0)
    for v in x:
        want = np.float32(want + v)
    assert total[0] == want


@pytest.mark.parametrize("where", ["load", "store", "negative", "shared", "atomic"])
def test_an_access_outside_a_buffer_raises_kernel_fault_naming_it(where):
    @kernel
    def bad(k, data: Buffer(ir.F64), n: ir.I64):
        i = k.global_id()
        s = k.shared(ir.F64, 8)
        if where == "load":
            data[0] = data[i + n]
        elif where == "store":
            data[i + n] = 1.0
        elif where == "negative":
            data[i - n] = 1.0
        elif where == "shared":
            s[i] = 1.0
        else:
            k.atomic_add(data, i * n, 1.0)
    with pytest.raises(KernelFault, match=r"kernel bad: thread \d+ accessed (data|shared0)\[-?\d+\] outside"):
        kernel_numpy.run(bad, [np.zeros(16), np.int64(16 if where != "atomic" else 2)], (1, 16))


def test_building_a_kernel_refuses_ill_typed_code():
    with pytest.raises(TypeError, match="value stored into y has type f64, expected f32"):
        @kernel
        def store(k, y: Buffer(ir.F32), a: ir.F64):
            y[0] = a
    with pytest.raises(TypeError, match="index into y has type f32"):
        @kernel
        def index(k, y: Buffer(ir.F32), a: ir.F32):
            y[a] = a
    with pytest.raises(TypeError, match="atomic min takes integer elements"):
        @kernel
        def fmin(k, y: Buffer(ir.F32)):
            k.atomic("min", y, 0, 1.0)
    with pytest.raises(TypeError, match="need a type annotation"):
        @kernel
        def untyped(k, y):
            pass
    with pytest.raises(TypeError, match="kernels write results into buffers"):
        @kernel
        def returns(k, a: ir.I64):
            return a + 1
    with pytest.raises(TypeError, match="left with `break`"):
        @kernel
        def breaks(k, a: ir.I64):
            for _ in k.range(a):
                break
    with pytest.raises(TypeError, match="range step must be positive"):
        @kernel
        def backwards(k, a: ir.I64):
            for _ in k.range(a, 0, -1):
                pass
    with pytest.raises(TypeError, match="top level"):
        @kernel
        def nested_shared(k, a: ir.I64):
            with k.if_(a > 0):
                k.shared(ir.F32, 4)
    with pytest.raises(TypeError, match="if condition has type i64"):
        @kernel
        def if_int(k, a: ir.I64):
            with k.if_(a):
                pass
    with pytest.raises(TypeError, match="else_"):
        @kernel
        def lone_else(k, a: ir.I64):
            with k.else_():
                pass


def test_source_is_a_pure_function_of_the_kernel_and_checks_bounds_unless_told_not_to():
    def body(k, y: Buffer(ir.U32), n: ir.I64):
        i = k.global_id()
        with k.if_(i < n):
            y[i] = k.popcount(y[i]) + k.atomic_add(y, 0, 1)
    a, b = kernel(body), kernel(body)
    assert a.source == b.source
    signature = "loom_body(unsigned int* b0, long long b0_n, long long p1, unsigned int* loom_fault)"
    assert f'extern "C" __global__ void {signature}' in a.source
    assert "loom_store(" in a.source and "__popc(" in a.source
    unchecked = kernel(body, checked=False)
    assert "loom_store(b0" not in unchecked.source and "b0[v" in unchecked.source


def test_a_value_or_variable_from_an_ended_block_is_refused():
    with pytest.raises(TypeError, match="made inside a block .* that has ended"):
        @kernel
        def leak_value(k, x: Buffer(ir.I64), n: ir.I64):
            i = k.global_id()
            with k.if_(i < n):
                t = x[i] + 1
            x[i] = t
    with pytest.raises(TypeError, match="variable 0 was declared inside a block that has ended"):
        @kernel
        def leak_var(k, x: Buffer(ir.I64), n: ir.I64):
            for _ in k.range(n):
                v = k.var(ir.I64, 5)
            x[0] = v.value
    with pytest.raises(TypeError, match="made inside a block"):
        @kernel
        def leak_index(k, x: Buffer(ir.I64), n: ir.I64):
            for j in k.range(n):  # noqa: B007 - j is used after the loop, on purpose
                pass
            x[j] = 1


def test_a_shift_by_a_value_all_threads_share_is_masked_as_on_the_gpu():
    @kernel
    def shift(k, x: Buffer(ir.U32), s: ir.U32):
        i = k.global_id()
        x[i] = (x[i] << s) | (x[i] >> (s + 1))
    x = np.arange(1, 5, dtype=np.uint32)
    kernel_numpy.run(shift, [x, np.uint32(33)], (1, 4))            # 33 & 31 = 1, 34 & 31 = 2
    assert x.tolist() == [(v << 1) | (v >> 2) for v in range(1, 5)]


def test_fault_bits_count_buffers_not_parameters():
    @kernel
    def late(k, n: ir.I64, r: Buffer(ir.F32), g: Buffer(ir.F32)):
        r[n] = g[n]
    assert "loom_store(b1, b1_n, (unsigned long long)(long long)(v0), v1, loom_fault, 1u)" in late.source
    assert "loom_load(b2, b2_n, (unsigned long long)(long long)(v0), loom_fault, 2u)" in late.source


@pytest.mark.parametrize("op", ["max", "xor", "exchange"])
def test_atomics_on_many_addresses_follow_thread_order(op):
    @kernel
    def scatter(k, slots: Buffer(ir.U64), where: Buffer(ir.I64), values: Buffer(ir.U64), old: Buffer(ir.U64)):
        i = k.global_id()
        old[i] = k.atomic(op, slots, where[i], values[i])
    rng = np.random.default_rng()
    where = rng.integers(0, 2000, 4096)                  # more addresses than any one's hits
    values = rng.integers(0, 2 ** 64, 4096, dtype=np.uint64)
    slots = rng.integers(0, 2 ** 64, 2000, dtype=np.uint64)
    want_slots, want_old = slots.tolist(), []
    fn = {"max": max, "xor": lambda a, b: a ^ b, "exchange": lambda a, b: b}[op]
    for w, v in zip(where.tolist(), values.tolist()):
        want_old.append(want_slots[w])
        want_slots[w] = fn(want_slots[w], v)
    old = np.zeros(4096, np.uint64)
    kernel_numpy.run(scatter, [slots, where, values, old], (16, 256))
    assert slots.tolist() == want_slots and old.tolist() == want_old

"""Deterministic mode on the GPU gives the CPU's bits: exact GEMMs and sums, every layer sample
(forward, input gradient, parameter gradients), every loss, every optimizer, and 100 steps of
training the demo model, eager and as a recorded dispatch chain."""
import numpy as np
import pytest
from catalogue import SAMPLES, config
from rounded_cases import CASES, case, doubtful

import loom
from loom import backend
from loom.kernels import exact, ops
from loom.nn import losses, optim

from .cpu_gpu import layer_results, loss_results, optimizer_results, same_bits

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("deterministic_mode")]


def _wide(rng, shape):
    return rng.standard_normal(shape) * np.exp2(rng.integers(-20, 21, shape))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [((64, 784), (784, 256)), ((3, 40, 17), (17, 9)), ((5,), (5, 7)),
                                   ((33, 20000), (20000, 3)),
                                   # K over 2^14: float64 in chunks (whole ones only, and a short last one);
                                   # float32 in pieces up to 2^15, in chunks of the slices beyond
                                   ((7, 2 << 14), (2 << 14, 5)), ((7, 3 * (1 << 14) + 5), (3 * (1 << 14) + 5, 5))])
def test_gemm_bits(shape, dtype):
    rng = np.random.default_rng(1)
    cuda = backend.get("cuda")
    a, b = _wide(rng, shape[0]).astype(dtype), rng.standard_normal(shape[1]).astype(dtype)
    same_bits(exact.matmul(cuda.asarray(a), cuda.asarray(b)), exact.matmul(a, b), f"gemm {shape} {dtype}")
    bt = np.ascontiguousarray(b.T)                               # a transposed view, as dense uses
    same_bits(exact.matmul(cuda.asarray(a), cuda.asarray(bt).T), exact.matmul(a, bt.T), "gemm transposed")
    if a.ndim == 2:                                              # as a convolution's weight gradient uses
        at = np.ascontiguousarray(a.T)
        same_bits(exact.matmul(cuda.asarray(at).T, cuda.asarray(b)), exact.matmul(at.T, b), "gemm left transposed")
        a[1, -1], a[2, 3] = np.nan, -np.inf                      # specials in the last chunk and the first
        b[1, -1] = np.nan                                        # and in a column of b
        same_bits(exact.matmul(cuda.asarray(a), cuda.asarray(b)), exact.matmul(a, b), "gemm specials")


@pytest.mark.parametrize("form", ["pieces of 2048", "whole chunks", "a loop over chunks"])
def test_gemm_bits_on_the_float32_slices(form, monkeypatch):
    """float32 products that the dispatch table gives the slice scheme (K > 2048),
    with the GPU's chunks (K > 2^14) multiplied in pieces of 2048, in whole chunks (as for large
    outputs), or one chunk at a time (products too large to slice whole)."""
    from loom.backend.cuda import exact_slices
    if form == "whole chunks":
        monkeypatch.setattr(exact_slices, "_CHUNK_PIECE_ENTRIES", 0)
    if form == "a loop over chunks":
        monkeypatch.setattr(exact_slices, "_CHUNKS_AT_ONCE_BYTES", 0)
    rng = np.random.default_rng(3)
    cuda = backend.get("cuda")
    for m, k, n in [(33, 20000, 3), (40, 2100, 30), (6, 3 << 14, 5)]:    # 2 chunks (a short last one), 1, 3
        a, b = _wide(rng, (m, k)).astype(np.float32), rng.standard_normal((k, n)).astype(np.float32)
        same_bits(exact.matmul(cuda.asarray(a), cuda.asarray(b)), exact.matmul(a, b), f"sliced gemm {m}x{k}x{n}")
        same_bits(exact.matmul(cuda.asarray(a.T.copy()).T, cuda.asarray(b.T.copy()).T),
                  exact.matmul(a.T.copy().T, b.T.copy().T), f"sliced gemm {m}x{k}x{n}, transposed operands")
    a3 = _wide(rng, (2, 5, 20000)).astype(np.float32)               # chunks of a stack, and broadcast
    b3 = rng.standard_normal((2, 20000, 4)).astype(np.float32)
    a3[0, 1, :300] *= 2.0 ** -140                                   # products that underflow, signed
    for x, y, what in [(a3, b3, "stacks"), (a3[0], b3, "matrix x stack"), (a3, b3[1], "stack x matrix"),
                       (a3, b3[:1], "stack x stack of one"), (a3[:, None], b3, "broadcast stacks")]:
        same_bits(exact.matmul(cuda.asarray(x), cuda.asarray(y)), exact.matmul(x, y), f"sliced gemm, {what}")
    a3[1, 2, 7], b3[0, 19999, 1], b3[1, 5, 3] = np.inf, np.nan, -np.inf   # special values in chunked products
    for x, y, what in [(a3, b3, "stacks"), (a3[1], b3, "matrix x stack"), (a3, b3[0], "stack x matrix")]:
        same_bits(exact.matmul(cuda.asarray(x), cuda.asarray(y)), exact.matmul(x, y), f"sliced specials, {what}")


@pytest.mark.parametrize("k, m, n", [(8192, 256, 320), (32768, 40, 24), (50176, 288, 64)])
def test_weight_gradient_bits(k, m, n):
    """Weight gradients, x.T @ dy (K = batch x positions, above 2048: the slices): ReLU outputs against
    signed, sparse gradients, in the layout the layers pass."""
    rng = np.random.default_rng(k)
    cuda = backend.get("cuda")
    x = np.maximum(rng.standard_normal((k, m)), 0).astype(np.float32)
    dy = (rng.standard_normal((k, n)) * (rng.random((k, n)) < 0.25)).astype(np.float32)
    same_bits(exact.matmul(cuda.asarray(x).T, cuda.asarray(dy)), exact.matmul(x.T, dy), f"weight gradient K={k}")


@pytest.mark.parametrize("name", CASES)
def test_rounded_gemm_bits_on_midpoints_subnormals_and_overflow(name, spy):
    """The GPU's certification kernel and its exact sums give the CPU's correctly rounded bits, for
    operands whose products land on float32's midpoints (the CPU tests check those against exact
    rational arithmetic), plain, transposed and batched."""
    from loom.backend.cuda import exact as cuda_exact
    calls = spy(cuda_exact, ["matmul_rounded"])
    cuda = backend.get("cuda")
    a, b = case(name)
    with np.errstate(over="ignore"):
        same_bits(exact.matmul(cuda.asarray(a), cuda.asarray(b)), exact.matmul(a, b), f"rounded gemm {name}")
        at, bt = np.ascontiguousarray(a.T), np.ascontiguousarray(b.T)
        same_bits(exact.matmul(cuda.asarray(at).T, cuda.asarray(bt).T), exact.matmul(at.T, bt.T), f"transposed {name}")
        a3 = np.stack([a, -a, a[::-1]])
        same_bits(exact.matmul(cuda.asarray(a3), cuda.asarray(b)), exact.matmul(a3, b), f"batched {name}")
    assert calls == ["matmul_rounded"] * 3


@pytest.mark.parametrize("k", [1, 784, 2048, 2600, 8192])
def test_rounded_gemm_bits_on_large_integer_products(k):
    """Many entries exactly on midpoints (integer data): the exact sums run in many warps at once,
    or for K > 2048 (pieces) in many blocks, each taking several listed entries in turn."""
    rng = np.random.default_rng(k)
    cuda = backend.get("cuda")
    a = (rng.integers(-7, 8, (300, k)) * 2.0 ** 18 + rng.integers(0, 2, (300, k))).astype(np.float32)
    b = rng.integers(-7, 8, (k, 200)).astype(np.float32)
    same_bits(exact.matmul(cuda.asarray(a), cuda.asarray(b)), exact.matmul(a, b), f"integer gemm k={k}")


def test_rounded_gemm_bits_where_the_compensated_sum_decides():
    """Random data at K = 2048: the GEMM's bound leaves about 0.2% of the entries to the warps'
    compensated sums (on the CPU, rounded_jit._dot2), large enough to take the norms' own launch."""
    rng = np.random.default_rng(7)
    cuda = backend.get("cuda")
    a = rng.standard_normal((640, 2048)).astype(np.float32)
    b = rng.standard_normal((2048, 512)).astype(np.float32)
    assert doubtful(a, b).sum() > 100
    same_bits(exact.matmul(cuda.asarray(a), cuda.asarray(b)), exact.matmul(a, b), "compensated gemm")


@pytest.mark.parametrize("m", [150, 600])
def test_rounded_gemm_bits_when_no_entry_certifies(m):
    """Every product cancels (+-1 columns against rows of equal magnitude, plus a tiny term in some):
    no entry certifies, so all are settled, most by the exact integer sum: 22,500 in the kernel that
    certifies them, and 360,000 listed for the settling kernel, many per warp of its grid."""
    rng = np.random.default_rng(11)
    cuda = backend.get("cuda")
    a = np.full((m, 64), 3.0, np.float32)
    a[:, 0] += np.where(rng.random(m) < 0.5, 2.0 ** -20, 0.0).astype(np.float32)
    b = np.tile(np.array([1.0, -1.0], np.float32), 32)[:, None] * rng.choice([1.0, -1.0], m).astype(np.float32)
    assert doubtful(a, b).all()
    same_bits(exact.matmul(cuda.asarray(a), cuda.asarray(b)), exact.matmul(a, b), "cancelling gemm")


@pytest.mark.smoke
def test_gemm_special_value_bits():
    rng = np.random.default_rng(2)
    cuda = backend.get("cuda")
    a, b = rng.standard_normal((6, 5)).astype(np.float32), rng.standard_normal((5, 4)).astype(np.float32)
    a[1, 2], a[2, 0], a[3, 1], a[3, 3], b[2, 1], b[4, 3] = np.inf, np.nan, np.inf, -np.inf, 0, -np.inf
    same_bits(exact.matmul(cuda.asarray(a), cuda.asarray(b)), exact.matmul(a, b), "gemm specials")
    a3, b3 = np.stack([a, a[::-1]]), np.stack([b, b[:, ::-1]])              # batched, as attention
    same_bits(exact.matmul(cuda.asarray(a3), cuda.asarray(b3)), exact.matmul(a3, b3), "batched gemm specials")
    same_bits(exact.matmul(cuda.asarray(a3[:1]), cuda.asarray(b3)), exact.matmul(a3[:1], b3), "broadcast batch")
    same_bits(exact.matmul(cuda.asarray(a).T, cuda.asarray(a)), exact.matmul(a.T, a), "transposed specials")
    # a large product: the certification kernel writes its special values over many blocks
    big_a, big_b = rng.standard_normal((700, 40)).astype(np.float32), rng.standard_normal((40, 600)).astype(np.float32)
    big_a[3, 7], big_a[650, 0], big_b[5, 599] = np.nan, -np.inf, np.inf
    same_bits(exact.matmul(cuda.asarray(big_a), cuda.asarray(big_b)), exact.matmul(big_a, big_b), "large product specials")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("axis", [None, 0, -1, (0, 2)])
def test_sum_and_cumsum_bits(axis, dtype):
    rng = np.random.default_rng(3)
    cuda = backend.get("cuda")
    x = _wide(rng, (6, 300, 7)).astype(dtype)
    same_bits(exact.sum(cuda.asarray(x), axis=axis), exact.sum(x, axis=axis), f"sum axis {axis}")
    same_bits(ops.mean(cuda.asarray(x), axis=axis), ops.mean(x, axis=axis), f"mean axis {axis}")
    same_bits(exact.cumsum(cuda.asarray(x), axis=1), exact.cumsum(x, axis=1), "cumsum")
    x[0, 3, 1], x[1, 5, 2], x[1, 7, 2], x[2, 0, 0] = np.inf, np.inf, -np.inf, np.nan
    same_bits(exact.sum(cuda.asarray(x), axis=axis), exact.sum(x, axis=axis), f"sum with specials, axis {axis}")
    same_bits(exact.sum(cuda.asarray(x), axis=axis, keepdims=True), exact.sum(x, axis=axis, keepdims=True), "keepdims")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("name, layers, shape, idt", SAMPLES, ids=[s[0] for s in SAMPLES])
def test_layer_bits(name, layers, shape, idt, training, dtype):
    for what, gpu, cpu in layer_results(name, layers, shape, idt, training, dtype):
        same_bits(gpu, cpu, what)


@pytest.mark.parametrize("name", losses.NAMES)
def test_loss_bits(name):
    for what, gpu, cpu in loss_results(name, np.float32):
        same_bits(gpu, cpu, what)


@pytest.mark.parametrize("kind", sorted(optim.TYPES))
def test_optimizer_bits(kind):
    for what, gpu, cpu in optimizer_results(kind, np.float32):
        same_bits(gpu, cpu, what)


def test_100_steps_of_the_demo_model_give_the_cpu_bits():
    """loom.train on cuda (a recorded dispatch chain after the first steps) against the CPU."""
    from loom import datasets
    from loom.cli.demo import demo_config
    (x, y), _ = datasets.digits_split(test_fraction=0.2, seed=0)
    x, y = x[:1600], y[:1600]                       # 100 steps of 16
    cpu, gpu = loom.Network.from_config(demo_config()), loom.Network.from_config(demo_config())
    h_cpu = loom.train(cpu, x, y, epochs=1, batch_size=16, verbose=False)
    h_gpu = loom.train(gpu, x, y, epochs=1, batch_size=16, verbose=False, device="cuda")
    assert h_gpu["loss"] == h_cpu["loss"]
    for k, v in cpu.state_dict().items():
        same_bits(gpu.state_dict()[k], v, f"demo {k}")


def test_embedding_gradient_with_repeated_ids():
    """Many tokens share a row: the scatter-add's atomics may run in any order."""
    cfg = config([{"type": "embedding", "vocab_size": 4, "dim": 8}], [64], "int64")
    cpu = loom.Network.from_config(cfg)
    gpu = loom.Network.from_config(cfg).to("cuda")
    ids = np.random.default_rng(9).integers(0, 4, size=(16, 64))
    dy = np.random.default_rng(10).normal(size=(16, 64, 8)).astype(np.float32)
    cpu(ids), gpu(ids)
    cpu.backward(dy), gpu.backward(dy)
    for k, g in cpu.gradients().items():
        same_bits(gpu.gradients()[k], g, f"embedding gradient {k}")

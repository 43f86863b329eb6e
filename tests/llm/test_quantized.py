"""BlockQuantized: products, row lookups and permutations against dequantize-then-NumPy, in
deterministic mode (bit-exact with loom.kernels.ops.matmul on the dequantized weight, whatever
the row blocking) and in fast mode; linear(); bad input."""
import numpy as np
import pytest
from quant_rows import random_rows

import loom
from loom import ShapeError
from loom.backend.cpu import CPU
from loom.kernels import ops
from loom.kernels.exact import fixed
from loom.kernels.quant import block as qz
from loom.kernels.quant import gguf as gq

TYPES = list(gq.BLOCKS)


def random_weight(qtype, rows, blocks_per_row, seed):
    """Random rows whose float16 scale fields hold moderate finite values, so products are finite."""
    cols = blocks_per_row * gq.BLOCKS[qtype][0]
    raw = random_rows(qtype, rows, cols, np.random.default_rng(seed))
    return qz.BlockQuantized(raw, qtype, (rows, cols))


@pytest.mark.parametrize("qtype", TYPES)
def test_matmul_t_deterministic_is_exact_for_any_blocking(qtype, monkeypatch):
    w = random_weight(qtype, 37, 2, seed=TYPES.index(qtype))
    dense = w.dequantize()
    x = np.random.default_rng(1).standard_normal((2, 3, w.shape[1])).astype(np.float32)
    want = fixed.matmul_t(CPU, x.reshape(6, -1), dense).reshape(2, 3, 37)    # the dispatch table's weight rule
    for block_bytes in (1, 4 * w.shape[1] * 5, 1 << 20):     # 1 row, 5 rows (uneven), everything
        monkeypatch.setattr(CPU.quant, "dequantize_bytes", block_bytes)
        got = w.matmul_t(x)
        assert got.shape == (2, 3, 37) and got.dtype == np.float32
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), block_bytes
    vector = w.matmul_t(x[0, 0])
    assert vector.shape == (37,) and np.array_equal(vector, want[0, 0])


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q6_K", "F16"])
@pytest.mark.parametrize("m", [1, 4, 40, 200])     # 40 > gguf_gemv.MAX_ROWS: decoded blocks of W; 200:
def test_matmul_t_fast_mode(qtype, m, monkeypatch):  # BLAS writing each block's columns of out itself
    """Fast mode: the factored block product (few rows of x) or BLAS on decoded blocks; both are
    the dequantized weight's product up to float32 rounding."""
    assert 40 < qz._DIRECT_ROWS <= 200
    monkeypatch.setattr(CPU.quant, "dequantize_bytes", 4 * 256 * 7)
    monkeypatch.setattr(qz.gguf_gemv, "STEP_BYTES", 4 * 40 * 8 * 11)       # 11 rows per step: several
    w = random_weight(qtype, 50, 1 if qtype.endswith("K") else 8, seed=3)
    x = np.random.default_rng(2).standard_normal((m, w.shape[1])).astype(np.float32)
    want = x.astype(np.float64) @ w.dequantize().astype(np.float64).T
    with loom.deterministic(False):
        got = w.matmul_t(x)
    assert got.dtype == np.float32 and got.shape == (m, 50)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_block_rows_bound_the_temporary(monkeypatch):
    w = random_weight("Q4_1", 1000, 18, seed=4)           # [1000, 576]
    assert w.block_rows() * 576 * 4 <= CPU.quant.dequantize_bytes
    calls = []
    real = qz._decode

    def spy(data, qtype, cols, out=None):          # every decode, compiled or gguf's array code
        calls.append((data.shape[0], cols))
        return real(data, qtype, cols, out)
    monkeypatch.setattr(qz, "_decode", spy)
    monkeypatch.setattr(CPU.quant, "dequantize_bytes", 576 * 4 * 300)
    monkeypatch.setattr(CPU.quant, "fixed_wide", lambda qtype, cols: False)     # (the array code's blocks)
    w.matmul_t(np.ones((17, 576), np.float32))
    # 4 even blocks of <= 300 rows: once for the rows' exponents (kept), once for the product
    assert [s[0] for s in calls] == [250, 250, 250, 250] * 2
    assert all(s[1] == 576 for s in calls)


@pytest.mark.parametrize("qtype", ["Q4_0", "Q5_1", "Q3_K", "BF16"])
def test_take_rows(qtype):
    w = random_weight(qtype, 20, 2, seed=5)
    dense = w.dequantize()
    ids = np.array([3, 0, 19, 3])
    assert np.array_equal(w.take_rows(ids).view(np.uint32), dense[ids].view(np.uint32))
    grid = np.array([[1, 2], [18, 0]])
    assert w.take_rows(grid).shape == (2, 2, w.shape[1])
    assert np.array_equal(w.take_rows(grid), dense[grid])
    assert w.take_rows([7]).shape == (1, w.shape[1])
    assert w.take_rows(np.zeros(0, np.int64)).shape == (0, w.shape[1])
    for bad, message in ((np.array([20]), "row id 20"), (np.array([-1]), "row id -1"),
                         (np.array([0.5]), "integers")):
        with pytest.raises(ShapeError, match=message):
            w.take_rows(bad)


@pytest.mark.parametrize("qtype", ["Q4_1", "Q8_0", "Q5_K", "F32"])
def test_permute_rows(qtype):
    w = random_weight(qtype, 12, 2, seed=6)
    perm = np.random.default_rng(0).permutation(12)
    p = w.permute_rows(perm)
    assert isinstance(p, qz.BlockQuantized) and p.qtype == qtype and p.shape == w.shape
    assert np.array_equal(p.dequantize().view(np.uint32), w.dequantize()[perm].view(np.uint32))
    for bad, message in ((np.arange(11), "length 12"), (np.zeros(12, np.int64), "not a permutation"),
                         (np.arange(12.0), "integer")):
        with pytest.raises(ShapeError, match=message):
            w.permute_rows(bad)


def test_dequantize_rows_nbytes_and_to():
    w = random_weight("Q4_1", 10, 3, seed=8)
    assert w.nbytes == 10 * 3 * 20 and w.ndim == 2
    full = w.dequantize()
    assert full.shape == (10, 96) and np.array_equal(w.dequantize(slice(2, 5)), full[2:5])
    moved = w.to("cpu")
    assert moved.qtype == "Q4_1" and np.array_equal(moved.dequantize(), full)
    assert "Q4_1" in repr(w)


def test_linear_for_both_weight_kinds():
    w = random_weight("Q8_0", 6, 2, seed=9)
    x = np.random.default_rng(3).standard_normal((5, 64)).astype(np.float32)
    dense = w.dequantize()
    assert np.array_equal(qz.linear(x, w), qz.linear(x, dense))
    assert np.array_equal(qz.linear(x, dense), fixed.matmul_t(CPU, x, dense))      # the weight rule
    with loom.deterministic(False):
        assert np.array_equal(qz.linear(x, dense), ops.matmul(x, dense.T))
    with pytest.raises(ShapeError, match="does not fit"):
        qz.linear(x[:, :63], dense)
    with pytest.raises(ShapeError, match=r"float32 \[\.\.\., 64\]"):
        qz.linear(x[:, :63], w)
    with pytest.raises(ShapeError, match="float32"):
        w.matmul_t(x.astype(np.float64))


def test_constructor_checks():
    with pytest.raises(ShapeError, match="2-D"):
        qz.BlockQuantized(np.zeros((2, 34), np.uint8), "Q8_0", (2, 32, 1))
    with pytest.raises(ShapeError, match=r"uint8 \[2, 34\]"):
        qz.BlockQuantized(np.zeros((2, 33), np.uint8), "Q8_0", (2, 32))
    with pytest.raises(ShapeError, match="not a multiple"):
        qz.BlockQuantized(np.zeros((2, 34), np.uint8), "Q8_0", (2, 30))
    with pytest.raises(loom.FormatError, match="unsupported"):
        qz.BlockQuantized(np.zeros((2, 34), np.uint8), "IQ2_XS", (2, 32))


class _NoBlockKernels:
    """Stands in for every block kernel: taking one would be a test failure."""
    TYPES = tuple(gq.BLOCKS)

    def supports(self, *args):
        return True

    def matmul_t(self, *args):
        raise AssertionError("a block kernel ran in deterministic mode")


@pytest.mark.parametrize("qtype", TYPES)
def test_deterministic_mode_decodes_every_type_for_the_exact_gemm(qtype, monkeypatch, loom_log):
    """Every GGUF type, K-quants included, at decode size (one row: where fast mode takes a block
    kernel): deterministic mode takes none, so it has no fallback to refuse, and gives the exact
    GEMM's bits on the decoded weight."""
    kernels = _NoBlockKernels()
    monkeypatch.setattr(CPU.quant, "matmul_t", kernels.matmul_t)
    monkeypatch.setattr(qz.gguf_gemv, "matmul_t", kernels.matmul_t)
    w = random_weight(qtype, 9, 1, seed=5)
    x = np.random.default_rng(6).standard_normal((1, w.shape[1])).astype(np.float32)
    got = w.matmul_t(x)
    assert np.array_equal(got.view(np.uint32), fixed.matmul_t(CPU, x, w.dequantize()).view(np.uint32))
    assert loom_log() == []


def test_fast_mode_says_once_where_no_block_kernel_takes_a_type(loom_log):
    w = random_weight("Q4_K", 9, 1, seed=7)
    x = np.random.default_rng(8).standard_normal((1, w.shape[1])).astype(np.float32)
    with loom.deterministic(False):
        for _ in range(3):
            w.matmul_t(x)
        w.matmul_t(np.ones((40, w.shape[1]), np.float32))      # a prefill: decoding blocks is the plan
    assert loom_log() == [("fast mode: products of a few rows with Q4_K weights on 'cpu' decode the weight to "
                           "float32 blocks for the GEMM (no block kernel takes Q4_K there)")]


def test_deterministic_copies_where_no_block_kernel_reads_the_weight_in_place(monkeypatch):
    """Where no integer kernel reads a weight in place for any rows (QuantKernels.fixed_wide False: the CPU without
    numba), deterministic prompt-sized products read keep_dense's float32 copies; where the backend's kernels take a
    weight's products for any rows (the GPU's integer kernels, the CPU's compiled loops), that weight gets no copy,
    and a decoder whose stored weights all qualify says so (exact_in_place)."""
    from loom.llm.decoder import Decoder
    from loom.llm.decoder_config import DecoderConfig, expected_tensors
    cfg = DecoderConfig.from_hf({"model_type": "llama", "vocab_size": 64, "hidden_size": 64, "intermediate_size": 96,
                                 "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
                                 "max_position_embeddings": 32})
    rng = np.random.default_rng(3)
    weights = {name: qz.BlockQuantized(random_rows("Q8_0", *shape, rng), "Q8_0", shape) if len(shape) == 2
               else np.ones(shape, np.float32) for name, shape in expected_tensors(cfg)[0].items()}
    from loom.backend.cpu import fixed_gemv
    assert CPU.quant.fixed_wide("Q8_0", 64) == fixed_gemv.available()
    monkeypatch.setattr(CPU.quant, "fixed_wide", lambda qtype, cols: False)
    with loom.deterministic(True):
        dec = Decoder(cfg, weights)
        dec.keep_dense()
        w = dec.layers[0].o
        assert not w.exact_in_place() and not dec.exact_in_place()
        assert isinstance(dec._weight(w, 64), np.ndarray)                    # the float32 copy
        asked = []
        monkeypatch.setattr(CPU.quant, "fixed_wide", lambda qtype, cols: asked.append((qtype, cols)) or True)
        dec._in_place = None
        assert w.exact_in_place() and dec._weight(w, 64) is w and dec.exact_in_place()
        assert ("Q8_0", 64) in asked
        long = qz.BlockQuantized(random_rows("Q8_0", 2, 32768, rng), "Q8_0", (2, 32768))
        assert long.exact_in_place() and ("Q8_0", 32768) in asked          # the backend's answer for any K

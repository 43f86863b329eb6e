"""Fast mode's bfloat16 products on the tensor cores (loom.kernels.quant.block with tensor_cores, cuda/quant.py's
to_bf16, cublas.gemm_bf16_t): x rounded to bfloat16 exactly as ml_dtypes rounds it, the products equal to a float64
reference on the rounded operands, weights decoded block by block, deterministic mode untouched, and a Decoder's
prefill through them close to its float32 prefill."""
import numpy as np
import pytest
from quant_rows import random_rows

import loom
from loom import backend
from loom.kernels.quant import gguf as gguf_quants
from loom.kernels.quant.block import BlockQuantized
from loom.llm.decoder import Decoder
from loom.llm.decoder_config import DecoderConfig
from loom.llm.paged_forward import sequence_logits

from .cpu_gpu import host, same_bits
from .paged_steps import CONFIG, quant_weights

cupy = pytest.importorskip("cupy")
from loom.backend.cuda import quant as cuda_quant  # noqa: E402  (imports cupy)

pytestmark = pytest.mark.gpu

RNG = np.random.default_rng(20261123)


def _bf16(a):
    return np.asarray(a, dtype=np.float32).astype("bfloat16").astype(np.float64)


def test_to_bf16_rounds_to_nearest_even_like_ml_dtypes():
    x = RNG.standard_normal(100_000).astype(np.float32) * np.float32(10.0) ** RNG.integers(-30, 30, 100_000)
    ties = (RNG.integers(0, 1 << 16, 1000).astype(np.uint32) << 16 | 0x8000).view(np.float32)   # halfway cases
    special = np.array([0.0, -0.0, np.inf, -np.inf, 3.4e38, -3.4e38, 1e-40, -1e-45], np.float32)
    x = np.concatenate([x.astype(np.float32), ties, special])
    assert x.dtype == np.float32
    got = cupy.asnumpy(cuda_quant.to_bf16(cupy.asarray(x)))
    nan = np.isnan(x)                   # some random tie patterns are NaNs: any NaN payload will do
    assert 0 < nan.sum() < 100
    np.testing.assert_array_equal(got[~nan], x[~nan].astype("bfloat16").view(np.uint16))
    assert np.isnan((got[nan].astype(np.uint32) << 16).view(np.float32)).all()


@pytest.mark.parametrize("qtype", cuda_quant.TYPES)
def test_dequantize_to_bf16_is_the_rounded_dequantize(qtype):
    """One pass straight to bfloat16 bits gives to_bf16(dequantize) (ml_dtypes' rounding of gguf's
    values), inf and NaN included (random bytes hold them in F16 scales and codes)."""
    rows, cols = 37, 512
    data = random_rows(qtype, rows, cols, RNG)
    data[3, :] = RNG.integers(0, 256, data.shape[1], dtype=np.uint8)       # any scale bits: inf, NaN, subnormal
    values = gguf_quants.dequantize(data, qtype, (rows, cols))
    out = cupy.full((rows, cols), 0x1234, dtype=np.uint16)
    cuda_quant.dequantize_bf16(cupy.asarray(data), qtype, out)
    got = cupy.asnumpy(out)
    nan = np.isnan(values)
    np.testing.assert_array_equal(got[~nan], values[~nan].astype("bfloat16").view(np.uint16))
    assert np.isnan((got[nan].astype(np.uint32) << 16).view(np.float32)).all()
    with pytest.raises(ValueError, match="aligned"):             # its 16-byte stores need an aligned output
        cuda_quant.dequantize_bf16(cupy.asarray(data), qtype, cupy.empty(rows * cols + 1, dtype=np.uint16)[1:])


def test_bf16_gemm_writes_a_column_slice_and_refuses_other_layouts():
    be = backend.get("cuda")
    x = RNG.standard_normal((9, 64)).astype(np.float32)
    w = RNG.standard_normal((20, 64)).astype(np.float32)
    out = cupy.full((9, 50), 7.0, dtype=np.float32)
    be.blas.gemm_bf16_t(cuda_quant.to_bf16(cupy.asarray(x)), cuda_quant.to_bf16(cupy.asarray(w)), out[:, 13:33])
    got = cupy.asnumpy(out)
    np.testing.assert_allclose(got[:, 13:33], _bf16(x) @ _bf16(w).T, rtol=1e-5, atol=1e-4)
    assert (got[:, :13] == 7).all() and (got[:, 33:] == 7).all()           # nothing outside the slice
    with pytest.raises(ValueError, match="strided"):
        be.blas.gemm_bf16_t(cuda_quant.to_bf16(cupy.asarray(x)), cuda_quant.to_bf16(cupy.asarray(w)),
                            cupy.empty((20, 9), dtype=np.float32).T)


@pytest.mark.parametrize("qtype", ["BF16", pytest.param("Q4_K", marks=pytest.mark.smoke), "Q8_0", "F16", "Q4_0", "Q5_1",
                                   "Q2_K", "Q6_K"])
def test_tensor_core_products_equal_the_rounded_operands_reference(qtype, monkeypatch):
    rows, cols, m = 160, 512, 40
    data = random_rows(qtype, rows, cols, RNG, plain=0.05)
    w = BlockQuantized(cupy.asarray(data), qtype, (rows, cols), tensor_cores=True)
    # several blocks of rows decoded in turn (the whole weight is one block at the default budget)
    monkeypatch.setattr(backend.get("cuda").quant, "dequantize_bytes", 4 * cols * 48)
    x = RNG.standard_normal((m, cols)).astype(np.float32)
    values = gguf_quants.dequantize(data, qtype, (rows, cols))
    want = _bf16(x) @ _bf16(values).T
    with loom.deterministic(False):
        got = host(w.matmul_t(cupy.asarray(x)))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
        few = host(w.matmul_t(cupy.asarray(x[:16])))          # 16 rows: the block kernels, float32
        np.testing.assert_allclose(few, x[:16].astype(np.float64) @ values.astype(np.float64).T, rtol=1e-4,
                                   atol=1e-5 * np.abs(want).max())
    with loom.deterministic(True):                              # deterministic: the exact GEMM's bits, as the CPU
        same_bits(w.matmul_t(cupy.asarray(x)), BlockQuantized(data, qtype, (rows, cols)).matmul_t(x),
                  "deterministic product")


def test_bf16_copies_share_bf16_bytes_and_round_other_types():
    data = random_rows("BF16", 64, 256, RNG)
    w = BlockQuantized(cupy.asarray(data), "BF16", (64, 256))
    copy = w.bf16_copy()
    assert copy.data is w.data and copy.tensor_cores and not w.tensor_cores
    q = BlockQuantized(cupy.asarray(random_rows("Q6_K", 64, 256, RNG)), "Q6_K", (64, 256))
    qc = q.bf16_copy()
    assert qc.qtype == "BF16" and qc.shape == q.shape
    np.testing.assert_array_equal(host(qc.dequantize()), host(q.dequantize()).astype("bfloat16").astype(np.float32))


@pytest.mark.parametrize("dense", [False, True])
def test_decoder_prefill_on_tensor_cores_is_close_to_float32(dense):
    config = DecoderConfig.from_hf({**CONFIG, "intermediate_size": 512})
    weights = quant_weights("Q4_K", {**CONFIG, "intermediate_size": 512})
    prompt = (np.arange(40) * 37 + 11) % CONFIG["vocab_size"]
    with loom.deterministic(False):
        fast, plain = Decoder(config, weights, "cuda"), Decoder(config, weights, "cuda", tensor_cores=False)
        assert fast.tensor_cores and not plain.tensor_cores
        if dense:
            fast.keep_dense()
            plain.keep_dense()
        got = host(sequence_logits(fast, prompt))
        want = host(sequence_logits(plain, prompt))
        err = np.abs(got - want).max() / np.abs(want).max()
        assert 1e-6 < err < 2e-2                  # bfloat16 inputs: close, and not the float32 products
        # the fused prompt layers take the quantized weights themselves, or the bf16 copies
        assert all(w.qtype == ("BF16" if dense else "Q4_K") for w in fast.bf16_weights(fast.layers[0]))
        if dense:
            assert all(isinstance(c, BlockQuantized) and c.qtype == "BF16" for c in fast._dense.values())
    with loom.deterministic(True):              # deterministic mode: the CPU's bits whatever tensor_cores says
        cpu = Decoder(config, weights)
        same_bits(sequence_logits(fast, prompt), sequence_logits(cpu, prompt), "deterministic prefill")


def test_fused_prompt_layers_with_quantized_weights_match_the_composed_layers(monkeypatch):
    """Quantized weights in the fused prompt layers (decoded to bfloat16 block by block, the output and
    down products adding into the residual column block by column block) give the composed layers'
    values, whose products round the same operands."""
    config = DecoderConfig.from_hf({**CONFIG, "intermediate_size": 512})
    weights = quant_weights("Q4_K", {**CONFIG, "intermediate_size": 512})
    prompt = (np.arange(40) * 37 + 11) % CONFIG["vocab_size"]
    monkeypatch.setattr(backend.get("cuda").quant, "dequantize_bytes", 4 * 256 * 40)   # several blocks each
    with loom.deterministic(False):
        fused, composed = Decoder(config, weights, "cuda"), Decoder(config, weights, "cuda")
        monkeypatch.setattr(composed, "bf16_weights", lambda layer: None)
        assert fused.layers[0].gate_up.block_rows() < fused.layers[0].gate_up.shape[0]
        got = host(sequence_logits(fused, prompt))
        want = host(sequence_logits(composed, prompt))
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * np.abs(want).max())

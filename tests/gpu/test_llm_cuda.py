"""Language models on the GPU: the same tiny transformers-built decoders and BERT encoder as the CPU
tests, loaded with device="cuda", give the CPU's bits in deterministic mode (logits, cached decoding,
generated ids) and agree within float32 rounding in fast mode; GGUF block dequantization and the
quantized products run on CuPy arrays with the CPU's results."""
import os
import sys

import numpy as np
import pytest

import loom
from loom.kernels.quant import gguf as gguf_quants
from loom.kernels.quant.block import BlockQuantized

from .cpu_gpu import host, same_bits

cupy = pytest.importorskip("cupy")
pytestmark = pytest.mark.gpu
sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "llm"))
import tiny_decoders as td  # noqa: E402

IDS = [5, 17, 200, 3, 99, 41, 7, 250, 12, 64, 128, 33]


@pytest.fixture(scope="module", params=["llama", "qwen3", "qwen2-tied"])
def folder(request, tmp_path_factory):
    kind = request.param.split("-")[0]
    model = td.build(kind, tied=request.param.endswith("tied"), layers=2)
    out = tmp_path_factory.mktemp(request.param)
    td.save(model, out)
    td.write_tokenizer(out)
    return out


@pytest.mark.smoke
def test_decoder_logits_cpu_equals_gpu(folder):
    cpu, gpu = loom.llm.load(folder), loom.llm.load(folder, device="cuda")
    same_bits(gpu.logits(IDS), np.asarray(cpu.logits(IDS)), "deterministic logits")
    with loom.deterministic(False):
        assert td.relative_error(host(gpu.logits(IDS)), np.asarray(cpu.logits(IDS))) < 1e-5


def test_cached_decoding_and_generation_cpu_equals_gpu(folder):
    cpu, gpu = loom.llm.load(folder), loom.llm.load(folder, device="cuda")
    for settings in ({"temperature": 0.0}, {"temperature": 0.8, "top_p": 0.9, "top_k": 40, "seed": 7}):
        want = list(cpu.generate_ids(IDS, max_tokens=10, **settings))
        got = list(gpu.generate_ids(IDS, max_tokens=10, **settings))
        assert got == want, settings


@pytest.mark.parametrize("qtype", sorted(set(gguf_quants.BLOCKS) - {"F32"}))
def test_quantized_weights_on_the_gpu(qtype):
    rng = np.random.default_rng(0)
    block_elems, block_bytes = gguf_quants.BLOCKS[qtype]
    rows, cols = 24, 2 * 256
    data = rng.integers(0, 256, size=(rows, cols // block_elems * block_bytes), dtype=np.uint8)
    if qtype in ("F16", "BF16"):
        data = rng.standard_normal((rows, cols)).astype(np.float32).astype(
            np.float16 if qtype == "F16" else "bfloat16").view(np.uint8).reshape(rows, -1)
    w = BlockQuantized(data, qtype, (rows, cols))
    wg = w.to("cuda")
    same_bits(wg.dequantize(), w.dequantize(), f"{qtype} dequantize")
    same_bits(wg.take_rows(cupy.asarray([3, 0, 3])), w.take_rows(np.array([3, 0, 3])), f"{qtype} take_rows")
    finite = np.isfinite(w.dequantize()).all(axis=1)
    wf, wfg = BlockQuantized(data[finite], qtype, (int(finite.sum()), cols)), None
    wfg = wf.to("cuda")
    x = rng.standard_normal((3, cols)).astype(np.float32)
    same_bits(wfg.matmul_t(cupy.asarray(x)), wf.matmul_t(x), f"{qtype} deterministic product")
    with loom.deterministic(False):      # 1-16 rows: the block kernels of backend/cuda/quant.py; 17: decode + GEMM
        for m in (1, 3, 16, 17):
            x = rng.standard_normal((m, cols)).astype(np.float32)
            want = x.astype(np.float64) @ wf.dequantize().astype(np.float64).T
            got = host(wfg.matmul_t(cupy.asarray(x)))
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_encoder_cpu_equals_gpu(tmp_path):
    from test_encoder import _tiny_bert
    _tiny_bert(tmp_path / "bert")
    texts = ["a short one.", "a somewhat longer sentence, with punctuation!", "x"]
    cpu = loom.llm.load(tmp_path / "bert")
    gpu = loom.llm.load(tmp_path / "bert", device="cuda")
    same_bits(gpu.embed(texts), np.asarray(cpu.embed(texts)), "embeddings")

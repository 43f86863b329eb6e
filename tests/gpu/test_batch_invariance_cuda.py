"""Batch invariance on the GPU: every catalogue layer's rows, and products past every former scheme
threshold (K up to 32,768, M x N beyond 2^25), have the same bits alone and in any batch, and the
CPU's bits."""
import numpy as np
import pytest

import loom
from loom import backend, verify
from loom import batch_invariance as bi
from loom.kernels import exact
from loom.nn.catalogue import SAMPLES, config

from .cpu_gpu import same_bits

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("deterministic_mode"),
              pytest.mark.filterwarnings("ignore::RuntimeWarning")]
ROWS = [s for s in SAMPLES if not bi.mixes_rows(s[1])]


@pytest.mark.parametrize("name, layers, shape, idt",
                         [pytest.param(*s, id=s[0], marks=pytest.mark.smoke if s[0] == "dense" else ()) for s in ROWS])
def test_every_layer_is_batch_invariant_on_the_gpu(name, layers, shape, idt):
    x = verify.sample_input(name, layers, shape, idt)
    gpu = bi.check_network(loom.Network.from_config(config(layers, shape, idt)).to("cuda"), x, name)
    cpu = bi.check_network(loom.Network.from_config(config(layers, shape, idt)), x, name)
    same_bits(gpu, cpu, f"{name} batch output")


@pytest.mark.parametrize("m, k, n", [(4097, 2049, 4097), (8192, 4096, 8192), (300, 32768, 4100),
                                     (16, 2048, 50000), (64, 16385, 2048)])
def test_product_rows_are_the_same_alone_and_in_a_large_batch(m, k, n):
    cuda = backend.get("cuda")
    gen = np.random.default_rng(k)
    a = cuda.asarray(gen.standard_normal((m, k), dtype=np.float32))
    b = cuda.asarray(gen.standard_normal((k, n), dtype=np.float32))
    full = cuda.to_numpy(exact.matmul(a, b))
    for i in (0, m // 2, m - 1):
        same_bits(exact.matmul(a[i:i + 1], b), full[i:i + 1], f"row {i} of {m}x{k}x{n} alone")
    pad = cuda.xp.concatenate([a[:3], cuda.xp.full((2, k), np.nan, np.float32), a[3:5] * np.float32(2.0 ** 60)])
    same_bits(exact.matmul(pad, b)[:3], full[:3], f"{m}x{k}x{n} beside NaN and huge rows")
    host_rows = exact.matmul(cuda.to_numpy(a[:2]), cuda.to_numpy(b))
    same_bits(full[:2], host_rows, f"{m}x{k}x{n} rows against the CPU")

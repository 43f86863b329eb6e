"""Deterministic mode's compiled decode-token operations on the CPU (backend/cpu/attend_exact.py and
exact_jit.rms_rows, reached from Decoder.attend and Decoder._rms): the bits of the array code they
replace, on fresh random inputs and at the edges (one key, the rounded scheme's longest K, huge and
tiny values), and the array code's own answer wherever a score or a sum is not finite."""
import numpy as np
import pytest

import loom
from loom.backend.cpu import attend_exact
from loom.kernels import ops
from loom.kernels.exact import dispatch as exact_dispatch
from loom.llm import decoder as decoder_module

pytestmark = pytest.mark.skipif(not attend_exact.available(), reason="numba is not installed (the loom[cpu] extra)")


def _array_code(q, keys, values, scale):
    """Decoder.attend's deterministic arithmetic for one query position (T = 1), as arrays."""
    scores = ops.matmul(q, np.swapaxes(keys, -1, -2))
    p = ops.softmax(scores * scores.dtype.type(scale), axis=-1)
    return ops.matmul(p, values).reshape(-1, q.shape[-1])


def _bits(x):
    return np.ascontiguousarray(x).view(np.uint32)


@pytest.mark.parametrize("batch, kv, per_group, d, n", [(1, 3, 3, 64, 17), (2, 2, 4, 32, 1), (1, 1, 2, 16, 300),
                                                        (1, 2, 1, 8, exact_dispatch.ROUNDED_MAX_K)])
def test_one_token_attention_gives_the_array_codes_bits(batch, kv, per_group, d, n):
    rng = np.random.default_rng(n + d)
    q = rng.standard_normal((batch, kv, per_group, d)).astype(np.float32)
    keys = rng.standard_normal((batch, kv, n, d)).astype(np.float32)
    values = rng.standard_normal((batch, kv, n, d)).astype(np.float32)
    q[0, 0, 0] *= 40.0                                  # a peaked row: most of its weights underflow
    values[0, 0, : min(n, 3)] *= np.float32(1e-30)
    keys[..., -1, :] = 0.0                              # a zero key: a score of exactly 0
    scale = 1 / np.sqrt(d)
    with loom.deterministic(True):
        got = decoder_module._exact_token_attention(q, keys, values, per_group, scale)
        assert got is not None
        np.testing.assert_array_equal(_bits(got), _bits(_array_code(q, keys, values, scale)))


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_scores_that_are_not_finite_go_back_to_the_array_code(bad):
    rng = np.random.default_rng(1)
    q = rng.standard_normal((1, 1, 2, 16)).astype(np.float32)
    keys = rng.standard_normal((1, 1, 5, 16)).astype(np.float32)
    keys[0, 0, 2, 3] = bad
    with loom.deterministic(True):
        assert decoder_module._exact_token_attention(q, keys, keys.copy(), 2, 0.25) is None
        finite = np.abs(rng.standard_normal((1, 1, 5, 16))).astype(np.float32) + 1
        huge = np.abs(q) * np.float32(1e30)               # finite inputs, scores past float32's range
        assert decoder_module._exact_token_attention(huge, finite, finite, 2, 1e10) is None

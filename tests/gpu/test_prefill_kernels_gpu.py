"""backend/cuda/prefill.py against the decoder's composed float32 operations on fresh random inputs:
RoPE with the cache writes (the same bits without per-head norms), the norms and the activation
rounded to bfloat16."""
import ml_dtypes
import numpy as np
import pytest

from loom.llm import decoder

cupy = pytest.importorskip("cupy")
from loom.backend.cuda import prefill  # noqa: E402  (needs cupy)

pytestmark = pytest.mark.gpu


def _bf16(bits):
    return cupy.asnumpy(bits).view(ml_dtypes.bfloat16).astype(np.float32)


@pytest.mark.parametrize("bias", [False, True])
def test_rope_cache_is_the_composed_rotation_and_cache_writes(bias):
    rng = np.random.default_rng(1)
    B, T, H, KV, D, pos = 2, 37, 4, 2, 64, 5
    qkv = rng.standard_normal((B * T, (H + 2 * KV) * D)).astype(np.float32)
    b = rng.standard_normal((H + 2 * KV) * D).astype(np.float32) if bias else None
    ang = rng.standard_normal((pos + T, D)).astype(np.float32)              # the tables from position 0
    cos, sin = np.cos(ang), np.sin(ang)
    ck = cupy.zeros((B, KV, 60, D), dtype=np.float32)
    cv = cupy.zeros((B, KV, 60, D), dtype=np.float32)
    q = prefill.rope_cache(cupy.asarray(qkv), None if b is None else cupy.asarray(b), None, 1e-6, cupy.asarray(cos),
                           cupy.asarray(sin), B, H, KV, ck, cv, pos)
    y = qkv + b if bias else qkv
    y = y.reshape(B, T, H + 2 * KV, D)
    qk = decoder._rotate(y[:, :, :H + KV], cos[pos:, None], sin[pos:, None], np)
    assert cupy.asnumpy(q).tobytes() == np.ascontiguousarray(qk[:, :, :H]).tobytes()
    assert cupy.asnumpy(ck[:, :, pos:pos + T]).tobytes() == np.ascontiguousarray(
        qk[:, :, H:].transpose(0, 2, 1, 3)).tobytes()
    assert cupy.asnumpy(cv[:, :, pos:pos + T]).tobytes() == np.ascontiguousarray(
        y[:, :, H + KV:].transpose(0, 2, 1, 3)).tobytes()
    assert not cupy.asnumpy(ck[:, :, :pos]).any() and not cupy.asnumpy(cv[:, :, pos + T:]).any()


def test_rope_rows_writes_each_row_to_its_slot():
    """The paged form: rows at scattered positions, keys and values to scattered slots."""
    rng = np.random.default_rng(4)
    N, H, KV, D, slots = 50, 4, 2, 32, 200
    qkv = rng.standard_normal((N, (H + 2 * KV) * D)).astype(np.float32)
    ang = rng.standard_normal((300, D)).astype(np.float32)
    cos, sin = np.cos(ang), np.sin(ang)
    positions = rng.integers(0, 300, N)
    where = rng.permutation(slots)[:N]
    ck = cupy.zeros((slots, KV, D), dtype=np.float32)
    cv = cupy.zeros((slots, KV, D), dtype=np.float32)
    q = prefill.rope_rows(cupy.asarray(qkv), None, None, 1e-6, cupy.asarray(cos), cupy.asarray(sin), H, KV, ck, cv,
                          cupy.asarray(positions), cupy.asarray(where))
    y = qkv.reshape(N, H + 2 * KV, D)
    qk = decoder._rotate(y[:, :H + KV], cos[positions][:, None], sin[positions][:, None], np)
    assert cupy.asnumpy(q).tobytes() == np.ascontiguousarray(qk[:, :H]).tobytes()
    assert cupy.asnumpy(ck)[where].tobytes() == np.ascontiguousarray(qk[:, H:]).tobytes()
    assert cupy.asnumpy(cv)[where].tobytes() == np.ascontiguousarray(y[:, H + KV:]).tobytes()
    untouched = np.setdiff1d(np.arange(slots), where)
    assert not cupy.asnumpy(ck)[untouched].any() and not cupy.asnumpy(cv)[untouched].any()


@pytest.mark.smoke
def test_rope_cache_applies_per_head_norms():
    rng = np.random.default_rng(2)
    B, T, H, KV, D = 1, 20, 2, 1, 32
    qkv = rng.standard_normal((T, (H + 2 * KV) * D)).astype(np.float32) * 3
    w = rng.standard_normal((H + KV, D)).astype(np.float32)
    cos, sin = np.ones((T, D), np.float32), np.zeros((T, D), np.float32)     # no rotation: the norm alone
    ck = cupy.zeros((B, KV, T, D), dtype=np.float32)
    q = prefill.rope_cache(cupy.asarray(qkv), None, cupy.asarray(w), 1e-6, cupy.asarray(cos), cupy.asarray(sin),
                           B, H, KV, ck, cupy.zeros_like(ck), 0)
    x = qkv.reshape(T, H + 2 * KV, D)[:, :H + KV].astype(np.float64)
    want = x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + 1e-6) * w
    np.testing.assert_allclose(cupy.asnumpy(q)[0], want[:, :H], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cupy.asnumpy(ck)[0].transpose(1, 0, 2), want[:, H:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n", [96, 576, 1025, 4096])
def test_rms_and_swiglu_round_to_bfloat16(n):
    """Widths within a warp's registers and past them (rms_bf16 keeps 32 values a lane), 50 rows (not
    a multiple of the kernel's four rows a block)."""
    rng = np.random.default_rng(n)
    x = rng.standard_normal((50, n)).astype(np.float32) * 4
    w = rng.standard_normal(n).astype(np.float32)
    got = _bf16(prefill.rms_bf16(cupy.asarray(x), cupy.asarray(w), 1e-5))
    want = (x / np.sqrt((x.astype(np.float64) ** 2).mean(axis=1, keepdims=True) + 1e-5) * w)
    rounded = want.astype(ml_dtypes.bfloat16).astype(np.float32)
    assert np.abs(got - rounded).max() <= np.abs(want).max() * 2.0 ** -7        # at most one bfloat16 step
    gu = rng.standard_normal((50, 2 * 40)).astype(np.float32) * 5
    bias = rng.standard_normal(80).astype(np.float32)
    got = _bf16(prefill.swiglu_bf16(cupy.asarray(gu), cupy.asarray(bias)))
    g, u = (gu + bias)[:, :40].astype(np.float64), (gu + bias)[:, 40:]
    want = g / (1 + np.exp(-g)) * u
    assert np.abs(got - want).max() <= np.abs(want).max() * 2.0 ** -7


@pytest.mark.parametrize("n", [1, 7, 300, 49152])
def test_argmax_rows_is_numpys(n):
    rng = np.random.default_rng(n)
    x = rng.standard_normal((9, n)).astype(np.float32)
    x[1] = 0.0
    x[1, n // 2:] = -0.0                                  # equal maxima: the first
    x[2, n // 3] = np.nan
    x[2, n - 1] = np.nan                                  # the first NaN wins
    x[3] = -np.inf
    x[4, :] = 5.0
    x[5, n // 2] = np.inf
    x[6, ::2] = x[6].max()                                # repeated maximum
    assert cupy.asnumpy(prefill.argmax_rows(cupy.asarray(x))).tolist() == np.argmax(x, axis=1).tolist()

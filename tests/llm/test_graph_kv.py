"""kv_cache.GraphKV, the KV arrays recorded graphs share (on NumPy arrays: the bookkeeping is the
device's): a bound cache moves its filled positions in; the cache bound before keeps its own in new
arrays; a cache that is gone frees the arrays for the next."""
import gc

import numpy as np

from loom.llm.kv_cache import GraphKV, KVCache


def _filled(length, seed):
    cache = KVCache(np, 1, 2, 2, 16, 4)
    rng = np.random.default_rng(seed)
    cache.k[..., :length, :] = rng.standard_normal(cache.k[..., :length, :].shape)
    cache.v[..., :length, :] = rng.standard_normal(cache.v[..., :length, :].shape)
    cache.length = length
    return cache


def test_binding_moves_positions_in_and_the_previous_cache_keeps_its_own():
    a, b = _filled(5, 1), _filled(9, 2)
    kv = GraphKV(np, a)
    assert kv.cache is a and a.k is kv.k
    a_k, a_v = a.k[..., :5, :].copy(), a.v[..., :5, :].copy()
    b_k, b_v = b.k[..., :9, :].copy(), b.v[..., :9, :].copy()
    kv.bind(b)
    assert kv.cache is b and b.k is kv.k and b.v is kv.v
    assert a.k is not kv.k and np.shares_memory(a.layer_k[1], a.k)
    np.testing.assert_array_equal(a.k[..., :5, :], a_k)
    np.testing.assert_array_equal(a.v[..., :5, :], a_v)
    np.testing.assert_array_equal(kv.k[..., :9, :], b_k)
    np.testing.assert_array_equal(kv.v[..., :9, :], b_v)
    assert np.shares_memory(b.layer_k[0], kv.k) and np.shares_memory(b.layer_v[1], kv.v)
    kv.bind(b)                                      # already there: nothing moves
    assert b.k is kv.k


def test_a_cache_that_is_gone_leaves_the_arrays_free():
    kv = GraphKV(np, _filled(3, 3))
    gc.collect()
    assert kv.cache is None
    c = _filled(4, 4)
    c_k = c.k.copy()
    kv.bind(c)
    assert kv.cache is c
    np.testing.assert_array_equal(kv.k[..., :4, :], c_k[..., :4, :])

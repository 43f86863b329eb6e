"""A decoder's decode step (one new token per sequence) on the GPU as one recorded CUDA graph, fast mode.

Launched one operation at a time, a decode step of a small model is ~300 kernels whose Python launch
cost dwarfs their run time. Here a step is 5 fused kernels per layer
(loom/backend/cuda/quant.py: quantized products with an RMSNorm prologue and bias / residual / SwiGLU
epilogues; loom/backend/cuda/decode.py: RoPE, KV-cache write and attention over the cached keys),
recorded once per KV cache shape into a CUDA graph and replayed for every token. The kernels are launched
to overlap their predecessor (loom/backend/cuda/launch.py): each fetches its weights while the kernel
before it finishes. The graph reads the token
ids and the position from a small device buffer written before each replay, so one recording
serves every position; it writes the logits into a buffer the step copies out.

Per layer, with the Decoder's fused weights (h the residual stream [B, E]):
    qkv = rms_norm(h, ln1) Wqkv^T (+ b)         gemv, RMSNorm prologue
    q, cache[pos] = rope(qkv), k, v
    ctx = attention(q, cache[lo..pos])          attention (with the RoPE and the cache write)
    h  += ctx Wo^T (+ b)                        gemv, residual epilogue
    a   = silu(x2 Wg^T (+ b)) * (x2 Wu^T (+ b)), x2 = rms_norm(h, ln2)
                                                gemv, RMSNorm prologue, SwiGLU epilogue
    h  += a Wdown^T (+ b)                       gemv, residual epilogue
then logits = rms_norm(h, norm) Wlm^T (gemv, RMSNorm prologue).

In fast mode the sums run in the kernels' own order, so logits agree with the array-at-a-time path to
float32 rounding, not bit for bit. Deterministic mode records the same five kernels per layer from
loom/backend/cuda/quant_exact.py and cuda/decode_exact.py, which give the array code's bits (the
exact GEMM's correctly rounded products, exact.sum's norms and softmax, mathlib's exp and sigmoid): a
recorded deterministic step's logits equal the kernel-by-kernel step's, and the CPU's, bit for bit.
Those kernels take products whose K has the rounded scheme (K <= exact_dispatch.ROUNDED_MAX_K) and
caches of at most that many positions; elsewhere deterministic steps run kernel by kernel.
"""
from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

import numpy as np

from ..backend import Array
from ..kernels.exact import dispatch as exact_dispatch
from ..kernels.exact import rounded as exact_rounded
from ..kernels.quant.block import BlockQuantized

if TYPE_CHECKING:
    from .decoder import Decoder
    from .kv_cache import GraphKV, KVCache

KINDS = ("embed", "qkv", "attention", "o", "gate_up", "down", "lm_head")


def _stored(w):
    """(uint8 rows, qtype) of a weight the block kernels read, or None."""
    if isinstance(w, BlockQuantized):
        return w.data, w.qtype
    if getattr(w, "dtype", None) == np.float32 and w.ndim == 2 and w.flags.c_contiguous:
        return w.view(np.uint8), "F32"
    return None


def _kernels(be, exact: bool) -> tuple:
    """(products, attention) kernel modules of backend `be` for fast or deterministic (`exact`) mode,
    (None, None) where it has no decode kernels."""
    if be.decode is None:
        return None, None
    if exact:
        return be.decode.products_exact, be.decode.attention_exact
    return be.decode.products, be.decode.attention


def unsupported(dec: Decoder, batch: int, exact: bool = False) -> str | None:
    """Why a Decoder's step cannot run as a graph, or None where it can: that needs the CUDA backend,
    block-kernel weight types, widths multiples of 32, at most MAX_ROWS sequences, and head_dim 64,
    128 or 256 (fast mode) or a multiple of 32 up to 128 with products over K <= ROUNDED_MAX_K (`exact`:
    deterministic mode; the cache's length is DecodeGraph.unsupported_cache's)."""
    be = dec.backend
    quant, kernels = _kernels(be, exact)
    if quant is None or kernels is None or not be.graphs:
        return f"device {be.name!r} has no decode kernels or graphs"
    if batch > quant.MAX_ROWS:
        return f"a batch of {batch} sequences is more than the kernels' {quant.MAX_ROWS}"
    c = dec.config
    why = kernels.unsupported(c.head_dim, 1) if exact else \
        None if kernels.supports(c.head_dim) else f"head_dim {c.head_dim} is not 64, 128 or 256"
    if why is None and (c.hidden % 32 or c.intermediate % 32):
        why = f"hidden size {c.hidden} or intermediate size {c.intermediate} is not a multiple of 32"
    for cols in (c.hidden, c.heads * c.head_dim, c.intermediate, c.head_dim) if exact else ():
        why = why or _not_rounded(cols) or quant.unsupported("F32", batch, cols)   # (the weight types: below)
    if why is not None:
        return why
    mats = [dec.embed, dec.lm_head] + [w for L in dec.layers for w in (L.qkv, L.o, L.gate_up, L.down)]
    for w in mats:
        s = _stored(w)
        if s is None or s[1] not in quant.TYPES:
            kind = s[1] if s is not None else "mixed types" if isinstance(w, tuple) else f"a {w.dtype} array"
            return f"no block kernel for weights stored as {kind} (the kernels take {', '.join(quant.TYPES)})"
    return None


def unsupported_cache(dec: Decoder, cache: KVCache, exact: bool) -> str | None:
    """Why a graph cannot serve `cache` (deterministic mode: attention over at most ROUNDED_MAX_K keys)."""
    if not exact:
        return None
    why = _not_rounded(cache.max_len)
    if why is not None:
        return f"a cache of {cache.max_len} positions: attention's {why}"
    return _kernels(dec.backend, True)[1].unsupported(dec.config.head_dim, cache.max_len)


def _not_rounded(k: int) -> str | None:
    """Why the deterministic kernels, which compute the rounded scheme, cannot take sums over k terms."""
    scheme = exact_dispatch.matmul_scheme(np.float32, k)
    return None if scheme == exact_dispatch.ROUNDED else f"products over K = {k} take the {scheme} scheme"


class DecodeGraph:
    """The recorded decode step of `dec` for caches of `cache`'s shape. The graph reads and writes
    the GraphKV arrays `kv` of that shape; bind() moves a cache into them, so one recording serves
    every cache of the shape (loom/llm/sequence.py keeps one per shape)."""

    def __init__(self, dec: Decoder, cache: KVCache, kv: GraphKV, overlap: bool = True, exact: bool = False):
        self.dec, self.overlap, self.exact = dec, overlap, exact
        self.kv = kv                                   # the KV arrays baked into the graph
        self.kv.bind(cache)                            # first: the warm-up below writes into cache's positions
        self.layer_k, self.layer_v = cache.layer_k, cache.layer_v
        self.tables = dec._cos, dec._sin               # read by the graph: kept while it lives
        c, xp, B = dec.config, dec.xp, cache.batch
        # token ids and the position, written by one copy per step; the warm-up run writes junk keys at
        # the next position, which the first real step overwrites
        self.inputs = xp.asarray(np.array([0] * B + [cache.length], dtype=np.int64))
        self.ids, self.pos = self.inputs[:B], self.inputs[B:]
        self.h = xp.empty((B, c.hidden), dtype=np.float32)
        self.qkv = xp.empty((B, (c.heads + 2 * c.kv_heads) * c.head_dim), dtype=np.float32)
        self.ctx = xp.empty((B, c.heads * c.head_dim), dtype=np.float32)
        self.act = xp.empty((B, c.intermediate), dtype=np.float32)
        self.logits = xp.empty((B, c.vocab_size), dtype=np.float32)
        self.normed = xp.empty((B, c.hidden), dtype=np.float32)      # deterministic mode's RMSNorm output
        self._body()                                  # compiles every kernel before the capture (see pos)
        self.graph, _ = dec.backend.record(self._body)

    def _body(self):
        for _, launch in self.operations():
            launch()

    def operations(self) -> list:
        """The step as (kind, launch) pairs in launch order, kind one of KINDS (benchmarks/
        decode_graph_parts.py records the step without one kind to time its share)."""
        if self.exact:
            return self._exact_operations()
        dec, c, ov = self.dec, self.dec.config, self.overlap   # ov: weights load early
        quant, kernels = _kernels(dec.backend, False)
        ops = [("embed", partial(quant.embed, *_stored(dec.embed), self.ids, self.h))]
        for i, L in enumerate(dec.layers):
            ops += [
                ("qkv", partial(quant.gemv, *_stored(L.qkv), self.h, self.qkv, norm=L.ln1, eps=c.eps, bias=L.qkv_bias,
                                overlap=ov)),
                ("attention", partial(kernels.attention, self.qkv, self.layer_k[i], self.layer_v[i], self.ctx,
                                      dec._cos, dec._sin, L.qk_norm, self.pos, c.heads, L.window, dec.scale, c.eps,
                                      overlap=ov)),
                ("o", partial(quant.gemv, *_stored(L.o), self.ctx, self.h, bias=L.o_bias, residual=self.h, overlap=ov)),
                ("gate_up", partial(quant.gemv, *_stored(L.gate_up), self.h, self.act, norm=L.ln2, eps=c.eps,
                                    bias=L.gate_up_bias, swiglu=True, overlap=ov)),
                ("down", partial(quant.gemv, *_stored(L.down), self.act, self.h, bias=L.down_bias, residual=self.h,
                                 overlap=ov))]
        ops.append(("lm_head", partial(quant.gemv, *_stored(dec.lm_head), self.h, self.logits, norm=dec.norm,
                                       eps=c.eps, overlap=ov)))
        return ops

    def _exact_operations(self) -> list:
        """operations() in deterministic mode: each RMSNorm in its product's prologue, or a kernel before
        it (counted with it)."""
        dec, c, ov = self.dec, self.dec.config, self.overlap
        quant, kernels = _kernels(dec.backend, True)
        x, h = self.normed, self.h

        def factor(a):
            return exact_rounded.error_factor(a.shape[1])      # a: the product's x

        def normed(kind, weight, w, out, **kw):
            """The product of rms_norm(h) * weight with w: the norm in the product's prologue where h fits
            in shared memory and the product has few blocks (not the lm_head), else a kernel before it."""
            if kind != "lm_head" and quant.stages(*h.shape):
                return [(kind, partial(quant.gemv, *_stored(w), h, out, factor(h), norm=weight, eps=c.eps, overlap=ov,
                                       **kw))]
            return [(kind, partial(quant.rms_norm, h, weight, x, c.eps, overlap=ov)),
                    (kind, partial(quant.gemv, *_stored(w), x, out, factor(x), overlap=ov, **kw))]

        ops = [("embed", partial(quant.embed, *_stored(dec.embed), self.ids, h))]
        for i, L in enumerate(dec.layers):
            ops += normed("qkv", L.ln1, L.qkv, self.qkv, bias=L.qkv_bias)
            ops += [("attention", partial(kernels.attention, self.qkv, self.layer_k[i], self.layer_v[i], self.ctx,
                                          dec._cos, dec._sin, L.qk_norm, self.pos, c.heads, L.window, dec.scale,
                                          c.eps, exact_rounded.error_factor(c.head_dim), overlap=ov)),
                    ("o", partial(quant.gemv, *_stored(L.o), self.ctx, h, factor(self.ctx), bias=L.o_bias, residual=h,
                                  overlap=ov))]
            ops += normed("gate_up", L.ln2, L.gate_up, self.act, bias=L.gate_up_bias, swiglu=True)
            ops.append(("down", partial(quant.gemv, *_stored(L.down), self.act, h, factor(self.act), bias=L.down_bias,
                                        residual=h, overlap=ov)))
        return ops + normed("lm_head", dec.norm, dec.lm_head, self.logits)

    @property
    def cache(self) -> KVCache | None:
        """The cache whose arrays the graph steps (the one bound last), or None once it is gone."""
        return self.kv.cache

    def bind(self, cache: KVCache) -> None:
        """Step `cache` (of the recorded shape) from now on (GraphKV.bind)."""
        self.kv.bind(cache)

    def step(self, ids: np.ndarray) -> Array:
        """Logits [B, vocab] (a fresh array) for token ids [B] (host ints, already checked) at cache.length;
        advances the cache by one position."""
        xp, cache = self.dec.xp, self.cache
        self.inputs.set(np.append(np.asarray(ids, dtype=np.int64).reshape(-1), cache.length))
        self.graph.launch()
        cache.length += 1
        return xp.copy(self.logits)

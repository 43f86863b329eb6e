"""The Llama-family decoder (llama incl. SmolLM/TinyLlama, mistral, qwen2, qwen3) with a KV cache.

Per layer, with HuggingFace's parameter names (B batch, T new tokens, E hidden, H query heads,
KV key/value heads, R = H / KV, D head_dim, n = keys attended):

    x   = rms_norm(h, input_layernorm)                         [B, T, E]
    q, k, v = x q_proj^T, x k_proj^T, x v_proj^T (+ biases)    [B, T, H|KV, D]
    q, k = rms_norm per head (qwen3's q_norm / k_norm), then RoPE at positions pos .. pos+T-1
    cache[pos : pos+T] = k, v
    p   = softmax(q k^T / sqrt(D)), masked causally (and to a sliding window) only in a prefill
    h  += (p v) o_proj^T
    h  += down(silu(gate(x2)) * up(x2)),  x2 = rms_norm(h, post_attention_layernorm)
    logits = rms_norm(h, norm) lm_head^T   (lm_head = embed_tokens when the embeddings are tied)

Grouped-query attention without repeating keys: the R query heads of a key/value head are stacked
along the row axis, q as [B, KV, R*T, D], so every product is one batched GEMM over [B, KV] (no loop
over heads). Q/K/V (and gate/up) weights are concatenated once at load when they are all float arrays
or all BlockQuantized weights of one type, so a step runs one product for them and q and k are normed and
rotated in one pass. Weights are float32 arrays or loom.kernels.quant.block.BlockQuantized
(dequantized block by block inside the product); GEMMs, sums, exp and sigmoid go through
loom.kernels.ops, so deterministic mode gives the same bits on CPU and GPU.

Prefill and decode are the same code: a prompt is T tokens at once, a decode step T = 1 (no mask).
Long prompts run in chunks (prefill_chunk(): 2048 tokens, 512 in deterministic mode on the CPU) so the score
arrays stay small. The model's shape and tensors: loom/llm/decoder_config.py; sequences
through a paged cache, alone or batched: loom/llm/paged_forward.py, driven by the engine
(loom/llm/batching.py).
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable
from types import ModuleType

import numpy as np

from .. import backend
from ..backend import Array
from ..backend.protocols import PrefillKernels
from ..kernels import fused, mathlib, ops
from ..kernels.exact import attention as integer_attention
from ..kernels.exact import dispatch as exact_dispatch
from ..kernels.exact import rounded as exact_rounded
from ..kernels.quant import gemv
from ..kernels.quant.block import BlockQuantized, linear
from ..mode import is_deterministic
from . import argmax_logits, rope
from .decoder_config import DecoderConfig, check_weights

# Deterministic mode's attention for decoders: determinism spec 5's integer scheme (kernels/exact/attention.py) on
# every device and path. False gives spec 4's float64 attention, for benchmarks' side-by-side timing only: its bits
# are not the current spec's.
INTEGER_ATTENTION = True

PREFILL_CHUNK = 512             # deterministic mode on the CPU (its array code's score arrays stay small)
PREFILL_CHUNK_FAST = 2048       # fast mode: fewer, larger chunks (each chunk is ~40 launches a layer)
# deterministic mode on a GPU under spec 5: no chunking changes a bit (every product and attention row is its own);
# fewer, larger chunks (likely: larger int8 GEMM tiles, fewer attention passes) run faster (H200, Llama-3.2-1B bf16, a
# 2,048-token prompt, benchmarks/prefill_kernels.py: 37.5 -> 29.0 ms of kernels in chunks of 512 -> 2,048, the
# memory pool 4.85 -> 5.92 GB)
PREFILL_CHUNK_GPU = 2048


def prefill_chunk(device: str = "cpu") -> int:
    """Prefill chunk length in the current mode on `device` ("cpu" or "cuda"). Under spec 4's attention
    (INTEGER_ATTENTION off) deterministic chunks end at multiples of PREFILL_CHUNK on every device: its bits past
    2048 keys depend on them."""
    if not is_deterministic():
        return PREFILL_CHUNK_FAST
    return PREFILL_CHUNK_GPU if device != "cpu" and INTEGER_ATTENTION else PREFILL_CHUNK



class _Layer:
    __slots__ = ("ln1", "ln2", "qkv", "qkv_bias", "o", "o_bias", "gate_up", "gate_up_bias", "down", "down_bias",
                 "qk_norm", "window")



class Decoder:
    """A Llama-family decoder's weights on one device and the operations of its layers: qkv(), attend()
    and finish_layer() are a layer's parts, which paged_forward composes over a paged cache (the fused
    variants: layer_tokens_paged, qkv_fast, finish_fast). graphs: whether steps may replay recorded
    CUDA graphs (False: always kernel by kernel).

    tensor_cores (fast mode, a GPU): products of more than gemv.MAX_ROWS rows (prefill, large batches)
    with stored 16-bit or quantized weights run as bfloat16 GEMMs with float32 sums, x rounded to
    bfloat16 (loom.kernels.quant.block), and such layers' prompt attention runs the flash kernel;
    with BF16 weights a prompt layer is nine fused launches (qkv_fast, finish_fast). False keeps them float32.
    Deterministic mode never uses them."""

    graphs = True

    def __init__(self, config: DecoderConfig, weights: dict, device: str = "cpu", tensor_cores: bool = True):
        check_weights(config, weights)
        self.config = c = config
        self.backend = be = backend.get(device)
        self.xp = be.xp
        self.device = device
        self.tensor_cores = tensor_cores and be.quant.tensor_cores

        def dense(name):                 # a float32 array on the device
            w = weights[name]
            w = be.asarray(w.dequantize() if isinstance(w, BlockQuantized) else w)
            return w if w.dtype == np.float32 else w.astype(np.float32)

        def matrix(name):                # stays quantized when stored so
            w = weights[name]
            return w.to(device) if isinstance(w, BlockQuantized) else dense(name)

        def optional(name):
            return dense(name) if name in weights else None

        self.embed = matrix("model.embed_tokens.weight")
        self.lm_head = self.embed if c.tied else matrix("lm_head.weight")
        self.norm = dense("model.norm.weight")
        self.layers = []
        for i in range(c.layers):
            p, L = f"model.layers.{i}.", _Layer()
            L.ln1, L.ln2 = dense(p + "input_layernorm.weight"), dense(p + "post_attention_layernorm.weight")
            L.qkv = _joined([matrix(p + f"self_attn.{n}_proj.weight") for n in "qkv"], self.xp)
            L.qkv_bias = _cat([optional(p + f"self_attn.{n}_proj.bias") for n in "qkv"], self.xp)
            L.o, L.o_bias = matrix(p + "self_attn.o_proj.weight"), optional(p + "self_attn.o_proj.bias")
            L.gate_up = _joined([matrix(p + "mlp.gate_proj.weight"), matrix(p + "mlp.up_proj.weight")], self.xp)
            L.gate_up_bias = _cat([optional(p + "mlp.gate_proj.bias"), optional(p + "mlp.up_proj.bias")], self.xp)
            L.down, L.down_bias = matrix(p + "mlp.down_proj.weight"), optional(p + "mlp.down_proj.bias")
            L.qk_norm = None
            if c.qk_norm:                # one [H + KV, D] weight: q's norm on the q heads, k's on the k heads
                L.qk_norm = self.xp.concatenate([
                    self.xp.broadcast_to(dense(p + "self_attn.q_norm.weight"), (c.heads, c.head_dim)),
                    self.xp.broadcast_to(dense(p + "self_attn.k_norm.weight"), (c.kv_heads, c.head_dim))])
            L.window = c.windows[i]
            self.layers.append(L)
        self.scale = 1.0 / math.sqrt(c.head_dim)
        self._cos = self._sin = None     # RoPE tables [positions, D], grown by ensure_rope
        self._in_place = None            # exact_in_place(), once known
        self._dense = None               # keep_dense(): float32 copies of block-quantized weights by id
        self._bf16 = {}                  # bf16_weights by (layer, whether dense copies exist)
        self._lm_head_bounds = None      # argmax_logits.weight_bounds(lm_head), once asked for
        self._stored_floats = {}         # _float_weight(): float32 weights as stored F32 weights, by id

    # --- dense copies of block-quantized weights ------------------------------------------------------
    @property
    def has_dense_copies(self) -> bool:
        """Whether keep_dense() (or dense()) has been called: wide products read the copies."""
        return self._dense is not None

    def keep_dense(self) -> None:
        """From now on, products of more than gemv.MAX_ROWS rows use copies of the block-quantized weights
        decoded once instead of block by block at every product: a batch engine's prefill chunks and large
        decode batches. The copies are float32 (4 bytes a parameter more memory; the same values, so
        deterministic mode's bits are too), or in fast mode with tensor_cores bfloat16 (2 bytes a
        parameter; none for BF16 weights). Deterministic mode makes none of a weight whose products the
        backend's exact block kernels take for any rows (BlockQuantized.exact_in_place: the GPU's tiles and the
        CPU's compiled loops read W in place)."""
        if self._dense is None:
            self._dense = {}

    def dense(self, w: Array | BlockQuantized) -> Array | BlockQuantized:
        """The device copy of block-quantized weight w for wide products in the current mode (made once:
        float32, or bfloat16 with tensor cores in fast mode), or w itself."""
        if not isinstance(w, BlockQuantized):
            return w
        if self._dense is None:
            self._dense = {}
        bf16 = self.tensor_cores and not is_deterministic()
        copy = self._dense.get((id(w), bf16))
        if copy is None:
            copy = w.bf16_copy() if bf16 else self.backend.asarray(w.dequantize(), dtype=np.float32)
            self._dense[(id(w), bf16)] = copy
        return copy

    def exact_in_place(self) -> bool:
        """Whether every deterministic product of this decoder's layers and lm_head with a stored
        weight reads it in place for any number of rows (BlockQuantized.exact_in_place); float arrays
        take the exact GEMM itself. Worked out once (the weights do not change)."""
        if self._in_place is None:
            weights = [self.lm_head] + [w for L in self.layers for w in (L.qkv, L.o, L.gate_up, L.down)]
            parts = [p for w in weights for p in (w if isinstance(w, tuple) else (w,))]
            self._in_place = all(p.exact_in_place() for p in parts if isinstance(p, BlockQuantized))
        return self._in_place

    def _weight(self, w, rows: int):
        if not isinstance(w, BlockQuantized):
            return self._float_weight(w) if is_deterministic() else w
        if rows <= gemv.MAX_ROWS:
            return w
        if is_deterministic() and w.exact_in_place():
            return w                # the block kernels read W once for all rows: no decoded copy
        if self._dense is not None:
            return self.dense(w)
        return w.with_tensor_cores() if self.tensor_cores and not is_deterministic() else w

    def _float_weight(self, w):
        """A float32 weight [out, in] as a stored F32 BlockQuantized over the same memory, made once: its
        deterministic products then take the stored weights' path (the integer kernels where the backend
        has them), with the rows' exponents made once in its tables, not at every product (weights
        dequantized at load: the browser's)."""
        if w.dtype != np.float32 or w.ndim != 2 or not w.flags.c_contiguous:
            return w
        stored = self._stored_floats.get(id(w))
        if stored is None:
            stored = self._stored_floats[id(w)] = BlockQuantized(w.view(np.uint8), "F32", w.shape)
        return stored

    # --- positions -----------------------------------------------------------------------------------
    def ensure_rope(self, positions: int) -> None:
        """RoPE tables for at least `positions` positions. They grow to twice their length (up to the
        model's context) at a time: a decode step asking one position more each time would otherwise
        rebuild them at every token. (Each row depends on its position alone.)"""
        if self._cos is None or self._cos.shape[0] < positions:
            have = 0 if self._cos is None else self._cos.shape[0]
            cos, sin = rope.tables(self.config.rope, max(positions, min(2 * have, self.config.max_positions)))
            self._cos, self._sin = self.backend.asarray(cos), self.backend.asarray(sin)

    def rope_at(self, positions: Array) -> tuple[Array, Array]:
        """cos, sin [N, 1, D] at the device int array `positions` [N] (ensure_rope first)."""
        return self._cos[positions][:, None], self._sin[positions][:, None]

    # --- forward -------------------------------------------------------------------------------------

    def logits_of(self, h: Array, argmax_only: bool = False) -> Array:
        """Logits [..., vocab] of final hidden states h [..., E]. argmax_only (h [rows, E], each a plain
        greedy row whose logits serve only their first argmax): in deterministic mode on the CPU, each
        row's candidates for it exact and the rest -inf (argmax_logits.py: the same first argmax for
        about half the output layer's time), where the output layer's stored type allows."""
        if not is_deterministic():
            return _linear(fused.rms_norm(h, self.norm, self.config.eps)[0], self.lm_head, None, self._weight)
        h = self._rms(h, self.norm)         # (_rms's one compiled call on the CPU where it can: fused's bits)
        if argmax_only and h.ndim == 2 and h.shape[0] <= gemv.MAX_ROWS and argmax_logits.supports(self.backend,
                                                                                                  self.lm_head):
            if self._lm_head_bounds is None:
                self._lm_head_bounds = argmax_logits.weight_bounds(self.lm_head)
            return argmax_logits.exact_logits(self.backend, np.ascontiguousarray(h), self.lm_head,
                                              self._lm_head_bounds)
        return _linear(h, self.lm_head, None, self._weight)

    # --- fast mode's one-token steps on the CPU ---------------------------------------------------------
    def token_ops(self, h: Array) -> ModuleType | None:
        """The compiled operations of decode steps and prompts (loom/backend/cpu/decode_jit.py) where a
        layer with hidden state h runs them: the CPU in fast mode, numba present; else None. A step of
        decode tokens runs layer_tokens_paged; prompt rows use causal_softmax in attend()."""
        if not self.backend.host or is_deterministic() or h.dtype != np.float32:
            return None
        from ..backend.cpu import decode_jit
        return decode_jit if decode_jit.available() else None

    def token_layer(self, h: Array) -> Callable | None:
        """The compiled layer step for rows of one decode token each over a paged cache, where it runs
        for hidden states like h (the CPU, float32, numba present): fast mode's layer_tokens_paged,
        deterministic mode's layer_tokens_exact; else None. Called as step(L, h2, cache_k, cache_v,
        positions, key_slots)."""
        if self._exact_token_ops(h):
            from ..backend.cpu import exact_jit
            exp, sigmoid = mathlib.host_loop("exp", np.float32), mathlib.host_loop("sigmoid", np.float32)
            loop = exact_jit.rms_rows_loop()
            if exp is not None and sigmoid is not None and loop is not None:    # (looked up once a step)
                eps, bits = np.float32(self.config.eps), exact_jit.sum_bits(self.config.hidden)
                return functools.partial(self.layer_tokens_exact, exp, sigmoid,
                                         lambda x, weight, out: loop(x, weight, eps, bits, out))
        compiled = self.token_ops(h)
        return None if compiled is None else functools.partial(self.layer_tokens_paged, compiled)

    def layer_tokens_paged(self, ops_: ModuleType, L: _Layer, h2: Array, cache_k: Array, cache_v: Array,
                           positions: list[int], key_slots: list[np.ndarray]) -> None:
        """A layer for rows of one token each over a paged cache, the products as always, the operations
        between them one compiled call each: h2 [N, E] updated in place, row r
        at position positions[r], seeing the keys in slots key_slots[r] (its own slot last); cache_k,
        cache_v [slots, KV, D]. The products take every row at once."""
        c = self.config
        x = np.empty_like(h2)
        ops_.rms_rows(h2, L.ln1, c.eps, x)
        qkv = _linear(x, L.qkv, L.qkv_bias, self._weight)
        ctx = np.empty((h2.shape[0], c.heads * c.head_dim), dtype=np.float32)
        for r, (pos, slots) in enumerate(zip(positions, key_slots)):
            ops_.attend_token_paged(qkv[r], c.heads, c.kv_heads, self._cos[pos], self._sin[pos], L.qk_norm, c.eps,
                                    cache_k, cache_v, slots, self.scale, ctx[r])
        h2 += _linear(ctx, L.o, L.o_bias, self._weight)
        ops_.rms_rows(h2, L.ln2, c.eps, x)
        gate_up = _linear(x, L.gate_up, L.gate_up_bias, self._weight)
        act = np.empty((h2.shape[0], c.intermediate), dtype=np.float32)
        ops_.swiglu_rows(gate_up, act)
        h2 += _linear(act, L.down, L.down_bias, self._weight)

    # --- deterministic mode's one-token steps on the CPU -----------------------------------------------
    def layer_tokens_exact(self, exp: Callable, sigmoid: Callable, rms: Callable, L: _Layer, h2: Array,
                           cache_k: Array, cache_v: Array, positions: list[int], key_slots: list[np.ndarray]) -> None:
        """layer_tokens_paged in deterministic mode, with the bits of qkv, attend and finish_layer (the
        same operations, fewer calls): each row's RoPE, cache write and attention in two compiled calls
        around exp (backend/cpu/decode_exact.py) where its keys are within the rounded scheme's K and
        everything is finite, else the composed operations for that row; exp, SiGLU's sigmoid and the
        RMSNorms' loop (exact_jit.rms_rows_loop) called directly (a call through ops, or _rms' checks,
        cost more than the loop)."""
        c = self.config
        qkv = _linear(self._exact_rms(rms, h2, L.ln1), L.qkv, L.qkv_bias, self._weight)
        ctx = np.empty((h2.shape[0], c.heads * c.head_dim), dtype=np.float32)
        for r, (pos, slots) in enumerate(zip(positions, key_slots)):
            ctx[r] = self._exact_token_row(L, qkv[r], cache_k, cache_v, pos, slots, exp)
        h2 += _linear(ctx, L.o, L.o_bias, self._weight)
        gu = _linear(self._exact_rms(rms, h2, L.ln2), L.gate_up, L.gate_up_bias, self._weight)
        act = np.ascontiguousarray(gu[:, :c.intermediate])      # (x sigmoid(x)) up, as _swiglu composes it
        sig = np.empty_like(act)
        sigmoid(act.reshape(-1), sig.reshape(-1))
        act *= sig
        act *= gu[:, c.intermediate:]
        h2 += _linear(act, L.down, L.down_bias, self._weight)

    def _exact_rms(self, rms: Callable, h2: Array, weight: Array) -> Array:
        """_rms(h2, weight) in layer_tokens_exact (h2 [N, E] float32, C-contiguous): exact_jit's loop `rms`
        called directly; _rms where the weight is not float32 and C-contiguous or a square is inf or NaN."""
        out = np.empty_like(h2)
        if weight.dtype == np.float32 and weight.flags.c_contiguous and rms(h2, weight, out):
            return out
        return self._rms(h2, weight)

    def _exact_token_row(self, L: _Layer, qkv: Array, cache_k: Array, cache_v: Array, pos: int,
                         slots: np.ndarray, exp) -> Array:
        """One row's context [H D] for layer_tokens_exact (qkv [(H + 2 KV) D], biases added; exp:
        mathlib's compiled loop)."""
        from ..backend.cpu import attend_exact, attend_integer, decode_exact
        c = self.config
        H, KV, D, n = c.heads, c.kv_heads, c.head_dim, len(slots)
        if INTEGER_ATTENTION and n < integer_attention.MAX_KEYS:         # spec 5: RoPE to context in two calls
            ctx = attend_integer.rope_step(qkv, H, KV, self._cos[pos], self._sin[pos], L.qk_norm, c.eps, cache_k,
                                           cache_v, slots, self.scale, *integer_attention.SCHEME)
            if ctx is not None:
                return ctx
        if n <= exact_dispatch.ROUNDED_MAX_K and not INTEGER_ATTENTION:     # (spec 4's: in attend under spec 5)
            values = np.empty((KV, n, D), dtype=np.float32)
            shifted = decode_exact.rope_scores(qkv, H, KV, self._cos[pos], self._sin[pos], L.qk_norm, c.eps, cache_k,
                                               cache_v, slots, self.scale, exact_rounded.error_factor(D), values)
            if shifted is not None:
                e = np.empty_like(shifted)
                exp(shifted.reshape(-1), e.reshape(-1))
                ctx = attend_exact.weighted_values(e, values, H // KV, exact_rounded.error_factor(n))
                if ctx is not None:
                    return ctx.reshape(-1)
        q, k, v = self._rotated(L, qkv[None, None], self._cos[pos][None, None], self._sin[pos][None, None])
        cache_k[slots[-1]], cache_v[slots[-1]] = k[0, 0], v[0, 0]
        return self.attend(L, q, heads_first(np, cache_k, slots), heads_first(np, cache_v, slots), pos,
                           self.first_key(L, pos)).reshape(-1)

    # --- fast mode's prompt layers on the GPU ----------------------------------------------------------
    def prefill_kernels(self, rows: int, prompt: bool = False) -> PrefillKernels | None:
        """The backend's fused prompt kernels (backend/cuda/prefill.py) where a product of `rows` rows
        runs on the tensor cores in the current mode and the flash kernel takes the heads; else None.
        Past gemv.MAX_ROWS rows; `prompt`: rows of prompt chunks only (a batch engine's step), which
        take them from two rows (the composed path would launch every operation on its own)."""
        be = self.backend
        if (rows <= (1 if prompt else gemv.MAX_ROWS) or not self.tensor_cores or is_deterministic() or be.flash is None
                or be.prefill is None or not be.flash.supports(self.config.head_dim)):
            return None
        return be.prefill

    def bf16_weights(self, L: _Layer) -> tuple | None:
        """The layer's four weights for the tensor cores, each a BlockQuantized whose matmul_t_bf16 runs
        there: stored BF16 rows (or the BF16 copies of keep_dense) as they are, other types decoded to
        bfloat16 block by block; None where one is neither (float32 weights, types the backend cannot
        decode, output biases): that layer runs the composed path. Kept per layer (every
        prompt chunk asks) until keep_dense changes which copies exist."""
        key = (id(L), self._dense is not None)
        if key not in self._bf16:
            self._bf16[key] = self._find_bf16(L)
        return self._bf16[key]

    def _find_bf16(self, L: _Layer) -> tuple | None:
        if L.o_bias is not None or L.down_bias is not None:
            return None
        out = []
        for w in (L.qkv, L.o, L.gate_up, L.down):
            if isinstance(w, BlockQuantized) and w.qtype != "BF16" and self._dense is not None:
                w = self.dense(w)
            if not isinstance(w, BlockQuantized) or (w.qtype != "BF16" and w.qtype not in self.backend.quant.TYPES):
                return None
            out.append(w)
        return tuple(out)

    @staticmethod
    def gemm16(x16: Array, w: BlockQuantized, out: Array, accumulate: bool = False) -> None:
        """out (+)= x16 @ w^T on the tensor cores for one of bf16_weights' weights."""
        w.matmul_t_bf16(x16, out, accumulate)

    def qkv_fast(self, kernels: PrefillKernels, L: _Layer, w16: tuple, h2: Array) -> Array:
        """The fused q|k|v product [rows, (H + 2 KV) D] (no bias yet) of h2 [rows, E]: RMSNorm written
        as bfloat16, one bfloat16 GEMM (fast mode's prompt layers; w16 from bf16_weights)."""
        qkv = self.xp.empty((h2.shape[0], w16[0].shape[0]), dtype=np.float32)
        self.gemm16(kernels.rms_bf16(h2, L.ln1, self.config.eps), w16[0], qkv)
        return qkv

    def finish_fast(self, kernels: PrefillKernels, L: _Layer, w16: tuple, h2: Array, ctx16: Array) -> None:
        """finish_layer in five launches, h2 [rows, E] updated in place: the output GEMM adding into
        it, RMSNorm written as bfloat16, the gate|up GEMM, SwiGLU written as bfloat16, the down GEMM
        adding into it. ctx16: the attention's context as bfloat16 bits [rows, H D]."""
        _, wo, wgu, wdown = w16
        self.gemm16(ctx16, wo, h2, accumulate=True)
        gu = self.xp.empty((h2.shape[0], wgu.shape[0]), dtype=np.float32)
        self.gemm16(kernels.rms_bf16(h2, L.ln2, self.config.eps), wgu, gu)
        self.gemm16(kernels.swiglu_bf16(gu, L.gate_up_bias), wdown, h2, accumulate=True)

    def embed_ids(self, ids: np.ndarray) -> Array:
        """The embeddings [B, T, E] of host token ids [B, T]."""
        B, T = ids.shape
        if isinstance(self.embed, BlockQuantized):
            return self.embed.take_rows(ids.reshape(-1)).reshape(B, T, -1)
        # intp: NumPy's take refuses int64 indices where pointers are 32-bit (WebAssembly)
        return self.xp.take(self.embed, self.backend.asarray(ids, dtype=np.intp), axis=0)

    def embed_rows(self, ids: Array) -> Array:
        """embed_ids for device token ids [B, T] already checked to be in the vocabulary (no read back
        to the host: a recorded prefill's lookup)."""
        if isinstance(self.embed, BlockQuantized):
            return self.embed.gather_rows(ids)
        return self.xp.take(self.embed, ids, axis=0)

    def qkv(self, L: _Layer, h: Array, cos: Array, sin: Array) -> tuple[Array, Array, Array]:
        """The layer's rotated queries [B, T, H, D], keys and values [B, T, KV, D] for hidden h [B, T, E]
        at the positions of cos, sin [T, 1, D]."""
        qkv = _linear(self._rms(h, L.ln1), L.qkv, L.qkv_bias, self._weight)          # [B, T, (H + 2 KV) D]
        return self._rotated(L, qkv, cos, sin)

    def qkv_into_cache(self, L: _Layer, h: Array, positions: Array, slots: Array, cache_k: Array,
                       cache_v: Array) -> Array | None:
        """qkv's queries [1, N, H, D] for hidden h [1, N, E] at the device positions [N], with the keys and values
        written to `slots` [N] of the paged caches [slots, KV, D], the bias, RoPE and the cache writes in the
        backend's one launch (backend/cuda/prefill.rope_rows: the bias added and HF's rotate-half as the composed
        float32 operations, each rounded, so the composed path's bits in either mode); None where it does not
        apply (no such kernel, qwen3's head norms, whose sums it does not take exactly, other dtypes): the
        caller composes qkv and the writes."""
        kernels = self.backend.prefill
        if (kernels is None or L.qk_norm is not None or h.dtype != np.float32 or self._cos.dtype != np.float32
                or cache_k.dtype != np.float32 or cache_v.dtype != np.float32):
            return None
        qkv = self._product(h, L.qkv, None, norm=L.ln1)[0]                         # [N, (H + 2 KV) D]
        if qkv.dtype != np.float32:     # (float64 weights: the composed path, which takes this product again)
            return None
        c = self.config
        return kernels.rope_rows(qkv, L.qkv_bias, None, c.eps, self._cos, self._sin, c.heads, c.kv_heads, cache_k,
                                 cache_v, positions, slots)[None]

    def _rotated(self, L: _Layer, qkv: Array, cos: Array, sin: Array) -> tuple[Array, Array, Array]:
        """qkv's tail: the queries [B, T, H, D] and keys [B, T, KV, D] normed (qwen3) and rotated, and the
        values [B, T, KV, D], from the projection qkv [B, T, (H + 2 KV) D] (biases added)."""
        c = self.config
        B, T, _ = qkv.shape
        H, KV, D = c.heads, c.kv_heads, c.head_dim
        qk = qkv[..., :(H + KV) * D].reshape(B, T, H + KV, D)          # q heads, then k heads
        v = qkv[..., (H + KV) * D:].reshape(B, T, KV, D)
        if L.qk_norm is not None:                                        # qwen3: per-head RMSNorm before RoPE
            qk = fused.rms_norm(qk, L.qk_norm, c.eps)[0]
        qk = _rotate(qk, cos, sin, self.xp)                              # q and k in one pass
        return qk[:, :, :H], qk[:, :, H:], v

    @staticmethod
    def first_key(L: _Layer, pos: int) -> int:
        """The first key position any query at pos or later may attend to (its sliding window's)."""
        return 0 if L.window is None else max(0, pos - L.window + 1)

    def attend(self, L: _Layer, q: Array, keys: Array, values: Array, pos: int, lo: int) -> Array:
        """Attention of queries q [B, T, H, D] at positions pos.. over the keys and values
        [B, KV, n, D] at positions lo..pos+T-1: the context [B, T, H*D]. Each query's row sees its own
        keys only (causal, its window), so in deterministic mode its bits do not depend on T. In fast
        mode with tensor_cores, more than gemv.MAX_ROWS queries of a layer with stored 16-bit or
        quantized weights go through the backend's flash kernel on a GPU (bfloat16 inputs, float32
        sums: backend/cuda/flash.py); float32 weights keep float32 attention."""
        c, xp = self.config, self.xp
        B, T = q.shape[:2]
        H, KV, D = c.heads, c.kv_heads, c.head_dim
        flash = self.backend.flash
        if (T > gemv.MAX_ROWS and flash is not None and self.tensor_cores and not is_deterministic()
                and isinstance(L.qkv, BlockQuantized) and flash.supports(D)):
            # fast mode's prompts: one kernel on the tensor cores, no [T, n] scores in memory
            return flash.attend(q, keys, values, pos, lo, L.window, self.scale)
        R, end = H // KV, pos + T
        n = end - lo
        if INTEGER_ATTENTION and is_deterministic():                     # spec 5: the integer scheme
            q5 = xp.ascontiguousarray(q.reshape(B, T, KV, R, D).transpose(0, 2, 3, 1, 4)).reshape(B * KV, R * T, D)
            ctx = integer_attention.causal(q5, xp.ascontiguousarray(keys).reshape(B * KV, n, D),
                                           xp.ascontiguousarray(values).reshape(B * KV, n, D), R, pos, lo, L.window,
                                           self.scale)
            return ctx.reshape(B, KV, R, T, D).transpose(0, 3, 1, 2, 4).reshape(B, T, H * D)
        q = q.reshape(B, T, KV, R, D).transpose(0, 2, 3, 1, 4).reshape(B, KV, R * T, D)   # head h = kv*R + r
        if T == 1 and n <= exact_dispatch.ROUNDED_MAX_K and self._exact_token_ops(q):
            ctx = _exact_token_attention(q, keys, values, R, self.scale)
            if ctx is not None:                                          # the array code's bits
                return ctx.reshape(B, T, H * D)
        scores = ops.matmul(q, keys.transpose(0, 1, 3, 2))              # [B, KV, R*T, n]
        compiled = self.token_ops(scores) if T > 1 else None
        if compiled is not None:                                         # the CPU's fast mode
            compiled.causal_softmax(scores.reshape(B * KV * R, T, n), self.scale, pos, lo, L.window)
            p = scores
        elif T == 1:                                                     # a decode step sees exactly its keys
            p = ops.softmax(scores * scores.dtype.type(self.scale), axis=-1)
        elif L.window is None and lo == 0:
            p = fused.scaled_masked_softmax(scores.reshape(B, KV, R, T, n), self.scale, True, pos)
        else:
            qpos = xp.arange(pos, end)[:, None]
            kpos = xp.arange(lo, end)[None, :]
            allowed = (kpos <= qpos) & (kpos > qpos - (n if L.window is None else L.window))
            p = ops.softmax(scores.reshape(B, KV, R, T, n) * scores.dtype.type(self.scale), axis=-1, mask=allowed)
        ctx = ops.matmul(p.reshape(B, KV, R * T, n), values)             # [B, KV, R*T, D]
        return ctx.reshape(B, KV, R, T, D).transpose(0, 3, 1, 2, 4).reshape(B, T, H * D)

    def finish_layer(self, L: _Layer, h: Array, ctx: Array) -> Array:
        """The rest of a layer after attention: h + o_proj(ctx), then the MLP's residual."""
        h = self._product(ctx, L.o, L.o_bias, residual=h)
        act = self._product(h, L.gate_up, L.gate_up_bias, swiglu=True, norm=L.ln2)           # [B, T, I]
        return self._product(act, L.down, L.down_bias, residual=h)

    def _product(self, x: Array, w, bias: Array | None, residual: Array | None = None,
                 swiglu: bool = False, norm: Array | None = None) -> Array:
        """(residual +) x @ w^T (+ bias), or (swiglu) silu(gate) * up of its halves [..., I]; with `norm`, of
        _rms(x, norm). Deterministic mode on a backend that fuses epilogues (the GPU's integer kernels): one
        launch with the epilogue inside, no [rows, 2 I] product in memory, the norm made by x's integers' launch
        (no launch of its own), the array code's bits (quant_fixed's epilogues); else _linear's product and the
        array code."""
        lead, k = x.shape[:-1], x.shape[-1]
        rows = int(np.prod(lead))
        w1 = self._weight(w, rows) if not isinstance(w, tuple) else w
        quant = self.backend.quant
        if (is_deterministic() and quant.fixed_epilogues and rows and isinstance(w1, BlockQuantized) and w1.shape[1] == k
                and _flat_f32(bias, w1.shape[0]) and (norm is None or (x.dtype == np.float32 and _flat_f32(norm, k)))):
            xp = self.xp
            n = w1.shape[0] // 2 if swiglu else w1.shape[0]
            x2 = xp.ascontiguousarray(x.reshape(rows, k), dtype=np.float32)
            res = None if residual is None else xp.ascontiguousarray(residual.reshape(rows, n), dtype=np.float32)
            out = xp.empty((rows, n), dtype=np.float32)
            normed = {} if norm is None else dict(norm=norm, normed=xp.empty((rows, k), np.float32), eps=self.config.eps)
            if quant.matmul_t_fixed(x2, w1.data, w1.qtype, out, w1.tables, bias=bias, residual=res, swiglu=swiglu,
                                    **normed):
                return out.reshape(*lead, n)
        if norm is not None:
            x = self._rms(x, norm)
        y = _linear(x, w, bias, self._weight)
        if swiglu:
            y = self._swiglu(y)
        return y if residual is None else residual + y

    def _swiglu(self, gu: Array) -> Array:
        """silu(gate) * up of the gate|up product gu [..., 2 I]."""
        c = self.config
        compiled = self.token_ops(gu)
        if compiled is not None:                                         # the CPU's fast mode
            act = np.empty(gu.shape[:-1] + (c.intermediate,), dtype=np.float32)
            compiled.swiglu_rows(gu.reshape(-1, gu.shape[-1]), act.reshape(-1, c.intermediate))
            return act
        gate, up = gu[..., :c.intermediate], gu[..., c.intermediate:]
        return fused.bias_act(gate, None, "silu")[1] * up                # one kernel where the backend fuses

    def _exact_token_ops(self, x: Array) -> bool:
        """Whether deterministic mode's compiled decode-token operations take x's layer here (the CPU,
        float32, numba: backend/cpu/attend_exact.py)."""
        if not self.backend.host or not is_deterministic() or x.dtype != np.float32:
            return False
        from ..backend.cpu import decode_exact
        return decode_exact.available()

    def _rms(self, h: Array, weight: Array) -> Array:
        """RMSNorm of h [..., E] with `weight`: the compiled rows where token_ops has them (fast mode) or
        the exact ones do (deterministic mode on the CPU: fused.rms_norm's bits), else fused's."""
        compiled = self.token_ops(h)
        if compiled is None:
            if self.backend.host and is_deterministic() and h.dtype == np.float32:
                from ..backend.cpu import exact_jit
                h2 = np.ascontiguousarray(h).reshape(-1, h.shape[-1])
                out = np.empty_like(h2)
                if exact_jit.rms_rows(h2, weight, self.config.eps, out):
                    return out.reshape(h.shape)
            return fused.rms_norm(h, weight, self.config.eps)[0]
        h = np.ascontiguousarray(h)
        out = np.empty_like(h)
        compiled.rms_rows(h.reshape(-1, h.shape[-1]), weight, self.config.eps, out.reshape(-1, h.shape[-1]))
        return out


def _flat_f32(a: Array | None, n: int) -> bool:
    """Whether a (a bias or norm weight, or None) is what the fused kernels index flat: float32 [n], C-contiguous."""
    return a is None or (a.dtype == np.float32 and a.shape == (n,) and a.flags.c_contiguous)


def _exact_token_attention(q: Array, keys: Array, values: Array, per_group: int, scale: float) -> Array | None:
    """attend's deterministic arithmetic for one query position on the CPU, compiled
    (backend/cpu/attend_exact.py) around mathlib's exp: q [B, KV, R, D], keys and values [B, KV, n, D];
    the context [B * KV * R, D], or None where a score or sum is not finite (the array code runs)."""
    from ..backend.cpu import attend_exact
    D, n = q.shape[-1], keys.shape[-2]
    shifted = attend_exact.shifted_scores(np.ascontiguousarray(q).reshape(-1, D),
                                          np.ascontiguousarray(keys).reshape(-1, n, D), per_group, scale,
                                          exact_rounded.error_factor(D))
    if shifted is None:
        return None
    return attend_exact.weighted_values(ops.exp(shifted), np.ascontiguousarray(values).reshape(-1, n, D), per_group,
                                        exact_rounded.error_factor(n))


def heads_first(xp: ModuleType, pool: Array, slots: Array) -> Array:
    """The cached rows at `slots` of a pool [slots, KV, D] as attend's keys or values [1, KV, n, D], each
    head's rows contiguous (the exact products' compiled loops take contiguous matrices only; a strided
    view would take their NumPy reference)."""
    return xp.ascontiguousarray(pool[slots].transpose(1, 0, 2))[None]


def _rotate(x, cos, sin, xp):
    """HF's rotate-half RoPE: x [B, T, heads, D] with cos, sin [T, 1, D]."""
    half = x.shape[-1] // 2
    rotated = xp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


def _linear(x, w, bias=None, pick=None):
    """x [..., in] @ w^T (+ bias); w is one weight, or a tuple of weights whose outputs are concatenated.
    The product runs on x as a 2-D [rows, in] matrix: the CPU backend's fast path for x @ W^T is 2-D.
    pick(w, rows), when given, may replace a weight by another holding the same values (a dense copy)."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    if pick is not None:
        w = tuple(pick(part, x2.shape[0]) for part in w) if isinstance(w, tuple) else pick(w, x2.shape[0])
    if isinstance(w, tuple):
        y = backend.of(x).xp.concatenate([linear(x2, part) for part in w], axis=-1)
    else:
        y = linear(x2, w)
    if bias is not None:
        y += bias
    return y.reshape(*lead, y.shape[-1])


def _joined(ws: list, xp):
    """One [sum of rows, in] weight (one product per step) when the parts are all float arrays or all
    BlockQuantized weights of one type (rows are independent, so their stored rows concatenate); else a tuple."""
    if all(not isinstance(w, BlockQuantized) for w in ws):
        return xp.concatenate(ws, axis=0)
    if all(isinstance(w, BlockQuantized) for w in ws) and len({w.qtype for w in ws}) == 1:
        data = xp.concatenate([w.data for w in ws], axis=0)
        return BlockQuantized(data, ws[0].qtype, (data.shape[0], ws[0].shape[1]))
    return tuple(ws)


def _cat(parts: list, xp):
    """The biases of fused projections, concatenated (check_weights makes them all present or all absent)."""
    return None if parts[0] is None else xp.concatenate(parts)

"""What a backend provides, family by family: the array module and BLAS every backend has, and the
kernel families a backend may accelerate.

loom/kernels holds the portable reference of every operation, written against the array module
(`xp`), and asks the owning backend for a family's kernel first. A family member is either an
object implementing the protocol below or None, declared on the backend class: None says this
backend has no kernels of that family, so the reference is its implementation (the CPU's fused
row kernels are NumPy's own passes, for instance). Within a family, a method that returns None
declines that one case (a dtype, a layout, a size it has no kernel for) and the reference runs.
Every kernel gives the reference's bits where deterministic mode needs them; tests/kernels and
tests/gpu compare each with its reference on random inputs.

Where is X? loom/backend/cpu/<family>.py and loom/backend/cuda/<family>.py; the reference and the
dispatch are in loom/kernels (ops.py, fused.py, exact/, quant/, windows.py).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any, Protocol

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

# An array of some backend: numpy.ndarray on the CPU, cupy.ndarray on the GPU (annotations only).
Array = Any


class ExactKernels(Protocol):
    """Deterministic mode's reductions (loom/kernels/exact: the schemes, the dispatch table and the
    reference arithmetic). Each method gives the reference's bits."""

    def absmax(self, x: Array, axis: int | tuple[int, ...]) -> Array | None:
        """max |x| along axis, kept (NaN where one is NaN)."""

    def gemm_maxima(self, a: Array, b: Array) -> tuple[Array, Array] | None:
        """(absmax of a's rows, absmax of b's columns) together, for a product a @ b."""

    def matmul_rounded(self, a: Array, b: Array, factor: float) -> tuple[Array, bool] | None:
        """(a @ b with every entry the exact dot product rounded once to float32, finite) for float32
        a [..., M, K] and b [..., K, N]; `finite` False leaves rows and columns holding inf or NaN
        to the caller. `factor`: the rounding error bound's gamma_K (exact/rounded.error_factor)."""

    def matmul_sliced(self, a: Array, b: Array, bits: tuple[int, int]) -> Array | None:
        """The whole 2 x 1 slice product of float32 matrices (K <= 2^14) with finite values."""

    def matmul_narrow(self, a: Array, b: Array, amax: Array, bmax: Array, bits: tuple[int, int],
                      dtype: DTypeLike, guarded: bool) -> Array:
        """The 2 x 1 slice product from the maxima (exact._matmul_narrow's arithmetic); `guarded`:
        special values patched in too (only where special_guard said so)."""

    def matmul_narrow_chunks(self, a: Array, b: Array, amax: Array, bmax: Array, bits: tuple[int, int],
                             dtype: DTypeLike, step: int) -> Array | None:
        """matmul_narrow over the chunks of `step` along K at once, added in order."""

    def slice_parts(self, a: Array, b: Array, amax: Array, bmax: Array, bits: tuple[int, int]) -> Array | None:
        """The slice scheme's integers for float32 a [..., M, K] and b [..., K, N] at the given maxima:
        int64 [..., 2M, N], g_hi's rows then g_lo's, K summed in pieces of at most 2^14 (each exact in
        float64), the pieces added in int64 (exact.over_batch; ranks add these)."""

    def combine_parts(self, parts: Array, amax: Array, bmax: Array, bits: tuple[int, int], dtype: DTypeLike
                      ) -> Array | None:
        """((float64(g_lo) 2^-bits_a + float64(g_hi)) * row scale) * column scale, rounded to dtype."""

    def special_guard(self, a: Array, b: Array) -> SpecialGuard | None:
        """The kernels that patch IEEE's special values into a product of a and b on the device (no
        host read), or None: the caller checks and patches (exact._with_specials)."""

    def sum_float32(self, x: Array, axes: tuple[int, ...], bits: int) -> Array | None:
        """The exact sum of float32 x over axes (kept), rounded once to float32 or still float64."""

    def sum_float32_across(self, x: Array, axes: tuple[int, ...], bits: int,
                           all_reduce: Callable[[Array, str], None]) -> Array | None:
        """sum_float32 (kept axes, float32) of a batch split across ranks: the finite maxima and then
        the exact integer sums passed through all_reduce(array, "max" | "sum") in place."""

    def cumsum_float32(self, x: Array, axis: int, bits: int) -> Array | None:
        """exact.cumsum of float32 x along axis (bits = 53 - ceil(log2 n)), or None: the caller's
        arithmetic."""


class SpecialGuard(Protocol):
    def patch_specials(self, a: Array, b: Array, amax: Array, bmax: Array, result: Array) -> None:
        """Overwrite the entries of result = a @ b whose row or column holds inf or NaN."""


class QuantKernels(Protocol):
    """Products with block-quantized weights (GGUF types, loom/kernels/quant) read in place."""

    TYPES: tuple[str, ...]          # the block types matmul_t takes (fast mode)
    dequantize_bytes: int           # float32 bytes of W decoded at once where no kernel takes a product
    tensor_cores: bool              # whether to_bf16 and matmul_t_bf16 run (fast-mode bfloat16 products)

    def matmul_t(self, x2: Array, data: Array, qtype: str, out: Array) -> bool:
        """out = x2 @ W.T for W's stored blocks `data` (fast mode); False: declined."""

    def matmul_t_exact(self, x2: Array, data: Array, qtype: str, out: Array, tables: dict,
                       factor: float | None = None, bits: tuple | None = None) -> bool:
        """The same with deterministic mode's bits: the rounded GEMM's (factor =
        exact_rounded.error_factor(K)) or, given bits (exact.narrow_bits(K), K <= 2^14), the slice
        scheme's; `tables`: the weight's memo (BlockQuantized.tables), for what the backend derives from
        the stored rows once; False: declined."""

    def exact_wide(self, qtype: str, cols: int, sliced: bool) -> bool:
        """Whether matmul_t_exact takes products of any number of rows of x with a weight stored as
        qtype over K = cols in the rounded scheme (or, sliced, the slice scheme), reading W in place."""

    def matmul_t_fixed(self, x2: Array, data: Array, qtype: str, out: Array, tables: dict,
                       bias: Array | None = None, residual: Array | None = None, swiglu: bool = False,
                       norm: Array | None = None, normed: Array | None = None, eps: float = 0.0) -> bool:
        """out = x2 @ W.T in the integer scheme of a language model's weight products (exact.fixed: the
        dispatch table's "weight" rule), W read in place; `tables`: the weight's memo; False: declined.
        With an epilogue (the array code's bits: (residual +) the product (+ bias), or swiglu: silu(gate) *
        up of its halves, W's stored rows the gate's then the up's, out [M, rows / 2]) where the backend
        fuses it (`fixed_epilogues`), else declined. With `norm` (float32 [K]), the product of
        rms_norm(x2, norm, eps) (the exact RMSNorm's bits), whose rows it writes to `normed` [M, K], where the
        backend fuses it (`fixed_epilogues`), else declined."""

    fixed_epilogues: bool           # matmul_t_fixed takes bias, residual, swiglu and norm

    def fixed_wide(self, qtype: str, cols: int) -> bool:
        """Whether matmul_t_fixed takes products of any number of rows of x with a weight stored as qtype
        over K = cols."""

    def dequantize(self, data: Array, qtype: str, out: Array) -> bool:
        """out (float32 C-contiguous, data's value count) = the values of the stored rows `data`, bit for bit
        loom.kernels.quant.gguf's; False: declined (gguf's array code decodes)."""

    def dequantize_bf16(self, data: Array, qtype: str, out: Array) -> bool:
        """out (uint16 C-contiguous, data's value count) = to_bf16 of dequantize's values, in one pass;
        False: declined."""

    def to_bf16(self, x: Array) -> Array | None:
        """bfloat16 bits (uint16) of float32 x, rounded to nearest even; None without tensor_cores."""

    def matmul_t_bf16(self, x2: Array, w16: Array, out: Array, accumulate: bool = False) -> bool:
        """out float32 [M, R] (+)= x2 [M, K] rounded to bfloat16 (or bfloat16 bits, uint16) @ w16^T
        (bfloat16 bits [R, K]), float32 sums (fast mode); out may be a column slice of a C-contiguous
        matrix; False: declined."""


class ElementwiseKernels(Protocol):
    """Element-wise IR functions (loom/kernels/ir) compiled into one loop or kernel."""

    language: str       # the IR lowering this backend compiles: "cuda" (lower_cuda) or "numba" (lower_numba)

    def run(self, source: str, name: str, inputs: Sequence[Array], out_dtypes: Sequence[DTypeLike]) -> list[Array]:
        """Outputs of function `name` in the lowered `source` over inputs broadcast to one shape."""


class FusedKernels(Protocol):
    """Row and element-wise operations fused into one kernel each (softmax, norms, bias with an
    activation, GELU; loom/kernels/fused.py is the reference and the dispatch)."""

    softmax: Callable[..., Any]
    scaled_masked_softmax: Callable[..., Any]
    softmax_grad: Callable[..., Any]
    layer_norm: Callable[..., Any]
    layer_norm_grad: Callable[..., Any]
    rms_norm: Callable[..., Any]
    rms_norm_grad: Callable[..., Any]
    bias_act: Callable[..., Any]
    gelu: Callable[..., Any]
    gelu_grad: Callable[..., Any]
    lstm_step: Callable[..., Any]           # an LSTM step's element-wise work (nn/layers/recurrent.py)
    lstm_step_back: Callable[..., Any]


class FastFusedKernels(FusedKernels, Protocol):
    """Fast mode's, with the optimizers' element-wise updates too."""

    adam_update: Callable[..., Any]
    sgd_update: Callable[..., Any]


class ExactFusedKernels(FusedKernels, Protocol):
    """Deterministic mode's, with the reference's bits (mathlib's functions, exact row sums)."""

    ROW_DTYPES: tuple                   # dtypes whose rows the kernels sum (others: the reference)


class WindowKernels(Protocol):
    """Sliding windows for convolution and pooling (loom/kernels/windows.py: the reference and the
    dispatch)."""

    ROW_ACTIVATIONS: tuple              # activations rows_to_channels and channels_to_rows apply
    ARG_DTYPE: Any                      # the dtype of the argmax max_pool writes

    def supports(self, *arrays: Array) -> bool: ...
    def im2col(self, x: Array, geom: Any) -> Array: ...
    def col2im(self, cols: Array, b: int, c: int, geom: Any) -> Array: ...
    def rows_to_channels(self, rows: Array, bias: Array | None, fn: str, b: int, small: tuple[int, ...]) -> Array: ...
    def channels_to_rows(self, dy: Array, y: Array, fn: str, groups: int) -> Array: ...
    def max_pool(self, x: Array, k: tuple[int, ...], s: tuple[int, ...], p: tuple[int, ...],
                 out: tuple[int, ...]) -> tuple[Array, Array]: ...
    def max_pool_grad(self, dy: Array, arg: Array, k: tuple[int, ...], s: tuple[int, ...], p: tuple[int, ...],
                      size: tuple[int, ...]) -> Array: ...


class DecodeKernels(Protocol):
    """One LLM decode step's kernels for a recorded graph (loom/llm/paged_graph.py):
    block-weight products and the step's attention, for fast mode and with deterministic mode's bits
    (products_exact: the products the rounded scheme takes; products_sliced: the longer ones, which take
    the slice scheme; products_tiles: both schemes for many rows of x at once, on the float64 tensor
    cores; products_fixed: the dispatch table's "weight" rule, exact.fixed's integers, for any rows;
    products_planes: the same bits from PLANES_ROWS rows on, through the weights' int8 planes). Each
    attention module has paged_attention (a paged cache); the fast one also attention (a contiguous one)."""

    products: ModuleType
    attention: ModuleType
    products_exact: ModuleType
    products_sliced: ModuleType
    products_tiles: ModuleType
    attention_exact: ModuleType
    products_fixed: ModuleType
    products_planes: ModuleType


class ComputeKernels(Protocol):
    """The compute engine's device primitives (loom.engine's units and chains; backend/cuda/compute.py).
    Without them (None) the engine runs kernels with NumPy on host arrays."""

    def function(self, source: str, name: str) -> Any:
        """Kernel `name` of generated source text, compiled once per text."""

    def zeros(self, count: int, dtype: DTypeLike, stream: Any = None) -> Array: ...
    def stream(self) -> Any: ...
    def external_stream(self, handle: int) -> Any:
        """A stream object for a cudaStream_t made elsewhere (the tensor C API's loom_tensor_set_stream)."""
    def csr_matmul(self, row_ptr: Array, col_idx: Array, values: Array, shape: tuple[int, int], dense: Array) -> Array:
        """The CSR matrix (int32 indices, float values) times dense [cols, n]: cuSPARSE's SpMM."""
    def launch(self, fn: Any, grid: tuple[int, int], args: Sequence, stream: Any) -> None: ...

    def record(self, stream: Any, launches: Callable[[], None]) -> Any:
        """The graph of what launches() queues on stream (nothing runs while recording)."""

    def replay(self, graph: Any, stream: Any) -> None: ...
    def event(self, stream: Any) -> Any: ...
    def done(self, event: Any) -> bool: ...
    def wait(self, event: Any) -> None: ...
    def upload(self, dst: Array, offset: int, host: np.ndarray, stream: Any) -> None: ...
    def copy(self, dst: Array, offset: int, src: Array, stream: Any) -> None: ...
    def download(self, src: Array, offset: int, count: int, stream: Any) -> np.ndarray: ...
    def fill(self, dst: Array, value: Any, stream: Any) -> None: ...


class OrderKernels(Protocol):
    """loom.engine.order_keys' float keys in one pass each (None: its array-module path)."""

    DTYPES: tuple[np.dtype, ...]        # the float dtypes taken

    def keys(self, x: Array, nan_first: bool, zeros_equal: bool, descending: bool) -> Array: ...
    def values(self, keys: Array, dtype: np.dtype, descending: bool) -> Array: ...
    def ties(self, x: Array) -> bool: ...       # whether x holds a -0 or a NaN

    def restore(self, out: Array, x: Array, descending: bool) -> None:
        """Put x's zeros and NaNs, in input order, into the runs they sort to in out, along the last
        axis (both C-contiguous)."""


class SortKernels(Protocol):
    """Stable sorts along the last axis in loom.sort's order, keys computed from the values' bits as
    they move (None: the array library's sort of order_keys' keys)."""

    DTYPES: tuple[np.dtype, ...]
    ROW_TILE: int                               # rows up to this long are sorted whole by one block

    def takes(self, x: Array) -> bool: ...      # whether sort/argsort take x (its dtype and shape)
    def sort(self, x: Array, descending: bool) -> Array: ...
    def argsort(self, x: Array, descending: bool) -> Array: ...     # int64 positions
    def digit_passes(self, x: Array) -> int: ...   # passes over all of x that sort(x) makes (benchmarks)


class SearchKernels(Protocol):
    """loom.db.search's filter and exact refinement in one kernel each (None: its array-module path)."""

    CAPACITY: int     # candidates one query may keep in the one-pass selection

    def group_max(self, s: Array, groups: int, slices: int | None = None) -> Array:
        """[slices * groups, queries]: the maxima of each query's rows in disjoint parts of the
        interleaved groups g, g + groups, ... of s [rows, queries] (rows up to a multiple of groups)."""

    def threshold(self, x: Array, seg: Array | None, q: Array, largest: Array, l2: bool, k: int) -> Array:
        """Each query's filter threshold from the k-th best of its values (columns of x, or the
        segments seg of x), with the bound of the query q[i] and the largest row norm."""

    def collect(self, s: Array, th: Array) -> tuple[Array, Array]:
        """(rows [queries, CAPACITY], counts): each query's rows of s [rows, queries] at or above th."""

    def collect_segments(self, s: Array, srow: Array, seg: Array, th: Array) -> tuple[Array, Array]:
        """collect for scores in segments (query i's: s[seg[i]:seg[i + 1]], of rows srow)."""

    def top(self, matrix: Array, q: Array, ids: Array, rows: Array, count: Array, k: int,
            l2: bool) -> tuple[Any, Any, Any]:
        """(ids, scores, status) on the host: each query's k best collected rows by exact score."""

    def probe_group(self, dim: int) -> int:
        """Pairs per block of probe_scores at this dim (0: too wide)."""

    def probe_scores(self, part: tuple, q: Array, pairs: Array, plist: Array, dest: Array, nprobe: int,
                     out: Array, rows: Array) -> None:
        """IVF filter scores of one part of an index for the (query, list) pairs, into out and rows."""

    def above(self, s: Array, th: Array, start: int, limit: int) -> tuple[Array, Array, Array] | None:
        """(query numbers, start + row numbers, scores) of the entries of s [rows, queries] at or
        above their query's threshold th, in any order; None if there are more than `limit`."""

    def exact_scores(self, matrix: Array, q: Array, qi: Array, r: Array, l2: bool) -> tuple[Array, Array]:
        """(float32 scores certified to be the exact sum's rounding, positions not certified)."""


class FlashKernels(Protocol):
    """Fast mode's causal attention for prompts in one kernel (None: composed from products)."""

    def supports(self, head_dim: int) -> bool: ...

    def attend(self, q: Array, keys: Array, values: Array, pos: int, lo: int, window: int | None,
               scale: float, out16: bool = False) -> Array:
        """The context [B, T, H * D] of queries q [B, T, H, D] at positions pos.. over keys and
        values [B, KV, n, D] at positions lo.. (causal, within `window` when given)."""

    def attend_paged(self, q: Array, cache_k: Array, cache_v: Array, key_slots: Array, items: list,
                     window: int | None, scale: float, out16: bool = False) -> Array:
        """attend for many sequences' query rows over a paged cache (key slots per sequence)."""


class IntegerAttention(Protocol):
    """Determinism spec 5's attention (kernels/exact/attention.py's scheme, its bits) for a decoder's causal
    rows, compiled or as kernels; None where it declines (the caller runs the array code)."""

    def causal(self, q: Array, k: Array, v: Array, per_group: int, first: int, lo: int, window: int | None,
               scale: float, table: np.ndarray, consts: np.ndarray) -> Array | None:
        """float32 [G, per_group T, D]: group g's query rows (row i at position first + i % T) over its keys and
        values k, v [G, n, D] (key j at position lo + j), causal, within `window` positions; table and consts:
        kernels.exact.attention.SCHEME (the exp table; LOG2E_30, LN2_15, P_BITS, BITS)."""

    def causal_paged(self, q: Array, cache_k: Array, cache_v: Array, key_slots: Array, items: tuple, per_group: int,
                     window: int | None, scale: float, table: np.ndarray, consts: np.ndarray, out: Array) -> bool:
        """causal()'s bits in a decoder's layouts, read and written in place, for the rows of several sequences:
        query rows q [N, H, D] (H = KV per_group), the paged caches [slots, KV, D], the contexts into out [N, H D];
        items[s] = (first row, T, first position, lo, n): sequence s's T rows from that row at positions first ..,
        its n keys and values at key_slots[s, :n] (int64 [S, n_max], positions lo ..); False where declined (the
        caller gathers each sequence's and calls causal)."""


class ExactFlashKernels(Protocol):
    """Deterministic mode's attention for prompt rows over a paged cache in one pass, with the bits of
    the composition (the exact GEMMs and the exact softmax; None: composed)."""

    def unsupported(self, head_dim: int, keys: int) -> str | None: ...

    def attend(self, q: Array, k_cache: Array, v_cache: Array, key_slots: Array, pos: int, lo: int,
               window: int | None, scale: float, error_factor: Callable[[int], float],
               out: Array | None = None) -> Array:
        """The context [T, H * D] of one sequence's queries q [T, H, D] at positions pos.. over its
        cached keys and values at key_slots (positions lo..; causal, within `window` when given);
        error_factor: the rounded scheme's (loom.kernels.exact.rounded)."""


class PrefillKernels(Protocol):
    """Fast mode's fused prompt-layer steps between the bfloat16 GEMMs (llm/decoder.py)."""

    def rms_bf16(self, x: Array, weight: Array, eps: float, overlap: bool = False) -> Array: ...

    def rope_cache(self, qkv: Array, bias: Array | None, qk_norm: Array | None, eps: float, cos: Array,
                   sin: Array, batch: int, heads: int, kv_heads: int, cache_k: Array, cache_v: Array,
                   pos: int) -> Array: ...

    def rope_rows(self, qkv: Array, bias: Array | None, qk_norm: Array | None, eps: float, cos: Array, sin: Array,
                  heads: int, kv_heads: int, cache_k: Array, cache_v: Array, positions: Array,
                  slots: Array) -> Array: ...

    def swiglu_bf16(self, gu: Array, bias: Array | None, out: Array | None = None,
                    overlap: bool = False) -> Array: ...

    def argmax_rows(self, x: Array, out: Array | None = None) -> Array: ...


class Collectives(Protocol):
    """NCCL for loom.distributed (the CUDA backend's; None on the CPU)."""

    def device_count(self) -> int: ...
    def select_device(self, index: int) -> None: ...
    def unique_id(self) -> bytes: ...
    def communicator(self, rank: int, size: int, uid: bytes) -> Any: ...   # a batch_split.Collective


class Backend(Protocol):
    name: str
    xp: Any             # the array module: numpy, or cupy on the GPU
    host: bool          # arrays live in host memory: reading one back is free, passes are cache-bound loops
    graphs: bool        # whether record() can capture work into a replayable graph (CUDA)

    exact: ExactKernels
    quant: QuantKernels
    elementwise: ElementwiseKernels | None
    fused: FastFusedKernels | None
    fused_exact: ExactFusedKernels | None
    windows: WindowKernels | None
    decode: DecodeKernels | None
    compute: ComputeKernels | None
    order: OrderKernels | None
    sorts: SortKernels | None
    search: SearchKernels | None
    flash: FlashKernels | None
    flash_exact: ExactFlashKernels | None
    attend_integer: IntegerAttention | None
    prefill: PrefillKernels | None
    collectives: Collectives | None

    def asarray(self, x: ArrayLike | Array, dtype: DTypeLike = None) -> Array: ...
    def to_numpy(self, x: Array) -> np.ndarray: ...
    def copy_into(self, dst: Array, src: Array) -> None: ...
    def matmul(self, a: Array, b: Array, out: Array | None = None) -> Array: ...
    # mixed precision (loom.mixed_precision): float32 x rounded to bfloat16's values, every backend's
    # bits; fast mode's product of float32 a and b so rounded, summed in float32 (the BLAS's order)
    def round_bf16(self, x: Array) -> Array: ...
    def matmul_bf16(self, a: Array, b: Array, out: Array | None = None) -> Array: ...
    def sum(self, x: Array, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Array: ...
    def cumsum(self, x: Array, axis: int) -> Array: ...    # fast mode's prefix sums, in x's dtype's additions
    def synchronize(self) -> None: ...
    def may_be_true(self, flag: Array) -> bool: ...   # a data-dependent branch: True when it cannot look

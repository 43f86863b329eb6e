"""A batch of decode steps over a paged KV cache as one recorded CUDA graph (the engine's steps where
every running sequence decodes one token).

Launched one operation at a time, a decode step of a small model is ~300 kernels whose Python launch
cost dwarfs their run time. Here a step is five fused kernels per layer, recorded once per batch
bucket and replayed for every step: the products with an RMSNorm prologue and bias / residual /
SwiGLU epilogues (backend/cuda/quant.py), RoPE, the cache write and attention in one kernel that
reads each sequence's own position and block table (backend/cuda/decode.py: paged_attention). The
kernels are launched to overlap their predecessor (backend/cuda/launch.py): each fetches its
weights while the kernel before it finishes (deterministic mode's x integers before cuBLAS's int8
GEMM excepted: quant_fixed_planes.product). The products run over the batch in groups of the block
kernels' MAX_ROWS rows (each group reads the weights once). In fast mode a batch of more
than TENSOR_CORE_ROWS rows (QUANT_TENSOR_CORE_ROWS for quantized weights) takes cuBLAS GEMMs on the tensor cores:
RMSNorm and the rounding to bfloat16 are one kernel, the attention kernel and SwiGLU write bfloat16,
and the residual is added by the GEMM (backend/cuda/prefill.py). Without them (float32 weights, or
tensor_cores off) batches past MAX_ROWS rows take GEMMs with the decoder's float32 copies
(Decoder.dense), RMSNorm, bias, SwiGLU and residual in kernels of their own. A graph is recorded
per batch size bucket (BUCKETS) and mode; a step of fewer sequences pads its rows to the bucket with
token 0 at position 0, whose keys and values go to the cache's scratch block and whose logits are
dropped.

Token ids, positions and the block tables (column-major, only the columns in use) go up in one
asynchronous copy from pinned memory before each replay. step_greedy also chooses each row's argmax
token on the device, into the graph's input ids: the next step_greedy can decode it before the host
has seen it (BatchEngine's steps launched ahead).

In fast mode the sums run in the kernels' own order, so logits agree with paged_forward's to float32
rounding, not bit for bit. Deterministic mode records the products of the dispatch table's "weight" rule
(exact.fixed's integers, determinism spec 4) on backend/cuda/quant_fixed.py's kernels, each weight's rows'
exponents (and, for batches of PLANES_ROWS rows and more, its int8 planes) made once when the graph is
built (the one-row kernel up to its MAX_ROWS rows, the int8 tensor-core kernel past, cuBLAS's int8 GEMM of
the planes from PLANES_ROWS), and int_decode.py's attention (spec 5's integer scheme; decode_exact.py's, spec
4's, where decoder.INTEGER_ATTENTION is off), which gives the array code's bits: a sequence's logits are what
paged_forward gives it, and the CPU's, bit for bit. unsupported() refuses a deterministic graph whose
weights the integer kernels cannot take. The attention kernel takes any position below 2^22 (spec 4's: p v
over more than ROUNDED_MAX_K keys in the slice scheme, in chunks of 2^CHUNK_BITS keys past that).
"""
from __future__ import annotations

from functools import partial
from itertools import chain
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import fallback
from ..backend import Array
from ..kernels import fused
from ..kernels.exact import attention as integer_attention
from ..kernels.exact import dispatch as exact_dispatch
from ..kernels.exact import rounded as exact_rounded
from ..kernels.quant.block import BlockQuantized, linear
from .paged_cache import PagedKVCache

if TYPE_CHECKING:
    from .decoder import Decoder
    from .sample_rows import DeviceRows

BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256)
TENSOR_CORE_ROWS = 4        # fast mode, 16-bit weights: batches past this many rows take the GEMM steps
# ... quantized weights: quant.gemv reads fewer bytes than the bfloat16 copy, but its time grows with every
# row of x (Llama-3.2-1B Q4_1 / Q4_K on an H200: 4 rows 1.7-1.8x one row's step, 8 rows 3-4.9x), while the
# GEMM step's barely does (8 rows 1,240 us against gemv's 3,747-6,078)
QUANT_TENSOR_CORE_ROWS = 2


def bucket(n: int) -> int | None:
    """The smallest bucket holding n sequences (None past the largest)."""
    return next((b for b in BUCKETS if b >= n), None)


def why_not(dec: Decoder, exact: bool) -> str | None:
    """Why the engine's decode steps cannot be graphs (None where they can)."""
    be = dec.backend
    quant, _ = _kernels(be, exact)
    if quant is None:
        return f"device {be.name!r} has no paged decode kernels"
    return unsupported(dec, min(quant.MAX_ROWS, 16), exact)


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
        if _integer_attention():                # spec 5's decode attention kernel
            from ..backend.cuda import int_decode
            return be.decode.products_exact, int_decode
        return be.decode.products_exact, be.decode.attention_exact
    return be.decode.products, be.decode.attention


def _integer_attention() -> bool:
    """Whether deterministic decoders' attention is spec 5's integer scheme (decoder.INTEGER_ATTENTION)."""
    from . import decoder
    return decoder.INTEGER_ATTENTION


def unsupported(dec: Decoder, batch: int, exact: bool = False) -> str | None:
    """Why a Decoder's step cannot run as a graph, or None where it can: that needs the CUDA backend,
    block-kernel weight types, widths multiples of 32, at most MAX_ROWS sequences, and head_dim 64,
    128 or 256 (fast mode) or, in deterministic mode (`exact`), the attention kernel's (spec 5's int_decode: a
    multiple of 4 up to 128; spec 4's decode_exact: 32, 64, 128 or 256) with products over K <= 2^14."""
    be = dec.backend
    quant, kernels = _kernels(be, exact)
    if quant is None or kernels is None or not be.graphs:
        return f"device {be.name!r} has no decode kernels or graphs"
    if batch > quant.MAX_ROWS:
        return f"a batch of {batch} sequences is more than the kernels' {quant.MAX_ROWS}"
    c = dec.config
    why = kernels.unsupported(c.head_dim, c.max_positions) if exact else \
        None if kernels.supports(c.head_dim) else f"head_dim {c.head_dim} is not 64, 128 or 256"
    if why is None and (c.hidden % 32 or c.intermediate % 32):
        why = f"hidden size {c.hidden} or intermediate size {c.intermediate} is not a multiple of 32"
    if exact:
        why = why or _not_rounded(c.head_dim)           # attention's products q k
        if _integer_attention() and c.max_positions >= integer_attention.MAX_KEYS:
            why = why or (f"caches of {c.max_positions} positions: integer attention takes windows below "
                          f"{integer_attention.MAX_KEYS} keys")
        # the weight products: the dispatch table's "weight" rule, on the backend's integer kernels
        fixed_kernels = getattr(be.decode, "products_fixed", None)
        for w in _product_weights(dec):
            s = _stored(w)
            if fixed_kernels is None:
                why = why or f"device {be.name!r} has no integer product kernels"
            elif s is not None:
                why = why or fixed_kernels.unsupported(s[1], w.shape[1])
    if why is not None:
        return why
    mats = [dec.embed, dec.lm_head] + [w for L in dec.layers for w in (L.qkv, L.o, L.gate_up, L.down)]
    for w in mats:
        s = _stored(w)
        if s is None or s[1] not in quant.TYPES:
            kind = s[1] if s is not None else "mixed types" if isinstance(w, tuple) else f"a {w.dtype} array"
            return f"no block kernel for weights stored as {kind} (the kernels take {', '.join(quant.TYPES)})"
    return None


def _not_rounded(k: int) -> str | None:
    """Why the deterministic attention kernel, which computes the rounded scheme, cannot take sums over
    k terms."""
    scheme = exact_dispatch.matmul_scheme(np.float32, k)
    return None if scheme == exact_dispatch.ROUNDED else f"products over K = {k} take the {scheme} scheme"


class PagedDecodeGraph:
    def __init__(self, dec: Decoder, cache: PagedKVCache, batch: int, exact: bool, overlap: bool = True,
                 shared: dict | None = None):
        self.dec, self.cache, self.batch, self.exact, self.overlap = dec, cache, batch, exact, overlap
        c, xp = dec.config, dec.xp
        self.max_blocks = -(-c.max_positions // cache.block_size)
        dec.ensure_rope(c.max_positions)          # the graph keeps the tables' addresses: none may move
        B = batch
        # ids, positions, then the block tables column-major (entry j of every row together), so that a
        # step uploads only the columns its sequences use
        self.inputs = xp.zeros(2 * B + B * self.max_blocks, dtype=np.int64)
        self.ids, self.pos = self.inputs[:B], self.inputs[B:2 * B]
        self.tables = self.inputs[2 * B:].reshape(self.max_blocks, B).T
        self.h = xp.empty((B, c.hidden), dtype=np.float32)
        self.qkv = xp.empty((B, (c.heads + 2 * c.kv_heads) * c.head_dim), dtype=np.float32)
        # fast mode past TENSOR_CORE_ROWS rows with every weight in bfloat16: the activations the
        # products read (attention's output, SwiGLU's) are bfloat16 bits
        self.bf16 = not exact and batch > _tensor_core_rows(dec) and _bf16_ready(dec)
        self.ctx = xp.empty((B, c.heads * c.head_dim), dtype=np.uint16 if self.bf16 else np.float32)
        self.act = xp.empty((B, c.intermediate), dtype=np.uint16 if self.bf16 else np.float32)
        self.logits = xp.empty((B, c.vocab_size), dtype=np.float32)
        self.normed = xp.empty((B, c.hidden), dtype=np.float32)
        # deterministic mode's products: the dispatch table's "weight" rule (exact.fixed's integers) on the
        # backend's integer kernels, each weight's rows' exponents made once here (the graph reads them at
        # every replay, as it reads the weights)
        self.fixed_tables = _fixed_tables(dec) if exact else None
        self.fixed_planes = None
        if exact and self._planes():
            try:
                self.fixed_planes = _fixed_planes(dec, self.fixed_tables)
            except MemoryError:                 # (CuPy's OutOfMemoryError): gemv or rows_product, the same bits
                fallback.notice_once(f"deterministic decode steps of {batch} rows decode the stored weights "
                                     "in their products: no device memory for the weights' int8 planes")
        # where the batch's heads are too few blocks to fill the device, steps with a position from
        # long_from on replay a second recording whose attention cuts long windows over several blocks,
        # through this graph's own workspace (recorded at the first such step; shorter windows keep the
        # one-block kernel, 0.2 us a layer faster there); deterministic mode's parts keep its bits, for
        # windows up to split_max_keys (long_until: longer ones take the first recording's form)
        attention = _kernels(dec.backend, exact)[1]
        # (a window's keys: at most the context, and the cache's positions)
        self.max_keys = min(self.max_blocks, cache.blocks) * cache.block_size
        self.split = attention.split_work(B, c.heads, c.head_dim, self.max_keys) if exact else \
            attention.split_work(B, c.heads, c.head_dim)
        self.long_from = 2 * attention.SPLIT_KEYS if self.split is not None else None
        self.long_until = attention.split_max_keys(self.split.splits) if exact and self.split is not None else None
        # deterministic attention keeps its probabilities in device memory where they do not fit shared memory
        # (decode_exact.probability_work: a block per key/value head's, or windows past HELD_KEYS): in `shared`'s
        # workspace where it is large enough (the recordings of one StepRunner replay one after another on its
        # stream), else a new one that becomes shared's. The first recording takes windows up to near_keys
        # (2^14); a step with a longer one that the split recording does not take replays far_graph, recorded at
        # the first such step with a workspace for max_keys, so that only an engine whose sequences grow that
        # long spends that memory (4 bytes a sequence, query head and position)
        self.shared = shared
        self.near_keys = min(self.max_keys, attention.CHUNK_KEYS) if exact else None
        self.p_work = self._probabilities(self.near_keys, "p_work") if exact else None
        self._far = False
        self.far_p_work = self.far_graph = None
        self._splitting = False                    # (which attention _operations() launches)
        self.long_graph = None
        # the host side of each step's input copy and token copy: pinned, two of each used in turn, so
        # that the copies run asynchronously while the host fills the next step's
        self._staged = [_pinned(xp, self.inputs.size) for _ in range(2)]
        self._tokens = [_pinned(xp, B) for _ in range(2)]
        self._turn = 0
        self._staged[0][:2 * B] = 0
        self._staged[0][2 * B:] = cache.scratch             # every row padding: token 0 at position 0
        self.inputs.set(self._staged[0])
        self._body()                               # compiles every kernel before the capture
        if self.split is not None:
            self._splitting = True
            self._body()                           # (position 0 everywhere: one part, no merge)
            self._splitting = False
        self.graph, _ = dec.backend.record(self._body)

    def _probabilities(self, keys: int, name: str) -> Array | None:
        """Deterministic attention's probabilities' workspace for windows of up to `keys` keys (None where its
        launch holds them in shared memory), `shared`'s `name` where that is large enough."""
        c = self.dec.config
        attention = _kernels(self.dec.backend, True)[1]
        have = None if self.shared is None else self.shared.get(name)
        work = attention.probability_work(self.batch, c.heads, c.kv_heads, c.head_dim, keys, have=have)
        if self.shared is not None and work is not None and (have is None or work.size > have.size):
            self.shared[name] = work
        return work

    def _graph_for(self, positions: list[int]):
        """The recording a step at these positions replays."""
        keys = max(positions, default=0) + 1    # (the most keys a window holds)
        if self.long_from is not None and keys > self.long_from and (self.long_until is None
                                                                     or keys <= self.long_until):
            if self.long_graph is None:
                self.long_graph = self._record(splitting=True)
            return self.long_graph
        if self.exact and keys > self.near_keys:
            if self.far_graph is None:
                self.far_p_work = self._probabilities(self.max_keys, "far_p_work")
                self.far_graph = self._record(far=True)
            return self.far_graph
        return self.graph

    def _record(self, splitting: bool = False, far: bool = False):
        """A further recording of the step: with the split attention, or (far) for windows past near_keys."""
        self._splitting, self._far = splitting, far
        try:
            graph, _ = self.dec.backend.record(self._body)
        finally:
            self._splitting = self._far = False
        return graph

    def _attention_keywords(self) -> dict:
        """paged_attention's keywords in the recording being made: the split workspace in the split one, and in
        deterministic mode the windows it takes (max_keys) and its probabilities' workspace."""
        keywords = {"split": self.split if self._splitting else None}
        if self.exact:
            keywords.update(max_keys=self.max_keys if self._splitting or self._far else self.near_keys,
                            p_work=self.far_p_work if self._far else self.p_work)
            if _integer_attention():                    # (spec 5's kernel takes the scheme's constants)
                keywords["scheme"] = integer_attention.SCHEME
        return keywords

    def step(self, ids: list[int], positions: list[int], tables: list[list[int]]) -> Array:
        """Logits [len(ids), vocab] for one token per sequence at its position: a view of the graph's
        output, valid until the next step."""
        graph = self._graph_for(positions)
        self._upload(ids, positions, tables)
        graph.launch()
        return self.logits[:len(ids)]

    def step_greedy(self, ids: list[int] | None, positions: list[int], tables: list[list[int]]) -> Tokens:
        """Launch a step whose rows all take the argmax token, without waiting for it: each row's token
        is chosen on the device into the graph's input ids, so a following step_greedy(None, ...)
        decodes it with no host round trip, and is copied to the host (Tokens.get() waits for it).
        ids None: the previous step_greedy's tokens, row for row."""
        n = len(positions)
        graph = self._graph_for(positions)
        turn = self._upload(ids, positions, tables)
        graph.launch()
        self.dec.backend.prefill.argmax_rows(self.logits[:n], out=self.ids[:n])
        return self._tokens_out(n, turn)

    def step_sample(self, ids: list[int] | None, positions: list[int], tables: list[list[int]],
                    rows: DeviceRows) -> Tokens:
        """step_greedy's launch for rows that sample: each row's token chosen on the device by
        sample_rows (rows: the run's settings and seen tokens, with this step's uniform numbers set),
        written into the graph's input ids and the rows' seen tokens, and copied to the host."""
        n = len(positions)
        graph = self._graph_for(positions)
        turn = self._upload(ids, positions, tables)
        graph.launch()
        self.ids[:n] = rows.choose(self.logits[:n])
        return self._tokens_out(n, turn)

    def _tokens_out(self, n: int, turn: int) -> Tokens:
        """The step's first n input ids (its chosen tokens) copied to the turn's pinned buffer."""
        host = self._tokens[turn][:n]
        xp = self.dec.xp
        self.ids[:n].get(stream=xp.cuda.get_current_stream(), out=host, blocking=False)
        done = xp.cuda.Event(block=False, disable_timing=True)
        done.record()
        return Tokens(done, host)

    def _upload(self, ids: list[int] | None, positions: list[int], tables: list[list[int]]) -> int:
        """Copy a step's ids (unless None), positions and block tables (rows past len(positions): padding,
        token 0 at position 0 on the scratch block) into the graph's inputs, asynchronously, from the
        pinned buffer whose turn it is (returned)."""
        turn, self._turn = self._turn, self._turn ^ 1
        host = self._staged[turn]
        used = fill_inputs(host, self.batch, ids, positions, tables, self.cache.scratch, self.max_blocks)
        start = 0 if ids is not None else self.batch
        self.inputs[start:used].set(host[start:used], stream=self.dec.xp.cuda.get_current_stream())
        return turn

    def _body(self) -> None:
        for launch in self._operations():
            launch()

    def _groups(self):
        """Row slices of at most MAX_ROWS rows covering the batch."""
        quant, _ = _kernels(self.dec.backend, self.exact)
        step = quant.MAX_ROWS
        return [slice(r, min(r + step, self.batch)) for r in range(0, self.batch, step)]

    def _operations(self) -> list:
        dec, c, cache = self.dec, self.dec.config, self.cache
        quant, kernels = _kernels(dec.backend, self.exact)
        h = self.h
        ops = [partial(quant.embed, *_stored(dec.embed), self.ids, h)]
        for i, L in enumerate(dec.layers):
            ops += self._product(L.qkv, h, self.qkv, norm=L.ln1, bias=L.qkv_bias)
            extra = (exact_rounded.error_factor(c.head_dim),) if self.exact else ()
            ops.append(partial(kernels.paged_attention, self.qkv, cache.k[i], cache.v[i], self.ctx, dec._cos,
                               dec._sin, L.qk_norm, self.pos, self.tables, cache.block_size, c.heads, L.window,
                               dec.scale, c.eps, *extra, overlap=self.overlap, **self._attention_keywords()))
            ops += self._product(L.o, self.ctx, h, bias=L.o_bias, residual=h)
            ops += self._product(L.gate_up, h, self.act, norm=L.ln2, bias=L.gate_up_bias, swiglu=True)
            ops += self._product(L.down, self.act, h, bias=L.down_bias, residual=h)
        return ops + self._product(dec.lm_head, h, self.logits, norm=dec.norm)

    def _product(self, w, x, out, norm=None, residual=None, **kw) -> list:
        """out = (residual +) pro(x) @ w^T ...: deterministic mode's integer kernels (_fixed_product); fast
        mode's one kernel per group of up to MAX_ROWS rows, or past them one GEMM with the weight's dense
        copy."""
        dec, c = self.dec, self.dec.config
        quant, _ = _kernels(dec.backend, self.exact)
        if self.exact:
            return self._fixed_product(w, x, out, norm, residual, **kw)
        if self.bf16:
            return [partial(_bf16_product, dec.backend, dec.dense(w).data.view(np.uint16), x, out, norm, c.eps,
                            kw.get("bias"), residual, kw.get("swiglu", False), self.overlap)]
        if self.batch > quant.MAX_ROWS:
            return [partial(_dense_product, dec.dense(w), x, out, norm, c.eps, kw.get("bias"), residual,
                            kw.get("swiglu", False))]
        return [partial(quant.gemv, *_stored(w), x[rows], out[rows], norm=norm, eps=c.eps,
                        residual=None if residual is None else residual[rows], overlap=self.overlap, **kw)
                for rows in self._groups()]

    def _fixed_product(self, w, x, out, norm, residual, bias=None, swiglu: bool = False) -> list:
        """Deterministic mode's out = (residual +) pro(x) @ w^T ... in the dispatch table's "weight" rule
        (exact.fixed's integers): up to MAX_ROWS rows quant_fixed_planes' one-row kernel on the weight's int8
        planes, or quant_fixed's decoding the stored weight where the device had no memory for them (the RMSNorm
        made by each of their blocks where x stages, else by x's integers' launch), its int8 tensor-core kernel below
        PLANES_ROWS rows (after x's integers' launch, which applies the norm), from there one int8 GEMM of
        the weight's planes (quant_fixed_planes: each weight read once for the whole batch), or where the
        device had no memory for the planes the int8 kernel again, a launch for each ROWS_MAX rows."""
        decode = self.dec.backend.decode
        fixed_kernels = decode.products_fixed
        kw = dict(bias=bias, swiglu=swiglu, overlap=self.overlap)

        def normed(rows: slice) -> dict:
            return {} if norm is None else dict(norm=norm, normed=self.normed[rows], eps=self.dec.config.eps)

        if self.batch <= fixed_kernels.MAX_ROWS:
            data, qtype = _stored(w)
            kernel, tables = ((decode.products_planes.gemv, self.fixed_planes)
                              if self.fixed_planes is not None and fixed_kernels.gemv_reads_planes(qtype, x.shape[1])
                              else (fixed_kernels.gemv, self.fixed_tables))
            return [partial(kernel, data, qtype, x, out, tables[id(w)], residual=residual, **kw, **normed(slice(None)))]
        if self.fixed_planes is not None:
            return [partial(decode.products_planes.product, *_stored(w), x, out, self.fixed_planes[id(w)],
                            self.dec.backend.blas, residual=residual, **kw, **normed(slice(None)))]
        ops = []
        for start in range(0, self.batch, fixed_kernels.ROWS_MAX):     # (past ROWS_MAX: planes short of memory)
            rows = slice(start, min(self.batch, start + fixed_kernels.ROWS_MAX))
            ops.append(partial(fixed_kernels.rows_product, *_stored(w), x[rows], out[rows], self.fixed_tables[id(w)],
                               residual=None if residual is None else residual[rows], **kw, **normed(rows)))
        return ops

    def _planes(self) -> bool:
        """Whether the deterministic products read the weights' int8 planes (quant_fixed_planes: cuBLAS's int8 GEMM
        from PLANES_ROWS rows, its gemv up to MAX_ROWS rows for the weights gemv_reads_planes names), as the prompt
        products decide it."""
        fixed_kernels = self.dec.backend.decode.products_fixed
        if fixed_kernels.takes_planes(self.batch):
            return True
        return self.batch <= fixed_kernels.MAX_ROWS and any(
            fixed_kernels.gemv_reads_planes(_stored(w)[1], w.shape[1]) for w in _product_weights(self.dec))


def _fixed_planes(dec: Decoder, fixed_tables: dict) -> dict:
    """id(weight) -> its quant_fixed_planes.w_planes (2 bytes a value), _per_weight's "fixed_planes"."""
    planes = dec.backend.decode.products_planes
    return _per_weight(dec, "fixed_planes", lambda data, qtype, w: planes.w_planes(data, qtype, w.shape[0], w.shape[1],
                                                                                  fixed_tables[id(w)]))


def _fixed_tables(dec: Decoder) -> dict:
    """id(weight) -> its quant_fixed.w_exponents tables, _per_weight's "fixed_exponents" (unsupported() has
    said the backend's integer kernels take every product weight)."""
    fixed_kernels = dec.backend.decode.products_fixed
    return _per_weight(dec, "fixed_exponents", lambda data, qtype, w: fixed_kernels.w_exponents(data, qtype, *w.shape))


def _per_weight(dec: Decoder, name: str, make) -> dict:
    """id(weight) -> table `name` of each product weight, make(data, qtype, weight) the first time: kept in a
    stored weight's BlockQuantized.tables (a float32 weight's: its stored F32 view's, Decoder._float_weight),
    which the prompt products and every graph read too; made here, never inside a recording. Where the
    device runs out of memory, the tables this call made are dropped again and the MemoryError raised."""
    weight_tables = dec.backend.decode.products_fixed.weight_tables
    out, made = {}, []
    try:
        for w in _product_weights(dec):
            if id(w) not in out:
                tables = w.tables if isinstance(w, BlockQuantized) else dec._float_weight(w).tables
                if name not in tables:
                    made.append(tables)
                out[id(w)] = weight_tables(tables, name, lambda w=w: make(*_stored(w), w))
    except MemoryError:
        for tables in made:
            tables.pop(name, None)
        raise
    return out


def fill_inputs(host: np.ndarray, batch: int, ids: list[int] | None, positions: list[int], tables: list[list[int]],
                scratch: int, max_blocks: int) -> int:
    """Write a step's inputs into host (int64 [2 batch + batch max_blocks]) as the graph reads them: ids
    (left as they are where None: the device wrote them), positions, then block table entry j of row b
    at 2 batch + j batch + b, for the columns up to the longest table. Rows past len(positions) and
    entries past a table's end are padding (token 0, position 0, the scratch block). Returns how many
    leading values the step uses."""
    n, B = len(positions), batch
    lengths = np.fromiter(map(len, tables), dtype=np.int64, count=n)
    width = int(lengths.max(initial=1))
    if width > max_blocks:
        raise ValueError(f"a block table of {width} entries; the graph holds {max_blocks}")
    if n > B or (ids is not None and len(ids) != n):
        raise ValueError(f"{n} positions and {None if ids is None else len(ids)} ids for a graph of {B} rows")
    used = 2 * B + width * B
    if ids is not None:
        host[:B] = 0
        host[:n] = ids
    host[B:2 * B] = 0
    host[B:B + n] = positions
    columns = host[2 * B:used].reshape(width, B)
    columns.fill(scratch)
    entries = np.fromiter(chain.from_iterable(tables), dtype=np.int64, count=int(lengths.sum()))
    rows = np.repeat(np.arange(n), lengths)
    columns[np.arange(entries.size) - np.repeat(np.cumsum(lengths) - lengths, lengths), rows] = entries
    return used


class Tokens:
    """The tokens of a step_greedy launch: get() waits for the step and returns them (int64 [rows])."""

    def __init__(self, done: Any, host: np.ndarray):      # done: a cupy.cuda.Event
        self._done, self._host = done, host

    def get(self) -> np.ndarray:
        self._done.synchronize()
        return self._host


def _pinned(xp, size: int) -> np.ndarray:
    """int64 [size] in page-locked host memory (asynchronous copies need it)."""
    return np.frombuffer(xp.cuda.alloc_pinned_memory(size * 8), dtype=np.int64, count=size)


def _product_weights(dec: Decoder) -> list:
    return [dec.lm_head] + [w for L in dec.layers for w in (L.qkv, L.o, L.gate_up, L.down)]


def _tensor_core_rows(dec: Decoder) -> int:
    """Rows past which fast-mode steps take the tensor cores: TENSOR_CORE_ROWS for 16-bit weights,
    QUANT_TENSOR_CORE_ROWS for quantized ones."""
    sixteen = all(isinstance(w, BlockQuantized) and w.qtype in ("BF16", "F16") for w in _product_weights(dec))
    return TENSOR_CORE_ROWS if sixteen else QUANT_TENSOR_CORE_ROWS


def _bf16_ready(dec: Decoder) -> bool:
    """Whether every product weight has a bfloat16 dense copy (Decoder.dense in fast mode on the tensor
    cores: stored weights, not float32 ones) and the backend has the fused prompt kernels."""
    if dec.backend.prefill is None or not dec.tensor_cores:
        return False
    return all(isinstance(w, BlockQuantized) for w in _product_weights(dec))


def _bf16_product(be, w16: Array, x: Array, out: Array, norm: Array | None, eps: float, bias: Array | None,
                  residual: Array | None, swiglu: bool, overlap: bool) -> None:
    """_dense_product on the tensor cores in few launches: x (float32, or bfloat16 bits) rounded to
    bfloat16 with its RMSNorm in one kernel, the GEMM adding into the residual (out is h), SwiGLU
    written as bfloat16 bits into out (uint16)."""
    if x.dtype == np.uint16:
        x16 = x
    else:
        x16 = be.prefill.rms_bf16(x, norm, eps, overlap=overlap) if norm is not None else be.quant.to_bf16(x)
    rows, n = x16.shape[0], w16.shape[0]
    if swiglu:
        gu = be.xp.empty((rows, n), dtype=np.float32)
        be.blas.gemm_bf16_t(x16, w16, gu)
        be.prefill.swiglu_bf16(gu, bias, out=out, overlap=overlap)
        return
    if residual is out and bias is None:
        be.blas.gemm_bf16_t(x16, w16, out, accumulate=True)
        return
    y = be.xp.empty((rows, n), dtype=np.float32) if residual is not None else out
    be.blas.gemm_bf16_t(x16, w16, y)
    if bias is not None:
        y += bias
    if residual is not None:
        out[...] = residual + y


def _dense_product(w: Array | BlockQuantized, x: Array, out: Array, norm: Array | None, eps: float,
                   bias: Array | None, residual: Array | None, swiglu: bool) -> None:
    """gemv's operation through a GEMM with the decoder's copy of a weight [R, cols] (Decoder.dense: float32,
    or bfloat16 on the tensor cores): out = residual + pro(x) @ w^T + bias, or silu(gate) * up of it with
    swiglu (fast mode)."""
    xs = x if norm is None else fused.rms_norm(x, norm, eps)[0]
    y = linear(xs, w)
    if bias is not None:
        y += bias
    if swiglu:
        half = y.shape[1] // 2
        y = fused.activation("silu", y[:, :half]) * y[:, half:]
    if residual is not None:
        y += residual
    out[...] = y

"""One row of x dotted with one row of block-quantized W, written as LLVM vector IR (numba intrinsics).
Imported by loom/backend/cpu/gemv.py (fast mode's one-row kernels: the float32 dots) and rounded_gemv.py
(deterministic mode's: the float64 sums at the end of this file) once numba is known to load.

Why IR: a 32-value block is one small loop in Python, and LLVM's loop vectoriser, given a trip count of
16, runs it as two 8-wide iterations of its remainder loop, then reduces the block's sum to a scalar
before the scale multiplies it: on the 2-core Zen 4 VM that came to 7-9 Gvalues/s a core, compute
bound. Here a block is one <16 x float> of low nibbles and one of high nibbles (or two of int8 codes),
scaled by d in-register and added into a vector accumulator that is reduced once per row: ~30 Gvalues/s
on the same 2 cores, which brings decode close to the memory bandwidth bound. The IR is generic LLVM
(no x86 intrinsics): LLVM lowers the 16-lane vectors to AVX-512, AVX2 or NEON registers as the CPU has.

Arithmetic: float32 throughout, the codes converted exactly (small integers), the blocks' partial sums
reassociated (the same fast-math flags as gemv.py's loops: no nnan/ninf, so inf and NaN propagate). The
m (offset) term adds m_b * sum(x over block b), from the block sums the caller computed once per product.

numba's on-disk cache keys a function by its own file: a change here reaches gemv.py's, rounded_gemv.py's and
fixed_gemv.py's cached kernels only when those files change too (an installed upgrade replaces all four).
"""
from __future__ import annotations

from collections.abc import Callable

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.typing.templates import Signature
from numba.extending import intrinsic

from . import jit

LANES = 16
_F32, _I8, _I16, _I32, _I64 = ir.FloatType(), ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)
_V = ir.VectorType(_F32, LANES)
_F64 = ir.DoubleType()
_VD = ir.VectorType(_F64, LANES)
_FAST = tuple(sorted(jit.FASTMATH))                 # the compiled loops' fast-math flags


class _Builder:
    """The few vector operations the dots need, on one llvmlite builder."""

    def __init__(self, builder: ir.IRBuilder) -> None:
        self.b = builder
        module = builder.module
        self._floor = cgutils.get_or_insert_function(module, ir.FunctionType(_V, [_V]), "llvm.floor.v16f32")
        self._fma = cgutils.get_or_insert_function(module, ir.FunctionType(_V, [_V, _V, _V]), "llvm.fma.v16f32")
        self._sum = cgutils.get_or_insert_function(module, ir.FunctionType(_F32, [_F32, _V]),
                                                   "llvm.vector.reduce.fadd.v16f32")

    def at(self, base: ir.Value, byte_offset: ir.Value, ty: ir.Type) -> ir.Value:
        """A `ty` pointer `byte_offset` bytes past `base`."""
        raw = self.b.gep(self.b.bitcast(base, _I8.as_pointer()), [byte_offset])
        return self.b.bitcast(raw, ty.as_pointer())

    def load(self, base: ir.Value, byte_offset: ir.Value, ty: ir.Type) -> ir.Value:
        return self.b.load(self.at(base, byte_offset, ty), align=1)

    def scale(self, table: ir.Value, base: ir.Value, byte_offset: ir.Value) -> ir.Value:
        """The float16 field at base + byte_offset as float32, through the 65,536-entry table."""
        bits = self.load(base, byte_offset, _I16)
        return self.b.load(self.b.gep(table, [self.b.zext(bits, _I64)]))

    def splat(self, scalar: ir.Value) -> ir.Value:
        lane0 = self.b.insert_element(ir.Constant(_V, ir.Undefined), scalar, ir.Constant(_I32, 0))
        return self.b.shuffle_vector(lane0, ir.Constant(_V, ir.Undefined),
                                     ir.Constant(ir.VectorType(_I32, LANES), [0] * LANES))

    def x_halves(self, xs: ir.Value, b: ir.Value) -> list:
        """x's two <16 x double> halves of 32-value block b (float64 x, 256 bytes a block)."""
        x_at = self.b.mul(b, _const(32 * 8))
        return [self.load(xs, x_at, _VD), self.load(xs, self.b.add(x_at, _const(128)), _VD)]

    def mul(self, a: ir.Value, c: ir.Value) -> ir.Value:
        return self.b.fmul(a, c, flags=_FAST)

    def fma(self, a: ir.Value, c: ir.Value, add: ir.Value) -> ir.Value:
        return self.b.call(self._fma, [a, c, add], fastmath=_FAST)

    def floor(self, v: ir.Value) -> ir.Value:
        return self.b.call(self._floor, [v])

    def total(self, start: ir.Value, v: ir.Value) -> ir.Value:
        return self.b.call(self._sum, [start, v], fastmath=_FAST)


def _const(value: int) -> ir.Constant:
    return ir.Constant(_I64, value)


def _row_start(context, builder, aryty, value, r):
    """Pointer to row r of a 2-D uint8 array (rows at any stride; the bytes of a row contiguous)."""
    array = context.make_array(aryty)(context, builder, value)
    stride = cgutils.unpack_tuple(builder, array.strides)[0]
    return builder.gep(array.data, [builder.mul(r, stride)]), array


def _nibble_dot(block_bytes: int, codes_at: int, offset_at: int | None) -> Callable:
    """The dot of a 4-bit block type's row r with x[0]: value j < 16 of block b is d (lo_j) + m and value
    16 + j is d (hi_j) + m, from the nibbles of the code byte j at codes_at; m is the float16 at
    `offset_at`, or -8 d where offset_at is None (Q4_0)."""

    @intrinsic
    def dot(typingctx, data, r, x, sums, table):
        def codegen(context, builder, signature, args):
            row, _ = _row_start(context, builder, signature.args[0], args[0], args[1])
            xs = context.make_array(signature.args[2])(context, builder, args[2]).data
            block_sums = context.make_array(signature.args[3])(context, builder, args[3])
            f16 = context.make_array(signature.args[4])(context, builder, args[4]).data
            v = _Builder(builder)
            acc = cgutils.alloca_once_value(builder, ir.Constant(_V, None))
            offsets = cgutils.alloca_once_value(builder, ir.Constant(_F32, 0.0))
            sixteenth, sixteen = v.splat(ir.Constant(_F32, 1 / 16)), v.splat(ir.Constant(_F32, -16.0))
            blocks = cgutils.unpack_tuple(builder, block_sums.shape)[0]
            with cgutils.for_range(builder, blocks) as loop:
                b = loop.index
                at = builder.mul(b, _const(block_bytes))
                d = v.scale(f16, row, at)
                m = (v.scale(f16, row, builder.add(at, _const(offset_at))) if offset_at is not None
                     else builder.fmul(d, ir.Constant(_F32, -8.0)))
                codes = v.load(row, builder.add(at, _const(codes_at)), ir.VectorType(_I8, LANES))
                q = builder.uitofp(codes, _V)
                hi = v.floor(v.mul(q, sixteenth))
                lo = v.fma(sixteen, hi, q)                      # exact: integers below 256
                x_at = builder.mul(b, _const(32 * 4))
                x_lo, x_hi = v.load(xs, x_at, _V), v.load(xs, builder.add(x_at, _const(64)), _V)
                part = v.fma(x_hi, hi, v.mul(x_lo, lo))
                builder.store(v.fma(v.splat(d), part, builder.load(acc)), acc)
                s = builder.load(builder.gep(block_sums.data, [b]))
                builder.store(builder.fadd(builder.load(offsets), builder.fmul(m, s, flags=_FAST), flags=_FAST),
                              offsets)
            return v.total(builder.load(offsets), builder.load(acc))
        return types.float32(data, r, x, sums, table), codegen
    return dot


@intrinsic
def q8_0_dot(typingctx: object, data: types.Array, r: types.Integer, x: types.Array,
             table: types.Array) -> tuple[Signature, Callable]:
    """The dot of Q8_0 row r with x[0]: value j of block b is d int8_j, d the float16 at the block's start
    and the 32 codes after it."""
    def codegen(context, builder, signature, args):
        row, array = _row_start(context, builder, signature.args[0], args[0], args[1])
        xs = context.make_array(signature.args[2])(context, builder, args[2]).data
        f16 = context.make_array(signature.args[3])(context, builder, args[3]).data
        v = _Builder(builder)
        acc = cgutils.alloca_once_value(builder, ir.Constant(_V, None))
        width = cgutils.unpack_tuple(builder, array.shape)[1]
        with cgutils.for_range(builder, builder.udiv(width, _const(34))) as loop:
            b = loop.index
            at = builder.mul(b, _const(34))
            halves = []
            for half in (0, 1):
                codes = v.load(row, builder.add(at, _const(2 + 16 * half)), ir.VectorType(_I8, LANES))
                x_half = v.load(xs, builder.add(builder.mul(b, _const(128)), _const(64 * half)), _V)
                halves.append((builder.sitofp(codes, _V), x_half))
            (q0, x0), (q1, x1) = halves
            part = v.fma(x1, q1, v.mul(x0, q0))
            builder.store(v.fma(v.splat(v.scale(f16, row, at)), part, builder.load(acc)), acc)
        return v.total(ir.Constant(_F32, 0.0), builder.load(acc))
    return types.float32(data, r, x, table), codegen


q4_0_dot = _nibble_dot(18, 2, None)
q4_1_dot = _nibble_dot(20, 4, 2)


# --- deterministic mode's one-row sums (loom/backend/cpu/rounded_gemv.py) ------------------------------
# Each value decoded in float32 as gguf_quants decodes it (d q is exact in float32, so one fma(d, q, m)
# rounds as the reference's product then sum; Q8_0's and Q4_0's d q need no rounding at all), widened
# to float64 (exact), multiplied with x in float64 (exact: two 24-bit significands) and added into two
# <16 x double> accumulators (a block's low and high halves: two dependency chains, not one) reduced
# once per row: the sum of the exact products in some order, which is all rounded_gemv's certification
# asks of it. Beside it, the block types' bound of sum |x_k w_k| (rounded_gemv._bound's sum, without its
# slack): each block's largest |w| its scales allow times the block's sum of |x| (xb).

class _Wide:
    """The float64 accumulations of the exact sums and of the bound."""

    def __init__(self, builder: ir.IRBuilder) -> None:
        self.b = builder
        module = builder.module
        self._fma = cgutils.get_or_insert_function(module, ir.FunctionType(_VD, [_VD, _VD, _VD]), "llvm.fma.v16f64")
        self._sum = cgutils.get_or_insert_function(module, ir.FunctionType(_F64, [_F64, _VD]),
                                                   "llvm.vector.reduce.fadd.v16f64")
        self._fabs = cgutils.get_or_insert_function(module, ir.FunctionType(_F64, [_F64]), "llvm.fabs.f64")
        self.accs = [cgutils.alloca_once_value(builder, ir.Constant(_VD, None)) for _ in range(2)]
        self.bound = cgutils.alloca_once_value(builder, ir.Constant(_F64, 0.0))

    def add(self, half: int, x: ir.Value, w: ir.Value) -> None:
        """accumulator `half` += x * w for x <16 x double> and w <16 x float> (widened: exact)."""
        acc = self.accs[half]
        self.b.store(self.b.call(self._fma, [x, self.b.fpext(w, _VD), self.b.load(acc)]), acc)

    def add_bound(self, top: float, d: ir.Value, m: ir.Value | None, xb: ir.Value) -> None:
        """bound += (top |d| (+ |m|)) xb for float32 scales d, m (exact in float64) and xb float64."""
        b = self.b
        wide = b.fmul(ir.Constant(_F64, top), b.call(self._fabs, [b.fpext(d, _F64)]))
        if m is not None:
            wide = b.fadd(wide, b.call(self._fabs, [b.fpext(m, _F64)]))
        b.store(b.fadd(b.load(self.bound), b.fmul(wide, xb, flags=_FAST), flags=_FAST), self.bound)

    def results(self) -> list:
        b = self.b
        both = b.fadd(b.load(self.accs[0]), b.load(self.accs[1]), flags=_FAST)
        return [b.call(self._sum, [ir.Constant(_F64, 0.0), both], fastmath=_FAST), b.load(self.bound)]


def _sums(block_bytes: int, block_values: Callable, top: float, rows: int) -> Callable:
    """An intrinsic (data, r, x64, xb, table) -> (s_r, bound_r, ...) for `rows` stored rows from r on
    (the caller keeps r + rows within the weight): each block's values from block_values(v, row, at,
    table) -> ((w_lo, w_hi) float32 <16 x float> halves, d, m or None), x's halves loaded once for
    all the rows."""

    @intrinsic
    def sums(typingctx, data, r, x64, xb, table):
        def codegen(context, builder, signature, args):
            starts = [_row_start(context, builder, signature.args[0], args[0], builder.add(args[1], _const(i)))
                      for i in range(rows)]
            array = starts[0][1]
            xs = context.make_array(signature.args[2])(context, builder, args[2]).data
            block_sums = context.make_array(signature.args[3])(context, builder, args[3]).data
            f16 = context.make_array(signature.args[4])(context, builder, args[4]).data
            v = _Builder(builder)
            wides = [_Wide(builder) for _ in range(rows)]
            width = cgutils.unpack_tuple(builder, array.shape)[1]
            with cgutils.for_range(builder, builder.udiv(width, _const(block_bytes))) as loop:
                b = loop.index
                at = builder.mul(b, _const(block_bytes))
                halves = v.x_halves(xs, b)
                xb_b = builder.load(builder.gep(block_sums, [b]))
                for (row, _), wide in zip(starts, wides):
                    (w_lo, w_hi), d, m = block_values(v, row, at, f16)
                    wide.add(0, halves[0], w_lo)
                    wide.add(1, halves[1], w_hi)
                    wide.add_bound(top, d, m, xb_b)
            return context.make_tuple(builder, signature.return_type,
                                      [value for wide in wides for value in wide.results()])
        return types.UniTuple(types.float64, 2 * rows)(data, r, x64, xb, table), codegen
    return sums


def _nibble_values(codes_at: int, offset_at: int | None) -> Callable:
    """A 4-bit block's values as _nibble_dot decodes them: d lo_j + m and d hi_j + m (Q4_1), d (lo_j - 8)
    and d (hi_j - 8) (Q4_0)."""
    def values(v, row, at, f16):
        b = v.b
        d = v.scale(f16, row, at)
        q = b.uitofp(v.load(row, b.add(at, _const(codes_at)), ir.VectorType(_I8, LANES)), _V)
        hi = v.floor(v.mul(q, v.splat(ir.Constant(_F32, 1 / 16))))
        lo = v.fma(v.splat(ir.Constant(_F32, -16.0)), hi, q)          # exact: integers below 256
        if offset_at is not None:
            m = v.scale(f16, row, b.add(at, _const(offset_at)))
            return (v.fma(v.splat(d), lo, v.splat(m)), v.fma(v.splat(d), hi, v.splat(m))), d, m
        eight = v.splat(ir.Constant(_F32, -8.0))
        return (b.fmul(v.splat(d), b.fadd(lo, eight)), b.fmul(v.splat(d), b.fadd(hi, eight))), d, None
    return values


def _q8_0_values(v, row, at, f16):
    """A Q8_0 block's values d int8_j (exact in float32)."""
    b = v.b
    d = v.scale(f16, row, at)
    halves = tuple(b.fmul(v.splat(d), b.sitofp(v.load(row, b.add(at, _const(2 + 16 * h)), ir.VectorType(_I8, LANES)),
                                                 _V)) for h in (0, 1))
    return halves, d, None


# (s, bound) of one row. (Two rows a call, sharing x's loads, measured 2x slower on the 2-core Zen 4 VM.)
q8_0_sum = _sums(34, _q8_0_values, 128.0, 1)
q4_0_sum = _sums(18, _nibble_values(2, None), 8.0, 1)
q4_1_sum = _sums(20, _nibble_values(4, 2), 15.0, 1)


# --- the integer scheme of a decoder's weight products (loom/backend/cpu/fixed_gemv.py) ----
# Each value decoded with the row's 2^(15 - e) folded into the block's float16 scales (d 2^s and m 2^s: exact, and
# one fma of those rounds as the decoded value times 2^s would: a power-of-two scaling commutes with rounding where
# neither side leaves float32's normal range, and the values are multiples of 2^-24 (float16 scales), below 2^15 once
# scaled), rounded to its integer (llvm.rint: to nearest, ties to even) and narrowed to int16 (|q| <= 32767); x's
# integers come as int16 too. (A row holding inf or NaN converts to garbage here; the caller patches such rows.)
# Products of int16 pairs are summed two at a time in int32 (below 2^31: two products of at most 32767^2; LLVM
# lowers the pattern to vpmaddwd on x86) and added into int64 lanes: the exact sum, in any order. (The same sums in
# float64, each integer widened and fma'd: 1.34-1.40x slower on the 2-core Zen 4 VM, one thread, Q4_0 / Q4_1 / Q8_0
# rows of 576 and 1,536.)
_I16X = ir.VectorType(_I16, 2 * LANES)
_I32X, _I32H = ir.VectorType(_I32, 2 * LANES), ir.VectorType(_I32, LANES)
_I64H = ir.VectorType(_I64, LANES)


def _nibble_scaled(codes_at: int, offset_at: int | None) -> Callable:
    """A 4-bit block's values times 2^s (scale_s, float32) as (low, high) <16 x float> halves: (d 2^s) lo_j + m 2^s
    (Q4_1), (d 2^s) (lo_j - 8) (Q4_0)."""
    def values(v, row, at, f16, scale_s):
        b = v.b
        d = b.fmul(v.scale(f16, row, at), scale_s)
        codes = v.load(row, b.add(at, _const(codes_at)), ir.VectorType(_I8, LANES))
        lo = b.uitofp(b.and_(codes, ir.Constant(codes.type, [15] * LANES)), _V)
        hi = b.uitofp(b.lshr(codes, ir.Constant(codes.type, [4] * LANES)), _V)
        if offset_at is not None:
            m = v.splat(b.fmul(v.scale(f16, row, b.add(at, _const(offset_at))), scale_s))
            return v.fma(v.splat(d), lo, m), v.fma(v.splat(d), hi, m)
        eight = v.splat(ir.Constant(_F32, -8.0))
        return b.fmul(v.splat(d), b.fadd(lo, eight)), b.fmul(v.splat(d), b.fadd(hi, eight))
    return values


def _q8_0_scaled(v, row, at, f16, scale_s):
    """A Q8_0 block's values times 2^s: (d 2^s) int8_j (exact in float32)."""
    b = v.b
    d = v.splat(b.fmul(v.scale(f16, row, at), scale_s))
    return tuple(b.fmul(d, b.sitofp(v.load(row, b.add(at, _const(2 + 16 * h)), ir.VectorType(_I8, LANES)), _V))
                 for h in (0, 1))


def _integer_parts(builder: ir.IRBuilder) -> tuple:
    """(_Builder, llvm.rint, the int64 lanes' sum, the shuffle masks: 32 lanes in order, the even ones, the odd ones)
    of the integer sums' intrinsics."""
    module = builder.module
    rint = cgutils.get_or_insert_function(module, ir.FunctionType(_V, [_V]), "llvm.rint.v16f32")
    total = cgutils.get_or_insert_function(module, ir.FunctionType(_I64, [_I64H]), "llvm.vector.reduce.add.v16i64")
    lanes = [ir.Constant(ir.VectorType(_I32, n), list(range(first, 2 * LANES, step)))
             for n, first, step in ((2 * LANES, 0, 1), (LANES, 0, 2), (LANES, 1, 2))]
    return _Builder(builder), rint, total, lanes


def _integers32(builder: ir.IRBuilder, rint, lanes: list, halves: tuple) -> ir.Value:
    """A block's 32 scaled values (two <16 x float> halves) rounded to their integers, as int16 widened to int32."""
    q32 = [builder.fptosi(builder.call(rint, [w]), _I32H) for w in halves]
    return builder.sext(builder.trunc(builder.shuffle_vector(q32[0], q32[1], lanes[0]), _I16X), _I32X)


def _pair_sums(builder: ir.IRBuilder, lanes: list, q: ir.Value, x: ir.Value) -> ir.Value:
    """<16 x i64>: the products of q (<32 x i32>, int16 values) and x (<32 x i16>) added in pairs (int32: below 2^31,
    vpmaddwd on x86), widened."""
    p = builder.mul(q, builder.sext(x, _I32X))
    return builder.sext(builder.add(builder.shuffle_vector(p, p, lanes[1]), builder.shuffle_vector(p, p, lanes[2])), _I64H)


def _integer_sums(block_bytes: int, block_values: Callable) -> Callable:
    """An intrinsic (data, r, qx16, scale, table) -> float64: the exact sum of row r's integers (its values times
    the float32 power of two `scale`, rounded: below 2^15 in magnitude, or below 2^-126 where they round to 0
    either way) times x's integers qx16 (int16 [1, K]), as a float64 (exact: below 2^53)."""

    @intrinsic
    def sums(typingctx, data, r, qx16, scale, table):
        def codegen(context, builder, signature, args):
            row, array = _row_start(context, builder, signature.args[0], args[0], args[1])
            xs = context.make_array(signature.args[2])(context, builder, args[2]).data
            f16 = context.make_array(signature.args[4])(context, builder, args[4]).data
            v, rint, total, lanes = _integer_parts(builder)
            acc = cgutils.alloca_once_value(builder, ir.Constant(_I64H, None))
            width = cgutils.unpack_tuple(builder, array.shape)[1]
            with cgutils.for_range(builder, builder.udiv(width, _const(block_bytes))) as loop:
                b = loop.index
                x = v.load(xs, builder.mul(b, _const(64)), _I16X)
                halves = block_values(v, row, builder.mul(b, _const(block_bytes)), f16, args[3])
                q = _integers32(builder, rint, lanes, halves)
                builder.store(builder.add(builder.load(acc), _pair_sums(builder, lanes, q, x)), acc)
            return builder.sitofp(builder.call(total, [builder.load(acc)]), _F64)
        return types.float64(data, r, qx16, types.float32, table), codegen
    return sums


def _integer_rows(block_bytes: int, block_values: Callable) -> Callable:
    """An intrinsic (data, r, qx16, scale, table, out) writing out[i] (float64 [M]): _integer_sums' exact sum for each
    row i of x's integers qx16 (int16 [M, K], M <= 16), row r of W decoded once for all of them (a block at a time,
    each row's int64 lanes kept in memory)."""

    @intrinsic
    def sums(typingctx, data, r, qx16, scale, table, out):
        def codegen(context, builder, signature, args):
            row, array = _row_start(context, builder, signature.args[0], args[0], args[1])
            x = context.make_array(signature.args[2])(context, builder, args[2])
            rows_x = cgutils.unpack_tuple(builder, x.shape)[0]
            x_stride = cgutils.unpack_tuple(builder, x.strides)[0]
            f16 = context.make_array(signature.args[4])(context, builder, args[4]).data
            dst = context.make_array(signature.args[5])(context, builder, args[5]).data
            v, rint, total, lanes = _integer_parts(builder)
            accs = cgutils.alloca_once(builder, _I64H, size=16)
            with cgutils.for_range(builder, rows_x) as init:
                builder.store(ir.Constant(_I64H, None), builder.gep(accs, [init.index]))
            width = cgutils.unpack_tuple(builder, array.shape)[1]
            with cgutils.for_range(builder, builder.udiv(width, _const(block_bytes))) as loop:
                b = loop.index
                halves = block_values(v, row, builder.mul(b, _const(block_bytes)), f16, args[3])
                q = _integers32(builder, rint, lanes, halves)
                with cgutils.for_range(builder, rows_x) as each:
                    at = builder.add(builder.mul(each.index, x_stride), builder.mul(b, _const(64)))
                    acc = builder.gep(accs, [each.index])
                    pairs = _pair_sums(builder, lanes, q, v.load(x.data, at, _I16X))
                    builder.store(builder.add(builder.load(acc), pairs), acc)
            with cgutils.for_range(builder, rows_x) as each:
                sum_i = builder.call(total, [builder.load(builder.gep(accs, [each.index]))])
                builder.store(builder.sitofp(sum_i, _F64), builder.gep(dst, [each.index]))
            return context.get_dummy_value()
        return types.none(data, r, qx16, types.float32, table, out), codegen
    return sums


q8_0_rows = _integer_rows(34, _q8_0_scaled)
q4_0_rows = _integer_rows(18, _nibble_scaled(2, None))
q4_1_rows = _integer_rows(20, _nibble_scaled(4, 2))
q8_0_integers = _integer_sums(34, _q8_0_scaled)
q4_0_integers = _integer_sums(18, _nibble_scaled(2, None))
q4_1_integers = _integer_sums(20, _nibble_scaled(4, 2))

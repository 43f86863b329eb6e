"""What integer schemes for attention would do to a real language model's predictions: the accuracy side of
an exact prompt attention on the int8 tensor cores (issue 60: under spec 4 a prompt's attention is float64
tensor-core products, certified and settled, most of a 2,048-token prompt's time; an integer scheme with
exact sums would be a spec bump, and would first have to keep the model's predictions).

Every attention of SmolLM2-135M (the Q4_1 file, dequantized; every weight product exact) over a Hamlet
passage is replaced by:
- `exact`: s = q . k exact, rounded once to float32; softmax; ctx = p . v exact, rounded once (deterministic
  mode's values, in float64 here);
- `bf16 q, k, v`: q, k and v rounded to bfloat16, as fast mode's flash kernel reads them;
- `fixed bq/bk/bp/bv`: a scheme whose sums are exact integer products, each a GEMM of integer planes:
  q's rows (a query head's D values) and k's rows at bq and bk bits below their largest magnitude (the scores'
  integers exact; each key's scale applied after the integer sum, a power of two); the softmax as the exact
  scheme's; then v's rows (a key's D values) at bv bits below their largest, each key's scale 2^e_j folded
  into p's row (w_j = p_j 2^(e_j - E), E the row's largest e_j) and w's row at bp bits below 1, so that ctx
  is 2^(E - bp - bv) times one integer product, GEMM-able over a chunk's query rows and causal (a row's
  integers depend on the keys it keeps only). 14 bits is two int8 slices (four int8 products a sum).
- `integer bq/bk/bp/bv`: the same, with the softmax's float64 exp and exact sum replaced by integer arithmetic
  (loom/kernels/exact/attention.py's `exp_fixed`): each score's distance below its row's largest, times log2(e),
  in fixed point, its power of two from a 256-entry table and a linear step, p unnormalized (the largest 1) in
  units of 2^-31; the context is the integer product of p's rows (each key's scale folded in, at bp bits below
  1) and v's, divided once by the integer sum of p, so a prompt chunk's softmax needs no float64 exp and no
  division a probability.
Printed per scheme: the mean negative log-likelihood of the next tokens (and its change), how often the
argmax agrees with the exact scheme's, and the largest and mean |logit difference|.

    python benchmarks/attention_schemes.py [--tokens 400]

The model and the text come from the test-data cache (tests/datacache.py), as benchmarks/product_schemes.py's.
"""
from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from product_schemes import bf16, exponents, fixed, report, setup  # noqa: E402  (the repository and tests/ on the path)

from loom.kernels.exact.attention import exp_fixed  # noqa: E402  (the scheme's exp, spec 5's reference)

SCHEMES = [("exact", None), ("bf16 q, k, v", None), ("fixed", (21, 21, 21, 21)), ("fixed", (14, 14, 14, 14)),
           ("fixed", (14, 14, 10, 10)), ("fixed", (10, 10, 14, 14)), ("fixed", (7, 7, 7, 7)),
           ("integer", (21, 21, 21, 21)), ("integer", (14, 14, 14, 14)), ("integer", (14, 14, 12, 12)),
           ("integer", (10, 10, 14, 14)), ("integer", (14, 7, 14, 14)), ("integer", (7, 7, 14, 14)),
           ("integer", (14, 14, 14, 8)), ("integer", (14, 14, 15, 7)), ("spec-5 reference", None)]

def attention(kind: str, bits):
    """A replacement for Decoder.attend: queries q [B, T, H, D] at positions pos.. over keys and values
    [B, KV, n, D] at positions lo.. (causal, the layer's window), the context [B, T, H*D] float32."""
    def attend(self, L, q, keys, values, pos, lo):
        B, T, H, D = q.shape
        KV, n = keys.shape[1], keys.shape[2]
        R = H // KV
        q = np.asarray(q, np.float64).reshape(B, T, KV, R, D).transpose(0, 2, 3, 1, 4)      # [B, KV, R, T, D]
        k, v = np.asarray(keys, np.float64)[:, :, None], np.asarray(values, np.float64)[:, :, None]
        qpos, kpos = np.arange(pos, pos + T)[:, None], np.arange(lo, lo + n)[None, :]
        allowed = (kpos <= qpos) & (kpos > qpos - (n if L.window is None else L.window))
        if kind == "spec-5 reference":                                    # loom.kernels.exact.attention
            from loom.kernels.exact import attention as integer_attention
            ctx = integer_attention.attention(np, q.astype(np.float32), k.astype(np.float32), v.astype(np.float32),
                                              allowed, self.scale)
            return ctx.transpose(0, 3, 1, 2, 4).reshape(B, T, H * D)
        if kind == "bf16 q, k, v":
            q, k, v = bf16(q), bf16(k), bf16(v)
        elif kind in ("fixed", "integer"):
            q, k = fixed(q.reshape(-1, D), bits[0]).reshape(q.shape), fixed(k.reshape(-1, D), bits[1]).reshape(k.shape)
        s = (q @ k.swapaxes(-1, -2)).astype(np.float32).astype(np.float64) * np.float32(self.scale)
        s = np.where(allowed, s, -np.inf)
        if kind == "integer":
            return _integer_context(s, v, allowed, bits).transpose(0, 3, 1, 2, 4).reshape(B, T, H * D)
        p = np.exp(s - s.max(axis=-1, keepdims=True))
        p = (p / p.sum(axis=-1, keepdims=True)).astype(np.float32).astype(np.float64)
        if kind == "fixed":
            bp, bv = bits[2], bits[3]
            ev = exponents(v)[..., 0]                                      # [B, KV, 1, n]
            v = fixed(v.reshape(-1, D), bv).reshape(v.shape)
            big = np.max(np.where(allowed, ev[..., None, :], -np.inf), axis=-1, keepdims=True)
            w = p * np.exp2(ev[..., None, :] - big)                          # each key's scale folded into p
            wq = np.rint(w * 2.0 ** bp) / 2.0 ** bp                           # w <= 1: bp bits below 1
            v = v * np.exp2(-ev[..., :, None])                                # v's integers over 2^bv
            ctx = (wq @ v) * np.exp2(big)
        else:
            ctx = p @ v
        ctx = ctx.astype(np.float32)                                         # [B, KV, R, T, D]
        return ctx.transpose(0, 3, 1, 2, 4).reshape(B, T, H * D)
    return attend


def _integer_context(s, v, allowed, bits) -> np.ndarray:
    """The `integer` scheme's context [B, KV, R, T, D] float32 from the scores s [B, KV, R, T, n] (masked: -inf),
    v [B, KV, 1, n, D]: p = exp_fixed(max - s), each key's scale folded into p's integers at bp bits below 1,
    an integer product with v's integers, one division by the integer sum of p."""
    bp, bv = bits[2], bits[3]
    d = s.max(axis=-1, keepdims=True) - s
    p = np.where(allowed, exp_fixed(np, np.where(allowed, d, 64.0)), 0)    # int64, 2^-31 units, the largest 2^31
    ev = exponents(v)[..., 0].astype(np.int64)                          # [B, KV, 1, n]
    vi = np.rint(v * np.exp2(bv - ev[..., None]))                      # v's integers, |vi| <= 2^bv
    big = np.max(np.where(allowed, ev[..., None, :], -(1 << 40)), axis=-1, keepdims=True)
    shift = np.minimum(31 - bp + big - ev[..., None, :], 62)            # w = p 2^(ev - E) at bp bits below 1
    w = np.where(shift < 62, (p + (np.int64(1) << (shift - 1))) >> shift, 0)
    num = w.astype(np.float64) @ vi                                      # exact: integers below 2^53
    den = p.sum(axis=-1, keepdims=True).astype(np.float64)              # exact: below 2^53
    return (num * np.exp2(big - bp - bv + 31) / den).astype(np.float32)


def main() -> None:
    import loom
    from loom.llm import decoder
    model, ids, dense = setup(__doc__)

    def exact_linear(x2, w):
        return (np.asarray(x2, np.float64) @ dense(w).T).astype(np.float32)

    plain_linear, plain_attend, out = decoder.linear, decoder.Decoder.attend, {}
    with loom.deterministic(False):                 # (every product and attention replaced)
        decoder.linear = exact_linear
        try:
            for kind, bits in SCHEMES:
                decoder.Decoder.attend = attention(kind, bits)
                out[(kind, bits)] = np.asarray(model.logits(ids), dtype=np.float64)
        finally:
            decoder.linear, decoder.Decoder.attend = plain_linear, plain_attend
    report(out, ids, f"SmolLM2-135M (Q4_1 file), {len(ids)} tokens of Hamlet, every attention in the scheme "
           "(products exact)", lambda key: key[0] if key[1] is None else f"{key[0]} {'/'.join(map(str, key[1]))}")


if __name__ == "__main__":
    main()

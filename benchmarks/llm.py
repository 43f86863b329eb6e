"""LLM speed (issue 7): SmolLM2-135M decode tokens/s at batch 1 and prefill tokens/s, Q4_1 and bf16.

    python benchmarks/llm.py --device cpu [--file SmolLM2-135M-Instruct.Q4_1.gguf] [--repeats 3]
    python benchmarks/llm.py --device cuda [--transformers]
    python benchmarks/llm.py --device cpu --compare --repeats 3      # both modes alternately, and their ratio

The weights are random with the real shapes (30 layers, hidden 576, 9/3 heads, vocab 49152, tied):
speed does not depend on their values, and the device machine takes no 98 MB upload. Q4_1 blocks
have fixed scales and random 4-bit codes (the embeddings Q8_0, as in the published file); bf16 weights
are normal * 0.02. With --file the real GGUF is timed too. Loom runs in fast mode unless
--deterministic. --transformers adds transformers' LlamaForCausalLM with the same config in bf16 on the
same device: eager, and (CUDA) static cache + torch.compile(mode="reduce-overhead").
Decode: a prompt of PROMPT tokens is prefilled, then DECODE greedy tokens are timed one by one.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import loom
from loom.kernels.quant import gguf as gguf_quants
from loom.kernels.quant.block import BlockQuantized
from loom.llm.decoder import Decoder, DecoderConfig, expected_tensors

PROMPT, DECODE, PREFILL = 16, 64, 256
CONFIG = {"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
          "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64, "vocab_size": 49152,
          "rope_theta": 100000.0, "rms_norm_eps": 1e-5, "tie_word_embeddings": True,
          "max_position_embeddings": 8192, "bos_token_id": 1, "eos_token_id": 2}


def random_matrix(rng, qtype: str, shape) -> BlockQuantized:
    rows, cols = shape
    if qtype == "BF16":
        w = (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype("bfloat16")
        return BlockQuantized(w.view(np.uint8).reshape(rows, -1), "BF16", shape)
    elems, nbytes = gguf_quants.BLOCKS[qtype]
    blocks = np.empty((rows, cols // elems, nbytes), dtype=np.uint8)
    if qtype == "Q4_1":         # f16 scale d, f16 minimum m, 16 bytes of 4-bit codes: w = d q + m
        blocks[..., 0:2] = np.array([0.004], np.float16).view(np.uint8)
        blocks[..., 2:4] = np.array([-0.03], np.float16).view(np.uint8)
        blocks[..., 4:] = rng.integers(0, 256, (rows, cols // elems, 16), dtype=np.uint8)
    elif qtype == "Q8_0":       # f16 scale d, 32 int8 codes: w = d q
        blocks[..., 0:2] = np.array([0.0002], np.float16).view(np.uint8)
        blocks[..., 2:] = rng.integers(0, 256, (rows, cols // elems, 32), dtype=np.uint8)
    else:
        raise ValueError(qtype)
    return BlockQuantized(blocks.reshape(rows, -1), qtype, shape)


def random_weights(qtype: str, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    required, _ = expected_tensors(DecoderConfig.from_hf(CONFIG))
    out = {}
    for name, shape in required.items():
        if len(shape) == 1:
            out[name] = (1 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        else:
            kind = "Q8_0" if qtype == "Q4_1" and name == "model.embed_tokens.weight" else qtype
            out[name] = random_matrix(rng, kind, shape)
    return out


def time_decoder(dec: Decoder, sync, repeats: int = 1) -> dict:
    """{'prefill tok/s', 'decode tok/s'} for one Decoder (greedy, batch 1): the best of `repeats`
    prefills, and of `repeats` windows of DECODE tokens (a shared VM's noise only ever slows a run)."""
    xp = dec.xp
    rng = np.random.default_rng(1)
    prompt = rng.integers(0, CONFIG["vocab_size"], (1, PREFILL))
    cache = dec.new_cache(PREFILL + 8)
    dec.forward(prompt, cache, last_only=True)                 # warm-up: the same shapes (kernels compiled)
    prefill = 0.0
    for _ in range(repeats):
        cache.reset()
        sync()
        t = time.perf_counter()
        dec.forward(prompt, cache, last_only=True)
        sync()
        prefill = max(prefill, PREFILL / (time.perf_counter() - t))

    cache = dec.new_cache(PROMPT + repeats * DECODE + 4)
    logits = dec.forward(prompt[:, :PROMPT], cache, last_only=True)
    token = int(xp.argmax(logits[0, -1]))
    for _ in range(3):                                          # warm-up steps
        token = int(xp.argmax(dec.forward(np.array([[token]]), cache, last_only=True)[0, -1]))
    decode = 0.0
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        for _ in range(DECODE):
            token = int(xp.argmax(dec.forward(np.array([[token]]), cache, last_only=True)[0, -1]))
        decode = max(decode, DECODE / (time.perf_counter() - t))
    return {"prefill tok/s": prefill, "decode tok/s": decode}


def loom_rows(device: str, path: str | None, repeats: int = 1) -> list:
    from loom import backend
    be = backend.get(device)
    rows = []
    for label, qtype in (("Q4_1 (random)", "Q4_1"), ("bf16 (random)", "BF16")):
        dec = Decoder(DecoderConfig.from_hf(CONFIG), random_weights(qtype), device=device)
        rows.append((f"loom {label}", time_decoder(dec, be.synchronize, repeats)))
    if path:
        model = loom.llm.load(path, device=device)
        rows.append(("loom Q4_1 (SmolLM2 file)", time_decoder(model.decoder, be.synchronize, repeats)))
    return rows


def compare_rows(device: str, repeats: int) -> list:
    """Deterministic against fast mode, alternated in one process (each model's two decoders timed in
    turn, `repeats` rounds, the best of each): on a shared machine the ratio then sees the same noise."""
    from loom import backend
    be = backend.get(device)
    rows = []
    for label, qtype in (("Q4_1 (random)", "Q4_1"), ("bf16 (random)", "BF16")):
        decoders = {}
        for det in (False, True):
            with loom.deterministic(det):
                decoders[det] = Decoder(DecoderConfig.from_hf(CONFIG), random_weights(qtype), device=device)
        best = {False: {}, True: {}}
        for _ in range(repeats):
            for det in (False, True):
                with loom.deterministic(det):
                    for key, value in time_decoder(decoders[det], be.synchronize).items():
                        best[det][key] = max(best[det].get(key, 0.0), value)
        ratio = {key: best[True][key] / best[False][key] for key in best[False]}
        rows += [(f"loom fast {label}", best[False]), (f"loom deterministic {label}", best[True]),
                 ("  deterministic / fast", ratio)]
    return rows


def transformers_rows(device: str) -> list:
    import torch
    import transformers
    cfg = transformers.LlamaConfig(**{k: v for k, v in CONFIG.items() if k != "model_type"})
    model = transformers.LlamaForCausalLM(cfg).to(device=device, dtype=torch.bfloat16).eval()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    prompt = torch.randint(0, CONFIG["vocab_size"], (1, PROMPT), device=device)
    rows = []

    def run(**kw):
        with torch.no_grad():
            model.generate(prompt, max_new_tokens=DECODE, min_new_tokens=DECODE, do_sample=False, **kw)
            sync()
            t = time.perf_counter()
            model.generate(prompt, max_new_tokens=DECODE, min_new_tokens=DECODE, do_sample=False, **kw)
            sync()
            return DECODE / (time.perf_counter() - t)     # prefill of PROMPT tokens included
    rows.append(("transformers bf16 eager", {"decode tok/s": run()}))
    if device == "cuda":
        try:
            rows.append(("transformers bf16 static cache + compile", {"decode tok/s": _compiled_decode(model, cfg, prompt)}))
        except Exception as exc:       # report, do not hide: the row says why it is missing
            rows.append((f"transformers compile failed: {type(exc).__name__}: {str(exc)[:80]}", {}))
    return rows


def _compiled_decode(model, cfg, prompt) -> float:
    """transformers' fastest documented decode: a StaticCache and the forward compiled with CUDA graphs
    ("reduce-overhead"), driven token by token (generate() keeps references to graph outputs that the
    next replay overwrites, which torch refuses). Greedy, DECODE timed steps after the prompt."""
    import torch
    import transformers
    cache = transformers.StaticCache(config=cfg, max_cache_len=PROMPT + 2 * DECODE + 8)
    step = torch.compile(lambda ids, pos: model(ids, past_key_values=cache, cache_position=pos, use_cache=True).logits,
                         mode="reduce-overhead", fullgraph=True)
    with torch.no_grad():
        logits = model(prompt, past_key_values=cache, cache_position=torch.arange(PROMPT, device=prompt.device),
                       use_cache=True).logits
        token = logits[:, -1:].argmax(-1)
        position = PROMPT

        def steps(n):
            nonlocal token, position
            for _ in range(n):
                torch.compiler.cudagraph_mark_step_begin()
                out = step(token, torch.tensor([position], device=prompt.device))
                token = out[:, -1:].argmax(-1).clone()
                position += 1
        steps(DECODE // 2)                 # compile and record
        torch.cuda.synchronize()
        t = time.perf_counter()
        steps(DECODE)
        torch.cuda.synchronize()
        return DECODE / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--file", default=None, help="a SmolLM2 GGUF file to time as well")
    ap.add_argument("--deterministic", action="store_true", help="time deterministic mode (default: fast)")
    ap.add_argument("--transformers", action="store_true", help="add transformers rows")
    ap.add_argument("--repeats", type=int, default=1, help="best of this many prefills and decode windows")
    ap.add_argument("--compare", action="store_true",
                    help="time both modes alternately in one process and print their ratio")
    args = ap.parse_args()
    if args.compare:
        rows = compare_rows(args.device, args.repeats)
    else:
        with loom.deterministic(args.deterministic):
            rows = loom_rows(args.device, args.file, args.repeats)
    if args.transformers:
        rows += transformers_rows(args.device)
    mode = "fast and deterministic" if args.compare else "deterministic" if args.deterministic else "fast"
    print(f"SmolLM2-135M shapes on {args.device}, loom {mode} mode; prefill {PREFILL} tokens, decode {DECODE} "
          f"tokens after a {PROMPT}-token prompt, batch 1, best of {args.repeats}")
    print(f"{'':40s} {'prefill tok/s':>14s} {'decode tok/s':>13s}")
    for label, r in rows:
        digits = 2 if label.strip().startswith("deterministic /") else 1
        pre = f"{r['prefill tok/s']:14.{digits}f}" if "prefill tok/s" in r else f"{'-':>14s}"
        dec = f"{r['decode tok/s']:13.{digits}f}" if "decode tok/s" in r else f"{'-':>13s}"
        print(f"{label:40s} {pre} {dec}")


if __name__ == "__main__":
    main()

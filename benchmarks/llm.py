"""LLM speed (issues 7 and 34): decode tokens/s at batch 1 and prefill tokens/s, at SmolLM2-135M's shapes
(Q4_1 and bf16) or Llama-3.2-1B's and Llama-3.1-8B's (bf16, Q4_K, Q8_0), with memory use.

    python benchmarks/llm.py --device cpu [--file SmolLM2-135M-Instruct.Q4_1.gguf] [--repeats 3]
    python benchmarks/llm.py --device cuda [--transformers]
    python benchmarks/llm.py --device cuda --shape llama-3.1-8b --types BF16,Q4_K,Q8_0 [--transformers]
    python benchmarks/llm.py --device cpu --compare --repeats 3      # both modes alternately, and their ratio
    python benchmarks/llm.py --device cpu --compare --composed       # and deterministic without its compiled steps
    python benchmarks/llm.py --device cuda --compare --prompt 3000   # decode after a 3,000-token prompt

The weights are random with the real shapes (SmolLM2-135M: 30 layers, hidden 576, 9/3 heads, vocab 49152,
tied): speed does not depend on their values, and the device machine takes no upload. Block types get
fixed finite scales and random codes (Q4_1's embeddings Q8_0, as in the published SmolLM2 file); bf16
weights are normal * 0.02. On the GPU they are generated there. With --file the real GGUF is timed too.
Loom runs in fast mode unless --deterministic. Each row reports the stored weights' bytes and the device
memory in use after its run; on the GPU, the decode rate the copy bandwidth allows (weight bytes read per
token / a device-to-device copy's bytes read plus written per second) and the share of it reached.
--transformers adds transformers' LlamaForCausalLM with the same config in bf16 on the same device: eager,
and (CUDA) static cache + torch.compile(mode="reduce-overhead").
Loom runs through CausalLM.generate_ids (the model's own batch engine; a lone sequence is a batch of one).
Prefill: a fresh random PREFILL-token prompt each time (no prefix-cache hit), timed from the call to its
first token. Decode: a prompt of PROMPT tokens is prefilled, then DECODE greedy tokens are timed one by one.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import loom
from loom.kernels.quant import gguf as gguf_quants
from loom.kernels.quant.block import BlockQuantized
from loom.llm.decoder import Decoder
from loom.llm.decoder_config import DecoderConfig, expected_tensors
from loom.llm.model import CausalLM

PROMPT, DECODE, PREFILL = 16, 64, 256
CONFIG = {"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
          "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64, "vocab_size": 49152,
          "rope_theta": 100000.0, "rms_norm_eps": 1e-5, "tie_word_embeddings": True,
          "max_position_embeddings": 8192, "bos_token_id": 1, "eos_token_id": 2}
_LLAMA3 = {"model_type": "llama", "vocab_size": 128256, "rope_theta": 500000.0, "rms_norm_eps": 1e-5,
           "max_position_embeddings": 8192, "bos_token_id": 128000, "eos_token_id": 128001}
SHAPES = {
    "smollm2-135m": CONFIG,
    "llama-3.2-1b": {**_LLAMA3, "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
                     "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64, "tie_word_embeddings": True},
    "llama-3.1-8b": {**_LLAMA3, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                     "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
                     "tie_word_embeddings": False},
    # Qwen2.5-0.5B's shapes: biases on q, k and v, a 152k vocabulary tied to the embedding, K = 4864 in the
    # down projection
    "qwen2-0.5b": {"model_type": "qwen2", "vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864,
                   "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
                   "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "max_position_embeddings": 8192,
                   "tie_word_embeddings": True, "bos_token_id": 151643, "eos_token_id": 151645},
}
DEFAULT_TYPES = {"smollm2-135m": "Q4_1,BF16", "llama-3.2-1b": "BF16,Q4_K,Q8_0", "llama-3.1-8b": "BF16,Q4_K,Q8_0",
                 "qwen2-0.5b": "BF16"}
# each block type's float16 scale fields get these values (finite; small enough that no sum overflows)
_SCALES = {"Q4_1": (0.004, -0.03), "Q8_0": (0.0002,), "Q4_K": (0.0002, 0.0001), "Q6_K": (0.0002,),
           "Q5_K": (0.0001, 0.0001), "Q2_K": (0.001, 0.0005), "Q3_K": (0.001,), "Q4_0": (0.004,), "Q5_0": (0.002,),
           "Q5_1": (0.002, -0.03)}


def random_matrix(rng, qtype: str, shape, xp=np) -> BlockQuantized:
    """A random [rows, cols] weight stored as `qtype`, on xp's device (xp: NumPy, or CuPy with its own
    generator: rng is then unused)."""
    rows, cols = shape
    if qtype == "BF16":
        w = rng.standard_normal(shape, dtype=np.float32) if xp is np else xp.random.standard_normal(shape, np.float32)
        w *= np.float32(0.02)
        bits = (w.view(np.uint32) >> 16).astype(np.uint16)          # truncated: random values, any rounding
        return BlockQuantized(bits.view(np.uint8).reshape(rows, -1), "BF16", shape)
    elems, nbytes = gguf_quants.BLOCKS[qtype]
    size = (rows, cols // elems, nbytes)
    blocks = rng.integers(0, 256, size, dtype=np.uint8) if xp is np else xp.random.randint(0, 256, size, dtype=np.uint8)
    for at, value in zip(gguf_quants.SCALE_FIELDS[qtype], _SCALES[qtype]):
        blocks[..., at:at + 2] = xp.asarray(np.array([value], np.float16).view(np.uint8))
    return BlockQuantized(blocks.reshape(rows, -1), qtype, shape)


def random_weights(qtype: str, seed: int = 0, config: dict = CONFIG, device: str = "cpu") -> dict:
    """Random weights of `config`'s shapes stored as `qtype` (Q4_1's embedding Q8_0), made on `device`."""
    from loom import backend
    xp = backend.get(device).xp
    if xp is not np:
        xp.random.seed(seed)
    rng = np.random.default_rng(seed)
    required, _ = expected_tensors(DecoderConfig.from_hf(config))
    out = {}
    for name, shape in required.items():
        if len(shape) == 1:
            out[name] = (1 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        else:
            kind = "Q8_0" if qtype == "Q4_1" and name == "model.embed_tokens.weight" else qtype
            out[name] = random_matrix(rng, kind, shape, xp)
    return out


def weight_bytes(dec: Decoder) -> tuple[int, int]:
    """(bytes of every stored weight, bytes a decode step reads: all but the embedding's unread rows)."""
    mats = [dec.embed] + ([] if dec.lm_head is dec.embed else [dec.lm_head])
    mats += [w for L in dec.layers for w in (L.qkv, L.o, L.gate_up, L.down)]
    total = sum(int(w.nbytes) for w in mats)
    embed = int(dec.embed.nbytes)
    return total, total - (embed if dec.lm_head is not dec.embed else 0)


def copy_bandwidth(xp, nbytes: int = 1 << 30) -> float:
    """Bytes read plus written per second by a device-to-device copy of `nbytes` (the best of 10)."""
    from loom.engine.bench import best
    a, b = xp.ones(nbytes, dtype=np.uint8), xp.empty(nbytes, dtype=np.uint8)

    def copy() -> None:
        b[...] = a                     # one device-to-device memcpy (a uint8 .copy() is an element-wise kernel)
    return 2 * nbytes / best(copy, xp.cuda.Device().synchronize, repeats=10)


_PROMPTS = np.random.default_rng(1)     # every prompt drawn in a process is new: no prefix-cache hit


def random_prompt(vocab: int, length: int) -> list[int]:
    """`length` random token ids, never drawn before in this process (so the engine's prefix cache has
    none of their blocks)."""
    return _PROMPTS.integers(0, vocab, length).tolist()


def time_decoder(model: CausalLM, sync, repeats: int = 1) -> dict:
    """{'prefill tok/s', 'decode tok/s'} of one model (greedy, batch 1) through CausalLM.generate_ids, which
    runs a lone sequence on the model's own batch engine (a batch of one, with prefix caching): the best of
    `repeats` prefills, each a fresh random PREFILL-token prompt timed from the call to its first token (no
    prefix-cache hit; two warm-ups of that shape first, so that the prompt chunk replays its recorded step,
    recorded at its second sighting), and of `repeats` windows of DECODE tokens read one by one from one
    stream after a PROMPT-token prompt and three warm-up tokens (a shared VM's noise only ever slows a run).
    Wrap a bare Decoder as CausalLM(dec, None, dict(config), eos_ids=())."""
    vocab = model.decoder.config.vocab_size

    def first_token(ids: list[int]) -> float:
        sync()
        t = time.perf_counter()
        tokens = model.generate_ids(ids, max_tokens=1, stop_ids=())
        next(tokens)
        seconds = time.perf_counter() - t
        list(tokens)                    # (the stream's end)
        return seconds

    for _ in range(2):                  # warm-up: kernels compiled; the prompt chunk's step recorded
        first_token(random_prompt(vocab, PREFILL))
    prefill = max(PREFILL / first_token(random_prompt(vocab, PREFILL)) for _ in range(repeats))

    tokens = model.generate_ids(random_prompt(vocab, PROMPT), max_tokens=4 + repeats * DECODE, stop_ids=())
    for _ in range(4):                  # the prompt's token, then three warm-up steps (the decode step recorded)
        next(tokens)
    decode = 0.0
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        for _ in range(DECODE):
            next(tokens)
        decode = max(decode, DECODE / (time.perf_counter() - t))
    list(tokens)                        # (the stream's end)
    return {"prefill tok/s": prefill, "decode tok/s": decode}


def loom_rows(device: str, path: str | None, repeats: int = 1, shape: str = "smollm2-135m",
              types: str | None = None) -> list:
    import gc

    from loom import backend
    be = backend.get(device)
    config = SHAPES[shape]
    bandwidth = None if be.host else copy_bandwidth(be.xp)
    rows = []
    for qtype in (types or DEFAULT_TYPES[shape]).split(","):
        dec = Decoder(DecoderConfig.from_hf(config), random_weights(qtype, config=config, device=device), device=device)
        model = CausalLM(dec, None, dict(config), eos_ids=())
        result = time_decoder(model, be.synchronize, repeats)
        total, per_token = weight_bytes(dec)
        result["weights GB"] = total / 1e9
        if not be.host:
            free, capacity = be.xp.cuda.runtime.memGetInfo()
            result["device GB"] = (capacity - free) / 1e9
            result["limit tok/s"] = bandwidth / per_token
        rows.append((f"loom {qtype.lower() if qtype == 'BF16' else qtype} (random)", result))
        del dec, model
        gc.collect()
        if not be.host:
            be.xp.get_default_memory_pool().free_all_blocks()
    if path:
        model = loom.llm.load(path, device=device)
        rows.append(("loom Q4_1 (SmolLM2 file)", time_decoder(model, be.synchronize, repeats)))
    if bandwidth:
        print(f"copy bandwidth {bandwidth / 1e9:,.0f} GB/s (bytes read + written)")
    return rows


def compare_rows(device: str, repeats: int, shape: str = "smollm2-135m", types: str | None = None,
                 path: str | None = None, composed: bool = False) -> list:
    """Deterministic against fast mode, alternated in one process (each model's two decoders timed in
    turn, `repeats` rounds, the best of each): on a shared machine the ratio then sees the same noise.
    `path`: a SmolLM2 GGUF file compared the same way, after the random weights. `composed`: a third
    decoder in the rounds, deterministic with its compiled decode steps off (Decoder.token_layer None:
    the composed operations, the same bits), and its ratio to fast mode."""
    import gc

    from loom import backend
    be = backend.get(device)
    config = SHAPES[shape]
    rows = []
    kinds = [(qtype, None) for qtype in (types or DEFAULT_TYPES[shape]).split(",")] + ([("file", path)] if path else [])
    for qtype, file in kinds:
        label = "Q4_1 (SmolLM2 file)" if file else f"{qtype.lower() if qtype == 'BF16' else qtype} (random)"
        models = {}
        kinds = (False, True, "composed") if composed else (False, True)
        for kind in kinds:
            with loom.deterministic(bool(kind)):
                if file:
                    models[kind] = loom.llm.load(file, device=device)
                else:
                    dec = Decoder(DecoderConfig.from_hf(config), random_weights(qtype, config=config, device=device),
                                  device=device)
                    models[kind] = CausalLM(dec, None, dict(config), eos_ids=())
            if kind == "composed":
                models[kind].decoder.token_layer = lambda h: None
        best = {kind: {} for kind in kinds}
        for _ in range(repeats):
            for kind in kinds:
                with loom.deterministic(bool(kind)):
                    for key, value in time_decoder(models[kind], be.synchronize).items():
                        best[kind][key] = max(best[kind].get(key, 0.0), value)
        ratio = {key: best[True][key] / best[False][key] for key in best[False]}
        rows += [(f"loom fast {label}", best[False]), (f"loom deterministic {label}", best[True]),
                 ("  deterministic / fast", ratio)]
        if composed:
            rows += [(f"loom det. composed {label}", best["composed"]),
                     ("  deterministic (composed) / fast",
                      {key: best["composed"][key] / best[False][key] for key in best[False]})]
        del models
        gc.collect()
        if not be.host:
            be.xp.get_default_memory_pool().free_all_blocks()
    return rows


def transformers_model(config: dict, device: str):
    """(transformers' LlamaForCausalLM of `config` in bf16 with sdpa attention, made on `device` directly, its
    config)."""
    import torch
    import transformers
    cfg = transformers.LlamaConfig(**{k: v for k, v in config.items() if k != "model_type"})
    cfg._attn_implementation = "sdpa"
    with torch.device(device):
        return transformers.LlamaForCausalLM._from_config(cfg, torch_dtype=torch.bfloat16).eval(), cfg


def transformers_prefill(config: dict, device: str, tokens: int = PREFILL, model=None) -> float:
    """tokens/s of transformers' bf16 model prefilling one random `tokens`-token prompt (the last position's
    logits), best of 3 after a warm-up."""
    import torch
    model = model or transformers_model(config, device)[0]
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    ids = torch.randint(0, config["vocab_size"], (1, tokens), device=device)
    best = float("inf")
    with torch.no_grad():
        for _ in range(4):
            sync()
            t = time.perf_counter()
            model(ids, use_cache=True, logits_to_keep=1)
            sync()
            best = min(best, time.perf_counter() - t)
    return tokens / best


def transformers_rows(device: str, config: dict = CONFIG) -> list:
    """transformers' bf16 model of `config`: prefill of PREFILL tokens and decode, eager, and (CUDA) static
    cache + torch.compile."""
    import torch
    model, cfg = transformers_model(config, device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    prompt = torch.randint(0, config["vocab_size"], (1, PROMPT), device=device)
    rows = []

    def run(**kw):
        with torch.no_grad():
            model.generate(prompt, max_new_tokens=DECODE, min_new_tokens=DECODE, do_sample=False, **kw)
            sync()
            t = time.perf_counter()
            model.generate(prompt, max_new_tokens=DECODE, min_new_tokens=DECODE, do_sample=False, **kw)
            sync()
            return DECODE / (time.perf_counter() - t)     # prefill of PROMPT tokens included
    rows.append(("transformers bf16 eager (sdpa)", {"prefill tok/s": transformers_prefill(config, device, model=model),
                                                    "decode tok/s": run()}))
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
    global PROMPT
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--shape", default="smollm2-135m", choices=sorted(SHAPES))
    ap.add_argument("--types", default=None, help="comma-separated stored weight types (default per shape)")
    ap.add_argument("--file", default=None, help="a SmolLM2 GGUF file to time as well")
    ap.add_argument("--deterministic", action="store_true", help="time deterministic mode (default: fast)")
    ap.add_argument("--transformers", action="store_true", help="add transformers rows")
    ap.add_argument("--repeats", type=int, default=1, help="best of this many prefills and decode windows")
    ap.add_argument("--compare", action="store_true",
                    help="time both modes alternately in one process and print their ratio")
    ap.add_argument("--composed", action="store_true",
                    help="with --compare: also deterministic mode with its compiled decode steps off")
    ap.add_argument("--prompt", type=int, default=PROMPT, help="prompt tokens before the timed decode steps")
    args = ap.parse_args()
    PROMPT = args.prompt
    if args.compare:
        rows = compare_rows(args.device, args.repeats, args.shape, args.types, args.file, args.composed)
    else:
        with loom.deterministic(args.deterministic):
            rows = loom_rows(args.device, args.file, args.repeats, args.shape, args.types)
    if args.transformers:
        rows += transformers_rows(args.device, SHAPES[args.shape])
    mode = "fast and deterministic" if args.compare else "deterministic" if args.deterministic else "fast"
    print(f"{args.shape} shapes on {args.device}, loom {mode} mode; prefill {PREFILL} tokens, decode {DECODE} "
          f"tokens after a {PROMPT}-token prompt, batch 1, best of {args.repeats}")
    print(f"{'':42s} {'prefill tok/s':>14s} {'decode tok/s':>13s} {'weights GB':>11s} {'device GB':>10s} "
          f"{'limit tok/s':>12s} {'of limit':>9s}")

    def cell(r, key, width, digits=1):
        return f"{r[key]:{width}.{digits}f}" if key in r else f"{'-':>{width}s}"
    for label, r in rows:
        digits = 2 if label.strip().startswith("deterministic") else 1
        share = f"{r['decode tok/s'] / r['limit tok/s']:9.0%}" if "limit tok/s" in r else f"{'-':>9s}"
        print(f"{label:42s} {cell(r, 'prefill tok/s', 14, digits)} {cell(r, 'decode tok/s', 13, digits)} "
              f"{cell(r, 'weights GB', 11, 2)} {cell(r, 'device GB', 10, 2)} {cell(r, 'limit tok/s', 12)} {share}")


if __name__ == "__main__":
    main()

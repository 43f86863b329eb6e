"""Determinism spec N: the golden fingerprints that pin the bits of deterministic mode.

`fingerprints(device)` computes, in deterministic mode, a SHA-256 fingerprint (loom.verify's
fingerprint() and combined()) for each of:
- everything `loom verify` checks (verify.compute): every catalogue sample's forward output, input
  gradient, parameter gradients and buffers (and batch invariance, where verify checks it); one step
  of every optimizer; the demo convnet trained DEMO_STEPS steps with loom.train (its weights and
  loss history);
- every loss's value and gradient on fixed inputs;
- every catalogue sample with parameters trained TRAIN_STEPS steps with each optimizer of
  TRAIN_OPTIMIZERS on one fixed input and an mse target (its weights and buffers, its loss history);
- tiny Llama-family decoders (a llama with grouped-query attention, a qwen3 with q/k norms and tied
  embeddings): the logits of a fixed id sequence, the logits of a prefill and cached decode steps,
  and ids generated greedily and by sampling;
- a tiny BERT encoder: the mean-pooled embeddings (raw and normalized) of a padded batch of ids;
- sampling's rules (loom.llm.generate): the tokens top-k, top-p and min-p keep and 64 draws, from fixed
  logits over a vocabulary past 2^17, at a top-p cut where spec 3's integer masses and spec 2's float64
  running sum part.
Every input and weight comes from loom.rng (or the bundled digits), so it is the same on every
machine; only the arithmetic under test can change a fingerprint.

tests/golden/spec{SPEC}.json stores the CPU's fingerprints; tests/test_spec.py checks them on the
CPU and tests/gpu/test_spec_cuda.py on the GPU. Changing any of those bits is a deliberate spec
bump: SPEC + 1, a new golden file, a CHANGELOG note (docs/determinism.md, "Spec stability").

    python -m loom.spec --write tests/golden/spec5.json      # (re)generate the golden file
    python -m loom.spec --check tests/golden/spec5.json      # list the changed names, exit 1 if any
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING

import numpy as np

from . import atomic, mode, rng, verify
from .verify import SEED, SEP, combined, fingerprint

if TYPE_CHECKING:
    from .llm.encoder import Encoder
    from .llm.model import CausalLM

SPEC = 5
DEMO_STEPS = 20            # loom verify's demo run, shortened so the CPU test stays quick
TRAIN_STEPS = 3
TRAIN_OPTIMIZERS = {"sgd": {"type": "sgd", "lr": 0.05, "momentum": 0.9},
                    "adam": {"type": "adam", "lr": 0.01}}
LOSS_SHAPE = (6, 5)        # [rows, classes]
LLM_IDS = [5, 17, 60, 3, 49, 41, 7, 62, 12, 30, 1, 33]
LLM_NEW_TOKENS = 8
DECODE_PREFILL = 8         # the decode check: a prefill of this many ids, then the rest one by one
SAMPLED = {"temperature": 0.8, "top_k": 20, "top_p": 0.9, "repetition_penalty": 1.1, "seed": 7}
ENCODER_IDS = [[2, 17, 5, 60, 3], [2, 9, 41, 7, 62, 12, 30, 11, 3], [2, 3]]   # padded to 9 in one batch

# Tiny decoders as HuggingFace config.json dicts (loom.llm.decoder.DecoderConfig.from_hf reads them).
DECODERS = {
    "llama": {"model_type": "llama", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 48,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
              "tie_word_embeddings": False},
    "qwen3": {"model_type": "qwen3", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 48,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
              "max_position_embeddings": 64, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
              "tie_word_embeddings": True},
}
ENCODER = {"model_type": "bert", "vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 2,
           "num_attention_heads": 4, "intermediate_size": 64, "max_position_embeddings": 16,
           "type_vocab_size": 2, "hidden_act": "gelu", "layer_norm_eps": 1e-12}


# --- sampling -----------------------------------------------------------------------------------------

SAMPLING_VOCAB = (1 << 17) + 3          # masses of 2^-35: coarser than float32's spacing of small probabilities
SAMPLING_TOP_P = 0.9984434649829754     # a cut where the masses' sum and a float64 running sum part (spec 2 -> 3)


def _sampling_checks() -> dict[str, str]:
    """The tokens each setting keeps, and 64 draws, from fixed logits (host arrays: sampling runs on the
    host for every device)."""
    from .llm import generate as gen
    logits = _random("sampling", (SAMPLING_VOCAB,), 3.0)
    seen = np.zeros(SAMPLING_VOCAB, dtype=bool)
    seen[::97] = True
    settings = {"top-p": gen.Sampling(temperature=1.0, top_p=SAMPLING_TOP_P, seed=11),
                "top-k top-p min-p penalty": gen.Sampling(temperature=0.7, top_k=500, top_p=0.9, min_p=0.01,
                                                          repetition_penalty=1.3, seed=12)}
    out = {}
    for name, s in settings.items():
        penalized = gen.repetition_penalty(logits, seen, s.repetition_penalty)
        scaled = (penalized / np.float32(s.temperature)).astype(np.float32)
        out[f"sampling{SEP}{name} kept"] = fingerprint(gen.keep_mask(scaled, s).astype(np.uint8))
        draws = [gen.choose(logits, seen, s, step) for step in range(64)]
        out[f"sampling{SEP}{name} draws"] = fingerprint(np.asarray(draws, dtype=np.int64))
    return out


# --- all checks -------------------------------------------------------------------------------------

def fingerprints(device: str = "cpu") -> dict[str, str]:
    """Every spec check's fingerprint on `device` ("cpu" or "cuda"), always in deterministic mode.
    A check that raises is recorded as "error: ..." (as in loom verify), so it shows as changed."""
    from .nn.catalogue import SAMPLES
    from .nn.losses import NAMES
    with mode.deterministic(True):
        out = verify.compute(device, steps=DEMO_STEPS)
        for name in NAMES:
            verify.guarded(out, f"loss {name}{SEP}value", lambda name=name: _loss_checks(device, name))
        for sample in SAMPLES:
            for opt in TRAIN_OPTIMIZERS:
                verify.guarded(out, f"{sample[0]}{SEP}{opt} {TRAIN_STEPS} steps",
                                lambda sample=sample, opt=opt: _training_checks(device, *sample, opt))
        for arch in DECODERS:
            verify.guarded(out, f"llm {arch}{SEP}logits", lambda arch=arch: _decoder_checks(device, arch))
        verify.guarded(out, f"encoder bert{SEP}embeddings", lambda: _encoder_checks(device))
        verify.guarded(out, f"sampling{SEP}top-p kept", _sampling_checks)
    return out


def compare(golden: dict[str, str], got: dict[str, str]) -> tuple[list[str], list[str]]:
    """(changed, added), sorted: names of the golden file whose fingerprint differs or is missing from
    `got` (bits of the spec changed: a spec bump), and names new in `got` (a new layer, loss or
    check: add them to the golden file; the existing bits are untouched)."""
    return (sorted(n for n in golden if golden[n] != got.get(n)), sorted(set(got) - set(golden)))


def explain(changed: list[str], added: list[str], device: str, golden_path: str) -> str:
    """The failure message of the spec tests."""
    lines = []
    if changed:
        lines += [f"{len(changed)} fingerprint(s) of determinism spec {SPEC} changed on {device} "
                  f"(against {golden_path}):", *(f"  {n}" for n in changed),
                  "Deterministic mode's bits are part of the spec: changing them must be deliberate. If "
                  "the change is intended, bump the spec: SPEC += 1 in loom/spec.py (loom.DETERMINISM_SPEC), "
                  "write tests/golden/spec<N>.json with `python -m loom.spec --write "
                  "tests/golden/spec<N>.json`, and add a CHANGELOG.md note saying which bits changed and "
                  "why. Otherwise the change is a bug (docs/determinism.md, 'Spec stability')."]
    if added:
        lines += [f"{len(added)} check(s) are not in {golden_path} yet:", *(f"  {n}" for n in added),
                  f"New checks extend spec {SPEC} without a bump: add them with `python -m loom.spec "
                  f"--write {golden_path}` (it refuses if any existing fingerprint changed)."]
    return "\n".join(lines)


# --- losses -----------------------------------------------------------------------------------------

def _loss_checks(device: str, name: str) -> dict[str, str]:
    from . import backend
    from .nn import losses
    gen = rng.Generator(SEED, f"spec.loss.{name}")
    pred = gen.normal(LOSS_SHAPE, counter=0, dtype=np.float32)
    if name in ("cross_entropy", "nll"):
        target = (gen.bits(LOSS_SHAPE[:1], counter=1) % np.uint32(LOSS_SHAPE[1])).astype(np.int64)
    elif name in ("binary_cross_entropy", "kl_div"):         # probabilities in [0, 1)
        target = gen.uniform(LOSS_SHAPE, counter=1, dtype=np.float32)
    else:
        target = gen.normal(LOSS_SHAPE, counter=1, dtype=np.float32)
    be = backend.get(device)
    value, grad = losses.build(name)(be.asarray(pred), be.asarray(target))
    return {f"loss {name}{SEP}value": fingerprint(value), f"loss {name}{SEP}grad": fingerprint(grad)}


# --- training every catalogue sample ----------------------------------------------------------------

def _training_checks(device, name, layers, shape, idt, opt) -> dict[str, str]:
    """TRAIN_STEPS optimizer steps on one fixed input and mse target: weights and buffers after, and
    the loss history. Samples without parameters are covered by their forward checks only."""
    from .nn import Network, losses, optim
    from .nn.catalogue import config
    net = Network.from_config(config(layers, shape, idt)).to(device).train()
    if not net.parameters():
        return {}
    be = net.backend
    x = be.asarray(verify.sample_input(name, layers, shape, idt))
    optimizer = optim.build(TRAIN_OPTIMIZERS[opt], net.parameters())    # built after .to(): live arrays
    mse = losses.build("mse")
    target, history = None, []
    for _ in range(TRAIN_STEPS):
        net.zero_grad()
        y = net(x)
        if target is None:
            target = be.asarray(rng.Generator(SEED, f"spec.train.{name}.target").normal(
                tuple(y.shape), dtype=np.dtype(y.dtype)))
        value, dy = mse(y, target)
        net.backward(dy)
        optimizer.step(net.gradients())
        history.append(be.to_numpy(value))
    check = f"{name}{SEP}{opt} {TRAIN_STEPS} steps"
    return {check: combined(net.state_dict()), f"{check} loss history": fingerprint(np.stack(history))}


# --- tiny language models ---------------------------------------------------------------------------

def _random(stream: str, shape, scale: float, offset: float = 0.0) -> np.ndarray:
    """offset + scale * N(0, 1) in float32 from loom.rng (one rounding per operation: portable)."""
    z = rng.Generator(SEED, f"spec.{stream}").normal(tuple(shape), dtype=np.float32)
    return (np.float32(offset) + np.float32(scale) * z).astype(np.float32)


def tiny_decoder(arch: str, device: str = "cpu") -> CausalLM:
    """A CausalLM (no tokenizer) of DECODERS[arch] with random weights from loom.rng: every matrix
    N(0, 0.2²) and every norm weight 1 + N(0, 0.1²), the same bits on every machine."""
    from .llm.decoder import Decoder
    from .llm.decoder_config import DecoderConfig, expected_tensors
    from .llm.model import CausalLM
    cfg = DecoderConfig.from_hf(DECODERS[arch])
    required, _ = expected_tensors(cfg)
    weights = {name: _random(f"llm.{arch}.{name}", shape, 0.1, 1.0) if name.endswith("norm.weight")
               else _random(f"llm.{arch}.{name}", shape, 0.2) for name, shape in required.items()}
    return CausalLM(Decoder(cfg, weights, device), None, dict(DECODERS[arch]))


def _decoder_checks(device: str, arch: str) -> dict[str, str]:
    from .llm import paged_forward
    model = tiny_decoder(arch, device)
    dec, ids = model.decoder, np.asarray(LLM_IDS, dtype=np.int64)
    pieces = [DECODE_PREFILL] + [1] * (len(LLM_IDS) - DECODE_PREFILL)
    decoded = dec.backend.to_numpy(paged_forward.sequence_logits(dec, ids, pieces))[None]
    greedy = model.generate_ids(LLM_IDS, max_tokens=LLM_NEW_TOKENS, stop_ids=())
    sampled = model.generate_ids(LLM_IDS, max_tokens=LLM_NEW_TOKENS, stop_ids=(), **SAMPLED)
    p = f"llm {arch}{SEP}"
    return {p + "logits": fingerprint(model.logits(LLM_IDS)),
            p + "decode logits": fingerprint(decoded),
            p + "greedy ids": fingerprint(np.asarray(list(greedy), dtype=np.int64)),
            p + "sampled ids": fingerprint(np.asarray(list(sampled), dtype=np.int64))}


def tiny_encoder(device: str = "cpu") -> Encoder:
    """An Encoder (no tokenizer) of ENCODER with random weights from loom.rng: matrices and
    embeddings N(0, 0.2²), biases N(0, 0.1²), LayerNorm weights 1 + N(0, 0.1²)."""
    from .llm.encoder import Encoder, _checked_config, _expected_shapes
    weights = {}
    for name, shape in _expected_shapes(_checked_config(ENCODER)).items():
        norm_weight = "LayerNorm" in name and name.endswith("weight")
        weights[name] = _random(f"bert.{name}", shape, 0.1 if norm_weight or name.endswith("bias") else 0.2,
                                1.0 if norm_weight else 0.0)
    return Encoder.from_hf(dict(ENCODER), weights, None, device=device)


def _encoder_checks(device: str) -> dict[str, str]:
    enc = tiny_encoder(device)
    return {f"encoder bert{SEP}embeddings": fingerprint(enc.embed_ids(ENCODER_IDS)),
            f"encoder bert{SEP}mean states": fingerprint(enc.embed_ids(ENCODER_IDS, normalize=False))}


# --- the golden file --------------------------------------------------------------------------------

def document(device: str = "cpu") -> dict:
    """The golden file's content: {"spec": SPEC, "fingerprints": {name: sha256 hex}}, names sorted.
    Raises RuntimeError if a check failed (an error message is never written as a fingerprint)."""
    fps = fingerprints(device)
    errors = [f"{n}: {v}" for n, v in fps.items() if v.startswith("error")]
    if errors:
        raise RuntimeError("spec checks failed, nothing written:\n  " + "\n  ".join(errors))
    return {"spec": SPEC, "fingerprints": dict(sorted(fps.items()))}


def dumps(doc: dict) -> str:
    """The golden file's text: "spec" first, then the fingerprints by name."""
    return json.dumps({"spec": doc["spec"], "fingerprints": dict(sorted(doc["fingerprints"].items()))},
                      indent=1) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loom.spec", description=__doc__.split("\n")[0])
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--write", metavar="FILE", help="write the golden file (spec, fingerprints)")
    what.add_argument("--check", metavar="FILE", help="compare with a golden file; exit 1 on any change")
    what.add_argument("--print", action="store_true", help="print the golden document to stdout")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--force", action="store_true", help="--write even if existing fingerprints changed")
    args = ap.parse_args(argv)
    if args.check:
        with open(args.check, encoding="utf-8") as fh:
            golden = json.load(fh)
        got = fingerprints(args.device)
        bad, added = compare(golden["fingerprints"], got)
        for n in bad:
            print(f"changed: {n}  {golden['fingerprints'][n][:16]} -> {got.get(n, 'missing')[:16]}")
        for n in added:
            print(f"new: {n}")
        print(f"{len(got)} checks on {args.device} against spec {golden['spec']} (loom: spec {SPEC}): "
              f"{len(bad)} changed, {len(added)} new")
        return 1 if bad or added or golden["spec"] != SPEC else 0
    doc = document(args.device)
    text = dumps(doc)
    if args.print:
        sys.stdout.write(text)
    else:
        if os.path.exists(args.write) and not args.force:
            with open(args.write, encoding="utf-8") as fh:
                old = json.load(fh)
            bad = compare(old["fingerprints"], doc["fingerprints"])[0] if old.get("spec") == SPEC else []
            if bad:
                print(f"{args.write}: {len(bad)} existing fingerprint(s) of spec {SPEC} changed "
                      f"(first: {bad[0]!r}); not written. A change of bits is a spec bump "
                      "(docs/determinism.md, 'Spec stability'); --force overwrites anyway.", file=sys.stderr)
                return 1
        atomic.write_bytes(args.write, text.encode("utf-8"))
        print(f"wrote {args.write}: spec {SPEC}, {len(json.loads(text)['fingerprints'])} fingerprints")
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["SPEC", "fingerprints", "compare", "explain", "document", "tiny_decoder", "tiny_encoder"]

"""Tiny random Llama-family checkpoints built with transformers, for the decoder, generation and loader tests.

Every model: hidden 64, 4 heads / 2 kv heads, vocab 300, seeded torch init plus seeded noise on every
parameter (transformers initialises norms to 1 and biases to 0, which would hide a mixed-up norm or bias).
"""
from __future__ import annotations

import copy
import json
import os

import numpy as np
import pytest

VOCAB = 300
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 32}
LINEAR = {"rope_type": "linear", "factor": 2.0}


def _classes(kind):
    transformers = pytest.importorskip("transformers")
    return {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
            "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
            "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
            "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM)}[kind]


def build(kind: str = "llama", *, seed: int = 0, layers: int = 2, rope_scaling=None, tied: bool = False,
          bfloat16: bool = False, **extra):
    """A transformers model in eval mode, float32 (with bfloat16-representable weights when bfloat16)."""
    torch = pytest.importorskip("torch")
    config_cls, model_cls = _classes(kind)
    settings = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=layers,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                    rms_norm_eps=1e-5, tie_word_embeddings=tied, bos_token_id=1, eos_token_id=2,
                    rope_theta=10000.0 if rope_scaling is None or rope_scaling["rope_type"] != "llama3" else 500000.0)
    if rope_scaling is not None:
        settings["rope_scaling"] = dict(rope_scaling)
    settings.update(extra)
    torch.manual_seed(seed)
    model = model_cls(config_cls(**settings)).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
        if bfloat16:
            for p in model.parameters():
                p.copy_(p.to(torch.bfloat16).to(torch.float32))
    return model


def save(model, folder, *, bfloat16: bool = False, shard: str | None = None) -> str:
    """save_pretrained (safetensors) into `folder`; bfloat16 stores the weights as BF16."""
    torch = pytest.importorskip("torch")
    folder = os.fspath(folder)
    if bfloat16:     # a copy: casting the model itself would also round its RoPE buffer to bfloat16
        model = copy.deepcopy(model).to(torch.bfloat16)
    kwargs = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(folder, **kwargs)
    return folder


def hf_logits(model, ids) -> np.ndarray:
    torch = pytest.importorskip("torch")
    with torch.no_grad():
        return model(torch.tensor(np.asarray(ids)[None])).logits[0].float().numpy()


# Against transformers' float32: deterministic mode's weight products round x's and W's rows to int16 at
# their own scales (the dispatch table's "weight" rule: about 2^-16 of each row's largest value), fast
# mode's on the CPU are float32's.
TOLERANCE = {True: 1e-3, False: 1e-4}


def relative_error(ours, reference) -> float:
    return float(np.abs(np.asarray(ours) - reference).max() / np.abs(reference).max())


def write_tokenizer(folder, *, chat_template: str | None = None) -> None:
    """A byte-level BPE tokenizer.json of exactly VOCAB tokens (trained with the tokenizers package)
    with <s> = 1 and </s> = 2, and tokenizer_config.json naming them (and a chat template)."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, pre_tokenizers, trainers
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    corpus = ["the quick brown fox jumps over the lazy dog", "hello world, hello loom", "Paris is the capital of France",
              "one two three four five six seven eight nine ten"] * 20
    tok.train_from_iterator(corpus, trainer)
    assert tok.get_vocab_size() == VOCAB, tok.get_vocab_size()
    assert tok.token_to_id("<s>") == 1 and tok.token_to_id("</s>") == 2
    tok.save(os.path.join(os.fspath(folder), "tokenizer.json"))
    cfg = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "add_bos_token": False,
           "tokenizer_class": "PreTrainedTokenizerFast"}
    if chat_template is not None:
        cfg["chat_template"] = chat_template
    with open(os.path.join(os.fspath(folder), "tokenizer_config.json"), "w", encoding="utf-8") as fh:
        json.dump(cfg, fh)


CHAT_TEMPLATE = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
                 "{% if add_generation_prompt %}<s>assistant: {% endif %}")

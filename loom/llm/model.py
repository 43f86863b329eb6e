"""loom.llm.load: a causal LM (or a BERT encoder) from a HuggingFace directory or a GGUF file.

    model = loom.llm.load("SmolLM2-135M-Instruct.Q4_1.gguf")      # or an HF directory
    for piece in model.generate("The capital of France is", max_tokens=20):
        print(piece, end="", flush=True)

A directory is read through its config.json: model_type llama / mistral / qwen2 / qwen3 becomes a
CausalLM (weights from loom.formats.hf, tokenizer from tokenizer.json when present), bert a
loom.llm.encoder.Encoder. A .gguf file is read through loom.formats.gguf (memory-mapped; quantized
weights stay quantized) and mapped to the same HF names and config by loom.formats.gguf_hf, with the
tokenizer rebuilt from its metadata. The GGUF file stays open while the model lives.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike

from ..backend import Array
from ..errors import ConfigError, FormatError
from ..formats import hf
from ..kernels.quant.block import BlockQuantized
from . import generate as gen
from . import lazy_constraint, paged_forward, tool_calls
from .batch_requests import Request
from .decoder import Decoder
from .decoder_config import ARCHITECTURES, DecoderConfig, expected_tensors
from .model_engine import ModelEngines

if TYPE_CHECKING:
    from .encoder import Encoder
    from .tokenizer import Tokenizer

ENCODERS = ("bert",)


def load(path: str | os.PathLike[str], device: str = "cpu", *, dequantize: bool = False) -> CausalLM | Encoder:
    """A CausalLM (or an Encoder for BERT-style models) from an HF directory or a .gguf file.

    dequantize: a GGUF's block-quantized weights become float32 arrays at load (4-8x their memory),
    so that no step dequantizes them again: for CPUs without the compiled quantized kernels (numba
    missing, or Pyodide in a browser). Deterministic mode gives the same bits either way (its
    products are exact sums of the same float32 values)."""
    p = os.fspath(path)
    if os.path.isdir(p):
        return _load_dir(p, device)
    if not os.path.isfile(p):
        raise FormatError(f"{p}: no such file or directory (expected a .gguf file or a HuggingFace model directory)")
    with open(p, "rb") as fh:
        magic = fh.read(4)
    if magic != b"GGUF":
        raise FormatError(f"{p}: not a GGUF file (starts with {magic!r}, not b'GGUF') and not a model directory")
    return _load_gguf(p, device, dequantize)


def _supported_check(cfg: dict, where: str) -> str:
    kind = cfg.get("model_type")
    if kind not in ARCHITECTURES + ENCODERS:
        raise ConfigError(f"{where}: model_type", f"unsupported architecture {kind!r}; supported: "
                                                  f"{', '.join(ARCHITECTURES + ENCODERS)}")
    return kind


def _load_dir(folder: str, device: str):
    cfg = hf.read_config(folder)
    if _supported_check(cfg, os.path.join(folder, hf.CONFIG)) in ENCODERS:
        from .encoder import Encoder
        return Encoder.from_dir(folder, device=device)
    config = DecoderConfig.from_hf(cfg)
    cfg, weights = hf.read_dir(folder, "cpu", expected=expected_tensors(config))
    tokenizer = None
    if os.path.isfile(os.path.join(folder, "tokenizer.json")):
        from .tokenizer import Tokenizer
        tokenizer = Tokenizer.from_dir(folder)
    eos = _ids(cfg.get("eos_token_id"))
    generation = os.path.join(folder, "generation_config.json")
    if os.path.isfile(generation):
        try:
            with open(generation, encoding="utf-8") as fh:
                eos |= _ids(json.load(fh).get("eos_token_id"))
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
            raise FormatError(f"{generation}: not a JSON object ({exc})") from None
    return CausalLM(Decoder(config, weights, device), tokenizer, cfg, eos)


def _load_gguf(path: str, device: str, dequantize: bool = False):
    from ..formats import gguf, gguf_hf
    from .tokenizer import Tokenizer
    f = gguf.read(path)
    cfg = gguf_hf.hf_config(f.metadata, f)
    kind = _supported_check(cfg, path)
    weights = gguf_hf.hf_weights(f)
    if dequantize:     # every array its own (copies of the file's float tensors), so the map can close
        weights = {k: w.dequantize() if isinstance(w, BlockQuantized) else np.array(w) for k, w in weights.items()}
    tokenizer = Tokenizer.from_gguf(f.metadata)
    if kind in ENCODERS:
        from .encoder import Encoder
        return Encoder.from_hf(cfg, weights, tokenizer, device=device)
    model = CausalLM(Decoder(DecoderConfig.from_hf(cfg), weights, device), tokenizer, cfg,
                     _ids(cfg.get("eos_token_id")))
    if dequantize:
        f.close()
    else:
        model._source = f        # the weights view its memory map
    return model


def _ids(value) -> set[int]:
    if value is None:
        return set()
    items = value if isinstance(value, (list, tuple)) else [value]
    if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in items):
        raise ConfigError("eos_token_id", f"expected a token id or a list of them, got {value!r}")
    return set(items)


class CausalLM:
    """A decoder with its tokenizer: logits, streamed generation and chat."""

    def __init__(self, decoder: Decoder, tokenizer: Tokenizer | None, config: dict, eos_ids: Iterable[int] = ()):
        self.decoder, self.tokenizer, self.config = decoder, tokenizer, config
        eos = set(eos_ids) | set(getattr(tokenizer, "eos_ids", ()) or ())
        self.eos_ids = tuple(sorted(i for i in eos if i < decoder.config.vocab_size))
        self._source = None
        self._engines: ModelEngines | None = None

    @property
    def device(self) -> str:
        return self.decoder.device

    def logits(self, ids: ArrayLike) -> Array:
        """float32 logits [T, vocab] for token ids [T] (a fresh sequence), on the model's device."""
        ids = np.asarray(ids)
        c = self.decoder.config
        if ids.ndim != 1 or ids.size == 0 or ids.dtype.kind not in "iu":
            raise ConfigError("ids", f"expected a non-empty 1-D list of token ids, got {ids.dtype} {list(ids.shape)}")
        bad = (ids < 0) | (ids >= c.vocab_size)
        if bad.any():
            raise ConfigError("ids", f"token id {int(ids[bad][0])} at index {int(np.flatnonzero(bad)[0])} is outside "
                                     f"the vocabulary [0, {c.vocab_size})")
        if ids.size > c.max_positions:
            raise ConfigError("ids", f"{ids.size} tokens exceed the model's context of {c.max_positions} "
                                     f"(max_position_embeddings)")
        return paged_forward.sequence_logits(self.decoder, ids.astype(np.int64))

    def encode_prompt(self, prompt: str | Iterable[int]) -> list[int]:
        if isinstance(prompt, str):
            return self._tokenizer("prompt").encode(prompt)
        return gen.token_ids(prompt)

    def _tokenizer(self, what: str):
        if self.tokenizer is None:
            raise ConfigError(what, "this model has no tokenizer (no tokenizer.json beside config.json); "
                                    "pass token ids and use generate_ids")
        return self.tokenizer

    def generate_ids(self, prompt: str | Iterable[int], *, max_tokens: int = 256, temperature: float = 0.0,
                     top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0, repetition_penalty: float = 1.0,
                     seed: int = 0, stop_ids: Iterable[int] | None = None, truncate: bool = False,
                     json_schema: dict | bool | None = None, constraint: gen.Constraint | None = None) -> Iterator[int]:
        """The generated token ids (stop ids excluded); settings as in generate(). The sequence runs on
        the model's own batch engine (model_engine.py): in deterministic mode its tokens are the bits
        it gets in any batch; close() the iterator to stop early. constraint: a fresh gen.Constraint of
        the caller's (json_schema makes one; not both)."""
        if json_schema is not None and constraint is not None:
            raise ConfigError("constraint", "give 'json_schema' or a constraint, not both")
        sampling = gen.Sampling(temperature, top_k, top_p, min_p, repetition_penalty, seed)
        stops = self.eos_ids if stop_ids is None else gen.check_stop_ids(stop_ids, self.decoder.config.vocab_size)
        c = self.decoder.config
        ids = gen.fit_prompt(self.encode_prompt(prompt), max_tokens, c.max_positions, c.vocab_size, truncate)
        if json_schema is not None:
            constraint = self.json_constraint(json_schema)
        return self.engines.stream(Request(ids, max_tokens, sampling, tuple(stops), constraint=constraint))

    @property
    def engines(self) -> ModelEngines:
        """The batch engines generate_ids runs on (a lone sequence is a batch of one; loom/llm/model_engine.py)."""
        if self._engines is None:
            self._engines = ModelEngines(self)
        return self._engines

    def generate(self, prompt: str | Iterable[int], *, max_tokens: int = 256, temperature: float = 0.0,
                 top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0, repetition_penalty: float = 1.0,
                 seed: int = 0, stop: str | Iterable[str] = (), stop_ids: Iterable[int] | None = None,
                 truncate: bool = False, json_schema: dict | bool | None = None,
                 constraint: gen.Constraint | None = None) -> Iterator[str]:
        """Stream the continuation of `prompt` (text, encoded with the tokenizer's special tokens, or
        token ids) as text pieces. temperature 0 is greedy; stop: strings that end the text (not
        emitted); stop_ids: token ids that end it (default: the end-of-sequence ids); json_schema:
        the text is JSON valid against this schema ({"type": "object"}: any object; the subset and
        spelling of docs/llm.md's structured output), ending when the value does; constraint: a fresh
        gen.Constraint of the caller's instead. Settings are checked here, before the first piece: bad
        ones raise ConfigError."""
        tokenizer = self._tokenizer("prompt")
        stop = gen.check_stop(stop)
        tokens = self.generate_ids(prompt, max_tokens=max_tokens, temperature=temperature, top_k=top_k,
                                   top_p=top_p, min_p=min_p, repetition_penalty=repetition_penalty, seed=seed,
                                   stop_ids=stop_ids, truncate=truncate, json_schema=json_schema,
                                   constraint=constraint)
        return gen.stream_text(tokens, tokenizer, stop)

    def generate_batch(self, prompts: Iterable[str | Iterable[int]], *, max_tokens: int = 256,
                       temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0,
                       repetition_penalty: float = 1.0, seed: int = 0, stop: str | Iterable[str] = (),
                       stop_ids: Iterable[int] | None = None, max_batch: int = 16,
                       json_schema: dict | bool | None = None) -> list:
        """Generate for many prompts together (continuous batching over a paged KV cache:
        loom/llm/batching.py); a list of batch_requests.Result (tokens, text, finish_reason), one per
        prompt in order. In deterministic mode each result is what generate_ids gives for its prompt
        alone. Prompt i samples with seed + i; json_schema as in generate(), for every prompt."""
        from .batching import BatchEngine
        prompts = [self.encode_prompt(p) for p in prompts]
        stop = gen.check_stop(stop)
        stop_ids = None if stop_ids is None else tuple(stop_ids)
        requests = [Request(ids, max_tokens, gen.Sampling(temperature, top_k, top_p, min_p, repetition_penalty, seed + i),
                            stop_ids, stop,
                            constraint=None if json_schema is None else self.json_constraint(json_schema))
                    for i, ids in enumerate(prompts)]
        return BatchEngine(self, max_batch=max_batch).generate(requests)

    def json_constraint(self, schema: dict | bool) -> gen.Constraint:
        """A fresh constraint keeping the generated text JSON valid against `schema` (for one
        generation; the masks behind it are shared by every constraint of the same schema). A schema
        outside the supported subset raises json_schema.SchemaError naming its path."""
        from . import token_mask
        from .json_constraint import JsonGrammar
        vocabulary = token_mask.Vocabulary.of(self._tokenizer("json_schema"), self.decoder.config.vocab_size)
        key = "json_schema:" + json.dumps(schema, sort_keys=True)
        return token_mask.grammar_masks(vocabulary, key, lambda: JsonGrammar.from_schema(schema, "json_schema")).constraint()

    def chat_ids(self, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
        """The token ids of `messages` rendered with the chat template, ready for the reply; `tools`
        (OpenAI's function tools, loom.llm.tool_calls.check_tools) are rendered by the template too."""
        tokenizer = self._tokenizer("messages")
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tools=tools)
        return tokenizer.encode(text, add_special_tokens=False)   # the template writes its own BOS

    def chat(self, messages: list[dict], tools: list[dict] | None = None, **sampling: Any) -> Iterator[str]:
        """Stream the assistant's reply to `messages` ([{"role": ..., "content": ...}, ...]) as text; with
        `tools` (OpenAI's function tools) the template renders them and the text may hold the model's
        calls in its own format (`chat_message` parses them)."""
        if tools is None:
            return self.generate(self.chat_ids(messages), **sampling)
        return self.generate(self.chat_ids(tool_calls.for_template(messages), tools=tool_calls.check_tools(tools)),
                             **sampling)

    def chat_message(self, messages: list[dict], tools: list[dict] | None = None, tool_choice: Any = None,
                     **sampling: Any) -> dict:
        """The assistant's reply as OpenAI's message: {"role": "assistant", "content": ..., "tool_calls": [...]}
        (tool_calls only where it makes calls). tool_choice as OpenAI's (None: "auto" with tools): with
        "required" or a named function the reply is one call decoded under the JSON Schema of its
        parameters, so its arguments validate; with "none" the template sees no tools. A template that
        renders tools in no format loom.llm.tool_calls reads raises ConfigError("tools", ...)."""
        checked = None if tools is None else tool_calls.check_tools(tools)
        mode, name = tool_calls.check_choice(tool_choice, checked)
        shown = tool_calls.for_template(messages)
        if checked is None or mode == "none":
            return {"role": "assistant", "content": "".join(self.generate(self.chat_ids(shown), **sampling))}
        tokenizer = self._tokenizer("messages")
        fmt = tool_calls.format_for(tokenizer.chat_template)
        ids = self.chat_ids(shown, tools=checked)
        forced, called = mode != "auto", None
        if forced:          # the reply is one call's JSON, after the format's prefix
            prefix, schema, called = tool_calls.forced(checked, fmt, name)
            ids = ids + tokenizer.encode(prefix, add_special_tokens=False)
            sampling = {**sampling, "json_schema": schema}
        elif sampling.get("json_schema") is None:   # auto: a call, once its marker is written, under its schema
            make = lazy_constraint.for_tools(checked, fmt, True, tokenizer, self.decoder.config.vocab_size)
            sampling = {**sampling, "constraint": make and make()}
        content, calls = tool_calls.reply("".join(self.generate(ids, **sampling)), fmt,
                                          [t["function"]["name"] for t in checked], forced, called=called,
                                          only=tool_calls.forced_only(checked, name) if forced else None)
        message = {"role": "assistant", "content": content}
        if calls:
            message["tool_calls"] = calls
        return message

"""The page's language model: what worker.js runs in Pyodide, and what `loom web build --llm GGUF`
runs natively for the reference the page compares itself with (the same code on both sides).

A GGUF decoder (SmolLM2-135M's, for one) is loaded with its weights dequantized to float32
(loom.llm.load(dequantize=True): Pyodide has no compiled quantized kernels, and dequantizing once
beats dequantizing in every step), and generates greedily, streaming its text piece by piece. In
deterministic mode (the default) the generated ids and the logits of the whole sequence are the
native run's bit for bit; fast mode is faster and may differ in the last bits.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from .. import mode, verify
from ..errors import ConfigError

MAX_TOKENS = 512                 # the page's limit: generation runs in the tab, with no way to stop it
REFERENCE_PROMPT = "Explain in a few sentences why the sky is blue."
REFERENCE_TOKENS = 24


class LanguageModel:
    """A decoder loaded from a GGUF file, with the page's generate call."""

    def __init__(self, path: str | os.PathLike[str], name: str | None = None):
        """name: what the page calls the model (default: the file's name)."""
        from ..llm import CausalLM, load
        model = load(path, dequantize=True)
        if not isinstance(model, CausalLM):
            raise ConfigError("model", f"{os.fspath(path)} is an encoder ({type(model).__name__}); the page "
                                       "generates text with a decoder (llama, mistral, qwen2, qwen3)")
        if model.tokenizer is None:
            raise ConfigError("model", f"{os.fspath(path)} has no tokenizer: the page needs one to read prompts")
        self.model = model
        c = model.decoder.config
        self.info = {"name": name or os.path.basename(os.fspath(path)), "arch": c.arch, "layers": c.layers,
                     "hidden": c.hidden, "vocab": c.vocab_size, "chat": model.tokenizer.chat_template is not None}

    def prompt_ids(self, text: str, chat: bool = True) -> list[int]:
        """The prompt's token ids: as one user turn of the model's chat template when it has one (and
        chat is set), else the text as it is."""
        if not isinstance(text, str) or not text:
            raise ConfigError("prompt", f"expected some text, got {text!r}")
        tok = self.model.tokenizer
        if chat and tok.chat_template is not None:
            return self.model.chat_ids([{"role": "user", "content": text}])   # the template writes its BOS
        return tok.encode(text)

    def generate(self, text: str, max_tokens: int, deterministic: bool = True, chat: bool = True,
                 on_piece: Callable[[str], Any] | None = None) -> dict:
        """Greedy continuation of the prompt, at most max_tokens ids (1..MAX_TOKENS), on_piece getting
        each piece of text as soon as it is final. Returns the ids, the text, the timings (the first
        token includes the prompt's prefill; tokens/s counts the tokens after it) and, in deterministic
        mode, the fingerprint of the logits of the prompt and the generated ids in one forward."""
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= MAX_TOKENS:
            raise ConfigError("max_tokens", f"expected an integer in 1..{MAX_TOKENS}, got {max_tokens!r}")
        prompt = self.prompt_ids(text, chat)
        stream = self.model.tokenizer.stream_decoder(skip_special_tokens=True)
        ids: list[int] = []
        pieces: list[str] = []
        with mode.deterministic(bool(deterministic)):
            start = time.perf_counter()
            first = None
            for token in self.model.generate_ids(prompt, max_tokens=max_tokens):
                if first is None:
                    first = time.perf_counter() - start
                ids.append(token)
                piece = stream.push(token)
                if piece:
                    pieces.append(piece)
                    if on_piece is not None:
                        on_piece(piece)
            seconds = time.perf_counter() - start
            tail = stream.flush()
            if tail:
                pieces.append(tail)
                if on_piece is not None:
                    on_piece(tail)
            # one more forward over everything: only where there is a native run to compare with
            fingerprint = verify.fingerprint(self.model.logits(prompt + ids)) if deterministic else None
        later = len(ids) - 1
        return {"ids": ids, "text": "".join(pieces), "prompt_tokens": len(prompt), "tokens": len(ids),
                "seconds": seconds, "first_token_s": first,
                "tokens_per_s": later / (seconds - first) if later > 0 and seconds > first else None,
                "fingerprint": fingerprint, "deterministic": bool(deterministic)}


def reference(path: str | os.PathLike[str]) -> dict:
    """The native run the page compares with: REFERENCE_TOKENS greedy tokens of REFERENCE_PROMPT
    in deterministic mode."""
    result = LanguageModel(path).generate(REFERENCE_PROMPT, REFERENCE_TOKENS)
    return {"prompt": REFERENCE_PROMPT, "max_tokens": REFERENCE_TOKENS, **result}

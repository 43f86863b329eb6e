"""Language models: Llama-family decoders and BERT-style encoders from GGUF files and HuggingFace
directories, with exact tokenization, a KV cache, sampling and streaming (loom.llm.load)."""
from .model import CausalLM, load

__all__ = ["CausalLM", "load"]

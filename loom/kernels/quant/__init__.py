"""Loom's quantization, one roof for both systems:

- stored.py: `QuantizedTensor`, weights kept in a file's block-quantized form (GGUF's GGML block
  types, gguf.py) and dequantized only inside the products that use them (language models);
- affine.py: `QTensor`, the model file's integer quantization of a network's weights (int8/int4
  with a scale and zero point per tensor or channel, docs/dtypes.md).
"""

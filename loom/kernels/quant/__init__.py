"""Loom's quantization, one roof and one name scheme for both systems (`<Scheme>Quantized`):

- affine.py: `AffineQuantized`, value = (q - zero_point) * scale: the model file's quantization of a
  network's weights to any type of loom/dtypes.py, one scale per tensor or channel (docs/dtypes.md);
- block.py: `BlockQuantized`, a 2-D weight kept in a file's block-quantized form (GGUF's GGML block
  types, codecs in gguf.py) and dequantized only inside the products that use them (language models);
- gemv.py: the portable block GEMV used by block.py for products of a few rows.
"""

"""Loom from C: libloom.so, loom.h and loom.pc (`loom capi build`, docs/capi.md).

build.py generates and compiles the library (cffi's embedding mode); runtime.py is its Python side
(attaching the exported functions, the library-wide mode), on abi.py's handles, status codes and
argument conversions; network_api.py and tensor_api.py implement the header's network ABI and
tensor API. Nothing here is imported by `import loom`.
"""

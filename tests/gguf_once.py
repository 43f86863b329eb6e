"""transformers' GGUF loader, as the tests use it for a reference, without its repeated work.

Loading a model with transformers takes two calls of load_gguf_checkpoint (the config first, to build
the model whose names the tensors get), and each constructs gguf.GGUFReader(path) again: 4 s for
SmolLM2's 98 MB file, most of it parsing the 49,152-token vocabulary. Its name mapping calls
gguf.get_tensor_name_map(arch, layers) once per module of the model, the same two arguments each
time: about 400 calls of 15 ms for SmolLM2. Within `parsed_once()` both return what they returned
the first time for the same arguments. Neither changes what transformers computes: a reader only
reads its file (which no test writes meanwhile), and the map is a new object built from its two
arguments alone, only looked up in. Nothing is kept after the block.
"""
from __future__ import annotations

import contextlib
import functools
import os
from unittest import mock


@contextlib.contextmanager
def parsed_once():
    gguf = __import__("gguf")
    readers = {}
    real_reader = gguf.GGUFReader

    def reader(path, *args, **kwargs):
        key = (os.path.realpath(path), args, tuple(sorted(kwargs.items())))
        if key not in readers:
            readers[key] = real_reader(path, *args, **kwargs)
        return readers[key]

    name_map = functools.lru_cache(maxsize=None)(gguf.get_tensor_name_map)
    with mock.patch.object(gguf, "GGUFReader", reader), mock.patch.object(gguf, "get_tensor_name_map", name_map):
        yield

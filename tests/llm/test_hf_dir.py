"""HuggingFace directories: single-file, sharded and bfloat16 checkpoints load to transformers' logits;
malformed directories raise FormatError / ConfigError naming the file and tensor."""
import json
import os
import shutil
import sys

import numpy as np
import pytest

import loom
import loom.llm
from loom.errors import ConfigError, FormatError
from loom.formats import hf, safetensors
from loom.kernels.quant.block import BlockQuantized

sys.path.insert(0, os.path.dirname(__file__))
import tiny_decoders as td  # noqa: E402

IDS = np.random.default_rng(4).integers(0, td.VOCAB, size=21)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    model = td.build("qwen2", seed=3)
    return model, td.save(model, tmp_path_factory.mktemp("single"))


@pytest.mark.parametrize("mode", [True, False])
def test_sharded_checkpoint(tmp_path, mode):
    model = td.build("llama", seed=5, tied=True, rope_scaling=td.LLAMA3)
    folder = td.save(model, tmp_path, shard="40KB")
    index = json.loads((tmp_path / hf.INDEX).read_text())
    assert len(set(index["weight_map"].values())) > 3 and not (tmp_path / hf.SINGLE).exists()
    with loom.deterministic(mode):
        logits = loom.llm.load(folder).logits(IDS)
    assert td.relative_error(logits, td.hf_logits(model, IDS)) < td.TOLERANCE[mode]


@pytest.mark.parametrize("kind", ["llama", "qwen3"])
def test_bfloat16_checkpoint_stays_bfloat16(tmp_path, kind):
    model = td.build(kind, seed=6, bfloat16=True)              # float32 reference with bf16-exact weights
    folder = td.save(model, tmp_path, bfloat16=True, shard="60KB")
    config, weights = hf.read_dir(folder)
    q = weights["model.layers.0.self_attn.q_proj.weight"]
    assert isinstance(q, BlockQuantized) and q.qtype == "BF16" and q.nbytes == 2 * q.shape[0] * q.shape[1]
    norm = weights["model.layers.0.input_layernorm.weight"]
    assert isinstance(norm, np.ndarray) and norm.dtype == np.float32          # 1-D: widened
    lm = loom.llm.load(folder)
    for mode in (True, False):
        with loom.deterministic(mode):
            assert td.relative_error(lm.logits(IDS), td.hf_logits(model, IDS)) < td.TOLERANCE[loom.is_deterministic()]


def test_float32_tensors_are_views_of_the_file(single):
    _, folder = single
    _, weights = hf.read_dir(folder)
    w = weights["model.embed_tokens.weight"]
    assert not w.flags.writeable and not w.flags.owndata


def _copy(folder, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(folder, target)
    return target


def test_missing_config(single, tmp_path):
    folder = _copy(single[1], tmp_path)
    os.remove(folder / "config.json")
    with pytest.raises(FormatError, match=r"config.json: missing"):
        loom.llm.load(folder)


def test_bad_config_json(single, tmp_path):
    folder = _copy(single[1], tmp_path)
    (folder / "config.json").write_text('{"model_type": "llama",')
    with pytest.raises(FormatError, match=r"config.json: not valid JSON"):
        loom.llm.load(folder)


def test_unsupported_architecture_lists_the_supported(single, tmp_path):
    folder = _copy(single[1], tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(dict(cfg, model_type="gpt_neox")))
    with pytest.raises(ConfigError, match="'gpt_neox'; supported: llama, mistral, qwen2, qwen3, bert"):
        loom.llm.load(folder)


def _rewrite(file, change):
    tensors, metadata = safetensors.load(file)
    tensors = {k: np.array(v) for k, v in tensors.items()}
    change(tensors)
    safetensors.save(file, tensors, metadata)


def test_missing_tensor(single, tmp_path):
    folder = _copy(single[1], tmp_path)
    _rewrite(folder / hf.SINGLE, lambda t: t.pop("model.layers.1.self_attn.k_proj.bias"))
    with pytest.raises(FormatError, match="tensor 'model.layers.1.self_attn.k_proj.bias' is missing"):
        loom.llm.load(folder)


def test_unexpected_tensor(single, tmp_path):
    folder = _copy(single[1], tmp_path)
    _rewrite(folder / hf.SINGLE, lambda t: t.update({"model.layers.0.self_attn.o_proj.bias": np.zeros(64, np.float32)}))
    with pytest.raises(FormatError, match=r"model.safetensors: unexpected tensor 'model.layers.0.self_attn.o_proj.bias'"):
        loom.llm.load(folder)


def test_rope_buffer_of_old_checkpoints_is_accepted(single, tmp_path):
    model, folder = single
    folder = _copy(folder, tmp_path)
    _rewrite(folder / hf.SINGLE, lambda t: t.update({"model.layers.0.self_attn.rotary_emb.inv_freq": np.ones(8, np.float32)}))
    assert td.relative_error(loom.llm.load(folder).logits(IDS), td.hf_logits(model, IDS)) < td.TOLERANCE[loom.is_deterministic()]


def test_shape_mismatch(single, tmp_path):
    folder = _copy(single[1], tmp_path)
    _rewrite(folder / hf.SINGLE, lambda t: t.update({"model.layers.0.mlp.down_proj.weight": np.zeros((64, 95), np.float32)}))
    with pytest.raises(FormatError, match=r"model.safetensors: tensor 'model.layers.0.mlp.down_proj.weight' has "
                                          r"shape \[64, 95\], config.json implies \[64, 96\]"):
        loom.llm.load(folder)


def test_integer_tensor_is_rejected(single, tmp_path):
    folder = _copy(single[1], tmp_path)
    _rewrite(folder / hf.SINGLE, lambda t: t.update({"model.norm.weight": np.ones(64, np.int32)}))
    with pytest.raises(FormatError, match="'model.norm.weight' has dtype int32; model weights must be F32, F64, F16 or BF16"):
        loom.llm.load(folder)


@pytest.mark.parametrize("cut", [5, 100, -1000, -1])
def test_truncated_safetensors(single, tmp_path, cut):
    folder = _copy(single[1], tmp_path)
    data = (folder / hf.SINGLE).read_bytes()
    (folder / hf.SINGLE).write_bytes(data[:cut])
    with pytest.raises(FormatError, match="model.safetensors"):
        loom.llm.load(folder)


def test_no_weights_file(single, tmp_path):
    folder = _copy(single[1], tmp_path)
    os.rename(folder / hf.SINGLE, folder / "pytorch_model.bin")
    with pytest.raises(FormatError, match=r"no model.safetensors or model.safetensors.index.json; found pytorch_model.bin"):
        loom.llm.load(folder)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    return td.save(td.build("llama", seed=8), tmp_path_factory.mktemp("sharded"), shard="40KB")


def _index(folder):
    return json.loads((folder / hf.INDEX).read_text())


def test_sharded_missing_shard(sharded, tmp_path):
    folder = _copy(sharded, tmp_path)
    shard = sorted(set(_index(folder)["weight_map"].values()))[1]
    os.remove(folder / shard)
    with pytest.raises(FormatError, match=rf"{shard}: missing \(the shard index puts tensor '.*' there\)"):
        loom.llm.load(folder)


def test_sharded_index_disagrees_with_shards(sharded, tmp_path):
    folder = _copy(sharded, tmp_path)
    index = _index(folder)
    name, shard = next(iter(index["weight_map"].items()))
    other = next(s for s in sorted(set(index["weight_map"].values())) if s != shard)
    index["weight_map"][name] = other
    (folder / hf.INDEX).write_text(json.dumps(index))
    with pytest.raises(FormatError, match=rf"tensor '{name}' is (not assigned to this shard|missing \(the shard index)"):
        loom.llm.load(folder)


def test_sharded_index_path_escape(sharded, tmp_path):
    folder = _copy(sharded, tmp_path)
    index = _index(folder)
    name = next(iter(index["weight_map"]))
    index["weight_map"][name] = "../elsewhere.safetensors"
    (folder / hf.INDEX).write_text(json.dumps(index))
    with pytest.raises(FormatError, match=rf"tensor '{name}' maps to '../elsewhere.safetensors', not a file name"):
        loom.llm.load(folder)


def test_sharded_truncated_shard(sharded, tmp_path):
    folder = _copy(sharded, tmp_path)
    shard = sorted(set(_index(folder)["weight_map"].values()))[2]
    data = (folder / shard).read_bytes()
    (folder / shard).write_bytes(data[:-7])
    with pytest.raises(FormatError, match=shard):
        loom.llm.load(folder)


def test_load_path_errors(tmp_path):
    with pytest.raises(FormatError, match="no such file or directory"):
        loom.llm.load(tmp_path / "absent")
    junk = tmp_path / "model.bin"
    junk.write_bytes(b"\x00" * 16)
    with pytest.raises(FormatError, match="not a GGUF file"):
        loom.llm.load(junk)


def test_model_without_tokenizer_explains(single):
    _, folder = single
    lm = loom.llm.load(folder)
    assert lm.tokenizer is None
    with pytest.raises(ConfigError, match="no tokenizer"):
        lm.generate("hello")
    assert len(list(lm.generate_ids([1, 2, 3], max_tokens=4, stop_ids=[]))) == 4

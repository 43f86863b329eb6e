"""`loom chat`'s /tools and /result (issue 62): tools from an OpenAI-style JSON file rendered into every
prompt, the model's calls shown on stderr and kept in the conversation, each answered with /result ID
TEXT (the model replies once all are), bad files, ids and templates noted without ending the chat."""
import argparse
import io
import json
import os
import sys

import pytest

import loom.llm
from loom.cli import chat as chat_cli
from loom.llm import tool_calls

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "llm"))
import tiny_decoders as td  # noqa: E402
from test_tool_calls import hermes  # noqa: E402, F401  (the tiny model whose template takes tools)

TOOLS = [{"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}]


def _run(model, folder, text, monkeypatch, replies):
    """The chat over stdin `text` with the model's replies scripted (each a string); returns (stdout, the
    message lists its prompts rendered, the tools rendered with them)."""
    rendered = []
    real = model.chat_ids

    def spy(messages, tools=None):
        rendered.append(([dict(m) for m in messages], tools))
        return real(messages, tools=tools)
    scripted = iter(replies)
    monkeypatch.setattr(model, "chat_ids", spy)
    monkeypatch.setattr(chat_cli, "load_causal", lambda path, device: model)
    monkeypatch.setattr(chat_cli, "stream", lambda model, ids, stats, **options: iter([next(scripted)]))
    monkeypatch.setattr(tool_calls.secrets, "token_hex", lambda n: "abc")
    parser = argparse.ArgumentParser()
    chat_cli.add_arguments(parser)
    out = io.StringIO()
    assert chat_cli.run(parser.parse_args(["--model", folder, "--no-stats"]), stdin=io.StringIO(text), stdout=out) == 0
    return out.getvalue(), rendered


def test_a_call_is_shown_answered_and_replied_to(hermes, tmp_path, monkeypatch, capsys):  # noqa: F811
    model, folder = hermes
    path = tmp_path / "tools.json"
    path.write_text(json.dumps({"tools": TOOLS}))
    call = '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'
    out, rendered = _run(model, folder, f"/tools {path}\n/tools\nwhat time is it?\n/result call_nope 1\n"
                                        "/result call_abc noon\nthanks\n", monkeypatch, [call, "It is noon.", "ok"])
    err = capsys.readouterr().err
    assert "loom: tools: get_time" in err
    assert "loom: tool call call_abc: get_time {} (answer with /result call_abc TEXT)" in err
    assert "no open tool call call_nope; open: call_abc" in err
    assert out == call + "\nIt is noon.\nok\n"
    (first, tools1), (second, tools2), (third, _) = rendered
    assert tools1 == tools2 == tool_calls.check_tools(TOOLS)
    assert first == [{"role": "user", "content": "what time is it?"}]
    asked = second[1]
    assert asked["tool_calls"][0]["function"] == {"name": "get_time", "arguments": {}}     # objects for templates
    assert second[2] == {"role": "tool", "tool_call_id": "call_abc", "content": "noon"}
    assert third[-1] == {"role": "user", "content": "thanks"} and third[3] == {"role": "assistant",
                                                                            "content": "It is noon."}


def test_tools_off_bad_files_and_templates_are_noted(hermes, tmp_path, monkeypatch, capsys):  # noqa: F811
    model, folder = hermes
    good = tmp_path / "tools.json"
    good.write_text(json.dumps(TOOLS))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"type": "function", "function": {"name": "bad name"}}]))
    out, rendered = _run(model, folder, f"/tools {tmp_path / 'missing.json'}\n/tools {bad}\n/tools {good}\n/tools off\n"
                                        "/tools\nhi\n/result call_abc x\n", monkeypatch, ["hello"])
    err = capsys.readouterr().err
    assert "missing.json" in err and "tools[0].function.name" in err and "loom: tools: none" in err
    assert rendered == [([{"role": "user", "content": "hi"}], None)]       # off: plain prompts
    assert "no open tool call call_abc; open: none" in err


def test_a_template_without_tools_is_noted(tmp_path, monkeypatch, capsys):
    pytest.importorskip("tokenizers")
    pytest.importorskip("jinja2")
    folder = tmp_path / "plain"
    td.save(td.build("llama", seed=5), folder)
    td.write_tokenizer(folder, chat_template=td.CHAT_TEMPLATE)
    (tmp_path / "tools.json").write_text(json.dumps(TOOLS))
    _run(loom.llm.load(folder), str(folder), f"/tools {tmp_path / 'tools.json'}\n/tools\n", monkeypatch, [])
    err = capsys.readouterr().err
    assert "renders no tools" in err and "loom: tools: none" in err

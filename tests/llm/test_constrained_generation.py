"""Constrained generation: a tiny random decoder over an awkward 64-token vocabulary (quotes inside
tokens, escapes and UTF-8 characters cut between tokens) always writes JSON that parses and meets the
schema, alone (generate_ids) and batched (BatchEngine, with the bits it gets alone); masks change
sampling only by dropping tokens."""
import json
import os
import sys

import numpy as np
import pytest

import loom
from loom.errors import ConfigError
from loom.llm import generate as gen
from loom.llm.batch_requests import plain_greedy
from loom.llm.batching import BatchEngine, Request
from loom.llm.decoder import Decoder
from loom.llm.decoder_config import DecoderConfig, expected_tensors
from loom.llm.json_constraint import JsonGrammar
from loom.llm.model import CausalLM
from loom.llm.token_mask import GrammarMasks, Vocabulary
from loom.spec import DECODERS

sys.path.insert(0, os.path.dirname(__file__))
from test_json_constraint import EOS, PIECES  # noqa: E402

jsonschema = pytest.importorskip("jsonschema")

# names the vocabulary can spell letter by letter (a real one spells anything: every byte is a token)
RECORD = {"type": "object",
          "properties": {"a": {"type": "string", "maxLength": 4},
                         "ab": {"type": "integer"},
                         "b": {"type": "array", "items": {"enum": ["a", "b", 1]}, "maxItems": 2},
                         "e": {"type": ["boolean", "null"]}},
          "required": ["a", "ab"], "additionalProperties": False}
SCHEMAS = [RECORD, {"type": "array", "items": {"type": "string", "maxLength": 3}, "minItems": 1, "maxItems": 3},
           {"anyOf": [{"type": "number"}, {"type": "object", "properties": {"a": {"type": "string", "maxLength": 2}},
                                            "required": ["a"], "additionalProperties": False}]}]
SETTINGS = [dict(temperature=0.0), dict(temperature=0.7, seed=1), dict(temperature=1.0, seed=2, top_p=0.9),
            dict(temperature=1.3, seed=3, top_k=8)]
PROMPT = [5, 9, 17]
MAX_TOKENS = 120


@pytest.fixture(scope="module")
def model():
    """DECODERS["llama"] (vocabulary 64) with random weights and room for 256 positions."""
    hf = {**DECODERS["llama"], "max_position_embeddings": 256}
    cfg = DecoderConfig.from_hf(hf)
    rng = np.random.default_rng(7)
    weights = {name: ((1.0 + 0.1 * rng.standard_normal(shape)) if name.endswith("norm.weight")
                      else 0.3 * rng.standard_normal(shape)).astype(np.float32)
               for name, shape in expected_tensors(cfg)[0].items()}
    return CausalLM(Decoder(cfg, weights), None, hf, eos_ids=[EOS])


@pytest.fixture(scope="module")
def vocabulary():
    return Vocabulary(PIECES)


def generate_alone(model, prompt, sampling, constraint):
    """The tokens of one constrained request on the model's own engine (what generate_ids runs)."""
    return list(model.engines.stream(Request(list(prompt), MAX_TOKENS, sampling, (EOS,), constraint=constraint)))


def text_of(ids):
    return b"".join(PIECES[i] for i in ids)


def check_output(grammar, schema, ids, finished):
    """A finished output is a whole valid value; an unfinished one (max_tokens ran out) a valid prefix."""
    data = text_of(ids)
    if finished:
        jsonschema.validate(json.loads(data.decode("utf-8")), schema)
        assert grammar.accepts(data)
    else:
        assert grammar.accepts_prefix(data) and len(ids) == MAX_TOKENS


@pytest.mark.parametrize("schema", SCHEMAS, ids=["record", "strings", "any-of"])
def test_generate_ids_writes_valid_json(model, vocabulary, schema):
    masks = GrammarMasks(JsonGrammar.from_schema(schema), vocabulary)
    done = 0
    with loom.deterministic(True):
        for settings in SETTINGS:
            c = masks.constraint()
            ids = generate_alone(model, PROMPT, gen.Sampling(**settings), c)
            assert EOS not in ids
            check_output(masks.grammar, schema, ids, c.complete)
            done += c.complete
    assert done == len(SETTINGS)                # these settings finish (the run is deterministic)


def test_the_batch_engine_gives_each_constrained_request_its_alone_bits(model, vocabulary):
    requests, alone = [], []
    with loom.deterministic(True):
        for k, schema in enumerate(SCHEMAS):
            masks = GrammarMasks(JsonGrammar.from_schema(schema), vocabulary)
            for settings in SETTINGS[k % 2::2]:
                prompt = PROMPT + [k]
                ids = generate_alone(model, prompt, gen.Sampling(**settings), masks.constraint())
                alone.append((ids, masks.grammar, schema))
                requests.append(Request(prompt, MAX_TOKENS, gen.Sampling(**settings), logprobs=2,
                                        constraint=masks.constraint()))
        plain = Request(PROMPT, 20, stop_ids=())                  # an unconstrained greedy one beside them
        results = BatchEngine(model, max_batch=4, block_size=8).generate(requests + [plain])
    for (ids, grammar, schema), r in zip(alone, results):
        assert r.tokens == ids and r.finish_reason == ("stop" if grammar.accepts(text_of(ids)) else "length")
        check_output(grammar, schema, r.tokens, r.finish_reason == "stop")
    assert results[-1].tokens == list(model.generate_ids(PROMPT, max_tokens=20, stop_ids=()))
    assert sum(r.finish_reason == "stop" for r in results[:-1]) == len(requests)


def test_a_short_budget_ends_with_length_and_a_valid_prefix(model, vocabulary):
    masks = GrammarMasks(JsonGrammar.from_schema(RECORD), vocabulary)
    with loom.deterministic(True):
        result = BatchEngine(model).generate([Request(PROMPT, 4, constraint=masks.constraint())])[0]
    assert result.finish_reason == "length" and len(result.tokens) == 4
    assert masks.grammar.accepts_prefix(text_of(result.tokens)) and not masks.grammar.accepts(text_of(result.tokens))


def test_a_number_ends_with_the_stop_token(model, vocabulary):
    """A top-level number may end or take another digit (until a digit limit): the model may end it
    with its stop token."""
    masks = GrammarMasks(JsonGrammar.from_schema({"type": "number"}), vocabulary)
    stopped = 0
    with loom.deterministic(True):
        for seed in range(8):
            c = masks.constraint()
            ids = generate_alone(model, PROMPT, gen.Sampling(temperature=1.0, seed=seed), c)
            assert c.complete and isinstance(json.loads(text_of(ids)), (int, float))
            ended_by_stop_token = not c.finished
            stopped += ended_by_stop_token
    assert stopped


def test_masks_only_drop_tokens():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal(64).astype(np.float32)
    seen = np.zeros(64, dtype=bool)
    everything = np.ones(64, dtype=bool)
    some = rng.random(64) < 0.3
    for settings in SETTINGS + [dict(temperature=0.8, seed=4, min_p=0.05, repetition_penalty=1.2)]:
        s = gen.Sampling(**settings)
        for step in range(20):          # all allowed: the very same choice as without a mask
            assert gen.choose(logits, seen, s, step, everything) == gen.choose(logits, seen, s, step)
            assert some[gen.choose(logits, seen, s, step, some)]
    best = int(np.flatnonzero(some)[np.argmax(logits[some])])
    assert gen.choose(logits, seen, gen.Sampling(), 0, some) == best
    keep = gen.keep_mask(logits, gen.Sampling(temperature=1.0, top_k=3), some)
    assert keep.sum() == 3 and set(np.flatnonzero(keep)) <= set(np.flatnonzero(some))
    assert logits[keep].min() >= np.sort(logits[some])[-3]


def test_constraints_are_checked(model, vocabulary):
    masks = GrammarMasks(JsonGrammar.json_object(), vocabulary)
    engine = BatchEngine(model)
    assert not plain_greedy(Request(PROMPT, 4, constraint=masks.constraint()))     # it needs host logits
    assert plain_greedy(Request(PROMPT, 4))
    with pytest.raises(ConfigError, match="covers 65 tokens"):
        engine.check(Request(PROMPT, 4, constraint=GrammarMasks(masks.grammar, Vocabulary(PIECES + [b"x"])).constraint()))
    used = masks.constraint()
    used.push(PIECES.index(b"{"))
    with pytest.raises(ConfigError, match="used already"):
        engine.check(Request(PROMPT, 4, constraint=used))
    shared = masks.constraint()
    with pytest.raises(ConfigError, match="share one constraint"):
        engine.submit_all([Request(PROMPT, 4, constraint=shared)] * 2, [lambda e: None] * 2)
    with pytest.raises(ConfigError, match="expected a constraint"):
        model.engines.stream(Request(PROMPT, 2, constraint="json"))

"""How StepRunner (loom/llm/engine_steps.py) sends a step's prompt chunks to recorded prompt steps or runs them
together kernel by kernel, and whose logits each item's next token comes from, with the recordings and the eager
pass stubbed (the real ones are the GPU's: tests/gpu/test_paged_prefill_graph.py)."""
from types import SimpleNamespace

import numpy as np
import pytest

import loom
from loom.llm import engine_steps
from loom.llm.engine_steps import StepRunner
from loom.llm.paged_forward import Work

VOCAB = 100


def _logits(tokens: list[int]) -> np.ndarray:
    """Rows of logits whose argmax is each of tokens."""
    rows = np.zeros((len(tokens), VOCAB), np.float32)
    rows[np.arange(len(tokens)), tokens] = 1.0
    return rows


class _Graph:
    """A recorded prompt step's stand-in: its items' logits say which graph ran them (token 10 + its id, + the
    item's place among those wanting logits)."""

    def __init__(self, ident: int, runs: list):
        self.ident, self.runs = ident, runs

    def run(self, work):
        self.runs.append((self.ident, [int(w.tokens[0]) for w in work]))
        return _logits([10 * self.ident + k for k, w in enumerate(w for w in work if w.logits)])


@pytest.fixture
def runner(monkeypatch):
    """A StepRunner whose recordings are `runner.recordings` (the mixes recorded, by their items' first tokens),
    whose prefill_graph records a mix on its second sighting, and whose eager pass logs its items and answers
    token 40 + its place among the items wanting logits."""
    dec = SimpleNamespace(backend=loom.backend.get("cpu"), graphs=True, xp=np)
    run = StepRunner(dec, None, True, {"graph_steps": 0, "prefill_graph_steps": 0})
    run.recordings, run.seen, run.runs, run.eager = {}, set(), [], []

    def mix(work):
        return tuple(int(w.tokens[0]) for w in work)

    def recorded(work):
        return run.recordings.get(mix(work))

    def prefill_graph(work):
        key = mix(work)
        if key not in run.recordings and key in run.seen:
            run.recordings[key] = _Graph(len(run.recordings) + 1, run.runs)
        run.seen.add(key)
        return run.recordings.get(key)

    def forward(dec, cache, work, argmax_only=False):
        run.eager.append([int(w.tokens[0]) for w in work])
        wanted = [w for w in work if w.logits]
        return _logits([40 + k for k in range(len(wanted))]) if wanted else None

    monkeypatch.setattr(run, "recorded", recorded)
    monkeypatch.setattr(run, "prefill_graph", prefill_graph)
    monkeypatch.setattr(engine_steps.paged_forward, "forward", forward)
    return run


def _work(first: int, length: int, logits: bool = True) -> Work:
    return Work(np.arange(first, first + length, dtype=np.int64), 0, [0], logits)


def test_a_mix_seen_once_runs_together_then_replays_as_one_step(runner):
    """Three prompt chunks and a decode token: the first sighting runs all four together kernel by kernel; the
    second records the chunks' mix and replays it, the decode token eager; each item's token comes from its own
    row (the chunk without logits gets none)."""
    work = [_work(1, 5), _work(2, 3, logits=False), _work(3, 7), _work(4, 1)]
    out = runner.run(work, [True] * 4)
    assert runner.eager == [[1, 2, 3, 4]] and out == [40, None, 41, 42]
    out = runner.run(work, [True] * 4)
    assert runner.runs == [(1, [1, 2, 3])] and runner.eager[1:] == [[4]]
    assert out == [10, None, 11, 40] and runner.stats["prefill_graph_steps"] == 1


def test_a_chunk_or_two_replay_their_own_recordings(runner):
    """Two chunks whose own recordings exist replay those (the mix is not looked up); where only one has a
    recording and the mix none, that one replays and the other runs kernel by kernel; past EACH_ALONE chunks
    the chunks' own recordings are not used."""
    assert engine_steps.EACH_ALONE == 2
    a, b, c = _work(1, 5), _work(2, 6), _work(3, 4)
    runner.recordings[(1,)] = _Graph(7, runner.runs)
    runner.recordings[(2,)] = _Graph(8, runner.runs)
    assert runner.run([a, b], [True, True]) == [70, 80]
    assert runner.runs == [(7, [1]), (8, [2])] and not runner.eager and (1, 2) not in runner.seen
    del runner.recordings[(2,)]
    assert runner.run([a, b], [True, True]) == [70, 40]              # the mix seen once: a's own recording
    assert runner.runs[2:] == [(7, [1])] and runner.eager == [[2]]
    assert runner.run([a, b, c], [True] * 3) == [40, 41, 42]         # three chunks, the mix seen once: together
    assert runner.eager[1:] == [[1, 2, 3]] and len(runner.runs) == 3

"""The online-learning harness (loom.nn.online): streams, the six modes, the real-time clock, metrics."""
import numpy as np
import pytest

import loom
from loom.errors import ConfigError
from loom.nn import online
from loom.nn.online import assessment, metrics, report, streams

COSTS = online.FixedCosts(answer=1e-4, learn=1e-4, sample=1e-3)


def net_for(arch, stream, seed=0):
    return loom.Network.from_config(assessment.network_config(arch, stream, seed))


def run(mode, stream="stationary", ticks=200, arch="dense", seed=0, **kw):
    kw.setdefault("timing", COSTS)
    return online.run(net_for(arch, stream, seed), online.stream(stream, ticks, seed), mode, **kw)


# --- streams --------------------------------------------------------------------------------------

def observations(name, ticks, seed):
    s = online.stream(name, ticks, seed)
    return [s.observe(t) for t in range(ticks)]


@pytest.mark.parametrize("name", ["stationary", "abrupt", "drift", "noisy", "grid"])
def test_streams_are_deterministic_by_seed(name):
    a, b, c = observations(name, 50, 1), observations(name, 50, 1), observations(name, 50, 2)
    assert all(x.tobytes() == y.tobytes() and (s == u).all() for (x, s, _), (y, u, _) in zip(a, b))
    assert any(x.tobytes() != y.tobytes() for (x, _, _), (y, _, _) in zip(a, c))
    assert all(x.shape == streams.SHAPE and x.dtype == np.float32 for x, _, _ in a)


def test_abrupt_moves_every_label_at_the_change():
    s = online.stream("abrupt", 400, 0)
    assert s.changes == (200,)
    rows = [s.observe(t) for t in range(400)]
    # the class is the nearest prototype; before the change it is the label, after it label - 1
    nearest = [int(np.argmin([np.sum((x - p) ** 2) for p in s.protos])) for x, _, _ in rows]
    agree_before = np.mean([n == int(lab) for n, (_, lab, _) in zip(nearest[:200], rows[:200])])
    agree_after = np.mean([(n + 1) % 4 == int(lab) for n, (_, lab, _) in zip(nearest[200:], rows[200:])])
    assert agree_before > 0.9 and agree_after > 0.9
    assert all(int(shown) == int(scored) for _, shown, scored in rows)


def test_noisy_shows_a_quarter_of_wrong_labels_and_scores_the_true_ones():
    rows = observations("noisy", 4000, 0)
    wrong = np.mean([int(a) != int(b) for _, a, b in rows])
    assert abs(wrong - streams.NOISY_FRACTION * 3 / 4) < 0.03      # a random relabel is right 1 time in 4


def test_drift_slides_between_two_prototype_sets():
    s = online.stream("drift", 400, 0)
    assert np.array_equal(s.centre(0, 1), s.protos[1]) and np.array_equal(s.centre(399, 1), s.target[1])
    np.testing.assert_allclose(s.centre(200, 1), (s.protos[1] + s.target[1]) / 2)


def test_grid_expert_and_world_rules():
    g = online.stream("grid", 100, 0)
    g.pos = np.array([[0, 0], [1, 0], [5, 5], [7, 7]])
    g.goal = np.array([[3, 0], [1, 4], [5, 2], [6, 7]])
    x, label, scored = g.observe(0)
    # agent 0 wants +x but agent 1 sits there; aligned in y, so it stays. Agent 1: +y. Agent 2: -y. Agent 3: -x
    assert label.tolist() == [0, 3, 4, 2] and (label == scored).all()
    assert x[0].tolist() == [0, 0, 3 / 8, 0, 1, 0, 1, 0]
    g.act(0, np.array([1, 3, 4, 2]))          # agent 0 bumps into agent 1: a collision, no move
    assert g.pos.tolist() == [[0, 0], [1, 1], [5, 4], [6, 7]] and g.collisions == 1
    assert g.goals == 1 and not (g.goal[3] == [6, 7]).all()       # agent 3 reached its goal: a new one
    g.act(1, None)                            # unanswered: nobody moves
    assert g.pos.tolist() == [[0, 0], [1, 1], [5, 4], [6, 7]]
    assert g.stats() == {"goals_per_1000": 10.0, "collisions_per_1000": 10.0}


# --- settings and errors --------------------------------------------------------------------------

@pytest.mark.parametrize("mode, overrides, path", [
    ("Backprop", None, "online.mode"),
    ("StepBP", {"lr": 0.1}, "online.settings.lr"),
    ("StepBP", [1], "online.settings"),
    ("Tween", {"tween": {"mode": "chain"}}, "online.settings.tween.mode"),
    ("NormalBP", {"batch": 0}, "online.settings.batch"),
])
def test_bad_modes_and_settings_name_the_value(mode, overrides, path):
    with pytest.raises(ConfigError) as e:
        online.settings(mode, overrides)
    assert e.value.path == path


def test_settings_merge_key_by_key():
    s = online.settings("StepTweenChain", {"tween": {"rate": 0.5}})
    assert s["tween"]["rate"] == 0.5 and s["tween"]["mode"] == "chain"
    assert online.DEFAULTS["StepTweenChain"]["tween"]["rate"] != 0.5      # the defaults are not touched


def test_bad_runs():
    with pytest.raises(ConfigError, match="grid"):
        online.run(net_for("dense", "stationary"), online.stream("grid", 10, 0), "StepBP")   # 4 scores, 4 x 5 needed
    with pytest.raises(ConfigError) as e:
        online.run(net_for("dense", "stationary"), online.stream("stationary", 10, 0), "StepBP", period=0)
    assert e.value.path == "online.period"
    with pytest.raises(ConfigError, match="unknown stream 'wavy'"):
        online.stream("wavy", 10, 0)
    with pytest.raises(ConfigError, match="ticks"):
        online.stream("stationary", 1, 0)


# --- the clock ------------------------------------------------------------------------------------

def test_normal_bp_blocks_while_it_trains():
    """Bursts of 20 samples at 1 ms each every 20 ticks of 5 ms: the three ticks after each burst are
    answered late (15.2, 10.4 and 5.6 ms after arriving), the fourth in time (see harness's clock)."""
    r = run("NormalBP", ticks=100, settings={"train_every": 20, "buffer": 20, "epochs": 1})
    missed = np.flatnonzero(~r.records["answered"])
    assert missed.tolist() == [20, 21, 22, 40, 41, 42, 60, 61, 62, 80, 81, 82]
    np.testing.assert_allclose(r.records["latency"][20:23], [15.2e-3, 10.4e-3, 5.6e-3])
    assert r.summary["availability"] == 0.88
    assert r.summary["accuracy"] == pytest.approx(np.where(r.records["answered"], r.records["correct"], 0).mean())


@pytest.mark.parametrize("mode", ["StepBP", "StepTween", "StepTweenChain"])
def test_a_pipeline_answers_after_its_depth(mode):
    r = run(mode, ticks=50)
    assert r.delay == 2                                   # flatten, dense, dense
    assert r.records["output"].tolist() == [False] * 2 + [True] * 48
    np.testing.assert_allclose(r.records["latency"][2:], 2 * 5e-3 + 1e-4)     # two ticks, then the answer
    assert r.summary["availability"] == 0.96


def test_every_tick_late_when_the_work_outlasts_the_period():
    slow = online.FixedCosts(answer=3.5e-3, learn=3.5e-3)
    r = run("TweenChain", ticks=40, timing=slow)
    assert r.records["answered"].tolist() == [True] + [False] * 39     # 3.5 + 2t ms after arriving
    assert r.summary["accuracy"] == r.records["correct"][0]


def test_wall_clock_timing_runs():
    r = run("Tween", ticks=30, timing=None, period=10.0)
    assert r.summary["availability"] == 1.0 and r.summary["tick_ms"] > 0
    assert r.to_dict()["summary"] == r.summary and "records" not in r.to_dict()


# --- learning -------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", online.MODES)
def test_every_mode_learns_a_stationary_stream(mode):
    quick = online.FixedCosts(answer=1e-6, learn=1e-6, sample=1e-6)       # nothing misses its deadline
    r = run(mode, ticks=1000, settings={"train_every": 100, "buffer": 100} if mode == "NormalBP" else None,
            timing=quick)
    assert r.summary["final_accuracy"] >= 0.6           # chance: 0.25


@pytest.mark.parametrize("mode", ["NormalBP", "StepTween"])
def test_runs_repeat_bit_for_bit(mode):
    a, b = run(mode, "grid", 120, arch="rnn"), run(mode, "grid", 120, arch="rnn")
    for key in ("correct", "loss", "answered"):
        assert a.records[key].tobytes() == b.records[key].tobytes()
    assert a.summary == b.summary


def test_recovery_after_the_abrupt_change():
    r = run("TweenChain", "abrupt", ticks=1200)
    s = r.summary
    assert s["pre_change_accuracy"] > 0.8
    assert s["dip"] < 0.5                                 # every label moved: the old answers are wrong
    assert s["recovery_ticks"] is not None and 100 <= s["recovery_ticks"] < 600


def test_recovery_and_dip_by_hand():
    acc = np.concatenate([np.ones(50), np.zeros(30), np.ones(40), np.full(30, 0.5)])
    ticks, dip, pre = metrics.recovery(acc, 50, 10)
    assert (ticks, dip, pre) == (40, 0.0, 1.0)            # the first all-ones window after the change: 80..89
    assert metrics.recovery(np.concatenate([np.ones(50), np.zeros(50)]), 50, 10) == (None, 0.0, 1.0)
    assert metrics.recovery(np.ones(30), 5, 10) == (None, None, None)     # no full window before the change


def test_windows_and_divergence_are_reported():
    rec = {"output": np.array([False, True, True, True]), "answered": np.array([False, True, False, True]),
           "correct": np.array([0, 1, 1, 0.5]), "latency": np.array([np.nan, 1e-3, 9e-3, 2e-3]),
           "work": np.full(4, 1e-3), "loss": np.array([np.nan, 0.5, np.inf, 1.0])}
    w = metrics.windows(rec, 2)
    assert [x["start"] for x in w] == [0, 2]
    assert w[0]["accuracy"] == 0.5 and w[0]["availability"] == 0.5 and w[0]["answered_accuracy"] == 1.0
    assert w[1]["accuracy"] == 0.25 and w[1]["answered_accuracy"] == 0.5
    s = metrics.summarize(rec, 2, ())
    assert s["diverged_at"] == 2 and s["final_accuracy"] == 0.25 and s["tick_ms"] == pytest.approx(1.0)


# --- the assessment -------------------------------------------------------------------------------

def fake_result():
    runs = []
    for arch in ("dense", "lstm"):
        for mode, acc in (("Tween", 0.9 if arch == "lstm" else 0.5), ("TweenChain", 0.7)):
            for seed, wobble in ((0, -0.01), (1, 0.01)):
                runs.append({"arch": arch, "stream": "abrupt", "mode": mode, "seed": seed, "accuracy": acc + wobble,
                             "final_accuracy": acc, "availability": 1.0, "tick_ms": 1.0, "latency_ms_p99": 2.0,
                             "recovery_ticks": 100 + seed if mode == "Tween" else None, "dip": 0.3,
                             "diverged_at": 5 if (arch, mode, seed) == ("dense", "Tween", 1) else None})
    meta = {"date": "d", "loom": "v", "device": "cpu", "mode": "deterministic", "machine": "m", "ticks": 10,
            "seeds": 2, "period_ms": 5.0,
            "archs": ["dense", "lstm"], "streams": ["abrupt"], "modes": ["Tween", "TweenChain"],
            "settings": {"Tween": online.settings("Tween")}}
    return {"meta": meta, "runs": runs}


def test_conclusions_are_computed_from_the_runs():
    text = report.conclusions(fake_result())
    assert text[0] == "**abrupt**: the most accurate mode per network was Tween (1 of 2), TweenChain (1 of 2)."
    assert "Tween beat TweenChain on 1 of 2 network/stream pairs and lost on 1" in text[1]
    assert "lstm/abrupt (0.90 vs 0.70)" in text[1]
    assert "Tween: median 100 ticks" in text[2] and "TweenChain: never" in text[2]
    assert text[-1] == "1 of 8 runs diverged (a non-finite loss): Tween on dense."


def test_markdown_tables():
    page = report.markdown(fake_result(), "loom bench online --seeds 2")
    assert "| lstm | **0.90 ± 0.01** | 0.70 ± 0.01 |" in page
    assert "| dense | **100 ± 1** | - |" in page               # recovery: fewer ticks is better
    assert "loom bench online --seeds 2" in page and "## Conclusions" in page
    assert assessment.cell([{"x": 1.0}, {"x": None}], "x") == "1.00 ± 0.00 (1/2)"


def test_assessment_runs_every_cell():
    result = assessment.run(["dense"], ["stationary", "grid"], ["StepBP", "Tween"], seeds=2, ticks=20)
    assert len(result["runs"]) == 8
    assert {(r["stream"], r["mode"], r["seed"]) for r in result["runs"]} == {
        (s, m, k) for s in ("stationary", "grid") for m in ("StepBP", "Tween") for k in (0, 1)}
    assert "goals_per_1000" in result["runs"][-1]
    text = assessment.table(result)
    assert text.splitlines()[0] == "stationary: accuracy (mean ± std over 2 seeds, 20 ticks)"
    with pytest.raises(ConfigError, match="unknown arch 'mlp'"):
        assessment.run(["mlp"])
    with pytest.raises(ConfigError) as e:
        assessment.run(seeds=0)
    assert e.value.path == "online.seeds"

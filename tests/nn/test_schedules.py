"""Schedules against torch.optim.lr_scheduler, warmup against its formula, purity, configs, errors."""
import json
import math
import warnings

import numpy as np
import pytest

from loom import ConfigError
from loom.nn import schedules

torch = pytest.importorskip("torch")
L = torch.optim.lr_scheduler


def torch_lrs(lr, make, n):
    """The lr torch's scheduler gives the optimizer at updates 0 .. n-1."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    sched = make(opt)
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(n):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
    return np.array(out)


CASES = {
    "linear": ({"type": "linear", "lr": 0.1, "steps": 30, "end_lr": 0.01}, 0.1,
               lambda o: L.LinearLR(o, start_factor=1.0, end_factor=0.1, total_iters=30), 45),
    "linear-up": ({"type": "linear", "lr": 0.01, "steps": 7, "end_lr": 0.05}, 0.05,
                  lambda o: L.LinearLR(o, start_factor=0.2, end_factor=1.0, total_iters=7), 12),
    "cosine": ({"type": "cosine", "lr": 0.1, "steps": 40, "min_lr": 0.001}, 0.1,
               lambda o: L.CosineAnnealingLR(o, T_max=40, eta_min=0.001), 41),
    "cosine-to-zero": ({"type": "cosine", "lr": 0.3, "steps": 25}, 0.3,
                       lambda o: L.CosineAnnealingLR(o, T_max=25), 26),
    "cosine-restarts": ({"type": "cosine", "lr": 0.1, "min_lr": 0.002, "restarts": {"period": 5, "mult": 2}}, 0.1,
                        lambda o: L.CosineAnnealingWarmRestarts(o, T_0=5, T_mult=2, eta_min=0.002), 80),
    "cosine-restarts-fixed": ({"type": "cosine", "lr": 0.1, "restarts": {"period": 7}}, 0.1,
                              lambda o: L.CosineAnnealingWarmRestarts(o, T_0=7), 50),
    "exponential": ({"type": "exponential", "lr": 0.1, "gamma": 0.95}, 0.1,
                    lambda o: L.ExponentialLR(o, gamma=0.95), 60),
    "step": ({"type": "step", "lr": 0.1, "step_size": 7, "gamma": 0.5}, 0.1,
             lambda o: L.StepLR(o, step_size=7, gamma=0.5), 40),
    "step-default-gamma": ({"type": "step", "lr": 1.0, "step_size": 3}, 1.0,
                           lambda o: L.StepLR(o, step_size=3), 20),
    "polynomial": ({"type": "polynomial", "lr": 0.1, "steps": 30, "power": 2.0}, 0.1,
                   lambda o: L.PolynomialLR(o, total_iters=30, power=2.0), 40),
    "polynomial-sqrt": ({"type": "polynomial", "lr": 0.1, "steps": 12, "power": 0.5}, 0.1,
                        lambda o: L.PolynomialLR(o, total_iters=12, power=0.5), 15),
    "polynomial-linear": ({"type": "polynomial", "lr": 0.1, "steps": 10}, 0.1,
                          lambda o: L.PolynomialLR(o, total_iters=10), 12),
    "one_cycle": ({"type": "one_cycle", "max_lr": 0.1, "total_steps": 50}, 0.1,
                  lambda o: L.OneCycleLR(o, max_lr=0.1, total_steps=50, cycle_momentum=False), 50),
    "one_cycle-linear": ({"type": "one_cycle", "max_lr": 0.5, "total_steps": 37, "pct_start": 0.25,
                          "div_factor": 10, "final_div_factor": 100, "anneal": "linear"}, 0.5,
                         lambda o: L.OneCycleLR(o, max_lr=0.5, total_steps=37, pct_start=0.25, div_factor=10,
                                                final_div_factor=100, anneal_strategy="linear",
                                                cycle_momentum=False), 37),
}


@pytest.mark.parametrize("case", list(CASES))
def test_matches_torch(case):
    spec, lr, make, n = CASES[case]
    s = schedules.build(spec)
    ours = np.array([s(t) for t in range(n)])
    ref = torch_lrs(lr, make, n)
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=0)
    assert len(set(ours.tolist())) > 2            # the schedule actually moves


def test_constant():
    s = schedules.build({"type": "constant", "lr": 0.25})
    assert [s(t) for t in (0, 1, 10 ** 9)] == [0.25] * 3


def test_ends_hold():
    assert schedules.build({"type": "linear", "lr": 1.0, "steps": 4, "end_lr": 0.5})(100) == 0.5
    assert schedules.build({"type": "cosine", "lr": 1.0, "steps": 4, "min_lr": 0.1})(100) == 0.1
    assert schedules.build({"type": "polynomial", "lr": 1.0, "steps": 4, "end_lr": 0.2})(4) == 0.2
    oc = schedules.build({"type": "one_cycle", "max_lr": 1.0, "total_steps": 10})
    assert oc(10 ** 6) == oc(9) == pytest.approx(1.0 / 25 / 1e4)


def test_polynomial_with_end_lr():
    s = schedules.build({"type": "polynomial", "lr": 1.0, "steps": 10, "power": 2.0, "end_lr": 0.1})
    assert [s(t) for t in range(12)] == pytest.approx([(1.0 - 0.1) * (1 - t / 10) ** 2 + 0.1 for t in range(10)]
                                                      + [0.1, 0.1], rel=1e-15)


def test_warmup_wrapping_cosine():
    spec = {"type": "warmup", "steps": 10, "start_factor": 0.1,
            "after": {"type": "cosine", "lr": 0.2, "steps": 50, "min_lr": 0.01}}
    s = schedules.build(spec)

    def expected(t):
        if t < 10:
            return 0.2 * (0.1 + 0.9 * t / 10)
        u = t - 10
        return 0.01 + (0.2 - 0.01) * (1 + math.cos(math.pi * u / 50)) / 2 if u < 50 else 0.01
    got = [s(t) for t in range(80)]
    assert got == pytest.approx([expected(t) for t in range(80)], rel=1e-14, abs=0)
    assert s(0) == pytest.approx(0.02) and s(10) == 0.2 and s(60) == 0.01
    assert s.config["start_factor"] == 0.1
    zero = schedules.build({"type": "warmup", "steps": 4, "after": {"type": "constant", "lr": 1.0}})
    assert [zero(t) for t in range(6)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]


@pytest.mark.parametrize("spec", [spec for spec, *_ in CASES.values()] + [
    {"type": "warmup", "steps": 100, "after": {"type": "cosine", "lr": 0.1, "steps": 1000}}])
def test_pure_function_of_the_step(spec):
    sequential = schedules.build(spec)
    values = [sequential(t) for t in range(501)]
    fresh = schedules.build(spec)
    assert fresh(500) == values[500]
    order = np.random.default_rng(0).permutation(501)
    assert [fresh(int(t)) for t in order] == [values[t] for t in order]
    assert fresh(np.int64(7)) == values[7]


ALL_SPECS = [spec for spec, *_ in CASES.values()] + [
    {"type": "constant", "lr": 1},
    {"type": "warmup", "steps": 3, "after": {"type": "warmup", "steps": 2, "after": {"type": "exponential",
                                                                                      "lr": 1, "gamma": 0.9}}},
]


@pytest.mark.parametrize("spec", ALL_SPECS)
def test_config_round_trip(spec):
    s = schedules.build(spec)
    cfg = s.config
    assert json.loads(json.dumps(cfg)) == cfg
    again = schedules.build(cfg)
    assert again.config == cfg and again == s
    assert [again(t) for t in range(30)] == [s(t) for t in range(30)]
    assert schedules.build(s) is s


def test_canonical_defaults():
    assert schedules.build({"type": "cosine", "lr": 1, "steps": 5}).config == {
        "type": "cosine", "lr": 1.0, "steps": 5, "min_lr": 0.0, "restarts": None}
    assert schedules.build({"type": "cosine", "lr": 1, "restarts": {"period": 5}}).config["restarts"] == {
        "period": 5, "mult": 1}
    assert schedules.build({"type": "one_cycle", "max_lr": 1, "total_steps": 10}).config == {
        "type": "one_cycle", "max_lr": 1.0, "total_steps": 10, "pct_start": 0.3, "div_factor": 25.0,
        "final_div_factor": 1e4, "anneal": "cos"}
    assert schedules.build({"type": "warmup", "steps": 5, "after": {"type": "constant", "lr": 2}}).config == {
        "type": "warmup", "steps": 5, "start_factor": 0.0, "after": {"type": "constant", "lr": 2.0}}


def test_default_lr_fills_nested_specs():
    s = schedules.build({"type": "warmup", "steps": 5, "after": {"type": "cosine", "steps": 10}}, default_lr=0.3)
    assert s.config["after"]["lr"] == 0.3
    assert schedules.build({"type": "one_cycle", "total_steps": 10}, default_lr=0.3).config["max_lr"] == 0.3
    assert schedules.build({"type": "step", "lr": 0.5, "step_size": 2}, default_lr=0.3).config["lr"] == 0.5


def test_power_is_exact_for_small_exponents():
    assert schedules.power(0.5, 10) == 0.5 ** 10
    assert schedules.power(3.0, 0) == 1.0
    assert schedules.power(0.999, 1000) == pytest.approx(0.999 ** 1000, rel=1e-14)


@pytest.mark.parametrize("spec,message", [
    ({"type": "cosne", "lr": 1}, 'schedule.type: unknown schedule type "cosne"'),
    ({"lr": 1}, "schedule.type: missing required key"),
    ([1], "schedule: expected a schedule object"),
    ({"type": "constant"}, "schedule.lr: missing required key"),
    ({"type": "constant", "lr": -0.1}, "schedule.lr: expected a number in [0, inf], got -0.1"),
    ({"type": "constant", "lr": float("inf")}, "schedule.lr: expected a number"),
    ({"type": "linear", "lr": 1, "steps": 0}, "schedule.steps: expected a positive integer, got 0"),
    ({"type": "linear", "lr": 1, "steps": 10, "min_lr": 0}, "schedule.min_lr: unknown key for schedule type linear"),
    ({"type": "cosine", "lr": 1}, "schedule.steps: missing required key"),
    ({"type": "cosine", "lr": 1, "steps": 5, "restarts": {"period": 5}}, "schedule.steps: cosine with restarts"),
    ({"type": "cosine", "lr": 1, "restarts": {"period": 5, "mult": 1.5}}, "schedule.restarts.mult: expected a positive"),
    ({"type": "cosine", "lr": 1, "restarts": {"mult": 2}}, "schedule.restarts.period: missing required key"),
    ({"type": "exponential", "lr": 1, "gamma": 0}, "schedule.gamma: expected a number in (0, inf]"),
    ({"type": "step", "lr": 1, "step_size": 2.5}, "schedule.step_size: expected a positive integer"),
    ({"type": "polynomial", "lr": 1, "steps": 5, "power": -1}, "schedule.power"),
    ({"type": "warmup", "steps": 5}, "schedule.after: missing required key"),
    ({"type": "warmup", "steps": 5, "start_factor": 2, "after": {"type": "constant", "lr": 1}},
     "schedule.start_factor: expected a number in [0, 1]"),
    ({"type": "warmup", "steps": 5, "after": {"type": "cosine", "lr": 1, "steps": -1}}, "schedule.after.steps"),
    ({"type": "warmup", "steps": 5, "lr": 1, "after": {"type": "constant", "lr": 1}}, "schedule.lr: unknown key"),
    ({"type": "one_cycle", "max_lr": 1, "total_steps": 3}, "schedule.pct_start: pct_start * total_steps - 1"),
    ({"type": "one_cycle", "max_lr": 1, "total_steps": 100, "pct_start": 1.0}, "schedule.pct_start: expected"),
    ({"type": "one_cycle", "max_lr": 1, "total_steps": 100, "anneal": "cosine"}, "schedule.anneal: expected one of"),
    ({"type": "one_cycle", "lr": 1, "total_steps": 100}, "schedule.lr: unknown key for schedule type one_cycle"),
])
def test_errors(spec, message):
    with pytest.raises(ConfigError) as info:
        schedules.build(spec)
    assert str(info.value).startswith(message), str(info.value)


@pytest.mark.parametrize("step", [-1, 1.0, "3", None, True])
def test_bad_step(step):
    with pytest.raises(ConfigError, match="step: expected a non-negative integer"):
        schedules.build({"type": "constant", "lr": 1})(step)

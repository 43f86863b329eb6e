"""Optimizers against torch.optim (Lion against its written-out rule), clipping, accumulation,
groups, schedules, exact state round trips, config round trips and errors."""
import json

import numpy as np
import pytest

from loom import ConfigError, ShapeError
from loom.nn import optim, schedules

torch = pytest.importorskip("torch")

SHAPES = {"layers.0.weight": (5, 4), "layers.0.bias": (5,), "layers.1.weight": (5,), "layers.1.bias": (5,),
          "layers.2.weight": (3, 5), "layers.2.bias": (3,)}
STEPS = 20


def make_params(seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return {n: rng.normal(size=s).astype(dtype) for n, s in SHAPES.items()}


def make_grads(count=STEPS, seed=1, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return [{n: rng.normal(size=s).astype(dtype) for n, s in SHAPES.items()} for _ in range(count)]


GRADS = make_grads()


def run_loom(spec, grads=GRADS, params=None):
    params = make_params() if params is None else params
    opt = optim.build(spec, params)
    for g in grads:
        opt.step(g)
    return params, opt


def run_torch(factory, grads=GRADS, clip=None, sched=None):
    tp = {n: torch.tensor(a, requires_grad=True) for n, a in make_params().items()}
    opt = factory(tp)
    scheduler = sched(opt) if sched else None
    for g in grads:
        for n, p in tp.items():
            p.grad = torch.tensor(g[n])
        if clip:
            clip(list(tp.values()))
        opt.step()
        if scheduler:
            scheduler.step()
    return {n: p.detach().numpy() for n, p in tp.items()}


def assert_close(ours, ref, rtol=1e-12):
    assert list(ours) == list(ref)
    for n in ours:
        np.testing.assert_allclose(ours[n], ref[n], rtol=rtol, atol=0, err_msg=n)


def split(P, pattern_suffix):
    """torch param groups: [params ending with suffix, the rest]."""
    return ([P[n] for n in P if n.endswith(pattern_suffix)], [P[n] for n in P if not n.endswith(pattern_suffix)])


T = torch.optim
ALL = lambda P: list(P.values())  # noqa: E731
CASES = {
    "sgd": ({"type": "sgd", "lr": 0.1}, lambda P: T.SGD(ALL(P), lr=0.1, foreach=False)),
    "sgd-momentum": ({"type": "sgd", "lr": 0.05, "momentum": 0.9},
                     lambda P: T.SGD(ALL(P), lr=0.05, momentum=0.9, foreach=False)),
    "sgd-dampening-decay": ({"type": "sgd", "lr": 0.05, "momentum": 0.8, "dampening": 0.3, "weight_decay": 0.01},
                            lambda P: T.SGD(ALL(P), lr=0.05, momentum=0.8, dampening=0.3, weight_decay=0.01,
                                            foreach=False)),
    "sgd-nesterov": ({"type": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3},
                     lambda P: T.SGD(ALL(P), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3,
                                     foreach=False)),
    "adam": ({"type": "adam", "lr": 1e-2}, lambda P: T.Adam(ALL(P), lr=1e-2, foreach=False)),
    "adam-defaults": ("adam", lambda P: T.Adam(ALL(P), foreach=False)),
    "adam-decay-amsgrad": ({"type": "adam", "lr": 1e-2, "weight_decay": 0.1, "amsgrad": True, "eps": 1e-6},
                           lambda P: T.Adam(ALL(P), lr=1e-2, weight_decay=0.1, amsgrad=True, eps=1e-6,
                                            foreach=False)),
    "adam-low-betas": ({"type": "adam", "lr": 1e-2, "betas": [0.3, 0.5]},     # lerp weight >= 0.5 branch
                       lambda P: T.Adam(ALL(P), lr=1e-2, betas=(0.3, 0.5), foreach=False)),
    "adamw": ({"type": "adamw", "lr": 1e-2}, lambda P: T.AdamW(ALL(P), lr=1e-2, foreach=False)),
    "adamw-amsgrad": ({"type": "adamw", "lr": 1e-2, "weight_decay": 0.3, "amsgrad": True},
                      lambda P: T.AdamW(ALL(P), lr=1e-2, weight_decay=0.3, amsgrad=True, foreach=False)),
    "rmsprop": ({"type": "rmsprop"}, lambda P: T.RMSprop(ALL(P), foreach=False)),
    "rmsprop-centered": ({"type": "rmsprop", "lr": 1e-3, "centered": True, "alpha": 0.9},
                         lambda P: T.RMSprop(ALL(P), lr=1e-3, centered=True, alpha=0.9, foreach=False)),
    "rmsprop-momentum": ({"type": "rmsprop", "lr": 1e-3, "momentum": 0.9, "weight_decay": 0.01},
                         lambda P: T.RMSprop(ALL(P), lr=1e-3, momentum=0.9, weight_decay=0.01, foreach=False)),
    "rmsprop-all": ({"type": "rmsprop", "lr": 1e-3, "momentum": 0.5, "centered": True, "weight_decay": 0.1,
                     "eps": 1e-6, "alpha": 0.3},
                    lambda P: T.RMSprop(ALL(P), lr=1e-3, momentum=0.5, centered=True, weight_decay=0.1,
                                        eps=1e-6, alpha=0.3, foreach=False)),
    "adagrad": ({"type": "adagrad"}, lambda P: T.Adagrad(ALL(P), foreach=False)),
    "adagrad-options": ({"type": "adagrad", "lr": 0.05, "lr_decay": 0.1, "weight_decay": 0.01,
                         "initial_accumulator_value": 0.5, "eps": 1e-8},
                        lambda P: T.Adagrad(ALL(P), lr=0.05, lr_decay=0.1, weight_decay=0.01,
                                            initial_accumulator_value=0.5, eps=1e-8, foreach=False)),
    "adam-groups": ({"type": "adam", "lr": 1e-2, "weight_decay": 0.01,
                     "groups": [{"params": ["*.bias"], "lr": 0.05, "weight_decay": 0.0},
                                {"params": ["layers.2.*"], "betas": [0.8, 0.9], "amsgrad": True}]},
                    lambda P: T.Adam([{"params": split(P, ".bias")[0], "lr": 0.05, "weight_decay": 0.0},
                                      {"params": [P["layers.2.weight"]], "betas": (0.8, 0.9), "amsgrad": True},
                                      {"params": [P["layers.0.weight"], P["layers.1.weight"]]}],
                                     lr=1e-2, weight_decay=0.01, foreach=False)),
    "sgd-groups": ({"type": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 0.01,
                    "groups": [{"params": ["layers.0.*"], "lr": 0.01, "momentum": 0.5, "nesterov": True}]},
                   lambda P: T.SGD([{"params": [P["layers.0.weight"], P["layers.0.bias"]], "lr": 0.01,
                                     "momentum": 0.5, "nesterov": True},
                                    {"params": [p for n, p in P.items() if not n.startswith("layers.0.")]}],
                                   lr=0.1, momentum=0.9, weight_decay=0.01, foreach=False)),
    "adamw-no-decay": ({"type": "adamw", "lr": 1e-2, "weight_decay": 0.1, "no_decay": ["*.bias", "layers.1.*"]},
                       lambda P: T.AdamW([{"params": [p for n, p in P.items() if n.endswith(".bias") or
                                                      n.startswith("layers.1.")], "weight_decay": 0.0},
                                          {"params": [P["layers.0.weight"], P["layers.2.weight"]]}],
                                         lr=1e-2, weight_decay=0.1, foreach=False)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_matches_torch(case):
    spec, factory = CASES[case]
    ours, opt = run_loom(spec)
    assert opt.steps == STEPS
    assert_close(ours, run_torch(factory))
    moved = sum(float(np.abs(ours[n] - make_params()[n]).max()) for n in ours)
    assert moved > 1e-4            # the comparison is not vacuous


def lion_reference(params, grads, lr, betas, wd):
    """The Lion update as written in lion-pytorch."""
    b1, b2 = betas
    p = {n: a.copy() for n, a in params.items()}
    m = {n: np.zeros_like(a) for n, a in params.items()}
    for g in grads:
        for n in p:
            p[n] = p[n] * (1 - lr * wd)
            update = np.sign(m[n] * b1 + g[n] * (1 - b1))
            p[n] = p[n] + (-lr) * update
            m[n] = m[n] * b2 + g[n] * (1 - b2)
    return p


@pytest.mark.parametrize("spec,kw", [({"type": "lion"}, dict(lr=1e-4, betas=(0.9, 0.99), wd=0.0)),
                                     ({"type": "lion", "lr": 3e-3, "betas": [0.8, 0.95], "weight_decay": 0.5},
                                      dict(lr=3e-3, betas=(0.8, 0.95), wd=0.5))])
def test_lion_matches_reference(spec, kw):
    ours, _ = run_loom(spec)
    assert_close(ours, lion_reference(make_params(), GRADS, **kw))


# --- clipping and accumulation ---------------------------------------------------------------------

@pytest.mark.parametrize("spec,clip", [
    ({"clip_norm": 1.0}, lambda ps: torch.nn.utils.clip_grad_norm_(ps, 1.0, foreach=False)),
    ({"clip_norm": 1e6}, lambda ps: torch.nn.utils.clip_grad_norm_(ps, 1e6, foreach=False)),
    ({"clip_value": 0.5}, lambda ps: torch.nn.utils.clip_grad_value_(ps, 0.5, foreach=False)),
])
def test_clipping_matches_torch_and_leaves_grads_alone(spec, clip):
    before = [{n: g.copy() for n, g in d.items()} for d in GRADS]
    ours, _ = run_loom({"type": "sgd", "lr": 0.1, "momentum": 0.9, **spec})
    assert_close(ours, run_torch(lambda P: T.SGD(ALL(P), lr=0.1, momentum=0.9, foreach=False), clip=clip))
    for old, new in zip(before, GRADS):
        assert all(np.array_equal(old[n], new[n]) for n in old)


def test_clipping_actually_clips():
    params = make_params()
    opt = optim.build({"type": "sgd", "lr": 1.0, "clip_norm": 0.25}, params)
    start = {n: a.copy() for n, a in params.items()}
    opt.step(GRADS[0])
    delta = np.sqrt(sum(float(((start[n] - params[n]) ** 2).sum()) for n in params))
    assert abs(delta - 0.25) < 1e-6
    opt = optim.build({"type": "sgd", "lr": 1.0, "clip_value": 0.1}, params)
    start = {n: a.copy() for n, a in params.items()}
    opt.step(GRADS[0])
    assert max(float(np.abs(start[n] - params[n]).max()) for n in params) == pytest.approx(0.1)


def test_accumulation_equals_updates_with_averaged_gradients():
    spec = {"type": "adam", "lr": 1e-2, "clip_norm": 2.0}
    before = [{n: g.copy() for n, g in d.items()} for d in GRADS[:8]]
    params = make_params()
    opt = optim.build({**spec, "accumulate": 4}, params)
    applied = []
    for i, g in enumerate(GRADS[:8]):
        applied.append(opt.step(g))
        if i == 2:
            assert all(np.array_equal(a, b) for a, b in zip(params.values(), make_params().values()))
    assert applied == [False, False, False, True] * 2 and opt.steps == 2
    state = opt.state_dict()                          # the buffer was cleared after the update
    assert state["accumulate.count"] == 0 and not any(state[f"accumulate.{n}"].any() for n in SHAPES)
    averaged = [{n: (((GRADS[k][n] + GRADS[k + 1][n]) + GRADS[k + 2][n]) + GRADS[k + 3][n]) / 4 for n in SHAPES}
                for k in (0, 4)]
    ref, _ = run_loom(spec, grads=averaged)
    assert all(np.array_equal(params[n], ref[n]) for n in params)
    assert all(np.array_equal(b[n], g[n]) for b, g in zip(before, GRADS) for n in SHAPES)


# --- learning rate: schedules, setter, groups ---------------------------------------------------

def test_schedule_inside_optimizer_matches_torch_scheduler_with_groups():
    spec = {"type": "sgd", "lr": 0.1, "momentum": 0.9, "groups": [{"params": ["*.bias"], "lr": 0.02}],
            "schedule": {"type": "step", "step_size": 3, "gamma": 0.5}}
    ours, opt = run_loom(spec)
    assert opt.schedule.config["lr"] == 0.1          # the schedule's lr defaults to the optimizer's
    assert opt.lr == 0.1 * 0.5 ** (STEPS // 3)
    ref = run_torch(lambda P: T.SGD([{"params": split(P, ".bias")[0], "lr": 0.02}, {"params": split(P, ".bias")[1]}],
                                    lr=0.1, momentum=0.9, foreach=False),
                    sched=lambda o: T.lr_scheduler.StepLR(o, step_size=3, gamma=0.5))
    assert_close(ours, ref)


def test_lr_setter_and_schedule_setter():
    params = make_params()
    opt = optim.build({"type": "sgd", "lr": 0.1}, params)
    opt.lr = 0.0
    opt.step(GRADS[0])
    opt = optim.build({"type": "sgd", "lr": 0.0}, params)
    opt.step(GRADS[0])
    assert all(np.array_equal(params[n], make_params()[n]) for n in params)
    opt.schedule = {"type": "linear", "steps": 10}
    assert opt.schedule.config == {"type": "linear", "lr": 0.0, "steps": 10, "end_lr": 0.0}
    opt.schedule = schedules.build({"type": "constant", "lr": 0.5})
    assert opt.lr == 0.5 and opt.config["schedule"] == {"type": "constant", "lr": 0.5}
    with pytest.raises(ConfigError, match="optimizer.lr: the lr follows the schedule"):
        opt.lr = 0.2
    opt.schedule = None
    opt.lr = 0.2
    assert opt.lr == 0.2
    opt.step(GRADS[1])                                # base lr 0 at build, 0.2 now
    assert not np.array_equal(params["layers.0.bias"], make_params()["layers.0.bias"])
    with pytest.raises(ConfigError, match="optimizer.lr"):
        opt.lr = -1


def test_groups_and_no_decay_resolution():
    opt = optim.build({"type": "adamw", "weight_decay": 0.1, "no_decay": ["*.bias"],
                       "groups": [{"params": ["layers.2.*"], "lr": 0.5, "weight_decay": 0.2},
                                  {"params": ["layers.2.weight", "layers.0.*"], "lr": 0.7}]}, make_params())
    assert opt.hyperparameters("layers.2.weight")["lr"] == 0.5           # first matching group wins
    assert opt.hyperparameters("layers.2.weight")["weight_decay"] == 0.2
    assert opt.hyperparameters("layers.2.bias")["weight_decay"] == 0.0    # no_decay beats the group
    assert opt.hyperparameters("layers.0.weight") == {"lr": 0.7, "betas": [0.9, 0.999], "eps": 1e-8,
                                                      "weight_decay": 0.1, "amsgrad": False}
    assert opt.hyperparameters("layers.1.weight")["lr"] == 1e-3


# --- state ---------------------------------------------------------------------------------------

STATE_SPECS = [
    {"type": "sgd", "lr": 0.05, "momentum": 0.9, "dampening": 0.5},
    {"type": "adam", "lr": 1e-2, "amsgrad": True, "weight_decay": 0.01},
    {"type": "adamw", "lr": 1e-2, "accumulate": 3, "clip_norm": 1.0},
    {"type": "rmsprop", "lr": 1e-3, "momentum": 0.9, "centered": True},
    {"type": "adagrad", "lr_decay": 0.01, "initial_accumulator_value": 0.1},
    {"type": "lion", "lr": 1e-3, "weight_decay": 0.1},
    {"type": "adam", "lr": 1e-2, "schedule": {"type": "warmup", "steps": 3,
                                               "after": {"type": "cosine", "steps": 10}}},
]


@pytest.mark.parametrize("spec", STATE_SPECS, ids=lambda s: s["type"])
def test_state_round_trip_is_bit_exact(spec):
    straight, _ = run_loom(spec, grads=GRADS[:10])
    params = make_params()
    opt = optim.build(spec, params)
    for g in GRADS[:5]:
        opt.step(g)
    state = opt.state_dict()
    assert all(isinstance(v, (np.ndarray, int, float)) and not isinstance(v, bool) for v in state.values())
    json.dumps({k: v for k, v in state.items() if not isinstance(v, np.ndarray)})
    snapshot = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in state.items()}
    resumed = {n: a.copy() for n, a in params.items()}
    fresh = optim.build(opt.config, resumed)
    fresh.load_state_dict(state)
    assert fresh.steps == opt.steps and fresh.lr == opt.lr
    for g in GRADS[5:10]:
        fresh.step(g)
        opt.step(g)
    assert all(np.array_equal(resumed[n], straight[n]) for n in straight)
    assert all(np.array_equal(params[n], straight[n]) for n in straight)
    # state_dict returned copies: stepping on did not change them
    assert all(np.array_equal(snapshot[k], state[k]) if isinstance(state[k], np.ndarray) else snapshot[k] == state[k]
               for k in state)


def test_state_dict_keys():
    opt = optim.build({"type": "adam", "amsgrad": True, "accumulate": 2,
                       "groups": [{"params": ["*.bias"], "amsgrad": False}]}, make_params())
    keys = set(opt.state_dict())
    assert {"step", "lr", "accumulate.count", "accumulate.layers.0.weight", "state.layers.0.weight.exp_avg",
            "state.layers.0.weight.exp_avg_sq", "state.layers.0.weight.max_exp_avg_sq",
            "state.layers.0.bias.exp_avg"} <= keys
    assert "state.layers.0.bias.max_exp_avg_sq" not in keys
    assert len(keys) == 3 + 6 + 6 * 2 + 3


def test_load_state_dict_rejects_mismatches_without_changing_anything():
    params = make_params()
    opt = optim.build({"type": "adam"}, params)
    opt.step(GRADS[0])
    good = opt.state_dict()
    bad_cases = [
        ({k: v for k, v in good.items() if k != "state.layers.0.bias.exp_avg"}, "missing"),
        ({**good, "state.layers.9.bias.exp_avg": np.zeros(3)}, "unexpected"),
        ({**good, "state.layers.0.bias.exp_avg": np.zeros(4)}, "state.layers.0.bias.exp_avg"),
        ({**good, "state.layers.0.bias.exp_avg": np.zeros(5, np.float32)}, "float32"),
        ({**good, "step": -1}, "step"),
        ({**good, "step": 1.5}, "step"),
        ({**good, "lr": float("nan")}, "lr"),
    ]
    for state, match in bad_cases:
        poisoned = dict(state)
        if "state.layers.0.weight.exp_avg" in poisoned:
            poisoned["state.layers.0.weight.exp_avg"] = np.full((5, 4), 7.0)
        with pytest.raises(ShapeError, match=match):
            opt.load_state_dict(poisoned)
        assert opt.steps == 1
        assert np.array_equal(opt.state_dict()["state.layers.0.weight.exp_avg"], good["state.layers.0.weight.exp_avg"])


def test_float32_parameters_keep_their_dtype():
    params = make_params(dtype=np.float32)
    opt = optim.build({"type": "adam", "lr": 1e-2, "clip_norm": 0.5, "accumulate": 2}, params)
    for g in make_grads(4, dtype=np.float32):
        opt.step(g)
    assert all(a.dtype == np.float32 for a in params.values())
    assert all(v.dtype == np.float32 for v in opt.state_dict().values() if isinstance(v, np.ndarray))
    ref = run_torch(lambda P: T.Adam(ALL(P), lr=1e-2, foreach=False),
                    grads=[{n: (a[n].astype(np.float64) + b[n]) / 2 for n in SHAPES}
                           for a, b in zip(*[iter(make_grads(4, dtype=np.float32))] * 2)],
                    clip=lambda ps: torch.nn.utils.clip_grad_norm_(ps, 0.5, foreach=False))
    assert_close({n: a.astype(np.float64) for n, a in params.items()}, ref, rtol=1e-5)


# --- configs -------------------------------------------------------------------------------------

CONFIG_SPECS = [spec for spec, _ in CASES.values()] + STATE_SPECS + [
    {"type": "sgd", "clip_value": 1.0, "clip_norm": 2, "accumulate": 4},
    {"type": "rmsprop", "schedule": {"type": "one_cycle", "total_steps": 100}},
]


@pytest.mark.parametrize("spec", CONFIG_SPECS)
def test_config_round_trip(spec):
    opt = optim.build(spec, make_params())
    cfg = opt.config
    assert json.loads(json.dumps(cfg)) == cfg
    again = optim.build(cfg, make_params())
    assert again.config == cfg
    assert list(cfg)[:2] == ["type", "lr"] and list(cfg)[-6:] == ["groups", "no_decay", "clip_norm", "clip_value",
                                                                   "accumulate", "schedule"]


def test_defaults_are_torchs():
    P = make_params()
    assert optim.build("sgd", P).config == {
        "type": "sgd", "lr": 1e-3, "momentum": 0.0, "dampening": 0.0, "nesterov": False, "weight_decay": 0.0,
        "groups": [], "no_decay": [], "clip_norm": None, "clip_value": None, "accumulate": 1, "schedule": None}
    cfg = {t: optim.build(t, P).config for t in optim.TYPES}
    assert cfg["adam"]["betas"] == [0.9, 0.999] and cfg["adam"]["eps"] == 1e-8 and cfg["adam"]["weight_decay"] == 0
    assert cfg["adamw"]["weight_decay"] == 0.01 and cfg["adamw"]["lr"] == 1e-3
    assert (cfg["rmsprop"]["lr"], cfg["rmsprop"]["alpha"], cfg["rmsprop"]["eps"]) == (1e-2, 0.99, 1e-8)
    assert (cfg["adagrad"]["lr"], cfg["adagrad"]["eps"], cfg["adagrad"]["initial_accumulator_value"]) == (1e-2, 1e-10, 0)
    assert (cfg["lion"]["lr"], cfg["lion"]["betas"], cfg["lion"]["weight_decay"]) == (1e-4, [0.9, 0.99], 0)


@pytest.mark.parametrize("spec,message", [
    ({"type": "adamx"}, "optimizer.type: unknown optimizer type \"adamx\""),
    ({"lr": 0.1}, "optimizer.type: missing"),
    (3, "optimizer: expected an optimizer object"),
    ({"type": "adam", "lr": -1}, "optimizer.lr: expected a number in [0, inf], got -1"),
    ({"type": "adam", "betas": [0.9, 1.5]}, "optimizer.betas[1]: expected a number in [0, 1), got 1.5"),
    ({"type": "adam", "betas": [0.9]}, "optimizer.betas: expected [beta1, beta2]"),
    ({"type": "adam", "momentum": 0.9}, "optimizer.momentum: unknown key for optimizer type adam"),
    ({"type": "sgd", "nesterov": True}, "optimizer.nesterov: nesterov needs momentum > 0"),
    ({"type": "sgd", "momentum": 0.9, "groups": [{"params": ["*"], "nesterov": True, "dampening": 0.1}]},
     "optimizer.groups[0].nesterov"),
    ({"type": "adam", "groups": [{"lr": 0.1}]}, "optimizer.groups[0].params: missing required key"),
    ({"type": "adam", "groups": [{"params": []}]}, "optimizer.groups[0].params: expected at least 1"),
    ({"type": "adam", "groups": [{"params": ["*"], "alpha": 0.1}]}, "optimizer.groups[0].alpha: unknown key"),
    ({"type": "adam", "groups": [{"params": ["*"], "eps": -1}]}, "optimizer.groups[0].eps: expected a number"),
    ({"type": "adam", "groups": [{"params": ["*.bias", "encoder.*"]}]}, "optimizer.groups[0].params[1]: pattern"),
    ({"type": "adam", "lr": 0, "groups": [{"params": ["*"], "lr": 0.1}]}, "optimizer.lr: must be positive"),
    ({"type": "adam", "no_decay": ["bias"]}, "optimizer.no_decay[0]: pattern 'bias' matches no parameter"),
    ({"type": "adam", "no_decay": "*.bias"}, "optimizer.no_decay: expected a list"),
    ({"type": "adam", "clip_norm": 0}, "optimizer.clip_norm: expected a number in (0, inf]"),
    ({"type": "adam", "clip_value": -1.0}, "optimizer.clip_value"),
    ({"type": "adam", "accumulate": 0}, "optimizer.accumulate: expected a positive integer"),
    ({"type": "adam", "accumulate": 2.0}, "optimizer.accumulate"),
    ({"type": "rmsprop", "alpha": 1.5}, "optimizer.alpha"),
    ({"type": "adam", "amsgrad": 1}, "optimizer.amsgrad: expected true or false"),
    ({"type": "adam", "schedule": {"type": "cosine"}}, "optimizer.schedule.steps: missing required key"),
    ({"type": "adam", "schedule": {"type": "cosine", "steps": 10, "warm": 1}}, "optimizer.schedule.warm: unknown"),
])
def test_spec_errors(spec, message):
    with pytest.raises(ConfigError) as info:
        optim.build(spec, make_params())
    assert str(info.value).startswith(message), str(info.value)


@pytest.mark.parametrize("mutate,message", [
    (lambda g: g.pop("layers.1.bias"), "gradient for parameter layers.1.bias is missing"),
    (lambda g: g.update({"layers.1.bias": np.zeros(4)}), r"gradient layers.1.bias has shape \[4\], expected \[5\]"),
    (lambda g: g.update({"layers.1.bias": [0.0] * 5}), "gradient layers.1.bias has shape list"),
    (lambda g: g.update({"layers.1.bias": np.zeros(5, np.float32)}), "gradient layers.1.bias has dtype float32"),
    (lambda g: g.update({"layers.7.bias": np.zeros(5)}), "gradient for unknown parameter layers.7.bias"),
])
def test_gradient_errors_name_the_parameter_and_change_nothing(mutate, message):
    params = make_params()
    opt = optim.build({"type": "sgd", "lr": 0.1}, params)
    grads = {n: g.copy() for n, g in GRADS[0].items()}
    mutate(grads)
    with pytest.raises(ShapeError, match=message):
        opt.step(grads)
    assert opt.steps == 0 and all(np.array_equal(params[n], make_params()[n]) for n in params)


def test_trains_a_network_in_place():
    import loom
    net = loom.Network.from_config({"loom": 1, "seed": 0, "input": {"shape": [3]},
                                    "layers": [{"type": "dense", "units": 8, "activation": "tanh"},
                                               {"type": "layer_norm"}, {"type": "dense", "units": 1}]})
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 3)).astype(np.float32)
    y = (x @ np.array([[1.0], [-2.0], [0.5]], np.float32)).astype(np.float32)
    opt = optim.build({"type": "adamw", "lr": 1e-2, "no_decay": ["*.bias", "layers.1.*"], "clip_norm": 1.0,
                       "schedule": {"type": "warmup", "steps": 5, "after": {"type": "cosine", "steps": 95}}},
                      net.parameters())
    losses = []
    for _ in range(100):
        net.zero_grad()
        out = net(x)
        losses.append(float(((out - y) ** 2).mean()))
        net.backward((2 * (out - y) / out.size).astype(np.float32))
        opt.step(net.gradients())
    assert losses[-1] < 0.2 * losses[0]
    assert opt.steps == 100 and opt.lr == 0.0

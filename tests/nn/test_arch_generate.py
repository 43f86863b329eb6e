"""loom.nn.generate (random configs under a budget, mutate, crossover) and loom.nn.search.evolve."""
from __future__ import annotations

import functools

import numpy as np
import pytest

from loom.config import COMBINE_MODES, SOFTMAX_VARIANTS
from loom.errors import ConfigError
from loom.nn import Network
from loom.nn.generate import FAMILIES, crossover, families_of, generate, mutate, param_count, random_config
from loom.nn.search import evolve

IMAGE, SEQUENCE, BUDGET = [1, 8, 8], [8, 8], 20_000


@functools.cache
def _configs(shape: tuple[int, ...], seed: int = 0, count: int = 200) -> tuple[dict, ...]:
    return tuple(generate(list(shape), [10], BUDGET, seed, count=count))


def _nested(layer: dict, depth: int = 0) -> int:
    """Depth of parallel / residual / stitch / sequential blocks nested in a layer."""
    inner = layer.get("layers", []) + layer.get("branches", [])
    here = 1 if layer["type"] in ("parallel", "residual", "stitch", "sequential") else 0
    return here + max((_nested(child) for child in inner), default=0)


@pytest.mark.parametrize("shape", [IMAGE, SEQUENCE], ids=["image", "sequence"])
def test_configs_build_fit_the_budget_and_run(shape):
    x = np.random.default_rng(0).random((3, *shape)).astype(np.float32)
    for cfg in _configs(tuple(shape)):
        net = Network.from_config(cfg)
        assert net.root.param_count() <= BUDGET
        assert net.forward(x).shape == (3, 10)
        assert net.config["layers"] == Network.from_config(net.config).config["layers"]


def test_every_family_combine_mode_and_softmax_variant_appears():
    seen = set()
    for shape in (IMAGE, SEQUENCE):
        for cfg in _configs(tuple(shape)):
            seen |= families_of(cfg)
    assert set(FAMILIES) <= seen
    assert {f"parallel/{m}" for m in COMBINE_MODES} <= seen
    assert {f"softmax/{v}" for v in SOFTMAX_VARIANTS} <= seen
    # image inputs see recurrent and attention layers too (through a reshape to a sequence)
    image = set().union(*map(families_of, _configs(tuple(IMAGE))))
    assert {"conv", "pooling", "recurrent", "attention"} <= image
    assert max(_nested(layer) for cfg in _configs(tuple(IMAGE)) for layer in cfg["layers"]) >= 2


def test_same_seed_same_configs_other_seed_other_configs():
    first = list(generate(SEQUENCE, [10], BUDGET, 0, count=12))
    assert first == list(_configs(tuple(SEQUENCE))[:12])
    assert random_config(SEQUENCE, [10], BUDGET, 0, index=5) == first[5]
    other = list(generate(SEQUENCE, [10], BUDGET, 1, count=12))
    assert other != first and sum(a == b for a, b in zip(first, other)) <= 2


def test_small_budgets_other_shapes_and_families():
    for cfg in generate([4, 4, 4, 2], [2, 3], 2_000, 3, count=15):
        assert param_count(cfg) <= 2_000 and Network.from_config(cfg).output_spec.shape == (2, 3)
    for i in range(5):      # 68 = 16 * 4 + 4: room for one dense layer and little else
        tight = random_config([16], [4], 68, 0, index=i)
        assert param_count(tight) <= 68 and Network.from_config(tight).output_spec.shape == (4,)
    for cfg in generate(IMAGE, [10], BUDGET, 0, count=20, families=["conv", "pooling"]):
        assert families_of(cfg) <= {"conv", "pooling", "dense", "shape"}


@pytest.mark.parametrize("args, path", [
    (([1, 8, 8], [10], 0, 0), "budget"),
    (([1, 8, 8], [10], -5, 0), "budget"),
    (([1, 8, 8], [10], 649, 0), "budget"),          # below flatten + dense: 64 * 10 + 10
    (([1, 8, 8], [10], 1.5, 0), "budget"),
    (([], [10], 1000, 0), "input_shape"),
    (([1, 0, 8], [10], 1000, 0), "input_shape"),
    (([1, 2, 3, 4, 5], [10], 1000, 0), "input_shape"),
    (([8], "10", 1000, 0), "output_shape"),
    (([8], [10], 1000, -1), "seed"),
])
def test_bad_arguments_name_the_value(args, path):
    with pytest.raises(ConfigError) as exc:
        generate(*args)
    assert exc.value.path == path
    with pytest.raises(ConfigError, match="families"):
        random_config([8], [10], 1000, 0, families=["transformer"])


def test_mutate_and_crossover_give_valid_configs():
    configs = _configs(tuple(IMAGE))[:20]
    changed = 0
    for i, cfg in enumerate(configs):
        child = mutate(cfg, i, budget=BUDGET)
        assert child == mutate(cfg, i, budget=BUDGET)
        assert param_count(child) <= BUDGET and Network.from_config(child).output_spec.shape == (10,)
        changed += child != cfg
        mix = crossover(cfg, configs[-1 - i], i, budget=BUDGET)
        assert mix == crossover(cfg, configs[-1 - i], i, budget=BUDGET)
        assert param_count(mix) <= BUDGET and Network.from_config(mix).output_spec.shape == (10,)
    assert changed >= 15
    with pytest.raises(ConfigError, match="same input shape"):
        crossover(configs[0], _configs(tuple(SEQUENCE))[0], 0)


def test_a_tiny_search_is_reproducible():
    from loom.datasets import digits_split
    (X, y), (Xv, yv) = digits_split(0.2, 0)
    data = ((X[:300], y[:300]), (Xv[:100], yv[:100]))
    runs = [evolve(data, IMAGE, 10, 5_000, population=3, generations=2, epochs=1, seed=4) for _ in range(2)]
    assert runs[0].config == runs[1].config and runs[0].fitness == runs[1].fitness
    assert runs[0].generations == runs[1].generations and len(runs[0].generations) == 2
    assert param_count(runs[0].config) == runs[0].params <= 5_000
    assert runs[0].fitness >= runs[0].generations[0]["best"] > 0.1
    with pytest.raises(ConfigError, match="population"):
        evolve(data, IMAGE, 10, 5_000, population=0, generations=1, epochs=1, seed=0)

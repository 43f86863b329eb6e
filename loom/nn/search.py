"""A small evolutionary architecture search over generated configs (loom.nn.generate).

    from loom.nn.search import evolve
    result = evolve(((X_train, y_train), (X_val, y_val)), [1, 8, 8], 10, budget=20_000,
                    population=6, generations=4, epochs=2, seed=0)
    result.config, result.fitness, result.params

Generation 0 is the first `population` configs of generate(input_shape, [n_classes], budget, seed).
Each candidate is built, trained for `epochs` with loom.train (cross-entropy on class ids, Adam lr
0.01, batch 32, shuffle seed = `seed`) and scored by its accuracy on the validation part; ties go to
fewer parameters, then to the earlier candidate. A candidate whose training meets a non-finite loss
scores 0. The next generation keeps the best third (at least one) and fills up with children: two
parents drawn by tournament, crossed over (half of the time) and mutated. Every draw comes from
loom.rng keyed by `seed`, training is deterministic, and a config met again reuses its score: the
same arguments give the same best config and fitness.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike

from ..errors import ConfigError, NumericError
from .generate import _Draw, _positive, _seed_arg, crossover, generate, mutate
from .network import Network
from .train import predict, train

STREAM = "nn.search"


@dataclass
class Candidate:
    config: dict
    fitness: float          # validation accuracy
    params: int

    def key(self) -> tuple[float, int]:
        """Sort key: higher accuracy first, then fewer parameters."""
        return (-self.fitness, self.params)


@dataclass
class SearchResult:
    config: dict
    fitness: float
    params: int
    generations: list[dict] = field(default_factory=list)   # per generation: best, mean, params


def evaluate(config: dict, data: tuple, epochs: int, seed: int) -> Candidate:
    """Train `config` briefly on data[0] and score its accuracy on data[1]."""
    (X, y), (Xv, yv) = data
    net = Network.from_config(config)
    params = int(net.root.param_count())
    try:
        train(net, X, y, loss="cross_entropy", optimizer={"type": "adam", "lr": 0.01}, epochs=epochs,
              batch_size=32, seed=seed, verbose=False)
    except NumericError:
        return Candidate(config, 0.0, params)
    pred = predict(net.eval(), Xv)
    acc = float(np.mean(np.argmax(pred.reshape(len(yv), -1), axis=-1) == yv))
    return Candidate(config, acc, params)


def evolve(data: tuple[tuple[ArrayLike, ArrayLike], tuple[ArrayLike, ArrayLike]], input_shape: list[int],
           n_classes: int, budget: int, population: int, generations: int, epochs: int, seed: int,
           callback: Callable[[int, dict], object] | None = None) -> SearchResult:
    """Evolve configs for classifying data = ((X_train, y_train), (X_val, y_val)) into n_classes
    (class ids); see the module docstring. callback(generation, {"best", "mean", "params"}) runs
    after each generation is scored."""
    for name, v in (("population", population), ("generations", generations), ("epochs", epochs),
                    ("n_classes", n_classes)):
        _positive(v, name)
    _seed_arg(seed)
    if n_classes < 2:
        raise ConfigError("n_classes", f"expected at least 2 classes, got {n_classes}")
    (X, y), (Xv, yv) = data
    data = ((np.asarray(X, np.float32), np.asarray(y, np.int64)), (np.asarray(Xv, np.float32), np.asarray(yv, np.int64)))
    scored: dict[str, Candidate] = {}

    def score(cfg):
        text = json.dumps(cfg, sort_keys=True)
        if text not in scored:
            scored[text] = evaluate(cfg, data, epochs, seed)
        return scored[text]

    draw = _Draw(seed, STREAM)
    pop = list(generate(input_shape, [n_classes], budget, seed, count=population))
    result = SearchResult({}, -1.0, 0)
    for g in range(generations):
        ranked = sorted((score(c) for c in pop), key=Candidate.key)     # stable: ties keep the earlier
        best = ranked[0]
        if (best.fitness, -best.params) > (result.fitness, -result.params):
            result.config, result.fitness, result.params = best.config, best.fitness, best.params
        stats = {"best": best.fitness, "mean": float(np.mean([c.fitness for c in ranked])), "params": best.params}
        result.generations.append(stats)
        if callback is not None:
            callback(g, stats)
        if g == generations - 1:
            break
        keep = ranked[:max(1, population // 3)]
        pop = [c.config for c in keep]
        while len(pop) < population:
            def parent():
                a, b = draw.pick(ranked), draw.pick(ranked)
                return min(a, b, key=Candidate.key).config
            child_seed = draw.int(0, 2**31 - 1)
            child = parent()
            if draw.chance(0.5):
                child = crossover(child, parent(), child_seed, budget=budget)
            pop.append(mutate(child, child_seed, budget=budget))
    return result

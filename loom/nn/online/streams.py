"""Sample streams for online learning: one observation per tick, deterministic from a seed.

Every stream yields float32 observations of shape [6, 8] (the grid-agents example's input: six rows
of eight features, read as a sequence by recurrent and attention networks, as an image by
convolutions) and integer labels: one class id per tick, or one action per agent for the grid task.

  stationary  K classes, each a fixed random [6, 8] prototype; x = prototype[label] + noise
  abrupt      stationary, but at the middle tick every label moves to the next class (label + 1 mod K):
              the same inputs now mean something else, and what was learned is wrong
  drift       the prototypes slide linearly to a second random set over the middle half of the stream
  noisy       stationary, but a fraction of the labels the learner is given are replaced by uniform
              random ones; answers are scored against the true labels
  grid        A agents on a G x G grid walk to their own targets; each tick the network chooses every
              agent's move (stay, +x, -x, +y, -y) from the agents' positions, targets and blocked
              neighbours, the world moves by those choices (an unanswered tick: nobody moves), and the
              label is the expert's move for the same observation. Closed loop: what the network
              answers (and whether it answers in time) changes what it sees next.

A stream is advanced by the harness: `observe(t)` gives tick t's (x, label to learn, label to score);
`act(t, decisions)` applies the decisions answered at tick t (None when the tick went unanswered) and
is a no-op for the open-loop streams. `changes` lists the ticks where the task changes (recovery is
measured from them); `stats()` returns the stream's own outcome counters (the grid's goals reached).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from ...errors import ConfigError

SHAPE = (6, 8)
CLASSES = 4
NOISE = 1.0                 # noise std against prototypes of std 1: learnable, not trivial
NOISY_FRACTION = 0.25
GRID, AGENTS = 8, 4
MOVES = np.array([(0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)])     # stay, +x, -x, +y, -y


class Stream(ABC):
    """Base: an open-loop classification stream over `ticks` ticks."""
    name = ""
    classes = CLASSES
    agents = 1               # labels are scalars; > 1: one label per agent, shape [agents]

    def __init__(self, ticks: int, seed: int):
        if isinstance(ticks, bool) or not isinstance(ticks, int) or ticks < 2:
            raise ConfigError("online.ticks", f"expected an integer >= 2, got {ticks!r}")
        self.ticks = ticks
        self.rng = np.random.default_rng([seed, 7041])
        self.changes: tuple[int, ...] = ()

    @abstractmethod
    def observe(self, t: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Tick t's observation, the label the learner is given and the label answers are scored on."""

    def act(self, t: int, decisions: np.ndarray | None) -> None:
        """Open loop: the answers do not change the stream."""

    def stats(self) -> dict[str, Any]:
        return {}


class _Prototypes(Stream):
    def __init__(self, ticks: int, seed: int):
        super().__init__(ticks, seed)
        self.protos = self.rng.standard_normal((self.classes, *SHAPE))

    def centre(self, t: int, label: int) -> np.ndarray:
        return self.protos[label]

    def true_label(self, t: int) -> int:
        return int(self.rng.integers(self.classes))

    def observe(self, t: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        label = self.true_label(t)
        x = self.centre(t, label) + NOISE * self.rng.standard_normal(SHAPE)
        shown = self.shown_label(t, label)
        return x.astype(np.float32), np.int64(shown), np.int64(self.scored(t, label))

    def shown_label(self, t: int, label: int) -> int:
        return self.scored(t, label)

    def scored(self, t: int, label: int) -> int:
        return label


class Stationary(_Prototypes):
    name = "stationary"


class Abrupt(_Prototypes):
    name = "abrupt"

    def __init__(self, ticks: int, seed: int):
        super().__init__(ticks, seed)
        self.changes = (ticks // 2,)

    def scored(self, t: int, label: int) -> int:
        return (label + 1) % self.classes if t >= self.changes[0] else label


class Drift(_Prototypes):
    name = "drift"

    def __init__(self, ticks: int, seed: int):
        super().__init__(ticks, seed)
        self.target = self.rng.standard_normal(self.protos.shape)
        self.begin, self.end = ticks // 4, 3 * ticks // 4

    def centre(self, t: int, label: int) -> np.ndarray:
        w = min(max((t - self.begin) / max(self.end - self.begin, 1), 0.0), 1.0)
        return (1 - w) * self.protos[label] + w * self.target[label]


class Noisy(_Prototypes):
    name = "noisy"

    def shown_label(self, t: int, label: int) -> int:
        if self.rng.random() < NOISY_FRACTION:
            return int(self.rng.integers(self.classes))
        return label


class Grid(Stream):
    """AGENTS agents on a GRID x GRID board (see the module docstring)."""
    name = "grid"
    classes = len(MOVES)
    agents = AGENTS

    def __init__(self, ticks: int, seed: int):
        super().__init__(ticks, seed)
        cells = self.rng.choice(GRID * GRID, size=2 * AGENTS, replace=False)
        self.pos = np.stack([cells[:AGENTS] % GRID, cells[:AGENTS] // GRID], axis=1)
        self.goal = np.stack([cells[AGENTS:] % GRID, cells[AGENTS:] // GRID], axis=1)
        self.goals = self.collisions = self.moves = 0
        self._label = None

    def _occupied(self, cell, me: int) -> bool:
        return any(j != me and (self.pos[j] == cell).all() for j in range(AGENTS))

    def _blocked(self, i: int, axis: int) -> tuple[int, bool]:
        """The step toward agent i's goal along `axis` (0 when aligned) and whether it is taken."""
        d = int(np.sign(self.goal[i, axis] - self.pos[i, axis]))
        if d == 0:
            return 0, False
        cell = self.pos[i].copy()
        cell[axis] += d
        return d, self._occupied(cell, i)

    def _expert(self, i: int) -> int:
        """Move along the longer axis toward the goal (x on ties); the other axis when that cell is
        taken; stay when both are taken or the goal is reached."""
        gap = np.abs(self.goal[i] - self.pos[i])
        order = (0, 1) if gap[0] >= gap[1] else (1, 0)
        for axis in order:
            d, blocked = self._blocked(i, axis)
            if d != 0 and not blocked:
                return 1 + 2 * axis + (0 if d > 0 else 1)
        return 0

    def observe(self, t: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = np.zeros(SHAPE, dtype=np.float32)
        for i in range(AGENTS):
            dx, bx = self._blocked(i, 0)
            dy, by = self._blocked(i, 1)
            x[i] = [*(self.pos[i] / GRID), *(self.goal[i] / GRID), dx, dy, float(bx), float(by)]
        label = np.array([self._expert(i) for i in range(AGENTS)], dtype=np.int64)
        return x, label, label

    def act(self, t: int, decisions: np.ndarray | None) -> None:
        if decisions is None:
            return
        for i, a in enumerate(np.asarray(decisions).reshape(AGENTS)):
            cell = self.pos[i] + MOVES[int(a)]
            if int(a) == 0:
                continue
            if not ((0 <= cell) & (cell < GRID)).all() or self._occupied(cell, i):
                self.collisions += 1
                continue
            self.pos[i] = cell
            self.moves += 1
            if (cell == self.goal[i]).all():
                self.goals += 1
                while True:       # a fresh goal, off every agent
                    g = self.rng.integers(GRID, size=2)
                    if not any((self.pos[j] == g).all() for j in range(AGENTS)):
                        break
                self.goal[i] = g

    def stats(self) -> dict[str, Any]:
        per = 1000 / self.ticks
        return {"goals_per_1000": self.goals * per, "collisions_per_1000": self.collisions * per}


STREAMS: dict[str, type[Stream]] = {s.name: s for s in (Stationary, Abrupt, Drift, Noisy, Grid)}


def build(name: str, ticks: int, seed: int) -> Stream:
    """The stream called `name` (ConfigError naming it when unknown)."""
    if name not in STREAMS:
        raise ConfigError("online.stream", f"unknown stream {name!r}; expected one of {', '.join(STREAMS)}")
    return STREAMS[name](ticks, seed)

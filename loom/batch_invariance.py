"""Batch invariance: a sample's bits do not depend on the batch it runs in.

In deterministic mode every exact scheme is chosen from the dtype and the reduced length alone
(loom/kernels/exact/dispatch.py), so a network in inference mode gives each sample's output row,
and the input-gradient row for its own upstream-gradient row, the same bits whether the sample runs
alone, at another position, or beside padding rows of NaN, huge or zero values. `check()` runs one
network through those arrangements and names the first row that differs; `loom verify` runs it on
every catalogue sample, and the tests on the LLM decoder and encoder too.

Layers whose meaning mixes the rows of a batch (openfluke_softmax with `"normalize": "batch"` and
openfluke_attention, `"span": "batch"`) are outside the promise: `mixes_rows` finds them in a config.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from . import rng
from .errors import DeterminismError

if TYPE_CHECKING:
    from .nn import Network

# padding rows put beside the batch: values that would leak into other rows through any shared
# scale, maximum or memory budget
PADDING = {"NaN": np.nan, "huge": 3.0e38, "zero": 0.0, "tiny": 1.0e-40}


def mixes_rows(layers: list[Any]) -> bool:
    """Whether a config's layers (a list of layer dicts) define an output row from other rows."""
    for layer in layers:
        if not isinstance(layer, dict):
            continue
        if _mixes(layer):
            return True
        children = list(layer.get("layers", ())) + list(layer.get("branches", ()))
        if isinstance(layer.get("gate"), dict):         # parallel's filter gate: a layer of its own
            children.append(layer["gate"])
        if mixes_rows(children):
            return True
    return False


def _mixes(layer: dict) -> bool:
    """Whether one layer (not its children) mixes rows; a key left out takes its default."""
    kind = layer.get("type")
    if kind == "openfluke_softmax":
        return layer.get("normalize", "batch") == "batch"
    if kind == "openfluke_attention":
        return layer.get("span", "batch") == "batch"
    # a core layer setting a switch of the openfluke types: loom.config reads it as that type
    return kind in ("softmax", "multi_head_attention") and (layer.get("normalize") == "batch"
                                                           or layer.get("span") == "batch")


def arrangements(x: np.ndarray) -> list[tuple[str, np.ndarray, list[int]]]:
    """(what, batch, where): batches that hold every row of x (x's row i at batch[where[i]]): x
    reversed, and x between two padding rows of each PADDING value (token ids: of id 0)."""
    n = x.shape[0]
    fills = PADDING if x.dtype.kind == "f" else {"id 0": 0}
    out = [("reversed", x[::-1].copy(), list(range(n - 1, -1, -1)))]
    for name, value in fills.items():
        pad = np.full((1,) + x.shape[1:], value, dtype=x.dtype)
        out.append((f"between {name} rows", np.concatenate([pad, x, pad]), list(range(1, n + 1))))
    return out


def check(run: Callable[[np.ndarray, np.ndarray | None], tuple[np.ndarray, np.ndarray | None]], x: np.ndarray,
          dy: np.ndarray | None = None, where: str = "network") -> np.ndarray:
    """The whole batch's output; raises DeterminismError unless `run(batch, dy_batch) -> (y, dx)`
    gives every row of x the same bits alone, in the batch x, reversed, and beside padding rows.
    `run` gets host arrays and returns host arrays (dx may be None; dy_batch is None when dy is)."""
    y_full, dx_full = run(x, dy)
    for i in range(x.shape[0]):
        y, dx = run(x[i:i + 1], None if dy is None else dy[i:i + 1])
        _compare(where, f"alone (row {i})", y_full[i], y[0], _row(dx_full, i), _row(dx, 0))
    for what, batch, rows in arrangements(x):
        dyb = None
        if dy is not None:
            dyb = rng.Generator(0, "batch_invariance.padding").normal(
                (batch.shape[0],) + dy.shape[1:], dtype=dy.dtype)
            dyb[rows] = dy
        y, dx = run(batch, dyb)
        for i, r in enumerate(rows):
            _compare(where, f"{what} (row {i} at {r})", y_full[i], y[r], _row(dx_full, i), _row(dx, r))
    return y_full


def _row(a, i):
    return None if a is None else a[i]


def _compare(where: str, what: str, y_want, y_got, dx_want, dx_got) -> None:
    for name, want, got in (("output", y_want, y_got), ("input gradient", dx_want, dx_got)):
        if want is None:
            continue
        want, got = np.ascontiguousarray(want), np.ascontiguousarray(got)
        if want.shape != got.shape or want.tobytes() != got.tobytes():
            raise DeterminismError(f"{where}: the {name} of a sample run {what} differs from the same sample "
                                   f"in the whole batch ({_differing(want, got)} of {want.size} entries differ)")


def _differing(want: np.ndarray, got: np.ndarray):
    if want.shape != got.shape:
        return "all"
    as_bytes = lambda a: a.reshape(-1).view(np.uint8).reshape(a.size, a.itemsize)  # noqa: E731
    return int(np.count_nonzero((as_bytes(want) != as_bytes(got)).any(axis=1)))


def network_runner(net: Network, backward: bool = True
                   ) -> Callable[[np.ndarray, np.ndarray | None], tuple[np.ndarray, np.ndarray | None]]:
    """`run` for check(): the network's forward (and backward with the given upstream gradient) in
    its current mode, on host arrays."""
    be = net.backend

    def run(x, dy):
        y = net(be.asarray(x))
        dx = None
        if backward and dy is not None and np.asarray(x).dtype.kind == "f":
            net.zero_grad()
            dx = net.backward(be.asarray(dy))
        return be.to_numpy(y), None if dx is None else be.to_numpy(dx)
    return run


def check_network(net: Network, x: np.ndarray, where: str, seed: int = 0) -> np.ndarray:
    """check() for a Network in inference mode: the output and the input gradient of each row; returns
    the whole batch's output."""
    y = network_runner(net, backward=False)(x[:1], None)[0]
    dy = rng.Generator(seed, f"batch_invariance.{where}").normal((x.shape[0],) + y.shape[1:], dtype=y.dtype)
    return check(network_runner(net), x, dy, where)

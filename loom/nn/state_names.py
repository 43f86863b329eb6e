"""How Network.load_state_dict pairs the names of a state dict with the network's own.

A state dict made by a PyTorch module names its tensors after the module's attributes (`0.weight`
for an `nn.Sequential`, `fc1.weight`, `encoder.2.bias`); Loom names them after the layer's position
(`layers.0.weight`). The rule, in three steps:

1. PyTorch layouts that Loom stores split are renamed first: `*.in_proj_weight` / `*.in_proj_bias`
   of an `nn.MultiheadAttention` become `q_proj` / `k_proj` / `v_proj` (three equal row blocks,
   reported as `attn.in_proj_weight[0:8]` ...) and its `out_proj.*` becomes `o_proj.*`; a recurrent
   layer's `_l0` suffix is dropped (`weight_ih_l0` -> `weight_ih`).
2. Exact names: every tensor whose name is a network name goes there (a name as given before a
   renamed one).
3. Structural order for the rest: the leftover tensors, in the state dict's order (PyTorch's is
   module registration order), are paired one to one with the leftover network tensors in the
   network's order (layer by layer, each layer's parameters then its buffers, as PyTorch orders
   them). Each pair must have the same shape and the same role (the last name part, one of
   PyTorch's: weight, bias, running_mean, running_var, num_batches_tracked, weight_ih, ...; `_lN`
   dropped; a name without one, such as a registered `position_ids` buffer, pairs only with another
   such name), else ShapeError naming both tensors and both shapes. Before pairing, a tensor whose
   role no leftover on the other side could take (a bidirectional LSTM's `*_reverse`, batch-norm
   statistics when the other side has none, a role-less buffer) is set aside, never assigned.
   Pairing stops where the shorter side ends.
   If the tensors paired by name and by order, taken in the state dict's order, do not land in the
   network's order, and a name that matched and one that did not share a numbered container
   (`layers.2.weight` matched, `layers.4.weight` did not), the two sides number their layers
   differently (PyTorch's `layers.2` in a Sequential of Linear, ReLU, Linear, ReLU, Linear is Loom's
   `layers.1`): everything is paired by order instead.

What is left after pairing is reported: `missing_keys` (network names that got nothing) and
`unexpected_keys` (state dict names that went nowhere). Nothing here copies an array or touches a
network; note() only logs.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ShapeError

log = logging.getLogger("loom")

_ROLES = frozenset({"weight", "bias", "running_mean", "running_var", "num_batches_tracked", "in_proj_weight",
                    "in_proj_bias", "q_proj_weight", "k_proj_weight", "v_proj_weight", "bias_k", "bias_v"})
_RECURRENT = re.compile(r"^(weight|bias)_(ih|hh|hr)(?:_l\d+)?(_reverse)?$")


@dataclass
class LoadResult:
    """What load_state_dict did. Unpacks like PyTorch's `_IncompatibleKeys`:
    `missing, unexpected = net.load_state_dict(sd, strict=False)`."""
    missing_keys: list[str]               # network names that received nothing
    unexpected_keys: list[str]            # state dict names that went nowhere
    mapping: list[tuple[str, str]]        # (state dict name, network name) wherever the two differ

    def __iter__(self) -> Iterator[list[str]]:
        return iter((self.missing_keys, self.unexpected_keys))


@dataclass(frozen=True)
class Entry:
    """One tensor of a state dict: `key` as given, `label` as reported (a block of a packed tensor
    adds its row range), `name` as tried against the network's names (after step 1's renames)."""
    key: str
    label: str
    name: str
    value: Any


def shape_of(value: Any) -> tuple[int, ...]:
    """The shape of an array of any kind (NumPy, CuPy, torch, AffineQuantized, nested lists)."""
    shape = getattr(value, "shape", None)
    return tuple(int(d) for d in shape) if shape is not None else tuple(np.shape(value))


def role(name: str) -> str | None:
    """The PyTorch role of a tensor name (its last part, `_lN` dropped), or None for other names."""
    last = name.rpartition(".")[2]
    m = _RECURRENT.match(last)
    if m:
        return f"{m[1]}_{m[2]}{m[3] or ''}"
    return last if last in _ROLES else None


def entries(state: Mapping[str, Any]) -> list[Entry]:
    """The state dict as Entries, in its order, with step 1's renames and splits applied."""
    packed = {_prefix(k) for k, v in state.items() if k.rpartition(".")[2] == "in_proj_weight" and _splits(v)}
    out = []
    for key, value in state.items():
        pre, last = _prefix(key), key.rpartition(".")[2]
        if pre in packed and last == "in_proj_weight":
            bias = state.get(pre + "in_proj_bias")
            out += _split(pre, key, value, pre + "in_proj_bias" if _splits(bias) else None, bias)
        elif pre in packed and last == "in_proj_bias" and _splits(value):
            continue                                            # emitted with the weight, in Loom's order
        elif pre.endswith("out_proj.") and pre.removesuffix("out_proj.") in packed:
            out.append(Entry(key, key, pre.removesuffix("out_proj.") + "o_proj." + last, value))
        else:
            name = key[:-3] if _RECURRENT.match(last) and last.endswith("_l0") else key
            out.append(Entry(key, key, name, value))
    return out


def match(state: Mapping[str, Any], target: Mapping[str, tuple[int, ...]]) -> tuple[list[tuple[str, Any]], LoadResult]:
    """Pair `state` with the network's names (`target`: name -> shape, in the network's order) by
    the rule above. Returns the (network name, value) assignments and the LoadResult; raises
    ShapeError for a pair whose shapes (or roles) differ, before anything is assigned."""
    given = entries(state)
    pairs = _pair(given, target, by_name=True)
    if not _in_order(given, pairs, target) and _numbered_differently(given, pairs):
        # Names that match but mean other layers (PyTorch's `layers.2` is the second Linear of a
        # Sequential with activations between, Loom's the third layer): pair everything by order.
        pairs = _pair(given, target, by_name=False)
    taken = {id(e) for e in pairs.values()}
    result = LoadResult(missing_keys=[n for n in target if n not in pairs],
                        unexpected_keys=[e.label for e in given if id(e) not in taken],
                        mapping=[(pairs[n].label, n) for n in target if n in pairs and pairs[n].label != n])
    return [(n, pairs[n].value) for n in target if n in pairs], result


def _pair(given: list[Entry], target: Mapping[str, tuple[int, ...]], by_name: bool) -> dict[str, Entry]:
    """Network name -> Entry: by exact name first (when by_name), then the rest by order."""
    pairs: dict[str, Entry] = {}
    for literal in (True, False) if by_name else ():            # a name as given beats a renamed one
        for e in given:
            if (e.label == e.name) == literal and e.name in target and e.name not in pairs:
                _check_pair(e, e.name, target[e.name], 0, 0)
                pairs[e.name] = e
    taken = {id(e) for e in pairs.values()}
    rest = [e for e in given if id(e) not in taken]
    open_ = [n for n in target if n not in pairs]
    rest = _takeable(rest, {role(n) for n in open_}, lambda e: role(e.name))
    open_ = _takeable(open_, {role(e.name) for e in rest}, role)
    for e, name in zip(rest, open_):
        _check_pair(e, name, target[name], len(rest), len(open_))
        pairs[name] = e
    return pairs


def _in_order(given: list[Entry], pairs: dict[str, Entry], target: Mapping[str, tuple[int, ...]]) -> bool:
    """Whether the assigned tensors, taken in the state dict's order, land in the network's order.
    Pairs made by name alone (nothing paired by order) are always accepted."""
    if all(e.name == n for n, e in pairs.items()):
        return True
    position = {n: i for i, n in enumerate(target)}
    where = {id(e): position[n] for n, e in pairs.items()}
    landed = [where[id(e)] for e in given if id(e) in where]
    return all(a < b for a, b in zip(landed, landed[1:]))


def _container(name: str) -> str | None:
    """The part of a name before its first integer component ("layers.4.weight" -> "layers."), or None."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[:i]) + "."
    return None


def _numbered_differently(given: list[Entry], pairs: dict[str, Entry]) -> bool:
    """Whether a tensor matched by name and one that did not sit in the same numbered container
    (`layers.2.weight` matched, `layers.4.weight` did not): the two sides number their layers
    differently, so the matching names are a coincidence."""
    matched = {id(e) for n, e in pairs.items() if e.name == n}
    inside = {_container(e.name) for e in given if id(e) in matched} - {None}
    return any(_container(e.name) in inside for e in given if id(e) not in matched)


def note(result: LoadResult) -> None:
    """Log, at INFO on the "loom" logger, which tensors went where and which were left out."""
    if result.mapping:
        log.info("load_state_dict: %d tensors loaded under other names:\n%s", len(result.mapping),
                 "\n".join(f"  {src} -> {dst}" for src, dst in result.mapping))
    if result.unexpected_keys:
        log.info("load_state_dict: not loaded (no counterpart in the network): %s", ", ".join(result.unexpected_keys))
    if result.missing_keys:
        log.info("load_state_dict: left as they were (nothing in the state dict): %s", ", ".join(result.missing_keys))


def _prefix(key: str) -> str:
    head = key.rpartition(".")[0]
    return head + "." if head else ""


def _splits(value: Any) -> bool:
    """Whether value is an array packing q, k and v as three equal row blocks."""
    if value is None or not hasattr(value, "__getitem__"):
        return False
    shape = shape_of(value)
    return len(shape) in (1, 2) and shape[0] % 3 == 0 and shape[0] > 0


def _split(pre: str, wkey: str, weight: Any, bkey: str | None, bias: Any) -> list[Entry]:
    """q, k, v weight and bias blocks of a packed in-projection, interleaved as Loom orders them."""
    out = []
    for i, p in enumerate(("q_proj", "k_proj", "v_proj")):
        for key, value, part in ((wkey, weight, "weight"), (bkey, bias, "bias")):
            if key is not None:
                n = shape_of(value)[0] // 3
                out.append(Entry(key, f"{key}[{i * n}:{(i + 1) * n}]", f"{pre}{p}.{part}", value[i * n:(i + 1) * n]))
    return out


def _takeable(items: list, other_roles: set[str | None], role_of: Callable[[Any], str | None]) -> list:
    """The items that some leftover on the other side could take by role (the rest are set aside)."""
    return [item for item in items if role_of(item) in other_roles]


def _check_pair(e: Entry, name: str, dst: tuple[int, ...], n_src: int, n_dst: int) -> None:
    """ShapeError unless e can load into the network's tensor `name` of shape dst (n_src, n_dst:
    the leftovers paired by order, for the message; 0 for a pair made by name)."""
    src, r_src, r_dst = shape_of(e.value), role(e.name), role(name)
    if e.label == name:
        if src != tuple(dst):
            raise ShapeError(f"{name}: shape {list(src)} does not match the network's {list(dst)}")
        return
    if r_src != r_dst:
        why = f"roles differ ({r_src or 'none'} vs {r_dst or 'none'})"
    elif src != tuple(dst):
        why = "shapes differ"
    else:
        return
    hint = (f"; names that differ are paired in order ({n_src} state dict tensors left for {n_dst} network "
            "tensors): rename or drop tensors so the two orders agree") if n_src else ""
    raise ShapeError(f"state dict tensor {e.label} {list(src)} cannot load into {name} {list(dst)}: {why}{hint}")

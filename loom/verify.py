"""loom.verify(): proof that every backend computes the same bits.

For each backend it fingerprints (SHA-256 of dtype, shape and bytes) the results of:
- every layer sample in loom.nn.catalogue: the training-mode forward output, the input gradient
  (float inputs), every parameter gradient and every buffer, for a fixed random upstream gradient;
- every optimizer type with its defaults: the weights of a small network after one step;
- the demo convnet (the `loom demo` config) trained `steps` steps by loom.train on a fixed slice of
  the bundled digits: the final weights and the loss history, in float32 and in bf16 mixed precision
  ("demo bf16": every product's operands rounded to bfloat16, loom/mixed_precision.py);
- in deterministic mode, batch invariance: every catalogue sample whose rows are independent
  (loom.batch_invariance) gives each row's output and input gradient the same bits alone, reordered
  and beside NaN, huge, zero and subnormal padding rows; the row shows the batch's output fingerprint.
Inputs and upstream gradients come from loom.rng and weights from the config's seed, so they are
the same bits everywhere; only the arithmetic under test can differ.

Backends: "cpu" (this process, default BLAS thread count), "cpu:1thread" (a subprocess with every
BLAS/OpenMP pool pinned to one thread: the thread count must not matter either, and this pair exists
on any machine) and "cuda" (when loom.backend can provide it).
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources

import numpy as np

from . import backend as _backend
from . import batch_invariance, mode, rng
from .backend import Array
from .errors import BackendError, ConfigError

BACKENDS = ("cpu", "cpu:1thread", "cuda")
THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
BATCH = 4                # > 1 so that batch norm has statistics to compute
SEED = 0
SEP = "  "               # between a row's subject and its check: "dense  grad weight"
SHORT = 16               # hex characters shown per fingerprint in the table
# A small network for the optimizer steps: two parameterized layer kinds, a float32 default net.
OPTIMIZER_LAYERS = [{"type": "dense", "units": 5, "activation": "tanh"}, {"type": "layer_norm"},
                    {"type": "dense", "units": 3}]
OPTIMIZER_INPUT = [6]
DEMO_BATCHES_PER_EPOCH = 10   # at most; the demo runs `steps` steps as epochs x batches


# --- fingerprints -----------------------------------------------------------------------------------

def fingerprint(array: Array) -> str:
    """SHA-256 hex of an array's dtype, shape and bytes (from any backend), so equal fingerprints mean
    bit-identical arrays, -0.0 and NaN payloads included."""
    a = np.ascontiguousarray(_host(array))
    h = hashlib.sha256(f"{a.dtype.str}{list(a.shape)}\0".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def combined(arrays: dict) -> str:
    """One fingerprint for named arrays (a whole state dict), independent of dict order."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        h.update(f"{name}\0{fingerprint(arrays[name])}\0".encode())
    return h.hexdigest()


def _host(array) -> np.ndarray:
    if isinstance(array, (np.ndarray, np.generic, float, int)):
        return np.asarray(array)
    return _backend.of(array).to_numpy(array)


# --- the computations on one backend ----------------------------------------------------------------

def compute(device: str, steps: int = 50, samples: list[str] | None = None) -> dict[str, str]:
    """Every check's fingerprint on `device` ("cpu" or "cuda") in the current mode, in table order.

    A check that raises is recorded as "error: ..." (and its later checks are missing), so one broken
    layer on one backend shows as a mismatch instead of hiding every other result."""
    from .nn.catalogue import SAMPLES
    from .nn.optim import TYPES
    out: dict[str, str] = {}
    for name, layers, shape, idt in _select(SAMPLES, samples):
        guarded(out, f"{name}{SEP}forward", lambda: _layer_checks(device, name, layers, shape, idt))
    if mode.is_deterministic():     # fast mode promises no batch invariance
        for name, layers, shape, idt in _select(SAMPLES, samples):
            if not batch_invariance.mixes_rows(layers):
                check = f"{name}{SEP}batch-invariant"
                guarded(out, check, lambda: {check: _batch_check(device, name, layers, shape, idt)})
    for kind in TYPES:
        guarded(out, f"{kind}{SEP}step", lambda: {f"{kind}{SEP}step": _optimizer_step(device, kind)})
    guarded(out, f"demo{SEP}weights after {steps} steps", lambda: _demo_checks(device, steps))
    guarded(out, f"demo bf16{SEP}weights after {steps} steps", lambda: _demo_checks(device, steps, "bf16"))
    return out


def _select(samples, names):
    if names is None:
        return samples
    known = {s[0] for s in samples}
    for n in names:
        if n not in known:
            raise ConfigError("samples", f"unknown catalogue sample {n!r}; expected a name from "
                              "loom.nn.catalogue.SAMPLES such as 'dense' or 'softmax/grid'")
    return [s for s in samples if s[0] in set(names)]


def guarded(out: dict, first_check: str, checks: Callable[[], dict[str, str]]) -> None:
    """out.update(checks()), or, where checks() raises, out[first_check] = "error: ..." (a mismatch in
    the table, the message among the errors)."""
    try:
        out.update(checks())
    except Exception as exc:  # reported in the table as a mismatch, with the message in the errors
        out[first_check] = f"error: {type(exc).__name__}: {exc}"


def _layer_checks(device, name, layers, shape, idt) -> dict[str, str]:
    from .nn import Network
    from .nn.catalogue import config
    net = Network.from_config(config(layers, shape, idt)).to(device).train()
    x = sample_input(name, layers, shape, idt)
    y = net(net.backend.asarray(x))
    dy = rng.Generator(SEED, f"verify.{name}.upstream").normal(tuple(y.shape), dtype=np.dtype(y.dtype))
    dx = net.backward(net.backend.asarray(dy))
    out = {f"{name}{SEP}forward": fingerprint(y)}
    if dx is not None:
        out[f"{name}{SEP}grad input"] = fingerprint(dx)
    for key, g in net.gradients().items():
        out[f"{name}{SEP}grad {_short(key)}"] = fingerprint(g)
    for key, b in net.buffers().items():
        out[f"{name}{SEP}buffer {_short(key)}"] = fingerprint(b)
    return out


def _batch_check(device, name, layers, shape, idt) -> str:
    """The fingerprint of the sample's inference-mode output for a batch, once batch_invariance.check
    has found every row's output and input gradient the same alone, reordered and beside padding
    rows (it raises, and the row reads ERROR, otherwise)."""
    from .nn import Network
    from .nn.catalogue import config
    net = Network.from_config(config(layers, shape, idt)).to(device)
    with np.errstate(all="ignore"):                    # NaN and huge padding rows
        return fingerprint(batch_invariance.check_network(net, sample_input(name, layers, shape, idt), name))


def sample_input(name: str, layers: list[dict], shape: Sequence[int], idt: str | None) -> np.ndarray:
    """A catalogue sample's fixed input batch [BATCH, *shape] from loom.rng: token ids below the
    embedding's vocabulary, or standard normal float32 values."""
    gen = rng.Generator(SEED, f"verify.{name}.input")
    if idt:       # token ids below the embedding's vocabulary
        return (gen.bits((BATCH, *shape)) % np.uint32(layers[0].get("vocab_size", 10))).astype(idt)
    return gen.normal((BATCH, *shape), dtype=np.float32)


def _short(key: str) -> str:
    """Every sample is one top-level layer: drop its "layers.0." prefix from parameter names."""
    return key[len("layers.0."):] if key.startswith("layers.0.") else key


def _optimizer_step(device: str, kind: str) -> str:
    from .nn import Network
    from .nn.catalogue import config
    from .nn.optim import build
    net = Network.from_config(config(OPTIMIZER_LAYERS, OPTIMIZER_INPUT)).to(device).train()
    x = rng.Generator(SEED, "verify.optimizer.input").normal((BATCH, *OPTIMIZER_INPUT), dtype=np.float32)
    y = net(net.backend.asarray(x))
    dy = rng.Generator(SEED, "verify.optimizer.upstream").normal(tuple(y.shape), dtype=np.float32)
    net.backward(net.backend.asarray(dy))
    build({"type": kind}, net.parameters()).step(net.gradients())   # built after .to(): live arrays
    return combined(net.parameters())


def demo_config() -> dict:
    """The `loom demo` network and training settings (package data of loom.cli, read as a file so
    this module does not import the CLI layer above it)."""
    return json.loads(resources.files("loom.cli").joinpath("digits-convnet.json").read_text(encoding="utf-8"))


def demo_plan(steps: int, batch_size: int) -> tuple[int, int]:
    """(samples, epochs) so that loom.train runs exactly `steps` optimizer steps: as many full batches
    per epoch as divide `steps` (up to DEMO_BATCHES_PER_EPOCH), so the loss history has one entry per
    epoch and several epochs reshuffle."""
    per_epoch = max(b for b in range(1, min(steps, DEMO_BATCHES_PER_EPOCH) + 1) if steps % b == 0)
    return per_epoch * batch_size, steps // per_epoch


def _demo_checks(device: str, steps: int, precision: str = "float32") -> dict[str, str]:
    """The demo trained `steps` steps, in float32 or bf16 mixed precision (its rows "demo bf16")."""
    from . import datasets
    from .nn import Network
    from .nn.train import train
    cfg = demo_config()
    net = Network.from_config(cfg).to(device)
    n, epochs = demo_plan(steps, cfg["training"]["batch_size"])
    X, Y = datasets.load_digits()       # the file's first n images: a fixed slice
    history = train(net, X[:n], Y[:n], epochs=epochs, verbose=False, precision=precision)
    name = "demo" if precision == "float32" else f"demo {precision}"
    return {f"{name}{SEP}weights after {steps} steps": combined(net.state_dict()),
            f"{name}{SEP}loss history": fingerprint(np.asarray(history["loss"], dtype=np.float64))}


# --- the report ------------------------------------------------------------------------------------

@dataclass
class Report:
    """Fingerprints per backend (check -> SHA-256 hex, or "error: ..."), and the backends that could
    not run with the reason."""
    mode: str
    steps: int
    fingerprints: dict[str, dict[str, str]] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)       # backend -> threads, timing

    @property
    def backends(self) -> list[str]:
        return list(self.fingerprints)

    @property
    def checks(self) -> list[str]:
        """Every check any backend reported, in the order the first backend reported them."""
        seen: dict[str, None] = {}
        for fps in self.fingerprints.values():
            seen.update(dict.fromkeys(fps))
        return list(seen)

    def agrees(self, check: str) -> bool:
        values = [fps.get(check) for fps in self.fingerprints.values()]
        return None not in values and not values[0].startswith("error") and len(set(values)) == 1

    @property
    def mismatches(self) -> list[str]:
        return [c for c in self.checks if not self.agrees(c)]

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def errors(self) -> list[str]:
        return [f"{b}: {c}: {v[len('error: '):]}" for b, fps in self.fingerprints.items()
                for c, v in fps.items() if v.startswith("error")]

    def summary(self) -> str:
        bad = self.mismatches
        verdict = "all agree bit-for-bit" if not bad else f"{len(bad)} mismatch{'es' if len(bad) > 1 else ''}"
        n = len(self.backends)
        return f"{len(self.checks)} checks, {n} backend{'s' if n != 1 else ''}: {verdict}"

    def table(self) -> str:
        checks, cols = self.checks, self.backends
        width = max([len(c) for c in checks] + [5])
        colw = [max(SHORT, len(b)) for b in cols]
        lines = [f"loom verify: {self.mode} mode, demo trained {self.steps} steps"]
        for b in cols:
            lines.append(f"  {b:<12} {self.notes.get(b, '')}")
        for b, why in self.unavailable.items():
            lines.append(f"  {b:<12} unavailable: {why}")
        lines.append("")
        lines.append(f"{'check':<{width}}  " + "  ".join(f"{b:<{w}}" for b, w in zip(cols, colw)) + "  agree")
        for c in checks:
            cells = [_cell(self.fingerprints[b].get(c)) for b in cols]
            mark = "=" if self.agrees(c) else "MISMATCH"
            lines.append(f"{c:<{width}}  " + "  ".join(f"{v:<{w}}" for v, w in zip(cells, colw)) + f"  {mark}")
        lines.append("")
        lines.extend(f"error on {e}" for e in self.errors())
        lines.append(self.summary())
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"mode": self.mode, "steps": self.steps, "backends": self.backends,
                "unavailable": self.unavailable, "notes": self.notes, "all_agree": self.ok,
                "checks": [{"check": c, "agree": self.agrees(c),
                            "fingerprints": {b: self.fingerprints[b].get(c) for b in self.backends}}
                           for c in self.checks]}


def _cell(value) -> str:
    if value is None:
        return "-"
    return "ERROR" if value.startswith("error") else value[:SHORT]


# --- running every backend -------------------------------------------------------------------------

def verify(backends: list[str] | None = None, steps: int = 50, samples: list[str] | None = None) -> Report:
    """Fingerprint every check on each backend (None: "cpu", "cpu:1thread" and "cuda" when it is
    available) in the current mode (`with loom.deterministic(False):` verifies fast mode).

    A backend named explicitly that cannot run raises BackendError; with None, cuda is listed in
    Report.unavailable instead. `samples` restricts the layer checks to these catalogue names."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError("steps", f"expected a positive integer, got {steps!r}")
    explicit = backends is not None
    names = list(backends) if explicit else list(BACKENDS)
    for b in names:
        if b not in BACKENDS:
            raise BackendError(f"unknown verify backend {b!r}; expected one of {list(BACKENDS)}")
    report = Report(mode=mode.name(), steps=steps)
    for b in names:
        start = time.perf_counter()
        if b == "cpu:1thread":
            report.fingerprints[b] = _one_thread(steps, samples)
            note = "subprocess, " + ", ".join(f"{v}=1" for v in THREAD_VARS)
        else:
            if b == "cuda":
                try:
                    _backend.get("cuda")
                except BackendError as exc:
                    if explicit:
                        raise
                    report.unavailable[b] = str(exc)
                    continue
            report.fingerprints[b] = compute(b, steps, samples)
            note = "this process, " + (_threads_here() if b == "cpu" else _gpu_name())
        report.notes[b] = f"{note}; {time.perf_counter() - start:.1f}s"
    return report


def _threads_here() -> str:
    pinned = [f"{v}={os.environ[v]}" for v in THREAD_VARS if v in os.environ]
    return ", ".join(pinned) if pinned else f"default BLAS threads ({os.cpu_count()} CPUs)"


def _gpu_name() -> str:
    gpus = _backend.get("cuda").devices()
    return gpus[0]["name"] if gpus else "no GPU listed"


def _one_thread(steps: int, samples) -> dict[str, str]:
    """The cpu checks in a fresh interpreter whose BLAS pools start with one thread (the variables are
    read when NumPy loads its BLAS, so this cannot be done in-process)."""
    env = dict(os.environ, **{v: "1" for v in THREAD_VARS})
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))    # this loom, not another one
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in [env.get("PYTHONPATH")] if p])
    cmd = [sys.executable, "-m", "loom", "verify", "--emit-json", "--steps", str(steps)]
    cmd += [] if mode.is_deterministic() else ["--fast"]
    for s in samples or ():
        cmd += ["--sample", s]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise BackendError(f"the cpu:1thread subprocess failed (exit {proc.returncode}): {last}")
    data = json.loads(proc.stdout)
    if data["mode"] != mode.name():
        raise BackendError(f"the cpu:1thread subprocess ran in {data['mode']} mode, expected {mode.name()}")
    return data["fingerprints"]


def emit_json(steps: int, samples: list[str] | None) -> str:
    """What the cpu:1thread subprocess prints: the mode and this process's cpu fingerprints."""
    return json.dumps({"mode": mode.name(), "fingerprints": compute("cpu", steps, samples)})


__all__ = ["verify", "compute", "guarded", "sample_input", "fingerprint", "combined", "Report", "BACKENDS",
           "demo_config", "demo_plan"]

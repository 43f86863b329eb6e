"""loom.train: fit a network to (X, Y) with a loss and an optimizer, epoch by epoch.

Everything that could make two runs differ comes from the counter RNG or is saved in checkpoints:
the shuffle of epoch e is a pure function of (seed, e); dropout/gumbel noise follows the network's
rng_counter; a checkpoint holds weights, buffers, optimizer state, rng_counter, the epoch reached,
the history and the early-stopping state. So training N epochs straight and training k epochs,
resuming from the checkpoint and training N - k more give bit-identical weights.
"""
from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from collections.abc import Callable, Iterable, KeysView, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import ArrayLike

from .. import mixed_precision, mode, rng
from ..backend import Array
from ..errors import ConfigError, NumericError, ShapeError, renamed_paths
from . import files, loss_choice, losses, metrics, optim
from .chain import TrainStep
from .finite_guard import Guard as _Guard
from .network import Network
from .progress import Progress
from .schedules import Schedule
from .telemetry import Telemetry
from .telemetry import from_setting as telemetry_setting

DEFAULTS = {"loss": None, "optimizer": {"type": "adam", "lr": 1e-3}, "schedule": None, "epochs": 10,
            "batch_size": 32, "validation": None, "seed": 0, "metrics": None, "early_stopping": None,
            "shuffle": True, "freeze": None}


@dataclass
class History:
    """Per-epoch logs: history["loss"], history["val_loss"], history["accuracy"], history["lr"], ..."""
    logs: dict[str, list[float]] = field(default_factory=dict)
    epochs: int = 0
    stopped_early: bool = False
    telemetry: Telemetry | None = None      # what loom.train(..., telemetry=...) recorded

    def __getitem__(self, key: str) -> list[float]:
        return self.logs[key]

    def __contains__(self, key: object) -> bool:
        return key in self.logs

    def keys(self) -> KeysView[str]:
        return self.logs.keys()

    def add(self, logs: dict) -> None:
        for k, v in logs.items():
            self.logs.setdefault(k, []).append(float(v))
        self.epochs += 1


@dataclass
class EarlyStopping:
    """Stop when `monitor` has not improved by more than min_delta for `patience` epochs; optionally
    put back the best epoch's weights."""
    monitor: str = "val_loss"
    patience: int = 3
    min_delta: float = 0.0
    mode: str = "min"
    restore_best: bool = True
    best: float | None = None
    wait: int = 0
    best_state: dict | None = None

    @classmethod
    def build(cls, spec: dict | bool | None) -> EarlyStopping | None:
        if spec is None or spec is False:
            return None
        if spec is True:
            spec = {}
        if not isinstance(spec, dict):
            raise ConfigError("early_stopping", f"expected an object or true, got {spec!r}")
        unknown = set(spec) - {"monitor", "patience", "min_delta", "mode", "restore_best"}
        if unknown:
            raise ConfigError(f"early_stopping.{sorted(unknown)[0]}", "unknown key; expected monitor, patience, "
                              "min_delta, mode, restore_best")
        out = cls(**spec)
        if out.mode not in ("min", "max"):
            raise ConfigError("early_stopping.mode", f"expected min or max, got {out.mode!r}")
        return out

    def update(self, logs: dict, net: Network) -> bool:
        """Record this epoch; True when training should stop."""
        if self.monitor not in logs:
            raise ConfigError("early_stopping.monitor", f"{self.monitor!r} is not logged; logged: {sorted(logs)}")
        value = logs[self.monitor]
        better = self.best is None or (value < self.best - self.min_delta if self.mode == "min"
                                       else value > self.best + self.min_delta)
        if better:
            self.best, self.wait = value, 0
            if self.restore_best:
                self.best_state = {k: net.backend.to_numpy(v).copy() for k, v in net.state_dict().items()}
            return False
        self.wait += 1
        return self.wait >= self.patience

    def to_json(self) -> dict:
        return {"best": self.best, "wait": self.wait}


def train(net: Network, X: ArrayLike, Y: ArrayLike, loss: str | dict | losses.Loss | None = None,
          optimizer: str | dict | None = None, schedule: str | dict | Schedule | None = None,
          epochs: int | None = None, batch_size: int | None = None,
          validation: float | tuple[ArrayLike, ArrayLike] | None = None, seed: int | None = None,
          verbose: bool = True, metrics: Sequence[str] | None = None,
          callbacks: Iterable[Callable[[int, dict], Any]] = (), early_stopping: dict | bool | None = None,
          checkpoint: str | Path | None = None, resume: str | Path | None = None, shuffle: bool | None = None,
          device: str | None = None, deterministic: bool | None = None, strict: bool = True,
          allow_nonfinite: bool = False, freeze: Sequence[str] | str | None = None,
          telemetry: Telemetry | dict | bool | int | str | Path | None = None,
          parallel: Parallel | None = None, precision: str | None = None) -> History:
    """Train `net` on inputs X and targets Y (arrays with the batch first).

    Arguments left as None come from the config's "training" block, then from DEFAULTS:
    optimizer={"type": "adam", "lr": 1e-3}, epochs=10, batch_size=32, seed=0; the loss, when neither
    sets it, is chosen from the output and the targets (loss_choice.infer: class ids or one-hot rows
    -> cross_entropy, numbers of the output's shape -> mse) and printed when verbose. A loss that
    cannot learn from the targets (cross-entropy over one output, a shape that does not fit) is a
    ConfigError naming both and the loss that would fit.
    validation: (X_val, Y_val) or a fraction of (X, Y) held out (the last part after a seeded shuffle).
    metrics: names from loom.nn.metrics.METRICS, logged for training and validation.
    callbacks: callables cb(epoch, logs) run after each epoch; returning True stops training.
    early_stopping: {"monitor": "val_loss", "patience": 3, "min_delta": 0, "mode": "min", "restore_best": true}.
    checkpoint: a model-file path rewritten (atomically) after every epoch with the full training state;
    resume: such a path to continue from (the network must have the same config); the optimizer's
    state, learning rate included, comes from it, unless `optimizer` passed here names an lr.
    device: "cpu" or "cuda": the network is moved there first (net.to); None keeps it where it is.
    deterministic: True or False runs the whole training in that mode (loom.deterministic); None takes
    the config's training.deterministic, else the mode already in effect.
    strict: on the GPU each step replays a recorded dispatch chain; in deterministic mode a step that
    cannot be recorded raises DeterminismError, and strict=False runs it eagerly instead (the same
    bits, slower; logged once), as fast mode does.
    allow_nonfinite: by default NaN or infinity in X or Y, and the first batch whose loss is not
    finite, stop training with a NumericError naming the sample, or the batch and the first layer
    (or parameter) that produced it (Network.check_finite, on the batch replayed from the epoch's
    start); True trains on regardless.
    freeze: parameter-name glob patterns (net.freeze) frozen before the optimizer is built; they
    add to what is already frozen, and the network stays frozen after training. Only the other
    parameters train (no gradients, no optimizer state for the frozen ones).
    telemetry: record per-layer activation statistics and gradient norms (loom/nn/telemetry.py) into
    history.telemetry: True (every step), N (every N steps), a path (every step, written there as
    JSON after every epoch), {"every", "layers", "gradients", "path"}, or a Telemetry of `net`.
    Recorded steps run eagerly on a GPU; the weights are the same bits as without telemetry.
    parallel: this process's rank of a data-parallel world (loom.distributed; `loom.train` with
    devices=N makes one per rank): each batch of the same seeded shuffle is split across the ranks,
    and every rank ends with the same weights (in deterministic mode, the bits one device gets).
    precision: "float32" or "bf16" (mixed precision: every product's operands rounded to bfloat16, the
    rest float32; loom/mixed_precision.py); None takes the config's training.precision, else the
    precision already in effect (loom.precision).
    """
    deterministic, _ = _in_effect(net, "deterministic", deterministic, mode.is_deterministic())
    precision, where = _in_effect(net, "precision", precision, mixed_precision.current())
    mixed_precision.check_network(net, mixed_precision.check(precision, where), where)
    with mode.deterministic(deterministic), mixed_precision.precision(precision):
        try:
            return _train(net, X, Y, loss, optimizer, schedule, epochs, batch_size, validation, seed, verbose,
                          metrics, callbacks, early_stopping, checkpoint, resume, shuffle, device, strict,
                          allow_nonfinite, freeze, telemetry, parallel)
        finally:
            if parallel is not None:
                parallel.finish()


def _in_effect(net, key: str, given: Any, current: Any) -> tuple[Any, str]:
    """(value, where) of a setting that runs the whole training in a context: the argument, else the
    training block's, else the one `current`ly in effect (loom.deterministic, loom.precision); `where` is
    the name an error about it uses."""
    if given is not None:
        return given, key
    block = (net.config.get("training") or {}).get(key)
    return (block, f"training.{key}") if block is not None else (current, f"loom.{key}")


class Parallel(Protocol):
    """One rank of a data-parallel world, as the training loop uses it (loom.distributed's)."""
    rank: int
    size: int

    def start(self, net: Network, fingerprint: bytes) -> None:
        """Check that every rank trains the same thing (same fingerprint) and prepare net."""

    def batch(self, idx: np.ndarray) -> tuple[np.ndarray, AbstractContextManager]:
        """This rank's rows of a global batch and the context its step runs in."""

    def reduce_gradients(self, grads: dict) -> None:
        """Make the gradients the global batch's on every rank (after backward)."""

    def gather(self, local: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """Every rank's rows of a per-sample array, in the global batch's order."""

    def all_max(self, values: np.ndarray) -> np.ndarray:
        """The elementwise maximum over the ranks of a small float64 host array."""

    def finish(self) -> None:
        """Training ended (or failed) on this rank."""


def _train(net, X, Y, loss, optimizer, schedule, epochs, batch_size, validation, seed, verbose, metrics,
           callbacks, early_stopping, checkpoint, resume, shuffle, device, strict, allow_nonfinite,
           freeze=None, telemetry=None, parallel=None) -> History:
    if device is not None:
        net.to(device)
    settings, where = _settings(net, dict(loss=loss, optimizer=optimizer, schedule=schedule, epochs=epochs,
                                          batch_size=batch_size, validation=validation, seed=seed, metrics=metrics,
                                          early_stopping=early_stopping, shuffle=shuffle, freeze=freeze))
    X, Y = _as_arrays(net, X, Y)
    if not allow_nonfinite:
        check_finite_data(X, "X")
        check_finite_data(Y, "Y")
    out_shape = net.output_spec.shape
    chosen = None
    if settings["loss"] is None:
        settings["loss"], chosen = loss_choice.infer(Y, out_shape)
    with renamed_paths({"loss": where["loss"]}):
        loss_fn = losses.build(settings["loss"])
        Y = loss_choice.fit_targets(loss_fn, Y, out_shape)
    note = (f"loss {loss_fn.name} (default for {chosen})" if chosen
            else f"loss {loss_fn.name}" if where["loss"] == "loss" else None)
    Xv, Yv, X, Y = _validation(settings["validation"], X, Y, settings["seed"])
    if Yv is not None and not allow_nonfinite and not isinstance(settings["validation"], float):
        check_finite_data(Xv, "validation X")
        check_finite_data(Yv, "validation Y")
    if Yv is not None:
        Yv = loss_choice.fit_targets(loss_fn, Yv, out_shape)
    opt_spec = dict(settings["optimizer"]) if isinstance(settings["optimizer"], dict) else {"type": settings["optimizer"]}
    schedule_at = "optimizer.schedule"              # a schedule inside the optimizer's spec is named there
    if settings["schedule"] is not None:
        opt_spec["schedule"], schedule_at = settings["schedule"], where["schedule"]
    _freeze(net, settings["freeze"], where["freeze"])
    with renamed_paths({"optimizer.schedule": schedule_at, "optimizer": where["optimizer"]}):
        opt = optim.build(opt_spec, net.parameters())        # frozen parameters left out
    with renamed_paths({"metrics": where["metrics"]}):
        metric_fns = _metric_fns(settings["metrics"])
    with renamed_paths({"early_stopping": where["early_stopping"]}):
        stopper = EarlyStopping.build(settings["early_stopping"])
    tel, tel_path = telemetry_setting(net, telemetry)
    writer = parallel is None or parallel.rank == 0         # files are written once, by rank 0
    if parallel is not None:
        if tel is not None:
            raise ConfigError("telemetry", "telemetry records one process; it is not available in data-parallel "
                                           "training (record it on one device)")
        verbose = verbose and writer
    if verbose and note:                   # once every setting has been checked
        print(note, file=sys.stderr)
    history, start = History(telemetry=tel), 0
    if resume is not None:
        start = _resume(resume, net, opt, history, stopper)
        given = settings["optimizer"] if where["optimizer"] == "optimizer" else None
        if isinstance(given, dict) and "lr" in given and opt.schedule is None:
            opt.lr = given["lr"]       # an lr passed with resume= wins over the checkpoint's (e.g. after divergence)

    epochs, bs, n = settings["epochs"], settings["batch_size"], len(X)
    batches = math.ceil(n / bs)
    # Data checks run once over the whole dataset here, not once per batch on the device.
    net.check_ids(X)
    loss_fn.check_target(Y, net.output_spec.shape[-1] if net.output_spec.shape else 1)
    if parallel is not None:
        _check_split(bs, n, parallel.size, where["batch_size"])
        parallel.start(net, _fingerprint(net, settings, X, Y, start))
    step = TrainStep(net, loss_fn, opt, strict=strict)    # on the GPU: each step replays one recorded graph
    if parallel is not None:
        step.reduce_gradients = parallel.reduce_gradients
    # the ranks of a world check the loss at the same batches (every 16 on a device)
    guard = None if allow_nonfinite else _Guard(net, opt, loss_fn, strict, None if parallel is None else 16)
    try:
        for epoch in range(start, epochs):
            t0 = time.perf_counter()
            order = _shuffle(n, settings["seed"], epoch) if settings["shuffle"] else np.arange(n)
            bar = Progress(f"epoch {epoch + 1}/{epochs}", batches, enabled=verbose)
            net.train()
            step.reset_total()
            if guard:
                guard.start(epoch, lambda e: _shuffle(n, settings["seed"], e) if settings["shuffle"] else np.arange(n),
                            bs, X, Y)
            seen, outs = 0, []
            for b in range(batches):
                idx = order[b * bs:(b + 1) * bs]
                if tel is not None and tel.due(epoch * batches + b):
                    with tel.step(epoch * batches + b, epoch=epoch, batch=b):
                        value = step(X[idx], Y[idx], checked=False, eager=True)     # hooks need an eager step
                elif parallel is not None:
                    rows, context = parallel.batch(idx)
                    with context:
                        value = step(X[rows], Y[rows], checked=False)
                else:
                    value = step(X[idx], Y[idx], checked=False)
                seen += len(idx)
                if metric_fns:
                    pred = net.backend.to_numpy(step.pred)
                    outs.append((pred if parallel is None else parallel.gather(pred, idx), Y[idx]))
                if guard:
                    guard.after(b, value, step.total)
                # the running loss is read from the device only when the bar redraws
                bar.update(b + 1, loss=lambda: float(step.total) / seen, samples=seen)
            total = float(step.total)
            if guard:
                guard.check_total(batches - 1, total)
                guard.check_parameters()            # the epoch's last update has no loss after it
            net.eval()
            logs = {"loss": total / seen}
            if metric_fns:
                P, T = np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])
                logs.update({name: fn(P, T) for name, fn in metric_fns.items()})
            if Xv is not None:
                logs.update(_evaluate(net, loss_fn, metric_fns, Xv, Yv, bs, prefix="val_"))
            logs["lr"] = opt.lr if opt.schedule is None else opt.schedule(max(opt.steps - 1, 0))
            logs["seconds"] = time.perf_counter() - t0
            if parallel is not None:            # the epoch ends with its slowest rank: every rank logs that
                logs["seconds"] = float(parallel.all_max(np.array([logs["seconds"]]))[0])
            history.add(logs)
            bar.close(**{k: v for k, v in logs.items() if k not in ("lr", "seconds")},
                      rate=seen / max(logs["seconds"], 1e-9))
            stop = stopper.update(logs, net) if stopper else False
            for cb in callbacks or ():
                stop = bool(cb(epoch, dict(logs))) or stop
            if parallel is not None:            # a rank's callback may stop the run: then every rank stops
                stop = bool(parallel.all_max(np.array([float(stop)]))[0])
            if checkpoint is not None and writer:
                _save_checkpoint(checkpoint, net, opt, history, stopper, epoch + 1, settings)
            if tel_path is not None:
                tel.to_json(tel_path)
            if stop:
                history.stopped_early = True
                break
    finally:
        if parallel is not None:
            # the recorded steps hold the world's collectives (NCCL waits for graphs that captured
            # its calls before a communicator can be destroyed): free them with the training
            step.cache.clear()
    if stopper and stopper.restore_best and stopper.best_state is not None:
        net.load_state_dict(stopper.best_state)
    return history


def evaluate(net: Network, X: ArrayLike, Y: ArrayLike, loss: str | dict | losses.Loss = "cross_entropy",
             metrics_names: Sequence[str] = ("accuracy",), batch_size: int = 256) -> dict:
    """Loss and metrics of `net` (in eval mode) over (X, Y)."""
    X, Y = _as_arrays(net, X, Y)
    net.eval()
    return _evaluate(net, losses.build(loss), _metric_fns(metrics_names), X, Y, batch_size, prefix="")


def predict(net: Network, X: Array, batch_size: int = 256) -> np.ndarray:
    """Outputs for X in eval mode, computed in batches, as one host array."""
    net.eval()
    outs = [net.backend.to_numpy(net.forward(net.backend.asarray(X[i:i + batch_size])))
            for i in range(0, len(X), batch_size)]
    return np.concatenate(outs)


# --- pieces -----------------------------------------------------------------------------------------

def _settings(net, given: dict) -> tuple[dict, dict]:
    """(settings, where): each setting from the argument, else the config's training block, else
    DEFAULTS; `where` is the name an error about it uses (the argument, or "training.<key>")."""
    block = net.config.get("training") or {}
    out, where = {}, {}
    for key, default in DEFAULTS.items():
        if given.get(key) is not None:
            out[key], where[key] = given[key], key
        else:
            out[key], where[key] = block.get(key, default), f"training.{key}"
    for key in ("epochs", "batch_size"):
        v = out[key]
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigError(where[key], f"expected a positive integer, got {v!r}")
    if not isinstance(out["seed"], int) or isinstance(out["seed"], bool) or out["seed"] < 0:
        raise ConfigError(where["seed"], f"expected a non-negative integer, got {out['seed']!r}")
    return out, where


def _freeze(net, patterns, where):
    """Freeze the training setting's patterns; ConfigError when nothing is left to train."""
    if patterns is not None:
        if isinstance(patterns, str):
            patterns = [patterns]
        if not isinstance(patterns, (list, tuple)):
            raise ConfigError(where, f"expected a list of parameter-name patterns, got {patterns!r}")
        with renamed_paths({"freeze": where}):
            net.freeze(*patterns)
    frozen = net.frozen
    if frozen and len(frozen) == len(net.parameters()):
        raise ConfigError(where if patterns is not None else "freeze",
                          f"every parameter of the network is frozen ({len(frozen)}: {frozen[0]}, ...); "
                          "nothing would train (net.unfreeze some)")


def check_finite_data(A: np.ndarray, name: str) -> None:
    """NumericError naming the first NaN or infinity of A (samples first) as `name`, and how many."""
    if A.dtype.kind not in "fc" or np.all(np.isfinite(A)):
        return
    at = tuple(int(i) for i in np.argwhere(~np.isfinite(A))[0])
    raise NumericError(f"{name}: {A[at]} at sample {at[0]}" + (f", index {list(at[1:])}" if len(at) > 1 else "")
                       + f" ({int(np.count_nonzero(~np.isfinite(A)))} non-finite values in all); fix the data "
                       "or pass allow_nonfinite=True (loom train --allow-nonfinite)")


def _as_arrays(net, X, Y):
    X, Y = np.asarray(X), np.asarray(Y)
    if len(X) != len(Y):
        raise ShapeError(f"X has {len(X)} samples but Y has {len(Y)}")
    if len(X) == 0:
        raise ShapeError("no training samples (X is empty)")
    spec = net.input_spec
    if spec.is_float and X.dtype != np.dtype(spec.dtype):
        if X.dtype.kind not in "fiub":
            raise ShapeError(f"X has dtype {X.dtype}, expected numbers ({spec.dtype})")
        X = X.astype(spec.dtype)   # data files hold uint8 pixels or float64: convert once, here
    if Y.dtype.kind == "f" and Y.dtype != np.dtype(net.config["dtype"]):
        Y = Y.astype(net.config["dtype"])
    return X, Y


def _validation(spec, X, Y, seed):
    if spec is None:
        return None, None, X, Y
    if isinstance(spec, float):
        if not 0 < spec < 1:
            raise ConfigError("validation", f"expected a fraction in (0, 1) or (X, Y), got {spec}")
        order = _shuffle(len(X), seed, -1)
        cut = len(X) - max(1, int(round(len(X) * spec)))
        if cut < 1:
            raise ShapeError(f"validation fraction {spec} leaves no training samples out of {len(X)}")
        return X[order[cut:]], Y[order[cut:]], X[order[:cut]], Y[order[:cut]]
    if isinstance(spec, (bool, int, str)) or not hasattr(spec, "__len__") or len(spec) != 2:
        raise ConfigError("validation", f"expected a fraction in (0, 1) or (X, Y), got {spec!r:.80}")
    Xv, Yv = spec
    return np.asarray(Xv), np.asarray(Yv), X, Y


def _check_split(bs: int, n: int, ranks: int, where: str) -> None:
    """Every batch, the epoch's last included, must give each rank at least one sample."""
    last = n % bs or bs
    smallest = min(bs, last, n)
    if smallest < ranks:
        which = "the batch size" if bs < ranks or n < ranks else f"the epoch's last batch ({n} samples in batches of {bs})"
        raise ConfigError(where, f"{which} gives {smallest} sample(s) to split across {ranks} ranks; every rank "
                                 f"needs at least one: choose a batch size of at least {ranks} whose last batch "
                                 "is not smaller than that")


def _fingerprint(net, settings, X, Y, start) -> bytes:
    """What every rank of a data-parallel world must agree on: the network (config and weights), the
    settings, the data's shapes and bytes, the epoch it starts from."""
    h = hashlib.sha256()
    # ranks in other modes reduce differently; in other precisions they multiply differently
    h.update(f"{mode.name()} {mixed_precision.current()} frozen {sorted(net.frozen)}".encode())
    h.update(json.dumps(net.config, sort_keys=True, default=str).encode())
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for name, value in sorted(net.parameters().items()) + sorted(net.buffers().items()):
        h.update(name.encode())
        h.update(np.ascontiguousarray(net.backend.to_numpy(value)).tobytes())
    for a in (X, Y):
        h.update(f"{a.shape} {a.dtype}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    h.update(str(start).encode())
    return h.digest()


def _shuffle(n: int, seed: int, epoch: int) -> np.ndarray:
    """The permutation for `epoch`: a stable argsort of counter-RNG keys (epoch -1: the validation split)."""
    keys = rng.Generator(seed, "train.shuffle").bits(n, counter=epoch + 1)
    return np.argsort(keys, kind="stable")


def _metric_fns(names):
    if not names:
        return {}
    out = {}
    for i, name in enumerate(names):
        if name not in metrics.METRICS:
            raise ConfigError(f"metrics[{i}]", f"unknown metric {name!r}; expected one of {sorted(metrics.METRICS)}")
        out[name] = metrics.METRICS[name]
    return out


def _evaluate(net, loss_fn, metric_fns, X, Y, bs, prefix):
    total, outs = 0.0, []
    for i in range(0, len(X), bs):
        xb = net.backend.asarray(X[i:i + bs])
        pred = net.forward(xb)
        value, _ = loss_fn(pred, net.backend.asarray(Y[i:i + bs]))
        total += float(value) * len(xb)
        outs.append(net.backend.to_numpy(pred))
    logs = {prefix + "loss": total / len(X)}
    if metric_fns:
        P = np.concatenate(outs)
        logs.update({prefix + name: fn(P, Y) for name, fn in metric_fns.items()})
    return logs


def _save_checkpoint(path, net, opt, history, stopper, epoch, settings):
    state = {"epoch": epoch, "rng_counter": net.rng_counter, "history": history.logs,
             "stopped_early": history.stopped_early,
             "early_stopping": stopper.to_json() if stopper else None, "seed": settings["seed"],
             "epochs": settings["epochs"], "batch_size": settings["batch_size"], "frozen": net.frozen}
    files.codec().save(net, path, optimizer=opt, training_state=state,
                  best_state=stopper.best_state if stopper else None)


def _resume(path, net, opt, history, stopper) -> int:
    saved, ckpt = files.codec().load(path)
    # the training block says how to train, not what the network is (and older files spelled its
    # defaults out): compare the rest
    if {**saved.config, "training": None} != {**net.config, "training": None}:
        raise ConfigError("resume", f"checkpoint {path} was made for a different network config")
    net.load_state_dict(saved.state_dict())
    if ckpt.optimizer_config is None:
        raise ConfigError("resume", f"{path} holds no optimizer state (not a training checkpoint)")
    if ckpt.optimizer_config.get("type") != opt.config["type"]:
        raise ConfigError("resume", f"{path} was trained with optimizer {ckpt.optimizer_config.get('type')!r}, "
                                    f"this run uses {opt.config['type']!r}; give the checkpoint's optimizer "
                                    f"({ckpt.optimizer_config})")
    state = ckpt.training_state
    if sorted(state.get("frozen", [])) != sorted(net.frozen):
        raise ConfigError("resume", f"{path} was trained with frozen parameters {state.get('frozen', [])}, this "
                                    f"network has {net.frozen} frozen; freeze the same ones (net.freeze, or "
                                    "training.freeze in the config)")
    opt.load_state_dict(ckpt.optimizer_state)
    net.rng_counter = int(state["rng_counter"])
    history.logs = {k: [math.nan if x is None else x for x in v] for k, v in state["history"].items()}
    history.epochs = int(state["epoch"])
    if stopper and state.get("early_stopping"):
        stopper.best, stopper.wait = state["early_stopping"]["best"], state["early_stopping"]["wait"]
        stopper.best_state = ckpt.best_state
    return int(state["epoch"])

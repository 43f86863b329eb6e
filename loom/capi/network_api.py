"""The network C ABI (loom.h, "networks"): networks, forward/backward on caller buffers, training,
optimizers, the step API, model files and bytes, and the bundled digits.

A network's handle, its optimizers' and its step states' share one lock: all of them read and write
the network's layers (cached activations, gradients), so calls on them are serialized.
"""
from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from .. import dtypes, formats, verify
from ..datasets import digits_split
from ..nn import Network, optim
from ..nn.train import train
from . import abi
from .abi import (
    ARGUMENT,
    CONFIG,
    CError,
    array_in,
    array_out,
    export,
    handle,
    json_arg,
    locked,
    malloc_copy,
    need,
    new_handle,
    put,
    put_string,
    shape,
    text,
)

NET, OPT, STEP = "loom_network", "loom_optimizer", "loom_step_state"
_F32 = np.dtype(np.float32)
TRAIN_KEYS = ("loss", "optimizer", "schedule", "epochs", "batch_size", "seed", "shuffle", "validation",
              "metrics", "deterministic", "early_stopping", "freeze")


def _net(ptr: Any, what: str = "net"):
    return handle(ptr, NET, what)


def _network_out(net: Network, out: Any) -> None:
    need(out, "out")
    abi.ffi.cast("loom_network **", out)[0] = new_handle(NET, net)


@export("network_from_json")
def network_from_json(json_text: Any, out: Any) -> None:
    need(out, "out")
    cfg = json_arg(json_text, "json")
    if not isinstance(cfg, dict):
        raise CError(CONFIG, f"json is a network config object, got {type(cfg).__name__}")
    _network_out(Network.from_config(cfg), out)


@export("network_load")
def network_load(path: Any, out: Any) -> None:
    need(out, "out")
    _network_out(formats.load(text(path, "path")), out)


@export("network_from_bytes")
def network_from_bytes(data: Any, size: int, out: Any) -> None:
    need(out, "out")
    if size >= 1 << 62:                         # else an OverflowError (LOOM_ERR_INTERNAL) in ffi.buffer
        raise CError(ARGUMENT, f"size {size} is larger than any buffer")
    _network_out(formats.from_bytes(bytes(abi.ffi.buffer(need(data, "data"), size))), out)


@export("network_save")
def network_save(net: Any, path: Any) -> None:
    h = _net(net)
    with locked(h):
        h.obj.save(text(path, "path"))


@export("network_to_bytes")
def network_to_bytes(net: Any, data: Any, size: Any) -> None:
    need(data, "data")
    need(size, "size")
    h = _net(net)
    with locked(h):
        raw = h.obj.to_bytes()
    abi.ffi.cast("void **", data)[0] = malloc_copy(raw, "data")
    put(size, len(raw), "size")


@export("network_free")
def network_free(net: Any) -> None:
    abi.free_handle(net, NET, "net")


@export("network_to_device")
def network_to_device(net: Any, device: Any) -> None:
    h = _net(net)
    name = text(device, "device")
    if name not in ("cpu", "cuda"):
        raise CError(ARGUMENT, f'device is "cpu" or "cuda", got {name!r}')
    users = [hh.kind for hh in list(abi.STATE.handles.values())
             if hh.kind in (OPT, STEP) and getattr(hh.obj, "net", None) is h.obj]
    if users:                       # they hold the arrays and layers of the device the network leaves
        raise CError(ARGUMENT, f"free the network's {len(users)} optimizer and step-state handles first "
                               f"({', '.join(sorted(set(users)))}); make new ones after the move")
    with locked(h):
        h.obj.to(name)


@export("network_set_training")
def network_set_training(net: Any, training: int) -> None:
    if training not in (0, 1):
        raise CError(ARGUMENT, f"training is 0 or 1, got {training}")
    h = _net(net)
    with locked(h):
        h.obj.train(bool(training))


def _put_shape(dims: Any, capacity: int, ndim: Any, value: tuple[int, ...]) -> None:
    put(ndim, len(value), "ndim")
    if len(value) > capacity:
        raise CError(ARGUMENT, f"dims holds {capacity} entries; the shape {list(value)} has {len(value)}")
    for i, d in enumerate(value):
        need(dims, "dims")[i] = d


@export("network_input_shape")
def network_input_shape(net: Any, dims: Any, capacity: int, ndim: Any) -> None:
    _put_shape(dims, capacity, ndim, tuple(_net(net).obj.input_spec.shape))


@export("network_output_shape")
def network_output_shape(net: Any, dims: Any, capacity: int, ndim: Any) -> None:
    _put_shape(dims, capacity, ndim, tuple(_net(net).obj.output_spec.shape))


@export("network_blueprint")
def network_blueprint(net: Any, json_out: Any) -> None:
    h = _net(net)
    with locked(h):
        put_string(json_out, json.dumps(h.obj.blueprint()), "json")


@export("network_summary")
def network_summary(net: Any, text_out: Any) -> None:
    h = _net(net)
    with locked(h):
        put_string(text_out, h.obj.summary(), "text")


@export("network_fingerprint")
def network_fingerprint(net: Any, hex65: Any) -> None:
    need(hex65, "hex65")
    h = _net(net)
    with locked(h):
        digest = verify.combined(h.obj.state_dict())
    abi.ffi.memmove(hex65, digest.encode() + b"\0", 65)


def _as_input(net: Network, x: np.ndarray, what: str) -> np.ndarray:
    """float32 values as the network's input dtype; integer ids must be whole numbers (no truncation)."""
    dtype = net.input_spec.dtype
    if dtype == _F32:
        return x
    if np.dtype(dtype).kind in "iu":
        bad = np.flatnonzero(x.reshape(-1) != np.trunc(x.reshape(-1)))
        if bad.size:
            raise CError(ARGUMENT, f"{what}[{bad[0]}] = {x.reshape(-1)[bad[0]]!r} is not a whole number; this "
                                   f"network takes {np.dtype(dtype).name} ids")
    return x.astype(dtype)


def _input(net: Network, ptr: Any, dims_ptr: Any, ndim: int, what: str) -> np.ndarray:
    x = array_in(ptr, shape(dims_ptr, ndim, "shape"), _F32, what)
    return net.backend.asarray(_as_input(net, x, what))


@export("forward")
def forward(net: Any, input: Any, shape_ptr: Any, ndim: int, output: Any, capacity: int) -> None:
    h = _net(net)
    with locked(h):
        n = h.obj
        y = n.forward(_input(n, input, shape_ptr, ndim, "input"))
        _floats_out(n, y, output, capacity, "output")


@export("backward")
def backward(net: Any, grad_output: Any, shape_ptr: Any, ndim: int, grad_input: Any, capacity: int) -> None:
    h = _net(net)
    with locked(h):
        n = h.obj
        dims = shape(shape_ptr, ndim, "grad_output shape")
        dy = array_in(grad_output, dims, np.float32, "grad_output").astype(n.output_spec.dtype, copy=False)
        if grad_input != abi.ffi.NULL:
            # grad_input's errors before the gradients accumulate (a retry would add them twice); where
            # dy's shape is not the last forward's, n.backward raises that first, changing nothing
            if not n.input_spec.is_float:
                raise CError(ARGUMENT, "grad_input: this network's input has no gradient (integer inputs); pass NULL")
            need_dx = dims[0] * math.prod(n.input_spec.shape)
            if dims == (getattr(n, "_batch", None), *n.output_spec.shape) and capacity < need_dx:
                raise CError(ARGUMENT, f"grad_input has room for {capacity} values; the input gradient has {need_dx} "
                                       f"(shape {[dims[0], *n.input_spec.shape]})")
        dx = n.backward(n.backend.asarray(dy), input_grad=grad_input != abi.ffi.NULL)
        if grad_input != abi.ffi.NULL:
            if dx is None:
                raise CError(ARGUMENT, "grad_input: this network's input has no gradient (integer inputs); pass NULL")
            _floats_out(n, dx, grad_input, capacity, "grad_input")


@export("zero_grad")
def zero_grad(net: Any) -> None:
    h = _net(net)
    with locked(h):
        h.obj.zero_grad()


@export("parameters")
def parameters(net: Any, json_out: Any) -> None:
    h = _net(net)
    with locked(h):
        params = h.obj.parameters()
        rows = [{"name": k, "shape": list(v.shape), "dtype": str(v.dtype), "frozen": k in params.frozen}
                for k, v in params.items()]
    put_string(json_out, json.dumps(rows), "json")


def _parameter(name: str, table: dict, what: str):
    if name not in table:
        known = ", ".join(sorted(table)) or "none"
        raise CError(ARGUMENT, f"{what} {name!r} is not one of the network's ({known})")
    return table[name]


def _floats_out(net: Network, value: Any, ptr: Any, capacity: int, what: str) -> None:
    """A result of the network (its device, its dtype) into the caller's float32 buffer."""
    array_out(ptr, capacity, net.backend.to_numpy(value).astype(np.float32, copy=False), what)


@export("get_parameter")
def get_parameter(net: Any, name: Any, out: Any, capacity: int) -> None:
    h = _net(net)
    with locked(h):
        _floats_out(h.obj, _parameter(text(name, "name"), h.obj.parameters(), "parameter"), out, capacity, "out")


@export("set_parameter")
def set_parameter(net: Any, name: Any, values: Any, count: int) -> None:
    h = _net(net)
    with locked(h):
        n = h.obj
        key = text(name, "name")
        p = _parameter(key, n.parameters(), "parameter")
        if count != p.size:
            raise CError(ARGUMENT, f"count {count} does not match parameter {key!r} of shape {list(p.shape)} "
                                   f"({p.size} values)")
        n.backend.copy_into(p, array_in(values, tuple(p.shape), np.float32, "values").astype(p.dtype))


@export("get_gradient")
def get_gradient(net: Any, name: Any, out: Any, capacity: int) -> None:
    h = _net(net)
    with locked(h):
        _floats_out(h.obj, _parameter(text(name, "name"), h.obj.gradients(), "gradient of"), out, capacity, "out")


@export("train")
def train_(net: Any, spec_json: Any, x: Any, x_shape: Any, x_ndim: int, y: Any, y_dtype: int, y_shape: Any,
           y_ndim: int, history_json: Any) -> None:
    h = _net(net)
    spec = json_arg(spec_json, "spec_json") if spec_json != abi.ffi.NULL else {}
    if not isinstance(spec, dict):
        raise CError(CONFIG, f"spec_json is an object, got {type(spec).__name__}")
    unknown = sorted(set(spec) - set(TRAIN_KEYS))
    if unknown:
        raise CError(CONFIG, f"spec_json has unknown key {unknown[0]!r} (known: {', '.join(TRAIN_KEYS)})")
    validation = spec.get("validation")     # from C only a fraction (loom.train would unpack anything else)
    if validation is not None:
        if isinstance(validation, bool) or not isinstance(validation, (int, float)):
            raise CError(CONFIG, f"spec_json validation is the fraction held out, in (0, 1), got {validation!r}")
        spec["validation"] = float(validation)
    types = {dtypes.TABLE["float32"].c_enum: np.float32, dtypes.TABLE["int64"].c_enum: np.int64}
    if y_dtype not in types:
        raise CError(ARGUMENT, f"y_dtype is LOOM_FLOAT32 ({min(types)}) or LOOM_INT64 ({max(types)}), got {y_dtype}")
    X = _as_input(h.obj, array_in(x, shape(x_shape, x_ndim, "x shape"), np.float32, "x"), "x")
    Y = array_in(y, shape(y_shape, y_ndim, "y shape"), types[y_dtype], "y")
    if len(X) != len(Y):
        raise CError(ARGUMENT, f"x has {len(X)} samples, y has {len(Y)}")
    with locked(h):
        history = train(h.obj, X, Y, verbose=False, **spec)
    if history_json != abi.ffi.NULL:
        put_string(history_json, json.dumps({"epochs": history.epochs, "stopped_early": history.stopped_early,
                                             "logs": history.logs}), "history_json")


class _Optimizer:
    def __init__(self, net: Network, opt: optim.Optimizer):
        self.net, self.opt = net, opt


@export("optimizer_create")
def optimizer_create(net: Any, spec_json: Any, out: Any) -> None:
    need(out, "out")
    h = _net(net)
    spec = json_arg(spec_json, "spec_json")
    with locked(h):
        opt = optim.build(spec, h.obj.parameters())
    abi.ffi.cast("loom_optimizer **", out)[0] = new_handle(OPT, _Optimizer(h.obj, opt), h.lock)


@export("optimizer_free")
def optimizer_free(opt: Any) -> None:
    abi.free_handle(opt, OPT, "opt")


@export("apply_gradients")
def apply_gradients(net: Any, opt: Any) -> None:
    h, o = _net(net), handle(opt, OPT, "opt")
    if o.obj.net is not h.obj:
        raise CError(ARGUMENT, "opt was created for another network")
    with locked(h, o):
        h.obj.apply_gradients(o.obj.opt)


class _Step:
    def __init__(self, net: Network):
        self.net, self.state = net, net.step_state()


@export("step_state_create")
def step_state_create(net: Any, out: Any) -> None:
    need(out, "out")
    h = _net(net)
    with locked(h):
        step = _Step(h.obj)
    abi.ffi.cast("loom_step_state **", out)[0] = new_handle(STEP, step, h.lock)


@export("step_state_free")
def step_state_free(state: Any) -> None:
    abi.free_handle(state, STEP, "state")


@export("step_set_input")
def step_set_input(state: Any, input: Any, shape_ptr: Any, ndim: int) -> None:
    h = handle(state, STEP, "state")
    with locked(h):
        s = h.obj
        s.state.set_input(_input(s.net, input, shape_ptr, ndim, "input"))


@export("step")
def step(state: Any) -> None:
    h = handle(state, STEP, "state")
    with locked(h):
        h.obj.state.step()


@export("step_output")
def step_output(state: Any, output: Any, capacity: int, ready: Any) -> None:
    h = handle(state, STEP, "state")
    need(ready, "ready")
    with locked(h):
        s = h.obj
        y = s.state.output()
        put(ready, int(y is not None), "ready")
        if y is not None:
            _floats_out(s.net, y, output, capacity, "output")


@export("step_backward")
def step_backward(state: Any, grad_output: Any, shape_ptr: Any, ndim: int) -> None:
    h = handle(state, STEP, "state")
    with locked(h):
        s = h.obj
        dims = shape(shape_ptr, ndim, "grad_output shape")
        dy = array_in(grad_output, dims, np.float32, "grad_output").astype(s.net.output_spec.dtype, copy=False)
        s.state.backward(s.net.backend.asarray(dy))


@export("digits_split")
def digits(test_fraction: float, seed: int, x_train: Any, y_train: Any, n_train: Any, x_test: Any, y_test: Any,
           n_test: Any) -> None:
    outs = {"x_train": x_train, "y_train": y_train, "n_train": n_train, "x_test": x_test, "y_test": y_test,
            "n_test": n_test}
    for what, ptr in outs.items():
        need(ptr, what)
    if not (0.0 < test_fraction < 1.0) or math.isnan(test_fraction):
        raise CError(ARGUMENT, f"test_fraction lies strictly between 0 and 1, got {test_fraction!r}")
    (xa, ya), (xb, yb) = digits_split(test_fraction, seed)
    for (xs, ys, n), (px, py, pn) in (((xa, ya, len(ya)), (x_train, y_train, n_train)),
                                      ((xb, yb, len(yb)), (x_test, y_test, n_test))):
        ffi_ = abi.ffi
        ffi_.cast("float **", px)[0] = ffi_.cast("float *", malloc_copy(np.ascontiguousarray(xs, np.float32), "x"))
        ffi_.cast("int64_t **", py)[0] = ffi_.cast("int64_t *", malloc_copy(np.ascontiguousarray(ys, np.int64), "y"))
        put(pn, n, "n")


"""Network: a validated config built into live layers, run forward and backward batch-first."""
from __future__ import annotations

import contextlib
import copy
import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import backend as backends
from .. import config as configs
from ..backend import Array
from ..errors import BackendError, ConfigError, ShapeError
from ..kernels.quant import affine as quant
from . import blueprint as blueprints
from . import files, freezing, hooks, state_names
from .chain import InferenceChain
from .layers import BuildContext, ForwardContext, Spec
from .layers.structure import Sequential
from .step import StepState

if TYPE_CHECKING:
    from .optim import Optimizer


@dataclass(frozen=True)
class NonFinite:
    """Where a NaN or Inf first appeared (see Network.check_finite)."""
    where: str      # dotted layer name ("layers.2") or parameter name
    type: str       # layer type, or "parameter" / "input"
    nan: int
    inf: int

    def __str__(self) -> str:
        return f"{self.where} ({self.type}) produced {self.nan} NaN and {self.inf} Inf values"


class Network:
    """A network built from a format-v1 config. Starts in eval mode (dropout off, batch-norm
    running statistics); `train()` switches to training behaviour, as in PyTorch."""

    def __init__(self, cfg: dict, device: str = "cpu"):
        self._cfg = cfg
        self.backend = backends.get(device)
        self.input_spec = Spec(tuple(cfg["input"]["shape"]), cfg["input"]["dtype"])
        ctx = BuildContext(self.backend, cfg["dtype"], cfg["seed"])
        self.root = Sequential({"type": "sequential", "layers": cfg["layers"]}, self.input_spec, ctx)
        self.output_spec = self.root.out_spec
        configs.check_labels(cfg.get("labels"), self.output_spec.shape)
        self._setup_quantization()
        self.training = False
        self.rng_counter = 0   # advances once per training-mode forward; seeds dropout/gumbel noise
        self._has_forward = False
        self._compiled = None  # an InferenceChain after compile()

    # --- construction ---
    @classmethod
    def from_config(cls, cfg: dict | str | Path, seed: int | None = None) -> Network:
        """Build from a config dict, JSON string or path; `seed` overrides the config's seed."""
        cfg = configs.load(cfg)
        if seed is not None:
            cfg["seed"] = configs.nonneg_int(seed, "seed")
        return cls(cfg)

    def _setup_quantization(self) -> None:
        qat, q = self._cfg.get("qat"), self._cfg.get("quantization")
        for _, layer in self.root.walk():
            if qat is not None and layer.SUPPORTS_QAT:
                layer.qat = (qat["dtype"], qat["per"])
            if q is not None:
                for name in layer.QUANT_WEIGHTS:
                    layer.params[name] = quant.quantize(self.backend.to_numpy(layer.params[name]),
                                                        q["dtype"], per=q["per"], axis=0)
                    del layer.grads[name]

    @property
    def quantized(self) -> bool:
        """True when the GEMM weights are stored in a quantized type (inference only)."""
        return "quantization" in self._cfg

    def quantize(self, dtype: str, per: str = "channel") -> Network:
        """A new network whose GEMM weights (dense, conv, attention and swiglu projections, recurrent
        and embedding weights) are stored and run in `dtype`, scaled per output channel or per
        tensor; biases, norms and the rest stay in the compute dtype. See docs/dtypes.md."""
        if self.quantized:
            raise ConfigError("quantization", "the network is already quantized; quantize its float original")
        cfg = self.config
        cfg.pop("qat", None)
        cfg["quantization"] = {"dtype": dtype, "per": per}
        out = Network(configs.validate(cfg), self.device)
        out.load_state_dict(self.state_dict())      # float weights are quantized on the way in
        return out

    @property
    def config(self) -> dict:
        """The normalized config (a copy: editing it does not change the network)."""
        return copy.deepcopy(self._cfg)

    @property
    def device(self) -> str:
        return self.backend.name

    # --- modes ---
    def train(self, mode: bool = True) -> Network:
        self.training = bool(mode)
        return self

    def eval(self) -> Network:
        return self.train(False)

    # --- running ---
    def forward(self, x: Array, attention_mask: Array | None = None) -> Array:
        """Outputs for the batch `x` (shape [batch, *input.shape], dtype input.dtype). After
        compile(), eval-mode batches on the GPU run as recorded dispatch chains."""
        if self._compiled is not None and not self.training and self.backend.graphs:
            return self._compiled(x, attention_mask)
        x = self.check_input(x)
        if attention_mask is not None:
            attention_mask = self.check_mask(attention_mask, x.shape[0])
        return self._forward(x, attention_mask)

    def forward_unchecked(self, x: Array, attention_mask: Array | None = None, counter: Array | None = None) -> Array:
        """forward() on device arrays the caller has validated (check_input, check_mask): what a
        dispatch chain runs and records. `counter`: a recorded step's device RNG counter."""
        return self._forward(x, attention_mask, counter, checked=False)

    def note_forward(self, batch: int) -> None:
        """A forward of `batch` rows ran outside forward() (a replayed graph): backward may follow."""
        self._has_forward, self._batch = True, batch

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        """While a step is recorded rather than run: the RNG counter the recording advanced is put back."""
        saved = self.rng_counter
        try:
            yield
        finally:
            self.rng_counter = saved

    def _forward(self, x, attention_mask=None, counter=None, checked=True):
        fc = ForwardContext(training=self.training, counter=self.rng_counter if counter is None else counter,
                            attention_mask=attention_mask, checked=checked)
        y = self.root.forward(x, fc)
        if self.training:
            self.rng_counter += 1
        self._has_forward = True
        self._batch = x.shape[0]
        return y

    def compile(self, cache_size: int = 4, strict: bool = True) -> Network:
        """Run eval-mode forward passes on the GPU as dispatch chains: each new input shape runs
        once eagerly, is then recorded into a CUDA graph and replayed with one launch (see
        loom/nn/chain.py). Results are bit-identical to the eager forward. On the CPU this changes
        nothing. strict: in deterministic mode a forward pass that cannot be recorded raises
        DeterminismError; strict=False runs it eagerly instead (logged once). Returns the network."""
        self._compiled = InferenceChain(self, cache_size, strict)
        return self

    __call__ = forward

    def backward(self, dy: Array, input_grad: bool = True) -> Array | None:
        """Accumulate parameter gradients for the last forward; return the gradient of its input
        (None when the input is integer ids, or when input_grad is false: training skips that work)."""
        if not self._has_forward:
            raise ShapeError("backward() needs a forward() first")
        if self.quantized:
            raise ConfigError("quantization", f"a network quantized to {self._cfg['quantization']['dtype']} runs "
                              "inference only; train the float network (with qat for quantization-aware training)")
        expected = (self._batch,) + self.output_spec.shape
        dy = self.backend.asarray(dy)
        if tuple(dy.shape) != expected:
            raise ShapeError(f"backward: dy has shape {list(dy.shape)}, expected {list(expected)}")
        if dy.dtype != np.dtype(self._cfg["dtype"]):
            raise ShapeError(f"backward: dy has dtype {dy.dtype}, expected {self._cfg['dtype']}")
        self.root.input_grad = input_grad     # without it, leading layers that train nothing are skipped
        try:
            return self.root.backward(dy)
        finally:
            self.root.input_grad = True
            self.settle_grads()

    def check_input(self, x: Array) -> Array:
        """x on this network's device, checked against its input spec (check_spec)."""
        return self.check_spec(self.backend.asarray(x))

    def check_spec(self, x: Array) -> Array:
        """ShapeError unless x (an array on any device) is a batch of this network's input; returns x."""
        spec = self.input_spec
        expected = spec.shape
        if x.ndim != len(expected) + 1 or tuple(x.shape[1:]) != expected:
            raise ShapeError(f"input has shape {list(x.shape)}, expected [batch, {', '.join(map(str, expected))}]")
        if x.shape[0] == 0:
            raise ShapeError("input batch is empty (shape[0] == 0)")
        if spec.is_float:
            if x.dtype != np.dtype(spec.dtype):
                raise ShapeError(f"input has dtype {x.dtype}, expected {spec.dtype} "
                                 f"(convert with x.astype('{spec.dtype}'))")
        elif x.dtype.kind not in "iu":
            raise ShapeError(f"input has dtype {x.dtype}, expected integer ids ({spec.dtype})")
        return x

    def check_mask(self, mask: Array, batch: int) -> Array:
        """An attention mask [batch, T] on this network's device, as booleans (ShapeError otherwise)."""
        mask = self.backend.asarray(mask)
        if mask.ndim != 2 or mask.shape[0] != batch:
            raise ShapeError(f"attention_mask has shape {list(mask.shape)}, expected [batch={batch}, T]")
        return mask.astype(bool)

    # --- parameters ---
    def _named(self, attr: str) -> dict:
        out = {}
        for prefix, layer in self.root.walk():
            for key, value in getattr(layer, attr).items():
                out[f"{prefix}.{key}" if prefix else key] = value
        return out

    def parameters(self) -> freezing.Parameters:
        """Parameters by dotted name, frozen ones included (their names in `.frozen`: an optimizer
        built on this dict leaves them out); the arrays are live (writing into them changes the net)."""
        return freezing.Parameters(self._named("params"), frozen=self.frozen)

    def gradients(self) -> dict:
        """Accumulated gradients by the same names as parameters(); live arrays, valid after a
        backward (zero_grad's clearing of dense weights is finished by the next backward or by this
        call, so a dict fetched before zero_grad reads stale values until then)."""
        self.settle_grads()
        return self._named("grads")

    def freeze(self, *patterns: str) -> list[str]:
        """Stop training the parameters whose names match any glob pattern ("layers.0.*", "*.bias"):
        no gradient buffers, no gradients computed, no optimizer updates (see loom/nn/freezing.py).
        Returns the names this call froze; a pattern matching no name is a ConfigError naming it."""
        return freezing.freeze(self, patterns)

    def unfreeze(self, *patterns: str) -> list[str]:
        """Train the matching parameters again (zeroed gradients); returns the names this call
        unfroze. Build the optimizer after freezing or unfreezing."""
        return freezing.unfreeze(self, patterns)

    @property
    def frozen(self) -> list[str]:
        """The names of the frozen parameters, in parameter order."""
        return freezing.frozen(self)

    def settle_grads(self) -> None:
        """Finish zero_grad's deferred clearing in every layer (gradients() calls it)."""
        for _, layer in self.root.walk():
            layer.settle_grads()

    def buffers(self) -> dict:
        """Non-trainable state (batch-norm running statistics) by dotted name."""
        return self._named("buffers")

    def state_dict(self) -> dict:
        return {**self.parameters(), **self.buffers()}

    def load_state_dict(self, state: Mapping[str, Any], strict: bool = True) -> state_names.LoadResult:
        """Copy arrays (NumPy, CuPy or torch tensors) into the network, in PyTorch's layouts. Names are
        matched exactly first; the rest in structural order with shape checks, so a PyTorch module's
        own state dict loads as it is (`0.weight`, `fc1.weight`, an nn.MultiheadAttention's packed
        `in_proj_weight`); the rule is in loom/nn/state_names.py. Returns a LoadResult that unpacks
        like PyTorch's (`missing, unexpected = net.load_state_dict(sd, strict=False)`) and has
        `.mapping`, the (state dict name, network name) pairs whose names differ, also logged at
        INFO on the "loom" logger. With strict, names left over on either side raise ShapeError;
        shapes must always match, and nothing is copied when they do not."""
        own = self.state_dict()
        order = [f"{p}.{k}" if p else k for p, layer in self.root.walk() for k in (*layer.params, *layer.buffers)]
        pairs, result = state_names.match(state, {name: state_names.shape_of(own[name]) for name in order})
        if strict and (result.missing_keys or result.unexpected_keys):
            raise ShapeError(f"state dict mismatch: unexpected {result.unexpected_keys}, missing {result.missing_keys}")
        for name, value in pairs:
            dst = own[name]
            if isinstance(dst, quant.AffineQuantized):
                self.load_quantized(name, dst, value)
                continue
            if isinstance(value, quant.AffineQuantized):
                raise ShapeError(f"{name}: a {value.dtype} quantized tensor cannot load into a float parameter "
                                 "(dequantize it, or quantize the network first)")
            src = _host(value)
            if tuple(src.shape) != tuple(dst.shape):
                raise ShapeError(f"{name}: shape {list(src.shape)} does not match the network's {list(dst.shape)}")
            dst[...] = self.backend.asarray(src.astype(dst.dtype))
        state_names.note(result)
        return result

    def load_quantized(self, name: str, dst: Any, value: Any) -> None:
        """A stored quantized weight replaces dst as it is; a float array is quantized per the config."""
        q = self._cfg["quantization"]
        if not isinstance(value, quant.AffineQuantized):
            src = _host(value)
            if tuple(src.shape) != tuple(dst.shape):
                raise ShapeError(f"{name}: shape {list(src.shape)} does not match the network's {list(dst.shape)}")
            value = quant.quantize(src.astype(np.float64), q["dtype"], per=q["per"], axis=0)
        elif value.dtype != dst.dtype or tuple(value.shape) != tuple(dst.shape):
            raise ShapeError(f"{name}: {value.dtype}{list(value.shape)} does not match the network's "
                             f"{dst.dtype}{list(dst.shape)}")
        for prefix, layer in self.root.walk():
            key = name[len(prefix) + 1:] if prefix else name
            if (not prefix or name.startswith(prefix + ".")) and layer.params.get(key) is dst:
                layer.params[key] = value
                return
        raise ShapeError(f"{name}: no layer owns this parameter")   # unreachable: own came from the layers

    def check_ids(self, x: Array) -> None:
        """For integer-id inputs: ShapeError unless every id fits every embedding fed by the input
        (what their forward checks; recorded steps check here, before the ids are copied in)."""
        if self.input_spec.is_float:
            return
        for _, layer in self.root.walk():
            if hasattr(layer, "check_ids"):
                layer.check_ids(x)

    def uses_noise(self) -> bool:
        """Whether training-mode forward passes draw from the counter RNG (dropout, gumbel)."""
        return any(getattr(layer, "USES_NOISE", False) for _, layer in self.root.walk())

    def step_state(self) -> StepState:
        """A StepState: run the network as a pipeline, one tick at a time (see loom/nn/step.py)."""
        return StepState(self)

    def apply_gradients(self, optimizer: Optimizer) -> None:
        """One optimizer update from the accumulated gradients, then zero them."""
        optimizer.step(self.gradients())
        self.zero_grad()

    def zero_grad(self) -> None:
        for _, layer in self.root.walk():
            layer.clear_grads()

    def to(self, device: str) -> Network:
        """Move every parameter, gradient and buffer to `device` ("cpu" or "cuda"), in place; returns
        the network. As in PyTorch, arrays fetched before (parameters(), an optimizer built on
        them) still belong to the old device: build optimizers after moving."""
        if device != "cpu" and ("quantization" in self._cfg or "qat" in self._cfg):
            what = "quantized" if self.quantized else "quantization-aware (qat)"
            raise BackendError(f"a {what} network runs on the CPU only (loom.kernels.quant.affine is host code); "
                               f"train the float network on {device}, then quantize it on the CPU")
        target = backends.get(device)
        if target is self.backend:
            return self
        state = {k: self.backend.to_numpy(v) for k, v in self.state_dict().items()}
        grads = {k: self.backend.to_numpy(v) for k, v in self.gradients().items()}
        moved = Network(self._cfg, device)       # rebuilt there: constants (RoPE tables, masks) too
        moved.load_state_dict(state)
        freezing.freeze_exact(moved, self.frozen)
        for name, g in moved.gradients().items():
            g[...] = target.asarray(grads[name])
        self.backend, self.root = moved.backend, moved.root
        self._has_forward = False
        if self._compiled is not None:
            self.compile(self._compiled.cache_size, self._compiled.strict)   # chains belong to the old device
        return self

    # --- inspection ---
    def summary(self) -> str:
        rows = [("layer", "type", "output shape", "params")]

        def add(layer, prefix, depth):
            for key, child in layer.children.items():
                name = f"{prefix}.{key}" if prefix else key
                rows.append(("  " * depth + name, child.type, str(list(child.out_spec.shape)),
                             f"{child.param_count():,}"))
                add(child, name, depth + 1)
        add(self.root, "", 0)
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = [f"{self._cfg['name']}: input {list(self.input_spec.shape)} {self.input_spec.dtype}, "
                 f"dtype {self._cfg['dtype']}, seed {self._cfg['seed']}, device {self.device}"]
        for key, what in (("quantization", "weights stored in"), ("qat", "quantization-aware training for")):
            if key in self._cfg:
                q = self._cfg[key]
                lines.append(f"{what} {q['dtype']} (scales per {q['per']})")
        for i, r in enumerate(rows):
            lines.append("  ".join(c.ljust(w) if j < 3 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths))))
            if i == 0:
                lines.append("-" * (sum(widths) + 6))
        lines.append(f"total parameters: {self.root.param_count():,}")
        if self.quantized:
            size = sum(p.nbytes for p in self.parameters().values())
            lines.append(f"parameter bytes: {size:,} (quantized weights with their scales)")
        return "\n".join(lines)

    def blueprint(self) -> dict:
        """Every layer's path, type, grid cell, input/output specs, parameter counts, shapes and dtypes,
        nested layers included, as a JSON-serializable dict (see loom/nn/blueprint.py)."""
        return blueprints.blueprint(self)

    def __repr__(self) -> str:
        return (f"Network({self._cfg['name']!r}, input={list(self.input_spec.shape)}, "
                f"output={list(self.output_spec.shape)}, params={self.root.param_count():,}, device={self.device!r})")

    def check_finite(self, x: Array | None = None, attention_mask: Array | None = None) -> NonFinite | None:
        """The first parameter, or (given x) the first layer in execution order whose output holds a
        NaN or Inf; None when everything is finite. Runs x through the layers one at a time."""
        xp = self.backend.xp
        for name, p in self.parameters().items():
            bad = _count_bad(xp, p.dequantize("float64") if isinstance(p, quant.AffineQuantized) else p)
            if bad:
                return NonFinite(name, "parameter", *bad)
        if x is None:
            return None
        x = self.check_input(x)
        if self.input_spec.is_float and _count_bad(xp, x):
            return NonFinite("input", "input", *_count_bad(xp, x))
        found: list[NonFinite] = []

        def watch(prefix, layer, inp, out):
            bad = _count_bad(xp, out) if out.dtype.kind == "f" else None
            if bad and not found:
                found.append(NonFinite(prefix, layer.cfg["type"], *bad))

        with hooks.forward_hooks([(p, layer) for p, layer in self.root.walk() if layer is not self.root], watch):
            fc = ForwardContext(training=self.training, counter=self.rng_counter,
                                attention_mask=None if attention_mask is None else self.check_mask(attention_mask, x.shape[0]))
            self.root.forward(x, fc)
        # Inner layers finish before their containers, so the first report is the innermost culprit.
        return found[0] if found else None

    # --- files (through nn.files: the codec, loom.formats.loomfile, sits above nn) ---
    def save(self, path: str | Path, optimizer: Optimizer | None = None) -> None:
        """Write config + weights (+ optimizer state) to one model file, atomically; a path that is a
        directory (or ends with "/") gets model.safetensors + config.json inside it."""
        files.codec().save(self, path, optimizer)

    def to_bytes(self) -> bytes:
        """The model file's bytes (what `save` writes for a file path)."""
        return files.codec().to_bytes(self)

    def fingerprint(self, x: Array) -> str:
        """SHA-256 of the output bytes for x (eval mode is not forced)."""
        y = self.backend.to_numpy(self.forward(x))
        return hashlib.sha256(np.ascontiguousarray(y).tobytes()).hexdigest()


def _host(value) -> np.ndarray:
    """A state-dict value as a NumPy array (torch tensors are detached and copied to the host)."""
    return np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value)


def _count_bad(xp, a):
    nan = int(xp.isnan(a).sum())
    inf = int(xp.isinf(a).sum())
    return (nan, inf) if nan or inf else None

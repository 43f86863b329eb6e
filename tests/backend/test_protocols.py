"""Both backends implement the kernel-family protocols of loom/backend/protocols.py, member for member
and with the protocols' parameters; nothing outside loom/backend asks an array module or probes a
backend for undeclared capabilities."""
import inspect
import re
from pathlib import Path

import pytest

from loom.backend import cuda, protocols
from loom.backend.cpu import CPU, CPUElementwise, CPUExact, CPUQuant

ROOT = Path(__file__).resolve().parents[2] / "loom"

FAMILIES = [
    (protocols.ExactKernels, [CPUExact, cuda.CUDAExact]),
    (protocols.QuantKernels, [CPUQuant, cuda.CUDAQuant]),
    (protocols.ElementwiseKernels, [CPUElementwise, cuda.CUDAElementwise]),
]


def _methods(proto):
    return {n: f for n, f in vars(proto).items() if inspect.isfunction(f) and not n.startswith("_")}


@pytest.mark.parametrize("proto, classes", FAMILIES, ids=lambda v: getattr(v, "__name__", ""))
def test_each_family_is_implemented_with_the_protocols_parameters(proto, classes):
    for cls in classes:
        for name, spec in _methods(proto).items():
            impl = getattr(cls, name, None)
            assert callable(impl), f"{cls.__name__} lacks {name}"
            assert list(inspect.signature(impl).parameters) == list(inspect.signature(spec).parameters), \
                f"{cls.__name__}.{name}"


def test_the_cpu_backend_declares_every_member_of_the_backend_protocol():
    declared = [n for n in protocols.Backend.__annotations__] + list(_methods(protocols.Backend))
    for name in declared:
        assert hasattr(CPU, name), name
    assert CPU.host and CPU.fused is None and CPU.decode is None
    assert isinstance(CPU.exact, CPUExact) and isinstance(CPU.quant, CPUQuant)


def test_the_cuda_backend_class_declares_every_member_it_does_not_set_at_construction():
    source = inspect.getsource(cuda.CUDABackend)
    for name in list(protocols.Backend.__annotations__) + list(_methods(protocols.Backend)):
        assert re.search(rf"\b(self\.)?{name}\b\s*=|def {name}\(", source), name


# a backend, or a kernel family, asked whether it has something (getattr / hasattr) instead of
# declaring it in protocols.py; the array module compared with NumPy; an array asked whether it is
# a GPU array (backend.of(array) says which backend owns it)
_PROBED = r"(be|B|\w+\.B|backend|self\.backend|\w+\.backend|backends?\.\w+\(.*?\)|kernels|\w+\.kernels)"
PROBES = re.compile(rf"\bxp is (not )?np\b|\b(getattr|hasattr)\({_PROBED},|__cuda_array_interface__")


def test_nothing_outside_the_backend_branches_on_the_array_module_or_probes_a_backend():
    offenders = []
    for path in ROOT.rglob("*.py"):
        if path.is_relative_to(ROOT / "backend"):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if PROBES.search(line):
                offenders.append(f"{path.relative_to(ROOT.parent)}:{number}: {line.strip()}")
    assert offenders == []


@pytest.mark.parametrize("line, probe", [
    ("if xp is np:", True),
    ("fn = getattr(be, 'fused_rms', None)", True),
    ("if hasattr(backend, 'decode'):", True),
    ("if hasattr(self.backend, 'graphs'):", True),
    ("ok = hasattr(net.backend, 'record')", True),
    ("if hasattr(backend.of(x), 'quant'):", True),
    ("if not hasattr(kernels, 'paged_attention'):", True),
    ("if hasattr(be.kernels, 'flash'):", True),
    ('and getattr(self.B, "fused", None) is not None', True),
    ('on_gpu = hasattr(x, "__cuda_array_interface__")', True),
    ("if be.fused is not None:", False),
    ("shape = getattr(g, 'shape', None)", False),
    ("if hasattr(layer, 'check_ids'):", False),
    ("xp = backend.of(x).xp", False),
])
def test_the_probe_pattern(line, probe):
    assert bool(PROBES.search(line)) is probe

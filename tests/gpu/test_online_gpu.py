"""The online harness on the GPU: every training mode gives the CPU's answers, losses and grid walk bit
for bit in deterministic mode (the clock is FixedCosts, so availability is the same too)."""
import numpy as np
import pytest

import loom
from loom.nn import online
from loom.nn.online import assessment

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("deterministic_mode")]


def records(device, arch, stream, mode):
    net = loom.Network.from_config(assessment.network_config(arch, stream, 1))
    if device != "cpu":
        net.to(device)
    settings = {"train_every": 20, "buffer": 20} if mode == "NormalBP" else None
    r = online.run(net, online.stream(stream, 60, 1), mode, settings, timing=online.FixedCosts())
    return r.records, r.summary


@pytest.mark.parametrize("mode", [pytest.param(m, marks=pytest.mark.smoke if m == "TweenChain" else ())
                                  for m in online.MODES])
@pytest.mark.parametrize("arch, stream", [("conv2d", "abrupt"), ("lstm", "grid"), ("attention", "noisy")])
def test_every_mode_gives_the_cpu_bits(arch, stream, mode):
    (cpu, cs), (gpu, gs) = records("cpu", arch, stream, mode), records("cuda", arch, stream, mode)
    for key in ("output", "answered", "correct"):
        assert gpu[key].tobytes() == cpu[key].tobytes(), key
    finite = np.isfinite(cpu["loss"])            # a diverged run's NaNs may differ in their payload bits
    assert (np.isfinite(gpu["loss"]) == finite).all()
    assert gpu["loss"][finite].tobytes() == cpu["loss"][finite].tobytes()
    same = [k for k in cs if k != "tick_ms"]
    assert repr([gs[k] for k in same]) == repr([cs[k] for k in same])       # repr: NaN equals NaN

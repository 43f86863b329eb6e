"""`loom demo`: build the bundled digits convnet from its JSON config, run it, fingerprint the output.

Training the demo on the bundled digits set arrives with `loom train`; until then the demo shows
the part that exists: config -> network -> forward -> a fingerprint that any machine reproduces.
"""
from __future__ import annotations

import hashlib
import json
from importlib import resources

import numpy as np

HELP = "build and run the bundled example network (no arguments needed)"
CONFIG = "digits-convnet.json"


def add_arguments(p):
    p.add_argument("--batch", type=int, default=4, help="number of example inputs (default 4)")


def demo_config() -> dict:
    return json.loads(resources.files(__package__).joinpath(CONFIG).read_text(encoding="utf-8"))


def run(args) -> int:
    from .. import __version__, config, rng
    from ..errors import ConfigError
    from ..nn import Network

    if args.batch < 1:
        raise ConfigError("--batch", f"expected a positive integer, got {args.batch}")
    cfg = demo_config()
    net = Network.from_config(cfg)
    print(f"Loom {__version__} demo: {cfg['name']} (untrained weights from seed {cfg['seed']})\n")
    print(net.summary())

    shape = (args.batch, *cfg["input"]["shape"])
    x = rng.Generator(0, "demo.input").uniform(shape, dtype=np.float32)
    y = net(x)
    digest = hashlib.sha256(y.tobytes()).hexdigest()
    print(f"\ninput: {args.batch} pseudo-random images {list(shape[1:])} from the counter RNG (seed 0, stream demo.input)")
    print(f"logits[0]: {np.array2string(y[0], precision=4, max_line_width=120)}")
    print(f"predicted classes: {y.argmax(axis=1).tolist()}")
    print(f"output fingerprint (SHA-256 of the float32 logits): {digest}")

    again = Network.from_config(config.dumps(net.config))
    same_weights = all(np.array_equal(p, again.parameters()[k]) for k, p in net.parameters().items())
    same_output = hashlib.sha256(again(x).tobytes()).hexdigest() == digest
    verdict = "identical" if same_weights and same_output else "DIFFERENT"
    print(f"rebuilt from its canonical JSON: weights and fingerprint {verdict}")
    return 0 if same_weights and same_output else 1

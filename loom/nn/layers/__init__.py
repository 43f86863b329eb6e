"""Every layer family, one module each; importing this package registers them all (openfluke: the
openfluke welvet compatibility types, subclasses of the core layers)."""
from . import (  # noqa: F401
               activation,
               attention,
               conv,
               dense,
               dropout,
               embedding,
               kmeans,
               norm,
               openfluke,
               parallel,
               pool,
               recurrent,
               shape,
               softmax,
               stitch,
               structure,
               swiglu,
)
from .base import REGISTRY, BuildContext, ForwardContext, Layer, Spec, build

__all__ = ["REGISTRY", "BuildContext", "ForwardContext", "Layer", "Spec", "build"]

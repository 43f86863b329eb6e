"""Every layer family, one module each; importing this package registers them all."""
from . import (activation, attention, conv, dense, dropout, embedding, kmeans, norm, parallel, pool,  # noqa: F401
               recurrent, shape, softmax, structure, swiglu)
from .base import REGISTRY, BuildContext, ForwardContext, Layer, Spec, build

__all__ = ["REGISTRY", "BuildContext", "ForwardContext", "Layer", "Spec", "build"]

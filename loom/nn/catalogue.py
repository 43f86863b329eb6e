"""One small valid config per layer type, softmax variant and combine mode.

Generic tests (config round trip, JSON Schema, building, reproducible init) run over all of these,
and a test checks that the catalogue covers every registered type, variant and mode. It lives in
the package, not in tests/, because `loom verify` fingerprints every sample on every backend.
Samples of the openfluke compatibility types (loom/nn/layers/openfluke.py) are named after the core
type they extend and the switch they set: dense/accumulate_block, layer_norm/float64,
multi_head_attention/span_batch, softmax/standard/batch, softmax/entmax/blend, ...
"""
from __future__ import annotations

D = {"type": "dense", "units": 4}
FD = {"type": "sequential", "layers": [{"type": "flatten"}, D]}

# (name, layers, input shape, input dtype)
SAMPLES = [
    ("dense", [{"type": "dense", "units": 3, "activation": "relu"}], [5], None),
    ("dense/accumulate_block", [{"type": "openfluke_dense", "units": 3, "activation": "tanh", "accumulate_block": 2}],
     [5], None),
    ("conv1d", [{"type": "conv1d", "filters": 2, "kernel_size": 3, "padding": "same"}], [2, 7], None),
    ("conv2d", [{"type": "conv2d", "filters": 4, "kernel_size": [2, 3], "stride": [1, 2], "groups": 2,
                 "activation": "gelu"}], [2, 5, 6], None),
    ("conv3d", [{"type": "conv3d", "filters": 2, "kernel_size": 2, "dilation": 1, "bias": False}], [1, 3, 4, 4], None),
    ("conv_transpose1d", [{"type": "conv_transpose1d", "filters": 2, "kernel_size": 3, "stride": 2}], [3, 4], None),
    ("conv_transpose2d", [{"type": "conv_transpose2d", "filters": 2, "kernel_size": 2, "stride": 2,
                           "output_padding": 1}], [2, 3, 3], None),
    ("conv_transpose3d", [{"type": "conv_transpose3d", "filters": 1, "kernel_size": 2}], [2, 2, 2, 2], None),
    ("max_pool1d", [{"type": "max_pool1d", "pool_size": 2}], [2, 6], None),
    ("max_pool2d", [{"type": "max_pool2d", "pool_size": 3, "stride": 2, "padding": 1}], [1, 5, 5], None),
    ("max_pool3d", [{"type": "max_pool3d", "pool_size": 2}], [1, 4, 4, 4], None),
    ("avg_pool1d", [{"type": "avg_pool1d", "pool_size": 3, "stride": 1}], [2, 5], None),
    ("avg_pool2d", [{"type": "avg_pool2d", "pool_size": 2}], [2, 4, 4], None),
    ("avg_pool3d", [{"type": "avg_pool3d", "pool_size": [1, 2, 2]}], [1, 2, 4, 4], None),
    ("embedding", [{"type": "embedding", "vocab_size": 10, "dim": 4}], [3], "int64"),
    ("layer_norm", [{"type": "layer_norm", "eps": 1e-6}], [3, 4], None),
    ("rms_norm", [{"type": "rms_norm"}], [4], None),
    ("layer_norm/float64", [{"type": "openfluke_layer_norm", "compute_dtype": "float64"}], [3, 4], None),
    ("rms_norm/float64", [{"type": "openfluke_rms_norm", "eps": 1e-5, "compute_dtype": "float64"}], [4], None),
    ("batch_norm", [{"type": "batch_norm", "momentum": 0.2}], [3, 4, 4], None),
    ("dropout", [{"type": "dropout", "rate": 0.1}], [6], None),
    ("rnn", [{"type": "rnn", "hidden": 3}], [4, 2], None),
    ("lstm", [{"type": "lstm", "hidden": 3, "return_sequences": True}], [4, 2], None),
    ("gru", [{"type": "gru", "hidden": 3, "bias": False}], [4, 2], None),
    ("multi_head_attention", [{"type": "multi_head_attention", "heads": 4, "kv_heads": 2, "causal": True,
                               "rope": {"theta": 10000}, "qk_norm": True}], [5, 8], None),
    ("multi_head_attention/span_batch", [{"type": "openfluke_attention", "heads": 2, "causal": True,
                                          "rope": {"theta": 100}, "span": "batch"}], [3, 4], None),
    ("swiglu", [{"type": "swiglu", "hidden": 8}], [4], None),
    ("activation", [{"type": "activation", "fn": "mish"}], [4], None),
    ("flatten", [{"type": "flatten"}], [2, 3], None),
    ("reshape", [{"type": "reshape", "shape": [3, -1]}], [6], None),
    ("residual", [{"type": "residual", "layers": [D, {"type": "layer_norm"}]}], [4], None),
    ("sequential", [{"type": "sequential", "layers": [D, {"type": "activation", "fn": "tanh"}]}], [3], None),
    ("kmeans", [{"type": "kmeans", "clusters": 3, "output": "features", "temperature": 0.5}], [4], None),
    ("softmax/standard", [{"type": "softmax"}], [5], None),
    ("softmax/temperature", [{"type": "softmax", "variant": "temperature", "temperature": 0.5}], [5], None),
    ("softmax/grid", [{"type": "softmax", "variant": "grid", "rows": 2, "cols": 3}], [6], None),
    ("softmax/hierarchical", [{"type": "softmax", "variant": "hierarchical", "levels": [2, 3]}], [8], None),
    ("softmax/gumbel", [{"type": "softmax", "variant": "gumbel", "temperature": 2}], [5], None),
    ("softmax/masked", [{"type": "softmax", "variant": "masked", "mask": [1, 0, 1, 1, 0]}], [5], None),
    ("softmax/sparsemax", [{"type": "softmax", "variant": "sparsemax"}], [5], None),
    ("softmax/entmax", [{"type": "softmax", "variant": "entmax", "alpha": 1.5}], [5], None),
    ("softmax/adaptive", [{"type": "softmax", "variant": "adaptive", "classes": 10, "cutoffs": [4, 7], "div_value": 2}], [16], None),
    ("softmax/mixture", [{"type": "softmax", "variant": "mixture", "components": 3}], [5], None),
    # openfluke welvet semantics (docs/interop.md): whole-batch normalization, blended entmax
    ("softmax/standard/batch", [{"type": "openfluke_softmax", "temperature": 0.5, "normalize": "batch"}], [2, 3], None),
    ("softmax/grid/batch", [{"type": "openfluke_softmax", "variant": "grid", "rows": 2, "cols": 3,
                             "normalize": "batch"}], [6], None),
    ("softmax/sparsemax/batch", [{"type": "openfluke_softmax", "variant": "sparsemax", "normalize": "batch"}], [5], None),
    ("softmax/entmax/blend", [{"type": "openfluke_softmax", "variant": "entmax", "alpha": 1.3, "form": "blend",
                               "normalize": "row"}], [5], None),
    ("softmax/entmax/blend-batch", [{"type": "openfluke_softmax", "variant": "entmax", "alpha": 1.6, "form": "blend",
                                     "normalize": "batch"}], [4], None),
    ("parallel/concat", [{"type": "parallel", "branches": [D, {"type": "dense", "units": 2}]}], [3], None),
    ("parallel/add", [{"type": "parallel", "combine": "add", "branches": [D, D]}], [3], None),
    ("parallel/avg", [{"type": "parallel", "combine": "avg", "branches": [D, D, D]}], [3], None),
    ("parallel/multiply", [{"type": "parallel", "combine": "multiply", "branches": [D, D]}], [3], None),
    ("parallel/grid_scatter", [{"type": "parallel", "combine": "grid_scatter",
                                "grid": {"rows": 2, "cols": 2, "positions": [[0, 0, 0], [1, 1, 0], [0, 1, 0]]},
                                "branches": [FD, {"type": "lstm", "hidden": 4}, FD]}], [2, 3], None),
    ("parallel/filter", [{"type": "parallel", "combine": "filter", "top_k": 2,
                          "branches": [D, {"type": "sequential", "layers": [D, {"type": "activation", "fn": "relu"}]}, D]}],
     [3], None),
    # heterogeneous experts (5 and 7 wide; then 4, 7 and 2 wide over a sequence) projected to one width
    ("stitch", [{"type": "stitch", "width": 4, "combine": "add",
                 "branches": [{"type": "dense", "units": 5, "activation": "tanh"}, {"type": "dense", "units": 7}]}],
     [3], None),
    ("stitch/filter", [{"type": "stitch", "width": 3, "bias": False, "combine": "filter", "top_k": 2,
                        "branches": [D, {"type": "dense", "units": 7, "activation": "tanh"},
                                     {"type": "sequential", "layers": [D, {"type": "dense", "units": 2}]}]}],
     [2, 3], None),
]


def config(layers: list[dict], shape: list[int] | tuple[int, ...], input_dtype: str | None = None,
           dtype: str = "float32", seed: int = 0) -> dict:
    """A format-v1 network config around one sample's layers."""
    cfg = {"loom": 1, "name": "sample", "seed": seed, "dtype": dtype, "input": {"shape": list(shape)}, "layers": layers}
    if input_dtype:
        cfg["input"]["dtype"] = input_dtype
    return cfg

"""Data-parallel training in a loopback world of threads (tests/loopback.py stands in for NCCL): the
weights are the bits one process gets, for any number of ranks and any split of the batch."""
import hashlib
import json
import pathlib

import numpy as np
import pytest
from loopback import run_world

import loom
from loom.distributed import DataParallel, shard
from loom.errors import ConfigError, DistributedError
from loom.nn import train as nn_train

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"


class FakeGroup:
    """The parts of loom.distributed.Group that DataParallel uses."""

    def __init__(self, collective):
        self.collective, self.rank, self.size, self.device = collective, collective.rank, collective.size, "cpu"

    def begin(self):
        pass

    def end(self):
        pass

    def idle(self):
        pass


def digest(net) -> str:
    h = hashlib.sha256()
    for name, value in sorted(net.parameters().items()):
        h.update(name.encode() + np.ascontiguousarray(value).tobytes())
    for name, value in sorted(net.buffers().items()) if hasattr(net, "buffers") else ():
        h.update(name.encode() + np.ascontiguousarray(value).tobytes())
    return h.hexdigest()


def data(config, n, seed=0):
    rng = np.random.default_rng(seed)
    shape = tuple(config["input"]["shape"])
    if config["input"].get("dtype", "float32").startswith("int"):
        X = rng.integers(0, 200, (n,) + shape).astype(np.int64)
        Y = rng.integers(0, 200, (n,) + shape[:1]).astype(np.int64)
    else:
        X = rng.standard_normal((n,) + shape).astype(np.float32)
        Y = rng.integers(0, 10, n).astype(np.int64)
    return X, Y


BN_NET = {"loom": 1, "name": "bn", "seed": 3, "dtype": "float32", "input": {"shape": [2, 6, 6]},
          "layers": [{"type": "conv2d", "filters": 4, "kernel_size": 3},
                     {"type": "batch_norm"}, {"type": "activation", "fn": "relu"},
                     {"type": "flatten"}, {"type": "dense", "units": 10}]}
LSTM_NET = {"loom": 1, "name": "lstm", "seed": 4, "dtype": "float32", "input": {"shape": [5, 3]},
            "layers": [{"type": "lstm", "hidden": 6}, {"type": "layer_norm"}, {"type": "dense", "units": 10}]}
ADAPTIVE_NET = {"loom": 1, "name": "adaptive", "seed": 6, "dtype": "float32", "input": {"shape": [16]},
                "layers": [{"type": "softmax", "variant": "adaptive", "classes": 10, "cutoffs": [4, 7],
                            "div_value": 2}]}
MIXTURE_NET = {"loom": 1, "name": "mixture", "seed": 7, "dtype": "float32", "input": {"shape": [6]},
               "layers": [{"type": "dense", "units": 10}, {"type": "softmax", "variant": "mixture", "components": 3}]}
BN_VECTOR_NET = {"loom": 1, "name": "bn-vector", "seed": 8, "dtype": "float32", "input": {"shape": [4]},
                 "layers": [{"type": "dense", "units": 4}, {"type": "batch_norm"}, {"type": "dense", "units": 10}]}
KMEANS_NET = {"loom": 1, "name": "km", "seed": 5, "dtype": "float32", "input": {"shape": [4]},
              "layers": [{"type": "kmeans", "clusters": 3}, {"type": "dense", "units": 10}]}


def configs():
    out = {name: json.loads((EXAMPLES / f"{name}.json").read_text())
           for name in ("mnist-mlp", "digits-convnet", "tiny-transformer")}
    out["tiny-transformer"]["input"]["shape"] = [8]          # short sequences: a quick test
    out.update({"batch-norm": BN_NET, "lstm": LSTM_NET, "kmeans": KMEANS_NET, "adaptive-softmax": ADAPTIVE_NET,
                "mixture-softmax": MIXTURE_NET, "batch-norm-vector": BN_VECTOR_NET})
    return out


CONFIGS = configs()
SETTINGS = dict(epochs=2, batch_size=12, optimizer={"type": "adam", "lr": 0.01}, verbose=False)


def trained_alone(config, X, Y, **settings):
    net = loom.Network.from_config(config)
    history = loom.train(net, X, Y, **{**SETTINGS, **settings})
    return digest(net), history.logs["loss"]


def trained_split(config, X, Y, ranks, fast=False, **settings):
    def rank(collective):
        with loom.deterministic(not fast):
            net = loom.Network.from_config(config)
            history = nn_train.train(net, X, Y, parallel=DataParallel(FakeGroup(collective)),
                                     **{**SETTINGS, **settings})
            return digest(net), history.logs["loss"]
    return run_world(ranks, rank)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_weights_are_the_same_bits_on_any_number_of_ranks(name):
    config = CONFIGS[name]
    X, Y = data(config, 30)                 # batches of 12, 12 and 6: uneven splits over 4 ranks
    alone = trained_alone(config, X, Y)
    for ranks in (2, 3, 4):
        results = trained_split(config, X, Y, ranks)
        for r, got in enumerate(results):
            assert got[0] == alone[0], f"{name}: rank {r} of {ranks} has other weights than one process"
            assert got[1] == alone[1], f"{name}: rank {r} of {ranks} logged other losses"


def test_metrics_and_validation_match_one_process():
    config = CONFIGS["mnist-mlp"]
    X, Y = data(config, 40)
    settings = dict(metrics=["accuracy"], validation=0.25)
    net = loom.Network.from_config(config)
    alone = loom.train(net, X, Y, **SETTINGS, **settings).logs
    for logs in (r[1] for r in run_world(3, lambda c: (None, nn_train.train(
            loom.Network.from_config(config), X, Y, parallel=DataParallel(FakeGroup(c)),
            **SETTINGS, **settings).logs))):
        assert {k: v for k, v in logs.items() if k != "seconds"} == \
               {k: v for k, v in alone.items() if k != "seconds"}


def test_ranks_agree_on_the_epoch_time_and_on_stopping():
    config = CONFIGS["mnist-mlp"]
    X, Y = data(config, 24)

    def rank(collective):
        stop_here = [lambda epoch, logs: collective.rank == 1]        # only rank 1's callback asks
        history = nn_train.train(loom.Network.from_config(config), X, Y, parallel=DataParallel(FakeGroup(collective)),
                                 callbacks=stop_here, **{**SETTINGS, "epochs": 3})
        return history["seconds"], history.stopped_early
    results = run_world(3, rank)
    assert all(seconds == results[0][0] and len(seconds) == 1 and stopped for seconds, stopped in results)


def test_fast_mode_all_reduces_float_gradients_in_buckets():
    config = CONFIGS["digits-convnet"]
    X, Y = data(config, 24)
    with loom.deterministic(False):
        net = loom.Network.from_config(config)
        loom.train(net, X, Y, **SETTINGS)
        alone = {k: np.array(v) for k, v in net.parameters().items()}

    def rank(collective):
        with loom.deterministic(False):
            net = loom.Network.from_config(config)
            dp = DataParallel(FakeGroup(collective), bucket_bytes=4096)
            nn_train.train(net, X, Y, parallel=dp, **SETTINGS)
            return {k: np.array(v) for k, v in net.parameters().items()}, len(dp.buckets.flats), collective.calls
    results = run_world(2, rank)
    assert all(n > 1 for _, n, _ in results)                  # several buckets of <= 4 KB
    for params, _, calls in results:
        assert all(np.array_equal(params[k], results[0][0][k]) for k in params)   # ranks agree exactly
        for k in params:                                      # and one process agrees to rounding
            np.testing.assert_allclose(params[k], alone[k], rtol=2e-4, atol=2e-5)
        assert any(op == "sum" and dtype == "float32" for op, _, dtype in calls)


class AsyncLog:
    """A loopback collective with all_reduce_async/join (NCCL's overlap API) that logs its calls in
    one timeline with the backward of the network's first layer."""

    def __init__(self, inner, timeline):
        self.inner, self.timeline = inner, timeline
        self.rank, self.size = inner.rank, inner.size

    def all_reduce(self, x, op):
        self.inner.all_reduce(x, op)

    def all_reduce_async(self, x, op):
        self.timeline.append(("start", x.size))
        self.inner.all_reduce(x, op)

    def join(self):
        self.timeline.append(("join",))


def test_fast_mode_starts_each_bucket_while_the_backward_goes_on():
    config = CONFIGS["digits-convnet"]
    X, Y = data(config, 24)

    def rank(collective):
        timeline = []
        with loom.deterministic(False):
            net = loom.Network.from_config(config)
            first = next(iter(net.root.children.values()))
            backward = first.backward

            def logged(dy):
                timeline.append(("first layer",))
                return backward(dy)
            first.backward = logged
            dp = DataParallel(FakeGroup(AsyncLog(collective, timeline)), bucket_bytes=4096)
            nn_train.train(net, X, Y, parallel=dp, **{**SETTINGS, "epochs": 1})
            return timeline, len(dp.buckets.flats)
    for timeline, buckets in run_world(2, rank):
        steps = [i for i, event in enumerate(timeline) if event == ("join",)]
        assert len(steps) == 2                                 # 24 samples in batches of 12
        begin = 0
        for end in steps:
            step = timeline[begin:end]
            starts = [i for i, event in enumerate(step) if event[0] == "start"]
            assert len(starts) == buckets                      # every bucket once, then the join
            first = step.index(("first layer",))
            assert starts[0] < first < starts[-1]              # started during the backward, not after
            begin = end + 1


def test_mismatched_ranks_are_refused_at_start():
    config = CONFIGS["mnist-mlp"]
    X, Y = data(config, 24)

    def rank(collective):
        cfg = dict(config, seed=collective.rank)              # rank 1 initializes other weights
        return nn_train.train(loom.Network.from_config(cfg), X, Y, parallel=DataParallel(FakeGroup(collective)),
                              **SETTINGS)
    with pytest.raises(DistributedError, match="rank\\(s\\) 1 train something other"):
        run_world(2, rank)


def test_a_batch_smaller_than_the_world_is_refused():
    config = CONFIGS["mnist-mlp"]
    X, Y = data(config, 25)                  # batches of 12, 12 and 1
    with pytest.raises(ConfigError, match="last batch"):
        run_world(2, lambda c: nn_train.train(loom.Network.from_config(config), X, Y,
                                              parallel=DataParallel(FakeGroup(c)), **SETTINGS))


def test_shard_covers_the_batch_contiguously():
    for n in (1, 5, 12, 13):
        for size in range(1, n + 1):
            cuts = [shard(n, r, size) for r in range(size)]
            assert cuts[0][0] == 0 and cuts[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(cuts, cuts[1:]))
            assert max(b - a for a, b in cuts) - min(b - a for a, b in cuts) <= 1


def test_checkpoints_are_written_by_rank_zero_and_resume_on_other_world_sizes(tmp_path):
    config = CONFIGS["digits-convnet"]
    X, Y = data(config, 24)
    straight = trained_alone(config, X, Y, epochs=3)
    path = tmp_path / "ck.loom"
    run_world(2, lambda c: nn_train.train(loom.Network.from_config(config), X, Y, checkpoint=str(path),
                                          parallel=DataParallel(FakeGroup(c)), **{**SETTINGS, "epochs": 1}))
    assert path.exists() and not list(tmp_path.glob("*.tmp*"))

    def resumed(collective):
        net = loom.Network.from_config(config)
        nn_train.train(net, X, Y, resume=str(path), parallel=DataParallel(FakeGroup(collective)),
                       **{**SETTINGS, "epochs": 3})
        return digest(net)
    assert run_world(3, resumed) == [straight[0]] * 3


def test_batch_norm_takes_the_global_count_on_one_sample_slices():
    config = CONFIGS["batch-norm-vector"]
    X, Y = data(config, 10)                 # batches of 5 over 3 ranks: slices of 2, 2 and 1
    alone = trained_alone(config, X, Y, batch_size=5)
    assert [r[0] for r in trained_split(config, X, Y, 3, batch_size=5)] == [alone[0]] * 3


def test_ranks_in_other_modes_are_refused_at_start():
    config = CONFIGS["mnist-mlp"]
    X, Y = data(config, 24)

    def rank(collective):
        with loom.deterministic(collective.rank == 0):
            return nn_train.train(loom.Network.from_config(config), X, Y,
                                  parallel=DataParallel(FakeGroup(collective)), **SETTINGS)
    with pytest.raises(DistributedError, match="train something other"):
        run_world(2, rank)


def test_a_rank_that_refuses_to_start_does_not_leave_the_others_waiting():
    config = CONFIGS["mnist-mlp"]
    X, Y = data(config, 24)
    errors = []

    def rank(collective):
        cfg = dict(config, dtype="float64", input={"shape": [784], "dtype": "float64"}) \
            if collective.rank == 1 else config
        try:
            nn_train.train(loom.Network.from_config(cfg), X, Y, parallel=DataParallel(FakeGroup(collective)),
                           **SETTINGS)
        except (ConfigError, DistributedError) as exc:
            errors.append((collective.rank, exc))
    run_world(2, rank)
    kinds = dict((r, type(e)) for r, e in errors)
    assert kinds == {0: DistributedError, 1: ConfigError}
    assert "rank(s) 1 refused to start" in str(dict(errors)[0])


def test_layers_that_mix_rows_are_refused_even_inside_a_gate():
    gate = {"type": "sequential", "layers": [{"type": "dense", "units": 2},
                                              {"type": "openfluke_softmax", "normalize": "batch"}]}
    config = {"loom": 1, "name": "gated", "seed": 0, "dtype": "float32", "input": {"shape": [4]},
              "layers": [{"type": "parallel", "combine": "filter", "gate": gate,
                          "branches": [{"type": "dense", "units": 10}, {"type": "dense", "units": 10}]}]}
    X, Y = data(config, 24)
    with pytest.raises(ConfigError, match="mixes the rows"):
        run_world(2, lambda c: nn_train.train(loom.Network.from_config(config), X, Y,
                                              parallel=DataParallel(FakeGroup(c)), **SETTINGS))


@pytest.mark.parametrize("name", ["mnist-mlp", "tiny-transformer"])
def test_bf16_weights_are_the_same_bits_on_any_number_of_ranks(name):
    """bf16 mixed precision (operands rounded elementwise, gradients over the global batch) keeps the
    one-process bits on every world size."""
    config = CONFIGS[name]
    X, Y = data(config, 30)
    alone = trained_alone(config, X, Y, precision="bf16")
    assert alone[0] != trained_alone(config, X, Y)[0]
    for ranks in (2, 3):
        for r, got in enumerate(trained_split(config, X, Y, ranks, precision="bf16")):
            assert got == alone, f"{name}: rank {r} of {ranks} differs from one process in bf16"


def test_ranks_in_other_precisions_are_refused_at_start():
    config = CONFIGS["mnist-mlp"]
    X, Y = data(config, 24)

    def rank(collective):
        return nn_train.train(loom.Network.from_config(config), X, Y, parallel=DataParallel(FakeGroup(collective)),
                              precision="bf16" if collective.rank == 0 else "float32", **SETTINGS)
    with pytest.raises(DistributedError, match="train something other"):
        run_world(2, rank)

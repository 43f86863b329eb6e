"""loom.distributed on the GPU: split reductions and data-parallel training in a loopback world of
threads on one GPU (bit-identical to one process and to the CPU), a real NCCL communicator (a world
of one rank here; of every GPU of the host where there are several), and `loom.train(devices=N)`
with N GPUs where the host has them."""
import hashlib
import json
import pathlib
import socket
import time

import numpy as np
import pytest
from distributed.train_rank import spawn_world
from loopback import run_world

import loom
from loom import backend
from loom.distributed import DataParallel, World, init, shutdown
from loom.errors import DistributedError
from loom.kernels import batch_split
from loom.kernels.exact import over_batch
from loom.nn import chain
from loom.nn import train as nn_train

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("deterministic_mode")]
EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"
SETTINGS = dict(epochs=2, batch_size=12, optimizer={"type": "adam", "lr": 0.01}, verbose=False)


def configs():
    out = {n: json.loads((EXAMPLES / f"{n}.json").read_text()) for n in ("mnist-mlp", "digits-convnet",
                                                                         "tiny-transformer")}
    out["tiny-transformer"]["input"]["shape"] = [8]
    out["batch-norm"] = {"loom": 1, "seed": 3, "dtype": "float32", "input": {"shape": [2, 6, 6]},
                         "layers": [{"type": "conv2d", "filters": 4, "kernel_size": 3}, {"type": "batch_norm"},
                                    {"type": "flatten"}, {"type": "dense", "units": 10}]}
    return out


CONFIGS = configs()


def _two_gpus() -> bool:
    return backend.available()["cuda"] == "ok" and backend.get("cuda").collectives.device_count() >= 2


def data(config, n):
    rng = np.random.default_rng(0)
    shape = tuple(config["input"]["shape"])
    if config["input"].get("dtype", "float32").startswith("int"):
        return rng.integers(0, 200, (n,) + shape), rng.integers(0, 200, (n,) + shape[:1])
    return rng.standard_normal((n,) + shape).astype(np.float32), rng.integers(0, 10, n)


def digest(net) -> str:
    h = hashlib.sha256()
    for name, value in sorted(net.parameters().items()):
        h.update(name.encode() + np.ascontiguousarray(net.backend.to_numpy(value)).tobytes())
    return h.hexdigest()


class FakeGroup:
    def __init__(self, collective, device="cuda"):
        self.collective, self.rank, self.size, self.device = collective, collective.rank, collective.size, device

    def begin(self):
        pass

    def end(self):
        pass

    def idle(self):
        pass


def test_split_products_and_sums_equal_one_device_on_the_gpu():
    cuda = backend.get("cuda")
    rng = np.random.default_rng(1)
    for m, k, n in [(7, 12, 5), (64, 12 * 300, 33), (3, 12 * 1500, 4)]:
        a = (rng.standard_normal((m, k)) * np.exp(rng.uniform(-20, 20, (m, 1)))).astype(np.float32)
        b = (rng.standard_normal((k, n)) * np.exp(rng.uniform(-20, 20, (1, n)))).astype(np.float32)
        a[0, 3] = np.inf
        ga, gb = cuda.asarray(a), cuda.asarray(b)
        one_cpu, one_gpu = over_batch.matmul(a, b), cuda.to_numpy(over_batch.matmul(ga, gb))
        np.testing.assert_array_equal(one_cpu.view(np.uint32), one_gpu.view(np.uint32))
        per = k // 12

        def rank(c):
            cuts = [0, 5, 9, 12][c.rank:c.rank + 2]
            lo, hi = cuts[0] * per, cuts[1] * per
            with batch_split.split(c, cuts[1] - cuts[0], 12, cuts[0]):
                return (cuda.to_numpy(over_batch.matmul(ga[:, lo:hi], gb[lo:hi])),
                        cuda.to_numpy(over_batch.sum(ga[:, lo:hi], axis=1)))
        for got, total in run_world(3, rank):
            np.testing.assert_array_equal(got.view(np.uint32), one_cpu.view(np.uint32))
            np.testing.assert_array_equal(total.view(np.uint32), loom.kernels.exact.sum(a, axis=1).view(np.uint32))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_gpu_ranks_train_the_cpu_bits(name, monkeypatch):
    config = CONFIGS[name]
    X, Y = data(config, 30)
    cpu = loom.Network.from_config(config)
    loom.train(cpu, X, Y, **SETTINGS)
    gpu = loom.Network.from_config(config)
    loom.train(gpu, X, Y, device="cuda", **SETTINGS)          # recorded steps
    assert digest(gpu) == digest(cpu)
    real = chain.TrainStep.__call__
    monkeypatch.setattr(chain.TrainStep, "__call__", lambda self, x, y, checked=True, eager=False:
                        real(self, x, y, checked, eager=True))  # threads sharing a GPU: no graphs

    def rank(c):
        with loom.deterministic(True):
            net = loom.Network.from_config(config)
            nn_train.train(net, X, Y, device="cuda", parallel=DataParallel(FakeGroup(c)), **SETTINGS)
            return digest(net)
    assert run_world(2, rank) == [digest(cpu)] * 2


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("deterministic", [True, False])
def test_nccl_world_of_one_records_its_collectives_into_the_step(deterministic):
    config = CONFIGS["digits-convnet"]
    X, Y = data(config, 36)
    with loom.deterministic(deterministic):
        alone = loom.Network.from_config(config)
        loom.train(alone, X, Y, device="cuda", **SETTINGS)
        group = init(device="cuda", timeout=30, world=World(0, 1, 0, "127.0.0.1", _free_port()))
        try:
            x = backend.get("cuda").asarray(np.arange(6, dtype=np.float32))
            group.collective.all_reduce(x, "sum")
            np.testing.assert_array_equal(backend.get("cuda").to_numpy(x), np.arange(6, dtype=np.float32))
            net = loom.Network.from_config(config)
            loom.train(net, X, Y, **SETTINGS)           # the world's device and DataParallel
        finally:
            shutdown()
    if deterministic:
        assert digest(net) == digest(alone)
    else:
        for k, v in net.parameters().items():
            np.testing.assert_allclose(backend.get("cuda").to_numpy(v),
                                       backend.get("cuda").to_numpy(alone.parameters()[k]), rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not _two_gpus(), reason="needs 2 GPUs")
@pytest.mark.parametrize("name", ["mnist-mlp", "digits-convnet", "tiny-transformer"])
def test_spawned_gpu_ranks_train_the_cpu_bits(name):
    config = CONFIGS[name]
    X, Y = data(config, 48)
    cpu = loom.Network.from_config(config)
    loom.train(cpu, X, Y, **SETTINGS)
    for n in sorted({2, backend.get("cuda").collectives.device_count()}):
        net = loom.Network.from_config(config)
        loom.train(net, X, Y, devices=n, device="cuda", **SETTINGS)
        assert digest(net) == digest(cpu), f"{n} GPUs"


def test_slice_parts_kernels_equal_the_reference():
    from loom.kernels.exact import narrow_bits
    cuda = backend.get("cuda")
    rng = np.random.default_rng(9)
    for m, k, n in [(5, 7, 3), (64, 3000, 48), (3, 20000, 5)]:
        a = (rng.standard_normal((m, k)) * np.exp(rng.uniform(-30, 30, (m, 1)))).astype(np.float32)
        b = (rng.standard_normal((k, n)) * np.exp(rng.uniform(-30, 30, (1, n)))).astype(np.float32)
        amax, bmax = np.abs(a).max(1, keepdims=True), np.abs(b).max(0, keepdims=True)
        bits = narrow_bits(min(k, 1 << 14))
        ref = over_batch._slice_parts(backend.get("cpu"), a, b, amax, bmax, bits)
        got = cuda.exact.slice_parts(cuda.asarray(a), cuda.asarray(b), cuda.asarray(amax), cuda.asarray(bmax), bits)
        np.testing.assert_array_equal(cuda.to_numpy(got), ref)
        out = cuda.exact.combine_parts(got, cuda.asarray(amax), cuda.asarray(bmax), bits, np.float32)
        np.testing.assert_array_equal(cuda.to_numpy(out).view(np.uint32),
                                      over_batch.matmul(a, b).view(np.uint32))


@pytest.mark.smoke
def test_split_sums_on_the_gpu_equal_one_process():
    cuda = backend.get("cuda")
    rng = np.random.default_rng(11)
    for shape, axes in [((12 * 700, 300), 0), ((12, 64, 9), (0, 2)), ((12 * 3, 5), 0)]:
        x = (rng.standard_normal(shape) * np.exp(rng.uniform(-30, 30, shape[-1]))).astype(np.float32)
        x[1, 2] = np.inf
        one = loom.kernels.exact.sum(x, axis=axes)
        gx = cuda.asarray(x)
        per = shape[0] // 12

        def rank(c):
            cuts = [0, 5, 9, 12][c.rank:c.rank + 2]
            with batch_split.split(c, cuts[1] - cuts[0], 12, cuts[0]):
                return cuda.to_numpy(over_batch.sum(gx[cuts[0] * per:cuts[1] * per], axis=axes))
        for got in run_world(3, rank):
            np.testing.assert_array_equal(got.view(np.uint32), one.view(np.uint32))


def _fault_world(out, fault, ranks=2, resume=None):
    return spawn_world(out, fault, ranks, resume=resume, timeout=120, device="cuda")


@pytest.mark.skipif(not _two_gpus(), reason="needs 2 GPUs")
def test_nccl_rank_that_dies_is_named_within_bounded_time(tmp_path):
    t0 = time.monotonic()
    with pytest.raises(DistributedError, match="rank 1 exited with code 1"):
        _fault_world(tmp_path, "die:1:5")
    assert time.monotonic() - t0 < 60


@pytest.mark.skipif(not _two_gpus(), reason="needs 2 GPUs")
def test_nccl_rank_that_hangs_is_named_by_the_watchdog(tmp_path, capfd):
    t0 = time.monotonic()
    with pytest.raises(DistributedError, match="rank 0 exited with code 3"):
        _fault_world(tmp_path, "hang:1:4")
    assert time.monotonic() - t0 < 60
    assert "rank(s) 1 did not finish" in capfd.readouterr().err


@pytest.mark.skipif(not _two_gpus(), reason="needs 2 GPUs")
def test_nccl_killed_run_resumes_bit_exactly_on_one_gpu(tmp_path, capfd):
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    straight.mkdir()
    broken.mkdir()
    t0 = time.monotonic()
    _fault_world(straight, "none")
    # the recorded steps are freed with the training, so the communicators are destroyed at once
    assert "was not destroyed" not in capfd.readouterr().err
    assert time.monotonic() - t0 < 60
    with pytest.raises(DistributedError):
        _fault_world(broken, "die:0:8")          # epoch 3 (3 batches an epoch): two checkpoints written
    assert (broken / "ck.loom").exists()
    _fault_world(broken, "none", ranks=1, resume=broken / "ck.loom")
    with np.load(straight / "weights.npz") as a, np.load(broken / "weights.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        assert all(np.array_equal(a[k], b[k]) for k in a.files)

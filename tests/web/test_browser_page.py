"""The page `loom web build` writes, in a real browser: headless Chromium driven over the DevTools pipe
(loom/web/cdp.py), the site served by loom.web.serve on a free loopback port.

- trained with ?auto=1, the page's fingerprint, accuracy, confusion matrix and losses are the native
  run's from site.json, and its badge says "bit-identical" (a screenshot of the finished page is kept:
  in $LOOM_TEST_ARTIFACTS when set, else in the test's tmp_path);
- a digit drawn with mouse input on the pad and classified shows a prediction with 10 probabilities,
  the same class and probabilities as Python's Session.classify of the same pixels;
- a Loom model file saved by Python and chosen through the file input shows Python's summary,
  fingerprint and held-out accuracy;
- the client leaves no Chromium process running when it closes.

Skipped, with the reason, where there is no Chromium (CI) or the Pyodide runtime cannot be downloaded.
"""
import json
import os
import re
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest

from loom import verify
from loom.nn import Network
from loom.nn.train import train as loom_train
from loom.web import app, cdp, runtime, serve, site

EPOCHS = 1
TIMEOUT_S = 300                     # Pyodide's start and an epoch of the convnet: seconds here, generous for CI
DONE, ERROR = "document.body.dataset.state === 'done'", "document.body.dataset.state === 'error'"
READY = "document.body.dataset.state === 'ready'"


@pytest.fixture(scope="module")
def chromium_exe():
    exe = cdp.find_chromium()
    if exe is None:
        pytest.skip(f"{cdp.not_found()}: the page is not run in a browser")
    return exe


@pytest.fixture(scope="module")
def site_url(chromium_exe, tmp_path_factory):
    """The built site (EPOCHS epochs), served on 127.0.0.1:<free port>; (url, site.json)."""
    try:
        runtime.runtime_dir()
    except runtime.Unavailable as exc:
        pytest.skip(f"the browser runtime is not available: {exc}")
    folder = site.build(tmp_path_factory.mktemp("site") / "site", epochs=EPOCHS, log=lambda *_: None)
    httpd = serve.server(folder, 0)
    thread = threading.Thread(target=httpd.serve_forever, name="loom-web-serve", daemon=True)
    thread.start()
    try:
        host, port = httpd.server_address[:2]
        yield f"http://{host}:{port}/", json.loads((folder / "site.json").read_text())
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser(chromium_exe):
    with cdp.Chromium(chromium_exe) as b:
        yield b


@pytest.fixture
def page(browser):
    tab = browser.new_page()
    yield tab
    tab.close()


def _artifacts(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("LOOM_TEST_ARTIFACTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _png_size(data: bytes) -> tuple[int, int]:
    """(width, height) of a PNG, after checking its signature, every chunk's CRC, that IHDR comes first
    and IEND last, and that the image data inflates to the size the header says (8-bit RGB or RGBA)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    pos, chunks, idat = 8, [], b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"bad CRC in the {kind!r} chunk"
        chunks.append(kind)
        if kind == b"IDAT":
            idat += body
        pos += 12 + length
    assert chunks[0] == b"IHDR" and chunks[-1] == b"IEND", chunks
    width, height, depth, color = struct.unpack(">IIBB", data[16:26])
    assert depth == 8 and color in (2, 6), (depth, color)
    assert len(zlib.decompress(idat)) == height * (1 + width * (3 if color == 2 else 4))
    return width, height


def _text(page: cdp.Page, element: str) -> str:
    return page.evaluate(f"document.getElementById({element!r}).textContent")


def _center(page: cdp.Page, element: str) -> tuple[float, float, dict]:
    box = page.evaluate(f"(() => {{ const e = document.getElementById({element!r}); e.scrollIntoView(); "
                        "const r = e.getBoundingClientRect(); return {x: r.x, y: r.y, w: r.width, h: r.height}; })()")
    return box["x"] + box["w"] / 2, box["y"] + box["h"] / 2, box


def _mouse(page: cdp.Page, kind: str, x: float, y: float, buttons: int = 1) -> None:
    page.send("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left", "buttons": buttons,
                                           "clickCount": 1})


def _click(page: cdp.Page, element: str) -> None:
    x, y, _ = _center(page, element)
    _mouse(page, "mousePressed", x, y)
    _mouse(page, "mouseReleased", x, y, buttons=0)


def _open_trained(page: cdp.Page, url: str, network: str) -> dict:
    page.navigate(f"{url}?auto=1&network={network}")
    page.wait_for(DONE, timeout=TIMEOUT_S, fail=ERROR)
    return page.evaluate("window.loomResult")


def test_trained_in_the_browser_is_bit_identical_to_native(site_url, page, tmp_path):
    url, manifest = site_url
    native = manifest["native"]["digits-convnet"]
    result = _open_trained(page, url, "digits-convnet")
    assert result["network"] == "digits-convnet" and result["epochs"] == EPOCHS == manifest["epochs"]
    assert result["fingerprint"] == result["native"] == native["fingerprint"]
    assert (result["accuracy"], result["correct"], result["total"]) == \
        (native["accuracy"], native["correct"], native["total"])
    assert result["losses"] == native["losses"]
    confusion = np.array(result["confusion"])
    assert confusion.shape == (10, 10) and confusion.sum() == result["total"]
    assert np.trace(confusion) == result["correct"]
    assert _text(page, "badge") == "bit-identical"
    assert _text(page, "fp-browser") == _text(page, "fp-native") == native["fingerprint"]
    assert _text(page, "accuracy") == f"{100 * native['accuracy']:.2f}% ({native['correct']} of {native['total']})"
    assert result["samples_per_s"] > 0 and 0 < result["pageLoad"]
    assert page.errors() == [], page.errors()
    shot = _artifacts(tmp_path) / "browser-page-trained.png"
    page.screenshot(shot)
    width, height = _png_size(shot.read_bytes())
    assert width >= 800 and height >= 600


def test_every_verify_check_in_the_browser_has_the_native_bits(site_url, page):
    """`loom verify`'s checks (every catalogue sample's forward, gradients and buffers, batch
    invariance, one step of every optimizer, the demo convnet trained 50 steps) computed in the page's
    worker give the native fingerprints."""
    from loom import verify
    url, _ = site_url
    page.navigate(url)
    page.wait_for("window.loomReady !== undefined", timeout=TIMEOUT_S, fail=ERROR)
    browser = page.evaluate("call('verify', {})", await_promise=True, timeout=TIMEOUT_S)
    native = verify.compute("cpu")
    assert len(native) > 250 and list(browser) == list(native)
    differ = [k for k in native if browser[k] != native[k]]
    assert not differ, f"{len(differ)} of {len(native)} checks differ in Chromium, e.g. {differ[:5]}"


def test_draw_and_classify(site_url, page):
    url, manifest = site_url
    _open_trained(page, url, "digits-mlp")
    # a "1": a vertical stroke down the middle of the pad, with mouse input (pointer events)
    x, _, box = _center(page, "pad")
    top, bottom = box["y"] + 0.15 * box["h"], box["y"] + 0.85 * box["h"]
    _mouse(page, "mousePressed", x, top)
    for i in range(1, 21):
        _mouse(page, "mouseMoved", x, top + (bottom - top) * i / 20)
    _mouse(page, "mouseReleased", x, bottom, buttons=0)
    pixels = page.evaluate("padPixels()")
    assert len(pixels) == 64 and max(pixels) > 0.3       # a stroke 22 px wide on the line between two 24 px cells
    grid = np.array(pixels).reshape(8, 8)
    assert grid[:, 3:5].sum() > 2 * (grid[:, :2].sum() + grid[:, 6:].sum()), "the stroke is not where it was drawn"
    _click(page, "classify")
    text = page.wait_for("document.getElementById('prediction').textContent", timeout=60, fail=ERROR)
    match = re.fullmatch(r"It is a (\d) \((\d+\.\d)%\)\. ((?:\d: \d+%\s*){10})", text)
    assert match, text
    shown = [int(v) for v in re.findall(r"\d: (\d+)%", match.group(3))]
    assert len(shown) == 10 and abs(sum(shown) - 100) <= 5, text
    # the same pixels through Python: the same network (trained natively, bit-identical) gives the same answer
    probabilities = page.evaluate("call('classify', {pixels: padPixels()})", await_promise=True)
    session = app.Session()
    session.train("digits-mlp", manifest["epochs"])
    expected = session.classify(pixels)
    assert probabilities == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert int(match.group(1)) == int(np.argmax(expected))
    assert match.group(2) == f"{100 * max(expected):.1f}"


def test_model_file_through_the_file_input(site_url, page, tmp_path):
    url, _ = site_url
    config = {"loom": 1, "name": "digits-small", "seed": 7, "input": {"shape": [64]},
              "layers": [{"type": "dense", "units": 24, "activation": "tanh"}, {"type": "dense", "units": 10}],
              "training": {"loss": "cross_entropy", "optimizer": {"type": "adam", "lr": 0.01}, "batch_size": 64}}
    session = app.Session()
    net = Network.from_config(config)
    loom_train(net, session.x.reshape(len(session.x), 64), session.y, epochs=1, verbose=False)
    path = tmp_path / "digits-small.loom"
    net.save(path)
    fingerprint = verify.combined(net.state_dict())
    native = session.load(path.read_bytes())
    assert native["fingerprint"] == fingerprint

    page.navigate(url)
    page.wait_for(READY, timeout=TIMEOUT_S, fail=ERROR)
    page.set_files("#file", [path])
    shown = page.wait_for("document.getElementById('summary').textContent", timeout=60, fail=ERROR)
    assert shown == f"{path.name}\nfingerprint {fingerprint}\n\n{net.summary()}"
    assert _text(page, "accuracy") == f"{100 * native['accuracy']:.2f}% ({native['correct']} of {native['total']})"
    cells = page.evaluate("[...document.querySelectorAll('#confusion td')].map((c) => Number(c.textContent))")
    assert cells == [v for row in native["confusion"] for v in row]
    assert page.evaluate("document.getElementById('classify').disabled") is False
    assert page.errors() == [], page.errors()


def _live_group_members(pgid: int) -> list[int]:
    """Processes of process group `pgid` that are not zombies (Linux /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return out


def test_chromium_closes_without_leaving_processes(chromium_exe):
    if not Path("/proc/self/stat").exists():
        pytest.skip("needs Linux's /proc to list the browser's processes")
    b = cdp.Chromium(chromium_exe)
    pgid = b.process.pid
    try:
        assert "Chrome" in b.product
        page = b.new_page()
        assert page.evaluate("6 * 7") == 42
        with pytest.raises(cdp.CDPError, match="threw"):
            page.evaluate("null.x")
        page.evaluate("console.error('on purpose')")
        with pytest.raises(cdp.PageError, match="on purpose"):
            page.wait_for("false", timeout=0.5)
        assert len(_live_group_members(pgid)) > 1          # the browser and its helpers
    finally:
        b.close()
    assert b.process.returncode is not None
    assert _live_group_members(pgid) == []
    b.close()                                               # a second close does nothing

"""`loom web build` and `loom web serve` without a browser: the site's files, the wheel, the server's
MIME types and loopback address, and the commands' errors (one line, exit 3; usage exit 2)."""
import json
import threading
import urllib.error
import urllib.request
import zipfile

import pytest
from cli_run import loom

from loom.errors import ConfigError
from loom.web import runtime, serve, wheel


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    from loom.web.site import build
    try:
        return build(tmp_path_factory.mktemp("web") / "site", epochs=1, log=lambda *_: None)
    except runtime.Unavailable as exc:
        pytest.skip(str(exc))


def test_the_site_holds_the_page_the_runtime_the_wheel_and_the_native_runs(site):
    manifest = json.loads((site / "site.json").read_text())
    names = {p.name for p in site.iterdir()}
    assert {"index.html", "app.js", "worker.js", "style.css", "site.json", manifest["wheel"]} <= names
    assert set(runtime.FILES) - {"pyodide.mjs"} <= names
    assert manifest["epochs"] == 1 and manifest["pyodide"] == runtime.VERSION
    for name in manifest["networks"]:
        run = manifest["native"][name]
        assert len(run["fingerprint"]) == 64 and 0 < run["accuracy"] <= 1 and len(run["losses"]) == 1
    assert "cdn" not in (site / "worker.js").read_text().lower() and "http" not in (site / "worker.js").read_text()


def test_the_wheel_is_the_package_without_caches():
    data = wheel.build()
    assert data == wheel.build()                       # deterministic bytes
    import io
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        names = z.namelist()
        assert "loom/__init__.py" in names and "loom/datasets/digits.npz" in names
        assert "loom/web/page/index.html" in names and "loom/cli/digits-convnet.json" in names
        assert not [n for n in names if "__pycache__" in n or n.endswith((".pyc", ".nbi", ".nbc"))]
        info = [n for n in names if n.endswith(".dist-info/RECORD")]
        assert len(info) == 1 and z.read(info[0]).decode().count("\n") == len(names)


def test_the_server_serves_the_site_on_loopback_with_the_wasm_type(site):
    httpd = serve.server(site, 0)
    host, port = httpd.server_address[:2]
    assert host == "127.0.0.1"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/pyodide.asm.wasm") as r:
            assert r.headers["Content-Type"] == "application/wasm" and r.read(4) == b"\0asm"
        with urllib.request.urlopen(f"http://{host}:{port}/site.json") as r:
            assert json.loads(r.read())["epochs"] == 1
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_serving_a_folder_that_is_not_a_site_or_a_bad_port_is_an_error(site, tmp_path):
    with pytest.raises(ConfigError, match="not a site built by"):
        serve.server(tmp_path, 0)
    with pytest.raises(ConfigError, match="--port"):
        serve.server(site, 70000)


def test_the_commands_errors(capsys, tmp_path):
    code, _, err = loom(capsys, "web", "build", tmp_path / "s", "--epochs", "0")
    assert code == 3 and err.count("\n") == 1 and "--epochs" in err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = loom(capsys, "web", "build", blocker)
    assert code == 3 and err.count("\n") == 1 and "not a folder" in err
    code, _, err = loom(capsys, "web", "serve", tmp_path)
    assert code == 3 and "not a site built by" in err
    assert loom(capsys, "web")[0] == 2
    assert loom(capsys, "web", "serve", tmp_path, "--port", "x")[0] == 2


def test_the_server_stays_inside_the_site_and_a_busy_port_is_an_error(site, tmp_path):
    outside = tmp_path / "secret.txt"
    outside.write_text("not for the browser")
    link = site / "link.txt"
    link.symlink_to(outside)
    httpd = serve.server(site, 0)
    host, port = httpd.server_address[:2]
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"http://{host}:{port}/link.txt")
        assert err.value.code == 404
        with pytest.raises(ConfigError, match=f"cannot serve on 127.0.0.1:{port}"):
            serve.server(site, port)
    finally:
        httpd.shutdown()
        httpd.server_close()
        link.unlink()


def test_building_over_a_folder_of_other_files_is_refused_and_a_failed_build_changes_nothing(tmp_path, monkeypatch):
    from loom.web import site as web_site
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "index.html").write_text("my page")
    with pytest.raises(ConfigError, match="other files in it"):
        web_site.build(mine, epochs=1, log=lambda *_: None)
    assert (mine / "index.html").read_text() == "my page"
    built = tmp_path / "site"
    (built).mkdir()
    (built / "site.json").write_text('{"old": true}')
    monkeypatch.setattr(web_site.app.Session, "train", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        web_site.build(built, epochs=1, log=lambda *_: None)
    assert [p.name for p in built.iterdir()] == ["site.json"] and json.loads((built / "site.json").read_text()) == {"old": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "site"]      # no staging folder left

"""Loom in the browser against Loom native: training throughput and page load, on this machine, in one run.

The site `loom web build` writes (built here into a temporary folder for --epochs epochs, served on a
free loopback port by loom.web.serve) is opened with ?auto=1 in headless Chromium (driven over the
DevTools pipe by loom.web.cdp; a fresh browser and profile each round, so every page load is a first
visit). The page trains the network (default digits-convnet: loom/cli/digits-convnet.json on the
bundled digits, 1438 training samples, deterministic mode) under Pyodide 0.27.7 in a Web Worker and
reports its own measurement: window.loomResult.samples_per_s (training samples x epochs over the time
Session.train took, the held-out evaluation excluded). Natively the same code (loom.web.app's
Session().train, same network and epochs) runs in this process, twice a round: on the NumPy path alone
(LOOM_JIT=0, the code Pyodide runs: no numba there) and as installed (numba's compiled loops, when the
`cpu` extra is installed), after an untimed warm-up. Page load is navigation start to the end of the
first trained epoch (window.loomFirstEpoch, performance.now() on the page): fetching and compiling the
runtime, loading NumPy and the Loom wheel, building the network, one epoch. Every run's fingerprint
must equal the native one. The goal: in-browser training within 4x of native (NumPy path).
Threads: OMP/OPENBLAS/MKL_NUM_THREADS default to 2 (the other CPU benchmarks' setting); Pyodide has one.
Run:
    .venv/bin/python benchmarks/browser.py [--epochs 2] [--rounds 3] [--network digits-convnet] [--json FILE]
Needs Chromium (or Chrome; $LOOM_CHROMIUM names it) and the Pyodide runtime (downloaded into the
cache by `loom web build` on first use).
"""
import os

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")
os.environ.setdefault("MKL_NUM_THREADS", "2")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from loom.backend.cpu import jit  # noqa: E402
from loom.errors import BackendError  # noqa: E402
from loom.web import app, cdp, runtime, serve, site  # noqa: E402

GOAL = 4.0
DONE, ERROR = "document.body.dataset.state === 'done'", "document.body.dataset.state === 'error'"


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = f", load average {os.getloadavg()[0]:.2f} before the run" if hasattr(os, "getloadavg") else ""
    return f"{platform.machine()}, {model}, {os.cpu_count()} cores, {platform.system()} {platform.release()}{load}"


def native_round(session: app.Session, network: str, epochs: int, use_jit: bool) -> dict:
    before = os.environ.get("LOOM_JIT")
    os.environ["LOOM_JIT"] = "1" if use_jit else "0"
    try:
        r = session.train(network, epochs)
    finally:
        if before is None:
            del os.environ["LOOM_JIT"]
        else:
            os.environ["LOOM_JIT"] = before
    return {"samples_per_s": r["samples_per_s"], "seconds": r["seconds"], "fingerprint": r["fingerprint"]}


def browser_round(exe: str, url: str, network: str, epochs: int, timeout: float) -> dict:
    with cdp.Chromium(exe) as browser:
        page = browser.new_page()
        page.navigate(f"{url}?auto=1&network={network}&epochs={epochs}")
        page.wait_for(DONE, timeout=timeout, interval=0.05, fail=ERROR)
        r = page.evaluate("window.loomResult")
        ready = page.evaluate("window.loomReady")
        return {"samples_per_s": r["samples_per_s"], "seconds": r["seconds"], "fingerprint": r["fingerprint"],
                "first_epoch_s": r["pageLoad"] / 1000, "ready_s": ready["seconds"], "browser": browser.product,
                "pyodide_numpy": ready["numpy"]}


def chromium_and_runtime() -> str | None:
    """The Chromium executable, with the Pyodide runtime in the cache; None (and why, on stderr) if
    either is missing."""
    exe = cdp.find_chromium()
    if exe is None:
        print(cdp.not_found(), file=sys.stderr)
        return None
    try:
        runtime.runtime_dir()
    except BackendError as exc:
        print(f"the browser runtime is not available: {exc}", file=sys.stderr)
        return None
    return exe


def summary(values: list[float]) -> dict:
    return {"best": max(values), "median": statistics.median(values), "all": values}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--network", default="digits-convnet", choices=list(app.networks()))
    ap.add_argument("--timeout", type=float, default=600, help="seconds a page may take to train (default 600)")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = ap.parse_args()
    if args.epochs < 1 or args.rounds < 1:
        ap.error("--epochs and --rounds are positive")
    where = machine()                   # the load average before this run adds its own
    exe = chromium_and_runtime()
    if exe is None:
        return 2

    with tempfile.TemporaryDirectory(prefix="loom-browser-bench-") as tmp:
        folder = site.build(Path(tmp) / "site", epochs=args.epochs, log=lambda *_: None)
        reference = json.loads((folder / "site.json").read_text())["native"][args.network]["fingerprint"]
        httpd = serve.server(folder, 0)
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        url = "http://{}:{}/".format(*httpd.server_address[:2])
        session = app.Session()
        has_jit = jit.available()
        native_round(session, args.network, 1, True)               # warm-up: numba's compiles, caches
        rows: dict[str, list[dict]] = {"browser": [], "numpy": [], "jit": []}
        try:
            for i in range(args.rounds):
                rows["numpy"].append(native_round(session, args.network, args.epochs, False))
                if has_jit:
                    rows["jit"].append(native_round(session, args.network, args.epochs, True))
                rows["browser"].append(browser_round(exe, url, args.network, args.epochs, args.timeout))
                b, n = rows["browser"][-1], rows["numpy"][-1]
                print(f"round {i + 1}: browser {b['samples_per_s']:.0f} samples/s (first epoch at "
                      f"{b['first_epoch_s']:.2f} s), native NumPy {n['samples_per_s']:.0f}"
                      + (f", native numba {rows['jit'][-1]['samples_per_s']:.0f}" if has_jit else ""), flush=True)
        finally:
            httpd.shutdown()
            httpd.server_close()

    same = all(r["fingerprint"] == reference for rs in rows.values() for r in rs)
    speed = {k: summary([r["samples_per_s"] for r in rs]) for k, rs in rows.items() if rs}
    first = summary([r["first_epoch_s"] for r in rows["browser"]])
    ready = summary([r["ready_s"] for r in rows["browser"]])
    ratio_numpy = speed["numpy"]["median"] / speed["browser"]["median"]
    ratio_jit = speed["jit"]["median"] / speed["browser"]["median"] if has_jit else None
    b0 = rows["browser"][0]
    print()
    print(f"machine:  {where}")
    print(f"native:   CPython {platform.python_version()}, NumPy {np.__version__}, "
          f"numba {'on' if has_jit else 'off (' + str(jit.unavailable_reason()) + ')'}, "
          f"OPENBLAS_NUM_THREADS={os.environ['OPENBLAS_NUM_THREADS']}")
    print(f"browser:  {b0['browser']} headless ({exe}), Pyodide {runtime.VERSION}, NumPy {b0['pyodide_numpy']}")
    print(f"work:     {args.network}, {args.epochs} epochs x {len(session.x)} samples, deterministic mode, "
          f"{args.rounds} rounds (fresh browser each)")
    print()
    print(f"{'training samples/s':<40} {'median':>9} {'best':>9}   {'native/browser: median':>22} {'best':>6}")
    labels = {"browser": "browser (Pyodide, WebAssembly)", "numpy": "native, NumPy path (LOOM_JIT=0)",
              "jit": "native, as installed (numba)"}
    for key, label in labels.items():
        if key in speed:
            ratio = "" if key == "browser" else (f"{speed[key]['median'] / speed['browser']['median']:.2f}x "
                                                 f"{speed[key]['best'] / speed['browser']['best']:>5.2f}x")
            print(f"{label:<40} {speed[key]['median']:>9.0f} {speed[key]['best']:>9.0f}   {ratio:>29}")
    print()
    print(f"page load to first trained epoch: median {first['median']:.2f} s, best {min(first['all']):.2f} s "
          f"(of which Pyodide + NumPy + Loom ready: median {ready['median']:.2f} s)")
    print(f"goal (browser within {GOAL:g}x of native, NumPy path): {ratio_numpy:.2f}x, "
          f"{'met' if ratio_numpy <= GOAL else 'NOT met'}"
          + (f"; against numba's loops {ratio_jit:.2f}x" if ratio_jit is not None else ""))
    print(f"fingerprints: every run {'equals' if same else 'DOES NOT equal'} the native reference {reference[:16]}…")
    if args.json:
        out = {"benchmark": "browser", "machine": where, "python": platform.python_version(),
               "numpy": np.__version__, "numba": has_jit, "browser": b0["browser"], "pyodide": runtime.VERSION,
               "network": args.network, "epochs": args.epochs, "rounds": args.rounds, "samples": len(session.x),
               "samples_per_s": speed, "first_epoch_s": first, "ready_s": ready,
               "ratio_numpy": ratio_numpy, "ratio_jit": ratio_jit, "goal": GOAL, "met": ratio_numpy <= GOAL,
               "bit_identical": same, "reference": reference, "runs": rows}
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())

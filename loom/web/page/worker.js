// Loom under Pyodide, off the page's thread: loads the runtime, NumPy and the Loom wheel from this
// site (nothing from elsewhere), then runs loom.web.app's Session for the page's messages.
importScripts("pyodide.js");

let session = null;
let pyodide = null;

function plain(value, owned = true) {
    // a Python value as plain JS (dicts to objects, lists to arrays); an owned proxy (a call's
    // result) is released, a borrowed one (a callback's argument) is Pyodide's to release
    if (value && typeof value.toJs === "function") {
        const out = value.toJs({dict_converter: Object.fromEntries});
        if (owned) value.destroy();
        return out;
    }
    return value;
}

async function start() {
    const t0 = performance.now();
    const site = await (await fetch("site.json")).json();
    const py = await loadPyodide({indexURL: "./"});
    pyodide = py;
    await py.loadPackage("numpy");
    py.unpackArchive(await (await fetch(site.wheel)).arrayBuffer(), "wheel");
    py.runPython("import loom, loom.web.app as web_app; session = web_app.Session()");
    session = py.globals.get("session");
    const version = py.runPython("loom.__version__");
    postMessage({type: "ready", version, seconds: (performance.now() - t0) / 1000,
                 numpy: py.runPython("import numpy; numpy.__version__")});
}

const ready = start().catch((err) => postMessage({type: "error", message: String(err)}));

onmessage = async (event) => {
    await ready;
    const {id, cmd, args} = event.data;
    try {
        let result;
        if (cmd === "train") {
            const progress = (info) => postMessage({type: "epoch", id, info: plain(info, false)});
            result = session.train(args.network, args.epochs, progress);
        } else if (cmd === "classify") {
            const pixels = pyodide.toPy(args.pixels);
            try { result = session.classify(pixels); } finally { pixels.destroy(); }
        } else if (cmd === "load") {
            result = session.load(new Uint8Array(args.bytes));
        } else if (cmd === "verify") {     // every `loom verify` check's fingerprint, computed here
            result = JSON.parse(pyodide.runPython("import json; from loom import verify; json.dumps(verify.compute('cpu'))"));
        } else {
            throw new Error(`unknown command ${cmd}`);
        }
        postMessage({type: "result", id, result: plain(result)});
    } catch (err) {
        // a Python error's message is its whole traceback: the page shows its last line
        const lines = String(err.message || err).trim().split("\n");
        postMessage({type: "result", id, error: lines[lines.length - 1]});
    }
};

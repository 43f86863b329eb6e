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

// the language model panel: the model file goes into Pyodide's file system, the chat template's
// packages (jinja2, markupsafe) into its site-packages, once
let languageModel = null, chatPackages = false;
async function fetched(url) {
    const response = await fetch(url);
    if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
    return response;
}

async function loadLanguageModel(bytes, name) {
    // the previous model goes first: two in memory at once may not fit
    if (languageModel) { languageModel.destroy(); languageModel = null; pyodide.runPython("import gc; gc.collect()"); }
    const site = await (await fetched("site.json")).json();
    if (!chatPackages && site.llm) {
        const purelib = pyodide.runPython("import sysconfig; sysconfig.get_paths()['purelib']");
        pyodide.unpackArchive(await (await fetched(site.llm.packages)).arrayBuffer(), "zip", {extractDir: purelib});
        chatPackages = true;
    }
    if (bytes === null) {
        if (!site.llm) throw new Error("this site was built without a language model: pick a GGUF file");
        bytes = await (await fetched(site.llm.file)).arrayBuffer();
    }
    const path = "/tmp/model.gguf";
    pyodide.FS.writeFile(path, new Uint8Array(bytes));
    bytes = null;
    try {
        pyodide.runPython("import loom.web.llm as web_llm");
        pyodide.globals.set("model_name", String(name));
        languageModel = pyodide.runPython(`web_llm.LanguageModel('${path}', name=model_name)`);
    } finally {
        pyodide.FS.unlink(path);     // the weights are loaded (dequantized copies): the file's copy can go
    }
    return languageModel.info;
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
        } else if (cmd === "llm_load") {    // a GGUF: the site's (args.bytes null) or one picked from disk
            result = await loadLanguageModel(args.bytes, args.name);
        } else if (cmd === "generate") {
            const piece = (text) => postMessage({type: "piece", id, text});
            result = languageModel.generate(args.prompt, args.max_tokens, args.deterministic, args.chat, piece);
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

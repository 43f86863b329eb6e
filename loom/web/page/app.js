// The page: talks to worker.js (Loom under Pyodide) and draws what it says.
const $ = (id) => document.getElementById(id);
const worker = new Worker("worker.js");
const pending = new Map();
let nextId = 0, site = null, onEpoch = null, onPiece = null, siteReady = null;

function call(cmd, args, transfer = []) {
    const id = nextId++;
    worker.postMessage({id, cmd, args}, transfer);      // transferred buffers move, not copied
    return new Promise((resolve, reject) => pending.set(id, {resolve, reject}));
}

function failed(message) {
    $("status").textContent = window.loomReady ? `Loom failed: ${message}` : `Loom could not start: ${message}`;
    document.body.dataset.state = "error";
}

// an error the worker did not catch (its script or pyodide.js missing, say): without this the page
// would say "Loading" for ever
worker.onerror = (event) => { event.preventDefault(); failed(event.message || "the worker failed to load"); };

worker.onmessage = async (event) => {
    const m = event.data;
    if (m.type === "ready") {
        try { await siteReady; } catch { return; }     // main() said why
        $("status").textContent = `Loom ${m.version} on Pyodide ${site.pyodide} (NumPy ${m.numpy}) ready in ` +
            `${m.seconds.toFixed(1)} s. Everything runs in this tab; nothing is sent anywhere.`;
        busy(false);
        document.body.dataset.state = "ready";
        window.loomReady = m;
        const params = new URLSearchParams(location.search);
        if (params.get("auto")) train();
        else if (params.get("llm") && site.llm) loadSiteModel().then(() => { if (llmLoaded) generate(); });
    } else if (m.type === "error") {
        failed(m.message);
    } else if (m.type === "epoch") {
        if (onEpoch) onEpoch(m.info);
    } else if (m.type === "piece") {
        if (onPiece) onPiece(m.text);
    } else if (m.type === "result") {
        const p = pending.get(m.id);
        pending.delete(m.id);
        if (m.error) p.reject(new Error(m.error)); else p.resolve(m.result);
    }
};

function drawLoss(losses, epochs) {
    const c = $("loss"), g = c.getContext("2d");
    g.clearRect(0, 0, c.width, c.height);
    g.strokeStyle = "#999"; g.strokeRect(30, 10, c.width - 40, c.height - 30);
    g.fillStyle = "#555"; g.font = "11px sans-serif";
    g.fillText("loss", 2, 14); g.fillText("epoch", c.width - 40, c.height - 4);
    if (!losses.length) return;
    const top = Math.max(...losses), x0 = 30, w = c.width - 40, h = c.height - 30;
    g.fillText(top.toFixed(2), 2, 24);
    g.strokeStyle = "#1565c0"; g.lineWidth = 2; g.beginPath();
    losses.forEach((v, i) => {
        const x = x0 + (epochs > 1 ? i / (epochs - 1) : 0.5) * w, y = 10 + h - (v / top) * h;
        if (i) g.lineTo(x, y); else g.moveTo(x, y);
        g.fillRect(x - 2, y - 2, 4, 4);
    });
    g.stroke();
}

function showConfusion(matrix) {
    const t = $("confusion");
    t.innerHTML = "<tr><th>true \\ predicted</th>" + matrix.map((_, j) => `<th>${j}</th>`).join("") + "</tr>" +
        matrix.map((row, i) => `<tr><th>${i}</th>` +
            row.map((v, j) => `<td class="${i === j ? "hit" : ""}">${v}</td>`).join("") + "</tr>").join("");
}

function showResult(r) {
    $("accuracy").textContent = `${(100 * r.accuracy).toFixed(2)}% (${r.correct} of ${r.total})`;
    showConfusion(r.confusion);
}

function clearResults() {
    $("accuracy").textContent = "–";
    $("confusion").innerHTML = "";
    $("fp-browser").textContent = $("fp-native").textContent = "–";
    $("badge").textContent = "not run yet";
    $("badge").className = "badge";
}

// while the worker trains or loads, the other requests would queue behind it and then run against
// whichever network is current: the controls wait instead
let canClassify = false, llmLoaded = false;
function busy(on) {
    $("go").disabled = on;
    $("file").disabled = on;
    $("classify").disabled = on || !canClassify;
    $("llm-site").disabled = $("llm-file").disabled = on;
    $("llm-go").disabled = on || !llmLoaded;
}

async function train() {
    const network = $("network").value, raw = $("epochs").value.trim(), epochs = Number(raw);
    if (!/^[0-9]+$/.test(raw) || epochs < 1 || epochs > site.max_epochs) {
        $("speed").textContent = `epochs is a whole number from 1 to ${site.max_epochs}, got "${raw}"`;
        return;
    }
    const losses = [];
    busy(true);
    document.body.dataset.state = "training";
    $("progress").value = 0;
    drawLoss(losses, epochs);
    onEpoch = (info) => {
        losses.push(info.loss);
        $("progress").value = info.epoch / info.epochs;
        $("speed").textContent = `epoch ${info.epoch} of ${info.epochs}: loss ${info.loss.toFixed(4)}, ` +
            `${info.seconds.toFixed(1)} s`;
        drawLoss(losses, epochs);
        if (window.loomFirstEpoch === undefined) window.loomFirstEpoch = performance.now();   // page load -> first epoch
    };
    try {
        const r = await call("train", {network, epochs});
        showResult(r);
        $("speed").textContent = `${epochs} epoch${epochs === 1 ? "" : "s"} in ${r.seconds.toFixed(1)} s: ${r.samples_per_s.toFixed(0)} samples/s`;
        const native = site.native[network];
        $("fp-browser").textContent = r.fingerprint;
        const badge = $("badge");
        if (native && epochs === site.epochs) {
            $("fp-native").textContent = native.fingerprint;
            const same = native.fingerprint === r.fingerprint;
            badge.textContent = same ? "bit-identical" : "differs";
            badge.className = "badge " + (same ? "same" : "differs");
        } else {
            $("fp-native").textContent = `none for ${epochs} epochs (the site was built for ${site.epochs})`;
            badge.textContent = "no native reference";
            badge.className = "badge";
        }
        canClassify = true;
        window.loomResult = {...r, native: native ? native.fingerprint : null, pageLoad: window.loomFirstEpoch};
        document.body.dataset.state = "done";
    } catch (err) {
        $("speed").textContent = `training failed: ${err.message}`;
        document.body.dataset.state = "error";
    } finally {
        busy(false);
    }
}

// the drawing pad: white strokes on black. padPixels() reads it as the training images are: the ink's
// bounding box scaled to fill the 8 rows (or the 8 columns, if wider), centred, as 8x8 averages in
// [0, 1] (the digits' pixels / 16)
const pad = $("pad"), pen = pad.getContext("2d");
function clearPad() { pen.fillStyle = "#000"; pen.fillRect(0, 0, pad.width, pad.height); $("prediction").textContent = ""; }
let last = null;
function point(e) {
    // client coordinates to the canvas's pixels: past its border, scaled if CSS sizes it otherwise
    const r = pad.getBoundingClientRect();
    return [(e.clientX - r.left - pad.clientLeft) * pad.width / pad.clientWidth,
            (e.clientY - r.top - pad.clientTop) * pad.height / pad.clientHeight];
}
function stroke(e) {
    if (!last) return;
    const p = point(e);
    pen.strokeStyle = "#fff"; pen.lineWidth = 22; pen.lineCap = pen.lineJoin = "round";
    pen.beginPath(); pen.moveTo(...last); pen.lineTo(...p); pen.stroke();
    last = p;
}
pad.addEventListener("pointerdown", (e) => { last = point(e); stroke(e); });
pad.addEventListener("pointermove", stroke);
for (const end of ["pointerup", "pointercancel"]) window.addEventListener(end, () => { last = null; });

function padPixels() {
    const w = pad.width, h = pad.height, data = pen.getImageData(0, 0, w, h).data;
    let x0 = w, y0 = h, x1 = -1, y1 = -1;
    for (let y = 0; y < h; ++y) for (let x = 0; x < w; ++x)
        if (data[(y * w + x) * 4] > 0) { x0 = Math.min(x0, x); x1 = Math.max(x1, x); y0 = Math.min(y0, y); y1 = Math.max(y1, y); }
    if (x1 < 0) return new Array(64).fill(0);
    const side = 64, bw = x1 - x0 + 1, bh = y1 - y0 + 1, scale = side / Math.max(bw, bh);
    const box = document.createElement("canvas");
    box.width = box.height = side;
    const g = box.getContext("2d");
    g.fillStyle = "#000"; g.fillRect(0, 0, side, side);
    g.drawImage(pad, x0, y0, bw, bh, (side - bw * scale) / 2, (side - bh * scale) / 2, bw * scale, bh * scale);
    const small = g.getImageData(0, 0, side, side).data, cell = side / 8, out = [];
    for (let r = 0; r < 8; ++r) for (let c = 0; c < 8; ++c) {
        let sum = 0;
        for (let y = r * cell; y < (r + 1) * cell; ++y) for (let x = c * cell; x < (c + 1) * cell; ++x)
            sum += small[(y * side + x) * 4];
        out.push(sum / (cell * cell * 255));
    }
    return out;
}

async function classify() {
    try {
        const p = await call("classify", {pixels: padPixels()});
        const best = p.indexOf(Math.max(...p));
        $("prediction").textContent = `It is a ${best} (${(100 * p[best]).toFixed(1)}%). ` +
            p.map((v, i) => `${i}: ${(100 * v).toFixed(0)}%`).join("  ");
    } catch (err) { $("prediction").textContent = err.message; }
}

async function loadModel(file) {
    busy(true);
    try {
        const r = await call("load", {bytes: await file.arrayBuffer()});
        $("summary").textContent = `${file.name}\nfingerprint ${r.fingerprint}\n\n${r.summary}`;
        clearResults();                       // the results on screen were the previous network's
        canClassify = r.accuracy !== undefined;
        if (canClassify) showResult(r);
    } catch (err) {
        $("summary").textContent = `${file.name}: ${err.message}`;
    } finally {
        busy(false);
    }
}

// the language model panel
function resetBadge(text) {
    $("llm-badge").textContent = text;
    $("llm-badge").className = "badge";
    window.loomLLM = undefined;
}

async function loadLanguageModel(file) {
    busy(true);
    resetBadge("not run yet");
    $("llm-out").textContent = $("llm-speed").textContent = "";
    llmLoaded = false;                        // the worker drops the previous model first
    $("llm-info").textContent = file ? `Loading ${file.name}…` : `Loading ${site.llm.name} (${(site.llm.bytes / 1e6).toFixed(0)} MB)…`;
    try {
        const t0 = performance.now();
        const bytes = file ? await file.arrayBuffer() : null;
        const info = await call("llm_load", {bytes, name: file ? file.name : site.llm.name}, bytes ? [bytes] : []);
        llmLoaded = true;
        $("llm-info").textContent = `${info.name}: ${info.arch}, ${info.layers} layers, hidden ${info.hidden}, ` +
            `vocabulary ${info.vocab}${info.chat ? ", chat template" : ""}; loaded in ` +
            `${((performance.now() - t0) / 1000).toFixed(1)} s`;
    } catch (err) {
        $("llm-info").textContent = `could not load the model: ${err.message}`;
    } finally {
        busy(false);
    }
}

async function generate() {
    const raw = $("llm-max").value.trim(), maxTokens = Number(raw);
    if (!/^[0-9]+$/.test(raw) || maxTokens < 1 || maxTokens > 512) {
        $("llm-speed").textContent = `max tokens is a whole number from 1 to 512, got "${raw}"`;
        return;
    }
    const args = {prompt: $("llm-prompt").value, max_tokens: maxTokens, deterministic: $("llm-mode").value === "det",
                  chat: $("llm-chat").checked};
    busy(true);
    document.body.dataset.llm = "generating";
    resetBadge("not run yet");
    $("llm-out").textContent = "";
    $("llm-speed").textContent = "prefill…";
    let pieces = 0;
    onPiece = (text) => { $("llm-out").textContent += text; $("llm-speed").textContent = `${++pieces} pieces…`; };
    try {
        const r = await call("generate", args);
        const fixed = (v) => (v === null ? "–" : v.toFixed(2));
        $("llm-speed").textContent = `${r.tokens} tokens (prompt ${r.prompt_tokens}): first after ` +
            `${fixed(r.first_token_s)} s, then ${fixed(r.tokens_per_s)} tokens/s, ` +
            `${r.deterministic ? "deterministic" : "fast"} mode`;
        const native = site.llm ? site.llm.native : null;
        const badge = $("llm-badge");
        const comparable = native && llmLoadedFromSite && args.prompt === native.prompt && args.chat &&
            args.max_tokens === native.max_tokens && args.deterministic;
        if (comparable) {
            const same = r.fingerprint === native.fingerprint && r.ids.join() === native.ids.join();
            badge.textContent = same ? "same tokens and logits bits as native" : "differs from native";
            badge.className = "badge " + (same ? "same" : "differs");
        } else {
            resetBadge("no native reference for these settings");
        }
        window.loomLLM = {...r, native};
        document.body.dataset.llm = "done";
    } catch (err) {
        $("llm-speed").textContent = `generation failed: ${err.message}`;
        document.body.dataset.llm = "error";
    } finally {
        onPiece = null;
        busy(false);
    }
}
let llmLoadedFromSite = false;
async function loadSiteModel() {
    await loadLanguageModel(null);
    llmLoadedFromSite = llmLoaded;
}

async function main() {
    clearPad();
    const response = await fetch("site.json");
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    site = await response.json();
    for (const name of site.networks) $("network").add(new Option(name, name));
    const params = new URLSearchParams(location.search);
    $("epochs").value = params.get("epochs") || site.epochs;
    if (params.get("network")) $("network").value = params.get("network");
    drawLoss([], 1);
    $("go").onclick = train;
    $("clear").onclick = clearPad;
    $("classify").onclick = classify;
    if (site.llm) {
        $("llm-site").hidden = false;
        $("llm-site").textContent = `Load ${site.llm.name} (${(site.llm.bytes / 1e6).toFixed(0)} MB)`;
        $("llm-prompt").value = site.llm.native.prompt;
        $("llm-max").value = site.llm.native.max_tokens;
    }
    if (params.get("mode") === "fast") $("llm-mode").value = "fast";
    $("llm-site").onclick = loadSiteModel;
    $("llm-file").onchange = async (e) => {
        const file = e.target.files[0];
        if (file) { llmLoadedFromSite = false; await loadLanguageModel(file); e.target.value = ""; }
    };
    $("llm-go").onclick = generate;
    $("file").onchange = async (e) => {
        const file = e.target.files[0];
        if (file) { await loadModel(file); e.target.value = ""; }
    };
}
siteReady = main();
siteReady.catch((err) => failed(`site.json: ${err.message}`));

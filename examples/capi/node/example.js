// Loom from Node.js through its C ABI (loom.h, docs/capi.md) with koffi: build a small network from
// JSON, run a forward pass, print the outputs and the SHA-256 fingerprint of the weights.
//
//   loom capi build --out /path/to/loom-capi
//   npm install --no-audit --no-fund
//   LOOM_CAPI_DIR=/path/to/loom-capi node example.js
//
// In deterministic mode (the default) the numbers printed equal what the same calls give in Python
// (tests/capi/test_capi_examples.py checks them).
'use strict';

const path = require('path');
const koffi = require('koffi');

const dir = process.env.LOOM_CAPI_DIR;
if (!dir) {
    console.error('set LOOM_CAPI_DIR to the folder of libloom.so (loom capi build --out DIR)');
    process.exit(2);
}
const lib = koffi.load(path.join(dir, 'libloom.so'));

koffi.opaque('loom_network');
const LOOM_OK = 0;
const api = {
    version: lib.func('const char* loom_version(void)'),
    lastError: lib.func('const char* loom_last_error(void)'),
    free: lib.func('void loom_free(void* p)'),
    liveHandles: lib.func('int loom_live_handles(_Out_ size_t* count)'),
    fromJson: lib.func('int loom_network_from_json(const char* json, _Out_ loom_network** out)'),
    networkFree: lib.func('int loom_network_free(loom_network* net)'),
    outputShape: lib.func('int loom_network_output_shape(loom_network* net, _Out_ int64_t* dims, int capacity, _Out_ int* ndim)'),
    summary: lib.func('int loom_network_summary(loom_network* net, _Out_ void** text)'),
    fingerprint: lib.func('int loom_network_fingerprint(loom_network* net, void* hex65)'),
    forward: lib.func('int loom_forward(loom_network* net, const float* input, const int64_t* shape, int ndim, ' +
                      '_Out_ float* output, size_t output_capacity)'),
};

/** Throw the calling thread's loom_last_error() when a call failed. */
function check(status) {
    if (status !== LOOM_OK) {
        const err = new Error(api.lastError());
        err.code = status;
        throw err;
    }
}

/** A string the library allocated (a char* out-parameter): copied, then released with loom_free. */
function takeString(ptr) {
    try {
        return koffi.decode(ptr, 'char', -1);
    } finally {
        api.free(ptr);
    }
}

/** A loom_network handle; call free() when done (the library cannot see JavaScript's garbage collector). */
class Network {
    static fromJson(json) {
        const out = [null];
        check(api.fromJson(JSON.stringify(json), out));
        return new Network(out[0]);
    }

    constructor(handle) { this.handle = handle; }

    outputShape() {
        const dims = new BigInt64Array(8);
        const ndim = [0];
        check(api.outputShape(this.handle, dims, dims.length, ndim));
        return Array.from(dims.slice(0, ndim[0]), Number);
    }

    summary() {
        const out = [null];
        check(api.summary(this.handle, out));
        return takeString(out[0]);
    }

    fingerprint() {
        const hex = Buffer.alloc(65);          // used in place: 64 hex digits and a NUL
        check(api.fingerprint(this.handle, hex));
        return hex.toString('latin1', 0, 64);
    }

    /** Outputs for rows (an array of input samples), one array per sample. */
    forward(rows) {
        const batch = rows.length;
        const input = Float32Array.from(rows.flat());
        const shape = [batch, input.length / batch];
        const perSample = this.outputShape().reduce((a, b) => a * b, 1);
        const output = new Float32Array(batch * perSample);
        check(api.forward(this.handle, input, shape, shape.length, output, output.length));
        return Array.from({length: batch}, (_, i) => Array.from(output.subarray(i * perSample, (i + 1) * perSample)));
    }

    free() {
        if (this.handle !== null) {
            check(api.networkFree(this.handle));
            this.handle = null;
        }
    }
}

const config = {
    loom: 1, name: 'node-demo', seed: 7, input: {shape: [3]},
    layers: [{type: 'dense', units: 4, activation: 'tanh'}, {type: 'dense', units: 2}, {type: 'softmax'}],
};

console.log(`loom ${api.version()}`);
const net = Network.fromJson(config);
try {
    console.log(net.summary());
    console.log(`output shape [${net.outputShape().join(', ')}]`);
    const outputs = net.forward([[0.5, -1, 2], [0, 0.25, -0.75]]);
    outputs.forEach((row, i) => console.log(`output ${i} ${row.map((v) => v.toPrecision(9)).join(' ')}`));
    console.log(`fingerprint ${net.fingerprint()}`);
    try {
        Network.fromJson({loom: 1});
    } catch (e) {
        console.log(`bad config: status ${e.code}`);
    }
} finally {
    net.free();
}
const live = [0];
check(api.liveHandles(live));
console.log(`live handles ${live[0]}`);

/* The network C ABI against Loom in Python (tests/capi/test_capi_network.py): runs a fixed sequence of
 * calls and writes every result to DIR for the test to compare bit for bit.
 *
 *   netcheck CONFIG.json INPUT.f32 GRAD.f32 BATCH DIR NAME=COUNT...
 *
 * INPUT.f32 / GRAD.f32: float32 [BATCH, *input shape] and [BATCH, *output shape]. Steps:
 * forward, backward (input gradient, each named parameter's gradient and value), one SGD step with momentum, the
 * fingerprint; to_bytes, save, load and from_bytes (fingerprints); the step API for depth + 2 ticks
 * on the samples in turn (outputs once ready, step_backward, apply_gradients); blueprint, summary,
 * parameters. With LOOM_CAPI_TEST_FAST set, all of it in fast mode; with LOOM_CAPI_TEST_DEVICE (cuda),
 * the network moves there first. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <loom.h>

#define CHECK(call) do { if ((call) != LOOM_OK) { \
    fprintf(stderr, "%s:%d %s failed: %s\n", __FILE__, __LINE__, #call, loom_last_error()); exit(1); } } while (0)

static const char* dir;

static void* slurp(const char* path, size_t* size) {
    FILE* f = fopen(path, "rb");
    if (!f) { fprintf(stderr, "cannot open %s\n", path); exit(1); }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char* data = malloc((size_t)n + 1);
    if (fread(data, 1, (size_t)n, f) != (size_t)n) { fprintf(stderr, "cannot read %s\n", path); exit(1); }
    data[n] = 0;
    fclose(f);
    if (size) *size = (size_t)n;
    return data;
}

static void dump(const char* name, const void* data, size_t bytes) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE* f = fopen(path, "wb");
    if (!f || fwrite(data, 1, bytes, f) != bytes) { fprintf(stderr, "cannot write %s\n", path); exit(1); }
    fclose(f);
}

static size_t volume(loom_network* net, int output, int64_t* dims, int* ndim) {
    CHECK(output ? loom_network_output_shape(net, dims + 1, 7, ndim) : loom_network_input_shape(net, dims + 1, 7, ndim));
    size_t n = 1;
    for (int i = 1; i <= *ndim; ++i) n *= (size_t)dims[i];
    return n;
}

int main(int argc, char** argv) {
    if (argc < 6) { fprintf(stderr, "usage: netcheck CONFIG INPUT GRAD BATCH DIR PARAM...\n"); return 2; }
    char* config = slurp(argv[1], NULL);
    float* x = slurp(argv[2], NULL);
    float* dy = slurp(argv[3], NULL);
    int64_t batch = atoll(argv[4]);
    dir = argv[5];

    if (getenv("LOOM_CAPI_TEST_FAST")) CHECK(loom_set_deterministic(0));
    loom_network* net;
    CHECK(loom_network_from_json(config, &net));
    if (getenv("LOOM_CAPI_TEST_DEVICE")) CHECK(loom_network_to_device(net, getenv("LOOM_CAPI_TEST_DEVICE")));
    CHECK(loom_network_set_training(net, 1));
    int64_t in_dims[8] = {batch}, out_dims[8] = {batch};
    int in_nd, out_nd;
    size_t in_n = volume(net, 0, in_dims, &in_nd), out_n = volume(net, 1, out_dims, &out_nd);

    float* y = malloc(batch * out_n * sizeof(float));
    float* dx = malloc(batch * in_n * sizeof(float));
    CHECK(loom_forward(net, x, in_dims, in_nd + 1, y, batch * out_n));
    dump("forward.f32", y, batch * out_n * sizeof(float));
    CHECK(loom_backward(net, dy, out_dims, out_nd + 1, dx, batch * in_n));
    dump("dx.f32", dx, batch * in_n * sizeof(float));
    for (int i = 6; i < argc; ++i) {           /* NAME=COUNT */
        char name[512], file[600];
        snprintf(name, sizeof name, "%s", argv[i]);
        char* eq = strchr(name, '=');
        if (!eq) { fprintf(stderr, "parameter %s: expected NAME=COUNT\n", argv[i]); return 2; }
        *eq = 0;
        size_t count = (size_t)atoll(eq + 1);
        float* values = malloc(count * sizeof(float));
        CHECK(loom_get_gradient(net, name, values, count));
        snprintf(file, sizeof file, "grad.%s.f32", name);
        dump(file, values, count * sizeof(float));
        CHECK(loom_get_parameter(net, name, values, count));
        snprintf(file, sizeof file, "param.%s.f32", name);
        dump(file, values, count * sizeof(float));
        free(values);
    }

    loom_optimizer* opt;
    CHECK(loom_optimizer_create(net, "{\"type\": \"sgd\", \"lr\": 0.1, \"momentum\": 0.9}", &opt));
    CHECK(loom_apply_gradients(net, opt));
    char hex[65];
    CHECK(loom_network_fingerprint(net, hex));
    printf("after_step %s\n", hex);

    void* bytes;
    size_t size;
    CHECK(loom_network_to_bytes(net, &bytes, &size));
    dump("model.bytes", bytes, size);
    loom_network* copy;
    CHECK(loom_network_from_bytes(bytes, size, &copy));
    CHECK(loom_network_fingerprint(copy, hex));
    printf("from_bytes %s\n", hex);
    CHECK(loom_network_free(copy));
    loom_free(bytes);
    char path[4096];
    snprintf(path, sizeof path, "%s/model.loom", dir);
    CHECK(loom_network_save(net, path));
    CHECK(loom_network_load(path, &copy));
    CHECK(loom_network_fingerprint(copy, hex));
    printf("loaded %s\n", hex);
    CHECK(loom_network_free(copy));

    /* the step API: sample t % batch at tick t */
    loom_step_state* state;
    CHECK(loom_step_state_create(net, &state));
    int64_t one_in[8], one_out[8];
    memcpy(one_in, in_dims, sizeof one_in);
    memcpy(one_out, out_dims, sizeof one_out);
    one_in[0] = one_out[0] = 1;
    int ticks = 0;
    FILE* steps;
    snprintf(path, sizeof path, "%s/step.f32", dir);
    steps = fopen(path, "wb");
    for (int t = 0; t < 6; ++t) {
        CHECK(loom_step_set_input(state, x + (t % batch) * in_n, one_in, in_nd + 1));
        CHECK(loom_step(state));
        int ready;
        CHECK(loom_step_output(state, y, out_n, &ready));
        if (!ready) continue;
        ++ticks;
        fwrite(y, sizeof(float), out_n, steps);
        CHECK(loom_step_backward(state, dy, one_out, out_nd + 1));
        CHECK(loom_apply_gradients(net, opt));
    }
    fclose(steps);
    CHECK(loom_network_fingerprint(net, hex));
    printf("step_ticks %d\nafter_steps %s\n", ticks, hex);

    char* text;
    CHECK(loom_network_blueprint(net, &text));
    dump("blueprint.json", text, strlen(text));
    loom_free(text);
    CHECK(loom_network_summary(net, &text));
    dump("summary.txt", text, strlen(text));
    loom_free(text);
    CHECK(loom_parameters(net, &text));
    dump("parameters.json", text, strlen(text));
    loom_free(text);

    CHECK(loom_step_state_free(state));
    CHECK(loom_optimizer_free(opt));
    CHECK(loom_network_free(net));
    size_t live;
    CHECK(loom_live_handles(&live));
    printf("live %zu\n", live);
    free(config); free(x); free(dy); free(y); free(dx);
    return 0;
}

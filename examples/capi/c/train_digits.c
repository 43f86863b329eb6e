/* Train a Loom network from C: the 784-256-10 MLP (examples/mnist-mlp.json) on the bundled digits,
 * each 8x8 image scaled to 28x28 (every pixel a 3x3 block, 2 pixels of border), then print the
 * held-out accuracy and the SHA-256 fingerprint of the trained weights.
 *
 *   loom capi build --out loom-capi
 *   cc train_digits.c $(PKG_CONFIG_PATH=loom-capi pkg-config --cflags --libs loom) -o train_digits
 *   ./train_digits ../../mnist-mlp.json
 *
 * In deterministic mode (the default) the fingerprint equals that of the same training in Python
 * (tests/capi/test_capi_network.py checks it). */
#include <stdio.h>
#include <stdlib.h>
#include <loom.h>

#define SIDE 28
#define CHECK(call) do { if ((call) != LOOM_OK) { \
    fprintf(stderr, "%s failed: %s\n", #call, loom_last_error()); return 1; } } while (0)

static char* read_file(const char* path) {
    FILE* f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char* text = malloc((size_t)n + 1);
    if (text && fread(text, 1, (size_t)n, f) != (size_t)n) { free(text); text = NULL; }
    if (text) text[n] = 0;
    fclose(f);
    return text;
}

/* 8x8 -> 28x28: pixel (r, c) fills rows 2 + 3r .. 4 + 3r and columns 2 + 3c .. 4 + 3c */
static float* upscale(const float* images, size_t n) {
    float* out = calloc(n * SIDE * SIDE, sizeof(float));
    for (size_t i = 0; out && i < n; ++i)
        for (int r = 0; r < SIDE; ++r)
            for (int c = 0; c < SIDE; ++c)
                if (r >= 2 && r < 26 && c >= 2 && c < 26)
                    out[i * SIDE * SIDE + r * SIDE + c] = images[i * 64 + (r - 2) / 3 * 8 + (c - 2) / 3];
    return out;
}

int main(int argc, char** argv) {
    const char* spec = argc > 2 ? argv[2]
        : "{\"loss\": \"cross_entropy\", \"optimizer\": {\"type\": \"sgd\", \"lr\": 0.05, \"momentum\": 0.9},"
          " \"epochs\": 3, \"batch_size\": 32, \"seed\": 0}";
    char* config = read_file(argc > 1 ? argv[1] : "mnist-mlp.json");
    if (!config) { fprintf(stderr, "cannot read the network config\n"); return 1; }

    float *x8_train, *x8_test;
    int64_t *y_train, *y_test;
    size_t n_train, n_test;
    CHECK(loom_digits_split(0.2, 0, &x8_train, &y_train, &n_train, &x8_test, &y_test, &n_test));
    float* x_train = upscale(x8_train, n_train);
    float* x_test = upscale(x8_test, n_test);

    loom_network* net;
    CHECK(loom_network_from_json(config, &net));
    int64_t x_shape[2] = {(int64_t)n_train, SIDE * SIDE}, y_shape[1] = {(int64_t)n_train};
    char* history;
    CHECK(loom_train(net, spec, x_train, x_shape, 2, y_train, LOOM_INT64, y_shape, 1, &history));
    printf("history %s\n", history);

    CHECK(loom_network_set_training(net, 0));
    float* logits = malloc(n_test * 10 * sizeof(float));
    int64_t test_shape[2] = {(int64_t)n_test, SIDE * SIDE};
    CHECK(loom_forward(net, x_test, test_shape, 2, logits, n_test * 10));
    size_t right = 0;
    for (size_t i = 0; i < n_test; ++i) {
        int best = 0;
        for (int k = 1; k < 10; ++k)
            if (logits[i * 10 + k] > logits[i * 10 + best]) best = k;
        right += best == y_test[i];
    }
    char hex[65];
    CHECK(loom_network_fingerprint(net, hex));
    printf("held-out accuracy %.4f (%zu of %zu)\n", (double)right / n_test, right, n_test);
    printf("weights %s\n", hex);

    CHECK(loom_network_free(net));
    loom_free(history);
    loom_free(x8_train); loom_free(x8_test); loom_free(y_train); loom_free(y_test);
    free(x_train); free(x_test); free(logits); free(config);
    return 0;
}

/* Timing loops for benchmarks/capi.py (compiled and run by it).
 *
 *   capi_bench forward CONFIG_JSON_TEXT INPUT_SIZE CALLS ROUNDS [fast]   median ns per loom_forward (batch 1)
 *   capi_bench gemm DEVICE SIZE CALLS ROUNDS [fast]               median ms per loom_tensor_gemm + sync
 */
#define _POSIX_C_SOURCE 199309L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <loom.h>

#define CHECK(call) do { if ((call) != LOOM_OK) { \
    fprintf(stderr, "%s failed: %s\n", #call, loom_last_error()); exit(1); } } while (0)

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static int by_value(const void* a, const void* b) {
    double x = *(const double*)a, y = *(const double*)b;
    return (x > y) - (x < y);
}

int main(int argc, char** argv) {
    if (argc < 6) { fprintf(stderr, "usage: see the comment at the top\n"); return 2; }
    int calls = atoi(argv[4]), rounds = atoi(argv[5]);
    double* per = malloc(rounds * sizeof(double));
    if (argc > 6) CHECK(loom_set_deterministic(0));
    if (strcmp(argv[1], "forward") == 0) {
        loom_network* net;
        CHECK(loom_network_from_json(argv[2], &net));
        int size = atoi(argv[3]);
        if (size < 1 || size > 1024) { fprintf(stderr, "INPUT_SIZE is 1..1024\n"); return 2; }
        float x[1024] = {0}, y[1024];
        for (int i = 0; i < size; ++i) x[i] = (float)i / size;
        int64_t shape[2] = {1, size};
        for (int w = 0; w < calls; ++w) CHECK(loom_forward(net, x, shape, 2, y, 1024));
        for (int r = 0; r < rounds; ++r) {
            double t = now();
            for (int i = 0; i < calls; ++i) CHECK(loom_forward(net, x, shape, 2, y, 1024));
            per[r] = (now() - t) / calls * 1e9;
        }
        CHECK(loom_network_free(net));
    } else {
        enum LoomDevice dev = (enum LoomDevice)atoi(argv[2]);
        size_t n = (size_t)atol(argv[3]);
        size_t dims[2] = {n, n};
        LoomTensor *a = loom_tensor_create(dev, LOOM_FLOAT32, dims, 2), *b = loom_tensor_create(dev, LOOM_FLOAT32, dims, 2);
        LoomTensor* c = loom_tensor_create(dev, LOOM_FLOAT32, dims, 2);
        if (!a || !b || !c) { fprintf(stderr, "%s\n", loom_last_error()); return 1; }
        CHECK(loom_tensor_fill(a, 0.5));
        CHECK(loom_tensor_fill(b, 0.25));
        CHECK(loom_tensor_gemm(a, b, c, 0, 0));
        CHECK(loom_tensor_sync(c));
        for (int r = 0; r < rounds; ++r) {
            double t = now();
            for (int i = 0; i < calls; ++i) CHECK(loom_tensor_gemm(a, b, c, 0, 0));
            CHECK(loom_tensor_sync(c));
            per[r] = (now() - t) / calls * 1e3;
        }
        CHECK(loom_tensor_free(a)); CHECK(loom_tensor_free(b)); CHECK(loom_tensor_free(c));
    }
    qsort(per, rounds, sizeof(double), by_value);
    printf("%.6f\n", per[rounds / 2]);
    free(per);
    return 0;
}

/* loom_tensor_set_stream with a stream the program made with the CUDA runtime, and the queued gemm on
 * it (tests/capi/test_capi_tensor.py): the products on the stream equal those on the default stream.
 *
 *   streamcheck N */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cuda_runtime_api.h>
#include <loom.h>

#define CHECK(call) do { if ((call) != LOOM_OK) { \
    fprintf(stderr, "%s:%d %s failed: %s\n", __FILE__, __LINE__, #call, loom_last_error()); return 1; } } while (0)

int main(int argc, char** argv) {
    size_t n = argc > 1 ? (size_t)atol(argv[1]) : 256;
    size_t dims[2] = {n, n};
    float* host = malloc(n * n * sizeof(float));
    for (size_t i = 0; i < n * n; ++i) host[i] = (float)((i * 2654435761u) % 1000) / 997.0f - 0.5f;
    LoomTensor* h = loom_tensor_wrap(host, LOOM_FLOAT32, dims, 2);
    LoomTensor *a = loom_tensor_create(LOOM_DEVICE_CUDA, LOOM_FLOAT32, dims, 2);
    LoomTensor *c1 = loom_tensor_create(LOOM_DEVICE_CUDA, LOOM_FLOAT32, dims, 2);
    LoomTensor *c2 = loom_tensor_create(LOOM_DEVICE_CUDA, LOOM_FLOAT32, dims, 2);
    LoomTensor *c3 = loom_tensor_create(LOOM_DEVICE_CUDA, LOOM_FLOAT32, dims, 2);
    if (!h || !a || !c1 || !c2 || !c3) { fprintf(stderr, "%s\n", loom_last_error()); return 1; }
    CHECK(loom_tensor_copy(a, h));
    CHECK(loom_tensor_gemm(a, a, c1, 0, 1));                  /* the default stream */

    cudaStream_t stream;
    if (cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) != cudaSuccess) { puts("no stream"); return 1; }
    CHECK(loom_tensor_set_stream(c2, (void*)stream));
    CHECK(loom_tensor_set_stream(c3, (void*)stream));
    CHECK(loom_tensor_gemm(a, a, c2, 0, 1));                  /* on the program's stream */
    LoomOpHandle* op = loom_enqueue_gemm(a, a, c3);
    if (!op) { fprintf(stderr, "%s\n", loom_last_error()); return 1; }
    CHECK(loom_wait_op(op));
    if (cudaStreamSynchronize(stream) != cudaSuccess) return 1;
    CHECK(loom_tensor_sync(c1));
    CHECK(loom_tensor_sync(c2));
    CHECK(loom_tensor_sync(c3));
    int same2 = memcmp(loom_tensor_data(c1), loom_tensor_data(c2), n * n * sizeof(float)) == 0;
    /* c3 = a a (no transpose): compare with the host product's first entry */
    const float* p3 = loom_tensor_data(c3);
    double want = 0;
    for (size_t k = 0; k < n; ++k) want += (double)host[k] * host[k * n];
    printf("stream_gemm_same %d\nqueued_first %.6g %.6g\n", same2, (double)p3[0], want);
    /* a product big enough to be running when the call returns: pending on the program's stream */
    CHECK(loom_set_deterministic(0));
    size_t big[2] = {4096, 4096};
    LoomTensor *x = loom_tensor_create(LOOM_DEVICE_CUDA, LOOM_FLOAT32, big, 2);
    LoomTensor *z = loom_tensor_create(LOOM_DEVICE_CUDA, LOOM_FLOAT32, big, 2);
    if (!x || !z) { fprintf(stderr, "%s\n", loom_last_error()); return 1; }
    CHECK(loom_tensor_fill(x, 0.5));
    CHECK(loom_tensor_sync(x));
    CHECK(loom_tensor_set_stream(z, (void*)stream));
    CHECK(loom_tensor_gemm(x, x, z, 0, 0));
    printf("pending_on_its_stream %d\n", cudaStreamQuery(stream) == cudaErrorNotReady);
    if (cudaStreamSynchronize(stream) != cudaSuccess) return 1;
    CHECK(loom_tensor_free(x));
    CHECK(loom_tensor_free(z));
    CHECK(loom_tensor_set_stream(c2, NULL));
    LoomTensor* all[] = {h, a, c1, c2, c3};
    for (int i = 0; i < 5; ++i) CHECK(loom_tensor_free(all[i]));
    cudaStreamDestroy(stream);
    size_t live;
    CHECK(loom_live_handles(&live));
    printf("live %zu\n", live);
    free(host);
    return 0;
}

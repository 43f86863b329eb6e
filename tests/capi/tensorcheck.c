/* The tensor C API on one device against NumPy and Loom in Python (tests/capi/test_capi_tensor.py).
 *
 *   tensorcheck DEVICE DIR        (DEVICE 0: CPU, 1: CUDA)
 *
 * Reads from DIR: dims.txt ("m k n rows cols nnz n2"), A.f32 [m, k], B.f32 [k, n] (and as float16:
 * A.f16, B.f16), At.f32 [k, m],
 * Bt.f32 [n, k], rowptr.u32, colidx.u32, values.f32, dense.f32 [cols, n2]. Writes the results as
 * float32 (or float64) files into DIR and prints facts (one "name value" per line). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <loom.h>

#define CHECK(call) do { if ((call) != LOOM_OK) { \
    fprintf(stderr, "%s:%d %s failed: %s\n", __FILE__, __LINE__, #call, loom_last_error()); exit(1); } } while (0)
#define MADE(ptr) do { if (!(ptr)) { \
    fprintf(stderr, "%s:%d %s is NULL: %s\n", __FILE__, __LINE__, #ptr, loom_last_error()); exit(1); } } while (0)

static const char* dir;

static void* slurp(const char* name) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE* f = fopen(path, "rb");
    if (!f) { fprintf(stderr, "cannot open %s\n", path); exit(1); }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char* data = malloc((size_t)n + 8);
    if (fread(data, 1, (size_t)n, f) != (size_t)n) exit(1);
    data[n] = 0;
    fclose(f);
    return data;
}

static void dump(const char* name, const void* data, size_t bytes) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE* f = fopen(path, "wb");
    if (!f || fwrite(data, 1, bytes, f) != bytes) exit(1);
    fclose(f);
}

/* a device tensor holding a host array (through a zero-copy CPU wrap and loom_tensor_copy) */
static LoomTensor* upload(enum LoomDevice device, enum LoomDType dtype, void* host, size_t d0, size_t d1) {
    size_t dims[2] = {d0, d1};
    LoomTensor* wrapped = loom_tensor_wrap(host, dtype, dims, 2);
    MADE(wrapped);
    LoomTensor* t = loom_tensor_create(device, dtype, dims, 2);
    MADE(t);
    CHECK(loom_tensor_copy(t, wrapped));
    CHECK(loom_tensor_free(wrapped));
    return t;
}

/* the tensor's values on the host, through loom_tensor_sync and loom_tensor_data */
static void save(const char* name, LoomTensor* t, size_t count, size_t item) {
    CHECK(loom_tensor_sync(t));
    void* data = loom_tensor_data(t);
    MADE(data);
    dump(name, data, count * item);
}

int main(int argc, char** argv) {
    if (argc != 3) { fprintf(stderr, "usage: tensorcheck DEVICE DIR\n"); return 2; }
    enum LoomDevice dev = (enum LoomDevice)atoi(argv[1]);
    dir = argv[2];
    if (getenv("LOOM_CAPI_TEST_FAST")) CHECK(loom_set_deterministic(0));
    size_t m, k, n, rows, cols, nnz, n2;
    char* dims_text = slurp("dims.txt");
    if (sscanf(dims_text, "%zu %zu %zu %zu %zu %zu %zu", &m, &k, &n, &rows, &cols, &nnz, &n2) != 7) return 2;
    float *a = slurp("A.f32"), *b = slurp("B.f32"), *at = slurp("At.f32"), *bt = slurp("Bt.f32");

    enum LoomDevice found[4];
    int count = 4;
    CHECK(loom_device_query(found, &count));
    printf("devices %d\n", count);

    /* wrap: the tensor is the caller's memory */
    size_t adims[2] = {m, k};
    LoomTensor* wa = loom_tensor_wrap(a, LOOM_FLOAT32, adims, 2);
    MADE(wa);
    printf("wrap_is_caller_memory %d\n", loom_tensor_data(wa) == (void*)a);
    enum LoomDevice where;
    enum LoomDType what;
    int nd;
    size_t got[8];
    CHECK(loom_tensor_info(wa, &where, &what, &nd, got, 8));
    printf("info %d %d %d %zu %zu\n", (int)where, (int)what, nd, got[0], got[1]);
    CHECK(loom_tensor_free(wa));

    LoomTensor *A = upload(dev, LOOM_FLOAT32, a, m, k), *B = upload(dev, LOOM_FLOAT32, b, k, n);
    LoomTensor *At = upload(dev, LOOM_FLOAT32, at, k, m), *Bt = upload(dev, LOOM_FLOAT32, bt, n, k);
    size_t cdims[2] = {m, n};
    LoomTensor* C = loom_tensor_create(dev, LOOM_FLOAT32, cdims, 2);
    MADE(C);
    CHECK(loom_tensor_gemm(A, B, C, 0, 0));
    save("gemm.f32", C, m * n, 4);
    CHECK(loom_tensor_gemm(At, B, C, 1, 0));
    save("gemm_ta.f32", C, m * n, 4);
    CHECK(loom_tensor_gemm(A, Bt, C, 0, 1));
    save("gemm_tb.f32", C, m * n, 4);
    CHECK(loom_tensor_gemm(At, Bt, C, 1, 1));
    save("gemm_tab.f32", C, m * n, 4);

    /* the same product, queued */
    LoomTensor* C2 = loom_tensor_create(dev, LOOM_FLOAT32, cdims, 2);
    MADE(C2);
    LoomOpHandle* op = loom_enqueue_gemm(A, B, C2);
    MADE(op);
    CHECK(loom_wait_op(op));
    save("gemm_async.f32", C2, m * n, 4);

    /* back to a CPU tensor through loom_tensor_copy */
    LoomTensor* host = loom_tensor_create(LOOM_DEVICE_CPU, LOOM_FLOAT32, cdims, 2);
    MADE(host);
    CHECK(loom_tensor_copy(host, C2));
    dump("gemm_copied.f32", loom_tensor_data(host), m * n * 4);

    /* float64 */
    double* a64 = malloc(m * k * sizeof(double));
    double* b64 = malloc(k * n * sizeof(double));
    for (size_t i = 0; i < m * k; ++i) a64[i] = a[i] / 3.0;
    for (size_t i = 0; i < k * n; ++i) b64[i] = b[i] / 7.0;
    LoomTensor *A64 = upload(dev, LOOM_FLOAT64, a64, m, k), *B64 = upload(dev, LOOM_FLOAT64, b64, k, n);
    LoomTensor* C64 = loom_tensor_create(dev, LOOM_FLOAT64, cdims, 2);
    MADE(C64);
    CHECK(loom_tensor_gemm(A64, B64, C64, 0, 0));
    save("gemm64.f64", C64, m * n, 8);

    /* float16: the operands as the test wrote them (A.f16, B.f16) */
    uint16_t *a16 = slurp("A.f16"), *b16 = slurp("B.f16");
    LoomTensor *A16 = upload(dev, LOOM_FLOAT16, a16, m, k), *B16 = upload(dev, LOOM_FLOAT16, b16, k, n);
    LoomTensor* C16 = loom_tensor_create(dev, LOOM_FLOAT16, cdims, 2);
    MADE(C16);
    CHECK(loom_tensor_gemm(A16, B16, C16, 0, 0));
    save("gemm16.f16", C16, m * n, 2);
    CHECK(loom_tensor_free(A16)); CHECK(loom_tensor_free(B16)); CHECK(loom_tensor_free(C16));
    free(a16); free(b16);

    /* reduce_sum over each axis */
    size_t rdims0[1] = {k}, rdims1[1] = {m};
    LoomTensor *R0 = loom_tensor_create(dev, LOOM_FLOAT32, rdims0, 1), *R1 = loom_tensor_create(dev, LOOM_FLOAT32, rdims1, 1);
    MADE(R0); MADE(R1);
    CHECK(loom_tensor_reduce_sum(A, R0, 0));
    CHECK(loom_tensor_reduce_sum(A, R1, -1));
    save("sum0.f32", R0, k, 4);
    save("sum1.f32", R1, m, 4);

    /* fill */
    CHECK(loom_tensor_fill(C, 2.5));
    save("fill.f32", C, m * n, 4);

    /* CSR @ dense */
    uint32_t *rp = slurp("rowptr.u32"), *ci = slurp("colidx.u32");
    float *vals = slurp("values.f32"), *dense = slurp("dense.f32");
    LoomCSR* csr = loom_csr_create((uint32_t)rows, (uint32_t)cols, (uint32_t)nnz, rp, ci, vals);
    MADE(csr);
    LoomTensor* D = upload(dev, LOOM_FLOAT32, dense, cols, n2);
    size_t odims[2] = {rows, n2};
    LoomTensor* O = loom_tensor_create(dev, LOOM_FLOAT32, odims, 2);
    MADE(O);
    CHECK(loom_csr_spmm(csr, D, O));
    save("spmm.f32", O, rows * n2, 4);

    LoomTensor* all[] = {A, B, At, Bt, C, C2, host, A64, B64, C64, R0, R1, D, O};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; ++i) CHECK(loom_tensor_free(all[i]));
    CHECK(loom_csr_free(csr));
    size_t live;
    CHECK(loom_live_handles(&live));
    printf("live %zu\n", live);
    free(a); free(b); free(at); free(bt); free(a64); free(b64); free(rp); free(ci); free(vals); free(dense);
    free(dims_text);
    return 0;
}

/* loom.h: Loom from C (and any language with a C FFI). Reference: docs/capi.md.
 *
 * libloom.so embeds the Python runtime of the Loom installation it was built against
 * (`loom capi build`); the runtime starts on the first call. Conventions:
 * - Every function returns a status (LOOM_OK, or a LOOM_ERR_* code) unless its comment says
 *   otherwise; calls that return a pointer return NULL on error. After an error,
 *   loom_last_error() is the message of the calling thread's latest failed call.
 * - Handles (loom_network*, loom_optimizer*, loom_step_state*, LoomTensor*, LoomCSR*,
 *   LoomOpHandle*) are opaque, never reused after they are freed, and checked on every call: a
 *   NULL, freed or wrong-kind handle is LOOM_ERR_HANDLE, never a crash.
 * - Buffers are caller-owned unless a comment says the library allocates them; those (char**,
 *   void**, float**, int64_t** out-parameters) are released with loom_free().
 * - Shapes are int64_t arrays with the batch first; capacities count elements, not bytes.
 * - Any thread may call any function. Calls on different handles run concurrently where the
 *   work releases Python's lock (array arithmetic does); calls on one handle are serialized.
 * Every declaration between BEGIN and END below is one statement ending in ';' (the build reads them).
 */
#ifndef LOOM_H
#define LOOM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* BEGIN DECLARATIONS */
#define LOOM_ABI_VERSION 2       /* 2: LoomDType became loom.dtypes' table */

#define LOOM_OK 0
#define LOOM_ERR_ARGUMENT 1     /* a NULL pointer, bad size, shape or dtype, a buffer too small */
#define LOOM_ERR_HANDLE 2       /* a NULL, freed or wrong-kind handle */
#define LOOM_ERR_CONFIG 3       /* invalid JSON, network config, training or optimizer spec */
#define LOOM_ERR_FORMAT 4       /* a malformed model file or byte string */
#define LOOM_ERR_IO 5           /* a file that cannot be read or written */
#define LOOM_ERR_DEVICE 6       /* a device cannot run the call (no CUDA here, out of memory) */
#define LOOM_ERR_DETERMINISM 7  /* deterministic mode cannot keep its contract for this call */
#define LOOM_ERR_SHUTDOWN 8     /* loom_shutdown() was called */
#define LOOM_ERR_RUNTIME 9      /* the embedded runtime did not start (the message says why) */
#define LOOM_ERR_INTERNAL 10    /* a bug in Loom: the message has the details */

typedef struct loom_network loom_network;
typedef struct loom_optimizer loom_optimizer;
typedef struct loom_step_state loom_step_state;
typedef struct LoomTensor LoomTensor;
typedef struct LoomCSR LoomCSR;
typedef struct LoomOpHandle LoomOpHandle;

enum LoomDType { LOOM_FLOAT64 = 0, LOOM_FLOAT32 = 1, LOOM_FLOAT16 = 2, LOOM_BFLOAT16 = 3, LOOM_FP8_E4M3 = 4, LOOM_FP8_E5M2 = 5, LOOM_FP4_E2M1 = 6, LOOM_INT64 = 7, LOOM_INT32 = 8, LOOM_INT16 = 9, LOOM_INT8 = 10, LOOM_INT4 = 11, LOOM_INT2 = 12, LOOM_UINT64 = 13, LOOM_UINT32 = 14, LOOM_UINT16 = 15, LOOM_UINT8 = 16, LOOM_UINT4 = 17, LOOM_UINT2 = 18, LOOM_TERNARY = 19, LOOM_BINARY = 20 };
enum LoomDevice { LOOM_DEVICE_CPU = 0, LOOM_DEVICE_CUDA = 1, LOOM_DEVICE_METAL = 2, LOOM_DEVICE_HIP = 3 };

/* LoomDType is loom.dtypes' table (docs/dtypes.md): the numbers are stable and never reused. Tensors
 * hold the types of 8 bits or more; ml_dtypes' (bfloat16, fp8) live on the CPU only. */

/* --- the library ------------------------------------------------------------------------- */
const char* loom_version(void);                 /* the Loom version built in; never NULL */
const char* loom_last_error(void);              /* this thread's latest error message ("" if none) */
void loom_free(void* p);                        /* frees what the library allocated; NULL is a no-op */
int loom_set_deterministic(int on);             /* 1: deterministic mode (the default), 0: fast */
int loom_get_deterministic(int* on);
int loom_live_handles(size_t* count);           /* handles created and not yet freed, all kinds */
int loom_shutdown(void);                        /* frees every handle; later calls fail with LOOM_ERR_SHUTDOWN */

/* --- networks ---------------------------------------------------------------------------- */
int loom_network_from_json(const char* json, loom_network** out);
int loom_network_load(const char* path, loom_network** out);
int loom_network_from_bytes(const void* data, size_t size, loom_network** out);
int loom_network_save(loom_network* net, const char* path);       /* atomic: a temp file, then rename */
int loom_network_to_bytes(loom_network* net, void** data, size_t* size);   /* *data: loom_free */
int loom_network_free(loom_network* net);
int loom_network_to_device(loom_network* net, const char* device);          /* "cpu" or "cuda" */
int loom_network_set_training(loom_network* net, int training);             /* dropout etc. on/off */
int loom_network_input_shape(loom_network* net, int64_t* dims, int capacity, int* ndim);   /* no batch axis */
int loom_network_output_shape(loom_network* net, int64_t* dims, int capacity, int* ndim);
int loom_network_blueprint(loom_network* net, char** json);                 /* *json: loom_free */
int loom_network_summary(loom_network* net, char** text);                   /* *text: loom_free */
int loom_network_fingerprint(loom_network* net, char* hex65);               /* SHA-256 of every parameter and buffer */

/* forward: input float32 [shape], batch first; output float32 [batch, *output shape]; a network of
 * another dtype converts (float32 -> its dtype -> float32) */
int loom_forward(loom_network* net, const float* input, const int64_t* shape, int ndim, float* output, size_t output_capacity);
/* backward after a forward of the same batch: gradients accumulate in the network; grad_input may be NULL */
int loom_backward(loom_network* net, const float* grad_output, const int64_t* shape, int ndim, float* grad_input, size_t grad_input_capacity);
int loom_zero_grad(loom_network* net);
int loom_parameters(loom_network* net, char** json);     /* [{"name", "shape", "dtype", "frozen"}]; loom_free */
int loom_get_parameter(loom_network* net, const char* name, float* out, size_t capacity);
int loom_set_parameter(loom_network* net, const char* name, const float* values, size_t count);
int loom_get_gradient(loom_network* net, const char* name, float* out, size_t capacity);

/* training (loom.train): spec is JSON {"loss", "optimizer", "schedule", "epochs", "batch_size",
 * "seed", "shuffle", "validation", "metrics", "deterministic"}; y is float32 targets or int64 class
 * ids (y_dtype LOOM_FLOAT32 or LOOM_INT64); history_json (may be NULL): per-epoch logs, loom_free */
int loom_train(loom_network* net, const char* spec_json, const float* x, const int64_t* x_shape, int x_ndim, const void* y, int y_dtype, const int64_t* y_shape, int y_ndim, char** history_json);

/* optimizers and the step API (net.step_state(): one tick of a layer pipeline) */
int loom_optimizer_create(loom_network* net, const char* spec_json, loom_optimizer** out);   /* e.g. {"type": "sgd", "lr": 0.01} */
int loom_optimizer_free(loom_optimizer* opt);
int loom_apply_gradients(loom_network* net, loom_optimizer* opt);          /* one step, then zero the gradients */
int loom_step_state_create(loom_network* net, loom_step_state** out);
int loom_step_state_free(loom_step_state* state);
int loom_step_set_input(loom_step_state* state, const float* input, const int64_t* shape, int ndim);
int loom_step(loom_step_state* state);
int loom_step_output(loom_step_state* state, float* output, size_t capacity, int* ready);   /* ready 0: pipeline still filling */
int loom_step_backward(loom_step_state* state, const float* grad_output, const int64_t* shape, int ndim);

/* the bundled digits (1,797 8x8 images, pixels / 16) split as loom.datasets.digits_split; loom_free each array */
int loom_digits_split(double test_fraction, uint64_t seed, float** x_train, int64_t** y_train, size_t* n_train, float** x_test, int64_t** y_test, size_t* n_test);

/* --- tensors (seed 002's LoomTensor API) -------------------------------------------------- */
LoomTensor* loom_tensor_create(enum LoomDevice device, enum LoomDType dtype, const size_t* dims, int ndim);   /* zero-filled */
LoomTensor* loom_tensor_wrap(void* data, enum LoomDType dtype, const size_t* dims, int ndim);   /* a CPU tensor over caller memory, no copy */
int loom_tensor_free(LoomTensor* t);
int loom_tensor_info(LoomTensor* t, enum LoomDevice* device, enum LoomDType* dtype, int* ndim, size_t* dims, int capacity);
void* loom_tensor_data(LoomTensor* t);          /* host view: the data (CPU) or a host copy as of the last loom_tensor_sync (CUDA) */
int loom_tensor_sync(LoomTensor* t);            /* waits for the tensor's work; refreshes a CUDA tensor's host copy */
int loom_tensor_fill(LoomTensor* t, double value);
int loom_tensor_copy(LoomTensor* dst, LoomTensor* src);                    /* any device to any device; same dtype and size */
int loom_tensor_gemm(LoomTensor* A, LoomTensor* B, LoomTensor* C, int transA, int transB);   /* C = op(A) op(B) */
int loom_tensor_reduce_sum(LoomTensor* A, LoomTensor* out, int axis);
LoomCSR* loom_csr_create(uint32_t rows, uint32_t cols, uint32_t nnz, uint32_t* row_ptr, uint32_t* col_idx, void* values);   /* float32 values, copied */
int loom_csr_free(LoomCSR* csr);
int loom_csr_spmm(LoomCSR* csr, LoomTensor* dense, LoomTensor* out);       /* out = csr @ dense */
int loom_device_query(enum LoomDevice* devices, int* count);               /* in: capacity; out: devices available */
int loom_tensor_set_stream(LoomTensor* t, void* stream_handle);            /* a cudaStream_t for a CUDA tensor's work; NULL: the default */
LoomOpHandle* loom_enqueue_gemm(LoomTensor* A, LoomTensor* B, LoomTensor* C);   /* asynchronous C = A B */
int loom_wait_op(LoomOpHandle* h);              /* waits, reports the op's status, frees h */
/* END DECLARATIONS */

#ifdef __cplusplus
}
#endif

#endif /* LOOM_H */

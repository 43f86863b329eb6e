/* Misuse of every function in loom.h (tests/capi/test_capi_misuse.py): NULL, freed, wrong-kind and
 * made-up handles; NULL out-pointers and buffers; bad shapes, dtypes, devices and enum values;
 * buffers one element too small; invalid JSON, JSON of the wrong type, unknown training keys;
 * missing, garbage and truncated model files and bytes; bad CSR arrays, gemm / reduce_sum / copy /
 * SpMM shape errors; and, last, every function after loom_shutdown().
 *
 *   misuse SCRATCH_DIR
 *
 * Each check prints one line
 *   CHECK <function>.<case> rc=<status or NULL/ptr> expect=<status or NULL> msg=<loom_last_error()>
 * (newlines in the message as \n). The program itself also checks that each failure's message is
 * non-empty, starts with "<function>: ", is new (not the previous call's) and names what was wrong;
 * that too-small buffers were not written; that failed calls left the network's values and gradients
 * as they were; then it prints "FAIL <check>: <why>" for each problem, "LIVE <n>" (handles left
 * after freeing everything: 0) and "DONE checks=<n> failures=<n>", and exits 1 on any failure. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <loom.h>

static const char* CFG =
    "{\"loom\": 1, \"name\": \"misuse\", \"seed\": 0, \"dtype\": \"float32\","
    " \"input\": {\"shape\": [4], \"dtype\": \"float32\"},"
    " \"layers\": [{\"type\": \"dense\", \"units\": 3, \"activation\": \"relu\", \"bias\": true},"
    " {\"type\": \"dense\", \"units\": 2, \"activation\": \"linear\", \"bias\": true}]}";
static const char* SPEC = "{\"loss\": \"mse\", \"optimizer\": \"sgd\", \"epochs\": 1, \"batch_size\": 2}";

static int checks, failures;
static char previous[4096];     /* the message set just before each checked call */

static void fail(const char* name, const char* why) {
    printf("FAIL %s: %s\n", name, why);
    failures++;
}

#define REQUIRE(call) do { if ((call) != LOOM_OK) { \
    printf("FAIL setup line %d: %s: %s\n", __LINE__, #call, loom_last_error()); exit(1); } } while (0)
#define REQUIRE_PTR(p) do { if ((p) == NULL) { \
    printf("FAIL setup line %d: %s is NULL: %s\n", __LINE__, #p, loom_last_error()); exit(1); } } while (0)

static void function_of(const char* name, char* fn, size_t size) {
    size_t n = strcspn(name, ".");
    if (n >= size) n = size - 1;
    memcpy(fn, name, n);
    fn[n] = 0;
}

/* Sets a known error message, so that a checked call that fails without setting its own shows. */
static void prime(const char* name) {
    char fn[128];
    function_of(name, fn, sizeof fn);
    if (strcmp(fn, "loom_set_deterministic") == 0) loom_live_handles(NULL);
    else loom_set_deterministic(7);
    snprintf(previous, sizeof previous, "%s", loom_last_error());
}

static void print_message(const char* msg) {
    for (const char* c = msg; *c; ++c) {
        if (*c == '\n') fputs("\\n", stdout);
        else if (*c == '\r') fputs("\\r", stdout);
        else putchar(*c);
    }
    putchar('\n');
}

static void check_message(const char* name, const char* msg, const char* mention) {
    char fn[128], prefix[132];
    function_of(name, fn, sizeof fn);
    snprintf(prefix, sizeof prefix, "%s: ", fn);
    if (msg[0] == 0) fail(name, "empty message");
    else if (strncmp(msg, prefix, strlen(prefix)) != 0) fail(name, "the message does not start with the function's name");
    else if (strcmp(msg, previous) == 0) fail(name, "the message is the previous call's (not set)");
    else if (strlen(msg) <= strlen(prefix) + 5) fail(name, "the message says nothing");
    if (mention && !strstr(msg, mention)) {
        char why[512];
        snprintf(why, sizeof why, "the message does not mention \"%s\"", mention);
        fail(name, why);
    }
}

static void check_rc(const char* name, int rc, int expect, const char* mention) {
    const char* msg = rc == LOOM_OK ? "" : loom_last_error();
    checks++;
    printf("CHECK %s rc=%d expect=%d msg=", name, rc, expect);
    print_message(msg);
    if (rc != expect) fail(name, "wrong status");
    if (rc != LOOM_OK) check_message(name, msg, mention);
}

static void check_null(const char* name, const void* p, const char* mention) {
    const char* msg = p == NULL ? loom_last_error() : "";
    checks++;
    printf("CHECK %s rc=%s expect=NULL msg=", name, p == NULL ? "NULL" : "ptr");
    print_message(msg);
    if (p != NULL) fail(name, "a pointer came back where NULL was expected");
    else check_message(name, msg, mention);
}

/* A call expected to return `expect`; its message must contain `mention` (NULL: anything). */
#define EXPECT(name, expect, mention, call) \
    do { prime(name); int rc_ = (call); check_rc(name, rc_, expect, mention); } while (0)
/* A pointer-returning call expected to fail (NULL). */
#define EXPECT_NULL(name, mention, call) \
    do { prime(name); const void* p_ = (const void*)(call); check_null(name, p_, mention); } while (0)

static const char* HANDLE_FREED = "was freed or was not made by this library";

static LoomTensor* tensor(enum LoomDType dtype, size_t rows, size_t cols) {
    size_t dims[2] = {rows, cols};
    LoomTensor* t = loom_tensor_create(LOOM_DEVICE_CPU, dtype, dims, 2);
    REQUIRE_PTR(t);
    return t;
}

static void write_file(const char* path, const void* data, size_t size) {
    FILE* f = fopen(path, "wb");
    if (!f || fwrite(data, 1, size, f) != size) { printf("FAIL setup: cannot write %s\n", path); exit(1); }
    fclose(f);
}

static int all_equal(const float* a, float value, size_t n) {
    for (size_t i = 0; i < n; ++i)
        if (a[i] != value) return 0;
    return 1;
}

int main(int argc, char** argv) {
    if (argc != 2) { fprintf(stderr, "usage: misuse SCRATCH_DIR\n"); return 2; }
    const char* scratch = argv[1];
    char missing_path[4096], garbage_path[4096], empty_path[4096], no_dir_path[4096];
    snprintf(missing_path, sizeof missing_path, "%s/no-such-model.loom", scratch);
    snprintf(garbage_path, sizeof garbage_path, "%s/garbage.loom", scratch);
    snprintf(empty_path, sizeof empty_path, "%s/empty.loom", scratch);
    snprintf(no_dir_path, sizeof no_dir_path, "%s/no/such/folder/model.loom", scratch);
    const char garbage[] = "this is not a Loom model file, only some text long enough to be read as one";
    write_file(garbage_path, garbage, sizeof garbage);
    write_file(empty_path, "", 0);
    int local = 0;      /* its address is a pointer the library never made */

    int cuda = 0;
    {
        enum LoomDevice devices[4];
        int count = 4;
        REQUIRE(loom_device_query(devices, &count));
        for (int i = 0; i < count; ++i) cuda |= devices[i] == LOOM_DEVICE_CUDA;
    }

    /* --- the library ------------------------------------------------------------------------ */
    EXPECT("loom_set_deterministic.two", LOOM_ERR_ARGUMENT, "got 2", loom_set_deterministic(2));
    EXPECT("loom_set_deterministic.negative", LOOM_ERR_ARGUMENT, "got -1", loom_set_deterministic(-1));
    EXPECT("loom_get_deterministic.null", LOOM_ERR_ARGUMENT, "on is NULL", loom_get_deterministic(NULL));
    {
        int on = -1;
        REQUIRE(loom_get_deterministic(&on));
        if (on != 1) fail("loom_get_deterministic.after_errors", "failed calls changed the mode");
    }
    EXPECT("loom_live_handles.null", LOOM_ERR_ARGUMENT, "count is NULL", loom_live_handles(NULL));

    /* --- networks: creation --------------------------------------------------------------------- */
    loom_network* net = NULL;
    loom_network* out = NULL;
    REQUIRE(loom_network_from_json(CFG, &net));
    EXPECT("loom_network_from_json.null_json", LOOM_ERR_ARGUMENT, "json is NULL", loom_network_from_json(NULL, &out));
    EXPECT("loom_network_from_json.null_out", LOOM_ERR_ARGUMENT, "out is NULL", loom_network_from_json(CFG, NULL));
    EXPECT("loom_network_from_json.invalid", LOOM_ERR_CONFIG, "not valid JSON",
           loom_network_from_json("{\"loom\": 1, \"layers\": [", &out));
    EXPECT("loom_network_from_json.empty", LOOM_ERR_CONFIG, "not valid JSON", loom_network_from_json("", &out));
    EXPECT("loom_network_from_json.array", LOOM_ERR_CONFIG, "got list", loom_network_from_json("[1, 2]", &out));
    {   /* JSON nested far deeper than any config: a CONFIG error, not a crash or an internal error */
        static char deep[200002];
        memset(deep, '[', 100000);
        memset(deep + 100000, ']', 100000);
        EXPECT("loom_network_from_json.deep", LOOM_ERR_CONFIG, "nests deeper", loom_network_from_json(deep, &out));
    }
    EXPECT("loom_network_from_json.number", LOOM_ERR_CONFIG, "got int", loom_network_from_json("42", &out));
    EXPECT("loom_network_from_json.no_keys", LOOM_ERR_CONFIG, "missing", loom_network_from_json("{}", &out));
    EXPECT("loom_network_from_json.unknown_layer", LOOM_ERR_CONFIG, "unknown layer type",
           loom_network_from_json("{\"loom\": 1, \"input\": {\"shape\": [4]}, \"layers\": [{\"type\": \"nope\"}]}", &out));
    EXPECT("loom_network_from_json.not_utf8", LOOM_ERR_ARGUMENT, "UTF-8", loom_network_from_json("{\"\xff\xfe\": 1}", &out));

    EXPECT("loom_network_load.null_path", LOOM_ERR_ARGUMENT, "path is NULL", loom_network_load(NULL, &out));
    EXPECT("loom_network_load.null_out", LOOM_ERR_ARGUMENT, "out is NULL", loom_network_load(garbage_path, NULL));
    EXPECT("loom_network_load.missing", LOOM_ERR_IO, "no-such-model.loom", loom_network_load(missing_path, &out));
    EXPECT("loom_network_load.garbage", LOOM_ERR_FORMAT, "garbage.loom", loom_network_load(garbage_path, &out));
    EXPECT("loom_network_load.empty_file", LOOM_ERR_FORMAT, "empty.loom", loom_network_load(empty_path, &out));
    EXPECT("loom_network_load.directory", LOOM_ERR_FORMAT, "directory", loom_network_load(scratch, &out));

    void* bytes = NULL;
    size_t nbytes = 0;
    REQUIRE(loom_network_to_bytes(net, &bytes, &nbytes));
    EXPECT("loom_network_from_bytes.null_data", LOOM_ERR_ARGUMENT, "data is NULL", loom_network_from_bytes(NULL, 10, &out));
    EXPECT("loom_network_from_bytes.null_out", LOOM_ERR_ARGUMENT, "out is NULL", loom_network_from_bytes(bytes, nbytes, NULL));
    EXPECT("loom_network_from_bytes.truncated", LOOM_ERR_FORMAT, "past the end", loom_network_from_bytes(bytes, nbytes / 2, &out));
    EXPECT("loom_network_from_bytes.one_short", LOOM_ERR_FORMAT, NULL, loom_network_from_bytes(bytes, nbytes - 1, &out));
    EXPECT("loom_network_from_bytes.empty", LOOM_ERR_FORMAT, "0 bytes", loom_network_from_bytes(bytes, 0, &out));
    EXPECT("loom_network_from_bytes.garbage", LOOM_ERR_FORMAT, NULL, loom_network_from_bytes(garbage, sizeof garbage, &out));
    EXPECT("loom_network_from_bytes.huge_size", LOOM_ERR_ARGUMENT, "size", loom_network_from_bytes(bytes, SIZE_MAX, &out));
    loom_free(bytes);

    /* a second network, never run forward, and a freed one */
    loom_network* fresh = NULL;
    loom_network* freed_net = NULL;
    REQUIRE(loom_network_from_json(CFG, &fresh));
    REQUIRE(loom_network_from_json(CFG, &freed_net));
    REQUIRE(loom_network_free(freed_net));
    LoomTensor* tf32 = tensor(LOOM_FLOAT32, 2, 3);

    EXPECT("loom_network_save.null_net", LOOM_ERR_HANDLE, "net is NULL", loom_network_save(NULL, missing_path));
    EXPECT("loom_network_save.freed", LOOM_ERR_HANDLE, HANDLE_FREED, loom_network_save(freed_net, missing_path));
    EXPECT("loom_network_save.wrong_kind", LOOM_ERR_HANDLE, "is a LoomTensor*, not a loom_network*",
           loom_network_save((loom_network*)tf32, missing_path));
    EXPECT("loom_network_save.null_path", LOOM_ERR_ARGUMENT, "path is NULL", loom_network_save(net, NULL));
    EXPECT("loom_network_save.no_folder", LOOM_ERR_IO, "does not exist", loom_network_save(net, no_dir_path));

    EXPECT("loom_network_to_bytes.null_net", LOOM_ERR_HANDLE, "net is NULL", loom_network_to_bytes(NULL, &bytes, &nbytes));
    EXPECT("loom_network_to_bytes.freed", LOOM_ERR_HANDLE, HANDLE_FREED, loom_network_to_bytes(freed_net, &bytes, &nbytes));
    EXPECT("loom_network_to_bytes.null_data", LOOM_ERR_ARGUMENT, "data is NULL", loom_network_to_bytes(net, NULL, &nbytes));
    EXPECT("loom_network_to_bytes.null_size", LOOM_ERR_ARGUMENT, "size is NULL", loom_network_to_bytes(net, &bytes, NULL));

    EXPECT("loom_network_free.null", LOOM_ERR_HANDLE, "net is NULL", loom_network_free(NULL));
    EXPECT("loom_network_free.double", LOOM_ERR_HANDLE, HANDLE_FREED, loom_network_free(freed_net));
    EXPECT("loom_network_free.wrong_kind", LOOM_ERR_HANDLE, "is a LoomTensor*, not a loom_network*",
           loom_network_free((loom_network*)tf32));
    REQUIRE(loom_tensor_fill(tf32, 1.0));      /* still alive */
    EXPECT("loom_network_free.made_up", LOOM_ERR_HANDLE, HANDLE_FREED, loom_network_free((loom_network*)(void*)&local));

    EXPECT("loom_network_to_device.null_net", LOOM_ERR_HANDLE, "net is NULL", loom_network_to_device(NULL, "cpu"));
    EXPECT("loom_network_to_device.freed", LOOM_ERR_HANDLE, HANDLE_FREED, loom_network_to_device(freed_net, "cpu"));
    EXPECT("loom_network_to_device.null_device", LOOM_ERR_ARGUMENT, "device is NULL", loom_network_to_device(net, NULL));
    EXPECT("loom_network_to_device.unknown", LOOM_ERR_ARGUMENT, "'tpu'", loom_network_to_device(net, "tpu"));
    {   /* a step state holds the network's layers: moving under it is refused */
        loom_step_state* holder = NULL;
        REQUIRE(loom_step_state_create(net, &holder));
        EXPECT("loom_network_to_device.with_step_state", LOOM_ERR_ARGUMENT, "step-state handles first",
               loom_network_to_device(net, "cpu"));
        REQUIRE(loom_step_state_free(holder));
    }
    if (cuda) {     /* with a GPU: a success, then back */
        EXPECT("loom_network_to_device.cuda", LOOM_OK, NULL, loom_network_to_device(net, "cuda"));
        REQUIRE(loom_network_to_device(net, "cpu"));
    } else {
        EXPECT("loom_network_to_device.cuda", LOOM_ERR_DEVICE, "cuda", loom_network_to_device(net, "cuda"));
    }

    EXPECT("loom_network_set_training.null_net", LOOM_ERR_HANDLE, "net is NULL", loom_network_set_training(NULL, 1));
    EXPECT("loom_network_set_training.freed", LOOM_ERR_HANDLE, HANDLE_FREED, loom_network_set_training(freed_net, 0));
    EXPECT("loom_network_set_training.not_0_or_1", LOOM_ERR_ARGUMENT, "training is 0 or 1, got 2",
           loom_network_set_training(net, 2));

    {
        int64_t dims[8] = {-5, -5, -5, -5, -5, -5, -5, -5};
        int ndim = -1;
        EXPECT("loom_network_input_shape.null_net", LOOM_ERR_HANDLE, "net is NULL", loom_network_input_shape(NULL, dims, 8, &ndim));
        EXPECT("loom_network_input_shape.freed", LOOM_ERR_HANDLE, HANDLE_FREED, loom_network_input_shape(freed_net, dims, 8, &ndim));
        EXPECT("loom_network_input_shape.small", LOOM_ERR_ARGUMENT, "dims holds 0 entries", loom_network_input_shape(net, dims, 0, &ndim));
        if (ndim != 1) fail("loom_network_input_shape.small", "*ndim was not set to the needed count");
        if (dims[0] != -5) fail("loom_network_input_shape.small", "wrote past the capacity");
        EXPECT("loom_network_input_shape.negative_capacity", LOOM_ERR_ARGUMENT, "dims holds -1 entries",
               loom_network_input_shape(net, dims, -1, &ndim));
        EXPECT("loom_network_input_shape.null_ndim", LOOM_ERR_ARGUMENT, "ndim is NULL", loom_network_input_shape(net, dims, 8, NULL));
        EXPECT("loom_network_input_shape.null_dims", LOOM_ERR_ARGUMENT, "dims is NULL", loom_network_input_shape(net, NULL, 8, &ndim));
        EXPECT("loom_network_output_shape.null_net", LOOM_ERR_HANDLE, "net is NULL", loom_network_output_shape(NULL, dims, 8, &ndim));
        EXPECT("loom_network_output_shape.wrong_kind", LOOM_ERR_HANDLE, "is a LoomTensor*",
               loom_network_output_shape((loom_network*)tf32, dims, 8, &ndim));
        EXPECT("loom_network_output_shape.small", LOOM_ERR_ARGUMENT, "dims holds 0 entries", loom_network_output_shape(net, dims, 0, &ndim));
        if (dims[0] != -5) fail("loom_network_output_shape.small", "wrote past the capacity");
        EXPECT("loom_network_output_shape.null_ndim", LOOM_ERR_ARGUMENT, "ndim is NULL", loom_network_output_shape(net, dims, 8, NULL));
        EXPECT("loom_network_output_shape.null_dims", LOOM_ERR_ARGUMENT, "dims is NULL", loom_network_output_shape(net, NULL, 8, &ndim));
    }
    {
        char* text = NULL;
        char hex[65];
        EXPECT("loom_network_blueprint.null_net", LOOM_ERR_HANDLE, "net is NULL", loom_network_blueprint(NULL, &text));
        EXPECT("loom_network_blueprint.freed", LOOM_ERR_HANDLE, HANDLE_FREED, loom_network_blueprint(freed_net, &text));
        EXPECT("loom_network_blueprint.null_out", LOOM_ERR_ARGUMENT, "json is NULL", loom_network_blueprint(net, NULL));
        EXPECT("loom_network_summary.null_net", LOOM_ERR_HANDLE, "net is NULL", loom_network_summary(NULL, &text));
        EXPECT("loom_network_summary.freed", LOOM_ERR_HANDLE, HANDLE_FREED, loom_network_summary(freed_net, &text));
        EXPECT("loom_network_summary.null_out", LOOM_ERR_ARGUMENT, "text is NULL", loom_network_summary(net, NULL));
        EXPECT("loom_network_fingerprint.null_net", LOOM_ERR_HANDLE, "net is NULL", loom_network_fingerprint(NULL, hex));
        EXPECT("loom_network_fingerprint.freed", LOOM_ERR_HANDLE, HANDLE_FREED, loom_network_fingerprint(freed_net, hex));
        EXPECT("loom_network_fingerprint.null_out", LOOM_ERR_ARGUMENT, "hex65 is NULL", loom_network_fingerprint(net, NULL));
        if (text != NULL) fail("loom_network_blueprint", "a failed call allocated a string");
    }

    /* --- forward, backward, parameters ---------------------------------------------------------- */
    loom_step_state* state = NULL;
    REQUIRE(loom_step_state_create(net, &state));
    {
        float x[8] = {0.5f, -1, 2, 0.25f, 1, 1, -2, 3};
        float y[5] = {-7, -7, -7, -7, -7};
        int64_t shape[2] = {2, 4}, bad_features[2] = {2, 5}, no_batch[1] = {4}, negative[2] = {2, -4};
        int64_t huge[2] = {INT64_MAX, 4}, nine[9] = {2, 4, 1, 1, 1, 1, 1, 1, 1};
        EXPECT("loom_forward.null_net", LOOM_ERR_HANDLE, "net is NULL", loom_forward(NULL, x, shape, 2, y, 4));
        EXPECT("loom_forward.freed", LOOM_ERR_HANDLE, HANDLE_FREED, loom_forward(freed_net, x, shape, 2, y, 4));
        EXPECT("loom_forward.wrong_kind", LOOM_ERR_HANDLE, "is a loom_step_state*, not a loom_network*",
               loom_forward((loom_network*)state, x, shape, 2, y, 4));
        EXPECT("loom_forward.null_input", LOOM_ERR_ARGUMENT, "input is NULL", loom_forward(net, NULL, shape, 2, y, 4));
        EXPECT("loom_forward.null_shape", LOOM_ERR_ARGUMENT, "shape is NULL", loom_forward(net, x, NULL, 2, y, 4));
        EXPECT("loom_forward.ndim0", LOOM_ERR_ARGUMENT, "ndim 0", loom_forward(net, x, shape, 0, y, 4));
        EXPECT("loom_forward.ndim9", LOOM_ERR_ARGUMENT, "ndim 9", loom_forward(net, x, nine, 9, y, 4));
        EXPECT("loom_forward.negative_dim", LOOM_ERR_ARGUMENT, "negative", loom_forward(net, x, negative, 2, y, 4));
        EXPECT("loom_forward.huge_shape", LOOM_ERR_ARGUMENT, "shape [", loom_forward(net, x, huge, 2, y, 4));
        EXPECT("loom_forward.wrong_features", LOOM_ERR_ARGUMENT, "[batch, 4]", loom_forward(net, x, bad_features, 2, y, 4));
        EXPECT("loom_forward.no_batch", LOOM_ERR_ARGUMENT, "[batch, 4]", loom_forward(net, x, no_batch, 1, y, 4));
        EXPECT("loom_forward.small_output", LOOM_ERR_ARGUMENT, "output has room for 3 values", loom_forward(net, x, shape, 2, y, 3));
        if (!all_equal(y, -7, 5)) fail("loom_forward.small_output", "the output buffer was written");
        EXPECT("loom_forward.null_output", LOOM_ERR_ARGUMENT, "output is NULL", loom_forward(net, x, shape, 2, NULL, 4));

        /* backward: before any forward, then after one of batch 2 */
        float dy[6] = {1, -1, 0.5f, 2, 1, 1}, dx[9];
        int64_t dshape[2] = {2, 2}, dbatch3[2] = {3, 2}, dwide[2] = {2, 3};
        EXPECT("loom_backward.before_forward", LOOM_ERR_ARGUMENT, "forward", loom_backward(fresh, dy, dshape, 2, dx, 8));
        REQUIRE(loom_forward(net, x, shape, 2, y, 4));
        REQUIRE(loom_zero_grad(net));
        EXPECT("loom_backward.null_net", LOOM_ERR_HANDLE, "net is NULL", loom_backward(NULL, dy, dshape, 2, dx, 8));
        EXPECT("loom_backward.freed", LOOM_ERR_HANDLE, HANDLE_FREED, loom_backward(freed_net, dy, dshape, 2, dx, 8));
        EXPECT("loom_backward.wrong_kind", LOOM_ERR_HANDLE, "is a LoomTensor*", loom_backward((loom_network*)tf32, dy, dshape, 2, dx, 8));
        EXPECT("loom_backward.null_grad_output", LOOM_ERR_ARGUMENT, "grad_output is NULL", loom_backward(net, NULL, dshape, 2, dx, 8));
        EXPECT("loom_backward.null_shape", LOOM_ERR_ARGUMENT, "grad_output shape is NULL", loom_backward(net, dy, NULL, 2, dx, 8));
        EXPECT("loom_backward.ndim0", LOOM_ERR_ARGUMENT, "ndim 0", loom_backward(net, dy, dshape, 0, dx, 8));
        EXPECT("loom_backward.ndim9", LOOM_ERR_ARGUMENT, "ndim 9", loom_backward(net, dy, nine, 9, dx, 8));
        EXPECT("loom_backward.batch_mismatch", LOOM_ERR_ARGUMENT, "[3, 2]", loom_backward(net, dy, dbatch3, 2, dx, 8));
        EXPECT("loom_backward.wrong_shape", LOOM_ERR_ARGUMENT, "[2, 3]", loom_backward(net, dy, dwide, 2, dx, 8));
        for (int i = 0; i < 9; ++i) dx[i] = -7;
        EXPECT("loom_backward.small_grad_input", LOOM_ERR_ARGUMENT, "grad_input has room for 7 values",
               loom_backward(net, dy, dshape, 2, dx, 7));
        if (!all_equal(dx, -7, 9)) fail("loom_backward.small_grad_input", "the grad_input buffer was written");
        float g[12];
        REQUIRE(loom_get_gradient(net, "layers.0.weight", g, 12));
        if (!all_equal(g, 0, 12)) fail("loom_backward.small_grad_input", "a failed backward accumulated gradients");
        REQUIRE(loom_backward(net, dy, dshape, 2, dx, 8));      /* the forward's cache is still there */
    }
    LoomCSR* csr = NULL;
    {
        uint32_t rp[3] = {0, 1, 2}, ci[2] = {0, 1};
        float v[2] = {1, 2};
        csr = loom_csr_create(2, 3, 2, rp, ci, v);
        REQUIRE_PTR(csr);
    }
    EXPECT("loom_zero_grad.null_net", LOOM_ERR_HANDLE, "net is NULL", loom_zero_grad(NULL));
    EXPECT("loom_zero_grad.freed", LOOM_ERR_HANDLE, HANDLE_FREED, loom_zero_grad(freed_net));
    EXPECT("loom_zero_grad.wrong_kind", LOOM_ERR_HANDLE, "is a LoomCSR*, not a loom_network*", loom_zero_grad((loom_network*)csr));
    {
        char* text = NULL;
        EXPECT("loom_parameters.null_net", LOOM_ERR_HANDLE, "net is NULL", loom_parameters(NULL, &text));
        EXPECT("loom_parameters.freed", LOOM_ERR_HANDLE, HANDLE_FREED, loom_parameters(freed_net, &text));
        EXPECT("loom_parameters.null_out", LOOM_ERR_ARGUMENT, "json is NULL", loom_parameters(net, NULL));
    }
    {
        float w[13], before[12], after[12], values[12] = {0};
        static char long_name[10000];
        memset(long_name, 'x', sizeof long_name - 1);
        REQUIRE(loom_get_parameter(net, "layers.0.weight", before, 12));
        EXPECT("loom_get_parameter.null_net", LOOM_ERR_HANDLE, "net is NULL", loom_get_parameter(NULL, "layers.0.weight", w, 12));
        EXPECT("loom_get_parameter.freed", LOOM_ERR_HANDLE, HANDLE_FREED, loom_get_parameter(freed_net, "layers.0.weight", w, 12));
        EXPECT("loom_get_parameter.null_name", LOOM_ERR_ARGUMENT, "name is NULL", loom_get_parameter(net, NULL, w, 12));
        EXPECT("loom_get_parameter.unknown", LOOM_ERR_ARGUMENT, "'nope' is not one of", loom_get_parameter(net, "nope", w, 12));
        EXPECT("loom_get_parameter.not_utf8", LOOM_ERR_ARGUMENT, "UTF-8", loom_get_parameter(net, "\xc3\x28", w, 12));
        for (int i = 0; i < 13; ++i) w[i] = -7;
        EXPECT("loom_get_parameter.small", LOOM_ERR_ARGUMENT, "out has room for 11 values", loom_get_parameter(net, "layers.0.weight", w, 11));
        if (!all_equal(w, -7, 13)) fail("loom_get_parameter.small", "the out buffer was written");
        EXPECT("loom_get_parameter.null_out", LOOM_ERR_ARGUMENT, "out is NULL", loom_get_parameter(net, "layers.0.weight", NULL, 12));
        EXPECT("loom_get_parameter.long_name", LOOM_ERR_ARGUMENT, "parameter 'xxxx", loom_get_parameter(net, long_name, w, 12));
        {   /* the message is cut to the library's buffer, marked "..." */
            const char* msg = loom_last_error();
            size_t n = strlen(msg);
            if (n != 4095 || strcmp(msg + n - 3, "...") != 0) fail("loom_get_parameter.long_name", "the long message was not cut at 4095 bytes with ...");
        }
        EXPECT("loom_set_parameter.null_net", LOOM_ERR_HANDLE, "net is NULL", loom_set_parameter(NULL, "layers.0.weight", values, 12));
        EXPECT("loom_set_parameter.freed", LOOM_ERR_HANDLE, HANDLE_FREED, loom_set_parameter(freed_net, "layers.0.weight", values, 12));
        EXPECT("loom_set_parameter.null_name", LOOM_ERR_ARGUMENT, "name is NULL", loom_set_parameter(net, NULL, values, 12));
        EXPECT("loom_set_parameter.unknown", LOOM_ERR_ARGUMENT, "'nope' is not one of", loom_set_parameter(net, "nope", values, 12));
        EXPECT("loom_set_parameter.count_short", LOOM_ERR_ARGUMENT, "count 11", loom_set_parameter(net, "layers.0.weight", values, 11));
        EXPECT("loom_set_parameter.count_long", LOOM_ERR_ARGUMENT, "count 13", loom_set_parameter(net, "layers.0.weight", values, 13));
        EXPECT("loom_set_parameter.null_values", LOOM_ERR_ARGUMENT, "values is NULL", loom_set_parameter(net, "layers.0.weight", NULL, 12));
        REQUIRE(loom_get_parameter(net, "layers.0.weight", after, 12));
        if (memcmp(before, after, sizeof before) != 0) fail("loom_set_parameter", "failed calls changed the parameter");
        EXPECT("loom_get_gradient.null_net", LOOM_ERR_HANDLE, "net is NULL", loom_get_gradient(NULL, "layers.0.weight", w, 12));
        EXPECT("loom_get_gradient.freed", LOOM_ERR_HANDLE, HANDLE_FREED, loom_get_gradient(freed_net, "layers.0.weight", w, 12));
        EXPECT("loom_get_gradient.null_name", LOOM_ERR_ARGUMENT, "name is NULL", loom_get_gradient(net, NULL, w, 12));
        EXPECT("loom_get_gradient.unknown", LOOM_ERR_ARGUMENT, "'nope' is not one of", loom_get_gradient(net, "nope", w, 12));
        for (int i = 0; i < 13; ++i) w[i] = -7;
        EXPECT("loom_get_gradient.small", LOOM_ERR_ARGUMENT, "out has room for 1 values", loom_get_gradient(net, "layers.1.bias", w, 1));
        EXPECT("loom_get_gradient.one_short", LOOM_ERR_ARGUMENT, "out has room for 11 values", loom_get_gradient(net, "layers.0.weight", w, 11));
        if (!all_equal(w, -7, 13)) fail("loom_get_gradient.one_short", "the out buffer was written");
        EXPECT("loom_get_gradient.null_out", LOOM_ERR_ARGUMENT, "out is NULL", loom_get_gradient(net, "layers.0.weight", NULL, 12));
    }

    /* --- training ---------------------------------------------------------------------------------- */
    {
        float x[16] = {0}, y[8] = {0};
        int64_t ids[4] = {0, 1, 9, 0};
        int64_t xs[2] = {4, 4}, ys[2] = {4, 2}, y3[2] = {3, 2}, xwide[2] = {4, 5}, ywide[2] = {4, 7}, yids[1] = {4};
        int64_t nine[9] = {4, 2, 1, 1, 1, 1, 1, 1, 1};
        char* history = NULL;
        float before[12], after[12];
        REQUIRE(loom_get_parameter(net, "layers.0.weight", before, 12));
#define TRAIN(name, expect, mention, spec, ...) \
        EXPECT("loom_train." name, expect, mention, loom_train(net, spec, __VA_ARGS__, &history))
        EXPECT("loom_train.null_net", LOOM_ERR_HANDLE, "net is NULL", loom_train(NULL, SPEC, x, xs, 2, y, LOOM_FLOAT32, ys, 2, &history));
        EXPECT("loom_train.freed", LOOM_ERR_HANDLE, HANDLE_FREED, loom_train(freed_net, SPEC, x, xs, 2, y, LOOM_FLOAT32, ys, 2, &history));
        EXPECT("loom_train.wrong_kind", LOOM_ERR_HANDLE, "is a LoomCSR*", loom_train((loom_network*)csr, SPEC, x, xs, 2, y, LOOM_FLOAT32, ys, 2, &history));
        TRAIN("invalid_json", LOOM_ERR_CONFIG, "spec_json is not valid JSON", "{\"loss\": ", x, xs, 2, y, LOOM_FLOAT32, ys, 2);
        TRAIN("array_spec", LOOM_ERR_CONFIG, "got list", "[\"mse\"]", x, xs, 2, y, LOOM_FLOAT32, ys, 2);
        TRAIN("unknown_key", LOOM_ERR_CONFIG, "unknown key 'epoch'", "{\"loss\": \"mse\", \"epoch\": 1}", x, xs, 2, y, LOOM_FLOAT32, ys, 2);
        TRAIN("unknown_loss", LOOM_ERR_CONFIG, "\"nope\"", "{\"loss\": \"nope\"}", x, xs, 2, y, LOOM_FLOAT32, ys, 2);
        TRAIN("bad_epochs", LOOM_ERR_CONFIG, "epochs", "{\"loss\": \"mse\", \"epochs\": 0}", x, xs, 2, y, LOOM_FLOAT32, ys, 2);
        TRAIN("bad_batch_size", LOOM_ERR_CONFIG, "batch_size", "{\"loss\": \"mse\", \"batch_size\": \"two\"}", x, xs, 2, y, LOOM_FLOAT32, ys, 2);
        TRAIN("unknown_optimizer", LOOM_ERR_CONFIG, "optimizer", "{\"loss\": \"mse\", \"optimizer\": {\"type\": \"nope\"}}", x, xs, 2, y, LOOM_FLOAT32, ys, 2);
        TRAIN("bad_validation", LOOM_ERR_CONFIG, "validation", "{\"loss\": \"mse\", \"validation\": \"last\"}", x, xs, 2, y, LOOM_FLOAT32, ys, 2);
        TRAIN("validation_one", LOOM_ERR_CONFIG, "validation", "{\"loss\": \"mse\", \"validation\": 1}", x, xs, 2, y, LOOM_FLOAT32, ys, 2);
        TRAIN("not_utf8", LOOM_ERR_ARGUMENT, "UTF-8", "{\"loss\": \"\xff\"}", x, xs, 2, y, LOOM_FLOAT32, ys, 2);
        TRAIN("y_dtype99", LOOM_ERR_ARGUMENT, "y_dtype", SPEC, x, xs, 2, y, 99, ys, 2);
        TRAIN("y_dtype_float64", LOOM_ERR_ARGUMENT, "got 0", SPEC, x, xs, 2, y, LOOM_FLOAT64, ys, 2);
        TRAIN("null_x", LOOM_ERR_ARGUMENT, "x is NULL", SPEC, NULL, xs, 2, y, LOOM_FLOAT32, ys, 2);
        TRAIN("null_y", LOOM_ERR_ARGUMENT, "y is NULL", SPEC, x, xs, 2, NULL, LOOM_FLOAT32, ys, 2);
        TRAIN("null_x_shape", LOOM_ERR_ARGUMENT, "x shape is NULL", SPEC, x, NULL, 2, y, LOOM_FLOAT32, ys, 2);
        TRAIN("x_ndim0", LOOM_ERR_ARGUMENT, "x shape: ndim 0", SPEC, x, xs, 0, y, LOOM_FLOAT32, ys, 2);
        TRAIN("y_ndim9", LOOM_ERR_ARGUMENT, "y shape: ndim 9", SPEC, x, xs, 2, y, LOOM_FLOAT32, nine, 9);
        TRAIN("sample_mismatch", LOOM_ERR_ARGUMENT, "x has 4 samples, y has 3", SPEC, x, xs, 2, y, LOOM_FLOAT32, y3, 2);
        TRAIN("x_wrong_features", LOOM_ERR_ARGUMENT, "[batch, 4]", SPEC, x, xwide, 2, y, LOOM_FLOAT32, ys, 2);
        TRAIN("y_wrong_shape", LOOM_ERR_CONFIG, "targets need shape", SPEC, x, xs, 2, y, LOOM_FLOAT32, ywide, 2);
        TRAIN("class_out_of_range", LOOM_ERR_CONFIG, "class id 9", "{\"loss\": \"cross_entropy\"}", x, xs, 2, ids, LOOM_INT64, yids, 1);
#undef TRAIN
        if (history != NULL) fail("loom_train", "a failed training allocated a history");
        REQUIRE(loom_get_parameter(net, "layers.0.weight", after, 12));
        if (memcmp(before, after, sizeof before) != 0) fail("loom_train", "failed trainings changed the weights");
    }

    /* --- optimizers and the step API --------------------------------------------------------------- */
    loom_optimizer* opt = NULL;
    loom_optimizer* other_opt = NULL;
    loom_optimizer* freed_opt = NULL;
    loom_optimizer* opt_out = NULL;
    REQUIRE(loom_optimizer_create(net, "{\"type\": \"sgd\", \"lr\": 0.01}", &opt));
    REQUIRE(loom_optimizer_create(fresh, "{\"type\": \"sgd\", \"lr\": 0.01}", &other_opt));
    REQUIRE(loom_optimizer_create(net, "\"adam\"", &freed_opt));
    REQUIRE(loom_optimizer_free(freed_opt));
    EXPECT("loom_optimizer_create.null_net", LOOM_ERR_HANDLE, "net is NULL", loom_optimizer_create(NULL, "\"sgd\"", &opt_out));
    EXPECT("loom_optimizer_create.freed", LOOM_ERR_HANDLE, HANDLE_FREED, loom_optimizer_create(freed_net, "\"sgd\"", &opt_out));
    EXPECT("loom_optimizer_create.wrong_kind", LOOM_ERR_HANDLE, "is a loom_optimizer*, not a loom_network*",
           loom_optimizer_create((loom_network*)opt, "\"sgd\"", &opt_out));
    EXPECT("loom_optimizer_create.null_spec", LOOM_ERR_ARGUMENT, "spec_json is NULL", loom_optimizer_create(net, NULL, &opt_out));
    EXPECT("loom_optimizer_create.null_out", LOOM_ERR_ARGUMENT, "out is NULL", loom_optimizer_create(net, "\"sgd\"", NULL));
    EXPECT("loom_optimizer_create.invalid_json", LOOM_ERR_CONFIG, "not valid JSON", loom_optimizer_create(net, "{type: sgd}", &opt_out));
    EXPECT("loom_optimizer_create.unknown_type", LOOM_ERR_CONFIG, "\"nope\"", loom_optimizer_create(net, "{\"type\": \"nope\"}", &opt_out));
    EXPECT("loom_optimizer_create.array", LOOM_ERR_CONFIG, "optimizer", loom_optimizer_create(net, "[1]", &opt_out));
    EXPECT("loom_optimizer_create.bad_lr", LOOM_ERR_CONFIG, "lr", loom_optimizer_create(net, "{\"type\": \"sgd\", \"lr\": -1}", &opt_out));
    EXPECT("loom_optimizer_create.no_type", LOOM_ERR_CONFIG, "type", loom_optimizer_create(net, "{\"lr\": 0.1}", &opt_out));
    if (opt_out != NULL) fail("loom_optimizer_create", "a failed call set *out");

    EXPECT("loom_optimizer_free.null", LOOM_ERR_HANDLE, "opt is NULL", loom_optimizer_free(NULL));
    EXPECT("loom_optimizer_free.double", LOOM_ERR_HANDLE, HANDLE_FREED, loom_optimizer_free(freed_opt));
    EXPECT("loom_optimizer_free.wrong_kind", LOOM_ERR_HANDLE, "is a loom_network*, not a loom_optimizer*", loom_optimizer_free((loom_optimizer*)net));
    REQUIRE(loom_zero_grad(net));      /* still alive */

    EXPECT("loom_apply_gradients.null_net", LOOM_ERR_HANDLE, "net is NULL", loom_apply_gradients(NULL, opt));
    EXPECT("loom_apply_gradients.null_opt", LOOM_ERR_HANDLE, "opt is NULL", loom_apply_gradients(net, NULL));
    EXPECT("loom_apply_gradients.freed_net", LOOM_ERR_HANDLE, HANDLE_FREED, loom_apply_gradients(freed_net, opt));
    EXPECT("loom_apply_gradients.freed_opt", LOOM_ERR_HANDLE, HANDLE_FREED, loom_apply_gradients(net, freed_opt));
    EXPECT("loom_apply_gradients.other_network", LOOM_ERR_ARGUMENT, "another network", loom_apply_gradients(net, other_opt));
    EXPECT("loom_apply_gradients.wrong_kind", LOOM_ERR_HANDLE, "is a loom_step_state*, not a loom_optimizer*",
           loom_apply_gradients(net, (loom_optimizer*)state));
    EXPECT("loom_apply_gradients.swapped", LOOM_ERR_HANDLE, "is a loom_optimizer*, not a loom_network*",
           loom_apply_gradients((loom_network*)opt, (loom_optimizer*)net));

    loom_step_state* freed_state = NULL;
    loom_step_state* fresh_state = NULL;
    loom_step_state* state_out = NULL;
    REQUIRE(loom_step_state_create(net, &freed_state));
    REQUIRE(loom_step_state_free(freed_state));
    REQUIRE(loom_step_state_create(fresh, &fresh_state));
    EXPECT("loom_step_state_create.null_net", LOOM_ERR_HANDLE, "net is NULL", loom_step_state_create(NULL, &state_out));
    EXPECT("loom_step_state_create.freed", LOOM_ERR_HANDLE, HANDLE_FREED, loom_step_state_create(freed_net, &state_out));
    EXPECT("loom_step_state_create.wrong_kind", LOOM_ERR_HANDLE, "is a loom_step_state*, not a loom_network*",
           loom_step_state_create((loom_network*)state, &state_out));
    EXPECT("loom_step_state_create.null_out", LOOM_ERR_ARGUMENT, "out is NULL", loom_step_state_create(net, NULL));
    if (state_out != NULL) fail("loom_step_state_create", "a failed call set *out");
    EXPECT("loom_step_state_free.null", LOOM_ERR_HANDLE, "state is NULL", loom_step_state_free(NULL));
    EXPECT("loom_step_state_free.double", LOOM_ERR_HANDLE, HANDLE_FREED, loom_step_state_free(freed_state));
    EXPECT("loom_step_state_free.wrong_kind", LOOM_ERR_HANDLE, "is a loom_network*, not a loom_step_state*",
           loom_step_state_free((loom_step_state*)net));
    {
        float x[4] = {1, 2, 3, 4}, yout[3] = {-7, -7, -7}, dy[2] = {1, 1};
        int64_t shape[2] = {1, 4}, wide[2] = {1, 5}, negative[2] = {-1, 4}, dshape[2] = {1, 2}, dwide[2] = {1, 7};
        int ready = -1;
        EXPECT("loom_step_set_input.null_state", LOOM_ERR_HANDLE, "state is NULL", loom_step_set_input(NULL, x, shape, 2));
        EXPECT("loom_step_set_input.freed", LOOM_ERR_HANDLE, HANDLE_FREED, loom_step_set_input(freed_state, x, shape, 2));
        EXPECT("loom_step_set_input.wrong_kind", LOOM_ERR_HANDLE, "is a loom_network*", loom_step_set_input((loom_step_state*)net, x, shape, 2));
        EXPECT("loom_step_set_input.null_input", LOOM_ERR_ARGUMENT, "input is NULL", loom_step_set_input(state, NULL, shape, 2));
        EXPECT("loom_step_set_input.null_shape", LOOM_ERR_ARGUMENT, "shape is NULL", loom_step_set_input(state, x, NULL, 2));
        EXPECT("loom_step_set_input.ndim0", LOOM_ERR_ARGUMENT, "ndim 0", loom_step_set_input(state, x, shape, 0));
        EXPECT("loom_step_set_input.ndim9", LOOM_ERR_ARGUMENT, "ndim 9", loom_step_set_input(state, x, shape, 9));
        EXPECT("loom_step_set_input.negative_dim", LOOM_ERR_ARGUMENT, "negative", loom_step_set_input(state, x, negative, 2));
        EXPECT("loom_step_set_input.wrong_features", LOOM_ERR_ARGUMENT, "[batch, 4]", loom_step_set_input(state, x, wide, 2));
        EXPECT("loom_step.null", LOOM_ERR_HANDLE, "state is NULL", loom_step(NULL));
        EXPECT("loom_step.freed", LOOM_ERR_HANDLE, HANDLE_FREED, loom_step(freed_state));
        EXPECT("loom_step.wrong_kind", LOOM_ERR_HANDLE, "is a loom_optimizer*, not a loom_step_state*", loom_step((loom_step_state*)opt));
        EXPECT("loom_step.before_input", LOOM_ERR_ARGUMENT, "set_input", loom_step(fresh_state));
        EXPECT("loom_step_output.null_state", LOOM_ERR_HANDLE, "state is NULL", loom_step_output(NULL, yout, 2, &ready));
        EXPECT("loom_step_output.freed", LOOM_ERR_HANDLE, HANDLE_FREED, loom_step_output(freed_state, yout, 2, &ready));
        EXPECT("loom_step_output.null_ready", LOOM_ERR_ARGUMENT, "ready is NULL", loom_step_output(state, yout, 2, NULL));
        EXPECT("loom_step_backward.null_state", LOOM_ERR_HANDLE, "state is NULL", loom_step_backward(NULL, dy, dshape, 2));
        EXPECT("loom_step_backward.freed", LOOM_ERR_HANDLE, HANDLE_FREED, loom_step_backward(freed_state, dy, dshape, 2));
        EXPECT("loom_step_backward.before_output", LOOM_ERR_ARGUMENT, "needs an output", loom_step_backward(fresh_state, dy, dshape, 2));
        REQUIRE(loom_step_set_input(state, x, shape, 2));
        for (int i = 0; i < 2; ++i) REQUIRE(loom_step(state));
        {
            float full[2];
            REQUIRE(loom_step_output(state, full, 2, &ready));
            if (ready != 1) { printf("FAIL setup: the step output is not ready after 2 steps\n"); exit(1); }
        }
        EXPECT("loom_step_output.small", LOOM_ERR_ARGUMENT, "output has room for 1 values", loom_step_output(state, yout, 1, &ready));
        if (!all_equal(yout, -7, 3)) fail("loom_step_output.small", "the output buffer was written");
        EXPECT("loom_step_output.null_output", LOOM_ERR_ARGUMENT, "output is NULL", loom_step_output(state, NULL, 2, &ready));
        EXPECT("loom_step_backward.null_grad_output", LOOM_ERR_ARGUMENT, "grad_output is NULL", loom_step_backward(state, NULL, dshape, 2));
        EXPECT("loom_step_backward.null_shape", LOOM_ERR_ARGUMENT, "grad_output shape is NULL", loom_step_backward(state, dy, NULL, 2));
        EXPECT("loom_step_backward.ndim0", LOOM_ERR_ARGUMENT, "ndim 0", loom_step_backward(state, dy, dshape, 0));
        EXPECT("loom_step_backward.wrong_shape", LOOM_ERR_ARGUMENT, "[1, 7]", loom_step_backward(state, dy, dwide, 2));
        REQUIRE(loom_step_backward(state, dy, dshape, 2));
    }

    /* --- the digits -------------------------------------------------------------------------------- */
    {
        float *xa = NULL, *xb = NULL;
        int64_t *ya = NULL, *yb = NULL;
        size_t na = 0, nb = 0;
        EXPECT("loom_digits_split.null_x_train", LOOM_ERR_ARGUMENT, "x_train is NULL", loom_digits_split(0.2, 0, NULL, &ya, &na, &xb, &yb, &nb));
        EXPECT("loom_digits_split.null_n_test", LOOM_ERR_ARGUMENT, "n_test is NULL", loom_digits_split(0.2, 0, &xa, &ya, &na, &xb, &yb, NULL));
        EXPECT("loom_digits_split.fraction_zero", LOOM_ERR_ARGUMENT, "test_fraction", loom_digits_split(0.0, 0, &xa, &ya, &na, &xb, &yb, &nb));
        EXPECT("loom_digits_split.fraction_one", LOOM_ERR_ARGUMENT, "test_fraction", loom_digits_split(1.0, 0, &xa, &ya, &na, &xb, &yb, &nb));
        EXPECT("loom_digits_split.fraction_negative", LOOM_ERR_ARGUMENT, "test_fraction", loom_digits_split(-0.5, 0, &xa, &ya, &na, &xb, &yb, &nb));
        EXPECT("loom_digits_split.fraction_nan", LOOM_ERR_ARGUMENT, "nan", loom_digits_split(NAN, 0, &xa, &ya, &na, &xb, &yb, &nb));
        if (xa || ya || xb || yb) fail("loom_digits_split", "a failed call allocated arrays");
    }

    /* --- tensors ------------------------------------------------------------------------------------ */
    {
        size_t d2[2] = {2, 3}, d9[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1}, dhuge[2] = {(size_t)1 << 40, (size_t)1 << 40};
        float buf[6] = {0};
        EXPECT_NULL("loom_tensor_create.device99", "device 99", loom_tensor_create((enum LoomDevice)99, LOOM_FLOAT32, d2, 2));
        EXPECT_NULL("loom_tensor_create.device_negative", "device 4294967295 is not a LoomDevice", loom_tensor_create((enum LoomDevice)-1, LOOM_FLOAT32, d2, 2));
        EXPECT_NULL("loom_tensor_create.metal", "LOOM_DEVICE_METAL", loom_tensor_create(LOOM_DEVICE_METAL, LOOM_FLOAT32, d2, 2));
        EXPECT_NULL("loom_tensor_create.hip", "LOOM_DEVICE_HIP", loom_tensor_create(LOOM_DEVICE_HIP, LOOM_FLOAT32, d2, 2));
        EXPECT_NULL("loom_tensor_create.dtype99", "dtype 99", loom_tensor_create(LOOM_DEVICE_CPU, (enum LoomDType)99, d2, 2));
        EXPECT_NULL("loom_tensor_create.packed", "LOOM_INT4 is a packed storage type", loom_tensor_create(LOOM_DEVICE_CPU, LOOM_INT4, d2, 2));
        EXPECT_NULL("loom_tensor_create.dtype_negative", "dtype 4294967295 is not a LoomDType", loom_tensor_create(LOOM_DEVICE_CPU, (enum LoomDType)-1, d2, 2));
        EXPECT_NULL("loom_tensor_create.ndim9", "ndim 9", loom_tensor_create(LOOM_DEVICE_CPU, LOOM_FLOAT32, d9, 9));
        EXPECT_NULL("loom_tensor_create.ndim_negative", "ndim -1", loom_tensor_create(LOOM_DEVICE_CPU, LOOM_FLOAT32, d2, -1));
        EXPECT_NULL("loom_tensor_create.null_dims", "dims is NULL", loom_tensor_create(LOOM_DEVICE_CPU, LOOM_FLOAT32, NULL, 2));
        EXPECT_NULL("loom_tensor_create.huge", "more elements", loom_tensor_create(LOOM_DEVICE_CPU, LOOM_FLOAT32, dhuge, 2));
        if (cuda) {     /* with a GPU: a dtype CUDA tensors do not take */
            EXPECT_NULL("loom_tensor_create.cuda", "LOOM_BFLOAT16", loom_tensor_create(LOOM_DEVICE_CUDA, LOOM_BFLOAT16, d2, 2));
        } else {
            EXPECT_NULL("loom_tensor_create.cuda", "not available", loom_tensor_create(LOOM_DEVICE_CUDA, LOOM_FLOAT32, d2, 2));
        }
        EXPECT_NULL("loom_tensor_wrap.null_data", "data is NULL", loom_tensor_wrap(NULL, LOOM_FLOAT32, d2, 2));
        EXPECT_NULL("loom_tensor_wrap.dtype99", "dtype 99", loom_tensor_wrap(buf, (enum LoomDType)99, d2, 2));
        EXPECT_NULL("loom_tensor_wrap.ndim9", "ndim 9", loom_tensor_wrap(buf, LOOM_FLOAT32, d9, 9));
        EXPECT_NULL("loom_tensor_wrap.ndim_negative", "ndim -3", loom_tensor_wrap(buf, LOOM_FLOAT32, d2, -3));
        EXPECT_NULL("loom_tensor_wrap.null_dims", "dims is NULL", loom_tensor_wrap(buf, LOOM_FLOAT32, NULL, 2));
        EXPECT_NULL("loom_tensor_wrap.huge", "more elements", loom_tensor_wrap(buf, LOOM_FLOAT32, dhuge, 2));
    }
    LoomTensor* freed_t = tensor(LOOM_FLOAT32, 2, 3);
    REQUIRE(loom_tensor_free(freed_t));
    EXPECT("loom_tensor_free.null", LOOM_ERR_HANDLE, "t is NULL", loom_tensor_free(NULL));
    EXPECT("loom_tensor_free.double", LOOM_ERR_HANDLE, HANDLE_FREED, loom_tensor_free(freed_t));
    EXPECT("loom_tensor_free.wrong_kind", LOOM_ERR_HANDLE, "is a LoomCSR*, not a LoomTensor*", loom_tensor_free((LoomTensor*)csr));
    EXPECT("loom_tensor_free.made_up", LOOM_ERR_HANDLE, HANDLE_FREED, loom_tensor_free((LoomTensor*)(void*)&local));
    {
        enum LoomDevice device;
        enum LoomDType dtype;
        int ndim;
        size_t dims[2] = {99, 99};
        EXPECT("loom_tensor_info.null", LOOM_ERR_HANDLE, "t is NULL", loom_tensor_info(NULL, &device, &dtype, &ndim, dims, 2));
        EXPECT("loom_tensor_info.freed", LOOM_ERR_HANDLE, HANDLE_FREED, loom_tensor_info(freed_t, &device, &dtype, &ndim, dims, 2));
        EXPECT("loom_tensor_info.wrong_kind", LOOM_ERR_HANDLE, "is a loom_network*, not a LoomTensor*",
               loom_tensor_info((LoomTensor*)net, &device, &dtype, &ndim, dims, 2));
        EXPECT("loom_tensor_info.small", LOOM_ERR_ARGUMENT, "dims holds 1 entries", loom_tensor_info(tf32, &device, &dtype, &ndim, dims, 1));
        if (dims[0] != 99 || dims[1] != 99) fail("loom_tensor_info.small", "the dims buffer was written");
    }
    EXPECT_NULL("loom_tensor_data.null", "t is NULL", loom_tensor_data(NULL));
    EXPECT_NULL("loom_tensor_data.freed", HANDLE_FREED, loom_tensor_data(freed_t));
    EXPECT_NULL("loom_tensor_data.wrong_kind", "is a LoomCSR*", loom_tensor_data((LoomTensor*)csr));
    EXPECT("loom_tensor_sync.null", LOOM_ERR_HANDLE, "t is NULL", loom_tensor_sync(NULL));
    EXPECT("loom_tensor_sync.freed", LOOM_ERR_HANDLE, HANDLE_FREED, loom_tensor_sync(freed_t));
    EXPECT("loom_tensor_sync.wrong_kind", LOOM_ERR_HANDLE, "is a loom_optimizer*", loom_tensor_sync((LoomTensor*)opt));

    LoomTensor* ti32 = tensor(LOOM_INT32, 2, 3);
    LoomTensor* ti8 = tensor(LOOM_INT8, 2, 3);
    LoomTensor* tu8 = tensor(LOOM_UINT8, 2, 3);
    LoomTensor* tf64 = tensor(LOOM_FLOAT64, 2, 3);
    EXPECT("loom_tensor_fill.null", LOOM_ERR_HANDLE, "t is NULL", loom_tensor_fill(NULL, 1.0));
    EXPECT("loom_tensor_fill.freed", LOOM_ERR_HANDLE, HANDLE_FREED, loom_tensor_fill(freed_t, 1.0));
    EXPECT("loom_tensor_fill.int_fraction", LOOM_ERR_ARGUMENT, "1.5", loom_tensor_fill(ti32, 1.5));
    EXPECT("loom_tensor_fill.int8_range", LOOM_ERR_ARGUMENT, "int8", loom_tensor_fill(ti8, 300.0));
    EXPECT("loom_tensor_fill.uint8_negative", LOOM_ERR_ARGUMENT, "uint8", loom_tensor_fill(tu8, -1.0));
    EXPECT("loom_tensor_fill.int_nan", LOOM_ERR_ARGUMENT, "nan", loom_tensor_fill(ti32, NAN));
    EXPECT("loom_tensor_fill.int_infinity", LOOM_ERR_ARGUMENT, "inf", loom_tensor_fill(ti32, INFINITY));
    {
        const int32_t* v = loom_tensor_data(ti32);
        REQUIRE_PTR(v);
        for (int i = 0; i < 6; ++i)
            if (v[i] != 0) { fail("loom_tensor_fill.int_fraction", "a failed fill wrote the tensor"); break; }
    }
    LoomTensor* t32x6 = tensor(LOOM_FLOAT32, 3, 2);
    LoomTensor* t32x4 = tensor(LOOM_FLOAT32, 2, 2);
    EXPECT("loom_tensor_copy.null_dst", LOOM_ERR_HANDLE, "dst is NULL", loom_tensor_copy(NULL, tf32));
    EXPECT("loom_tensor_copy.null_src", LOOM_ERR_HANDLE, "src is NULL", loom_tensor_copy(tf32, NULL));
    EXPECT("loom_tensor_copy.freed_src", LOOM_ERR_HANDLE, HANDLE_FREED, loom_tensor_copy(tf32, freed_t));
    EXPECT("loom_tensor_copy.wrong_kind", LOOM_ERR_HANDLE, "is a LoomCSR*", loom_tensor_copy((LoomTensor*)csr, tf32));
    EXPECT("loom_tensor_copy.size_mismatch", LOOM_ERR_ARGUMENT, "dst has 4 elements", loom_tensor_copy(t32x4, tf32));
    EXPECT("loom_tensor_copy.dtype_mismatch", LOOM_ERR_ARGUMENT, "dst is float32, src is float64", loom_tensor_copy(tf32, tf64));
    REQUIRE(loom_tensor_copy(t32x6, tf32));     /* the same size in another shape is fine */

    LoomTensor* a23 = tensor(LOOM_FLOAT32, 2, 3);
    LoomTensor* b32 = tensor(LOOM_FLOAT32, 3, 2);
    LoomTensor* b42 = tensor(LOOM_FLOAT32, 4, 2);
    LoomTensor* c22 = tensor(LOOM_FLOAT32, 2, 2);
    LoomTensor* c33 = tensor(LOOM_FLOAT32, 3, 3);
    LoomTensor* c64 = tensor(LOOM_FLOAT64, 2, 2);
    LoomTensor* v3;
    {
        size_t d[1] = {3};
        v3 = loom_tensor_create(LOOM_DEVICE_CPU, LOOM_FLOAT32, d, 1);
        REQUIRE_PTR(v3);
    }
    EXPECT("loom_tensor_gemm.null_A", LOOM_ERR_HANDLE, "A is NULL", loom_tensor_gemm(NULL, b32, c22, 0, 0));
    EXPECT("loom_tensor_gemm.null_B", LOOM_ERR_HANDLE, "B is NULL", loom_tensor_gemm(a23, NULL, c22, 0, 0));
    EXPECT("loom_tensor_gemm.null_C", LOOM_ERR_HANDLE, "C is NULL", loom_tensor_gemm(a23, b32, NULL, 0, 0));
    EXPECT("loom_tensor_gemm.freed_B", LOOM_ERR_HANDLE, HANDLE_FREED, loom_tensor_gemm(a23, freed_t, c22, 0, 0));
    EXPECT("loom_tensor_gemm.wrong_kind", LOOM_ERR_HANDLE, "is a loom_network*", loom_tensor_gemm(a23, b32, (LoomTensor*)net, 0, 0));
    EXPECT("loom_tensor_gemm.inner_mismatch", LOOM_ERR_ARGUMENT, "does not fit", loom_tensor_gemm(a23, b42, c22, 0, 0));
    EXPECT("loom_tensor_gemm.c_shape", LOOM_ERR_ARGUMENT, "does not fit C [3, 3]", loom_tensor_gemm(a23, b32, c33, 0, 0));
    EXPECT("loom_tensor_gemm.trans_mismatch", LOOM_ERR_ARGUMENT, "does not fit", loom_tensor_gemm(a23, b32, c22, 1, 0));
    EXPECT("loom_tensor_gemm.int_dtype", LOOM_ERR_ARGUMENT, "float16, float32 or float64", loom_tensor_gemm(ti32, ti32, ti32, 0, 1));
    EXPECT("loom_tensor_gemm.dtype_mismatch", LOOM_ERR_ARGUMENT, "float32 and float64 differ", loom_tensor_gemm(a23, b32, c64, 0, 0));
    EXPECT("loom_tensor_gemm.ndim1", LOOM_ERR_ARGUMENT, "needs 2", loom_tensor_gemm(a23, v3, c22, 0, 0));

    LoomTensor* r2 = tensor(LOOM_FLOAT32, 1, 2);
    LoomTensor* s0;
    {
        s0 = loom_tensor_create(LOOM_DEVICE_CPU, LOOM_FLOAT32, NULL, 0);
        REQUIRE_PTR(s0);
    }
    EXPECT("loom_tensor_reduce_sum.null_A", LOOM_ERR_HANDLE, "A is NULL", loom_tensor_reduce_sum(NULL, v3, 0));
    EXPECT("loom_tensor_reduce_sum.null_out", LOOM_ERR_HANDLE, "out is NULL", loom_tensor_reduce_sum(a23, NULL, 0));
    EXPECT("loom_tensor_reduce_sum.freed", LOOM_ERR_HANDLE, HANDLE_FREED, loom_tensor_reduce_sum(freed_t, v3, 0));
    EXPECT("loom_tensor_reduce_sum.axis2", LOOM_ERR_ARGUMENT, "axis 2", loom_tensor_reduce_sum(a23, v3, 2));
    EXPECT("loom_tensor_reduce_sum.axis_minus3", LOOM_ERR_ARGUMENT, "axis -3", loom_tensor_reduce_sum(a23, v3, -3));
    EXPECT("loom_tensor_reduce_sum.scalar", LOOM_ERR_ARGUMENT, "0-d tensor", loom_tensor_reduce_sum(s0, s0, 0));
    EXPECT("loom_tensor_reduce_sum.out_shape", LOOM_ERR_ARGUMENT, "out has shape [1, 2]", loom_tensor_reduce_sum(a23, r2, 0));
    EXPECT("loom_tensor_reduce_sum.dtype_mismatch", LOOM_ERR_ARGUMENT, "float32 and float64", loom_tensor_reduce_sum(a23, tf64, 0));
    REQUIRE(loom_tensor_reduce_sum(a23, v3, 0));

    {
        uint32_t decreasing[4] = {0, 2, 1, 3}, rp[3] = {0, 1, 2}, short_end[3] = {0, 1, 1}, late_start[3] = {1, 1, 2};
        uint32_t ci[3] = {0, 1, 2}, ci_out[2] = {0, 4};
        float v[3] = {1, 2, 3};
        EXPECT_NULL("loom_csr_create.decreasing_row_ptr", "decreases at row 1", loom_csr_create(3, 4, 3, decreasing, ci, v));
        EXPECT_NULL("loom_csr_create.column_out_of_range", "col_idx[1] = 4 is not below cols (4)", loom_csr_create(2, 4, 2, rp, ci_out, v));
        EXPECT_NULL("loom_csr_create.end_not_nnz", "nnz (2)", loom_csr_create(2, 4, 2, short_end, ci, v));
        EXPECT_NULL("loom_csr_create.start_not_zero", "from 0", loom_csr_create(2, 4, 2, late_start, ci, v));
        EXPECT_NULL("loom_csr_create.null_row_ptr", "row_ptr is NULL", loom_csr_create(2, 4, 2, NULL, ci, v));
        EXPECT_NULL("loom_csr_create.null_col_idx", "col_idx", loom_csr_create(2, 4, 2, rp, NULL, v));
        EXPECT_NULL("loom_csr_create.null_values", "values", loom_csr_create(2, 4, 2, rp, ci, NULL));
    }
    LoomCSR* freed_csr;
    {
        uint32_t rp[2] = {0, 0};
        freed_csr = loom_csr_create(1, 1, 0, rp, NULL, NULL);    /* an empty matrix: no entries, no arrays */
        REQUIRE_PTR(freed_csr);
        REQUIRE(loom_csr_free(freed_csr));
    }
    EXPECT("loom_csr_free.null", LOOM_ERR_HANDLE, "csr is NULL", loom_csr_free(NULL));
    EXPECT("loom_csr_free.double", LOOM_ERR_HANDLE, HANDLE_FREED, loom_csr_free(freed_csr));
    EXPECT("loom_csr_free.wrong_kind", LOOM_ERR_HANDLE, "is a LoomTensor*, not a LoomCSR*", loom_csr_free((LoomCSR*)tf32));
    REQUIRE(loom_tensor_fill(tf32, 2.0));      /* still alive */
    /* csr is [2, 3]: dense [3, 2] -> out [2, 2] */
    EXPECT("loom_csr_spmm.null_csr", LOOM_ERR_HANDLE, "csr is NULL", loom_csr_spmm(NULL, b32, c22));
    EXPECT("loom_csr_spmm.null_dense", LOOM_ERR_HANDLE, "dense is NULL", loom_csr_spmm(csr, NULL, c22));
    EXPECT("loom_csr_spmm.null_out", LOOM_ERR_HANDLE, "out is NULL", loom_csr_spmm(csr, b32, NULL));
    EXPECT("loom_csr_spmm.freed_csr", LOOM_ERR_HANDLE, HANDLE_FREED, loom_csr_spmm(freed_csr, b32, c22));
    EXPECT("loom_csr_spmm.wrong_kind", LOOM_ERR_HANDLE, "is a LoomTensor*, not a LoomCSR*", loom_csr_spmm((LoomCSR*)a23, b32, c22));
    EXPECT("loom_csr_spmm.dense_rows", LOOM_ERR_ARGUMENT, "does not fit", loom_csr_spmm(csr, b42, c22));
    EXPECT("loom_csr_spmm.out_shape", LOOM_ERR_ARGUMENT, "does not fit out [3, 3]", loom_csr_spmm(csr, b32, c33));
    EXPECT("loom_csr_spmm.float64", LOOM_ERR_ARGUMENT, "float32", loom_csr_spmm(csr, tf64, tf64));
    EXPECT("loom_csr_spmm.dtype_mismatch", LOOM_ERR_ARGUMENT, "float32 and float64", loom_csr_spmm(csr, b32, c64));
    REQUIRE(loom_csr_spmm(csr, b32, c22));

    {
        enum LoomDevice devices[4];
        int count = 0;
        EXPECT("loom_device_query.null_count", LOOM_ERR_ARGUMENT, "count is NULL", loom_device_query(devices, NULL));
        EXPECT("loom_device_query.small", LOOM_ERR_ARGUMENT, "devices holds 0 entries", loom_device_query(devices, &count));
        count = -1;
        EXPECT("loom_device_query.negative", LOOM_ERR_ARGUMENT, "devices holds -1 entries", loom_device_query(devices, &count));
    }
    EXPECT("loom_tensor_set_stream.null", LOOM_ERR_HANDLE, "t is NULL", loom_tensor_set_stream(NULL, NULL));
    EXPECT("loom_tensor_set_stream.freed", LOOM_ERR_HANDLE, HANDLE_FREED, loom_tensor_set_stream(freed_t, NULL));
    EXPECT("loom_tensor_set_stream.cpu_stream", LOOM_ERR_ARGUMENT, "CPU tensor has no stream", loom_tensor_set_stream(tf32, (void*)&local));

    EXPECT_NULL("loom_enqueue_gemm.null_A", "A is NULL", loom_enqueue_gemm(NULL, b32, c22));
    EXPECT_NULL("loom_enqueue_gemm.null_C", "C is NULL", loom_enqueue_gemm(a23, b32, NULL));
    EXPECT_NULL("loom_enqueue_gemm.freed_B", HANDLE_FREED, loom_enqueue_gemm(a23, freed_t, c22));
    EXPECT_NULL("loom_enqueue_gemm.wrong_kind", "is a LoomCSR*", loom_enqueue_gemm(a23, (LoomTensor*)csr, c22));
    EXPECT_NULL("loom_enqueue_gemm.shape_mismatch", "does not fit", loom_enqueue_gemm(a23, b42, c22));
    EXPECT_NULL("loom_enqueue_gemm.c_dtype", "float32 and float64 differ", loom_enqueue_gemm(a23, b32, c64));
    LoomOpHandle* op = loom_enqueue_gemm(a23, b32, c22);
    REQUIRE_PTR(op);
    REQUIRE(loom_wait_op(op));
    EXPECT("loom_wait_op.null", LOOM_ERR_HANDLE, "h is NULL", loom_wait_op(NULL));
    EXPECT("loom_wait_op.double", LOOM_ERR_HANDLE, HANDLE_FREED, loom_wait_op(op));
    EXPECT("loom_wait_op.wrong_kind", LOOM_ERR_HANDLE, "is a LoomTensor*, not a LoomOpHandle*", loom_wait_op((LoomOpHandle*)a23));
    REQUIRE(loom_tensor_fill(a23, 1.0));       /* still alive */

    /* --- free everything: no handle is left ------------------------------------------------------- */
    LoomTensor* tensors[] = {tf32, ti32, ti8, tu8, tf64, t32x6, t32x4, a23, b32, b42, c22, c33, c64, v3, r2, s0};
    for (size_t i = 0; i < sizeof tensors / sizeof *tensors; ++i) REQUIRE(loom_tensor_free(tensors[i]));
    REQUIRE(loom_csr_free(csr));
    REQUIRE(loom_step_state_free(state));
    REQUIRE(loom_step_state_free(fresh_state));
    REQUIRE(loom_optimizer_free(opt));
    REQUIRE(loom_optimizer_free(other_opt));
    REQUIRE(loom_network_free(net));
    REQUIRE(loom_network_free(fresh));
    size_t live = 999;
    REQUIRE(loom_live_handles(&live));
    printf("LIVE %zu\n", live);
    if (live != 0) fail("loom_live_handles", "handles are left after freeing everything");

    /* --- after loom_shutdown(): every call fails with LOOM_ERR_SHUTDOWN (or NULL) --------------------- */
    REQUIRE(loom_network_from_json(CFG, &net));
    REQUIRE(loom_optimizer_create(net, "\"sgd\"", &opt));
    REQUIRE(loom_step_state_create(net, &state));
    a23 = tensor(LOOM_FLOAT32, 2, 3);
    b32 = tensor(LOOM_FLOAT32, 3, 2);
    c22 = tensor(LOOM_FLOAT32, 2, 2);
    {
        uint32_t rp[3] = {0, 1, 2}, ci[2] = {0, 1};
        float v[2] = {1, 2};
        csr = loom_csr_create(2, 3, 2, rp, ci, v);
        REQUIRE_PTR(csr);
    }
    op = loom_enqueue_gemm(a23, b32, c22);     /* still pending, maybe: shutdown waits for it */
    REQUIRE_PTR(op);
    EXPECT("loom_shutdown.ok", LOOM_OK, NULL, loom_shutdown());
    {
        const char* down = "shut down";
        float x[4] = {0}, y[2];
        int64_t shape[2] = {1, 4}, dshape[2] = {1, 2}, dims[8];
        size_t d2[2] = {2, 2}, count = 0;
        int ndim = 0, on = 0, ready = 0, ndev = 4;
        char *text = NULL, hex[65];
        void* data = NULL;
        size_t size = 0;
        loom_network* n2 = NULL;
        loom_optimizer* o2 = NULL;
        loom_step_state* s2 = NULL;
        float *xa = NULL, *xb = NULL;
        int64_t *ya = NULL, *yb = NULL;
        size_t na = 0, nb = 0;
        enum LoomDevice device, devices[4];
        enum LoomDType dtype;
        size_t tdims[2];
        uint32_t rp[3] = {0, 1, 2}, ci[2] = {0, 1};
        float v[2] = {1, 2}, buf[4] = {0};
        EXPECT("loom_shutdown.again", LOOM_ERR_SHUTDOWN, down, loom_shutdown());
        EXPECT("loom_set_deterministic.after_shutdown", LOOM_ERR_SHUTDOWN, down, loom_set_deterministic(1));
        EXPECT("loom_get_deterministic.after_shutdown", LOOM_ERR_SHUTDOWN, down, loom_get_deterministic(&on));
        EXPECT("loom_live_handles.after_shutdown", LOOM_ERR_SHUTDOWN, down, loom_live_handles(&count));
        EXPECT("loom_network_from_json.after_shutdown", LOOM_ERR_SHUTDOWN, down, loom_network_from_json(CFG, &n2));
        EXPECT("loom_network_load.after_shutdown", LOOM_ERR_SHUTDOWN, down, loom_network_load(garbage_path, &n2));
        EXPECT("loom_network_from_bytes.after_shutdown", LOOM_ERR_SHUTDOWN, down, loom_network_from_bytes(garbage, sizeof garbage, &n2));
        EXPECT("loom_network_save.after_shutdown", LOOM_ERR_SHUTDOWN, down, loom_network_save(net, missing_path));
        EXPECT("loom_network_to_bytes.after_shutdown", LOOM_ERR_SHUTDOWN, down, loom_network_to_bytes(net, &data, &size));
        EXPECT("loom_network_free.after_shutdown", LOOM_ERR_SHUTDOWN, down, loom_network_free(net));
        EXPECT("loom_network_to_device.after_shutdown", LOOM_ERR_SHUTDOWN, down, loom_network_to_device(net, "cpu"));
        EXPECT("loom_network_set_training.after_shutdown", LOOM_ERR_SHUTDOWN, down, loom_network_set_training(net, 0));
        EXPECT("loom_network_input_shape.after_shutdown", LOOM_ERR_SHUTDOWN, down, loom_network_input_shape(net, dims, 8, &ndim));
        EXPECT("loom_network_output_shape.after_shutdown", LOOM_ERR_SHUTDOWN, down, loom_network_output_shape(net, dims, 8, &ndim));
        EXPECT("loom_network_blueprint.after_shutdown", LOOM_ERR_SHUTDOWN, down, loom_network_blueprint(net, &text));
        EXPECT("loom_network_summary.after_shutdown", LOOM_ERR_SHUTDOWN, down, loom_network_summary(net, &text));
        EXPECT("loom_network_fingerprint.after_shutdown", LOOM_ERR_SHUTDOWN, down, loom_network_fingerprint(net, hex));
        EXPECT("loom_forward.after_shutdown", LOOM_ERR_SHUTDOWN, down, loom_forward(net, x, shape, 2, y, 2));
        EXPECT("loom_backward.after_shutdown", LOOM_ERR_SHUTDOWN, down, loom_backward(net, y, dshape, 2, NULL, 0));
        EXPECT("loom_zero_grad.after_shutdown", LOOM_ERR_SHUTDOWN, down, loom_zero_grad(net));
        EXPECT("loom_parameters.after_shutdown", LOOM_ERR_SHUTDOWN, down, loom_parameters(net, &text));
        EXPECT("loom_get_parameter.after_shutdown", LOOM_ERR_SHUTDOWN, down, loom_get_parameter(net, "layers.1.bias", y, 2));
        EXPECT("loom_set_parameter.after_shutdown", LOOM_ERR_SHUTDOWN, down, loom_set_parameter(net, "layers.1.bias", y, 2));
        EXPECT("loom_get_gradient.after_shutdown", LOOM_ERR_SHUTDOWN, down, loom_get_gradient(net, "layers.1.bias", y, 2));
        EXPECT("loom_train.after_shutdown", LOOM_ERR_SHUTDOWN, down,
               loom_train(net, SPEC, x, shape, 2, y, LOOM_FLOAT32, dshape, 2, &text));
        EXPECT("loom_optimizer_create.after_shutdown", LOOM_ERR_SHUTDOWN, down, loom_optimizer_create(net, "\"sgd\"", &o2));
        EXPECT("loom_optimizer_free.after_shutdown", LOOM_ERR_SHUTDOWN, down, loom_optimizer_free(opt));
        EXPECT("loom_apply_gradients.after_shutdown", LOOM_ERR_SHUTDOWN, down, loom_apply_gradients(net, opt));
        EXPECT("loom_step_state_create.after_shutdown", LOOM_ERR_SHUTDOWN, down, loom_step_state_create(net, &s2));
        EXPECT("loom_step_state_free.after_shutdown", LOOM_ERR_SHUTDOWN, down, loom_step_state_free(state));
        EXPECT("loom_step_set_input.after_shutdown", LOOM_ERR_SHUTDOWN, down, loom_step_set_input(state, x, shape, 2));
        EXPECT("loom_step.after_shutdown", LOOM_ERR_SHUTDOWN, down, loom_step(state));
        EXPECT("loom_step_output.after_shutdown", LOOM_ERR_SHUTDOWN, down, loom_step_output(state, y, 2, &ready));
        EXPECT("loom_step_backward.after_shutdown", LOOM_ERR_SHUTDOWN, down, loom_step_backward(state, y, dshape, 2));
        EXPECT("loom_digits_split.after_shutdown", LOOM_ERR_SHUTDOWN, down, loom_digits_split(0.2, 0, &xa, &ya, &na, &xb, &yb, &nb));
        EXPECT_NULL("loom_tensor_create.after_shutdown", down, loom_tensor_create(LOOM_DEVICE_CPU, LOOM_FLOAT32, d2, 2));
        EXPECT_NULL("loom_tensor_wrap.after_shutdown", down, loom_tensor_wrap(buf, LOOM_FLOAT32, d2, 2));
        EXPECT("loom_tensor_free.after_shutdown", LOOM_ERR_SHUTDOWN, down, loom_tensor_free(a23));
        EXPECT("loom_tensor_info.after_shutdown", LOOM_ERR_SHUTDOWN, down, loom_tensor_info(a23, &device, &dtype, &ndim, tdims, 2));
        EXPECT_NULL("loom_tensor_data.after_shutdown", down, loom_tensor_data(a23));
        EXPECT("loom_tensor_sync.after_shutdown", LOOM_ERR_SHUTDOWN, down, loom_tensor_sync(a23));
        EXPECT("loom_tensor_fill.after_shutdown", LOOM_ERR_SHUTDOWN, down, loom_tensor_fill(a23, 1.0));
        EXPECT("loom_tensor_copy.after_shutdown", LOOM_ERR_SHUTDOWN, down, loom_tensor_copy(a23, a23));
        EXPECT("loom_tensor_gemm.after_shutdown", LOOM_ERR_SHUTDOWN, down, loom_tensor_gemm(a23, b32, c22, 0, 0));
        EXPECT("loom_tensor_reduce_sum.after_shutdown", LOOM_ERR_SHUTDOWN, down, loom_tensor_reduce_sum(c22, c22, 0));
        EXPECT_NULL("loom_csr_create.after_shutdown", down, loom_csr_create(2, 3, 2, rp, ci, v));
        EXPECT("loom_csr_free.after_shutdown", LOOM_ERR_SHUTDOWN, down, loom_csr_free(csr));
        EXPECT("loom_csr_spmm.after_shutdown", LOOM_ERR_SHUTDOWN, down, loom_csr_spmm(csr, b32, c22));
        EXPECT("loom_device_query.after_shutdown", LOOM_ERR_SHUTDOWN, down, loom_device_query(devices, &ndev));
        EXPECT("loom_tensor_set_stream.after_shutdown", LOOM_ERR_SHUTDOWN, down, loom_tensor_set_stream(a23, NULL));
        EXPECT_NULL("loom_enqueue_gemm.after_shutdown", down, loom_enqueue_gemm(a23, b32, c22));
        EXPECT("loom_wait_op.after_shutdown", LOOM_ERR_SHUTDOWN, down, loom_wait_op(op));
        if (text || data || n2 || o2 || s2 || xa || ya || xb || yb)
            fail("after_shutdown", "a call after shutdown set an out-parameter");
    }
    if (loom_version() == NULL || loom_version()[0] == 0) fail("loom_version", "no version after shutdown");
    loom_free(NULL);

    printf("DONE checks=%d failures=%d\n", checks, failures);
    return failures ? 1 : 0;
}

// loom.hpp: a header-only C++17 wrapper over loom.h (docs/capi.md).
//
//   loom capi build --out loom-capi
//   c++ -std=c++17 app.cpp -I examples/capi/cpp $(PKG_CONFIG_PATH=loom-capi pkg-config --cflags --libs loom)
//
// Every handle type (Network, Optimizer, StepState, Tensor, CSR) owns one library handle: it is
// move-only and frees the handle in its destructor. Every call's status is checked: a failure
// throws loom::Error, which carries the status code (LOOM_ERR_*) and loom_last_error()'s message.
// Functions of loom.h that return a pointer report failure as NULL without a status; their
// Error's code() is loom::NO_STATUS and only the message says what went wrong. Strings and
// buffers the library allocates are copied into std::string / std::vector and released with
// loom_free at once.
#ifndef LOOM_HPP
#define LOOM_HPP

#include <loom.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace loom {

using Shape = std::vector<int64_t>;       // a network-side shape: int64 dims, the batch first
using Dims = std::vector<size_t>;         // a tensor's dims

/// Error::code() of a failed call that returns a pointer (NULL) instead of a status.
constexpr int NO_STATUS = -1;

/// The name of a status code ("LOOM_ERR_CONFIG", ...).
inline const char* status_name(int code) {
    switch (code) {
        case LOOM_OK: return "LOOM_OK";
        case LOOM_ERR_ARGUMENT: return "LOOM_ERR_ARGUMENT";
        case LOOM_ERR_HANDLE: return "LOOM_ERR_HANDLE";
        case LOOM_ERR_CONFIG: return "LOOM_ERR_CONFIG";
        case LOOM_ERR_FORMAT: return "LOOM_ERR_FORMAT";
        case LOOM_ERR_IO: return "LOOM_ERR_IO";
        case LOOM_ERR_DEVICE: return "LOOM_ERR_DEVICE";
        case LOOM_ERR_DETERMINISM: return "LOOM_ERR_DETERMINISM";
        case LOOM_ERR_SHUTDOWN: return "LOOM_ERR_SHUTDOWN";
        case LOOM_ERR_RUNTIME: return "LOOM_ERR_RUNTIME";
        case LOOM_ERR_INTERNAL: return "LOOM_ERR_INTERNAL";
        case NO_STATUS: return "NULL";
        default: return "unknown status";
    }
}

/// A failed library call: its status code and the calling thread's loom_last_error() message.
class Error : public std::runtime_error {
public:
    Error(int code, const std::string& message) : std::runtime_error(message), code_(code) {}
    int code() const noexcept { return code_; }
    const char* status() const noexcept { return status_name(code_); }

private:
    int code_;
};

namespace detail {

inline void check(int status) {
    if (status != LOOM_OK) throw Error(status, loom_last_error());
}

template <typename T>
T* check_ptr(T* p) {
    if (p == nullptr) throw Error(NO_STATUS, loom_last_error());
    return p;
}

struct Free {
    void operator()(void* p) const noexcept { loom_free(p); }
};
template <typename T>
using owned = std::unique_ptr<T, Free>;

/// The library's string as a std::string; the library's copy is freed.
inline std::string take_string(char* p) {
    owned<char> guard(p);
    return p ? std::string(p) : std::string();
}

/// Copy n elements of the library's array into a vector; the library's copy is freed.
template <typename T>
std::vector<T> take_array(T* p, size_t n) {
    owned<T> guard(p);
    return p ? std::vector<T>(p, p + n) : std::vector<T>();
}

inline size_t count(const Shape& shape) {
    size_t n = 1;
    for (int64_t d : shape) {
        if (d < 0) throw Error(LOOM_ERR_ARGUMENT, "a shape has a negative dimension");
        n *= static_cast<size_t>(d);
    }
    return n;
}

inline void expect_size(size_t have, const Shape& shape, const char* what) {
    if (have != count(shape))
        throw Error(LOOM_ERR_ARGUMENT, std::string(what) + " holds " + std::to_string(have) +
                                           " values; its shape needs " + std::to_string(count(shape)));
}

inline int ndim(const Shape& shape) { return static_cast<int>(shape.size()); }

}  // namespace detail

// --- the library -------------------------------------------------------------------------------

inline std::string version() { return loom_version(); }
inline void set_deterministic(bool on) { detail::check(loom_set_deterministic(on ? 1 : 0)); }
inline bool deterministic() {
    int on = 0;
    detail::check(loom_get_deterministic(&on));
    return on != 0;
}
inline size_t live_handles() {
    size_t n = 0;
    detail::check(loom_live_handles(&n));
    return n;
}
inline void shutdown() { detail::check(loom_shutdown()); }

/// The bundled digits (8x8 images, 64 floats each, pixels / 16), split as loom_digits_split.
struct Digits {
    std::vector<float> x_train, x_test;     // [n, 64]
    std::vector<int64_t> y_train, y_test;   // class ids 0..9
    size_t n_train = 0, n_test = 0;
};

inline Digits digits_split(double test_fraction = 0.2, uint64_t seed = 0) {
    float *xa = nullptr, *xb = nullptr;
    int64_t *ya = nullptr, *yb = nullptr;
    Digits d;
    detail::check(loom_digits_split(test_fraction, seed, &xa, &ya, &d.n_train, &xb, &yb, &d.n_test));
    d.x_train = detail::take_array(xa, d.n_train * 64);
    d.y_train = detail::take_array(ya, d.n_train);
    d.x_test = detail::take_array(xb, d.n_test * 64);
    d.y_test = detail::take_array(yb, d.n_test);
    return d;
}

// --- handles -----------------------------------------------------------------------------------

/// The common part of the handle types: one owned pointer, freed by Free, move-only.
template <typename H, int (*Free)(H*)>
class Handle {
public:
    Handle(const Handle&) = delete;
    Handle& operator=(const Handle&) = delete;
    Handle(Handle&& other) noexcept : h_(std::exchange(other.h_, nullptr)) {}
    Handle& operator=(Handle&& other) noexcept {
        if (this != &other) {
            reset();
            h_ = std::exchange(other.h_, nullptr);
        }
        return *this;
    }
    ~Handle() { reset(); }

    H* get() const noexcept { return h_; }
    explicit operator bool() const noexcept { return h_ != nullptr; }
    /// Give up ownership: the caller frees the returned handle.
    H* release() noexcept { return std::exchange(h_, nullptr); }
    /// Free the handle now, reporting a failure (the destructor ignores it: it cannot throw).
    void close() {
        if (h_) detail::check(Free(std::exchange(h_, nullptr)));
    }

protected:
    explicit Handle(H* h) noexcept : h_(h) {}
    void reset() noexcept {
        if (h_) (void)Free(std::exchange(h_, nullptr));   // after loom_shutdown: LOOM_ERR_SHUTDOWN, harmless
    }

private:
    H* h_;
};

class Optimizer;

class Network : public Handle<loom_network, loom_network_free> {
public:
    /// Adopt a handle (it is freed by this object).
    explicit Network(loom_network* h) : Handle(detail::check_ptr(h)) {}

    static Network from_json(const std::string& json) {
        loom_network* h = nullptr;
        detail::check(loom_network_from_json(json.c_str(), &h));
        return Network(h);
    }
    static Network load(const std::string& path) {
        loom_network* h = nullptr;
        detail::check(loom_network_load(path.c_str(), &h));
        return Network(h);
    }
    static Network from_bytes(const void* data, size_t size) {
        loom_network* h = nullptr;
        detail::check(loom_network_from_bytes(data, size, &h));
        return Network(h);
    }
    static Network from_bytes(const std::vector<uint8_t>& bytes) { return from_bytes(bytes.data(), bytes.size()); }

    void save(const std::string& path) const { detail::check(loom_network_save(get(), path.c_str())); }
    std::vector<uint8_t> to_bytes() const {
        void* data = nullptr;
        size_t size = 0;
        detail::check(loom_network_to_bytes(get(), &data, &size));
        uint8_t* bytes = static_cast<uint8_t*>(data);
        return detail::take_array(bytes, size);
    }

    void to_device(const std::string& device) { detail::check(loom_network_to_device(get(), device.c_str())); }
    void set_training(bool training) { detail::check(loom_network_set_training(get(), training ? 1 : 0)); }

    /// One sample's shape (no batch axis).
    Shape input_shape() const { return shape_of(loom_network_input_shape); }
    Shape output_shape() const { return shape_of(loom_network_output_shape); }

    std::string blueprint() const { return string_of(loom_network_blueprint); }
    std::string summary() const { return string_of(loom_network_summary); }
    std::string parameters() const { return string_of(loom_parameters); }   // JSON
    /// SHA-256 (64 hex digits) of every parameter and buffer.
    std::string fingerprint() const {
        char hex[65] = {0};
        detail::check(loom_network_fingerprint(get(), hex));
        return std::string(hex, 64);
    }

    /// Outputs for a batch: input float32 of `shape` (batch first) into output (capacity elements).
    void forward(const float* input, const Shape& shape, float* output, size_t capacity) {
        detail::check(loom_forward(get(), input, shape.data(), detail::ndim(shape), output, capacity));
    }
    /// Outputs for a batch, [batch, *output_shape()] flattened.
    std::vector<float> forward(const float* input, const Shape& shape) {
        if (shape.empty()) throw Error(LOOM_ERR_ARGUMENT, "forward: the shape is empty");
        std::vector<float> out(static_cast<size_t>(shape[0]) * detail::count(output_shape()));
        forward(input, shape, out.data(), out.size());
        return out;
    }
    std::vector<float> forward(const std::vector<float>& input, const Shape& shape) {
        detail::expect_size(input.size(), shape, "forward: input");
        return forward(input.data(), shape);
    }

    /// Backward after a forward of the same batch: parameter gradients accumulate; grad_input may be
    /// nullptr (capacity 0) when the input's gradient is not wanted.
    void backward(const float* grad_output, const Shape& shape, float* grad_input, size_t capacity) {
        detail::check(loom_backward(get(), grad_output, shape.data(), detail::ndim(shape), grad_input, capacity));
    }
    /// Backward returning the input's gradient, [batch, *input_shape()] flattened.
    std::vector<float> backward(const std::vector<float>& grad_output, const Shape& shape) {
        detail::expect_size(grad_output.size(), shape, "backward: grad_output");
        std::vector<float> dx(static_cast<size_t>(shape[0]) * detail::count(input_shape()));
        backward(grad_output.data(), shape, dx.data(), dx.size());
        return dx;
    }
    /// Backward for the parameters' gradients only.
    void backward_parameters(const std::vector<float>& grad_output, const Shape& shape) {
        detail::expect_size(grad_output.size(), shape, "backward: grad_output");
        backward(grad_output.data(), shape, nullptr, 0);
    }
    void zero_grad() { detail::check(loom_zero_grad(get())); }
    inline void apply_gradients(Optimizer& opt);

    /// A parameter's values (count: its number of elements; see parameters()).
    std::vector<float> parameter(const std::string& name, size_t count) const {
        std::vector<float> out(count);
        detail::check(loom_get_parameter(get(), name.c_str(), out.data(), out.size()));
        return out;
    }
    void set_parameter(const std::string& name, const std::vector<float>& values) {
        detail::check(loom_set_parameter(get(), name.c_str(), values.data(), values.size()));
    }
    std::vector<float> gradient(const std::string& name, size_t count) const {
        std::vector<float> out(count);
        detail::check(loom_get_gradient(get(), name.c_str(), out.data(), out.size()));
        return out;
    }

    /// loom.train with a JSON spec ({"loss", "optimizer", "epochs", ...}) on float32 inputs and class
    /// ids; returns the history as JSON.
    std::string train(const std::string& spec_json, const std::vector<float>& x, const Shape& x_shape,
                      const std::vector<int64_t>& y, const Shape& y_shape) {
        return train_(spec_json, x, x_shape, y.data(), LOOM_INT64, y.size(), y_shape);
    }
    /// The same with float32 targets (regression, one-hot rows).
    std::string train(const std::string& spec_json, const std::vector<float>& x, const Shape& x_shape,
                      const std::vector<float>& y, const Shape& y_shape) {
        return train_(spec_json, x, x_shape, y.data(), LOOM_FLOAT32, y.size(), y_shape);
    }

private:
    using ShapeFn = int (*)(loom_network*, int64_t*, int, int*);
    using StringFn = int (*)(loom_network*, char**);

    Shape shape_of(ShapeFn fn) const {
        int64_t dims[8];
        int ndim = 0;
        detail::check(fn(get(), dims, 8, &ndim));
        return Shape(dims, dims + ndim);
    }
    std::string string_of(StringFn fn) const {
        char* text = nullptr;
        detail::check(fn(get(), &text));
        return detail::take_string(text);
    }
    std::string train_(const std::string& spec_json, const std::vector<float>& x, const Shape& x_shape,
                       const void* y, int y_dtype, size_t y_count, const Shape& y_shape) {
        detail::expect_size(x.size(), x_shape, "train: x");
        detail::expect_size(y_count, y_shape, "train: y");
        char* history = nullptr;
        detail::check(loom_train(get(), spec_json.c_str(), x.data(), x_shape.data(), detail::ndim(x_shape), y,
                                 y_dtype, y_shape.data(), detail::ndim(y_shape), &history));
        return detail::take_string(history);
    }
};

/// An optimizer over a network's parameters (spec e.g. {"type": "sgd", "lr": 0.01}).
class Optimizer : public Handle<loom_optimizer, loom_optimizer_free> {
public:
    Optimizer(Network& net, const std::string& spec_json) : Handle(create(net, spec_json)) {}

private:
    static loom_optimizer* create(Network& net, const std::string& spec_json) {
        loom_optimizer* h = nullptr;
        detail::check(loom_optimizer_create(net.get(), spec_json.c_str(), &h));
        return h;
    }
};

/// One optimizer step from the accumulated gradients, then zero them.
inline void Network::apply_gradients(Optimizer& opt) { detail::check(loom_apply_gradients(get(), opt.get())); }

/// The network as a layer pipeline advanced one tick at a time (net.step_state()).
class StepState : public Handle<loom_step_state, loom_step_state_free> {
public:
    explicit StepState(Network& net) : Handle(create(net)) {}

    void set_input(const float* input, const Shape& shape) {
        detail::check(loom_step_set_input(get(), input, shape.data(), detail::ndim(shape)));
    }
    void set_input(const std::vector<float>& input, const Shape& shape) {
        detail::expect_size(input.size(), shape, "step: input");
        set_input(input.data(), shape);
    }
    void step() { detail::check(loom_step(get())); }
    /// The output (count elements), or nothing while the pipeline is still filling.
    std::optional<std::vector<float>> output(size_t count) {
        std::vector<float> out(count);
        int ready = 0;
        detail::check(loom_step_output(get(), out.data(), out.size(), &ready));
        if (!ready) return std::nullopt;
        return out;
    }
    void backward(const std::vector<float>& grad_output, const Shape& shape) {
        detail::expect_size(grad_output.size(), shape, "step: grad_output");
        detail::check(loom_step_backward(get(), grad_output.data(), shape.data(), detail::ndim(shape)));
    }

private:
    static loom_step_state* create(Network& net) {
        loom_step_state* h = nullptr;
        detail::check(loom_step_state_create(net.get(), &h));
        return h;
    }
};

// --- tensors -----------------------------------------------------------------------------------

class Tensor : public Handle<LoomTensor, loom_tensor_free> {
public:
    explicit Tensor(LoomTensor* h) : Handle(detail::check_ptr(h)) {}

    /// A zero-filled tensor.
    static Tensor create(LoomDevice device, LoomDType dtype, const Dims& dims) {
        return Tensor(loom_tensor_create(device, dtype, dims.data(), static_cast<int>(dims.size())));
    }
    /// A CPU tensor over the caller's memory, no copy: `data` must outlive the tensor.
    static Tensor wrap(void* data, LoomDType dtype, const Dims& dims) {
        return Tensor(loom_tensor_wrap(data, dtype, dims.data(), static_cast<int>(dims.size())));
    }
    /// A float32 CPU tensor over a vector's memory (no copy; the vector must outlive the tensor and
    /// keep its size).
    static Tensor wrap(std::vector<float>& data, const Dims& dims) {
        size_t n = 1;
        for (size_t d : dims) n *= d;
        if (n != data.size())
            throw Error(LOOM_ERR_ARGUMENT, "wrap: the vector holds " + std::to_string(data.size()) +
                                               " floats; the dims need " + std::to_string(n));
        return wrap(data.data(), LOOM_FLOAT32, dims);
    }

    LoomDevice device() const { return info().device; }
    LoomDType dtype() const { return info().dtype; }
    Dims dims() const { return info().dims; }
    size_t size() const {
        size_t n = 1;
        for (size_t d : dims()) n *= d;
        return n;
    }

    /// The host view: the data (CPU) or a host copy as of the last sync() (CUDA).
    void* data() { return detail::check_ptr(loom_tensor_data(get())); }
    template <typename T>
    T* data() { return static_cast<T*>(data()); }
    /// Wait for the tensor's work; refresh a CUDA tensor's host copy.
    void sync() { detail::check(loom_tensor_sync(get())); }
    void fill(double value) { detail::check(loom_tensor_fill(get(), value)); }
    /// this = src (any device to any device; same dtype and size).
    void copy_from(const Tensor& src) { detail::check(loom_tensor_copy(get(), src.get())); }
    void set_stream(void* stream) { detail::check(loom_tensor_set_stream(get(), stream)); }

private:
    struct Info {
        LoomDevice device;
        LoomDType dtype;
        Dims dims;
    };
    Info info() const {
        Info i{LOOM_DEVICE_CPU, LOOM_FLOAT32, Dims(8)};
        int ndim = 0;
        detail::check(loom_tensor_info(get(), &i.device, &i.dtype, &ndim, i.dims.data(), 8));
        i.dims.resize(static_cast<size_t>(ndim));
        return i;
    }
};

/// C = op(A) op(B).
inline void gemm(const Tensor& A, const Tensor& B, Tensor& C, bool transA = false, bool transB = false) {
    detail::check(loom_tensor_gemm(A.get(), B.get(), C.get(), transA ? 1 : 0, transB ? 1 : 0));
}
/// out = the sum of A over axis.
inline void reduce_sum(const Tensor& A, Tensor& out, int axis) {
    detail::check(loom_tensor_reduce_sum(A.get(), out.get(), axis));
}

/// A float32 CSR matrix (the three arrays are copied).
class CSR : public Handle<LoomCSR, loom_csr_free> {
public:
    CSR(uint32_t rows, uint32_t cols, std::vector<uint32_t> row_ptr, std::vector<uint32_t> col_idx,
        std::vector<float> values)
        : Handle(detail::check_ptr(loom_csr_create(rows, cols, static_cast<uint32_t>(values.size()), row_ptr.data(),
                                                   col_idx.data(), values.data()))) {}
};
/// out = csr @ dense.
inline void spmm(const CSR& csr, const Tensor& dense, Tensor& out) {
    detail::check(loom_csr_spmm(csr.get(), dense.get(), out.get()));
}

/// The devices available (LOOM_DEVICE_CPU first).
inline std::vector<LoomDevice> devices() {
    LoomDevice found[4];
    int count = 4;
    detail::check(loom_device_query(found, &count));
    return std::vector<LoomDevice>(found, found + count);
}

}  // namespace loom

#endif  // LOOM_HPP

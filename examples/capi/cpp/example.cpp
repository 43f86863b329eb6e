// Loom from C++ through loom.hpp: build a 64-32-10 MLP from JSON, train it on the bundled digits,
// print the held-out accuracy and the weights' fingerprint, round-trip the network through bytes
// (and, given a path, a model file), take one optimizer step by hand, and check a tensor gemm and
// reduce_sum against plain loops.
//
//   loom capi build --out loom-capi
//   c++ -std=c++17 example.cpp -I. $(PKG_CONFIG_PATH=loom-capi pkg-config --cflags --libs loom) -o example
//   ./example [model.loom]
//
// In deterministic mode (the default) every number printed equals what the same calls give in
// Python (tests/capi/test_capi_examples.py checks them).
#include "loom.hpp"

#include <cstdio>
#include <string>
#include <vector>

static const char* CONFIG = R"({"loom": 1, "name": "digits-mlp", "seed": 0,
  "input": {"shape": [64]},
  "layers": [{"type": "dense", "units": 32, "activation": "relu"},
             {"type": "dense", "units": 10}]})";

static const char* SPEC = R"({"loss": "cross_entropy", "optimizer": {"type": "adam", "lr": 0.01},
  "epochs": 3, "batch_size": 32, "seed": 0})";

static int argmax(const float* row, int n) {
    int best = 0;
    for (int k = 1; k < n; ++k)
        if (row[k] > row[best]) best = k;
    return best;
}

static int run(int argc, char** argv) {
    std::printf("loom %s, deterministic %d\n", loom::version().c_str(), loom::deterministic() ? 1 : 0);

    loom::Network net = loom::Network::from_json(CONFIG);
    loom::Shape in = net.input_shape(), out = net.output_shape();
    std::printf("input [%lld] output [%lld]\n", (long long)in[0], (long long)out[0]);
    std::printf("%s\n", net.summary().c_str());
    std::printf("initial %s\n", net.fingerprint().c_str());

    // training on the digits: 64 pixels per image, class ids 0..9
    loom::Digits d = loom::digits_split(0.2, 0);
    const auto n_train = static_cast<int64_t>(d.n_train), n_test = static_cast<int64_t>(d.n_test);
    std::string history = net.train(SPEC, d.x_train, {n_train, 64}, d.y_train, {n_train});
    std::printf("history %s\n", history.c_str());

    net.set_training(false);
    std::vector<float> logits = net.forward(d.x_test, {n_test, 64});
    size_t right = 0;
    for (size_t i = 0; i < d.n_test; ++i) right += argmax(&logits[i * 10], 10) == d.y_test[i];
    std::printf("accuracy %.6f (%zu of %zu)\n", (double)right / (double)d.n_test, right, d.n_test);
    std::printf("first logits");
    for (int k = 0; k < 10; ++k) std::printf(" %.9g", logits[k]);
    std::printf("\n");
    const std::string trained = net.fingerprint();
    std::printf("trained %s\n", trained.c_str());

    // round trips: the same weights, the same outputs
    std::vector<uint8_t> bytes = net.to_bytes();
    loom::Network copy = loom::Network::from_bytes(bytes);
    if (copy.fingerprint() != trained) throw std::runtime_error("from_bytes changed the fingerprint");
    if (copy.forward(d.x_test, {n_test, 64}) != logits) throw std::runtime_error("the copy computes other logits");
    std::printf("bytes round trip ok (%zu bytes)\n", bytes.size());
    if (argc > 1) {
        net.save(argv[1]);
        if (loom::Network::load(argv[1]).fingerprint() != trained)
            throw std::runtime_error("save/load changed the fingerprint");
        std::printf("file round trip ok\n");
    }

    // one SGD step by hand on the copy: forward, backward of d(sum of outputs), apply
    {
        loom::Optimizer sgd(copy, R"({"type": "sgd", "lr": 0.1})");
        copy.set_training(true);
        std::vector<float> x(d.x_train.begin(), d.x_train.begin() + 8 * 64);
        std::vector<float> y = copy.forward(x, {8, 64});
        std::vector<float> dx = copy.backward(std::vector<float>(y.size(), 1.0f), {8, 10});
        copy.apply_gradients(sgd);
        std::printf("one sgd step: %zu input gradients, fingerprint %s\n", dx.size(),
                    copy.fingerprint() != trained ? "changed" : "UNCHANGED");
    }

    // tensors: C = A B (3x4 by 4x2) and the column sums of A, against loops
    const size_t M = 3, K = 4, N = 2;
    loom::Tensor A = loom::Tensor::create(LOOM_DEVICE_CPU, LOOM_FLOAT32, {M, K});
    float* a = A.data<float>();
    for (size_t i = 0; i < M * K; ++i) a[i] = 0.5f * (float)i - 2.0f;
    std::vector<float> b(K * N);
    for (size_t i = 0; i < K * N; ++i) b[i] = 0.25f * (float)(i % 5) + 1.0f;
    loom::Tensor B = loom::Tensor::wrap(b, {K, N});          // no copy: B is b's memory
    loom::Tensor C = loom::Tensor::create(LOOM_DEVICE_CPU, LOOM_FLOAT32, {M, N});
    C.fill(-1.0);
    loom::gemm(A, B, C);
    const float* c = C.data<float>();
    double worst = 0.0;
    for (size_t i = 0; i < M; ++i)
        for (size_t j = 0; j < N; ++j) {
            double want = 0.0;
            for (size_t k = 0; k < K; ++k) want += (double)a[i * K + k] * b[k * N + j];
            double diff = want - c[i * N + j];
            worst = diff < 0 ? (-diff > worst ? -diff : worst) : (diff > worst ? diff : worst);
        }
    std::printf("gemm [%zu, %zu] max |C - loop| %g\n", M, N, worst);
    loom::Tensor S = loom::Tensor::create(LOOM_DEVICE_CPU, LOOM_FLOAT32, {K});
    loom::reduce_sum(A, S, 0);
    bool sums = true;
    for (size_t k = 0; k < K; ++k) sums = sums && S.data<float>()[k] == a[k] + a[K + k] + a[2 * K + k];
    std::printf("reduce_sum %s\n", sums ? "ok" : "WRONG");
    return worst == 0.0 && sums ? 0 : 1;
}

int main(int argc, char** argv) {
    try {
        int status = run(argc, argv);
        std::printf("live handles %zu\n", loom::live_handles());      // every handle above freed itself
        return status;
    } catch (const loom::Error& e) {
        std::fprintf(stderr, "loom error %s (%d): %s\n", e.status(), e.code(), e.what());
    } catch (const std::exception& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
    }
    return 1;
}

"""The CUDA source of fast mode's row kernels (loom/backend/cuda/fused.py compiles it after its helpers and
ROW_HELPERS, with `typedef ... T` and, for the held variants, SOFTMAX_HELD): softmax rows and their gradients
(a block a row, a warp a row, a block holding the row in registers), layer and RMS norms and their gradients."""

ROWS_SOURCE = r"""
// y = exp(s - max) / sum over the row, s = x * scale. Entries j >= kept (softmax_kept) are masked: exactly 0
// and left out of the max and the sum (a row with none kept is all 0, as ops.softmax with a mask).
extern "C" __global__ void loom_softmax_rows(const T* __restrict__ x, T* __restrict__ y, long long rows,
                                             long long n, T scale, int causal, long long tq,
                                             long long offset) {
    __shared__ T red[32];
    for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
        const T* xr = x + r * n;
        T* yr = y + r * n;
        const long long kept = softmax_kept(r, n, causal, tq, offset);
        const T peak = softmax_peak(xr, kept, scale, red);
        T total = (T)0;
        for (long long j = threadIdx.x; j < kept; j += blockDim.x) {
            const T e = loom_exp(xr[j] * scale - peak);
            yr[j] = e;                // read back below by this same thread: no barrier needed
            total += e;
        }
        total = block_sum(total, red);
        for (long long j = threadIdx.x; j < kept; j += blockDim.x) yr[j] = yr[j] / total;
        for (long long j = kept + threadIdx.x; j < n; j += blockDim.x) yr[j] = (T)0;
    }
}

// dx = y * (dy - sum(dy * y)) over the row.
extern "C" __global__ void loom_softmax_grad_rows(const T* __restrict__ y, const T* __restrict__ dy,
                                                  T* __restrict__ dx, long long rows, long long n) {
    __shared__ T red[32];
    for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
        const T* yr = y + r * n;
        const T* dyr = dy + r * n;
        T dot = (T)0;
        for (long long j = threadIdx.x; j < n; j += blockDim.x) dot += dyr[j] * yr[j];
        dot = block_sum(dot, red);
        for (long long j = threadIdx.x; j < n; j += blockDim.x) dx[r * n + j] = yr[j] * (dyr[j] - dot);
    }
}

#ifdef SOFTMAX_HELD
// loom_softmax_rows / loom_softmax_grad_rows with each row held in registers, SOFTMAX_HELD entries a thread: by a
// warp (BLOCK false: entries lane + 32 i; eight rows a block of 256 threads) or by a block of 256 threads (entries
// threadIdx.x + 256 i). The row is read once and written once (the block kernels above read it two or three
// times and write the exponentials twice), which is most of their time: they are bound by memory.
template <bool BLOCK> __device__ __forceinline__ void loom_softmax_row_held(
        const T* __restrict__ xr, T* __restrict__ yr, long long kept, long long n, T scale, T* red) {
    const int first = BLOCK ? (int)threadIdx.x : (int)(threadIdx.x & 31), step = BLOCK ? 256 : 32;
    T v[SOFTMAX_HELD];
    T peak = loom_neg_inf((T)0);
    #pragma unroll
    for (int i = 0; i < SOFTMAX_HELD; ++i) {
        const long long j = first + step * i;
        v[i] = j < kept ? xr[j] * scale : (T)0;
        if (j < kept) peak = max_nan(peak, v[i]);
    }
    peak = BLOCK ? block_max(peak, red) : warp_reduce(peak, MaxNanOp());
    T total = (T)0;
    #pragma unroll
    for (int i = 0; i < SOFTMAX_HELD; ++i) {
        v[i] = first + step * i < kept ? loom_exp(v[i] - peak) : (T)0;
        total += v[i];
    }
    total = BLOCK ? block_sum(total, red) : warp_reduce(total, AddOp());
    #pragma unroll
    for (int i = 0; i < SOFTMAX_HELD; ++i) {
        const long long j = first + step * i;
        if (j < n) yr[j] = j < kept ? v[i] / total : (T)0;     // masked: +0 whatever the total (the block kernel's)
    }
}

template <bool BLOCK> __device__ __forceinline__ void loom_softmax_grad_row_held(
        const T* __restrict__ yr, const T* __restrict__ dyr, T* __restrict__ dxr, long long n, T* red) {
    const int first = BLOCK ? (int)threadIdx.x : (int)(threadIdx.x & 31), step = BLOCK ? 256 : 32;
    T yv[SOFTMAX_HELD], dv[SOFTMAX_HELD];
    T dot = (T)0;
    #pragma unroll
    for (int i = 0; i < SOFTMAX_HELD; ++i) {
        const long long j = first + step * i;
        yv[i] = j < n ? yr[j] : (T)0;
        dv[i] = j < n ? dyr[j] : (T)0;
        dot += dv[i] * yv[i];
    }
    dot = BLOCK ? block_sum(dot, red) : warp_reduce(dot, AddOp());
    #pragma unroll
    for (int i = 0; i < SOFTMAX_HELD; ++i) {
        const long long j = first + step * i;
        if (j < n) dxr[j] = yv[i] * (dv[i] - dot);
    }
}

extern "C" __global__ void __launch_bounds__(256) loom_softmax_rows_warp(
        const T* __restrict__ x, T* __restrict__ y, long long rows, long long n, T scale, int causal, long long tq,
        long long offset) {
    const long long warps = (long long)gridDim.x * (blockDim.x >> 5);
    for (long long r = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); r < rows; r += warps)
        loom_softmax_row_held<false>(x + r * n, y + r * n, softmax_kept(r, n, causal, tq, offset), n, scale, nullptr);
}

extern "C" __global__ void __launch_bounds__(256) loom_softmax_rows_held(
        const T* __restrict__ x, T* __restrict__ y, long long rows, long long n, T scale, int causal, long long tq,
        long long offset) {
    __shared__ T red[32];
    for (long long r = blockIdx.x; r < rows; r += gridDim.x)
        loom_softmax_row_held<true>(x + r * n, y + r * n, softmax_kept(r, n, causal, tq, offset), n, scale, red);
}

extern "C" __global__ void __launch_bounds__(256) loom_softmax_grad_rows_warp(
        const T* __restrict__ y, const T* __restrict__ dy, T* __restrict__ dx, long long rows, long long n) {
    const long long warps = (long long)gridDim.x * (blockDim.x >> 5);
    for (long long r = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); r < rows; r += warps)
        loom_softmax_grad_row_held<false>(y + r * n, dy + r * n, dx + r * n, n, nullptr);
}

extern "C" __global__ void __launch_bounds__(256) loom_softmax_grad_rows_held(
        const T* __restrict__ y, const T* __restrict__ dy, T* __restrict__ dx, long long rows, long long n) {
    __shared__ T red[32];
    for (long long r = blockIdx.x; r < rows; r += gridDim.x)
        loom_softmax_grad_row_held<true>(y + r * n, dy + r * n, dx + r * n, n, red);
}
#endif

// LayerNorm._forward: mu = sum(x) / n; var = sum((x - mu)^2) / n; rstd = 1 / sqrt(var + eps);
// xhat = (x - mu) * rstd; y = xhat (* w) (+ b). w and b are read only when has_w / has_b (else the caller
// passes another array as a stand-in pointer).
extern "C" __global__ void loom_layer_norm_rows(const T* __restrict__ x, const T* __restrict__ w,
                                                const T* __restrict__ b, T* __restrict__ y,
                                                T* __restrict__ xhat, T* __restrict__ rstd, long long rows,
                                                long long n, T eps, int has_w, int has_b) {
    __shared__ T red[32];
    for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
        const T* xr = x + r * n;
        T s = (T)0;
        for (long long j = threadIdx.x; j < n; j += blockDim.x) s += xr[j];
        const T mu = block_sum(s, red) / (T)n;
        T q = (T)0;
        for (long long j = threadIdx.x; j < n; j += blockDim.x) {
            const T c = xr[j] - mu;
            q += c * c;
        }
        const T var = block_sum(q, red) / (T)n;
        const T inv = (T)1 / loom_sqrt(var + eps);
        layer_norm_outputs(xr, mu, inv, w, b, y, xhat, rstd, r, n, has_w, has_b);
    }
}

// LayerNorm.backward (input part): g = dy (* w); dx = rstd * (g - mean(g) - xhat * mean(g * xhat)).
extern "C" __global__ void loom_layer_norm_grad_rows(const T* __restrict__ dy, const T* __restrict__ xhat,
                                                     const T* __restrict__ rstd, const T* __restrict__ w,
                                                     T* __restrict__ dx, long long rows, long long n,
                                                     int has_w) {
    __shared__ T red[32];
    for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
        const T* dyr = dy + r * n;
        const T* hr = xhat + r * n;
        T s = (T)0, sh = (T)0;
        for (long long j = threadIdx.x; j < n; j += blockDim.x) {
            const T g = has_w ? dyr[j] * w[j] : dyr[j];
            s += g;
            sh += g * hr[j];
        }
        const T mean_g = block_sum(s, red) / (T)n;
        const T mean_gh = block_sum(sh, red) / (T)n;
        const T inv = rstd[r];
        for (long long j = threadIdx.x; j < n; j += blockDim.x) {
            const T g = has_w ? dyr[j] * w[j] : dyr[j];
            dx[r * n + j] = inv * (g - mean_g - hr[j] * mean_gh);
        }
    }
}

// norm.rms_norm: rstd = 1 / sqrt(sum(x * x) / n + eps); xhat = x * rstd; y = xhat (* w).
extern "C" __global__ void loom_rms_norm_rows(const T* __restrict__ x, const T* __restrict__ w,
                                              T* __restrict__ y, T* __restrict__ xhat, T* __restrict__ rstd,
                                              long long rows, long long n, T eps, int has_w) {
    __shared__ T red[32];
    for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
        const T* xr = x + r * n;
        T q = (T)0;
        for (long long j = threadIdx.x; j < n; j += blockDim.x) q += xr[j] * xr[j];
        const T inv = (T)1 / loom_sqrt(block_sum(q, red) / (T)n + eps);
        for (long long j = threadIdx.x; j < n; j += blockDim.x) {
            const T h = xr[j] * inv;
            xhat[r * n + j] = h;
            if (has_w) y[r * n + j] = h * w[j];      // else y is xhat: not written
        }
        if (threadIdx.x == 0) rstd[r] = inv;
    }
}

// norm.rms_norm_backward (input part): g = dy (* w); dx = rstd * (g - xhat * mean(g * xhat)).
extern "C" __global__ void loom_rms_norm_grad_rows(const T* __restrict__ dy, const T* __restrict__ xhat,
                                                   const T* __restrict__ rstd, const T* __restrict__ w,
                                                   T* __restrict__ dx, long long rows, long long n, int has_w) {
    __shared__ T red[32];
    for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
        const T* dyr = dy + r * n;
        const T* hr = xhat + r * n;
        T sh = (T)0;
        for (long long j = threadIdx.x; j < n; j += blockDim.x) {
            const T g = has_w ? dyr[j] * w[j] : dyr[j];
            sh += g * hr[j];
        }
        const T mean_gh = block_sum(sh, red) / (T)n;
        const T inv = rstd[r];
        for (long long j = threadIdx.x; j < n; j += blockDim.x) {
            const T g = has_w ? dyr[j] * w[j] : dyr[j];
            dx[r * n + j] = inv * (g - hr[j] * mean_gh);
        }
    }
}
"""

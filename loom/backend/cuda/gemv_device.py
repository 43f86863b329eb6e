"""CUDA device functions that the block-quantized gemv (quant.py), the 16-bit gemv (half_gemv.py) and
decode's attention kernel (decode.py) compile into their sources.

They live apart from both gemv modules because quant.gemv dispatches to half_gemv, and half_gemv
compiles the same warp sums and row staging: kept in quant.py, the two modules imported each other.
"""

# float warp reductions (every lane gets the result), shared with decode's attention kernel, and
# the gemv kernels' merge of the warps sharing a row
WARP_REDUCTIONS = r"""
__device__ __forceinline__ float warp_sum(float s) {
    #pragma unroll
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    return s;
}
__device__ __forceinline__ float warp_max(float s) {
    #pragma unroll
    for (int o = 16; o > 0; o >>= 1) s = fmaxf(s, __shfl_xor_sync(0xffffffffu, s, o));
    return s;
}

// The products' sums where WPR warps share output rows: each warp's lanes summed, lane 0 of warp
// `local` writing partial[local], then slice 0 of each row adding its row's WPR partials in slice
// order into acc (the other slices' acc keep their own warp's sum). Every thread of the block calls
// it: there is a barrier.
template <int E, int M, int WPR_> __device__ __forceinline__ void merge_warps(
        float (&acc)[E][M], float (*partial)[E][M], int local, int slice, int lane) {
    #pragma unroll
    for (int e = 0; e < E; ++e)
        #pragma unroll
        for (int m = 0; m < M; ++m) {
            acc[e][m] = warp_sum(acc[e][m]);
            if (WPR_ > 1 && lane == 0) partial[local][e][m] = acc[e][m];
        }
    if (WPR_ > 1) {
        __syncthreads();
        if (slice == 0) {
            #pragma unroll
            for (int e = 0; e < E; ++e)
                #pragma unroll
                for (int m = 0; m < M; ++m) {
                    float s = partial[local][e][m];
                    for (int j = 1; j < WPR_; ++j) s += partial[local + j][e][m];
                    acc[e][m] = s;
                }
        }
    }
}
"""

STAGE_ROWS = r"""
// x [MR, cols] into shared memory x_s by the whole block (8 warps), times the norm weight aux when PRO is 1,
// and each row's RMSNorm factor in scale (1 without the prologue); squares_s: shared [MR][8]
__device__ __forceinline__ void stage_rows(const float* x, const float* aux, float* x_s, float (*squares_s)[8],
                                           int cols, float eps, float* scale) {
    const int lane = threadIdx.x & 31, local = threadIdx.x >> 5;
    float squares[MR];
    #pragma unroll
    for (int m = 0; m < MR; ++m) {
        squares[m] = 0.0f;
        for (int k = threadIdx.x; k < cols / 4; k += blockDim.x) {
            float4 v = ((const float4*)(x + m * cols))[k];
            if (PRO == 1) {
                squares[m] += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
                const float4 a = ((const float4*)aux)[k];
                v.x *= a.x; v.y *= a.y; v.z *= a.z; v.w *= a.w;
            }
            ((float4*)x_s)[m * cols / 4 + k] = v;
        }
        if (PRO == 1) {
            squares[m] = warp_sum(squares[m]);
            if (lane == 0) squares_s[m][local] = squares[m];
        }
    }
    __syncthreads();
    #pragma unroll
    for (int m = 0; m < MR; ++m) {
        float t = 0.0f;
        #pragma unroll
        for (int j = 0; j < 8; ++j) t += PRO == 1 ? squares_s[m][j] : 0.0f;
        scale[m] = PRO == 1 ? 1.0f / sqrtf(t / (float)cols + eps) : 1.0f;
    }
}
"""

/* CUDA's device vocabulary as plain C++ for the host, so generated kernels compile with g++ and run
   on the CPU (tests/kernels/cuda_host.py). Compile with -ffp-contract=off -fno-fast-math: every
   intrinsic is then exactly the one IEEE operation (or bit move) CUDA documents it to be. The launch
   is one block of one thread, so a kernel's grid-stride loop visits every element in order. */
#include <math.h>
#include <string.h>

#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__ __restrict

struct loom_dim3 { long long x; };
static const loom_dim3 blockIdx = {0}, threadIdx = {0}, blockDim = {1}, gridDim = {1};

static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fdiv_rn(float a, float b) { return a / b; }
static inline float __fsqrt_rn(float a) { return sqrtf(a); }
static inline double __dadd_rn(double a, double b) { return a + b; }
static inline double __dsub_rn(double a, double b) { return a - b; }
static inline double __dmul_rn(double a, double b) { return a * b; }
static inline double __ddiv_rn(double a, double b) { return a / b; }
static inline double __dsqrt_rn(double a) { return sqrt(a); }

#define LOOM_BITCAST(name, from, to) \
    static inline to name(from x) { to r; memcpy(&r, &x, sizeof r); return r; }
LOOM_BITCAST(__double_as_longlong, double, long long)
LOOM_BITCAST(__longlong_as_double, long long, double)
LOOM_BITCAST(__float_as_int, float, int)
LOOM_BITCAST(__int_as_float, int, float)
LOOM_BITCAST(__float_as_uint, float, unsigned int)
LOOM_BITCAST(__uint_as_float, unsigned int, float)

/* conversions: the IR guards float -> int ranges itself, so plain casts are exact here */
#define LOOM_CAST(name, from, to) static inline to name(from x) { return (to)x; }
LOOM_CAST(__double2float_rn, double, float)
LOOM_CAST(__int2float_rn, int, float)
LOOM_CAST(__int2double_rn, int, double)
LOOM_CAST(__ll2float_rn, long long, float)
LOOM_CAST(__ll2double_rn, long long, double)
LOOM_CAST(__uint2float_rn, unsigned int, float)
LOOM_CAST(__uint2double_rn, unsigned int, double)
LOOM_CAST(__ull2float_rn, unsigned long long, float)
LOOM_CAST(__ull2double_rn, unsigned long long, double)
LOOM_CAST(__float2int_rz, float, int)
LOOM_CAST(__float2uint_rz, float, unsigned int)
LOOM_CAST(__float2ll_rz, float, long long)
LOOM_CAST(__float2ull_rz, float, unsigned long long)
LOOM_CAST(__double2int_rz, double, int)
LOOM_CAST(__double2uint_rz, double, unsigned int)
LOOM_CAST(__double2ll_rz, double, long long)
LOOM_CAST(__double2ull_rz, double, unsigned long long)

/* bit counts: the hardware instruction's result, the set bits of the 32 or 64-bit pattern */
static inline int __popc(unsigned int x) { return __builtin_popcount(x); }
static inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }

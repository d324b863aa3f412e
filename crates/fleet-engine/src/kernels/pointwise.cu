// Element-wise kernels that replace chains of candle ops.

// diffusers' GEGLU: y[r, i] = x[r, i] · gelu(x[r, inner + i]) with the exact (erf) GELU, for
// x [rows, 2·inner] → y [rows, inner]; candle's ops made a strided GELU copy and a strided
// multiply. Grid (rows, chunks of a row).
#define GEGLU(NAME, T, LOAD, STORE)                                                              \
    extern "C" __global__ void NAME(const T* x, T* y, int inner) {                               \
        long long row = blockIdx.x;                                                              \
        const T* xr = x + row * 2 * inner;                                                       \
        T* yr = y + row * inner;                                                                 \
        for (int i = blockIdx.y * blockDim.x + threadIdx.x; i < inner;                           \
             i += gridDim.y * blockDim.x) {                                                      \
            float h = LOAD(xr, i), g = LOAD(xr, inner + i);                                      \
            STORE(yr, i, h * (0.5f * g * (1.f + erff(g * 0.70710678118654752f))));               \
        }                                                                                        \
    }

GEGLU(geglu_f32, float, load_f32, store_f32)
GEGLU(geglu_f16, u16, load_f16, store_f16)
GEGLU(geglu_bf16, u16, load_bf16, store_bf16)

// y[n, c, …] += bias[c] in place over contiguous NCHW: a convolution's bias. Grid (planes,
// chunks of a plane), one channel's bias per block row.
#define CHANNEL_BIAS(NAME, T, LOAD, STORE)                                                       \
    extern "C" __global__ void NAME(T* y, const T* bias, int spatial, int channels) {            \
        int plane = blockIdx.x;                                                                  \
        float b = LOAD(bias, plane % channels);                                                  \
        T* yp = y + (long long)plane * spatial;                                                  \
        for (int i = blockIdx.y * blockDim.x + threadIdx.x; i < spatial;                         \
             i += gridDim.y * blockDim.x) {                                                      \
            STORE(yp, i, LOAD(yp, i) + b);                                                       \
        }                                                                                        \
    }

CHANNEL_BIAS(channel_bias_f32, float, load_f32, store_f32)
CHANNEL_BIAS(channel_bias_f16, u16, load_f16, store_f16)
CHANNEL_BIAS(channel_bias_bf16, u16, load_bf16, store_bf16)

// Loads and stores of the engine's CUDA kernels, computing in f32 whatever the tensor's dtype.
// No headers, so NVRTC needs no include path: f16 converts through PTX instructions, bf16 through
// bit shifts. Compiled together with the kernel files (src/cuda_kernels.rs).

typedef unsigned short u16;

__device__ __forceinline__ float load_f32(const float* p, long long i) { return p[i]; }
__device__ __forceinline__ void store_f32(float* p, long long i, float v) { p[i] = v; }

__device__ __forceinline__ float load_f16(const u16* p, long long i) {
    float f;
    asm("{ cvt.f32.f16 %0, %1; }" : "=f"(f) : "h"(p[i]));
    return f;
}
__device__ __forceinline__ void store_f16(u16* p, long long i, float v) {
    u16 h;
    asm("{ cvt.rn.f16.f32 %0, %1; }" : "=h"(h) : "f"(v));
    p[i] = h;
}

__device__ __forceinline__ float load_bf16(const u16* p, long long i) {
    return __uint_as_float(((unsigned)p[i]) << 16);
}
__device__ __forceinline__ void store_bf16(u16* p, long long i, float v) {
    unsigned u = __float_as_uint(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) {  // NaN stays NaN (rounding could carry it to Inf)
        p[i] = (u16)((u >> 16) | 0x40u);
        return;
    }
    u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
    p[i] = (u16)(u >> 16);
}

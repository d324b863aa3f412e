// GroupNorm, optionally followed by SiLU, over contiguous NCHW tensors.
//
// Three launches instead of candle's dozen element-wise passes in f32:
//   gn_stats_*   grid (splits, groups): each block sums (x − shift) and (x − shift)² over one chunk
//                of one group (a group is one contiguous run of channels × positions), shift being
//                the group's first value so the f32 sums do not cancel when the mean is large;
//   gn_finalize  one thread per group: the chunks' sums added in f64 → mean and 1/√(var + eps);
//   gn_apply_*   grid (planes, chunks): y = x·scale + shift per channel plane, SiLU when asked.

// Sums *a and *b over the block (blockDim.x a multiple of 32); thread 0 holds the totals.
__device__ __forceinline__ void block_sum2(float* a, float* b) {
    __shared__ float sa[32], sb[32];
    float x = *a, y = *b;
    for (int off = 16; off > 0; off >>= 1) {
        x += __shfl_down_sync(0xffffffffu, x, off);
        y += __shfl_down_sync(0xffffffffu, y, off);
    }
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (lane == 0) {
        sa[warp] = x;
        sb[warp] = y;
    }
    __syncthreads();
    if (warp == 0) {
        int warps = blockDim.x >> 5;
        x = lane < warps ? sa[lane] : 0.f;
        y = lane < warps ? sb[lane] : 0.f;
        for (int off = 16; off > 0; off >>= 1) {
            x += __shfl_down_sync(0xffffffffu, x, off);
            y += __shfl_down_sync(0xffffffffu, y, off);
        }
    }
    *a = x;
    *b = y;
}

// partial[(group · splits + split) · 3 + {0, 1, 2}] = Σ(x − shift), Σ(x − shift)², shift.
#define GN_STATS(NAME, T, LOAD)                                                                  \
    extern "C" __global__ void NAME(const T* x, float* partial, long long group_len,             \
                                    long long chunk) {                                           \
        long long group = blockIdx.y, split = blockIdx.x, splits = gridDim.x;                    \
        const T* xg = x + group * group_len;                                                     \
        float shift = LOAD(xg, 0);                                                               \
        long long start = split * chunk;                                                         \
        long long end = start + chunk < group_len ? start + chunk : group_len;                   \
        float s = 0.f, s2 = 0.f;                                                                 \
        for (long long i = start + threadIdx.x; i < end; i += blockDim.x) {                     \
            float d = LOAD(xg, i) - shift;                                                       \
            s += d;                                                                              \
            s2 += d * d;                                                                         \
        }                                                                                        \
        block_sum2(&s, &s2);                                                                     \
        if (threadIdx.x == 0) {                                                                  \
            float* out = partial + (group * splits + split) * 3;                                 \
            out[0] = s;                                                                          \
            out[1] = s2;                                                                         \
            out[2] = shift;                                                                      \
        }                                                                                        \
    }

GN_STATS(gn_stats_f32, float, load_f32)
GN_STATS(gn_stats_f16, u16, load_f16)
GN_STATS(gn_stats_bf16, u16, load_bf16)

// stats[group · 2 + {0, 1}] = mean, 1/√(var + eps), the variance the biased one torch uses.
extern "C" __global__ void gn_finalize(const float* partial, float* stats, int groups, int splits,
                                       long long group_len, float eps) {
    int group = blockIdx.x * blockDim.x + threadIdx.x;
    if (group >= groups) return;
    const float* p = partial + (long long)group * splits * 3;
    double s = 0.0, s2 = 0.0;
    for (int i = 0; i < splits; ++i) {
        s += p[i * 3];
        s2 += p[i * 3 + 1];
    }
    double n = (double)group_len, mean = s / n, var = s2 / n - mean * mean;
    if (var < 0.0) var = 0.0;
    stats[group * 2] = (float)((double)p[2] + mean);
    stats[group * 2 + 1] = (float)(1.0 / sqrt(var + (double)eps));
}

// One block row per (image, channel) plane: grid (planes, chunks of the plane).
#define GN_APPLY(NAME, T, LOAD, STORE)                                                           \
    extern "C" __global__ void NAME(const T* x, const T* weight, const T* bias,                  \
                                    const float* stats, T* y, int spatial, int channels,         \
                                    int per_group, int silu) {                                   \
        int plane = blockIdx.x, channel = plane % channels, group = plane / per_group;           \
        float scale = stats[group * 2 + 1] * LOAD(weight, channel);                              \
        float shift = LOAD(bias, channel) - stats[group * 2] * scale;                            \
        const T* xp = x + (long long)plane * spatial;                                            \
        T* yp = y + (long long)plane * spatial;                                                  \
        for (int i = blockIdx.y * blockDim.x + threadIdx.x; i < spatial;                         \
             i += gridDim.y * blockDim.x) {                                                      \
            float v = LOAD(xp, i) * scale + shift;                                               \
            if (silu) v = v / (1.f + __expf(-v));                                                \
            STORE(yp, i, v);                                                                     \
        }                                                                                        \
    }

GN_APPLY(gn_apply_f32, float, load_f32, store_f32)
GN_APPLY(gn_apply_f16, u16, load_f16, store_f16)
GN_APPLY(gn_apply_bf16, u16, load_bf16, store_bf16)

/* Why C: these loops are most of what msgen does between matrix products, and they run
   about three times faster 8 lanes wide with fused multiply-add (GELU: 0.49 s → 0.17 s
   when scoring 51,739 tokens on one thread). Swift compiles for the
   baseline x86-64 target (SSE, no FMA) and SwiftPM allows no per-target -mavx2 for a
   package others depend on; C's per-function target attribute needs no flag. Each loop
   is written once, on GCC/Clang vector types, and compiled into an AVX2 + FMA copy and
   a baseline copy; a CPU check picks one. No library offers a vector erf or a fused
   max/Σexp over float32 rows (OpenBLAS has neither; libm's are scalar). */
#include "cvector.h"

/* The small vector helpers below are always inlined, so no AVX-sized value crosses a
   call boundary: the ABI notes clang would print for them do not apply. */
#pragma clang diagnostic ignored "-Wpsabi"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef float v8f __attribute__((vector_size(32)));
typedef int v8i __attribute__((vector_size(32)));

#define INLINE static inline __attribute__((always_inline))

INLINE v8f load(const float *p) { v8f v; memcpy(&v, p, sizeof v); return v; }
INLINE void store(float *p, v8f v) { memcpy(p, &v, sizeof v); }
INLINE v8f splat(float a) { return (v8f){a, a, a, a, a, a, a, a}; }
INLINE v8f blend(v8i mask, v8f a, v8f b) { return (v8f)((mask & (v8i)a) | (~mask & (v8i)b)); }
INLINE v8f vmax(v8f a, v8f b) { return blend(a > b, a, b); }
INLINE float hsum(v8f v) { return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7])); }

/* e^x for x ≤ 0: x = n·ln2 + r with |r| ≤ ln2/2, e^r by its Taylor series to r⁶
   (relative error ~1e-7), 2^n put straight into the exponent bits. */
INLINE v8f exp8(v8f x) {
    x = blend(x < -87.f, splat(-87.f), x);  /* (NaN stays NaN) */
    /* Round to the nearest whole number by adding and subtracting 1.5·2^23. */
    v8f n = (x * 1.44269504088896341f + 12582912.f) - 12582912.f;
    v8f r = x - n * 0.693145751953125f - n * 1.428606765330187e-06f;
    v8f p = r * (1.f / 720) + 1.f / 120;
    p = p * r + 1.f / 24;
    p = p * r + 1.f / 6;
    p = p * r + 0.5f;
    p = p * r + 1.f;
    p = p * r + 1.f;
    v8i e = (__builtin_convertvector(n, v8i) + 127) << 23;
    return p * (v8f)e;
}

/* erf, Abramowitz & Stegun 7.1.26 (absolute error ≤ 1.5e-7). */
INLINE v8f erf8(v8f z) {
    v8i sign = (v8i)z & (v8i)splat(-0.f);
    v8f a = (v8f)((v8i)z ^ sign);
    v8f t = 1.f / (1.f + 0.3275911f * a);
    v8f p = 1.061405429f * t - 1.453152027f;
    p = p * t + 1.421413741f;
    p = p * t - 0.284496736f;
    p = p * t + 0.254829592f;
    v8f y = 1.f - p * t * exp8(-(a * a));
    return (v8f)((v8i)y ^ sign);
}

INLINE void gelu(float *x, long n) {
    long i = 0;
    for (; i + 8 <= n; i += 8) {
        v8f v = load(x + i);
        store(x + i, 0.5f * v * (1.f + erf8(v * 0.70710678118654752f)));
    }
    if (i < n) {  /* the tail through the same formula, in a padded vector */
        float tail[8] = {0};
        memcpy(tail, x + i, (size_t)(n - i) * sizeof(float));
        v8f v = load(tail);
        store(tail, 0.5f * v * (1.f + erf8(v * 0.70710678118654752f)));
        memcpy(x + i, tail, (size_t)(n - i) * sizeof(float));
    }
}

/* GPT-2's GELU, v·(1 + tanh(√(2/π)·(v + 0.044715·v³)))/2, with tanh|u| = (1 − e)/(1 + e)
   for e = e^(−2|u|) ≤ 1 (so exp8 never overflows) and tanh's sign put back. The error
   in tanh is absolute (~1e-7), so relative to the output it is float rounding. */
INLINE v8f gelu_tanh8(v8f v) {
    v8f u = 0.79788456080286536f * (v + 0.044715f * v * v * v);
    v8i sign = (v8i)u & (v8i)splat(-0.f);
    v8f e = exp8(-2.f * (v8f)((v8i)u ^ sign));
    v8f t = (v8f)((v8i)((1.f - e) / (1.f + e)) ^ sign);
    return 0.5f * v * (1.f + t);
}
INLINE void gelu_tanh(float *x, long n) {
    long i = 0;
    for (; i + 8 <= n; i += 8) store(x + i, gelu_tanh8(load(x + i)));
    if (i < n) {  /* the tail through the same formula, in a padded vector */
        float tail[8] = {0};
        memcpy(tail, x + i, (size_t)(n - i) * sizeof(float));
        store(tail, gelu_tanh8(load(tail)));
        memcpy(x + i, tail, (size_t)(n - i) * sizeof(float));
    }
}
INLINE float maximum(const float *x, long n) {
    v8f acc = splat(-INFINITY);
    long i = 0;
    for (; i + 8 <= n; i += 8) acc = vmax(load(x + i), acc);
    float m = acc[0];
    for (int k = 1; k < 8; k++) m = acc[k] > m ? acc[k] : m;
    for (; i < n; i++) m = x[i] > m ? x[i] : m;
    return m;
}

INLINE double sum_exp(const float *x, long n, float m) {
    v8f acc = splat(0), vm = splat(m);
    double total = 0;
    long i = 0;
    for (int k = 0; i + 8 <= n; i += 8) {
        acc += exp8(load(x + i) - vm);
        if (++k == 64) { total += hsum(acc); acc = splat(0); k = 0; }
    }
    total += hsum(acc);
    for (; i < n; i++) total += expf(x[i] - m);
    return total;
}

/* x = e^(x − m) in place; returns Σ of the new x. */
INLINE float exp_sum(float *x, long n, float m) {
    v8f acc = splat(0), vm = splat(m);
    long i = 0;
    for (; i + 8 <= n; i += 8) {
        v8f e = exp8(load(x + i) - vm);
        store(x + i, e);
        acc += e;
    }
    float s = hsum(acc);
    for (; i < n; i++) { x[i] = expf(x[i] - m); s += x[i]; }
    return s;
}

INLINE void softmax(float *x, long n) {
    float inv = 1 / exp_sum(x, n, maximum(x, n));
    for (long i = 0; i < n; i++) x[i] *= inv;
}

INLINE void layer_norm(const float *x, float *y, long n, const float *w, const float *b, float eps) {
    v8f acc = splat(0);
    long i = 0;
    for (; i + 8 <= n; i += 8) acc += load(x + i);
    float s = hsum(acc);
    for (; i < n; i++) s += x[i];
    float mean = s / n;
    v8f vmean = splat(mean);
    acc = splat(0);
    for (i = 0; i + 8 <= n; i += 8) { v8f d = load(x + i) - vmean; acc += d * d; }
    float var = hsum(acc);
    for (; i < n; i++) var += (x[i] - mean) * (x[i] - mean);
    float inv = 1 / sqrtf(var / n + eps);
    for (i = 0; i + 8 <= n; i += 8) store(y + i, (load(x + i) - vmean) * inv * load(w + i) + load(b + i));
    for (; i < n; i++) y[i] = (x[i] - mean) * inv * w[i] + b[i];
}

/* Inserts candidate i into best[0..*len) (largest first, ties: the smaller id first, so
   ids come in ascending), keeping at most k. NaN never enters: it orders with nothing. */
INLINE void top_insert(const float *x, long i, long k, long *best, long *len) {
    if (x[i] != x[i] || (*len == k && !(x[i] > x[best[k - 1]]))) return;
    long at = *len < k ? (*len)++ : k - 1;
    while (at > 0 && x[best[at - 1]] < x[i]) { best[at] = best[at - 1]; at--; }
    best[at] = i;
}

/* The k-th largest of a[0..n) (1 ≤ k ≤ n, no NaN), reordering a: Wirth's selection. */
static float kth_largest(float *a, long n, long k) {
    long lo = 0, hi = n - 1, target = k - 1;
    while (lo < hi) {
        float pivot = a[target];
        long i = lo, j = hi;
        do {
            while (a[i] > pivot) i++;
            while (pivot > a[j]) j--;
            if (i <= j) { float t = a[i]; a[i] = a[j]; a[j] = t; i++; j--; }
        } while (i <= j);
        if (j < target) lo = i;
        if (target < i) hi = j;
    }
    return a[target];
}

/* A threshold t no higher than the k-th largest value: the k-th largest of the maxima of
   chunks of 32 (those k maxima are k distinct values ≥ t). Then only the values ≥ t (a few
   more than k: the chunks whose maximum reaches t), eight compared at a time, go through
   the insertion into the sorted list of k, in ascending id order. Rows of fewer than 2k
   chunks, or with a NaN maximum, take every value through the insertion. */
INLINE long top_k(const float *x, long n, long k, long *best) {
    enum { CHUNK = 32, STACK_CHUNKS = 2048 }; /* (on the stack up to 65,536 values: no allocation per token) */
    long len = 0, chunks = (n + CHUNK - 1) / CHUNK;
    if (k <= 0 || n <= 0) return 0;
    float stack[STACK_CHUNKS];
    float *maxima = chunks < 2 * k ? NULL : chunks <= STACK_CHUNKS ? stack : malloc((size_t)chunks * sizeof(float));
    int ordered = maxima != NULL;
    for (long c = 0; ordered && c < chunks; c++) {
        long len_c = n - c * CHUNK < CHUNK ? n - c * CHUNK : CHUNK;
        maxima[c] = maximum(x + c * CHUNK, len_c);
        if (maxima[c] != maxima[c]) ordered = 0;
    }
    float t = ordered ? kth_largest(maxima, chunks, k) : 0;
    if (maxima != stack) free(maxima);
    if (!ordered) {
        for (long i = 0; i < n; i++) top_insert(x, i, k, best, &len);
        return len;
    }
    v8f vt = splat(t);
    long i = 0;
    for (; i + 8 <= n; i += 8) {
        v8i above = (v8i)(load(x + i) >= vt);
        int any = 0;
        for (int j = 0; j < 8; j++) any |= above[j];
        if (any)
            for (long j = i; j < i + 8; j++)
                if (x[j] >= t) top_insert(x, j, k, best, &len);
    }
    for (; i < n; i++)
        if (x[i] >= t) top_insert(x, i, k, best, &len);
    return len;
}

/* Which copies run: a level (MSGEN_LEVEL_*, cvector.h), per thread, so that a test can
   check a lower copy without changing what other threads run. -1: not yet asked. The
   element-wise loops here have two copies: AVX2 + FMA from MSGEN_LEVEL_AVX2 up, and the
   baseline one (their 8-lane loops gain nothing from AVX-512); linear.c has more. */
static _Thread_local int level = -1;
#if defined(__x86_64__)
#define AVX2 __attribute__((target("avx2,fma")))
/* The best level this CPU (and its OS, which must save the wide registers: the
   compiler's check includes that) runs. Asked once; the answer never changes. */
int msgen_cpu_level(void) {
    static int cached = -1;  /* threads may race to fill it in: they all store the same value */
    int best = __atomic_load_n(&cached, __ATOMIC_RELAXED);
    if (best < 0) {
        int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
        int avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                     __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
        int vnni = avx512 && __builtin_cpu_supports("avx512vnni");
        best = vnni ? MSGEN_LEVEL_AVX512_VNNI : avx512 ? MSGEN_LEVEL_AVX512 : avx2 ? MSGEN_LEVEL_AVX2 : MSGEN_LEVEL_BASELINE;
        __atomic_store_n(&cached, best, __ATOMIC_RELAXED);
    }
    return best;
}
#else
#define AVX2
int msgen_cpu_level(void) { return MSGEN_LEVEL_BASELINE; }
#endif
int msgen_vector_level(void) {
    if (level < 0) level = msgen_cpu_level();
    return level;
}
void msgen_vector_set_level(int wanted) {
    int best = msgen_cpu_level();
    level = wanted < MSGEN_LEVEL_BASELINE ? MSGEN_LEVEL_BASELINE : wanted > best ? best : wanted;
}
#define PICK(avx2_call, base_call) (msgen_vector_level() >= MSGEN_LEVEL_AVX2 ? (avx2_call) : (base_call))

/* Each kernel twice, an AVX2 + FMA copy (x86-64 only) and a baseline one, and the
   exported function that picks one. */
#define TWO_COPIES(ret, exported, kernel, params, args)                         \
    AVX2 static ret kernel##_avx2 params { return kernel args; }                \
    static ret kernel##_base params { return kernel args; }                     \
    ret exported params { return PICK(kernel##_avx2 args, kernel##_base args); }
/* The same for kernels that return nothing (C allows no `return` of a void call). */
#define TWO_COPIES_VOID(exported, kernel, params, args)                          \
    AVX2 static void kernel##_avx2 params { kernel args; }                      \
    static void kernel##_base params { kernel args; }                           \
    void exported params { PICK(kernel##_avx2 args, kernel##_base args); }

TWO_COPIES_VOID(msgen_gelu, gelu, (float *x, long n), (x, n))
TWO_COPIES_VOID(msgen_gelu_tanh, gelu_tanh, (float *x, long n), (x, n))
TWO_COPIES(float, msgen_max, maximum, (const float *x, long n), (x, n))
TWO_COPIES(double, msgen_sum_exp, sum_exp, (const float *x, long n, float m), (x, n, m))
TWO_COPIES(float, msgen_exp_sum, exp_sum, (float *x, long n, float m), (x, n, m))
TWO_COPIES(long, msgen_top_k, top_k, (const float *x, long n, long k, long *ids), (x, n, k, ids))
TWO_COPIES_VOID(msgen_softmax, softmax, (float *x, long n), (x, n))
TWO_COPIES_VOID(msgen_layer_norm, layer_norm, (const float *x, float *y, long n, const float *w, const float *b, float eps),
                (x, y, n, w, b, eps))

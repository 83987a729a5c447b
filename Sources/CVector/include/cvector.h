#ifndef MSGEN_CVECTOR_H
#define MSGEN_CVECTOR_H

/* The element-wise loops between msgen's matrix products (GELU, LayerNorm, max, Σ exp,
   softmax) and the weight-matrix kernels, each compiled into copies for several CPU
   levels, one chosen at run time. Called only through MSKernels (Kernels.swift). */

/* x = x·Φ(x), exact (erf) GELU, in place. */
void msgen_gelu(float *x, long n);
/* x = GELU's tanh approximation (GPT-2's) of x, in place. */
void msgen_gelu_tanh(float *x, long n);
/* The largest of n > 0 values. */
float msgen_max(const float *x, long n);
/* Σ e^(x[i] − m) for m ≥ every x[i], partial sums widened to double as they grow. */
double msgen_sum_exp(const float *x, long n, float m);
/* softmax in place: e^(x − max) / Σ. */
void msgen_softmax(float *x, long n);
/* One row of LayerNorm: y = (x − mean)/√(var + eps)·w + b over n values. */
void msgen_layer_norm(const float *x, float *y, long n, const float *w, const float *b, float eps);

/* Which compiled copy of a kernel runs. Each level includes the ones below it. */
enum {
    MSGEN_LEVEL_BASELINE = 0,    /* plain x86-64 (SSE2), or any other CPU */
    MSGEN_LEVEL_AVX2 = 1,        /* AVX2 + FMA + F16C */
    MSGEN_LEVEL_AVX512 = 2,      /* + AVX-512 F/BW/VL/DQ: 16-float vectors */
    MSGEN_LEVEL_AVX512_VNNI = 3, /* + AVX-512 VNNI: q8 dot products by vpdpbusd */
};
/* The best level this CPU runs. */
int msgen_cpu_level(void);
/* The level the calling thread runs (by default msgen_cpu_level()). */
int msgen_vector_level(void);
/* Sets the calling thread's level, clamped to what the CPU runs. For tests, which check
   every copy. */
void msgen_vector_set_level(int level);

/* ---- Weight matrices in their stored type (linear.c) ----
   W is [n rows (outputs), k columns (inputs)], row j at w + j·row_bytes, elements in
   `type`: f32, IEEE half, bfloat16, or q8 (blocks of 32 along a row, each a half scale d
   then 32 int8 q: value d·q; k % 32 == 0). Every function takes the level to run
   explicitly (clamped to the CPU's), so that worker threads run the caller's copy. */
enum { MSGEN_WEIGHT_F32 = 0, MSGEN_WEIGHT_F16 = 1, MSGEN_WEIGHT_BF16 = 2, MSGEN_WEIGHT_Q8 = 3 };

/* For j in [j0, j1) and r < nx: y[r·ldy + j] (= or +=) Σ_i x[r·ldx + i]·W[j, i] (+ bias[j]).
   Each weight row is read once for up to 8 rows of x. f32, f16 and bf16 only. */
void msgen_matvec(int level, int type, const void *w, long row_bytes, long k, long j0, long j1,
                  const float *x, long ldx, long nx, const float *bias, float *y, long ldy, int accumulate);
/* x's nx rows of k (k % 32 == 0) values as q8 blocks: q[r·k + i], and per block a float
   scale d[r·k/32 + b] = max |x| of the block / 127, q = round(x/d). */
void msgen_quantize_q8(const float *x, long ldx, long nx, long k, signed char *q, float *d);
/* msgen_matvec for q8 weights, x given quantised (msgen_quantize_q8): Σ over blocks of
   d_w·d_x·Σ q_w·q_x, the inner sums exact in int32. */
void msgen_matvec_q8(int level, const void *w, long row_bytes, long k, long j0, long j1,
                     const signed char *xq, const float *xd, long nx, const float *bias, float *y, long ldy,
                     int accumulate);
/* `rows` rows of W (any type) widened to f32: out[r·k + i] = W[r, i]. */
void msgen_widen(int level, int type, const void *w, long row_bytes, long k, long rows, float *out);
/* Reads `bytes` (a multiple of 256) from p with the level's widest loads and returns
   a value depending on all of them (so that the reads cannot be left out): for
   measuring memory bandwidth. */
long msgen_read_sum(int level, const void *p, long bytes);

#endif

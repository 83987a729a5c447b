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
/* x = e^(x − m) in place (m ≥ every x[i]); returns Σ of the new values. */
float msgen_exp_sum(float *x, long n, float m);
/* The ids of the k largest of n values into ids[0..k), largest first, ties to the smaller
   id, NaN never; returns how many (k, or fewer when fewer values are not NaN). */
long msgen_top_k(const float *x, long n, long k, long *ids);
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
   W is read from memory once for all nx rows of x. f32, f16 and bf16 only. */
void msgen_matvec(int level, int type, const void *w, long row_bytes, long k, long j0, long j1,
                  const float *x, long ldx, long nx, const float *bias, float *y, long ldy, int accumulate);
/* c[m, n] = alpha·a[m, k]·b + beta·c (row-major; b as [k, n], or as n rows of k when
   transposed_b; beta 0 never reads c): msgen's own matrix product, for where OpenBLAS
   has no kernels for the CPU's vector width (Kernels.gemm decides). */
void msgen_gemm(int level, long m, long n, long k, float alpha, const float *a, long lda, const float *b, long ldb,
                int transposed_b, float beta, float *c, long ldc);
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
/* Attention of one query over rows [j0, j1) of a cache, all H heads: head h's query,
   keys, values and output are the head_dim values from h·head_dim of their rows (rows
   key_stride / value_stride floats apart). With s_j = q_h·k_j,h · scale, per head:
   m[h] = max s_j, l[h] = Σ e^(s_j − m[h]) and out[h·head_dim …] = Σ e^(s_j − m[h])·v_j,h,
   not yet divided by l[h] (msgen_attend_combine does that, for one part or several);
   scores holds H·(j1 − j0) floats. */
void msgen_attend_part(int level, const float *q, const float *keys, long key_stride, const float *values,
                       long value_stride, long j0, long j1, long H, long head_dim, float scale, float *scores,
                       float *out, float *m, float *l);
/* Attention of one query over the n rows of a ring (local attention's window), all H
   heads, normalised: row j (0 ≤ j < n) is row (first + j) mod ring of keys and values
   (rows `stride` floats apart), and its key is that row plus row j of key_add (rows
   key_add_stride apart; the window positions' part of the keys). scores holds H·n floats. */
void msgen_attend_ring(int level, const float *q, const float *keys, const float *values, long stride, long ring,
                       long first, const float *key_add, long key_add_stride, long n, long H, long head_dim, float scale,
                       float *scores, float *out);
/* `parts` results of msgen_attend_part over consecutive row ranges (part p's out at
   outs + p·H·head_dim, its m and l at ms + p·H, ls + p·H) combined into the softmax-
   weighted sum over all the rows: out[h·head_dim …] = Σ_p e^(m_p − m)·out_p / Σ_p e^(m_p − m)·l_p
   with m the largest m_p. Zero for a head with no rows (l = 0). */
void msgen_attend_combine(long parts, long H, long head_dim, const float *outs, const float *ms, const float *ls,
                          float *out);
/* Reads `bytes` (a multiple of 256) from p with the level's widest loads and returns
   a value depending on all of them (so that the reads cannot be left out): for
   measuring memory bandwidth. */
long msgen_read_sum(int level, const void *p, long bytes);

/* ---- Worker threads (pool.c) ----
   msgen_pool_run calls f(context, w, workers) once for each w in [0, workers): w = 0 on
   the calling thread, the others on persistent worker threads, and returns `workers`
   when all have returned. It returns 0 without calling f when workers < 2 or another
   loop is running (a nested call, or a second thread): the caller then runs the loop
   itself. */
typedef void (*msgen_pool_task)(void *context, long worker, long workers);
int msgen_pool_run(long workers, msgen_pool_task f, void *context);

#endif

#ifndef MSGEN_CVECTOR_H
#define MSGEN_CVECTOR_H

/* The element-wise loops between msgen's matrix products (GELU, LayerNorm, max, Σ exp,
   softmax), compiled twice: for AVX2 + FMA, chosen at run time when the CPU has them,
   and for the baseline target. Called only through MSKernels (Kernels.swift). */

/* x = x·Φ(x), exact (erf) GELU, in place. */
void msgen_gelu(float *x, long n);
/* The largest of n > 0 values. */
float msgen_max(const float *x, long n);
/* Σ e^(x[i] − m) for m ≥ every x[i], partial sums widened to double as they grow. */
double msgen_sum_exp(const float *x, long n, float m);
/* softmax in place: e^(x − max) / Σ. */
void msgen_softmax(float *x, long n);
/* One row of LayerNorm: y = (x − mean)/√(var + eps)·w + b over n values. */
void msgen_layer_norm(const float *x, float *y, long n, const float *w, const float *b, float eps);
/* Whether the AVX2 + FMA copies run (by default: when this CPU has AVX2 and FMA). */
int msgen_vector_avx2(void);
/* Turns the AVX2 + FMA copies off (0) or back on where the CPU has them, for the calling
   thread only. For tests, which check both copies. */
void msgen_vector_set_avx2(int on);

#endif

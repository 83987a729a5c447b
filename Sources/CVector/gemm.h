/* A plain matrix–matrix product, written once and included by linear.c once per CPU
   level (next to linear_float.h, with the same macros plus vstore(p, v)), for the
   products OpenBLAS would otherwise run in kernels narrower than the CPU's: Debian 12's
   OpenBLAS (0.3.21) does not know CPUs newer than it and falls back to its SSE3
   "Prescott" copy on them (an Emerald Rapids Xeon scored 4× slower than with its
   Cooperlake copy). Written by hand because no packaged BLAS other than OpenBLAS is on
   the machines msgen targets, and only the attention's products come here (the
   Linear layers use msgen_matvec, which is as fast as sgemm for them).

   c[m, n] = alpha·a[m, k]·b + beta·c, row-major, b given as [k, n] or, transposed, as
   n rows of k. b is copied a panel of 2·VW columns × up to GEMM_K rows at a time
   (zero-padded past n, so the kernel has no column tail; at most 32 KB, on the stack,
   in L1), then every GEMM_R rows of a run against the panel: 2·GEMM_R accumulators; per
   step along k, two panel loads and GEMM_R broadcasts of a. Past the first GEMM_K rows
   of b, each panel adds to c (beta 1). */

#define GEMM_R 6
#define GEMM_K 256

/* R ≤ GEMM_R rows of a against one panel; `cols` ≤ 2·VW of its columns are real. R is a
   constant at every call, so the loops unroll into registers. */
INLINE void NAME(gemm_tile)(const float *a, long lda, const float *panel, long k, const int R, float alpha,
                            float beta, float *c, long ldc, long cols) {
    VF acc[GEMM_R][2];
#pragma clang loop unroll(full)
    for (int r = 0; r < R; r++) acc[r][0] = acc[r][1] = vzero();
    for (long p = 0; p < k; p++) {
        VF b0 = vload(panel + p * 2 * VW), b1 = vload(panel + p * 2 * VW + VW);
#pragma clang loop unroll(full)
        for (int r = 0; r < R; r++) {
            VF av = vzero() + a[r * lda + p];
            acc[r][0] = vfma(av, b0, acc[r][0]);
            acc[r][1] = vfma(av, b1, acc[r][1]);
        }
    }
#pragma clang loop unroll(full)
    for (int r = 0; r < R; r++) {
        float *row = c + r * ldc;
        if (cols == 2 * VW) {
            for (int h = 0; h < 2; h++) {
                /* beta 0 never reads c, which may hold anything (NaN) before the product. */
                VF v = acc[r][h] * alpha;
                vstore(row + h * VW, beta == 0 ? v : vfma(vzero() + beta, vload(row + h * VW), v));
            }
        } else {
            float out[2 * VW];
            vstore(out, acc[r][0]);
            vstore(out + VW, acc[r][1]);
            for (long j = 0; j < cols; j++) row[j] = alpha * out[j] + (beta == 0 ? 0 : beta * row[j]);
        }
    }
}

static void NAME(gemm)(long m, long n, long k, float alpha, const float *a, long lda, const float *b, long ldb,
                       int transposed_b, float beta, float *c, long ldc) {
    float panel[GEMM_K * 2 * VW];
    for (long j0 = 0; j0 < n; j0 += 2 * VW) {
        long cols = n - j0 < 2 * VW ? n - j0 : 2 * VW;
        for (long p0 = 0; p0 < k; p0 += GEMM_K) {
            long kc = k - p0 < GEMM_K ? k - p0 : GEMM_K;
            float panel_beta = p0 == 0 ? beta : 1;
            if (transposed_b) {
                for (long j = 0; j < 2 * VW; j++)
                    for (long p = 0; p < kc; p++) panel[p * 2 * VW + j] = j < cols ? b[(j0 + j) * ldb + p0 + p] : 0;
            } else {
                for (long p = 0; p < kc; p++)
                    for (long j = 0; j < 2 * VW; j++) panel[p * 2 * VW + j] = j < cols ? b[(p0 + p) * ldb + j0 + j] : 0;
            }
            long i = 0;
            for (; i + GEMM_R <= m; i += GEMM_R)
                NAME(gemm_tile)(a + i * lda + p0, lda, panel, kc, GEMM_R, alpha, panel_beta, c + i * ldc + j0, ldc, cols);
            for (; i < m; i++) NAME(gemm_tile)(a + i * lda + p0, lda, panel, kc, 1, alpha, panel_beta, c + i * ldc + j0, ldc, cols);
        }
    }
}

/* The f32 / f16 / bf16 weight kernels, written once and included by linear.c once per
   CPU level, inside a `#pragma clang attribute` that compiles every function for that
   level. The includer defines:
     NAME(f)        f with the level's suffix
     VF, VW         the float vector type and its lanes
     vzero(), vload(p), vfma(a, b, c) (a·b + c), vhsum(v), vhsum8(v, out) (the sums of
     eight vectors v[0..8) into out[0..8))
     wf16(p), wbf16(p)   VW weights at p widened to VF
     half_scale(p)  the IEEE-half q8 scale at p as a float
   and linear.c defines put() (one output with bias and accumulation) for every copy.
   No function here is exported; linear.c's dispatchers call them. */

/* VW weights from element i of a row, widened. `type` is a constant wherever this is
   inlined, so the branches fold away. */
INLINE VF NAME(wload)(int type, const char *row, long i) {
    if (type == MSGEN_WEIGHT_F32) return vload((const float *)row + i);
    if (type == MSGEN_WEIGHT_F16) return wf16((const uint16_t *)row + i);
    return wbf16((const uint16_t *)row + i);
}

/* The last n < VW weights of a row (or x values), through a zero-padded copy: the
   padding multiplies to zero, so the tail runs the same code as the body. */
INLINE VF NAME(wload_tail)(int type, const char *row, long i, long n) {
    long size = type == MSGEN_WEIGHT_F32 ? 4 : 2;
    char pad[VW * 4];
    memset(pad, 0, sizeof pad);
    memcpy(pad, row + i * size, (size_t)(n * size));
    return NAME(wload)(type, pad, 0);
}

INLINE VF NAME(xload_tail)(const float *x, long n) {
    float pad[VW];
    memset(pad, 0, sizeof pad);
    memcpy(pad, x, (size_t)n * sizeof(float));
    return vload(pad);
}

/* RW weight rows from j, times NX rows of x: RW·NX independent accumulators, each weight
   vector loaded once and used NX times. NX and RW are constants at every call. */
INLINE void NAME(mv_block)(int type, const char *w, long rb, long k, long j, const float *x, long ldx,
                           const int NX, const int RW, const float *bias, float *y, long ldy, int accumulate) {
    VF acc[4][8], wv[4];
#pragma clang loop unroll(full)
    for (int a = 0; a < RW; a++)
#pragma clang loop unroll(full)
        for (int r = 0; r < NX; r++) acc[a][r] = vzero();
    long i = 0;
    for (; i + VW <= k; i += VW) {
#pragma clang loop unroll(full)
        for (int a = 0; a < RW; a++) wv[a] = NAME(wload)(type, w + (j + a) * rb, i);
#pragma clang loop unroll(full)
        for (int r = 0; r < NX; r++) {
            VF xv = vload(x + r * ldx + i);
#pragma clang loop unroll(full)
            for (int a = 0; a < RW; a++) acc[a][r] = vfma(wv[a], xv, acc[a][r]);
        }
    }
    if (i < k) {
#pragma clang loop unroll(full)
        for (int a = 0; a < RW; a++) wv[a] = NAME(wload_tail)(type, w + (j + a) * rb, i, k - i);
#pragma clang loop unroll(full)
        for (int r = 0; r < NX; r++) {
            VF xv = NAME(xload_tail)(x + r * ldx + i, k - i);
#pragma clang loop unroll(full)
            for (int a = 0; a < RW; a++) acc[a][r] = vfma(wv[a], xv, acc[a][r]);
        }
    }
#pragma clang loop unroll(full)
    for (int a = 0; a < RW; a++) {
        if (NX == 8) { /* a weight row's eight sums in one go (vhsum8): batched decode */
            float s[8];
            vhsum8(acc[a], s);
#pragma clang loop unroll(full)
            for (int r = 0; r < 8; r++) put(y + r * ldy + j + a, s[r], bias, j + a, accumulate);
        } else {
#pragma clang loop unroll(full)
            for (int r = 0; r < NX; r++) put(y + r * ldy + j + a, vhsum(acc[a][r]), bias, j + a, accumulate);
        }
    }
}

/* One weight row times one row of x (decode's case), with four accumulators along the
   row so that the FMA latency does not set the pace when W is in cache. One row at a
   time, not four: reading four rows side by side (four streams 3 or 6 KB apart) ran at
   40 % of this machine's sequential read bandwidth from DRAM (AMD EPYC, GPT-2-small layer
   set, f16), one row at a time at 75–85 %, twice as fast. Each row first asks for the
   weights 8 KB ahead into L2: the CPU's own prefetchers fell behind, most with f16 and
   bf16, where the loop spends twice the work per byte (GPT-2-small's 49 decode matrices
   in f16, C harness, Emerald Rapids VM, alternating: 66–74 % of the read probe without,
   82–84 % with; `msgen bench` f16 at 1 thread 33–35 → 38–46 tok/s, f32 at 2 threads
   27–41 → 39–47, at 1 thread 20–25 → 21–24). Only where the rows stream from memory
   (`ahead` > 0): weights that stay in the L3 cache gained nothing and paid the
   instructions (the bundled CST, 1 KB rows: 10 % slower). A prefetch never faults, so
   asking past the matrix's end is harmless. */
INLINE void NAME(mv_row)(int type, const char *w, long rb, long k, long j, const float *x, const float *bias, float *y,
                         int accumulate, long ahead) {
    const char *row = w + j * rb;
    if (ahead > 0)
        for (long o = 0; o < rb; o += 64) __builtin_prefetch(row + ahead + o, 0, 2);
    VF a0 = vzero(), a1 = vzero(), a2 = vzero(), a3 = vzero();
    long i = 0;
    for (; i + 4 * VW <= k; i += 4 * VW) {
        a0 = vfma(NAME(wload)(type, row, i), vload(x + i), a0);
        a1 = vfma(NAME(wload)(type, row, i + VW), vload(x + i + VW), a1);
        a2 = vfma(NAME(wload)(type, row, i + 2 * VW), vload(x + i + 2 * VW), a2);
        a3 = vfma(NAME(wload)(type, row, i + 3 * VW), vload(x + i + 3 * VW), a3);
    }
    for (; i + VW <= k; i += VW) a0 = vfma(NAME(wload)(type, row, i), vload(x + i), a0);
    if (i < k) a0 = vfma(NAME(wload_tail)(type, row, i, k - i), NAME(xload_tail)(x + i, k - i), a0);
    put(y + j, vhsum((a0 + a1) + (a2 + a3)), bias, j, accumulate);
}

/* Rows [j0, j1) of W times nx ≤ 8 rows of x: RW weight rows at a time, chosen so that the
   RW·NX accumulators, RW weight vectors and one x vector fit the 16 registers of AVX2
   (one row of x: mv_row, one weight row at a time). The pf_bytes at pf (weights a later
   pass will read) are prefetched into L2 spread over the groups of rows, a few lines
   before each; one row of x asks for the weights `ahead` bytes on instead (0: not). */
INLINE void NAME(mv)(int type, const char *w, long rb, long k, long j0, long j1, const float *x, long ldx, long nx,
                     const float *bias, float *y, long ldy, int accumulate, const char *pf, long pf_bytes, long ahead) {
#if VW == 16
/* AVX-512's 32 registers hold 3·8 accumulators, 3 weight vectors and an x vector: each x
   vector loaded once for three weight rows (batched decode's 5–8 rows of x at a time). */
#define WIDE_RW 3
#else
#define WIDE_RW 3
#endif
#define MV(NX, RW)                                                                                       \
    {                                                                                                    \
        long j = j0, calls = (j1 - j0) / RW, off = 0;                                                    \
        long per = calls > 0 ? (pf_bytes / calls + 63) & ~63L : 0; /* bytes before each group */         \
        for (; j + RW <= j1; j += RW) {                                                                  \
            for (long e = off + per; off < e && off < pf_bytes; off += 64) __builtin_prefetch(pf + off, 0, 2); \
            NAME(mv_block)(type, w, rb, k, j, x, ldx, NX, RW, bias, y, ldy, accumulate);                 \
        }                                                                                                \
        for (; j < j1; j++) NAME(mv_block)(type, w, rb, k, j, x, ldx, NX, 1, bias, y, ldy, accumulate);  \
    }                                                                                                    \
    break;
    switch (nx) {
    case 1:
        for (long j = j0; j < j1; j++) NAME(mv_row)(type, w, rb, k, j, x, bias, y, accumulate, ahead);
        break;
    case 2: MV(2, 4)
    case 3: MV(3, 2)
    case 4: MV(4, 2)
    case 5: MV(5, WIDE_RW)
    case 6: MV(6, WIDE_RW)
    case 7: MV(7, WIDE_RW)
    case 8: MV(8, WIDE_RW)
    }
#undef MV
#undef WIDE_RW
}

static void NAME(matvec)(int type, const char *w, long rb, long k, long j0, long j1, const float *x, long ldx, long nx,
                         const float *bias, float *y, long ldy, int accumulate, const char *pf, long pf_bytes,
                         long ahead) {
    switch (type) {
    case MSGEN_WEIGHT_F32: NAME(mv)(MSGEN_WEIGHT_F32, w, rb, k, j0, j1, x, ldx, nx, bias, y, ldy, accumulate, pf, pf_bytes, ahead); break;
    case MSGEN_WEIGHT_F16: NAME(mv)(MSGEN_WEIGHT_F16, w, rb, k, j0, j1, x, ldx, nx, bias, y, ldy, accumulate, pf, pf_bytes, ahead); break;
    case MSGEN_WEIGHT_BF16: NAME(mv)(MSGEN_WEIGHT_BF16, w, rb, k, j0, j1, x, ldx, nx, bias, y, ldy, accumulate, pf, pf_bytes, ahead); break;
    }
}

/* One q8 row widened: d·q per block (the compiler vectorises the inner loop). */
INLINE void NAME(widen_q8_row)(const char *row, long k, float *out) {
    for (long b = 0; b < k / 32; b++) {
        const char *blk = row + b * 34;
        float d = half_scale(blk);
        const signed char *q = (const signed char *)blk + 2;
        for (int i = 0; i < 32; i++) out[b * 32 + i] = d * (float)q[i];
    }
}

INLINE void NAME(widen_row)(int type, const char *row, long k, float *out) {
    long i = 0;
    for (; i + VW <= k; i += VW) {
        VF v = NAME(wload)(type, row, i);
        memcpy(out + i, &v, sizeof v);
    }
    if (i < k) {
        VF v = NAME(wload_tail)(type, row, i, k - i);
        memcpy(out + i, &v, (size_t)(k - i) * sizeof(float));
    }
}

static void NAME(widen)(int type, const char *w, long rb, long k, long rows, float *out) {
    for (long r = 0; r < rows; r++) {
        switch (type) {
        case MSGEN_WEIGHT_F32: NAME(widen_row)(MSGEN_WEIGHT_F32, w + r * rb, k, out + r * k); break;
        case MSGEN_WEIGHT_F16: NAME(widen_row)(MSGEN_WEIGHT_F16, w + r * rb, k, out + r * k); break;
        case MSGEN_WEIGHT_BF16: NAME(widen_row)(MSGEN_WEIGHT_BF16, w + r * rb, k, out + r * k); break;
        case MSGEN_WEIGHT_Q8: NAME(widen_q8_row)(w + r * rb, k, out + r * k); break;
        }
    }
}

/* Four VF loads per step into four integer sums (integer adds: one cycle, so the loads
   and not the adds set the pace). */
static long NAME(read_sum)(const char *p, long bytes) {
    typedef long long VL __attribute__((vector_size(sizeof(VF))));
    VL s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};
    for (long i = 0; i + 4 * (long)sizeof(VF) <= bytes; i += 4 * (long)sizeof(VF)) {
        VF a = vload((const float *)(p + i)), b = vload((const float *)(p + i + sizeof(VF)));
        VF c = vload((const float *)(p + i + 2 * sizeof(VF))), d = vload((const float *)(p + i + 3 * sizeof(VF)));
        s0 += (VL)a; s1 += (VL)b; s2 += (VL)c; s3 += (VL)d;
    }
    VL s = (s0 + s1) + (s2 + s3);
    long total = 0;
    for (unsigned i = 0; i < sizeof(VL) / sizeof(long long); i++) total += s[i];
    return total;
}

/* The q8 × q8 matrix–vector kernel, written once and included by linear.c per CPU level
   (like linear_float.h). The includer defines:
     NAME(f)                 f with the level's suffix
     QACC, qzero()           a block-sum accumulator and its zero
     QW, qprep(p)            32 weight bytes at p, in whatever form qstep wants them
     QX, qxload(p)           32 x bytes at p
     qstep(acc, w, x, s)     acc + s·Σ w·x over the 32 pairs, the sum exact in int32
     qhsum(acc)              the accumulator's lanes summed to one float
     half_scale(p)           the IEEE-half q8 scale at p as a float */

/* RW weight rows from j times NX rows of quantised x (as in linear_float.h's mv_block). */
INLINE void NAME(q8_block)(const char *w, long rb, long k, long j, const signed char *xq, const float *xd,
                           const int NX, const int RW, const float *bias, float *y, long ldy, int accumulate) {
    QACC acc[4][8];
    QW wv[4];
    float dw[4];
    long nb = k / 32;
#pragma clang loop unroll(full)
    for (int a = 0; a < RW; a++)
#pragma clang loop unroll(full)
        for (int r = 0; r < NX; r++) acc[a][r] = qzero();
    for (long b = 0; b < nb; b++) {
#pragma clang loop unroll(full)
        for (int a = 0; a < RW; a++) {
            const char *blk = w + (j + a) * rb + b * 34;
            dw[a] = half_scale(blk);
            wv[a] = qprep(blk + 2);
        }
#pragma clang loop unroll(full)
        for (int r = 0; r < NX; r++) {
            QX xv = qxload(xq + r * k + b * 32);
            float dx = xd[r * nb + b];
#pragma clang loop unroll(full)
            for (int a = 0; a < RW; a++) acc[a][r] = qstep(acc[a][r], wv[a], xv, dw[a] * dx);
        }
    }
#pragma clang loop unroll(full)
    for (int a = 0; a < RW; a++)
#pragma clang loop unroll(full)
        for (int r = 0; r < NX; r++) put(y + r * ldy + j + a, qhsum(acc[a][r]), bias, j + a, accumulate);
}

static void NAME(matvec_q8)(const char *w, long rb, long k, long j0, long j1, const signed char *xq, const float *xd,
                            long nx, const float *bias, float *y, long ldy, int accumulate) {
#define MV(NX, RW)                                                                                              \
    {                                                                                                           \
        long j = j0;                                                                                            \
        for (; j + RW <= j1; j += RW) NAME(q8_block)(w, rb, k, j, xq, xd, NX, RW, bias, y, ldy, accumulate);   \
        for (; j < j1; j++) NAME(q8_block)(w, rb, k, j, xq, xd, NX, 1, bias, y, ldy, accumulate);              \
    }                                                                                                           \
    break;
    switch (nx) {
    case 1: MV(1, 4)
    case 2: MV(2, 4)
    case 3: MV(3, 2)
    case 4: MV(4, 2)
    case 5: MV(5, 1)
    case 6: MV(6, 1)
    case 7: MV(7, 1)
    case 8: MV(8, 1)
    }
#undef MV
}

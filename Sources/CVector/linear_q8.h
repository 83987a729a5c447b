/* The q8 × q8 matrix–vector kernel, written once and included by linear.c per CPU level
   (like linear_float.h). A step covers QBLOCKS blocks of 32 (the last steps of a row
   one block each when QBLOCKS does not divide it). The includer defines:
     NAME(f)                   f with the level's suffix
     QBLOCKS                   blocks per step (1 or 2)
     QACC, qzero()             an accumulator of scaled block sums and its zero
     QW, qprep(p, c)           c blocks of weights (scale at p, then 32 bytes) for qstep
     QS, qscale(p, c)          the weight scales of c blocks at p, for qstep
     QX, qxload(p, c)          32·c x bytes at p
     QS, qxscale(p, c)         the c x scales at p (floats)
     qstep(acc, w, x, dw, dx)  acc + Σ over the blocks of dw·dx·Σ w·x, sums exact in int32
     qhsum(acc)                the accumulator's lanes summed to one float */

/* One step of c blocks from block b for RW weight rows × NX rows of x. */
#define Q8_STEP(b, c)                                                                         \
    {                                                                                         \
        QW wv[4];                                                                             \
        QS dw[4];                                                                             \
        _Pragma("clang loop unroll(full)") for (int a = 0; a < RW; a++) {                     \
            const char *blk = w + (j + a) * rb + (b) * 34;                                    \
            dw[a] = qscale(blk, c);                                                           \
            wv[a] = qprep(blk, c);                                                            \
        }                                                                                     \
        _Pragma("clang loop unroll(full)") for (int r = 0; r < NX; r++) {                     \
            QX xv = qxload(xq + r * k + (b) * 32, c);                                         \
            QS dx = qxscale(xd + r * nb + (b), c);                                            \
            _Pragma("clang loop unroll(full)") for (int a = 0; a < RW; a++)                   \
                acc[a][r] = qstep(acc[a][r], wv[a], xv, dw[a], dx);                           \
        }                                                                                     \
    }

/* RW weight rows from j times NX rows of quantised x (as in linear_float.h's mv_block). */
INLINE void NAME(q8_block)(const char *w, long rb, long k, long j, const signed char *xq, const float *xd,
                           const int NX, const int RW, const float *bias, float *y, long ldy, int accumulate) {
    QACC acc[4][8];
    long nb = k / 32, b = 0;
#pragma clang loop unroll(full)
    for (int a = 0; a < RW; a++)
#pragma clang loop unroll(full)
        for (int r = 0; r < NX; r++) acc[a][r] = qzero();
    for (; b + QBLOCKS <= nb; b += QBLOCKS) Q8_STEP(b, QBLOCKS)
    if (QBLOCKS > 1)
        for (; b < nb; b++) Q8_STEP(b, 1)
#pragma clang loop unroll(full)
    for (int a = 0; a < RW; a++)
#pragma clang loop unroll(full)
        for (int r = 0; r < NX; r++) put(y + r * ldy + j + a, qhsum(acc[a][r]), bias, j + a, accumulate);
}

/* One step of c blocks from block b of one weight row, for one row of x. */
INLINE QACC NAME(q8_step1)(QACC acc, const char *row, const signed char *xq, const float *xd, long b, int c) {
    const char *blk = row + b * 34;
    return qstep(acc, qprep(blk, c), qxload(xq + b * 32, c), qscale(blk, c), qxscale(xd + b, c));
}

/* One weight row times one row of quantised x (decode's case), two accumulators taking
   turns: one row at a time for the reason given at linear_float.h's mv_row (q8 from
   DRAM: 40 % of the sequential read bandwidth with four rows side by side, 80–90 % one
   row at a time). */
INLINE void NAME(q8_row)(const char *w, long rb, long k, long j, const signed char *xq, const float *xd, const float *bias,
                         float *y, int accumulate) {
    const char *row = w + j * rb;
    QACC a0 = qzero(), a1 = qzero();
    long nb = k / 32, b = 0;
    for (; b + 2 * QBLOCKS <= nb; b += 2 * QBLOCKS) {
        a0 = NAME(q8_step1)(a0, row, xq, xd, b, QBLOCKS);
        a1 = NAME(q8_step1)(a1, row, xq, xd, b + QBLOCKS, QBLOCKS);
    }
    for (; b + QBLOCKS <= nb; b += QBLOCKS) a0 = NAME(q8_step1)(a0, row, xq, xd, b, QBLOCKS);
    if (QBLOCKS > 1)
        for (; b < nb; b++) a0 = NAME(q8_step1)(a0, row, xq, xd, b, 1);
    put(y + j, qhsum(a0 + a1), bias, j, accumulate);
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
    case 1:
        for (long j = j0; j < j1; j++) NAME(q8_row)(w, rb, k, j, xq, xd, bias, y, accumulate);
        break;
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

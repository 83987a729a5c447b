/* Attention of one query over n cached rows, all heads at once, written once and included
   by linear.c once per CPU level (next to linear_float.h, with the same macros plus
   vstore(p, v)). Decoding at depth reads the whole key and value cache every token, as
   many bytes as the weights at a GPT-2-small layer's 1,024 rows, so this loop is the
   other half of a decode step's memory traffic: each key and value row is read once,
   front to back, for every head, and the per-head sums run in the level's widest
   vectors (the same loop in Swift, compiled for plain x86-64, was 2/3 of a 2-thread
   q8 step at depth 1,024). */

/* Σ a[i]·b[i] over n values: VW-lane FMAs, then the lanes summed (vhsum), then the
   scalar tail. */
INLINE float NAME(dot)(const float *a, const float *b, long n) {
    VF acc = vzero();
    long i = 0;
    for (; i + VW <= n; i += VW) acc = vfma(vload(a + i), vload(b + i), acc);
    float s = vhsum(acc);
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

/* y += alpha·x over n values. */
INLINE void NAME(axpy)(float alpha, const float *x, float *y, long n) {
    VF va = vzero() + alpha;
    long i = 0;
    for (; i + VW <= n; i += VW) vstore(y + i, vfma(va, vload(x + i), vload(y + i)));
    for (; i < n; i++) y[i] += alpha * x[i];
}

/* Σ a[i]·(b[i] + c[i]): a query against a key with its position part added. */
INLINE float NAME(dot2)(const float *a, const float *b, const float *c, long n) {
    VF acc = vzero();
    long i = 0;
    for (; i + VW <= n; i += VW) acc = vfma(vload(a + i), vload(b + i) + vload(c + i), acc);
    float s = vhsum(acc);
    for (; i < n; i++) s += a[i] * (b[i] + c[i]);
    return s;
}

/* Window row j's row of the cache: (first + j) mod ring, or first + j with ring 0. */
INLINE long NAME(ring_row)(long ring, long first, long j) { return ring > 0 ? (first + j) % ring : first + j; }

/* A row of n floats asked into L1. */
INLINE void NAME(prefetch_row)(const float *p, long n) {
    for (long o = 0; o < n; o += 16) __builtin_prefetch(p + o, 0, 3);
}

/* Rows [j0, j1), every head: the scores of a row for all heads (one pass over the key
   row), each head's max and Σ e^(s − max) (the scores become those exponentials), then
   the value rows weighted by them (one pass over each value row). Row j is row
   (first + j) mod ring of keys and values (ring 0: row first + j), and with key_add its
   key is that row plus row j of key_add (local attention's positions). cvector.h has
   the contract. */
static void NAME(attend_rows)(const float *q, const float *keys, long ks, const float *values, long vs, long ring,
                              long first, const float *key_add, long kas, long j0, long j1, long H, long dh,
                              float scale, float *scores, float *out, float *m, float *l) {
    long n = j1 - j0;
    /* A short window (at most 512 KB of keys) asks for the rows 16 ahead of each pass: a
       batched step attends over many sequences' short caches in turn, each pass a new
       stream from memory that the CPU's prefetchers only pick up after some rows (the
       baseline's 64-sequence step at depth 128, Emerald Rapids VM, seven alternating
       runs: median 17.0 → 15.7 ms). A long window is one long stream they follow, and there the asking
       only cost instructions (GPT-2-small q8 at depth 1,024: 54–58 → 47–52 tok/s). */
    long ahead = n * H * dh <= (128L << 10) ? 16 : 0;
    memset(out, 0, (size_t)(H * dh) * sizeof(float));
    for (long h = 0; h < H; h++) m[h] = -__builtin_inff(), l[h] = 0;
    if (n <= 0) return;
    for (long j = 0; j < n; j++) {
        long row = NAME(ring_row)(ring, first, j0 + j);
        const float *k = keys + row * ks;
        if (ahead && j + ahead < n) NAME(prefetch_row)(keys + NAME(ring_row)(ring, first, j0 + j + ahead) * ks, H * dh);
        if (key_add) {
            const float *ka = key_add + (j0 + j) * kas;
            for (long h = 0; h < H; h++) scores[h * n + j] = NAME(dot2)(q + h * dh, k + h * dh, ka + h * dh, dh) * scale;
        } else {
            for (long h = 0; h < H; h++) scores[h * n + j] = NAME(dot)(q + h * dh, k + h * dh, dh) * scale;
        }
    }
    for (long h = 0; h < H; h++) {
        m[h] = msgen_max(scores + h * n, n);
        l[h] = msgen_exp_sum(scores + h * n, n, m[h]);
    }
    for (long j = 0; j < n; j++) {
        long row = NAME(ring_row)(ring, first, j0 + j);
        const float *v = values + row * vs;
        if (ahead && j + ahead < n) NAME(prefetch_row)(values + NAME(ring_row)(ring, first, j0 + j + ahead) * vs, H * dh);
        for (long h = 0; h < H; h++) NAME(axpy)(scores[h * n + j], v + h * dh, out + h * dh, dh);
    }
}

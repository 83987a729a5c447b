/* Weight matrices in their stored type (f32, f16, bf16, q8) times a few rows of x: the
   matrix–vector products of decoding, which are bound by reading the weights from
   memory, so they read the narrow types directly and widen in registers (F16C's
   vcvtph2ps, a 16-bit shift for bf16, int8 dot products for q8). Also the widening of a
   tile of rows to f32, for the matrix–matrix path (OpenBLAS sgemm on the widened tile),
   and a memory read probe.

   Each kernel is written once (linear_float.h, linear_q8.h) and included here once per
   CPU level inside a `#pragma clang attribute` region that compiles it for that level;
   the exported functions at the bottom pick a copy by the level they are given.

   bf16 is widened (exact) and multiplied in f32, not fed to AVX512-BF16's vdpbf16ps:
   that instruction would round x to bf16 too, a relative error of 2⁻⁹ per product on
   top of the weights' own, and decoding is bound by reading the weights, not by the
   multiplies, so it would buy no speed where it matters. */
#include "cvector.h"

#pragma clang diagnostic ignored "-Wpsabi"

#include <stdint.h>
#include <string.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#define INLINE static inline __attribute__((always_inline))

/* Shared by every copy: the result of one output, with bias and accumulation. */
INLINE void put(float *y, float s, const float *bias, long j, int accumulate) {
    if (bias) s += bias[j];
    if (accumulate) s += *y;
    *y = s;
}

/* IEEE half → float in plain integer and float operations (the baseline copy has no
   F16C): shift the exponent and mantissa into float position and multiply by 2^112 to
   re-bias the exponent (15 → 127), which also turns half subnormals into the right
   float; infinities and NaNs get the all-ones exponent back. */
typedef float v8f __attribute__((vector_size(32)));
typedef int v8i __attribute__((vector_size(32)));
typedef unsigned v8u __attribute__((vector_size(32)));
typedef unsigned short v8h __attribute__((vector_size(16)));

INLINE v8f half8(const uint16_t *p) {
    v8h h;
    memcpy(&h, p, sizeof h);
    v8u u = __builtin_convertvector(h, v8u);
    v8u sign = (u & 0x8000u) << 16, em = u & 0x7fffu;
    v8f f = (v8f)(em << 13) * 0x1p112f;
    v8i special = (v8i)(em >= 0x7c00u);
    v8u bits = ((v8u)special & ((em << 13) | 0x7f800000u)) | (~(v8u)special & (v8u)f);
    return (v8f)(bits | sign);
}

INLINE float half1(const void *p) {
    uint16_t h[8] = {0};
    memcpy(h, p, 2);
    return half8(h)[0];
}

/* ---- Baseline copy: GCC vector types, 8 lanes, no FMA ---- */
#define NAME(f) f##_base
#define VF v8f
#define VW 8
#define vzero() ((v8f){0})
#define vload(p) ({ v8f v_; memcpy(&v_, (p), sizeof v_); v_; })
#define vfma(a, b, c) ((a) * (b) + (c))
#define vhsum(v) ({ v8f s_ = (v); ((s_[0] + s_[4]) + (s_[1] + s_[5])) + ((s_[2] + s_[6]) + (s_[3] + s_[7])); })
#define vstore(p, v) ({ v8f v_ = (v); memcpy((p), &v_, sizeof v_); })
#define vhsum8(v, out) ({ for (int i_ = 0; i_ < 8; i_++) (out)[i_] = vhsum((v)[i_]); })
#define wf16(p) half8(p)
#define wbf16(p) ({ v8h h_; memcpy(&h_, (p), sizeof h_); (v8f)(__builtin_convertvector(h_, v8u) << 16); })
#define half_scale(p) half1(p)
#include "linear_float.h"
#include "attention.h"
#include "gemm.h"
#undef VF
#undef VW
#undef vzero
#undef vload
#undef vfma
#undef vhsum
#undef vhsum8
#undef vstore
#undef wf16
#undef wbf16

/* One block at a time (QBLOCKS 1), for every copy but the AVX-512 VNNI one: the scales
   are plain floats, multiplied per block. */
#define QBLOCKS 1
#define QS float
#define qscale(p, c) half_scale(p)
#define qxscale(p, c) (*(p))
#define QACC float
#define qzero() 0.f
#define QW const signed char *
#define qprep(p, c) ((const signed char *)(p) + 2)
#define QX const signed char *
#define qxload(p, c) (p)
INLINE float qstep_base(float acc, const signed char *w, const signed char *x, float dw, float dx) {
    int sum = 0;
    for (int i = 0; i < 32; i++) sum += w[i] * x[i];
    return acc + dw * dx * (float)sum;
}
#define qstep qstep_base
#define qhsum(a) (a)
#include "linear_q8.h"
#undef QACC
#undef qzero
#undef QW
#undef qprep
#undef QX
#undef qxload
#undef qstep
#undef qhsum
#undef half_scale
#undef NAME

#if defined(__x86_64__)
/* ---- AVX2 + FMA + F16C: 8 lanes ---- */
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#define NAME(f) f##_avx2
#define VF __m256
#define VW 8
#define vzero() _mm256_setzero_ps()
#define vload(p) _mm256_loadu_ps(p)
#define vfma(a, b, c) _mm256_fmadd_ps(a, b, c)
#define vhsum(v) hsum8(v)
#define vstore(p, v) _mm256_storeu_ps(p, v)
#define vhsum8(v, out) ({ for (int i_ = 0; i_ < 8; i_++) (out)[i_] = vhsum((v)[i_]); })
#define wf16(p) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p)))
#define wbf16(p) _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(p))), 16))
#define half_scale(p) ({ uint16_t h_; memcpy(&h_, (p), 2); _cvtsh_ss(h_); })
INLINE float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
#include "linear_float.h"
#include "attention.h"
#include "gemm.h"

/* The sign trick (as in ggml's Q8_0 kernels): vpmaddubsw multiplies unsigned by signed
   bytes, so multiply |w| by x carrying w's sign. |w| ≤ 128 and |x| ≤ 127 (the quantiser's
   range), so each pair sum ≤ 2·128·127 < 2^15 and the 16-bit sums never saturate. */
typedef struct { __m256i w, aw; } QW_avx2;
INLINE QW_avx2 qprep_avx2(const char *blk) {
    __m256i w = _mm256_loadu_si256((const __m256i *)(blk + 2));
    return (QW_avx2){w, _mm256_sign_epi8(w, w)};
}
INLINE __m256 qstep_avx2(__m256 acc, QW_avx2 w, __m256i x, float dw, float dx) {
    __m256i sx = _mm256_sign_epi8(x, w.w);
    __m256i pairs = _mm256_maddubs_epi16(w.aw, sx);
    __m256i sums = _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), _mm256_set1_ps(dw * dx), acc);
}
#define QACC __m256
#define qzero() _mm256_setzero_ps()
#define QW QW_avx2
#define qprep(p, c) qprep_avx2(p)
#define QX __m256i
#define qxload(p, c) _mm256_loadu_si256((const __m256i *)(p))
#define qstep qstep_avx2
#define qhsum(a) hsum8(a)
#include "linear_q8.h"
#undef qstep
#undef NAME
#undef QBLOCKS
#undef QS
#undef qscale
#undef qxscale
#undef QACC
#undef qzero
#undef QW
#undef qprep
#undef QX
#undef qxload
#undef qhsum
#pragma clang attribute pop

/* ---- AVX-512 VNNI: the q8 kernel two blocks (64 bytes) a step in 512-bit registers,
   with vpdpbusd (u8 × s8, four pairs into each int32 lane, no 16-bit step): lanes 0–7
   hold the first block's sums, 8–15 the second's, and the scales are spread to match.
   Half the instructions of the one-block AVX2 step, which could not keep up with memory.
   No sign trick: the weights as unsigned bytes w + 128 (one xor), so vpdpbusd gives
   Σ(w + 128)·x, started from −128·Σx (which depends on x only: computed once per step and
   shared by the rows of the step) to give Σ w·x exactly; two instructions a row fewer
   than taking |w| and moving its sign onto x (+20 % with W in cache). A row's last odd
   block runs the same code with the upper half zero. ---- */
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni"))), \
                             apply_to = function)
#define NAME(f) f##_vnni
#define QBLOCKS 2
typedef __m512i QW_vnni;
/* The weights of c (1 or 2) blocks at blk, blk + 34, as unsigned bytes w + 128. */
INLINE QW_vnni qprep_vnni(const char *blk, int c) {
    __m512i w = _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(blk + 2)));
    if (c == 2) w = _mm512_inserti64x4(w, _mm256_loadu_si256((const __m256i *)(blk + 36)), 1);
    else w = _mm512_zextsi256_si512(_mm512_castsi512_si256(w));
    return _mm512_xor_si512(w, _mm512_set1_epi8((char)0x80));
}
/* Two floats (the second zero when c == 1) spread to lanes 0–7 and 8–15. */
INLINE __m512 spread2(__m128 two) {
    return _mm512_permutexvar_ps(_mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0), _mm512_castps128_ps512(two));
}
/* The scales of blocks blk and blk + 34 (c == 1: the second zero) spread to lanes 0–7
   and 8–15. A full pair takes them from one 64-byte load of the pair (which holds 64 of
   its 68 bytes: h0 at byte 0, h1 at byte 34, halfword 17), one vpermw that puts eight
   copies of each side by side, and one vcvtph2ps: three instructions instead of seven
   through a general register (+~10 % for the q8 step with W in cache). A lone last
   block must not read past its row. */
INLINE __m512 qscale_vnni(const char *blk, int c) {
    if (c == 2) {
        __m512i pair = _mm512_loadu_si512(blk);
        __m512i spread = _mm512_permutexvar_epi16(_mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0, 0x110011, 0x110011, 0x110011, 0x110011, 0, 0, 0, 0), pair);
        return _mm512_cvtph_ps(_mm512_castsi512_si256(spread));
    }
    uint16_t h0;
    memcpy(&h0, blk, 2);
    return spread2(_mm_cvtph_ps(_mm_cvtsi32_si128((int)h0)));
}
INLINE __m512 qxscale_vnni(const float *d, int c) {
    return spread2(_mm_setr_ps(d[0], c == 2 ? d[1] : 0, 0, 0));
}
/* x's bytes, and −128·x summed in fours: what Σ(w + 128)·x starts from to give Σ w·x. */
typedef struct { __m512i x, start; } QX_vnni;
INLINE QX_vnni qxload_vnni(const signed char *p, int c) {
    __m512i x = c == 2 ? _mm512_loadu_si512(p) : _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i *)p));
    __m512i s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8((char)0x80), x);
    return (QX_vnni){x, _mm512_sub_epi32(_mm512_setzero_si512(), s)};
}
INLINE __m512 qstep_vnni(__m512 acc, QW_vnni w, QX_vnni x, __m512 dw, __m512 dx) {
    __m512i sums = _mm512_dpbusd_epi32(x.start, w, x.x);
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums), _mm512_mul_ps(dw, dx), acc);
}
#define QS __m512
#define qscale qscale_vnni
#define qxscale qxscale_vnni
#define QACC __m512
#define qzero() _mm512_setzero_ps()
#define QW QW_vnni
#define qprep qprep_vnni
#define QX QX_vnni
#define qxload qxload_vnni
#define qstep qstep_vnni
#define qhsum(a) _mm512_reduce_add_ps(a)
#include "linear_q8.h"
#undef NAME
#undef QBLOCKS
#undef QS
#undef qscale
#undef qxscale
#undef QACC
#undef qzero
#undef QW
#undef qprep
#undef QX
#undef qxload
#undef qstep
#undef qhsum

/* Decode's case (one row of x), with what depends on x alone worked out once per call
   rather than for every weight row, and the weights taken eight blocks (four pairs, 272
   bytes) at a time. Each pair's vpdpbusd gives 16 int32 partial sums (8 per block); a
   shuffle tree adds the four pairs' vectors into one whose lane 4L + i holds a partial
   sum of block L + 4(i & 1) of the group (lane_block), so the eight blocks' scales are
   applied by one conversion, one multiply and one FMA for the group instead of one set
   per pair, and the eight half scales come from four 64-byte loads by two vpermt2w (a
   vpgatherdd was slower on Zen 4). C harness, AMD Zen 4, against the per-pair kernel
   this replaced (interleaved, medians of 11–21): one 224 MB matrix at k = 768, 14.3 →
   18.4 GB/s from DRAM (read probe 19.0), at k = 3,072 about equal; GPT-2-small's 49
   decode matrices in turn 17.4 → 18.6 GB/s; from L2 1.3–1.5× faster. Sapphire Rapids:
   0.87× the time from DRAM. With the prefetch in q8_group_vnni, GPT-2-small q8 decode
   at 1 thread (Zen 4, msgen bench -c 128, alternating) 130–139 → 150–159 tok/s. Fewer
   than eight blocks left take the pair step below (k % 256 != 0, and k < 256 wholly).

   pre holds, for the ng = nb / 8 groups: x's bytes (4 × 64 a group), then per group the
   start (16 int32: −128·Σx of the lane's block in lanes i < 2, zero in the others, so each
   block gets it once) and the x scales in the lanes' order (16 floats); then, for the
   blocks past the groups, per pair of blocks: x's 64 bytes, the start and the x scales
   spread to the block lanes, 192 bytes (PRE_STEP). */
enum { PRE_STEP = 192, PRE_GROUP = 4 * 64 + 2 * 64 };
INLINE int lane_block(int lane) { return (lane >> 2) + 4 * (lane & 1); }
static long q8_pre_bytes(long nb) { return nb / 8 * PRE_GROUP + (nb % 8 + 1) / 2 * PRE_STEP; }
static void q8_pre_vnni(const signed char *xq, const float *xd, long nb, char *pre) {
    long ng = nb / 8;
    memcpy(pre, xq, ng * 256);
    int *start = (int *)(pre + ng * 256);
    float *dx = (float *)(pre + ng * 256 + ng * 64);
    for (long g = 0; g < ng; g++)
        for (int lane = 0; lane < 16; lane++) {
            long b = g * 8 + lane_block(lane);
            int sum = 0;
            if ((lane & 3) < 2)
                for (int i = 0; i < 32; i++) sum += xq[b * 32 + i];
            start[g * 16 + lane] = -128 * sum;
            dx[g * 16 + lane] = xd[b];
        }
    char *tail = pre + ng * PRE_GROUP;
    for (long b = ng * 8, s = 0; b < nb; b += 2, s++) {
        int c = nb - b >= 2 ? 2 : 1;
        QX_vnni x = qxload_vnni(xq + b * 32, c);
        _mm512_storeu_si512(tail + s * PRE_STEP, x.x);
        _mm512_storeu_si512(tail + s * PRE_STEP + 64, x.start);
        _mm512_storeu_ps((float *)(tail + s * PRE_STEP + 128), qxscale_vnni(xd + b, c));
    }
}
/* One group: Σ over its eight blocks of dw·dx·Σ w·x, added to acc lane-wise. */
INLINE __m512 q8_group_vnni(__m512 acc, const char *gb, const char *xp, const char *start, const char *dx,
                            __m512i scale_index) {
    __m512i s[4];
    /* The weights 8 KiB ahead asked into L2 (prefetcht2): Zen 4's own prefetchers ran
       too close behind the loads to keep DRAM busy while the group computes. */
#pragma clang loop unroll(full)
    for (int l = 0; l < 272; l += 64) _mm_prefetch(gb + 8192 + l, _MM_HINT_T2);
#pragma clang loop unroll(full)
    for (int p = 0; p < 4; p++)
        s[p] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), qprep_vnni(gb + p * 68, 2), _mm512_loadu_si512(xp + p * 64));
    __m512i t0 = _mm512_add_epi32(_mm512_shuffle_i32x4(s[0], s[1], 0x88), _mm512_shuffle_i32x4(s[0], s[1], 0xdd));
    __m512i t1 = _mm512_add_epi32(_mm512_shuffle_i32x4(s[2], s[3], 0x88), _mm512_shuffle_i32x4(s[2], s[3], 0xdd));
    __m512i u = _mm512_add_epi32(_mm512_unpacklo_epi32(t0, t1), _mm512_unpackhi_epi32(t0, t1));
    u = _mm512_add_epi32(u, _mm512_loadu_si512(start));
    /* Scales of blocks 0–3 at bytes 0, 34, 68, 102 and of 4–7 at 136 … 238: halfwords
       0, 17, 34, 51 of the 128 bytes from gb and of those from gb + 136. */
    __m512i lo = _mm512_permutex2var_epi16(_mm512_loadu_si512(gb), scale_index, _mm512_loadu_si512(gb + 64));
    __m512i hi = _mm512_permutex2var_epi16(_mm512_loadu_si512(gb + 136), scale_index, _mm512_loadu_si512(gb + 200));
    __m512 dw = _mm512_cvtph_ps(_mm512_castsi512_si256(_mm512_mask_blend_epi16(0xaaaa, lo, hi)));
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(u), _mm512_mul_ps(dw, _mm512_loadu_ps((const float *)dx)), acc);
}
INLINE __m512 q8_pre_step_vnni(__m512 acc, const char *blk, int c, const char *pre) {
    __m512i sums = _mm512_dpbusd_epi32(_mm512_loadu_si512(pre + 64), qprep_vnni(blk, c), _mm512_loadu_si512(pre));
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums), _mm512_mul_ps(qscale_vnni(blk, c), _mm512_loadu_ps((const float *)(pre + 128))), acc);
}
static void q8_rows_pre_vnni(const char *w, long rb, long k, long j0, long j1, const char *pre, const float *bias, float *y,
                             int accumulate) {
    long nb = k / 32, ng = nb / 8;
    const char *start = pre + ng * 256, *dx = pre + ng * 320, *tail = pre + ng * PRE_GROUP;
    /* Lane l's scale: halfword 17·(lane_block(l) & 3) = 17·(l >> 2) of its 128 bytes. */
    static const int16_t index[16] = {0, 0, 0, 0, 17, 17, 17, 17, 34, 34, 34, 34, 51, 51, 51, 51};
    __m512i scale_index = _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i *)index));
    for (long j = j0; j < j1; j++) {
        const char *row = w + j * rb;
        __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
        long g = 0;
        for (; g + 2 <= ng; g += 2) {
            a0 = q8_group_vnni(a0, row + g * 272, pre + g * 256, start + g * 64, dx + g * 64, scale_index);
            a1 = q8_group_vnni(a1, row + (g + 1) * 272, pre + (g + 1) * 256, start + (g + 1) * 64, dx + (g + 1) * 64,
                               scale_index);
        }
        if (g < ng) a0 = q8_group_vnni(a0, row + g * 272, pre + g * 256, start + g * 64, dx + g * 64, scale_index);
        for (long b = ng * 8, s = 0; b < nb; b += 2, s++)
            a1 = q8_pre_step_vnni(a1, row + b * 34, nb - b >= 2 ? 2 : 1, tail + s * PRE_STEP);
        put(y + j, _mm512_reduce_add_ps(_mm512_add_ps(a0, a1)), bias, j, accumulate);
    }
}
#pragma clang attribute pop

#undef VF
#undef VW
#undef vzero
#undef vload
#undef vfma
#undef vhsum
#undef vhsum8
#undef vstore
#undef wf16
#undef wbf16

/* ---- AVX-512 F/BW/VL/DQ: 16 lanes ---- */
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq"))), apply_to = function)
#define NAME(f) f##_avx512
#define VF __m512
#define VW 16
#define vzero() _mm512_setzero_ps()
#define vload(p) _mm512_loadu_ps(p)
#define vfma(a, b, c) _mm512_fmadd_ps(a, b, c)
#define vhsum(v) _mm512_reduce_add_ps(v)
#define vstore(p, v) _mm512_storeu_ps(p, v)
#define vhsum8(v, out) hsum8x16(v, out)
/* The sums of eight 16-lane vectors, as a tree that shares its shuffles among them (23
   instructions; eight _mm512_reduce_add_ps take ~64): halves of pairs, then quarters of
   fours, then within each 128-bit lane. At k = 256 the per-output sums were a quarter of
   the 8-row kernel's instructions. */
INLINE void hsum8x16(const __m512 *a, float *out) {
    __m512 t[4], u[2];
    for (int i = 0; i < 4; i++)
        t[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0x44), _mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0xee));
    /* t[i]: lanes 0–7 partial sums of a[2i], 8–15 of a[2i+1] */
    for (int i = 0; i < 2; i++)
        u[i] = _mm512_add_ps(_mm512_shuffle_f32x4(t[2 * i], t[2 * i + 1], 0x88), _mm512_shuffle_f32x4(t[2 * i], t[2 * i + 1], 0xdd));
    /* u[i], 128-bit lane b: four partial sums of a[4i + b] */
    __m512 p = _mm512_add_ps(_mm512_unpacklo_ps(u[0], u[1]), _mm512_unpackhi_ps(u[0], u[1]));
    p = _mm512_add_ps(p, _mm512_permute_ps(p, 0x4e));
    /* lane 4b: the sum of a[b]; lane 4b + 1: of a[4 + b] */
    __m512 s = _mm512_permutexvar_ps(_mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0, 13, 9, 5, 1, 12, 8, 4, 0), p);
    _mm256_storeu_ps(out, _mm512_castps512_ps256(s));
}
#define wf16(p) _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p)))
#define wbf16(p) _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(p))), 16))
#include "linear_float.h"
#include "attention.h"
#include "gemm.h"
#undef NAME
#pragma clang attribute pop
#undef half_scale
#endif

/* ---- Exported: clamp the level to the CPU's, pick the copy ---- */

static int usable(int level) {
    int best = msgen_cpu_level();
    return level > best ? best : level < MSGEN_LEVEL_BASELINE ? MSGEN_LEVEL_BASELINE : level;
}

/* Weight rows a block at a time (about 128 KB of them, which stay in the L2 cache), and
   for each block every eight rows of x: W is read from memory once whatever nx is.
   (128 KB rather than 256: a matrix's first block, which nothing prefetched, is a
   smaller part of it; 64-row products of the bundled CST's matrices, rotating through
   all of them as a step does, 5.5–7.5 ms against 6.4–7.8 with 256 KB blocks, Xeon VM.) */
static long row_block(long row_bytes) {
    long rows = (128L << 10) / (row_bytes > 0 ? row_bytes : 1);
    return rows < 8 ? 8 : rows;
}

void msgen_matvec(int level, int type, const void *w, long row_bytes, long k, long j0, long j1,
                  const float *x, long ldx, long nx, const float *bias, float *y, long ldy, int accumulate) {
    level = usable(level);
    long block = row_block(row_bytes);
    long passes = (nx + 7) / 8;
    /* One row of x over more than 1 MB of rows (this thread's share of a mid-size model's
       matrix; the bundled 4 M-parameter models' matrices are 1 MB at most, and live in
       the L3 cache): the rows come from memory, and each asks for the weights 8 KB on. */
    long ahead = nx == 1 && (j1 - j0) * row_bytes > (1L << 20) ? 8192 : 0;
    for (long jb = j0; jb < j1; jb += block) {
        long je = j1 - jb < block ? j1 : jb + block;
        /* With two or more passes over a block, the next block's weights are prefetched into
           L2 a slice per pass, a few lines before each group of rows: without it the first
           pass over each block waited on memory (W read at ~7 GB/s) and the other passes
           ran with memory idle. */
        const char *next = (const char *)w + je * row_bytes;
        long next_bytes = passes > 1 ? (j1 - je < block ? j1 - je : block) * row_bytes : 0;
        for (long r = 0, p = 0; r < nx; r += 8, p++) {  /* eight rows of x at a time: the kernels' unrolling */
            long n = nx - r < 8 ? nx - r : 8;
            const float *xr = x + r * ldx;
            float *yr = y + r * ldy;
            const char *pf = next + next_bytes * p / passes;
            long pf_bytes = next_bytes * (p + 1) / passes - next_bytes * p / passes;
#if defined(__x86_64__)
            if (level >= MSGEN_LEVEL_AVX512) { matvec_avx512(type, w, row_bytes, k, jb, je, xr, ldx, n, bias, yr, ldy, accumulate, pf, pf_bytes, ahead); continue; }
            if (level >= MSGEN_LEVEL_AVX2) { matvec_avx2(type, w, row_bytes, k, jb, je, xr, ldx, n, bias, yr, ldy, accumulate, pf, pf_bytes, ahead); continue; }
#endif
            matvec_base(type, w, row_bytes, k, jb, je, xr, ldx, n, bias, yr, ldy, accumulate, pf, pf_bytes, ahead);
        }
    }
}

/* Scalar: x is quantised once per call, k values a row, against n·k weights. */
void msgen_quantize_q8(const float *x, long ldx, long nx, long k, signed char *q, float *d) {
    long nb = k / 32;
    for (long r = 0; r < nx; r++) {
        for (long b = 0; b < nb; b++) {
            const float *v = x + r * ldx + b * 32;
            float amax = 0;
            for (int i = 0; i < 32; i++) amax = __builtin_fabsf(v[i]) > amax ? __builtin_fabsf(v[i]) : amax;
            float scale = amax / 127, inv = scale > 0 ? 1 / scale : 0;
            d[r * nb + b] = scale;
            for (int i = 0; i < 32; i++) {
                float t = __builtin_rintf(v[i] * inv);
                q[r * k + b * 32 + i] = (signed char)(t > 127 ? 127 : t < -127 ? -127 : t);
            }
        }
    }
}

void msgen_matvec_q8(int level, const void *w, long row_bytes, long k, long j0, long j1,
                     const signed char *xq, const float *xd, long nx, const float *bias, float *y, long ldy,
                     int accumulate) {
    level = usable(level);
    long nb = k / 32, block = row_block(row_bytes);
    char *pre = NULL;
#if defined(__x86_64__)
    char stack[64 * PRE_STEP];
    if (level >= MSGEN_LEVEL_AVX512_VNNI && nx == 1 && q8_pre_bytes(nb) <= (long)sizeof stack) {  /* k ≤ 8,192 */
        pre = stack;
        q8_pre_vnni(xq, xd, nb, pre);
    }
#endif
    for (long jb = j0; jb < j1; jb += block) {
        long je = j1 - jb < block ? j1 : jb + block;
        for (long r = 0; r < nx; r += 8) {
            long n = nx - r < 8 ? nx - r : 8;
            const signed char *qr = xq + r * k;
            const float *dr = xd + r * nb;
            float *yr = y + r * ldy;
#if defined(__x86_64__)
            if (level >= MSGEN_LEVEL_AVX512_VNNI && pre) { q8_rows_pre_vnni(w, row_bytes, k, jb, je, pre, bias, yr, accumulate); continue; }
            if (level >= MSGEN_LEVEL_AVX512_VNNI) { matvec_q8_vnni(w, row_bytes, k, jb, je, qr, dr, n, bias, yr, ldy, accumulate); continue; }
            if (level >= MSGEN_LEVEL_AVX2) { matvec_q8_avx2(w, row_bytes, k, jb, je, qr, dr, n, bias, yr, ldy, accumulate); continue; }
#endif
            matvec_q8_base(w, row_bytes, k, jb, je, qr, dr, n, bias, yr, ldy, accumulate);
        }
    }
}

void msgen_widen(int level, int type, const void *w, long row_bytes, long k, long rows, float *out) {
    level = usable(level);
#if defined(__x86_64__)
    if (level >= MSGEN_LEVEL_AVX512) { widen_avx512(type, w, row_bytes, k, rows, out); return; }
    if (level >= MSGEN_LEVEL_AVX2) { widen_avx2(type, w, row_bytes, k, rows, out); return; }
#endif
    widen_base(type, w, row_bytes, k, rows, out);
}

long msgen_read_sum(int level, const void *p, long bytes) {
    level = usable(level);
#if defined(__x86_64__)
    if (level >= MSGEN_LEVEL_AVX512) return read_sum_avx512(p, bytes);
    if (level >= MSGEN_LEVEL_AVX2) return read_sum_avx2(p, bytes);
#endif
    return read_sum_base(p, bytes);
}

static void attend_rows(int level, const float *q, const float *keys, long ks, const float *values, long vs, long ring,
                        long first, const float *key_add, long kas, long j0, long j1, long H, long dh, float scale,
                        float *scores, float *out, float *m, float *l) {
    level = usable(level);
#if defined(__x86_64__)
    if (level >= MSGEN_LEVEL_AVX512) { attend_rows_avx512(q, keys, ks, values, vs, ring, first, key_add, kas, j0, j1, H, dh, scale, scores, out, m, l); return; }
    if (level >= MSGEN_LEVEL_AVX2) { attend_rows_avx2(q, keys, ks, values, vs, ring, first, key_add, kas, j0, j1, H, dh, scale, scores, out, m, l); return; }
#endif
    attend_rows_base(q, keys, ks, values, vs, ring, first, key_add, kas, j0, j1, H, dh, scale, scores, out, m, l);
}

void msgen_gemm(int level, long m, long n, long k, float alpha, const float *a, long lda, const float *b, long ldb,
                int transposed_b, float beta, float *c, long ldc) {
    if (m <= 0 || n <= 0) return;
    level = usable(level);
#if defined(__x86_64__)
    if (level >= MSGEN_LEVEL_AVX512) { gemm_avx512(m, n, k, alpha, a, lda, b, ldb, transposed_b, beta, c, ldc); return; }
    if (level >= MSGEN_LEVEL_AVX2) { gemm_avx2(m, n, k, alpha, a, lda, b, ldb, transposed_b, beta, c, ldc); return; }
#endif
    gemm_base(m, n, k, alpha, a, lda, b, ldb, transposed_b, beta, c, ldc);
}

void msgen_attend_part(int level, const float *q, const float *keys, long key_stride, const float *values,
                       long value_stride, long j0, long j1, long H, long head_dim, float scale, float *scores,
                       float *out, float *m, float *l) {
    attend_rows(level, q, keys, key_stride, values, value_stride, 0, 0, NULL, 0, j0, j1, H, head_dim, scale, scores, out, m, l);
}

void msgen_attend_ring(int level, const float *q, const float *keys, const float *values, long stride, long ring,
                       long first, const float *key_add, long key_add_stride, long n, long H, long head_dim, float scale,
                       float *scores, float *out) {
    if (H <= 0) return;
    float m[H], l[H]; /* (H is a model's head count: a few dozen floats) */
    attend_rows(level, q, keys, stride, values, stride, ring, first, key_add, key_add_stride, 0, n, H, head_dim, scale, scores,
                out, m, l);
    msgen_attend_combine(1, H, head_dim, out, m, l, out);
}

/* Plain C: H·head_dim values per part, a few hundred a token. `out` may be `outs` when
   parts == 1 (each value is read before it is written). */
void msgen_attend_combine(long parts, long H, long head_dim, const float *outs, const float *ms, const float *ls,
                          float *out) {
    enum { MAX_PARTS = 64 };
    float weight[MAX_PARTS];
    if (parts > MAX_PARTS) parts = MAX_PARTS;
    if (parts == 1) { /* (the weight e^(m − m) is exactly 1: the same result without expf, a
                         tenth of a short window's attention) */
        for (long h = 0; h < H; h++) {
            float inv = ls[h] > 0 ? 1 / ls[h] : 0;
            for (long i = 0; i < head_dim; i++) out[h * head_dim + i] = outs[h * head_dim + i] * inv;
        }
        return;
    }
    for (long h = 0; h < H; h++) {
        float m = -__builtin_inff(), l = 0;
        for (long p = 0; p < parts; p++) if (ls[p * H + h] > 0 && ms[p * H + h] > m) m = ms[p * H + h];
        for (long p = 0; p < parts; p++) {
            weight[p] = ls[p * H + h] > 0 ? __builtin_expf(ms[p * H + h] - m) : 0;
            l += weight[p] * ls[p * H + h];
        }
        float inv = l > 0 ? 1 / l : 0;
        for (long i = 0; i < head_dim; i++) {
            float s = 0;
            for (long p = 0; p < parts; p++) if (weight[p] > 0) s += weight[p] * outs[p * H * head_dim + h * head_dim + i];
            out[h * head_dim + i] = s * inv;
        }
    }
}

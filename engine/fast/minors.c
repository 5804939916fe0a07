/* minor_stats_numpy of engine/mheight/minors.py in C: per size s, min, mean and std of log2 |det|
   over P's s x s submatrices, for LANES codes at a time.

   Why C: the features are paid on every prediction, and numpy's whole-array passes stream a
   code's ~250 minors through memory once per operation (docs/mheight.md). Here a chunk of
   LANES codes lives in ~20 KB of L1 and each step is a loop over LANES floats (one or two
   vector registers). The arithmetic is the numpy version's, in its order and roundings
   (multiply, then add: -std=c11 keeps gcc from fusing them), so the minors and minima are the
   same floats and the means and stds agree within float32 rounding (numpy orders its sums by
   the batch's shape); tests/test_mheight_minors.py holds them together. Built by engine/fast/builder.py. */

#include <math.h>
#include <stdint.h>
#include <string.h>

#define LANES 16
/* one value per code of a chunk, as GCC/Clang vector types: gcc's own vectoriser left the
   fully unrolled 16-lane loops scalar (measured), these compile to vector instructions */
typedef float vf __attribute__((vector_size(LANES * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(LANES * sizeof(int32_t))));

static inline vf select(vi mask, vf a, vf b) { return (vf)(((vi)a & mask) | ((vi)b & ~mask)); }

/* P (B, k, r) float32, entry (b, i, j) at P[b * ps + i * rs + j] (a view into zero-padded codes
   needs no copy); the plan (minors.plan): for each size s = 2 .. sizes, its entry table (s, Ns)
   and then its sub table (s, Ns), int32, one after the other in `tables`; starts and counts
   (sizes,) of each size's block in the stack of minors. out: row b at out + b * os, 3 * sizes
   values, each multiplied by scale (after the statistic, as numpy would). */
void minor_stats(const float *P, int64_t B, int64_t k, int64_t r, int64_t ps, int64_t rs, const int32_t *tables,
                 const int64_t *starts, const int64_t *counts, int64_t sizes, float *out, int64_t os, float scale) {
    const int64_t kr = k * r, total = starts[sizes - 1] + counts[sizes - 1];
    const vi half = (vi){0} + 0x3F000000, one = (vi){0} + 0x3F800000; /* bits of 0.5f and 1.0f */
    const vi abs_mask = (vi){0} + 0x7FFFFFFF;
    const float unit = 0x1p-23f; /* log2 in units of 2^-23, from the bits */
    vf E[2 * kr], A[total];      /* [P; -P] entries and the stack of minors; lane l = code c0 + l */
    for (int64_t c0 = 0; c0 < B; c0 += LANES) {
        const int64_t lanes = B - c0 < LANES ? B - c0 : LANES;
        for (int64_t j = 0; j < kr; j++) {
            const float *at = P + c0 * ps + (j / r) * rs + j % r;
            vf v = {0};
            for (int64_t l = 0; l < lanes; l++) v[l] = at[l * ps];
            E[j] = A[j] = v;
            E[kr + j] = -v;
        }
        const int32_t *t_at = tables;
        for (int64_t s = 2; s <= sizes; s++) {
            const int64_t ns = counts[s - 1];
            const int32_t *entry = t_at, *sub = t_at + s * ns;
            vf *o = A + starts[s - 1];
            for (int64_t j = 0; j < ns; j++) {
                /* det = sum_t sign * P[last, C_t] * minor(R without last, C without C_t), term by term */
                vf acc = E[entry[j]] * A[sub[j]];
                for (int64_t t = 1; t < s; t++) acc = acc + E[entry[t * ns + j]] * A[sub[t * ns + j]];
                o[j] = acc;
            }
            t_at += 2 * s * ns;
        }
        for (int64_t j = 0; j < total; j++) { /* log2_bits, then as float (minors.py's L) */
            vi b = (vi)A[j] & abs_mask;
            b = (b & (b > half)) | (half & ~(b > half)); /* singular minors count as |det| = 0.5 */
            A[j] = __builtin_convertvector(b - one, vf);
        }
        for (int64_t i = 0; i < sizes; i++) {
            const int64_t cnt = counts[i];
            vf lo = A[starts[i]], sum = {0}, sq = {0};
            for (int64_t j = starts[i]; j < starts[i] + cnt; j++) {
                const vf v = A[j];
                lo = select(v < lo, v, lo);
                sum = sum + v;
                sq = sq + v * v;
            }
            const float mean_scale = unit / (float)cnt, sq_scale = unit * unit / (float)cnt;
            const vf mean = sum * mean_scale, var = sq * sq_scale - mean * mean;
            for (int64_t l = 0; l < lanes; l++) {
                float *o = out + (c0 + l) * os + 3 * i;
                o[0] = lo[l] * unit * scale;
                o[1] = mean[l] * scale;
                o[2] = sqrtf(var[l] > 0.0f ? var[l] : 0.0f) * scale;
            }
        }
    }
}

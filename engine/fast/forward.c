/* Prediction of the m-height fast models in C: fc nets with ReLU and no LayerNorm, alone or as
   the experts of a sparse top-k MoE with a linear gate (engine/fast/forward.py packs
   them; the torch modules stay the definition, the fallback and the GPU path).

   Why C: such a net does ~2,000 multiply-adds per code, less than torch spends dispatching the
   ~40 operations of a sparse MoE's forward pass over a batch (gathers, scatters, top-k, one
   pass over memory each). Here CB codes go through a net at once, V units per vector
   register, the weights streaming from L1; the gate routes each code, and each expert then
   runs on the codes routed to it only.

   Weights come in (in, out) order with out padded to a multiple of V (zero units stay zero
   through ReLU and add nothing), the inputs' standardisation folded into the first layers and
   the gate's temperature into the gate. Rounding differs from torch's (fused multiply-adds, sum
   order): tests/test_mheight_forward.py holds the two within float32 tolerance. Built by
   engine/fast/builder.py. */

#pragma GCC optimize("fp-contract=fast") /* a*b+c as one FMA: ~2x, and MKL rounds so too */

#include <math.h>
#include <stdint.h>
#include <string.h>

#define V 16 /* floats per vector register; every width is padded to a multiple of it */
#define CB 16 /* codes per block: independent accumulators hide the FMA latency and share each weight load */
typedef float vf __attribute__((vector_size(V * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(V * sizeof(int32_t))));

#define XS 80 /* floats per code row in a block buffer: the widest input or layer forward.c takes */

/* y[c] = act(b + x[c] W) for CB codes: x[c] at x + c * XS (in floats), W (in, nv * V), y[c] at
   y + c * XS. Units are the vector lanes and the CB codes independent accumulators; rows a
   compile-time stride apart are one pointer and constant offsets (16 row pointers would not
   fit in registers, and reloading them cost more than the multiply-adds). */
static void dense(const float *x, int64_t in, const float *W, const float *b, int64_t nv, float *y, int relu) {
    for (int64_t v = 0; v < nv; v++) {
        vf acc[CB];
        vf bias;
        memcpy(&bias, b + v * V, sizeof(vf));
        for (int c = 0; c < CB; c++) acc[c] = bias;
        for (int64_t i = 0; i < in; i++) {
            vf w;
            memcpy(&w, W + (i * nv + v) * V, sizeof(vf));
            for (int c = 0; c < CB; c++) acc[c] += x[c * XS + i] * w;
        }
        for (int c = 0; c < CB; c++) {
            /* keep where not <= 0 rather than where > 0: a NaN stays NaN, as in torch's ReLU (a NaN
               weight or input must not come out as a plausible prediction); the same instructions */
            const vf r = relu ? (vf)((vi)acc[c] & ~(acc[c] <= 0)) : acc[c];
            memcpy(y + c * XS + v * V, &r, sizeof(vf));
        }
    }
}

/* The rows of codes idx[0..n) of X (N, D) into the block buffer, the last repeated to fill CB. */
static void gather(const float *X, int64_t D, const int64_t *idx, int64_t first, int64_t n, float *blk) {
    for (int64_t c = 0; c < CB; c++) {
        const int64_t row = idx ? idx[c < n ? c : n - 1] : first + (c < n ? c : n - 1);
        memcpy(blk + c * XS, X + row * D, sizeof(float) * D);
    }
}

/* log2 h = softplus(s) = max(s, 0) + log1p(exp(-|s|)), a register at a time (torch's is ~15% of a
   prediction through a separate pass). exp by Cody-Waite reduction and a degree-6 polynomial;
   log1p(t) = 2 atanh(t / (2 + t)) by its odd series, t <= 1 so the ratio <= 1/3 and terms to
   the 11th power leave < 1e-7 relative. */
static vf softplus(vf s) {
    const vf y0 = (vf)((vi)s | ((vi){0} + (int32_t)0x80000000)); /* -|s| */
    const vf y = (vf)((vi)y0 & (y0 > -87.0f)) + (vf)((vi)((vf){0} - 87.0f) & (y0 <= -87.0f));
    const vf n = __builtin_convertvector(__builtin_convertvector(y * 1.44269504f - 0.5f, vi), vf);
    const vf r = (y - n * 0.693359375f) + n * 2.12194440e-4f;
    vf p = (vf){0} + 1.0f / 720;
    p = p * r + 1.0f / 120, p = p * r + 1.0f / 24, p = p * r + 1.0f / 6, p = p * r + 0.5f, p = p * r + 1.0f, p = p * r + 1.0f;
    const vf t = p * (vf)((__builtin_convertvector(n, vi) + 127) << 23); /* exp(-|s|) in (0, 1] */
    const vf a = t / (t + 2.0f), z = a * a;
    vf q = (vf){0} + 1.0f / 11;
    q = q * z + 1.0f / 9, q = q * z + 1.0f / 7, q = q * z + 1.0f / 5, q = q * z + 1.0f / 3, q = q * z + 1.0f;
    return (vf)((vi)s & ~(s <= 0)) + 2.0f * a * q; /* max(s, 0), NaN kept (as torch's softplus keeps it) */
}

/* X (N, D) float32 inputs. widths[0..L+1]: D, the padded hidden widths, the padded output width
   Mo (all but D multiples of V). params: E experts of `stride` floats, each (W, b) per layer,
   W (in, out). Gate (E > 1, E <= V): gate_w (D, V) and gate_b (V), unused experts' bias -inf;
   top-K (K <= 2) of its logits, the two mixed by the softmax of their logits. base: the
   per-(n, k) offsets, row (n * cols + k), Mo wide; k and r (N,) each code's k and n-k.
   out (N, Mo) = softplus(base + the routed experts' outputs, added expert by expert, torch's
   order). counts (E): codes routed to each expert. iscratch: 2 N K + E + 1 int64s; fscratch:
   2 N K + 3 CB XS floats. D and every width at most XS. */
void moe_forward(const float *X, int64_t N, int64_t E, int64_t K, const float *gate_w, const float *gate_b,
                 int64_t L, const int64_t *widths, const float *params, int64_t stride, const float *base,
                 int64_t cols, const int64_t *k, const int64_t *r, float *out, int64_t *counts, int64_t *iscratch,
                 float *fscratch) {
    const int64_t D = widths[0], Mo = widths[L + 1];
    int64_t *code = iscratch, *pick = code + N * K, *first = pick + N * K;
    float *weight = fscratch, *pick_w = weight + N * K, *a = pick_w + N * K, *b = a + CB * XS, *logit = b + CB * XS;
    memset(first, 0, sizeof(int64_t) * (E + 1));
    for (int64_t c = 0; c < N; c++) memcpy(out + c * Mo, base + ((k[c] + r[c]) * cols + k[c]) * Mo, sizeof(float) * Mo);

    /* route: each code's top-K experts and their weights */
    for (int64_t c0 = 0; c0 < N; c0 += CB) {
        const int64_t n = N - c0 < CB ? N - c0 : CB;
        if (E == 1) {
            for (int64_t c = 0; c < n; c++) pick[c0 + c] = 0, pick_w[c0 + c] = 1.0f;
            continue;
        }
        gather(X, D, NULL, c0, n, a);
        dense(a, D, gate_w, gate_b, 1, logit, 0);
        for (int64_t c = 0; c < n; c++) {
            const float *g = logit + c * XS;
            int64_t e0 = 0, e1 = -1;
            for (int64_t e = 1; e < E; e++) if (g[e] > g[e0]) e0 = e;
            pick[(c0 + c) * K] = e0, pick_w[(c0 + c) * K] = 1.0f;
            if (K == 2) {
                for (int64_t e = 0; e < E; e++) if (e != e0 && (e1 < 0 || g[e] > g[e1])) e1 = e;
                const float g0 = 1.0f / (1.0f + expf(-(g[e0] - g[e1])));
                pick_w[(c0 + c) * K] = g0;
                pick[(c0 + c) * K + 1] = e1, pick_w[(c0 + c) * K + 1] = 1.0f - g0;
            }
        }
    }
    /* each expert's codes, in code order (a counting sort) */
    for (int64_t s = 0; s < N * K; s++) first[pick[s] + 1]++;
    for (int64_t e = 0; e < E; e++) counts[e] = first[e + 1], first[e + 1] += first[e];
    for (int64_t s = 0; s < N * K; s++) {
        const int64_t at = first[pick[s]]++;
        code[at] = K == 2 ? s >> 1 : s, weight[at] = pick_w[s]; /* s / K without a division */
    }
    /* experts, CB of their codes at a time */
    for (int64_t e = 0; e < E; e++) {
        const float *p0 = params + e * stride;
        for (int64_t s0 = 0; s0 < counts[e]; s0 += CB) {
            const int64_t n = counts[e] - s0 < CB ? counts[e] - s0 : CB, at = first[e] - counts[e] + s0;
            gather(X, D, code + at, 0, n, a);
            const float *p = p0;
            float *x = a, *y = b;
            for (int64_t l = 0; l <= L; l++) {
                const int64_t in = widths[l], o = widths[l + 1];
                dense(x, in, p, p + in * o, o / V, y, l < L);
                p += in * o + o;
                float *t = x; x = y, y = t;
            }
            for (int64_t c = 0; c < n; c++) {
                float *dst = out + code[at + c] * Mo;
                const float w = weight[at + c];
                for (int64_t j = 0; j < Mo; j++) dst[j] += w * x[c * XS + j];
            }
        }
    }
    for (int64_t i = 0; i < N * Mo; i += V) {
        vf v;
        memcpy(&v, out + i, sizeof(vf));
        v = softplus(v);
        memcpy(out + i, &v, sizeof(vf));
    }
}

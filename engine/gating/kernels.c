/* One training step of the gating MLP on the CPU, as one C call: forward, the loss's
   gradient, backward, clipping and AdamW.

   Why C: a batch is 128 x E numbers and a hidden layer 128 x 256, so in torch each
   of the step's ~25 small ops and 8 matrix products costs its dispatch (~3-5 us) on
   top of its arithmetic, ~300 of a step's ~500 us (docs/gating.md). The matrix
   products call the sgemm_ that torch's own CPU library exports (MKL's), so they
   are the same kernels torch.addmm runs. Each part is the C twin of torch code that
   stays the definition and the GPU path:
     loss_grad    EpochLoss.grad (engine/gating/loss_grad.py), + the output bias's gradient
     relu_keep    ReLU then dropout's keep mask, in Step.forward (engine/gating/backprop.py)
     relu_back    ReLU's backward in Step.backward, + the previous layer's bias gradient
     clip_adamw   clip_scale, then torch._fused_adamw_ with it as grad_scale (AdamW.step)
   tests/test_gating_native.py holds the step against its twin.
   Built by engine/gating/native.py with the system compiler; float32 throughout, as the step is. */

#include <math.h>
#include <stdint.h>
#include <string.h>

#define LOG_FLOOR (-1e4f) /* engine/gating/losses.py _LOG_FLOOR: 0 log 0 = 0 for experts top-k dropped */

typedef struct {
    int64_t E, G, k;                     /* experts, groups, the top-k router's k */
    int64_t top_k, lb, entropy, prior;   /* 0/1: router is top_k; which terms are on */
    int64_t resp_tempered;               /* 1: resp_kl with T != 1 (T = 1 is folded into neg_r_coef) */
    float inv_t, lb_coef, inv_resp_t;    /* 1 / router temperature; lambda_lb / T; 1 / resp temperature */
    const float *z;                      /* (B, E) the batch's router logits */
    float *grad;                         /* (B, E) out: d loss / d z */
    float *bias_grad;                    /* (E) out: the output layer's bias gradient, sum of grad's rows */
    /* the epoch's arrays (EpochLoss), indexed by sample i in the epoch's order or by batch b */
    const float *noise, *logp, *neg_r_coef, *prior_coef, *inv_count, *log_prior, *ent_coef, *resp_coef;
    const int64_t *group;
    float *weights, *resp, *mean_w, *slots, *dense_mean;
} LossArgs;

/* log_softmax of x[e] * scale over the experts with keep[e] (all when keep is NULL); -inf elsewhere */
static void log_softmax(const float *x, float scale, const uint8_t *keep, int64_t E, float *out) {
    float m = -INFINITY, s = 0.0f;
    for (int64_t e = 0; e < E; e++)
        if (!keep || keep[e]) m = fmaxf(m, x[e] * scale);
    for (int64_t e = 0; e < E; e++)
        if (!keep || keep[e]) s += expf(x[e] * scale - m);
    const float lse = m + logf(s);
    for (int64_t e = 0; e < E; e++) out[e] = (!keep || keep[e]) ? x[e] * scale - lse : -INFINITY;
}

/* the k largest of x (first index wins a tie); all of them when k >= E */
static void top_k(const float *x, int64_t E, int64_t k, uint8_t *keep) {
    for (int64_t e = 0; e < E; e++) keep[e] = 0;
    for (int64_t j = 0; j < k && j < E; j++) {
        int64_t best = -1;
        for (int64_t e = 0; e < E; e++)
            if (!keep[e] && (best < 0 || x[e] > x[best])) best = e;
        keep[best] = 1;
    }
}

/* Batch b = samples [start, stop) of the epoch; z and grad are that batch's rows.
   Two passes: the first routes every sample (w, and the batch's group means and
   top-k counts that the prior and load-balancing terms need), the second adds up
   each sample's gradient. Between them grad's rows hold a = log w. */
static void loss_grad(const LossArgs *c, int64_t b, int64_t start, int64_t stop) {
    const int64_t E = c->E, G = c->G, B = stop - start;
    float noisy[E], dense[E], g[E], lr[E], lq[E], d_mean[G > 0 ? G * E : 1], d_dense[E];
    uint8_t keep[E];
    float *mean_w = c->mean_w + b * G * E, *slots = c->slots + b * E, *dense_mean = c->dense_mean + b * E;
    if (c->prior) memset(mean_w, 0, sizeof(float) * (size_t)(G * E));
    if (c->lb) {
        memset(slots, 0, sizeof(float) * (size_t)E);
        memset(dense_mean, 0, sizeof(float) * (size_t)E);
    }
    for (int64_t r = 0; r < B; r++) {
        const int64_t i = start + r;
        const float *z = c->z + r * E;
        float *a = c->grad + r * E, *w = c->weights + i * E;
        if (c->top_k) {
            for (int64_t e = 0; e < E; e++) noisy[e] = z[e] + (c->noise ? c->noise[i * E + e] : 0.0f);
            top_k(noisy, E, c->k, keep);
            log_softmax(noisy, c->inv_t, keep, E, a);
        } else {
            log_softmax(z, c->inv_t, NULL, E, a);
        }
        for (int64_t e = 0; e < E; e++) w[e] = expf(a[e]);
        if (c->prior) {
            float *m = mean_w + c->group[i] * E;
            for (int64_t e = 0; e < E; e++) m[e] += w[e] * c->inv_count[i];
        }
        if (c->lb) {
            log_softmax(z, c->inv_t, NULL, E, dense);
            for (int64_t e = 0; e < E; e++) {
                slots[e] += keep[e];
                dense_mean[e] += expf(dense[e]);
            }
        }
    }
    if (c->prior)
        for (int64_t j = 0; j < G * E; j++) d_mean[j] = logf(fmaxf(mean_w[j], 1e-12f)) - c->log_prior[j];
    if (c->lb) {
        for (int64_t e = 0; e < E; e++) {
            slots[e] /= (float)(B * c->k);
            dense_mean[e] /= (float)B;
            d_dense[e] = slots[e] * ((float)E / (float)B);
        }
    }
    memset(c->bias_grad, 0, sizeof(float) * (size_t)E);
    for (int64_t r = 0; r < B; r++) {
        const int64_t i = start + r;
        float *a = c->grad + r * E;
        const float *w = c->weights + i * E, *logp = c->logp + i * E;
        float s[E];
        for (int64_t e = 0; e < E; e++) s[e] = a[e] + logp[e]; /* log w_e p_e(y); -inf where top-k dropped e */
        if (c->resp_tempered) {
            log_softmax(s, 1.0f, NULL, E, lr);
            log_softmax(lr, c->inv_resp_t, NULL, E, lq);
            for (int64_t e = 0; e < E; e++) {
                const float q = expf(lq[e]);
                c->resp[i * E + e] = q * (fmaxf(lq[e], LOG_FLOOR) - fmaxf(a[e], LOG_FLOOR));
                g[e] = expf(lr[e]) * c->neg_r_coef[i] + c->resp_coef[b] * q;
            }
        } else {
            log_softmax(s, 1.0f, NULL, E, lr);
            for (int64_t e = 0; e < E; e++) g[e] = expf(lr[e]) * c->neg_r_coef[i];
        }
        if (c->entropy)
            for (int64_t e = 0; e < E; e++) g[e] += c->ent_coef[b] * (c->top_k ? fmaxf(a[e], LOG_FLOOR) : a[e]) * w[e];
        if (c->prior) {
            const float *d = d_mean + c->group[i] * E;
            for (int64_t e = 0; e < E; e++) g[e] += c->prior_coef[i] * d[e] * w[e];
        }
        float sum = 0.0f;
        for (int64_t e = 0; e < E; e++) sum += g[e];
        for (int64_t e = 0; e < E; e++) g[e] -= w[e] * sum; /* the softmax backward */
        if (c->lb) {
            const float *z = c->z + r * E;
            log_softmax(z, c->inv_t, NULL, E, dense);
            float dot = 0.0f;
            for (int64_t e = 0; e < E; e++) dot += expf(dense[e]) * d_dense[e];
            for (int64_t e = 0; e < E; e++) g[e] += expf(dense[e]) * (d_dense[e] - dot) * c->lb_coef;
        }
        for (int64_t e = 0; e < E; e++) {
            a[e] = g[e];
            c->bias_grad[e] += g[e];
        }
    }
}

/* h = relu(h), times dropout's 0/1 keep mask when there is one (its 1 / (1 - p) rides in the next product) */
static void relu_keep(float *h, const uint8_t *keep, int64_t n) {
    if (keep) {
        for (int64_t j = 0; j < n; j++) h[j] = (h[j] < 0.0f ? 0.0f : h[j]) * (float)keep[j];
    } else {
        for (int64_t j = 0; j < n; j++) h[j] = h[j] < 0.0f ? 0.0f : h[j];
    }
}

/* g = g where act > 0, else 0 (aten threshold_backward at 0), and colsum = the column sums of the result */
static void relu_back(float *g, const float *act, int64_t rows, int64_t width, float *colsum) {
    memset(colsum, 0, sizeof(float) * (size_t)width);
    for (int64_t r = 0; r < rows; r++) {
        float *gr = g + r * width;
        const float *ar = act + r * width;
        for (int64_t j = 0; j < width; j++) {
            gr[j] = ar[j] > 0.0f ? gr[j] : 0.0f;
            colsum[j] += gr[j];
        }
    }
}

/* Clipping to max_norm (torch's clip_grad_norm_ as clip_scale writes it), then one AdamW step
   (torch._fused_adamw_'s CPU kernel: decoupled decay, bias-corrected moments). step is the
   step count after this step (1 for the first). */
static void clip_adamw(float *p, float *g, float *m, float *v, int64_t n, double lr, double weight_decay,
                      double beta1, double beta2, double eps, int64_t step, double max_norm) {
    /* 16 partial sums: one float sum's add latency per element would cost more than the update below */
    float lane[16] = {0};
    int64_t j = 0;
    for (; j + 16 <= n; j += 16)
        for (int l = 0; l < 16; l++) lane[l] += g[j + l] * g[j + l];
    double ss = 0.0;
    for (int l = 0; l < 16; l++) ss += lane[l];
    for (; j < n; j++) ss += (double)g[j] * g[j];
    const float norm = (float)sqrt(ss);
    const float scale = fmaxf((norm + 1e-6f) / (float)max_norm, 1.0f);
    const float decay = (float)(1.0 - lr * weight_decay);
    const float b1 = (float)(1.0 - beta1), b2 = (float)beta2, nb2 = (float)(1.0 - beta2);
    const float step_size = (float)(lr / (1.0 - pow(beta1, (double)step)));
    const float bc2_sqrt = (float)sqrt(1.0 - pow(beta2, (double)step));
    const float e = (float)eps;
    for (j = 0; j < n; j++) {
        const float gj = g[j] / scale;
        g[j] = gj;
        m[j] += b1 * (gj - m[j]);
        v[j] = b2 * v[j] + nb2 * gj * gj;
        p[j] = p[j] * decay - step_size * m[j] / (sqrtf(v[j]) / bc2_sqrt + e);
    }
}

/* Fortran BLAS sgemm (column-major): C = alpha op(A) op(B) + beta C */
typedef void (*sgemm_fn)(const char *ta, const char *tb, const int *m, const int *n, const int *k, const float *alpha,
                         const float *a, const int *lda, const float *b, const int *ldb, const float *beta, float *c,
                         const int *ldc);

#define MAX_LAYERS 16

typedef struct {
    sgemm_fn sgemm;
    int64_t layers;                      /* hidden layers + the output layer */
    int64_t width[MAX_LAYERS + 1];       /* the input's width, then each layer's output width */
    float *weight[MAX_LAYERS], *bias[MAX_LAYERS], *weight_grad[MAX_LAYERS], *bias_grad[MAX_LAYERS];
    float *act[MAX_LAYERS];              /* each layer's output (max rows x width); the last is z */
    float *gin[MAX_LAYERS];              /* d loss / d hidden activation, per hidden layer */
    const float *x;                      /* the epoch's features (n, width[0]) in its order */
    const uint8_t *keep[MAX_LAYERS];     /* the epoch's dropout keep masks (n, width) per hidden layer, or NULL */
    float scale;                         /* dropout's 1 / (1 - p), folded into the next layer's products */
    float *p, *g, *m, *v;                /* the flat parameters, gradient and AdamW moments */
    int64_t n_params, step;              /* step: AdamW's count of steps taken */
    double lr, weight_decay, beta1, beta2, eps, max_norm;
    LossArgs loss;                       /* loss.z / loss.grad / loss.bias_grad: act[last], the output's gradient, bias_grad[last] */
} StepArgs;

/* row-major out (rows x n) = alpha a (rows x k) @ b (n x k)^T + beta out: column-major out^T = alpha b a^T + beta out^T */
static void mm_nt(const StepArgs *s, int rows, int n, int k, float alpha, const float *a, const float *b, float beta,
                  float *out) {
    s->sgemm("T", "N", &n, &rows, &k, &alpha, b, &k, a, &k, &beta, out, &n);
}

/* row-major out (n x k) = alpha g (rows x n)^T @ inp (rows x k): a weight's gradient */
static void mm_tn(const StepArgs *s, int rows, int n, int k, float alpha, const float *g, const float *inp,
                  float *out) {
    const float zero = 0.0f;
    s->sgemm("N", "T", &k, &n, &rows, &alpha, inp, &k, g, &n, &zero, out, &k);
}

/* row-major out (rows x k) = alpha g (rows x n) @ w (n x k): a layer input's gradient */
static void mm_nn(const StepArgs *s, int rows, int n, int k, float alpha, const float *g, const float *w,
                  float *out) {
    const float zero = 0.0f;
    s->sgemm("N", "N", &k, &rows, &n, &alpha, w, &k, g, &n, &zero, out, &k);
}

/* Batch b = samples [start, stop) of the epoch: Step.forward, EpochLoss.grad, Step.backward,
   clip_scale and AdamW.step. */
static void step(StepArgs *s, int64_t b, int64_t start, int64_t stop) {
    const int rows = (int)(stop - start);
    const int64_t last = s->layers - 1;
    const float *h = s->x + start * s->width[0];
    for (int64_t i = 0; i <= last; i++) {
        const int n = (int)s->width[i + 1], k = (int)s->width[i];
        float *out = s->act[i];
        for (int r = 0; r < rows; r++) memcpy(out + (int64_t)r * n, s->bias[i], sizeof(float) * (size_t)n);
        mm_nt(s, rows, n, k, i ? s->scale : 1.0f, h, s->weight[i], 1.0f, out);
        if (i < last) relu_keep(out, s->keep[i] ? s->keep[i] + start * n : NULL, (int64_t)rows * n);
        h = out;
    }
    loss_grad(&s->loss, b, start, stop);
    const float *g = s->loss.grad;
    for (int64_t i = last; i >= 0; i--) {
        const int n = (int)s->width[i + 1], k = (int)s->width[i];
        const float alpha = i ? s->scale : 1.0f;
        const float *inp = i ? s->act[i - 1] : s->x + start * s->width[0];
        mm_tn(s, rows, n, k, alpha, g, inp, s->weight_grad[i]);
        if (i) {
            mm_nn(s, rows, n, k, alpha, g, s->weight[i], s->gin[i - 1]);
            relu_back(s->gin[i - 1], s->act[i - 1], rows, k, s->bias_grad[i - 1]);
            g = s->gin[i - 1];
        }
    }
    s->step += 1;
    clip_adamw(s->p, s->g, s->m, s->v, s->n_params, s->lr, s->weight_decay, s->beta1, s->beta2, s->eps,
                      s->step, s->max_norm);
}

/* Batches [b0, b1) of the epoch, bounds[b] = {start, stop}. Several per call: ctypes lets go of
   the GIL for the call, and each return has to take it back from the thread reporting the last
   epoch (up to Python's 5 ms switch interval when that thread is busy in Python). */
void gate_steps(StepArgs *s, const int64_t *bounds, int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; b++) step(s, b, bounds[2 * b], bounds[2 * b + 1]);
}

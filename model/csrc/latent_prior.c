/* A block's latents drawn one after another under the latent prior (model/latent_prior.py), in one call.

Glossary of axis letters:
    B  batch      n  steps      Z  latent variables per step      K  classes of each      R  prior width
    M  hidden width of the prior's MLP

Per row, from the state r before the first step (model/latent_prior.py, LatentPrior.draw):
    logits_t = base_t + W2 GELU(W1 LayerNorm(r) + b1 + pre_t) + b2          (Z*K,)
    z_t[i]   = the inverse-CDF draw of latent i from logits_t[iK : (i+1)K] at the row's temperature
    r        = a * r + sum_i E[:, i K + z_t[i]]
the draw being csrc/categorical.c's, so a draw equals sample_categorical's.  In PyTorch a step is
about a dozen calls of a few microseconds of arithmetic each; a block of 256 steps at batch 1 took
as long as the autoregressive SSM's 256 network steps (docs/experiments/blocks.md, eighteenth
session).  The two products run through the network step's linear (csrc/s4d_block.c, LINEAR: its
sums in registers, as the autoregressive SSM's step has them), not as one row of sums in memory
updated per input: a fifth faster (blocks.md, nineteenth session).  A step reads M (R + Z K)
weights, from the second-level cache at these sizes; their bytes set its time.

Layouts: base (B, n, Z*K) with strides base_sb, base_st (the last contiguous), or NULL (zeros: the
uniform base); pre (B, n, M) with strides pre_sb, pre_st, the product G g_t of the partial encoder's
context features (VSSMConfig.prior_context), or NULL (none); u (B, n, Z) with row stride u_sb (the rest contiguous); temperature (B,) doubles; r
(B, R) contiguous, read and overwritten with the state after the last step; z (B, n, Z) int64 with
row stride z_sb (a block inside a longer call's buffers: csrc/rounds.c).  The weights, packed by
model/native.py (pack_prior): a = sigmoid(decay) (R), E transposed (Z*K, R), LayerNorm weight and
bias (R each), W1 transposed (R, M) as (in, out), b1 (M), W2 transposed (M, Z*K), b2 (Z*K).
scratch holds R + M + Z*K reals.  Nothing here checks a shape: the caller does. */

#include <math.h>
#include <stdint.h>

#include "vecmath.h" /* libmvec's vector exp and erf */

void linear_rows_f32(long R, long K, long M, const float *a, const float *wt, const float *bias, float *out);
void linear_rows_f64(long R, long K, long M, const double *a, const double *wt, const double *bias, double *out);
void categorical_f32(long R, long V, const float *logits, const float *u, double temperature, int64_t *out);
void categorical_f64(long R, long V, const double *logits, const double *u, double temperature, int64_t *out);

/* What both forms of a step share, from the hidden layer g (M) on: logits = base_t (bt, or NULL) + W2 g +
   b2, the draws z_t, then r = a r + E z_t */
/* LayerNorm(r)'s mean and 1 / sqrt(var + eps), the biased variance, as PyTorch's */
#define PRIOR_STATS(NAME, REAL)                                                                             \
    static inline void NAME(long R, const REAL *r, double eps, REAL *mean, REAL *inv) {                     \
        REAL m = 0, var = 0;                                                                                \
        for (long i = 0; i < R; ++i) m += r[i];                                                             \
        m /= (REAL)R;                                                                                       \
        for (long i = 0; i < R; ++i) var += (r[i] - m) * (r[i] - m);                                        \
        *mean = m, *inv = (REAL)1 / (REAL)sqrt(var / (REAL)R + (REAL)eps);                                  \
    }
PRIOR_STATS(prior_stats_f32, float)
PRIOR_STATS(prior_stats_f64, double)

#define PRIOR_TAIL(NAME, REAL, DRAW, LINEAR)                                                                \
    static inline void NAME(long Z, long K, long R, long M, const REAL *g, const REAL *W2, const REAL *b2, \
                            const REAL *bt, const REAL *u, double temperature, const REAL *a,              \
                            const REAL *ET, REAL *logits, REAL *r, int64_t *zt) {                          \
        const long ZK = Z * K;                                                                              \
        LINEAR(1, M, ZK, g, W2, b2, logits);                                                                \
        if (bt)                                                                                             \
            for (long o = 0; o < ZK; ++o) logits[o] += bt[o];                                               \
        DRAW(Z, K, logits, u, temperature, zt);                                                             \
        _Pragma("omp simd") for (long i = 0; i < R; ++i) r[i] *= a[i];                                      \
        for (long j = 0; j < Z; ++j) {                                                                      \
            const REAL *e = ET + (j * K + zt[j]) * R;                                                       \
            _Pragma("omp simd") for (long i = 0; i < R; ++i) r[i] += e[i];                                  \
        }                                                                                                   \
    }
PRIOR_TAIL(prior_tail_f32, float, categorical_f32, linear_rows_f32)
PRIOR_TAIL(prior_tail_f64, double, categorical_f64, linear_rows_f64)

/* GELU's loop as wide as the machine's vectors: GCC's tuning for AVX-512 machines keeps loops it vectorises
   itself at 32 bytes, and libmvec's 16-lane erff took an image at block 28 about 6% faster than its
   8-lane one on a Xeon (docs/experiments/blocks.md, twenty-fourth session) */
#if defined(__AVX512F__)
#define GELU_F32 "omp simd simdlen(16)"
#define GELU_F64 "omp simd simdlen(8)"
#else
#define GELU_F32 "omp simd"
#define GELU_F64 "omp simd"
#endif

#define LATENT_PRIOR(NAME, REAL, ERF, STATS, TAIL, LINEAR, GELU)                                                         \
    void NAME(long B, long n, long Z, long K, long R, long M, const REAL *base, long base_sb, long base_st, \
              const REAL *pre, long pre_sb, long pre_st, const REAL *u, long u_sb, const double *temperature, \
              const REAL *packed, double eps, REAL *r, int64_t *z, long z_sb, REAL *scratch) {               \
        const long ZK = Z * K;                                                                              \
        const REAL *a = packed, *ET = a + R, *ln_w = ET + ZK * R, *ln_b = ln_w + R;                         \
        const REAL *W1 = ln_b + R, *b1 = W1 + R * M, *W2 = b1 + M, *b2 = W2 + M * ZK;                       \
        REAL *h = scratch, *g = h + R, *logits = g + M;                                                     \
        for (long b = 0; b < B; ++b) {                                                                      \
            REAL *rb = r + b * R;                                                                           \
            for (long t = 0; t < n; ++t) {                                                                  \
                REAL mean, inv; /* LayerNorm(r) */                                                          \
                STATS(R, rb, eps, &mean, &inv);                                                             \
                for (long i = 0; i < R; ++i) h[i] = (rb[i] - mean) * inv * ln_w[i] + ln_b[i];               \
                /* g = GELU(W1 h + b1 + pre_t), the exact GELU */                                           \
                LINEAR(1, R, M, h, W1, b1, g);                                                              \
                if (pre) {                                                                                  \
                    const REAL *pt = pre + b * pre_sb + t * pre_st;                                         \
                    for (long o = 0; o < M; ++o) g[o] += pt[o];                                             \
                }                                                                                           \
                _Pragma(GELU) for (long o = 0; o < M; ++o) g[o] =                                           \
                    (REAL)0.5 * g[o] * ((REAL)1 + ERF(g[o] * (REAL)0.70710678118654752440));                \
                /* logits = base_t + W2 g + b2, the draws, then r = a r + E z_t */                          \
                const REAL *bt = base ? base + b * base_sb + t * base_st : 0;                               \
                TAIL(Z, K, R, M, g, W2, b2, bt, u + b * u_sb + t * Z, temperature[b], a, ET, logits, rb,    \
                     z + b * z_sb + t * Z);                                                                 \
            }                                                                                               \
        }                                                                                                   \
    }

/* The same draws for a block from its start (r = 0 before its first step), reading tables instead of W1
(csrc/patch_rounds.c, a block a patch).  From r = 0, r before step t is sum_{s<t} a^(t-1-s) E[:, c_s]
over the classes c_s drawn at s, so with Q = W1 diag(LayerNorm weight) and T[d][c] = Q (a^d E[:, c]):
    W1 LayerNorm(r) + b1 = inv (Q r) - inv mean(r) (W1 ln_w) + (W1 ln_b + b1),   Q r = sum_s T[t-1-s][c_s]
where mean(r) and inv = 1 / sqrt(var(r) + eps) come from r itself (R numbers).  T of class 0 of each
latent, summed, is q0[t] = sum_{d<t} sum_i T[d][iK]; a class other than 0 drawn at s adds
Td[t-1-s][c] = T[t-1-s][c] - T[t-1-s][iK].  So a step reads q0[t] and one row of Td per draw other than
class 0 so far in the block (for pixel latents: the ink), M numbers each, not W1's R M: the product
read W1 from the second-level cache at every step and was the prior's largest cost
(docs/experiments/blocks.md, twenty-third session).  Equal to LATENT_PRIOR up to float rounding.

Layouts as LATENT_PRIOR's, plus P (n <= P) and table: q0 (P, M), Td (P, Z K, M), c1 = W1 ln_w (M), c2 =
W1 ln_b + b1 (M), built by model/native.py (prior_tables); r is set to 0 first. */
#define LATENT_PRIOR_TABLE(NAME, REAL, ERF, STATS, TAIL, GELU)                                                   \
    void NAME(long B, long n, long Z, long K, long R, long M, long P, const REAL *base, long base_sb,        \
              long base_st, const REAL *pre, long pre_sb, long pre_st, const REAL *u, long u_sb,            \
              const double *temperature, const REAL *packed, double eps, const REAL *table, REAL *r,        \
              int64_t *z, long z_sb, REAL *scratch) {                                                       \
        const long ZK = Z * K;                                                                              \
        /* the pack as LATENT_PRIOR's; LayerNorm's weights, W1 and b1 are in the tables */                  \
        const REAL *a = packed, *ET = a + R, *W2 = ET + ZK * R + 2 * R + R * M + M, *b2 = W2 + M * ZK;     \
        const REAL *q0 = table, *Td = q0 + P * M, *c1 = Td + P * ZK * M, *c2 = c1 + M;                      \
        REAL *g = scratch + R, *logits = g + M;                                                             \
        long es[n * Z + 1], ec[n * Z + 1]; /* the draws other than class 0: step, class */                  \
        for (long b = 0; b < B; ++b) {                                                                      \
            REAL *rb = r + b * R;                                                                           \
            long ne = 0;                                                                                    \
            for (long i = 0; i < R; ++i) rb[i] = 0;                                                         \
            for (long t = 0; t < n; ++t) {                                                                  \
                REAL mean, inv;                                                                             \
                STATS(R, rb, eps, &mean, &inv);                                                             \
                const REAL shift = inv * mean;                                                              \
                const REAL *qt = q0 + t * M;                                                                \
                _Pragma("omp simd") for (long o = 0; o < M; ++o) g[o] = qt[o];                              \
                for (long e = 0; e < ne; ++e) {                                                             \
                    const REAL *d = Td + ((t - 1 - es[e]) * ZK + ec[e]) * M;                                \
                    _Pragma("omp simd") for (long o = 0; o < M; ++o) g[o] += d[o];                          \
                }                                                                                           \
                const REAL *pt = pre ? pre + b * pre_sb + t * pre_st : 0;                                   \
                _Pragma(GELU) for (long o = 0; o < M; ++o) {                                                \
                    const REAL v = inv * g[o] - shift * c1[o] + c2[o] + (pt ? pt[o] : 0);                   \
                    g[o] = (REAL)0.5 * v * ((REAL)1 + ERF(v * (REAL)0.70710678118654752440));               \
                }                                                                                           \
                const REAL *bt = base ? base + b * base_sb + t * base_st : 0;                               \
                int64_t *zt = z + b * z_sb + t * Z;                                                         \
                TAIL(Z, K, R, M, g, W2, b2, bt, u + b * u_sb + t * Z, temperature[b], a, ET, logits, rb, zt); \
                for (long j = 0; j < Z; ++j)                                                                \
                    if (zt[j] != 0) es[ne] = t, ec[ne++] = j * K + zt[j];                                   \
            }                                                                                               \
        }                                                                                                   \
    }

LATENT_PRIOR(latent_prior_f32, float, erff, prior_stats_f32, prior_tail_f32, linear_rows_f32, GELU_F32)
LATENT_PRIOR(latent_prior_f64, double, erf, prior_stats_f64, prior_tail_f64, linear_rows_f64, GELU_F64)
LATENT_PRIOR_TABLE(latent_prior_table_f32, float, erff, prior_stats_f32, prior_tail_f32, GELU_F32)
LATENT_PRIOR_TABLE(latent_prior_table_f64, double, erf, prior_stats_f64, prior_tail_f64, GELU_F64)

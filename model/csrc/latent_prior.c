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

#ifndef VSSM_NO_MVEC /* glibc's libmvec has vector erf and erff; math.h declares them only under -ffast-math */
__attribute__((__simd__("notinbranch"))) extern float erff(float);
__attribute__((__simd__("notinbranch"))) extern double erf(double);
#endif

void linear_rows_f32(long R, long K, long M, const float *a, const float *wt, const float *bias, float *out);
void linear_rows_f64(long R, long K, long M, const double *a, const double *wt, const double *bias, double *out);
void categorical_f32(long R, long V, const float *logits, const float *u, double temperature, int64_t *out);
void categorical_f64(long R, long V, const double *logits, const double *u, double temperature, int64_t *out);

#define LATENT_PRIOR(NAME, REAL, ERF, DRAW, LINEAR)                                                         \
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
                /* LayerNorm(r): the biased variance, as PyTorch's */                                       \
                REAL mean = 0, var = 0;                                                                     \
                for (long i = 0; i < R; ++i) mean += rb[i];                                                 \
                mean /= (REAL)R;                                                                            \
                for (long i = 0; i < R; ++i) var += (rb[i] - mean) * (rb[i] - mean);                        \
                const REAL inv = (REAL)1 / (REAL)sqrt(var / (REAL)R + (REAL)eps);                           \
                for (long i = 0; i < R; ++i) h[i] = (rb[i] - mean) * inv * ln_w[i] + ln_b[i];               \
                /* g = GELU(W1 h + b1 + pre_t), the exact GELU */                                           \
                LINEAR(1, R, M, h, W1, b1, g);                                                              \
                if (pre) {                                                                                  \
                    const REAL *pt = pre + b * pre_sb + t * pre_st;                                         \
                    for (long o = 0; o < M; ++o) g[o] += pt[o];                                             \
                }                                                                                           \
                _Pragma("omp simd") for (long o = 0; o < M; ++o) g[o] =                                     \
                    (REAL)0.5 * g[o] * ((REAL)1 + ERF(g[o] * (REAL)0.70710678118654752440));                \
                /* logits = base_t + W2 g + b2 */                                                           \
                const REAL *bt = base ? base + b * base_sb + t * base_st : 0;                               \
                LINEAR(1, M, ZK, g, W2, b2, logits);                                                        \
                if (bt)                                                                                     \
                    for (long o = 0; o < ZK; ++o) logits[o] += bt[o];                                       \
                /* the draws, then r = a r + E z_t */                                                       \
                int64_t *zt = z + b * z_sb + t * Z;                                                         \
                DRAW(Z, K, logits, u + b * u_sb + t * Z, temperature[b], zt);                               \
                _Pragma("omp simd") for (long i = 0; i < R; ++i) rb[i] *= a[i];                             \
                for (long j = 0; j < Z; ++j) {                                                              \
                    const REAL *e = ET + (j * K + zt[j]) * R;                                               \
                    _Pragma("omp simd") for (long i = 0; i < R; ++i) rb[i] += e[i];                         \
                }                                                                                           \
            }                                                                                               \
        }                                                                                                   \
    }

LATENT_PRIOR(latent_prior_f32, float, erff, categorical_f32, linear_rows_f32)
LATENT_PRIOR(latent_prior_f64, double, erf, categorical_f64, linear_rows_f64)

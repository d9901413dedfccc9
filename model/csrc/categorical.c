/* Inverse-CDF draws from categoricals given their uniforms (model/sampling.py, sample_categorical).

Glossary of axis letters:
    R  draws (every leading axis flattened)      V  categories of one draw

The same draw as sample_categorical's tensor arithmetic, in one call: the first category whose
cumulative probability reaches u times the total, from softmax(logits / temperature), or the first
largest logit at temperature 0.  The cumulative sums run in order, in double precision, over
unnormalised exponentials, and the total is the last of them (as PyTorch's is the last of its
cumsum), so a category of probability zero is never drawn, even at u = 1; a draw within rounding of
a category boundary may fall on the other side of it than PyTorch's.  In PyTorch a draw is eight
small kernels, some 20-40 us whatever its size, and block sampling makes three a round, an
autoregressive model one a step.

Layouts: logits (R, V) and u (R,) contiguous; out (R,) int64.  Up to BUF categories the
exponentials are computed once, as one vector loop (glibc's libmvec where it links), into a buffer
on the stack that both sums read; past it they are computed twice, so any V fits.  A sequential
sampler draws once per step (csrc/latent_prior.c, csrc/ar_loop.c): with 256 categories the scalar
exponentials were about 40% of the latent prior's step. */

#include <math.h>
#include <stdint.h>

#ifndef VSSM_NO_MVEC /* glibc's libmvec has vector exp and expf; math.h declares them only under -ffast-math */
__attribute__((__simd__("notinbranch"))) extern float expf(float);
__attribute__((__simd__("notinbranch"))) extern double exp(double);
#endif

#define BUF 1024

#define CATEGORICAL(NAME, REAL, EXP)                                                                      \
    void NAME(long R, long V, const REAL *logits, const REAL *u, double temperature, int64_t *out) {      \
        for (long r = 0; r < R; ++r) {                                                                    \
            const REAL *l = logits + r * V;                                                               \
            long k = 0;                                                                                   \
            if (temperature == 0) { /* argmax: the first largest, a NaN counting as largest */           \
                for (long j = 1; j < V; ++j)                                                              \
                    if (l[j] > l[k] || (isnan(l[j]) && !isnan(l[k]))) k = j;                              \
                out[r] = k;                                                                               \
                continue;                                                                                 \
            }                                                                                             \
            const REAL t = temperature == 1 ? 1 : (REAL)(temperature > 1e-6 ? temperature : 1e-6);        \
            REAL m = -INFINITY;                                                                           \
            for (long j = 0; j < V; ++j) {                                                                \
                const REAL s = l[j] / t;                                                                  \
                m = s > m ? s : m;                                                                        \
            }                                                                                             \
            double total = 0;                                                                             \
            if (V <= BUF) {                                                                               \
                REAL e[BUF];                                                                              \
                _Pragma("omp simd") for (long j = 0; j < V; ++j) e[j] = EXP(l[j] / t - m);                \
                for (long j = 0; j < V; ++j) total += e[j];                                               \
                const double target = u[r] * total;                                                      \
                double cdf = 0; /* the same sums in the same order: the last equals total */              \
                for (long j = 0; j < V; ++j) {                                                            \
                    cdf += e[j];                                                                          \
                    if (!(cdf < target)) break;                                                           \
                    k = j + 1;                                                                            \
                }                                                                                         \
                out[r] = k < V - 1 ? k : V - 1;                                                           \
                continue;                                                                                 \
            }                                                                                             \
            for (long j = 0; j < V; ++j) total += EXP(l[j] / t - m);                                      \
            const double target = u[r] * total;                                                          \
            double cdf = 0; /* the same sums in the same order: the last equals total */                  \
            for (long j = 0; j < V; ++j) { /* count the categories whose cumulative sum is below target */ \
                cdf += EXP(l[j] / t - m);                                                                 \
                if (!(cdf < target)) break;                                                               \
                k = j + 1;                                                                                \
            }                                                                                             \
            out[r] = k < V - 1 ? k : V - 1;                                                               \
        }                                                                                                 \
    }

CATEGORICAL(categorical_f32, float, expf)
CATEGORICAL(categorical_f64, double, exp)

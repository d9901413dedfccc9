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
on the stack, and their cumulative sums into another that the search reads; past it they are computed
twice, so any V fits.  A sequential
sampler draws once per step (csrc/latent_prior.c, csrc/ar_loop.c): with 256 categories the scalar
exponentials were about 40% of the latent prior's step. */

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "vecmath.h" /* libmvec's vector exp and erf */

#define BUF 1024
#define LN 16 /* lanes of the maxima: each lane a maximum of its own, then the lanes' */

/* The largest of x_j / t (t = 1: x_j), a NaN never taken, -inf if every one is NaN: the scalar loop
   m = s > m ? s : m, lane by lane, so that it vectorises (the maximum of numbers is the same in any
   order; only a zero's sign may differ, and then x_j / t - m is a zero of either sign, whose exponential
   is 1 either way) */
#define MAX_OVER(NAME, REAL)                                                                              \
    static inline REAL NAME(long V, const REAL *x, REAL t) {                                             \
        REAL ml[LN];                                                                                      \
        for (long i = 0; i < LN; ++i) ml[i] = -INFINITY;                                                  \
        long j = 0;                                                                                       \
        for (; j + LN <= V; j += LN)                                                                      \
            _Pragma("omp simd") for (long i = 0; i < LN; ++i) {                                           \
                const REAL s = t == 1 ? x[j + i] : x[j + i] / t;                                          \
                ml[i] = s > ml[i] ? s : ml[i];                                                            \
            }                                                                                             \
        for (; j < V; ++j) {                                                                              \
            const REAL s = t == 1 ? x[j] : x[j] / t;                                                      \
            ml[0] = s > ml[0] ? s : ml[0];                                                                \
        }                                                                                                 \
        REAL m = -INFINITY;                                                                               \
        for (long i = 0; i < LN; ++i) m = ml[i] > m ? ml[i] : m;                                          \
        return m;                                                                                         \
    }
MAX_OVER(max_over_f32, float)
MAX_OVER(max_over_f64, double)

/* The first largest of x, a NaN counting as largest (the first NaN, if any): the scalar loop
   k = x_j > x_k || (isnan(x_j) && !isnan(x_k)) ? j : k, as a search for the maximum and then for its
   first place */
#define ARGMAX(NAME, REAL, MAX)                                                                           \
    static inline long NAME(long V, const REAL *x) {                                                      \
        if (V <= 1)                                                                                       \
            return 0;                                                                                     \
        int nan = 0;                                                                                      \
        _Pragma("omp simd reduction(| : nan)") for (long j = 0; j < V; ++j) nan |= x[j] != x[j];          \
        long k = 0;                                                                                       \
        if (nan) {                                                                                        \
            while (x[k] == x[k]) ++k;                                                                     \
            return k;                                                                                     \
        }                                                                                                 \
        const REAL m = MAX(V, x, 1);                                                                      \
        while (x[k] != m) ++k;                                                                            \
        return k;                                                                                         \
    }
ARGMAX(argmax_f32, float, max_over_f32)
ARGMAX(argmax_f64, double, max_over_f64)

/* Up to BUF categories the cumulative sums are kept, so the search for the target reads them instead of
   adding them up again (with 256 categories these sums, one after another, and the scalar maximum were
   most of a draw: docs/experiments/rounds-and-serving.md, forty-first session) */
#define CATEGORICAL(NAME, REAL, EXP, MAX, ARGMAX_)                                                        \
    void NAME(long R, long V, const REAL *logits, const REAL *u, double temperature, int64_t *out) {      \
        for (long r = 0; r < R; ++r) {                                                                    \
            const REAL *l = logits + r * V;                                                               \
            if (temperature == 0) { /* argmax: the first largest, a NaN counting as largest */           \
                out[r] = ARGMAX_(V, l);                                                                   \
                continue;                                                                                 \
            }                                                                                             \
            const REAL t = temperature == 1 ? 1 : (REAL)(temperature > 1e-6 ? temperature : 1e-6);        \
            const REAL m = MAX(V, l, t);                                                                  \
            double total = 0;                                                                             \
            long k = 0;                                                                                   \
            if (V <= BUF) {                                                                               \
                REAL e[BUF];                                                                              \
                double c[BUF];                                                                            \
                _Pragma("omp simd") for (long j = 0; j < V; ++j) e[j] = EXP(l[j] / t - m);                \
                for (long j = 0; j < V; ++j) total += e[j], c[j] = total;                                 \
                const double target = u[r] * total;                                                      \
                while (k < V && c[k] < target) ++k; /* the categories whose cumulative sum is below it */  \
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

CATEGORICAL(categorical_f32, float, expf, max_over_f32, argmax_f32)
CATEGORICAL(categorical_f64, double, exp, max_over_f64, argmax_f64)

/* An autoregressive loop's step of draws (csrc/ar_loop.c, csrc/transformer_loop.c, csrc/gru_loop.c): token i of
   each of B rows from its logits (B, V), with the uniforms u (B, n) and temperatures (B,), into out (B, n); with
   scores (B, n, V) not NULL, the logits each draw is made from are copied there first (a scored call's) */
#define STEP_DRAWS(NAME, REAL, DRAW)                                                                      \
    void NAME(long B, long V, long n, long i, const REAL *logits, const REAL *u, const double *temperature, \
              REAL *scores, int64_t *out) {                                                               \
        for (long b = 0; b < B; ++b) {                                                                    \
            if (scores)                                                                                   \
                memcpy(scores + (b * n + i) * V, logits + b * V, V * sizeof(REAL));                       \
            DRAW(1, V, logits + b * V, u + b * n + i, temperature[b], out + b * n + i);                   \
        }                                                                                                 \
    }

STEP_DRAWS(step_draws_f32, float, categorical_f32)
STEP_DRAWS(step_draws_f64, double, categorical_f64)

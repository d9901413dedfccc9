/* Inverse-CDF draws from categoricals given their uniforms (model/sampling.py, sample_categorical).

Glossary of axis letters:
    R  draws (every leading axis flattened)      V  categories of one draw

The same draw as sample_categorical's tensor arithmetic, in one call: the first category whose
cumulative probability reaches u times the total, from softmax(logits / temperature), or the first
largest logit at temperature 0.  Only rounding differs (the sums run over unnormalised exponentials,
in order).  In PyTorch a draw is eight small kernels, some 30-50 us whatever the size, and block
sampling makes three a round, an autoregressive model one a step.

Layouts: logits (R, V) and u (R,) contiguous; out (R,) int64. */

#include <math.h>
#include <stdint.h>

#ifndef VSSM_NO_MVEC /* glibc's libmvec: vector exp and expf (csrc/s4d_block.c declares them the same way) */
__attribute__((__simd__("notinbranch"))) extern float expf(float);
__attribute__((__simd__("notinbranch"))) extern double exp(double);
#endif

#define CATEGORICAL(NAME, REAL, EXP)                                                                      \
    void NAME(long R, long V, const REAL *logits, const REAL *u, double temperature, int64_t *out) {      \
        REAL e[V > 0 ? V : 1];                                                                            \
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
            REAL m = -INFINITY, total = 0;                                                                \
            for (long j = 0; j < V; ++j) e[j] = t == 1 ? l[j] : l[j] / t;                                 \
            for (long j = 0; j < V; ++j) m = e[j] > m ? e[j] : m;                                         \
            _Pragma("omp simd reduction(+ : total)") /* the sum in vector lanes (rounding only) */        \
            for (long j = 0; j < V; ++j) e[j] = EXP(e[j] - m), total += e[j];                             \
            const REAL target = u[r] * total;                                                             \
            REAL cdf = 0;                                                                                 \
            for (long j = 0; j < V; ++j) { /* count the categories whose cumulative sum is below target */ \
                cdf += e[j];                                                                              \
                if (!(cdf < target)) break;                                                               \
                k = j + 1;                                                                                \
            }                                                                                             \
            out[r] = k < V - 1 ? k : V - 1;                                                               \
        }                                                                                                 \
    }

CATEGORICAL(categorical_f32, float, expf)
CATEGORICAL(categorical_f64, double, exp)

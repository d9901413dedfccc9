/* The VRNN's sequential loops in one call (model/vrnn.py): generation (VRNN._generate) and the filter that reads
observed tokens (VRNN._append).

Glossary of axis letters:
    B  batch      n  steps of the call      H  width      V  vocabulary
    Z  latent variables a step      K  classes of each      (ZK = Z K)

Generation, per step and row, from the GRU state h (H) (model/vrnn.py's equations; W are the weights transposed,
(in, out), so that a product's inner loop runs over outputs):
    [p, dh, gh] = h [W_p1 | W_dh | W_gh] + [b_p1 | 0 | b_gh]                       (5H: prior, emission, GRU)
    z_j ~ Cat((relu(p) W_p2 + b_p2)_j / temp_z)  for j < Z, with the uniforms u_lat (the prior's draw)
    e = relu(relu(b_z1 + sum_j W_z1[j K + z_j]) W_z2 + b_z2)                        phi_z(one-hot z)  (H)
    x_t ~ Cat((relu(e W_dz + b_dz + dh) W_do + b_do) / temp_x), with u_tok        (the emission's draw)
    gi = G[x_t] + e W_gz,   r = sigmoid(gi_r + gh_r),   u = sigmoid(gi_u + gh_u)
    c = tanh(gi_c + r gh_c),   h = c + u (h - c)                                     (torch.nn.GRUCell's gates)
where G (V, 3H) = gru_x(phi_x(v)) of every token v, with gru_x's bias: what the GRU's input part is of a token.
Filtering, where the tokens are observed and z is drawn from the posterior at temperature 1:
    [eh, gh] = h [W_eh | W_gh] + [0 | b_gh]                                         (4H)
    z_j ~ Cat((relu(A[x_t] + eh) W_eo + b_eo)_j), with u_lat      A (V, H) = enc_x(phi_x(v)) with its bias
    e and h as above.
A draw is csrc/categorical.c's, so it equals sample_categorical's but where a uniform falls within rounding of a
category boundary; the latents' logits are log-softmaxed first, as model/vrnn.py's are (the same distribution, and
the same draw where a NaN or an infinity makes it degenerate).  One-hot z times
W_z1 is a sum of Z rows of it.  Products run through LINEAR (csrc/s4d_block.c, linear_rows), whose rows give the
same bits in any batch, and the rest runs row by row, so a row's tokens and state do not depend on its batch.

In PyTorch a step is some 25 small kernels, about 110 us at batch 1: the last baseline whose loop ran as Python
(docs/experiments/rounds-and-serving.md, forty-third session; the AR baselines' loops are csrc/ar_loop.c,
csrc/transformer_loop.c and csrc/gru_loop.c).

Layouts: pack is model/native.py's pack_vrnn: W_gen (H, 5H), b_gen (5H), W_p2 (H, ZK), b_p2 (ZK), W_z1 (ZK, H),
b_z1 (H), W_z2 (H, H), b_z2 (H), W_dz (H, H), b_dz (H), W_gz (H, 3H), zeros (3H), W_do (H, V), b_do (V), G (V, 3H),
W_fil (H, 4H), b_fil (4H), A (V, H), W_eo (H, ZK), b_eo (ZK).  u_lat (B, n, Z) and u_tok (B, n) contiguous;
temp_z, temp_x (B,) doubles; h (B, H), read and overwritten with the state after the call.  Generation (observed
NULL): out (B, n) int64 receives the tokens; scores (B, n, V) or NULL, the logits each token was drawn from.
Filtering (observed (B, n) int64): temp_z, temp_x, u_tok, scores and out are not read.  With last_step 0 the GRU
does not run after the last step (a caller that keeps no state).  Returns 0, or -1 where the scratch cannot be
allocated (nothing written).  Nothing here checks a shape: the caller does. */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "kernels.h"

#include "vecmath.h" /* libmvec's vector exp and erf */

/* Each of the Z groups of K latent logits (B Z groups of x) in place as its log-softmax, as model/vrnn.py draws
   from them: a NaN or +inf anywhere in a group makes the whole group NaN, as torch's log_softmax does, so that a
   draw from it is PyTorch's (at temperature 0, class 0) */
#define LOG_SOFTMAX_GROUPS(NAME, REAL, EXP, LOG)                                                                   \
    static void NAME(long groups, long K, REAL *x) {                                                               \
        for (long g = 0; g < groups; ++g) {                                                                        \
            REAL *l = x + g * K;                                                                                   \
            REAL m = l[0];                                                                                         \
            for (long k = 1; k < K; ++k) m = (l[k] > m || l[k] != l[k]) ? l[k] : m; /* a NaN stays the maximum */ \
            REAL sum = 0;                                                                                          \
            for (long k = 0; k < K; ++k) sum += EXP(l[k] - m);                                                     \
            const REAL lse = m + LOG(sum);                                                                         \
            for (long k = 0; k < K; ++k) l[k] -= lse;                                                              \
        }                                                                                                          \
    }

LOG_SOFTMAX_GROUPS(log_softmax_groups_f32, float, expf, logf)
LOG_SOFTMAX_GROUPS(log_softmax_groups_f64, double, exp, log)

#define VRNN_LOOP(NAME, REAL, EXP, LINEAR, CATEGORICAL, DRAW, LOG_SOFTMAX)                                          \
    int NAME(long B, long H, long V, long Z, long K, long n, const REAL *pack, const REAL *u_lat, const REAL *u_tok, \
             const double *temp_z, const double *temp_x, REAL *h, const int64_t *observed, REAL *scores,           \
             int64_t *out, int last_step) {                                                                         \
        const long ZK = Z * K;                                                                                      \
        const REAL *w_gen = pack, *b_gen = w_gen + H * 5 * H, *w_p2 = b_gen + 5 * H, *b_p2 = w_p2 + H * ZK;         \
        const REAL *w_z1 = b_p2 + ZK, *b_z1 = w_z1 + ZK * H, *w_z2 = b_z1 + H, *b_z2 = w_z2 + H * H;                \
        const REAL *w_dz = b_z2 + H, *b_dz = w_dz + H * H, *w_gz = b_dz + H, *zeros = w_gz + H * 3 * H;            \
        const REAL *w_do = zeros + 3 * H, *b_do = w_do + H * V, *G = b_do + V;                                      \
        const REAL *w_fil = G + V * 3 * H, *b_fil = w_fil + H * 4 * H, *A = b_fil + 4 * H, *w_eo = A + V * H;       \
        const REAL *b_eo = w_eo + H * ZK;                                                                           \
        const long width = observed ? 4 * H : 5 * H; /* the products of h: [eh, gh] or [p, dh, gh] */              \
        const long reals[] = {B * 5 * H, B * H, B * ZK, B * H, B * 3 * H, B * H, B * V};                            \
        const long ints[] = {B * Z};                                                                                \
        char *bufs[SCRATCH_COUNT(reals, ints)];                                                                     \
        char *block = SCRATCH(reals, ints, REAL, bufs);                                                             \
        if (!block)                                                                                                 \
            return -1;                                                                                              \
        REAL *hh = (REAL *)bufs[0], *a = (REAL *)bufs[1], *zl = (REAL *)bufs[2], *e = (REAL *)bufs[3];              \
        REAL *gz = (REAL *)bufs[4], *d = (REAL *)bufs[5], *xl = (REAL *)bufs[6];                                    \
        int64_t *z = (int64_t *)bufs[7];                                                                            \
        const REAL *gh_of = hh + (observed ? H : 2 * H); /* where gh starts in a row of hh */                       \
        for (long i = 0; i < n; ++i) {                                                                              \
            LINEAR(B, H, width, h, observed ? w_fil : w_gen, observed ? b_fil : b_gen, hh);                         \
            /* the latents' logits: the posterior's from A[x_t] + eh, or the prior's from p */                      \
            for (long b = 0; b < B; ++b) {                                                                          \
                const REAL *r = hh + b * width;                                                                     \
                const REAL *ax = observed ? A + observed[b * n + i] * H : NULL;                                     \
                REAL *ab = a + b * H;                                                                               \
                for (long k = 0; k < H; ++k) {                                                                      \
                    const REAL s = observed ? ax[k] + r[k] : r[k];                                                  \
                    ab[k] = s < 0 ? 0 : s; /* relu, a NaN kept as torch.relu keeps it */                            \
                }                                                                                                   \
            }                                                                                                       \
            LINEAR(B, H, ZK, a, observed ? w_eo : w_p2, observed ? b_eo : b_p2, zl);                                \
            LOG_SOFTMAX(B * Z, K, zl);                                                                              \
            for (long b = 0; b < B; ++b)                                                                            \
                CATEGORICAL(Z, K, zl + b * ZK, u_lat + (b * n + i) * Z, observed ? 1.0 : temp_z[b], z + b * Z);     \
            /* phi_z(one-hot z): its first layer a sum of Z rows of W_z1 */                                         \
            for (long b = 0; b < B; ++b) {                                                                          \
                REAL *ab = a + b * H;                                                                               \
                for (long k = 0; k < H; ++k) ab[k] = b_z1[k];                                                       \
                for (long j = 0; j < Z; ++j) {                                                                      \
                    const REAL *w = w_z1 + (j * K + z[b * Z + j]) * H;                                              \
                    for (long k = 0; k < H; ++k) ab[k] += w[k];                                                     \
                }                                                                                                   \
                for (long k = 0; k < H; ++k) ab[k] = ab[k] < 0 ? 0 : ab[k];                                         \
            }                                                                                                       \
            LINEAR(B, H, H, a, w_z2, b_z2, e);                                                                      \
            for (long k = 0; k < B * H; ++k) e[k] = e[k] < 0 ? 0 : e[k];                                            \
            if (!observed) { /* the emission, and the token drawn from it */                                        \
                LINEAR(B, H, H, e, w_dz, b_dz, d);                                                                  \
                for (long b = 0; b < B; ++b) {                                                                      \
                    const REAL *dh = hh + b * width + H;                                                            \
                    REAL *db = d + b * H;                                                                           \
                    for (long k = 0; k < H; ++k) {                                                                  \
                        const REAL s = db[k] + dh[k];                                                               \
                        db[k] = s < 0 ? 0 : s;                                                                      \
                    }                                                                                               \
                }                                                                                                   \
                LINEAR(B, H, V, d, w_do, b_do, xl);                                                                 \
                DRAW(B, V, n, i, xl, u_tok, temp_x, scores, out);                                                   \
                if (i == n - 1 && !last_step)                                                                       \
                    break;                                                                                          \
            }                                                                                                       \
            LINEAR(B, H, 3 * H, e, w_gz, zeros, gz);                                                                \
            for (long b = 0; b < B; ++b) {                                                                          \
                const int64_t x = observed ? observed[b * n + i] : out[b * n + i];                                  \
                const REAL *gx = G + x * 3 * H, *gzb = gz + b * 3 * H, *ghb = gh_of + b * width;                    \
                REAL *hb = h + b * H;                                                                               \
                _Pragma("omp simd") for (long k = 0; k < H; ++k) {                                                  \
                    const REAL r = 1 / (1 + EXP(-((gx[k] + gzb[k]) + ghb[k])));                                     \
                    const REAL u = 1 / (1 + EXP(-((gx[H + k] + gzb[H + k]) + ghb[H + k])));                         \
                    const REAL s = (gx[2 * H + k] + gzb[2 * H + k]) + r * ghb[2 * H + k];                           \
                    const REAL c = 2 / (1 + EXP(-2 * s)) - 1; /* tanh */                                            \
                    hb[k] = c + u * (hb[k] - c);                                                                    \
                }                                                                                                   \
            }                                                                                                       \
        }                                                                                                           \
        free(block);                                                                                                \
        return 0;                                                                                                   \
    }

VRNN_LOOP(vrnn_loop_f32, float, expf, linear_rows_f32, categorical_f32, step_draws_f32, log_softmax_groups_f32)
VRNN_LOOP(vrnn_loop_f64, double, exp, linear_rows_f64, categorical_f64, step_draws_f64, log_softmax_groups_f64)

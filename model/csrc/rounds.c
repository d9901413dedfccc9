/* Block sampling's fused rounds in one call (model/vssm.py, VSSM._fused_rows): the loop over blocks.

Glossary of axis letters:
    B  batch      H  channels      N  complex modes per channel      V  vocabulary (EMPTY = V)
    Z  latent variables per step      K  classes of each      m  the block just drawn      c' the next

Round i reads block i-1's tokens and draws block i, from the partial encoder's state par (after
every token before block i-1) and the decoder's absorbed state dec (after the absorbed latents
before block i-1):
    1. f_par over [block i-1's tokens, c' EMPTYs] from par: the absorbed latents' logits, block i's
       latent logits, and par after the m tokens (NET with at = m);
    2. z' of block i-1 drawn at temperature 1 (the absorb stream), z of block i at the latent
       temperature: independently, or one after another through the latent prior (csrc/latent_prior.c);
    3. f_dec over [z' (and, with decoder tokens, block i-1's tokens), z (and EMPTYs)] from dec: block
       i's token logits and dec after the m absorbed steps;
    4. block i's tokens drawn at the token temperature.
The input layers are the partial encoder's embedding (a row per token) and the decoder's linear map
of one-hot inputs (a sum of the weight's columns and its bias).  In PyTorch a round is these two
native passes plus a few dozen small calls around them; the autoregressive SSM's loop and the latent
prior's are one compiled call each (csrc/ar_loop.c, csrc/latent_prior.c), and this is the same for
the rounds.

Layouts: ms (rounds + 1,) int64, the pieces' lengths (ms[0] the block already drawn); tokens (B, span)
int64 with ms[0] tokens in place, the rest written here; u_lat and u_abs (B, span, Z), u_tok (B, span),
all contiguous; temperature and temp_tok (B,) doubles; the states (B, L, H, N) complex as interleaved
pairs, contiguous, read from par and dec and ping-ponged with par2 and dec2: bit 0 of the return value
says which holds the final par (0: par), bit 1 the final dec.  emb_par (V+1, H); w_dec the decoder's
input weight transposed (I, H), b_dec (H,); the nets' packs (model/native.py, pack); prior: the
latent prior's pack (NULL: none) of width R and hidden width M.  O is the partial encoder's output
width: Z*K logits, then F = O - Z*K context features the latent prior reads through Gt (F, M), G
transposed (VSSMConfig.prior_context; NULL when F = 0), as pre = G g_t (B, c', M) per step.  Scratch:
x (B, 2c, H), g (B, 2c, H), lp (B, 2c, O), ld (B, 2c, V), zs (B, 2c, Z) int64, ps (R + M + Z*K), r
(B, R) and pre (B, 2c, M) (unused without context).  Nothing here checks a shape. */

#include <stdint.h>
#include <string.h>

#include "kernels.h"

#define ROUNDS(REAL, SUFFIX)                                                                                   \
    int fused_rounds_##SUFFIX(long B, long rounds, const int64_t *ms, long span, long H, long N, long Lp,       \
                              long Ld, long V, long Z, long K, int dec_tokens, int64_t *tokens,                \
                              const REAL *u_lat, const REAL *u_abs, const REAL *u_tok, const double *temp,     \
                              const double *temp_tok, REAL *par, REAL *par2, REAL *dec, REAL *dec2,            \
                              const REAL *pack_par, double eps_par, const REAL *emb_par, const REAL *pack_dec, \
                              double eps_dec, const REAL *w_dec, const REAL *b_dec, const REAL *prior, long R, \
                              long M, double eps_prior, long O, const REAL *Gt, REAL *x, REAL *g, REAL *lp,    \
                              REAL *ld, int64_t *zs, REAL *ps, REAL *r, REAL *pre) {                           \
        const long ZK = Z * K, F = O - ZK, sp = Lp * H * N * 2, sd = Ld * H * N * 2;                            \
        int wp = 0, wd = 0;                                                                                     \
        long start = 0;                                                                                         \
        for (long i = 1; i <= rounds; ++i) {                                                                    \
            const long m = ms[i - 1], nx = ms[i], T = m + nx;                                                   \
            /* 1. f_par over [block i-1's tokens, EMPTYs] */                                                     \
            for (long b = 0; b < B; ++b)                                                                        \
                for (long t = 0; t < T; ++t) {                                                                  \
                    const int64_t tok = t < m ? tokens[b * span + start + t] : V;                               \
                    memcpy(x + (b * T + t) * H, emb_par + tok * H, H * sizeof(REAL));                            \
                }                                                                                               \
            REAL *pf = wp ? par2 : par, *pt = wp ? par : par2;                                                  \
            ssm_net_##SUFFIX(B, H, N, T, Lp, O, m, x, pack_par, eps_par, pf, sp, pt, g, lp);                    \
            wp = !wp;                                                                                           \
            /* 2. z' of block i-1 at temperature 1, z of block i at the latent temperature */                   \
            for (long b = 0; b < B; ++b) {                                                                      \
                for (long t = 0; t < m; ++t)                                                                    \
                    categorical_##SUFFIX(Z, K, lp + (b * T + t) * O, u_abs + (b * span + start + t) * Z, 1.0,   \
                                         zs + (b * T + t) * Z);                                                 \
                if (!prior)                                                                                     \
                    for (long t = m; t < T; ++t)                                                                \
                        categorical_##SUFFIX(Z, K, lp + (b * T + t) * O, u_lat + (b * span + start + t) * Z,     \
                                             temp[b], zs + (b * T + t) * Z);                                    \
            }                                                                                                   \
            if (prior) { /* a new block: the latent prior from its start, pre = G g_t from the context */      \
                if (F)                                                                                          \
                    for (long b = 0; b < B; ++b)                                                                \
                        for (long t = 0; t < nx; ++t) {                                                         \
                            REAL *pt = pre + (b * nx + t) * M;                                                  \
                            const REAL *ft = lp + (b * T + m + t) * O + ZK;                                     \
                            memset(pt, 0, M * sizeof(REAL));                                                    \
                            for (long f = 0; f < F; ++f)                                                        \
                                for (long o = 0; o < M; ++o) pt[o] += ft[f] * Gt[f * M + o];                    \
                        }                                                                                       \
                memset(r, 0, B * R * sizeof(REAL));                                                             \
                latent_prior_##SUFFIX(B, nx, Z, K, R, M, lp + m * O, T * O, O, F ? pre : 0, nx * M, M,          \
                                      u_lat + (start + m) * Z, span * Z, temp, prior, eps_prior, r, zs + m * Z, \
                                      T * Z, ps);                                                               \
            }                                                                                                   \
            /* 3. f_dec over [z' (and the tokens), z (and EMPTYs)] */                                           \
            for (long b = 0; b < B; ++b)                                                                        \
                for (long t = 0; t < T; ++t) {                                                                  \
                    REAL *xt = x + (b * T + t) * H;                                                             \
                    memcpy(xt, b_dec, H * sizeof(REAL));                                                        \
                    const int64_t *zt = zs + (b * T + t) * Z;                                                   \
                    for (long j = 0; j < Z; ++j) {                                                              \
                        const REAL *w = w_dec + (j * K + zt[j]) * H;                                            \
                        for (long k = 0; k < H; ++k) xt[k] += w[k];                                             \
                    }                                                                                           \
                    if (dec_tokens) {                                                                           \
                        const int64_t tok = t < m ? tokens[b * span + start + t] : V;                           \
                        const REAL *w = w_dec + (ZK + tok) * H;                                                 \
                        for (long k = 0; k < H; ++k) xt[k] += w[k];                                             \
                    }                                                                                           \
                }                                                                                               \
            REAL *df = wd ? dec2 : dec, *dt = wd ? dec : dec2;                                                  \
            ssm_net_##SUFFIX(B, H, N, T, Ld, V, m, x, pack_dec, eps_dec, df, sd, dt, g, ld);                    \
            wd = !wd;                                                                                           \
            /* 4. block i's tokens */                                                                           \
            for (long b = 0; b < B; ++b)                                                                        \
                for (long t = m; t < T; ++t)                                                                    \
                    categorical_##SUFFIX(1, V, ld + (b * T + t) * V, u_tok + b * span + start + t, temp_tok[b],  \
                                         tokens + b * span + start + t);                                        \
            start += m;                                                                                         \
        }                                                                                                       \
        return wp | (wd << 1);                                                                                  \
    }

ROUNDS(float, f32)
ROUNDS(double, f64)

/* A piece of block sampling drawn through the latent prior and decoded from its latents, in one call
(model/vssm.py, VSSM._compiled_piece): the whole of a one-pass call that keeps no state of a model whose
latents a latent prior draws (shakespeare-vssm-prior), and the first two steps of any piece of one (a
resumable call that stays inside its block is csrc/rounds.c's block 0 left open, where that can run).

Glossary of axis letters:
    B  batch      n  steps      H  channels      N  complex modes per channel      V  vocabulary
    Z  latent variables per step      K  classes of each      R  the prior's width      M  its MLP's

Per row, from the latent prior's state r0 and the decoder's state D (docs/design.md, "Blocks"):
    1. z_1..n through the latent prior (csrc/latent_prior.c), from the block prior's logits base (the
       partial encoder over EMPTYs where the row has observed a token, zeros where not: the uniform
       prior) and its context's product pre = G g_t, at the row's temperature;
    2. the decoder's inputs b_dec + sum_j w_dec[j K + z_t[j]] (a linear layer of the one-hot latents,
       read as the lookup it computes), one pass of the decoder from D (csrc/s4d_block.c, NET), and
       the tokens at the row's token temperature (csrc/categorical.c).
In PyTorch these are the prior's compiled draws, the decoder's compiled pass and the compiled draw of
the tokens, with about twenty small calls around them (the uniforms, the lookup, the checks): at 256
bytes about a third of a one-pass text sample (docs/experiments/blocks.md, twenty-fourth session).
The decoder reads latents only (VSSMConfig.decoder_tokens is False).

Layouts: tokens (B, n) int64, written; seed and pos0 (B,) int64, the rows' keys and the piece's first
absolute position, whose uniforms are drawn here from streams s_lat and s_tok as csrc/keyed.c draws them
(model/sampling.py, keyed_uniforms); temp, temp_tok (B,) doubles; base (B, n, Z K) contiguous or NULL
(zeros); pre (B, n, M) contiguous or NULL; r0 (B, R), r_out (B, R), the prior's state after the piece,
written; dec_in (B, Ld, H, N) complex (interleaved pairs), dec_out the same, the state after the piece,
or NULL (not wanted).  Weights: prior the latent prior's pack (model/native.py, pack_prior), pack_dec
the decoder's (pack) with a head of V outputs, w_dec its input weight transposed (Z K, H), b_dec (H,).
The scratch is allocated here, one block a call.  Returns 0, or -1 where it could not be allocated.
Nothing here checks a shape. */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

#define PRIOR_PIECE(REAL, SUFFIX)                                                                                   \
    /* the decoder's inputs x (B, n, H) of latents z (B, n, Z) with row stride z_sb: b_dec + sum_j w_dec[j K + z_j] */ \
    void dec_inputs_##SUFFIX(long B, long n, long z_sb, long H, long Z, long K, const int64_t *z, const REAL *w_dec, \
                             const REAL *b_dec, REAL *x) {                                                         \
        for (long b = 0; b < B; ++b)                                                                                \
            for (long t = 0; t < n; ++t) {                                                                          \
                REAL *xt = x + (b * n + t) * H;                                                                     \
                memcpy(xt, b_dec, H * sizeof(REAL));                                                                \
                const int64_t *zt = z + b * z_sb + t * Z;                                                           \
                for (long j = 0; j < Z; ++j) {                                                                      \
                    const REAL *w = w_dec + (j * K + zt[j]) * H;                                                    \
                    for (long k = 0; k < H; ++k) xt[k] += w[k];                                                     \
                }                                                                                                   \
            }                                                                                                       \
    }                                                                                                               \
                                                                                                                    \
    long prior_piece_##SUFFIX(long B, long n, long H, long N, long Ld, long V, long Z, long K, long R, long M,       \
                              int64_t *tokens, const int64_t *seed, const int64_t *pos0, long s_lat, long s_tok,    \
                              const double *temp, const double *temp_tok, const REAL *base, const REAL *pre,       \
                              const REAL *r0, REAL *r_out, const REAL *dec_in, REAL *dec_out, const REAL *prior,   \
                              double eps_prior, const REAL *pack_dec, double eps_dec, const REAL *w_dec,            \
                              const REAL *b_dec) {                                                                  \
        const long ZK = Z * K, sd = Ld * H * N * 2;                                                                 \
        const long reals[] = {B * n * Z, B * n, R + M + ZK, B * n * H, B * n * H, B * n * V};                       \
        const long ints[] = {B * n * Z};                                                                            \
        char *bufs[SCRATCH_COUNT(reals, ints)];                                                                     \
        char *block = SCRATCH(reals, ints, REAL, bufs);                                                             \
        if (!block)                                                                                                 \
            return -1;                                                                                              \
        REAL *u_lat = (REAL *)bufs[0], *u_tok = (REAL *)bufs[1], *ps = (REAL *)bufs[2], *x = (REAL *)bufs[3];      \
        REAL *g = (REAL *)bufs[4], *logits = (REAL *)bufs[5];                                                       \
        int64_t *z = (int64_t *)bufs[6];                                                                            \
        const int64_t st[2] = {s_lat, s_tok};                                                                       \
        const long draws[2] = {Z, 1};                                                                               \
        REAL *const us[2] = {u_lat, u_tok};                                                                         \
        span_uniforms_##SUFFIX(B, n, seed, pos0, 2, st, draws, us);                                                 \
        /* 1. the latents, the prior's state going from r0 to r_out */                                              \
        memcpy(r_out, r0, B * R * sizeof(REAL));                                                                    \
        latent_prior_##SUFFIX(B, n, Z, K, R, M, base, n * ZK, ZK, pre, n * M, M, u_lat, n * Z, temp, prior,          \
                              eps_prior, r_out, z, n * Z, ps);                                                      \
        /* 2. one decoder pass over them, then the tokens */                                                        \
        dec_inputs_##SUFFIX(B, n, n * Z, H, Z, K, z, w_dec, b_dec, x);                                              \
        ssm_net_##SUFFIX(B, H, N, n, Ld, V, n, x, pack_dec, eps_dec, dec_in, sd, dec_out, g, logits);              \
        for (long b = 0; b < B; ++b)                                                                                \
            for (long t = 0; t < n; ++t)                                                                            \
                categorical_##SUFFIX(1, V, logits + (b * n + t) * V, u_tok + b * n + t, temp_tok[b],               \
                                     tokens + b * n + t);                                                           \
        free(block);                                                                                                \
        return 0;                                                                                                   \
    }

PRIOR_PIECE(float, f32)
PRIOR_PIECE(double, f64)

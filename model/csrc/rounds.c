/* Block sampling's fused rounds in one call (model/vssm.py, VSSM._fused_rows): a call's blocks, the
first drawn from the states generation continues from, then the loop over blocks, then (where the
call keeps its state) the absorption of the last.

Glossary of axis letters:
    B  batch      H  channels      N  complex modes per channel      V  vocabulary (EMPTY = V)
    Z  latent variables per step      K  classes of each      m  the block just drawn      c' the next

Round 0 draws block 0 (ms[0] steps) from gen and dec_gen, the partial encoder's and the decoder's
states generation continues from: f_par over EMPTYs from gen where the row has observed a token
(its latent logits and context), the uniform prior where not (floor(u K), or zero logits through the
latent prior); z through the latent prior from its state r0 where there is one; f_dec over z (and
EMPTYs) from dec_gen; the tokens.  Round i >= 1 reads block i-1's tokens and draws block i, from the
partial encoder's state par (after every token before block i-1) and the decoder's absorbed state dec
(after the absorbed latents before block i-1):
    1. f_par over [block i-1's tokens, c' EMPTYs] from par: the absorbed latents' logits, block i's
       latent logits, and par after the m tokens (NET with at = m);
    2. z' of block i-1 drawn at temperature 1 (the absorb stream), z of block i at the latent
       temperature: independently, or one after another through the latent prior (csrc/latent_prior.c);
    3. f_dec over [z' (and, with decoder tokens, block i-1's tokens), z (and EMPTYs)] from dec: block
       i's token logits and dec after the m absorbed steps;
    4. block i's tokens drawn at the token temperature.
A last piece of length 0 is a round with no next block: the last block's absorption, as an append
absorbs tokens.  The input layers are the partial encoder's embedding (a row per token) and the
decoder's linear map of one-hot inputs (a sum of the weight's columns and its bias).  In PyTorch a
round is these two native passes plus a few dozen small calls around them; a lone round of 16 tokens
was two thirds Python before block 0 and the absorption moved here (docs/experiments/
rounds-and-serving.md, twenty-fourth session).

Layouts: ms (n_ms,) int64, the pieces' lengths (ms[0] >= 1 block 0; a last 0 absorbs); tokens (B,
span) int64, written; seed and pos0 (B,) int64, the rows' keys and the span's first absolute position,
whose uniforms are drawn here from streams s_lat, s_abs and s_tok (csrc/keyed.c, as model/sampling.py
draws them); temperature and temp_tok (B,) doubles; the states (B, L, H, N) complex as interleaved
pairs, contiguous, read only: par and dec the absorbed ones, gen and dec_gen generation's; observed
(B,) bytes; r0 (B, R) the latent prior's state before block 0 (NULL without a prior).  emb_par (V+1,
H); w_dec the decoder's input weight transposed (I, H), b_dec (H,); the nets' packs (model/native.py,
pack); prior: the latent prior's pack (NULL: none) of width R and hidden width M.  O is the partial
encoder's output width: Z*K logits, then F = O - Z*K context features the latent prior reads through
Gt (F, M), G transposed (VSSMConfig.prior_context; NULL when F = 0), as pre = G g_t (B, c', M) per
step.  Outputs, NULL where not wanted: par_out and dec_out, the states after the last round's absorbed steps;
seen (B, span, V), the logits each token was drawn from (a scored call's; the autoregressive loops' `scores`).
With open_end the last block stops inside (the call's last nonzero piece is part of a block, then a 0 absorbs
it): gen_out and dgen_out receive generation's states after it, the partial encoder's after the part's EMPTYs
and the decoder's after its latents (two short passes from the absorbed states before it; where that block is
block 0, ms = [m, 0], from block 0's own passes, the partial encoder's moving only in rows that observed a
token), and r_out the latent prior's state after its latents, as VSSM._piece leaves a block it stops inside
(or a one-pass call its state).  The scratch is allocated here, one block a call.  Returns 0, or -1 where it
could not be allocated.  Nothing here checks a shape. */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

#define ROUNDS(REAL, SUFFIX)                                                                                   \
    /* pre (n, M) = G g_t of the context features at lp + ZK in rows of O (n of them) */                        \
    static void context_##SUFFIX(long n, long O, long ZK, long M, const REAL *lp, const REAL *Gt, REAL *pre) { \
        const long F = O - ZK;                                                                                  \
        for (long t = 0; t < n; ++t) {                                                                          \
            REAL *pt = pre + t * M;                                                                             \
            const REAL *ft = lp + t * O + ZK;                                                                   \
            memset(pt, 0, M * sizeof(REAL));                                                                    \
            for (long f = 0; f < F; ++f)                                                                        \
                for (long o = 0; o < M; ++o) pt[o] += ft[f] * Gt[f * M + o];                                    \
        }                                                                                                       \
    }                                                                                                           \
                                                                                                                \
    /* the decoder's inputs x (B, T, H): b_dec + the columns of the latents zs (B, T, Z) and, with decoder      \
       tokens, of the first m steps' tokens (EMPTY past them) */                                                \
    static void dec_in_##SUFFIX(long B, long T, long m, long H, long Z, long K, long V, int dec_tokens,         \
                                const int64_t *zs, const int64_t *tokens, long span, const REAL *w_dec,         \
                                const REAL *b_dec, REAL *x) {                                                   \
        dec_inputs_##SUFFIX(B, T, T * Z, H, Z, K, zs, w_dec, b_dec, x);                                         \
        if (dec_tokens)                                                                                         \
            for (long b = 0; b < B; ++b)                                                                        \
                for (long t = 0; t < T; ++t) {                                                                  \
                    const int64_t tok = t < m ? tokens[b * span + t] : V;                                       \
                    const REAL *w = w_dec + (Z * K + tok) * H;                                                  \
                    REAL *xt = x + (b * T + t) * H;                                                             \
                    for (long k = 0; k < H; ++k) xt[k] += w[k];                                                 \
                }                                                                                               \
    }                                                                                                           \
                                                                                                                \
    long fused_rounds_##SUFFIX(long B, long n_ms, const int64_t *ms, long span, long H, long N, long Lp,        \
                               long Ld, long V, long Z, long K, int dec_tokens, int64_t *tokens,                \
                               const int64_t *seed, const int64_t *pos0, long s_lat, long s_abs, long s_tok,    \
                               const double *temp, const double *temp_tok, const REAL *par, const REAL *gen,    \
                               const REAL *dec, const REAL *dec_gen, const uint8_t *observed, const REAL *r0,  \
                               const REAL *pack_par, double eps_par, const REAL *emb_par, const REAL *pack_dec, \
                               double eps_dec, const REAL *w_dec, const REAL *b_dec, const REAL *prior, long R, \
                               long M, double eps_prior, long O, const REAL *Gt, REAL *par_out, REAL *dec_out,  \
                               int open_end, REAL *gen_out, REAL *dgen_out, REAL *r_out, REAL *seen) {          \
        const long ZK = Z * K, F = O - ZK, sp = Lp * H * N * 2, sd = Ld * H * N * 2;                            \
        long L2 = ms[0]; /* the longest pass */                                                                 \
        for (long i = 1; i < n_ms; ++i) L2 = ms[i - 1] + ms[i] > L2 ? ms[i - 1] + ms[i] : L2;                   \
        const long Rp = R > 1 ? R : 1, Mp = M > 1 ? M : 1;                                                      \
        const long ends = open_end && n_ms > 2 ? 1 : 0; /* an open last block after block 0: pg and dg */       \
        const long reals[] = {B * sp, B * sd, B * L2 * H, B * L2 * H, B * L2 * O, B * L2 * V, Rp + Mp + ZK,     \
                              B * Rp, B * L2 * Mp, B * span * Z, B * span * Z, B * span, ends * B * sp,         \
                              ends * B * sd};                                                                   \
        const long ints[] = {B * L2 * Z};                                                                       \
        char *bufs[SCRATCH_COUNT(reals, ints)];                                                                 \
        char *block = SCRATCH(reals, ints, REAL, bufs);                                                         \
        if (!block)                                                                                             \
            return -1;                                                                                          \
        REAL *pa = (REAL *)bufs[0], *da = (REAL *)bufs[1], *x = (REAL *)bufs[2], *g = (REAL *)bufs[3];         \
        REAL *lp = (REAL *)bufs[4], *ld = (REAL *)bufs[5], *ps = (REAL *)bufs[6], *r = (REAL *)bufs[7];        \
        REAL *pre = (REAL *)bufs[8], *u_lat = (REAL *)bufs[9], *u_abs = (REAL *)bufs[10];                       \
        REAL *u_tok = (REAL *)bufs[11], *pg = (REAL *)bufs[12], *dg = (REAL *)bufs[13];                         \
        int64_t *zs = (int64_t *)bufs[14];                                                                      \
        const int64_t st[3] = {s_lat, s_abs, s_tok};                                                            \
        const long draws[3] = {Z, Z, 1};                                                                        \
        REAL *const us[3] = {u_lat, u_abs, u_tok};                                                              \
        span_uniforms_##SUFFIX(B, span, seed, pos0, 3, st, draws, us);                                          \
        const int keep0 = open_end && n_ms == 2; /* the call stops inside block 0: its passes keep states */    \
        { /* round 0: block 0 from the states generation continues from */                                      \
            const long m = ms[0];                                                                               \
            int any = 0;                                                                                        \
            for (long b = 0; b < B; ++b) any = any || observed[b];                                              \
            if (any) { /* f_par over EMPTYs: the latents' logits and context, zero where nothing was observed */ \
                for (long k = 0; k < B * m; ++k) memcpy(x + k * H, emb_par + V * H, H * sizeof(REAL));          \
                ssm_net_##SUFFIX(B, H, N, m, Lp, O, m, x, pack_par, eps_par, gen, sp, keep0 ? gen_out : 0, g,   \
                                 lp);                                                                           \
                for (long b = 0; b < B; ++b)                                                                    \
                    if (!observed[b]) memset(lp + b * m * O, 0, m * O * sizeof(REAL));                          \
            }                                                                                                   \
            if (keep0 && gen_out) /* generation's partial encoder moves only where a token was observed */      \
                for (long b = 0; b < B; ++b)                                                                    \
                    if (!any || !observed[b]) memcpy(gen_out + b * sp, gen + b * sp, sp * sizeof(REAL));        \
            if (prior) {                                                                                        \
                if (F && any)                                                                                   \
                    for (long b = 0; b < B; ++b) context_##SUFFIX(m, O, ZK, M, lp + b * m * O, Gt, pre + b * m * M); \
                memcpy(r, r0, B * R * sizeof(REAL));                                                            \
                latent_prior_##SUFFIX(B, m, Z, K, R, M, any ? lp : 0, m * O, O, F && any ? pre : 0, m * M, M,   \
                                      u_lat, span * Z, temp, prior, eps_prior, r, zs, m * Z, ps);               \
                if (keep0 && r_out)                                                                             \
                    memcpy(r_out, r, B * R * sizeof(REAL));                                                     \
            } else                                                                                              \
                for (long b = 0; b < B; ++b)                                                                    \
                    for (long t = 0; t < m; ++t) {                                                              \
                        const REAL *u = u_lat + (b * span + t) * Z;                                             \
                        int64_t *zt = zs + (b * m + t) * Z;                                                     \
                        if (observed[b])                                                                        \
                            categorical_##SUFFIX(Z, K, lp + (b * m + t) * O, u, temp[b], zt);                   \
                        else /* the uniform prior, floor(u K), as model/sampling.py's latents_from */           \
                            for (long j = 0; j < Z; ++j) {                                                      \
                                const int64_t c = (int64_t)(u[j] * (REAL)K);                                    \
                                zt[j] = c < K - 1 ? c : K - 1;                                                  \
                            }                                                                                   \
                    }                                                                                           \
            dec_in_##SUFFIX(B, m, 0, H, Z, K, V, dec_tokens, zs, tokens, span, w_dec, b_dec, x);               \
            ssm_net_##SUFFIX(B, H, N, m, Ld, V, m, x, pack_dec, eps_dec, dec_gen, sd, keep0 ? dgen_out : 0, g,  \
                             ld);                                                                               \
            for (long b = 0; b < B; ++b)                                                                        \
                for (long t = 0; t < m; ++t)                                                                    \
                    categorical_##SUFFIX(1, V, ld + (b * m + t) * V, u_tok + b * span + t, temp_tok[b],         \
                                         tokens + b * span + t);                                                \
            if (seen)                                                                                           \
                for (long b = 0; b < B; ++b)                                                                    \
                    memcpy(seen + b * span * V, ld + b * m * V, m * V * sizeof(REAL));                          \
        }                                                                                                       \
        /* The rounds after block 0 read the absorbed states from pa and da and write them back there. With     \
           more than one of them, or passes of SSM_MODES_MIN_T steps or more (where the recurrence may run      \
           modes outer, which reads and writes planar states as whole vectors), the states are planar for the   \
           whole call (csrc/s4d_block.c, ssm_net_laid; updated in place): converted once, where every pass      \
           gathered them from their pairs and scattered them back. A lone round of passes under SSM_MODES_MIN_T \
           steps stays interleaved: its recurrence copies the states through a cache-resident block either way, \
           so converting them would be two more copies. */                                                      \
        const int laid = n_ms > 2 || L2 >= SSM_MODES_MIN_T; /* an open block after block 0: n_ms > 2 */         \
        if (laid && n_ms > 1) {                                                                                 \
            ssm_states_layout_##SUFFIX(B, Lp, H, N, par, sp, pa, sp, 1);                                        \
            ssm_states_layout_##SUFFIX(B, Ld, H, N, dec, sd, da, sd, 1);                                        \
        }                                                                                                       \
        long start = 0;                                                                                         \
        for (long i = 1; i < n_ms; ++i) {                                                                       \
            const long m = ms[i - 1], nx = ms[i], T = m + nx;                                                   \
            /* 1. f_par over [block i-1's tokens, EMPTYs] */                                                     \
            for (long b = 0; b < B; ++b)                                                                        \
                for (long t = 0; t < T; ++t) {                                                                  \
                    const int64_t tok = t < m ? tokens[b * span + start + t] : V;                               \
                    memcpy(x + (b * T + t) * H, emb_par + tok * H, H * sizeof(REAL));                            \
                }                                                                                               \
            ssm_net_laid_##SUFFIX(B, H, N, T, Lp, O, m, x, pack_par, eps_par, laid ? pa : par, sp, pa, g, lp,   \
                                  laid);                                                                        \
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
            if (prior && nx) { /* a new block: the latent prior from its start, pre = G g_t from the context */ \
                if (F)                                                                                          \
                    for (long b = 0; b < B; ++b)                                                                \
                        context_##SUFFIX(nx, O, ZK, M, lp + (b * T + m) * O, Gt, pre + b * nx * M);             \
                memset(r, 0, B * R * sizeof(REAL));                                                             \
                latent_prior_##SUFFIX(B, nx, Z, K, R, M, lp + m * O, T * O, O, F ? pre : 0, nx * M, M,          \
                                      u_lat + (start + m) * Z, span * Z, temp, prior, eps_prior, r, zs + m * Z, \
                                      T * Z, ps);                                                               \
            }                                                                                                   \
            /* 3. f_dec over [z' (and the tokens), z (and EMPTYs)] */                                           \
            dec_in_##SUFFIX(B, T, m, H, Z, K, V, dec_tokens, zs, tokens + start, span, w_dec, b_dec, x);       \
            ssm_net_laid_##SUFFIX(B, H, N, T, Ld, V, m, x, pack_dec, eps_dec, laid ? da : dec, sd, da, g, ld,   \
                                  laid);                                                                        \
            /* 4. block i's tokens */                                                                           \
            for (long b = 0; b < B; ++b)                                                                        \
                for (long t = m; t < T; ++t)                                                                    \
                    categorical_##SUFFIX(1, V, ld + (b * T + t) * V, u_tok + b * span + start + t, temp_tok[b],  \
                                         tokens + b * span + start + t);                                        \
            if (seen && nx)                                                                                     \
                for (long b = 0; b < B; ++b)                                                                    \
                    memcpy(seen + (b * span + start + m) * V, ld + (b * T + m) * V, nx * V * sizeof(REAL));     \
            if (open_end && i == n_ms - 2) { /* the call stops inside block i: generation's states after it */  \
                memcpy(pg, pa, B * sp * sizeof(REAL)); /* from the absorbed states after block i-1, nx steps */ \
                for (long k = 0; k < B * nx; ++k) memcpy(x + k * H, emb_par + V * H, H * sizeof(REAL));         \
                ssm_net_laid_##SUFFIX(B, H, N, nx, Lp, O, nx, x, pack_par, eps_par, pg, sp, pg, g, lp, 1);      \
                memcpy(dg, da, B * sd * sizeof(REAL));                                                          \
                dec_inputs_##SUFFIX(B, nx, T * Z, H, Z, K, zs + m * Z, w_dec, b_dec, x); /* block i's z */      \
                if (dec_tokens) /* and EMPTYs */                                                                \
                    for (long k = 0; k < B * nx; ++k)                                                           \
                        for (long j = 0; j < H; ++j) x[k * H + j] += w_dec[(ZK + V) * H + j];                   \
                ssm_net_laid_##SUFFIX(B, H, N, nx, Ld, V, nx, x, pack_dec, eps_dec, dg, sd, dg, g, ld, 1);      \
                if (prior && r_out) /* the latent prior's state after block i's latents */                      \
                    memcpy(r_out, r, B * R * sizeof(REAL));                                                     \
            }                                                                                                   \
            start += m;                                                                                         \
        }                                                                                                       \
        if (par_out && n_ms > 1 && laid)                                                                        \
            ssm_states_layout_##SUFFIX(B, Lp, H, N, pa, sp, par_out, sp, 0);                                    \
        else if (par_out)                                                                                       \
            memcpy(par_out, n_ms > 1 ? pa : par, B * sp * sizeof(REAL));                                        \
        if (dec_out && n_ms > 1 && laid)                                                                        \
            ssm_states_layout_##SUFFIX(B, Ld, H, N, da, sd, dec_out, sd, 0);                                    \
        else if (dec_out)                                                                                       \
            memcpy(dec_out, n_ms > 1 ? da : dec, B * sd * sizeof(REAL));                                        \
        if (open_end && !keep0 && gen_out)                                                                      \
            ssm_states_layout_##SUFFIX(B, Lp, H, N, pg, sp, gen_out, sp, 0);                                    \
        if (open_end && !keep0 && dgen_out)                                                                     \
            ssm_states_layout_##SUFFIX(B, Ld, H, N, dg, sd, dgen_out, sd, 0);                                   \
        free(block);                                                                                            \
        return 0;                                                                                               \
    }

ROUNDS(float, f32)
ROUNDS(double, f64)

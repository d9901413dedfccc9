/* The kernels' entry points that the loops in other files call (csrc/rounds.c, csrc/patch_rounds.c,
csrc/prior_piece.c, csrc/ar_loop.c, csrc/transformer_loop.c, csrc/gru_loop.c), in float32 and float64: their
definitions and layouts are in csrc/s4d_block.c (ssm_net, ssm_net_laid, ssm_states_layout, ssm_net_head,
linear_rows, layernorm_rows, exact_gelu_rows), csrc/keyed.c (keyed_uniforms, span_uniforms), csrc/categorical.c (categorical, step_draws),
csrc/latent_prior.c (latent_prior, latent_prior_table), csrc/prior_piece.c (dec_inputs) and csrc/scratch.c
(scratch_block).
model/native.py hashes this file with the sources. */

#ifndef VSSM_KERNELS_H
#define VSSM_KERNELS_H

#include <stdint.h>

/* csrc/s4d_block.c: from this many steps (up to its MODES_MAX_T) a pass's recurrence runs modes outer, its states
   read and written as whole vectors where they are planar; below it (and past MODES_MAX_T) it runs steps outer,
   which copies them through a cache-resident block whatever their layout */
#define SSM_MODES_MIN_T 4
/* a bit of ssm_net_laid's `planar`: every pass of the caller's network is one step (an autoregressive loop), so the
   sums over modes may run in the steps-outer loop's shortest chains; without it every pass sums them in the
   modes-outer loop's order, so that passes of any length give the same bits and a session's chunks never change
   them (that order took 3% of the autoregressive SSM's step: docs/experiments/rounds-and-serving.md, thirty-ninth
   session) */
#define SSM_ANY_ORDER 2

#define VSSM_DECLARE(REAL, SUFFIX)                                                                            \
    void ssm_net_##SUFFIX(long Bsz, long H, long N, long T, long L, long O, long at, REAL *x, const REAL *pack, \
                          double eps, const REAL *h0, long h0_sb, REAL *h_out, REAL *g, REAL *logits);          \
    void ssm_net_laid_##SUFFIX(long Bsz, long H, long N, long T, long L, long O, long at, REAL *x,               \
                               const REAL *pack, double eps, const REAL *h0, long h0_sb, REAL *h_out, REAL *g,  \
                               REAL *logits, int planar);                                                       \
    void ssm_states_layout_##SUFFIX(long Bsz, long L, long H, long N, const REAL *in, long in_sb, REAL *out,     \
                                    long out_sb, int to_planar);                                                \
    void ssm_net_head_##SUFFIX(long rows, long H, long N, long L, long O, const REAL *pack, double eps,         \
                               const REAL *x, REAL *g, REAL *logits);                                           \
    void linear_rows_##SUFFIX(long R, long K, long M, const REAL *a, const REAL *wt, const REAL *bias,         \
                              REAL *out);                                                                       \
    void layernorm_rows_##SUFFIX(long rows, long H, const REAL *x, const REAL *w, const REAL *bias, double eps, \
                                 REAL *o);                                                                      \
    void exact_gelu_rows_##SUFFIX(long rows, long H, REAL *x);                                                  \
    void keyed_uniforms_##SUFFIX(long Bsz, long S, long T, long W, const int64_t *seed, const int64_t *pos,     \
                                 long pos_sb, long pos_st, const int64_t *streams, REAL *out);                 \
    void span_uniforms_##SUFFIX(long Bsz, long T, const int64_t *seed, const int64_t *pos0, long S,             \
                                const int64_t *streams, const long *W, REAL *const *out);                      \
    void dec_inputs_##SUFFIX(long B, long n, long z_sb, long H, long Z, long K, const int64_t *z,             \
                             const REAL *w_dec, const REAL *b_dec, REAL *x);                                \
    void categorical_##SUFFIX(long R, long V, const REAL *logits, const REAL *u, double temperature,          \
                              int64_t *out);                                                                    \
    void step_draws_##SUFFIX(long B, long V, long n, long i, const REAL *logits, const REAL *u,               \
                             const double *temperature, REAL *scores, int64_t *out);                            \
    void latent_prior_##SUFFIX(long B, long n, long Z, long K, long R, long M, const REAL *base, long base_sb,  \
                               long base_st, const REAL *pre, long pre_sb, long pre_st, const REAL *u,       \
                               long u_sb, const double *temperature, const REAL *packed, double eps, REAL *r, \
                               int64_t *z, long z_sb, REAL *scratch);                                         \
    void latent_prior_table_##SUFFIX(long B, long n, long Z, long K, long R, long M, long P, const REAL *base,   \
                                     long base_sb, long base_st, const REAL *pre, long pre_sb, long pre_st,     \
                                     const REAL *u, long u_sb, const double *temperature, const REAL *packed,   \
                                     double eps, const REAL *table, REAL *r, int64_t *z, long z_sb,             \
                                     REAL *scratch);
VSSM_DECLARE(float, f32)
VSSM_DECLARE(double, f64)
#undef VSSM_DECLARE

/* csrc/scratch.c */
char *scratch_block(long nr, const long *reals, long real_bytes, long ni, const long *ints, char **out);
/* a call's scratch from its arrays of sizes, reals of type real: ``char *bufs[SCRATCH_COUNT(reals, ints)]``
   receives the addresses */
#define SCRATCH_COUNT(reals, ints) (sizeof reals / sizeof *reals + sizeof ints / sizeof *ints)
#define SCRATCH(reals, ints, real, bufs) \
    scratch_block(sizeof reals / sizeof *reals, reals, sizeof(real), sizeof ints / sizeof *ints, ints, bufs)

#endif

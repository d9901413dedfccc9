/* The autoregressive Transformer's generation loop in one call (model/transformer.py, ARTransformer._generate).

Glossary of axis letters:
    B  batch      n  tokens to draw      H  width      nh  attention heads      d  head width (H / nh)
    L  layers     F  the MLP's hidden width      V  vocabulary (the head's outputs)      S  cache slots

Per step, for every row: draw x_t from the current logits with its keyed uniform (csrc/categorical.c, so a
draw equals sample_categorical's), then run the network one step at the row's own position p = length[b]
(model/transformer.py, Block):
    x = embed[x_t] + pos[p]
    per layer:  q, k, v = split(W_qkv LN1(x) + b_qkv);  k, v written to cache slot p
                a_head  = softmax(q k_j / sqrt(d), j <= p) v_j          (each head over its d channels)
                x      += W_proj a + b_proj
                x      += W_2 GELU(W_1 LN2(x) + b_1) + b_2               (the exact GELU)
    logits = W_head LN(x) + b_head
and length[b] += 1.  The AR-SSM's loop is one compiled call (csrc/ar_loop.c) so that the comparison between
it and the VSSM stays one of arithmetic, not of Python; this gives the Transformer the same treatment:
in PyTorch a step was some 70 small operations, 355 us a token at batch 1 whatever the cache's length
(docs/experiments/rounds-and-serving.md, forty-second session).

Attention reads each head's keys transposed, (d, S) in scratch, so that the scores of all slots are d
vector sweeps (for d = 12, a slot's dot product is too short to vectorise); the transposes are made once a
call from the cache and kept up to date with each new key.  The sums over slots (the softmax's total and
the weighted values) run in LN lanes then across them, an order fixed by the number of slots alone, so a
row's result is the same in any batch and in a call cut anywhere.  The linears, LayerNorms and GELUs are
csrc/s4d_block.c's (linear_rows, layernorm_rows, exact_gelu_rows), as a network pass there runs them: their rows
never depend on the rows beside them.

Layouts: pack is the network's packed weights (model/native.py, pack_transformer): per layer LN1 (w, b),
W_qkv transposed (H, 3H), b_qkv, W_proj transposed (H, H), b_proj, LN2 (w, b), W_1 transposed (H, F), b_1,
W_2 transposed (F, H), b_2; then the final LN (w, b), W_head transposed (H, V), b_head.  emb (V + 1, H) and
pos (P, H) the embeddings; u (B, n) contiguous; temperature (B,) doubles; logits (B, V), read as the logits
of the first draw and overwritten with those after the last step; k and v (B, L, nh, S, d) contiguous, the
cache, whose slots below length[b] are read and to which each step writes its slot; length (B,) int64,
advanced by the steps run; scores (B, n, V) or NULL: the logits each draw was made from; out (B, n) int64.
With last_step 0 the network does not run after the last draw (a caller that keeps no state).  Returns 0, or
-1 where the scratch cannot be allocated (nothing written).  Nothing here checks a shape: the caller does. */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "kernels.h"

#include "vecmath.h" /* libmvec's vector exp and erf */

#define LN 16 /* lanes of the sums over slots */

/* one head's attention for one row: scores over slots 0..S-1 from q (d) and kt (d, cap), then the values'
   weighted sum into o (d) from vt (d, cap); e is S reals of scratch */
#define TR_HEAD(NAME, REAL, EXP)                                                                            \
    static void NAME(long d, long S, long cap, const REAL *q, const REAL *kt, const REAL *vt, REAL scale,  \
                     REAL *e, REAL *o) {                                                                    \
        const REAL q0 = q[0] * scale;                                                                      \
        _Pragma("omp simd") for (long j = 0; j < S; ++j) e[j] = q0 * kt[j];                                \
        for (long c = 1; c < d; ++c) {                                                                     \
            const REAL qc = q[c] * scale, *kc = kt + c * cap;                                              \
            _Pragma("omp simd") for (long j = 0; j < S; ++j) e[j] += qc * kc[j];                           \
        }                                                                                                  \
        REAL ml[LN];                                                                                       \
        for (long l = 0; l < LN; ++l) ml[l] = -INFINITY;                                                   \
        for (long j = 0; j < S; j += LN)                                                                   \
            for (long l = 0; l < LN && j + l < S; ++l) ml[l] = e[j + l] > ml[l] ? e[j + l] : ml[l];        \
        REAL m = ml[0];                                                                                    \
        for (long l = 1; l < LN; ++l) m = ml[l] > m ? ml[l] : m;                                           \
        _Pragma("omp simd") for (long j = 0; j < S; ++j) e[j] = EXP(e[j] - m);                             \
        REAL acc[LN] = {0};                                                                                \
        long j = 0;                                                                                        \
        for (; j + LN <= S; j += LN)                                                                       \
            for (long l = 0; l < LN; ++l) acc[l] += e[j + l];                                              \
        for (long l = 0; j + l < S; ++l) acc[l] += e[j + l];                                               \
        REAL total = 0;                                                                                    \
        for (long l = 0; l < LN; ++l) total += acc[l];                                                     \
        for (long c = 0; c < d; ++c) {                                                                     \
            const REAL *vc = vt + c * cap;                                                                 \
            for (long l = 0; l < LN; ++l) acc[l] = 0;                                                      \
            for (j = 0; j + LN <= S; j += LN)                                                              \
                for (long l = 0; l < LN; ++l) acc[l] += e[j + l] * vc[j + l];                              \
            for (long l = 0; j + l < S; ++l) acc[l] += e[j + l] * vc[j + l];                               \
            REAL sum = 0;                                                                                  \
            for (long l = 0; l < LN; ++l) sum += acc[l];                                                   \
            o[c] = sum / total;                                                                            \
        }                                                                                                  \
    }

#define TR_LOOP(NAME, REAL, NORM, GELU, HEAD, LINEAR, DRAW)                                                          \
    int NAME(long B, long H, long nh, long L, long F, long V, long n, long S, const REAL *pack, double eps,         \
             const REAL *emb, const REAL *pos, const REAL *u, const double *temperature, REAL *logits, REAL *k,   \
             REAL *v, int64_t *length, REAL *scores, int64_t *out, int last_step) {                                \
        const long d = H / nh, layer = 2 * H + H * 3 * H + 3 * H + H * H + H + 2 * H + H * F + F + F * H + H;     \
        const REAL scale = (REAL)(1 / sqrt((double)d));                                                            \
        const long kv = B * L * H * S; /* each of the transposed caches */                                         \
        const long reals[] = {kv, kv, B * H, B * H, B * 3 * H, B * H, B * F, S};                                   \
        const long ints[] = {0};                                                                                   \
        char *bufs[SCRATCH_COUNT(reals, ints)];                                                                    \
        char *block = SCRATCH(reals, ints, REAL, bufs);                                                            \
        if (!block)                                                                                                \
            return -1;                                                                                             \
        REAL *kt = (REAL *)bufs[0], *vt = (REAL *)bufs[1], *x = (REAL *)bufs[2], *a = (REAL *)bufs[3];             \
        REAL *qkv = (REAL *)bufs[4], *t = (REAL *)bufs[5], *f = (REAL *)bufs[6], *e = (REAL *)bufs[7];             \
        /* the cache's used slots, transposed: (B, L, nh, d, S) from (B, L, nh, S, d) */                           \
        for (long b = 0; b < B; ++b)                                                                               \
            for (long g = 0; g < L * nh; ++g) {                                                                    \
                const long at = (b * L * nh + g) * S * d;                                                          \
                for (long s = 0; s < length[b]; ++s)                                                               \
                    for (long c = 0; c < d; ++c) {                                                                 \
                        kt[at + c * S + s] = k[at + s * d + c];                                                    \
                        vt[at + c * S + s] = v[at + s * d + c];                                                    \
                    }                                                                                              \
            }                                                                                                      \
        for (long i = 0; i < n; ++i) {                                                                             \
            DRAW(B, V, n, i, logits, u, temperature, scores, out);                                                 \
            if (i == n - 1 && !last_step)                                                                          \
                break;                                                                                             \
            for (long b = 0; b < B; ++b) {                                                                         \
                const REAL *eb = emb + out[b * n + i] * H, *pb = pos + length[b] * H;                              \
                for (long h = 0; h < H; ++h) x[b * H + h] = eb[h] + pb[h];                                         \
            }                                                                                                      \
            const REAL *w = pack;                                                                                  \
            for (long l = 0; l < L; ++l, w += layer) {                                                             \
                const REAL *ln1w = w, *ln1b = ln1w + H, *wqkv = ln1b + H, *bqkv = wqkv + H * 3 * H;                \
                const REAL *wproj = bqkv + 3 * H, *bproj = wproj + H * H, *ln2w = bproj + H, *ln2b = ln2w + H;     \
                const REAL *w1 = ln2b + H, *b1 = w1 + H * F, *w2 = b1 + F, *b2 = w2 + F * H;                       \
                NORM(B, H, x, ln1w, ln1b, eps, a);                                                                 \
                LINEAR(B, H, 3 * H, a, wqkv, bqkv, qkv);                                                           \
                for (long b = 0; b < B; ++b) {                                                                     \
                    const long p = length[b];                                                                      \
                    const REAL *qb = qkv + b * 3 * H;                                                              \
                    for (long hd = 0; hd < nh; ++hd) {                                                             \
                        const long at = ((b * L + l) * nh + hd) * S * d;                                           \
                        const REAL *kn = qb + H + hd * d, *vn = qb + 2 * H + hd * d;                               \
                        for (long c = 0; c < d; ++c) {                                                             \
                            k[at + p * d + c] = kn[c], v[at + p * d + c] = vn[c];                                  \
                            kt[at + c * S + p] = kn[c], vt[at + c * S + p] = vn[c];                                \
                        }                                                                                          \
                        HEAD(d, p + 1, S, qb + hd * d, kt + at, vt + at, scale, e, a + b * H + hd * d);            \
                    }                                                                                              \
                }                                                                                                  \
                LINEAR(B, H, H, a, wproj, bproj, t);                                                               \
                _Pragma("omp simd") for (long r = 0; r < B * H; ++r) x[r] += t[r];                                 \
                NORM(B, H, x, ln2w, ln2b, eps, a);                                                                 \
                LINEAR(B, H, F, a, w1, b1, f);                                                                     \
                GELU(B, F, f);                                                                                     \
                LINEAR(B, F, H, f, w2, b2, t);                                                                     \
                _Pragma("omp simd") for (long r = 0; r < B * H; ++r) x[r] += t[r];                                 \
            }                                                                                                      \
            NORM(B, H, x, w, w + H, eps, a);                                                                       \
            LINEAR(B, H, V, a, w + 2 * H, w + 2 * H + H * V, logits);                                              \
            for (long b = 0; b < B; ++b) ++length[b];                                                              \
        }                                                                                                          \
        free(block);                                                                                               \
        return 0;                                                                                                  \
    }

TR_HEAD(tr_head_f32, float, expf)
TR_HEAD(tr_head_f64, double, exp)
TR_LOOP(transformer_loop_f32, float, layernorm_rows_f32, exact_gelu_rows_f32, tr_head_f32, linear_rows_f32,
        step_draws_f32)
TR_LOOP(transformer_loop_f64, double, layernorm_rows_f64, exact_gelu_rows_f64, tr_head_f64, linear_rows_f64,
        step_draws_f64)

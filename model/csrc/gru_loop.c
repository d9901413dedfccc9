/* The autoregressive GRU's generation loop in one call (model/autoregressive.py, ARGRU._generate).

Glossary of axis letters:
    B  batch      n  tokens to draw      H  width (every layer's)      L  layers      V  vocabulary

Per step, for every row: draw x_t from the current logits with its keyed uniform (csrc/categorical.c, so a
draw equals sample_categorical's), then run the stack one step, as torch.nn.GRU does, with x = embed[x_t]:
    per layer:  r = sigmoid(W_ir x + b_ir + W_hr h + b_hr),   z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
                c = tanh(W_ic x + b_ic + r (W_hc h + b_hc)),  h = (1 - z) c + z h,   x = h
    logits = W_head x + b_head
The AR-SSM's loop and the AR Transformer's are one compiled call each (csrc/ar_loop.c,
csrc/transformer_loop.c); this gives the GRU the same treatment: in PyTorch its step was some 65 us at batch 1
(docs/experiments/rounds-and-serving.md, forty-second session).  tanh is 2 sigmoid(2 a) - 1, through the
vector exp that the other kernels use (glibc's vector tanh is younger than its exp).  Each row's gates run as a
loop of their own over H, so which elements a vector loop's tail takes follows from H alone and a row's result is
the same in any batch.

Layouts: pack is the network's packed weights (model/native.py, pack_gru): per layer W_ih transposed (H, 3H),
b_ih (3H), W_hh transposed (H, 3H), b_hh (3H), each of 3H in the order r, z, c (torch.nn.GRU's); then W_head
transposed (H, V) and b_head (V).  emb (V + 1, H); u (B, n) contiguous; temperature (B,) doubles; logits (B, V),
read as the logits of the first draw and overwritten with those after the last step; h (B, L, H) contiguous, the
state, read and overwritten with the state after the last step; scores (B, n, V) or NULL: the logits each draw was
made from; out (B, n) int64.  With last_step 0 the network
does not run after the last draw (a caller that keeps no state).  Returns 0, or -1 where the scratch cannot be
allocated (nothing written).  Nothing here checks a shape: the caller does. */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "kernels.h"

#include "vecmath.h" /* libmvec's vector exp and erf */

#define GRU_LOOP(NAME, REAL, EXP, LINEAR, DRAW)                                                                       \
    int NAME(long B, long H, long L, long V, long n, const REAL *pack, const REAL *emb, const REAL *u,               \
             const double *temperature, REAL *logits, REAL *h, REAL *scores, int64_t *out, int last_step) {           \
        const long layer = 2 * (H * 3 * H + 3 * H);                                                                  \
        const long reals[] = {L * B * H, B * H, B * 3 * H, B * 3 * H};                                               \
        const long ints[] = {0};                                                                                     \
        char *bufs[SCRATCH_COUNT(reals, ints)];                                                                      \
        char *block = SCRATCH(reals, ints, REAL, bufs);                                                              \
        if (!block)                                                                                                  \
            return -1;                                                                                               \
        /* the state layer-major, (L, B, H), so that a layer's rows are one matrix for the products */               \
        REAL *hs = (REAL *)bufs[0], *x = (REAL *)bufs[1], *gi = (REAL *)bufs[2], *gh = (REAL *)bufs[3];              \
        for (long b = 0; b < B; ++b)                                                                                 \
            for (long l = 0; l < L; ++l)                                                                             \
                for (long k = 0; k < H; ++k) hs[(l * B + b) * H + k] = h[(b * L + l) * H + k];                       \
        const REAL *head = pack + L * layer;                                                                         \
        for (long i = 0; i < n; ++i) {                                                                               \
            DRAW(B, V, n, i, logits, u, temperature, scores, out);                                                   \
            if (i == n - 1 && !last_step)                                                                            \
                break;                                                                                               \
            for (long b = 0; b < B; ++b) {                                                                           \
                const REAL *e = emb + out[b * n + i] * H;                                                            \
                for (long k = 0; k < H; ++k) x[b * H + k] = e[k];                                                    \
            }                                                                                                        \
            const REAL *in = x;                                                                                      \
            for (long l = 0; l < L; ++l) {                                                                           \
                const REAL *wih = pack + l * layer, *bih = wih + H * 3 * H;                                          \
                const REAL *whh = bih + 3 * H, *bhh = whh + H * 3 * H;                                               \
                REAL *hl = hs + l * B * H;                                                                           \
                LINEAR(B, H, 3 * H, in, wih, bih, gi);                                                               \
                LINEAR(B, H, 3 * H, hl, whh, bhh, gh);                                                               \
                for (long b = 0; b < B; ++b) {                                                                       \
                    const REAL *ib = gi + b * 3 * H, *hb = gh + b * 3 * H;                                           \
                    REAL *hr = hl + b * H;                                                                           \
                    _Pragma("omp simd") for (long k = 0; k < H; ++k) {                                               \
                        const REAL r = 1 / (1 + EXP(-(ib[k] + hb[k])));                                              \
                        const REAL z = 1 / (1 + EXP(-(ib[H + k] + hb[H + k])));                                      \
                        const REAL a = ib[2 * H + k] + r * hb[2 * H + k];                                            \
                        const REAL c = 2 / (1 + EXP(-2 * a)) - 1;                                                    \
                        hr[k] = (1 - z) * c + z * hr[k];                                                             \
                    }                                                                                                \
                }                                                                                                    \
                in = hl;                                                                                             \
            }                                                                                                        \
            LINEAR(B, H, V, in, head, head + H * V, logits);                                                         \
        }                                                                                                            \
        for (long b = 0; b < B; ++b)                                                                                 \
            for (long l = 0; l < L; ++l)                                                                             \
                for (long k = 0; k < H; ++k) h[(b * L + l) * H + k] = hs[(l * B + b) * H + k];                       \
        free(block);                                                                                                 \
        return 0;                                                                                                    \
    }

GRU_LOOP(gru_loop_f32, float, expf, linear_rows_f32, step_draws_f32)
GRU_LOOP(gru_loop_f64, double, exp, linear_rows_f64, step_draws_f64)

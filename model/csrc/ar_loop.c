/* The autoregressive SSM's generation loop in one call (model/autoregressive.py, ARSSM._generate).

Glossary of axis letters:
    B  batch      n  tokens to draw      H  channels      N  complex modes per channel
    L  layers     V  vocabulary (the head's outputs)

Per step, for every row: draw x_t from the current logits with its keyed uniform (csrc/categorical.c,
so a draw equals sample_categorical's), then embed x_t and run the whole network one step from the
state (csrc/s4d_block.c, NET_LAID with T = 1, its states planar), which gives the next logits and state.  The latent
prior's sequential draws are one compiled call (csrc/latent_prior.c); the baseline's loop gets the
same treatment, so that the comparison between them stays one of arithmetic, not of Python
(docs/experiments/rounds-and-serving.md, eighteenth session).

Layouts: pack is the network's packed weights after its input layer (model/native.py, pack); emb
the embedding (n_in, H); u (B, n) contiguous; temperature (B,) doubles; logits (B, V), read as the
logits of the first draw and overwritten with those after the last step; h and spare (B, L, H, N)
complex as interleaved pairs, contiguous: the state is read from h and the final state written back
to h.  Between those, the loop holds the state planar ((2, N, H) reals a layer, csrc/s4d_block.c,
ssm_states_layout) in spare, so that each step reads and writes a mode's channels contiguously, not
pairs 2N apart: converting once a call instead of gathering and scattering the interleaved pairs every
step took a third off an image's time (docs/experiments/rounds-and-serving.md, twenty-seventh and
twenty-eighth sessions).  Each step updates that state in place (NET_LAID allows it): two buffers
by turns were a second copy of the state in the working set (thirty-first session).
x and g are (B, H) scratch; scores (B, n, V) or NULL: the logits each draw was made from; out (B, n) int64.  With last_step 0 the network does not run after
the last draw (a caller that keeps no state).  Nothing here checks a shape: the caller does. */

#include "kernels.h"

#define AR_LOOP(NAME, REAL, NET, DRAW, SLAY)                                                                         \
    void NAME(long B, long H, long N, long L, long V, long n, const REAL *pack, double eps, const REAL *emb,          \
             const REAL *u, const double *temperature, REAL *logits, REAL *h, REAL *spare, REAL *x, REAL *g,         \
             REAL *scores, int64_t *out, int last_step) {                                                            \
        const long sb = L * H * N * 2; /* a row of the state, in reals */                                            \
        SLAY(B, L, H, N, h, sb, spare, sb, 1); /* planar from here on, in spare, stepped in place */                 \
        for (long i = 0; i < n; ++i) {                                                                               \
            DRAW(B, V, n, i, logits, u, temperature, scores, out);                                                   \
            if (i == n - 1 && !last_step) break;                                                                     \
            for (long b = 0; b < B; ++b) {                                                                           \
                const REAL *e = emb + out[b * n + i] * H;                                                            \
                for (long k = 0; k < H; ++k) x[b * H + k] = e[k];                                                    \
            }                                                                                                        \
            NET(B, H, N, 1, L, V, 1, x, pack, eps, spare, sb, spare, g, logits, 1 | SSM_ANY_ORDER);                  \
        }                                                                                                            \
        SLAY(B, L, H, N, spare, sb, h, sb, 0); /* back, into h */                                                    \
    }

AR_LOOP(ssm_ar_loop_f32, float, ssm_net_laid_f32, step_draws_f32, ssm_states_layout_f32)
AR_LOOP(ssm_ar_loop_f64, double, ssm_net_laid_f64, step_draws_f64, ssm_states_layout_f64)

/* Block sampling's rounds for a partial encoder that reads a patch a step (model/patch.py), in one call
(model/vssm.py, VSSM._compiled_patch_rounds).

Glossary of axis letters:
    B  batch      H  channels      N  complex modes per channel      V  vocabulary (EMPTY = V)
    P  tokens a patch      Cb  tokens a block (any size: below)
    Z  latent variables per step      K  classes of each
    O  the partial encoder's outputs a position: Z*K logits, then F context features
    Q  the period of its tables: a position t reads column (t mod Q) of w_in, A and the head (Q = P: its
       place in its patch; model/patch.py)

Blocks are patches (block size P, aligned).  Round i reads block i-1's tokens and draws block i, from
the patch network's state after the patches before block i-1 (SSM states and head0, the head's
output (B, Q O) that block i-1's positions read, a column's O each) and the decoder's absorbed state D
(after the absorbed latents before block i-1); c below is a position's column, t mod Q:
    1. z' of block i-1, drawn at temperature 1 (the absorb stream) from head0 + A[c, x_t];
    2. one network step over patch i-1 (input b_in + acc, acc the sum of w_in[c, x_t] over its positions, one
       at a time in order: model/patch.py, PatchNet.table; w_in is D, whose EMPTY rows are zero): the SSM
       states after it, and the head's output for block i, whose logits are head + A[c, EMPTY];
    3. z of block i through the latent prior (csrc/latent_prior.c, from tables: the block starts it
      anew), its context pre = G g_t;
    4. the decoder: D after z' of block i-1, then a pass over z of block i from there for its
       token logits and E, the state after it.  When every row's z' equals the z drawn for block
       i-1, D after z' is E of the last round (the same function of the same inputs), and the pass
       over z' is skipped: with latents that are their pixels it nearly always is;
    5. block i's tokens at the token temperature.
So a round is one network step, one decoder pass over P steps (two where a z' differs) and the
prior's P draws, where the token-level partial encoder's round is two passes of 2P steps
(csrc/rounds.c).  The decoder reads latents only (no tokens: VSSMConfig.decoder_tokens is False).

Blocks of any size Cb (aligned to multiples of Cb, as patches are to multiples of P) are read the same way a
segment at a time, a segment ending where its patch or its block ends.  Absorbing block i-1: step 1 draws z' of a
segment's positions from the head before their patch (head0); step 2 adds the segment's tokens to the pending
patch's sum dsum (w_in[c, x] over the patch's tokens so far, from the state's acc where pending ones came in with
it), and where the segment ends its patch steps the network over b_in + dsum (the states after it, the next
patch's head) and starts dsum anew; a block's tokens that end no patch stay pending, gathered over the blocks.
Every patch's input is b_in + its tokens' sum taken in order from 0, wherever calls cut it, so chunks leave the
same bits (model/patch.py, PatchNet.table).  Generating block i (step 3): its positions in the patch it starts in
read the absorbed head, and each later patch's the head after one more network step over the patch before it,
read as EMPTYs, which add nothing (input b_in + dsum; b_in for a patch wholly in the block), taken from a copy of
the absorbed states (block 0: from generation's, gen, planar, the current patch's sum gin0, as dsum but of gen's
pending tokens); the latent prior draws Cb positions from its block start (its tables built for Cb draws).
A position reads the tokens before it in its patch only through the decoder (model/patch.py).  So a round of
blocks of P, aligned, is the one step above; a block of kP, k steps and k - 1 of generation's; a block inside a
patch, a step only where it ends the patch.  Every row's patches must end at the same round: rows at different
places in their patches (pos0 mod P) are refused (-2).

Block 0 is drawn here too (round 0): its latents through the latent prior from r0 (B, R), the prior's
state before its first position (zeros at a block start: then from the prior's tables, a row's choice its own,
as alone), from head0 + A[c, EMPTY] where the row has
observed a token (observed (B,) bytes) and the uniform prior where not; then the decoder from dec_gen
(B, Ld, H, N), the state generation continues from, and the tokens.  Where that state is the
absorbed one (byte for byte: at a block start, unless a call of another block size left the state),
round 1 may skip its pass over z' as any round does.  Block 0's z read the head of y_gen (B, H),
the residual stream generation continues from, and its z' in round 1 that of y, the absorbed one: a
call of another block size may have left the first ahead of the second.  The network step reads the
absorbed SSM states.

A call that starts inside a block (phase > 0) starts pp = phase mod P positions into a patch: block 0 is then
the last Cb - phase positions of its block, the first P - pp of them (at most) the rest of that patch, whose
first pp tokens are pending in the state, and round 1's sum for that patch starts from their sum acc (B, H), read
from the packed state, not from 0.

Layouts: the blocks are m0 = Cb - phase positions (phase: the position of the span's start in its
block), then Cb each, the first or the last cut where the span ends; tokens (B, span) int64, written;
seed and pos0 (B,) int64, the rows' keys and the span's first absolute position (pos0 mod Cb must be
`phase`: the columns are read from it), whose uniforms are drawn here from streams s_lat, s_abs and
s_tok, as csrc/keyed.c draws them (model/sampling.py, keyed_uniforms); temp, temp_tok (B,) doubles.  The states, read only, are
model/patch.py's packed partial-encoder state par (B, Lp + 1, H, N) complex (interleaved pairs): slots
0..Lp-1 the SSM states, slot Lp the pending patch, [Lp, :, 0] = acc + i y, [Lp, 0, 1] its token
count, which must be pp in every row, and where Q > P [Lp, 1, 1] the patch's index modulo Q / gcd(P, Q),
which must be pos0's (else nothing is drawn and -2 returned); gen the same form,
generation's, of which y_gen is read (and, in a block of several patches, the SSM states and acc); dec_in and dec_gen (B, Ld, H, N) complex, the absorbed
decoder state and generation's; observed (B,) bytes; r0 (B, R).  Weights: w_in (Q, V+1, H) and b_in (H,): the
network's input as a table, a patch's input b_in + the sum of w_in[c, x] over its positions (D[c, x] = W[c, x] -
W[c, EMPTY], zero for an EMPTY, and START's input u_0: model/patch.py, PatchNet.table); A (Q, V+1, O); pack_par the network's pack (model/native.py, pack) with a head of
Q O outputs; w_dec the decoder's input weight transposed (Z K, H), b_dec (H,); prior the
latent prior's pack, Gt (F, M) or NULL, ptab its tables for draws from a block start
(csrc/latent_prior.c, LATENT_PRIOR_TABLE).  seen (B, span, V), NULL where not wanted: the logits each token was
drawn from (a scored call's, as the autoregressive loops' `scores`).  Outputs, each NULL where not wanted, and written only with
absorb (non-zero): par_out (B, Lp + 1, H, N) and dec_out (B, Ld, H, N), the absorbed states after the last
block.  With absorb 1 (the span must then end at a block boundary) a last round runs steps 1, 2 and 4's pass
over z' for that block and draws none, as model/vssm.py's absorption of a block does: par_out is packed at
the boundary (acc 0, count 0, and where Q > P the next patch's index modulo Q / gcd(P, Q) in [Lp, 1, 1]; for
blocks inside a patch, a block's end inside its patch: that patch's pending sum, count and index).  With absorb 2 the span stops inside its last block (open end): the last
round reads that part block as the others, a step over each patch it ends, and the tokens of a patch it stops
inside as pending ones (par_out packs their sum acc, their count and y), z' of it and the decoder's pass over
them give dec_out; generation's states come back too, as VSSM._piece leaves them: gen_out (par_out's form,
the part block read as EMPTYs, which add 0: in a block of several patches generation's own steps over them,
the last one too where the part ends a patch), dgen_out (B, Ld, H, N), the decoder's state after the part
block's z, and r_out (B, R), the latent prior's after its draws (each NULL unless absorb is 2).  Where the part
is block 0 and ends no patch (no step: block 0 left open) par and gen come back as they came in, par with the
part's sum added to its acc and pp + its length as its count, gen with the length added to its count where the
row has observed a token (a row that has not keeps gen as it was, as it does where block 0 steps:
model/vssm.py, VSSM._piece).
The scratch is allocated here, one block a call.

Both networks' states are planar while the call runs (csrc/s4d_block.c, ssm_net_laid; the decoder's
converted from dec_in and dec_gen on entry, to dec_out on return; the partial encoder's from par's SSM
states on entry, to par_out's on return): the decoder's passes of P steps and the partial encoder's
one-step passes then read and write a mode's channels contiguously (the passes of P steps as whole
vectors where the channels fill them and the modes come in groups of four), where the interleaved
pairs, 2N apart, were gathered and scattered a lane at a time.  The partial encoder's states are
stepped in place, in one buffer (NET_LAID allows it), not two by turns.  The autoregressive SSM's loop
(csrc/ar_loop.c) holds its states planar and in place the same way: its step gets the same treatment.

Returns how many rounds skipped the pass over z', -1 where the scratch could not be allocated, -2
where a row's pending count is not pp (or its position or phase disagree with it), or where a row that
has observed a token has generation's pending count or phase other than that, -3 where absorb does not fit
the span or outputs are wanted without it, or the block or patch is empty.
Nothing here checks a shape. */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

#define PATCH_ROUNDS(REAL, SUFFIX)                                                                                  \
    /* the latent prior's inputs for n positions of a block from span offset s0, rows of S positions a batch    \
       row (lp and pre point at the first position's row): base logits lp (B, S, O) = head (B, Q O) +         \
       A[c, EMPTY] at each position's column c, pre (B, S, M) = G times their context features (a row's F     \
       features gathered into cxz, then one product; cxz + S F holds M zeros, its bias); zeros in a row not    \
       observed (obs NULL: all are), whose latents the uniform prior draws */                                   \
    static void prior_inputs_##SUFFIX(long B, long n, long s0, const int64_t *pos0, long S, long Q, long O,       \
                                      long ZK, long M, long V, const REAL *head, const REAL *A, const REAL *Gt,  \
                                      const uint8_t *obs, REAL *lp, REAL *pre, REAL *cxz) {                     \
        const long F = O - ZK;                                                                                  \
        for (long b = 0; b < B; ++b) {                                                                          \
            const int on = !obs || obs[b];                                                                      \
            for (long t = 0; t < n; ++t) {                                                                      \
                REAL *l = lp + (b * S + t) * O;                                                                 \
                const long c = (pos0[b] + s0 + t) % Q;                                                          \
                const REAL *h = head + (b * Q + c) * O, *a = A + (c * (V + 1) + V) * O;                         \
                for (long o = 0; o < O; ++o) l[o] = on ? h[o] + a[o] : 0;                                       \
                if (F) memcpy(cxz + t * F, l + ZK, F * sizeof(REAL));                                           \
            }                                                                                                   \
            if (F && on)                                                                                        \
                linear_rows_##SUFFIX(n, F, M, cxz, Gt, cxz + S * F, pre + b * S * M);                           \
            else if (F)                                                                                         \
                memset(pre + b * S * M, 0, n * M * sizeof(REAL));                                               \
        }                                                                                                       \
    }                                                                                                           \
                                                                                                                \
    /* the latent prior's inputs for the n positions of a block from span offset s0 that generation reads,  \
       its latents' f_par over EMPTYs: the first `first` positions (the rest of the current patch) from head,    \
       each later patch's from the head after one more network step over the patch before it, read as EMPTYs  \
       (they add nothing: input b_in; the current patch's b_in + base0, where its first tokens are pending:  \
       their sum), from the planar states st (stepped in place: the caller's                                    \
       copy) into hg (B, Q O), each step's residual stream into yg (B, H).  With close, a last patch that the  \
       n positions complete is stepped too (the states generation leaves after a block it stops inside).     \
       Returns the steps taken: none in a block of P (Cb = P), one patch */                                    \
    static long block_inputs_##SUFFIX(long B, long n, long s0, long first, const REAL *base0, int close,         \
                                      const int64_t *pos0, long P, long Cb, long Q, long O, long ZK, long M,     \
                                      long V, long H, long N, long Lp, long sp, const REAL *head, REAL *hg,      \
                                      const REAL *A, const REAL *Gt, const uint8_t *obs, const REAL *b_in,      \
                                      const REAL *pack_par, double eps_par, REAL *st, REAL *yg, REAL *x,        \
                                      REAL *g, REAL *lp, REAL *pre, REAL *cxz) {                                \
        long done = 0, steps = 0;                                                                               \
        for (;;) {                                                                                              \
            const long from = done, seg = done ? (n - done < P ? n - done : P) : (n < first ? n : first);       \
            prior_inputs_##SUFFIX(B, seg, s0 + done, pos0, Cb, Q, O, ZK, M, V, done ? hg : head, A, Gt, obs,    \
                                  lp + done * O, pre + done * M, cxz);                                          \
            done += seg;                                                                                        \
            const int full = from ? seg == P : seg == first; /* the segment ends its patch */                   \
            if (!full || (done >= n && !close))                                                                 \
                return steps;                                                                                   \
            for (long b = 0; b < B; ++b) { /* the patch just read, [from, done), all EMPTYs: they add nothing */ \
                REAL *xb = x + b * H;                                                                           \
                if (from == 0 && base0)                                                                         \
                    for (long k = 0; k < H; ++k) xb[k] = b_in[k] + base0[b * H + k];                            \
                else                                                                                            \
                    memcpy(xb, b_in, H * sizeof(REAL));                                                         \
            }                                                                                                   \
            ssm_net_laid_##SUFFIX(B, H, N, 1, Lp, Q * O, 1, x, pack_par, eps_par, st, sp, st, g, hg, 1);         \
            memcpy(yg, x, B * H * sizeof(REAL)); /* the residual stream after the step */                      \
            ++steps;                                                                                            \
            if (done >= n)                                                                                      \
                return steps;                                                                                   \
        }                                                                                                       \
    }                                                                                                           \
                                                                                                                    \
    long patch_rounds_##SUFFIX(long B, long phase, long span, long absorb, long Cb, long P, long Q, long H,       \
                               long N, long Lp, long Ld, long V, long Z, long K, int64_t *tokens,                 \
                               const int64_t *seed, const int64_t *pos0, long s_lat, long s_abs, long s_tok,      \
                               const double *temp, const double *temp_tok, const REAL *par, const REAL *gen,     \
                               const REAL *dec_in, const REAL *dec_gen, const uint8_t *observed, const REAL *r0, \
                               const REAL *pack_par, double eps_par, const REAL *w_in, const REAL *b_in,         \
                               const REAL *A, const REAL *pack_dec, double eps_dec, const REAL *w_dec,           \
                               const REAL *b_dec, const REAL *prior, long R, long M, double eps_prior, long O,   \
                               const REAL *Gt, const REAL *ptab, REAL *par_out, REAL *dec_out, REAL *gen_out,    \
                               REAL *dgen_out, REAL *r_out, REAL *seen) {                                       \
        const long ZK = Z * K, F = O - ZK, V1 = V + 1, NH = N * H, sp = Lp * NH * 2, sd = Ld * NH * 2;            \
        const long slot = Lp * NH * 2, packed = slot + NH * 2; /* the pending slot's offset; a row, in reals */   \
        const long m0 = Cb - phase, one = B * sd; /* block 0's length if the span reaches its end; a decoder state */ \
        if (P < 1 || Cb < 1 || phase < 0 || phase >= Cb)                                                        \
            return -3;                                                                                              \
        const long pp = pos0[0] % P; /* the span's first position in its patch: the pending tokens before it */  \
        long gcd = P;                                                                                               \
        for (long r = Q, q; r; gcd = r, r = q) q = gcd % r;                                                        \
        const long cycle = Q / gcd; /* patches after which the columns' phase repeats */                           \
        for (long b = 0; b < B; ++b) {                                                                              \
            if (pp != (long)nearbyint(par[b * packed + slot + 2]) || pos0[b] < 0 || pos0[b] % Cb != phase ||        \
                pos0[b] % P != pp) /* [Lp, 0, 1], its real part, and the positions, where the columns are read */ \
                return -2; /* from and every row's patches end alike */                                            \
            if (cycle > 1 && (long)nearbyint(par[b * packed + slot + (N + 1) * 2]) != (pos0[b] / P) % cycle)       \
                return -2; /* [Lp, 1, 1]: the patch's phase */                                                      \
            const REAL *gb = gen + b * packed + slot; /* a row that has observed: generation's patch is par's */   \
            if (observed[b] && (pp != (long)nearbyint(gb[2]) ||                                                     \
                                (cycle > 1 && (long)nearbyint(gb[(N + 1) * 2]) != (pos0[b] / P) % cycle)))         \
                return -2;                                                                                          \
        }                                                                                                           \
        const int whole_end = (phase + span) % Cb == 0; /* the span ends at a block boundary */                  \
        if ((absorb == 1 && !whole_end) || (absorb == 2 && whole_end) || (!absorb && (par_out || dec_out)))        \
            return -3; /* an absorbed last block that is not whole, an open end not inside a block, states unabsorbed */ \
        /* the scratch: the states, then the rounds' buffers, each 64-byte aligned */                       \
        const long Rp = R > 1 ? R : 1;                                                                              \
        const long reals[] = {B * sp, 3 * one, B * H, B * H, B * Q * O, B * Cb * H, B * Cb * H, B * Cb * O,      \
                              B * Cb * V, R + M + ZK, B * Rp, B * Cb * M, Cb * F + M, B * span * Z, B * span * Z,  \
                              B * span, B * sp, B * Q * O, B * H, B * H, B * H};                                   \
        const long ints[] = {B * Cb * Z, B * Cb * Z};                                                               \
        char *bufs[SCRATCH_COUNT(reals, ints)];                                                                     \
        char *block = SCRATCH(reals, ints, REAL, bufs);                                                             \
        if (!block)                                                                                                 \
            return -1;                                                                                              \
        REAL *pe = (REAL *)bufs[0], *dec = (REAL *)bufs[1], *y = (REAL *)bufs[2];                                  \
        REAL *dg = dec + 2 * one; /* dec: the two absorbed states the rounds alternate, then generation's */        \
        REAL *y_gen = (REAL *)bufs[3], *head0 = (REAL *)bufs[4], *x = (REAL *)bufs[5], *g = (REAL *)bufs[6];       \
        REAL *lp = (REAL *)bufs[7], *ld = (REAL *)bufs[8], *ps = (REAL *)bufs[9], *r = (REAL *)bufs[10];           \
        REAL *pre = (REAL *)bufs[11], *cxz = (REAL *)bufs[12], *u_lat = (REAL *)bufs[13];                          \
        REAL *u_abs = (REAL *)bufs[14], *u_tok = (REAL *)bufs[15];                                                  \
        REAL *pg = (REAL *)bufs[16], *hg = (REAL *)bufs[17]; /* generation's steps in a block of several patches */ \
        REAL *gin0 = (REAL *)bufs[18], *yg = (REAL *)bufs[19]; /* its pending patch's sum; its residual stream */   \
        REAL *dsum = (REAL *)bufs[20]; /* the absorbed pending patch's sum acc of D[c, x] (model/patch.py) */       \
        int64_t *zs = (int64_t *)bufs[21], *za = (int64_t *)bufs[22];                                               \
        /* the residual streams and the pending patches' sums from the packed states: [Lp, h, 0] = acc + i y */    \
        for (long b = 0; b < B; ++b)                                                                                \
            for (long h = 0; h < H; ++h) {                                                                          \
                const long o = b * packed + slot + h * N * 2;                                                       \
                y[b * H + h] = par[o + 1], y_gen[b * H + h] = yg[b * H + h] = gen[o + 1];                           \
                dsum[b * H + h] = par[o];                                                                           \
                gin0[b * H + h] = gen[o]; /* generation's, where a block of several patches steps it */             \
            }                                                                                                       \
        /* the decoder's states planar while the call runs (the note above) */                                     \
        ssm_states_layout_##SUFFIX(B, Ld, H, N, dec_in, sd, dec, sd, 1);                                            \
        memset(cxz + Cb * F, 0, M * sizeof(REAL));                                                                  \
        /* the uniforms of the span, as model/sampling.py's keyed_uniforms draws them */                            \
        const int64_t st[3] = {s_lat, s_abs, s_tok};                                                                \
        const long draws[3] = {Z, Z, 1};                                                                            \
        REAL *const us[3] = {u_lat, u_abs, u_tok};                                                                  \
        span_uniforms_##SUFFIX(B, span, seed, pos0, 3, st, draws, us);                                              \
        const long rounds = span <= m0 ? 0 : (span - m0 + Cb - 1) / Cb;                                             \
        const long total = rounds + (absorb != 0); /* with absorb, a last round reads the last block and draws none */ \
        long d = 0, f = -1; /* dec[d]: absorbed state before block i-1; dec[f]: E, after it and z (-1: none) */     \
        long dgen = -1, pending = 0, part = 0; /* open end: dec[dgen], generation's decoder state; the pending     \
                                                   patch's count after the call, the call's tokens among it */     \
        long start = 0, skipped = 0, stepped = 0; /* stepped: absorbed network steps */                             \
        int own = 0; /* pg and yg hold generation's states (its steps over the EMPTYs of the block last drawn) */     \
        if (rounds || absorb == 1 || (absorb == 2 && span >= P - pp)) /* the partial encoder's states planar too,  \
                                                                   stepped in place (the note above) */            \
            ssm_states_layout_##SUFFIX(B, Lp, H, N, par, packed, pe, sp, 1);                                        \
        ssm_net_head_##SUFFIX(B, H, N, Lp, Q * O, pack_par, eps_par, y_gen, g, head0); /* block 0's z read */    \
        { /* round 0: block 0, from the state generation continues from */                                        \
            const long m = m0 < span ? m0 : span;                                                                   \
            if (m > P - pp || (m == P - pp && absorb == 2 && !rounds)) { /* generation's partial encoder steps    \
                                                                         over a patch of block 0: planar */         \
                ssm_states_layout_##SUFFIX(B, Lp, H, N, gen, packed, pg, sp, 1);                                    \
                own = 1;                                                                                            \
            }                                                                                                       \
            block_inputs_##SUFFIX(B, m, 0, P - pp, pp ? gin0 : 0, absorb == 2 && !rounds, pos0, P, Cb, Q, O, ZK, M, \
                                  V, H, N, Lp, sp, head0, hg, A, Gt, observed, b_in, pack_par, eps_par, pg,   \
                                  yg, x, g, lp, pre, cxz);                                                          \
            for (long b = 0; b < B; ++b) { /* the prior from its tables where the row's state is zeros (a block   \
                                               start), else from the state the last call left: a row as alone */  \
                int fresh = 1;                                                                                      \
                for (long k = 0; k < R; ++k) fresh = fresh && r0[b * R + k] == 0;                                   \
                const REAL *lb = lp + b * Cb * O, *pb = F ? pre + b * Cb * M : 0, *ub = u_lat + b * span * Z;       \
                if (fresh)                                                                                          \
                    latent_prior_table_##SUFFIX(1, m, Z, K, R, M, Cb, lb, Cb * O, O, pb, Cb * M, M, ub, span * Z,   \
                                                temp + b, prior, eps_prior, ptab, r + b * R, zs + b * Cb * Z,       \
                                                Cb * Z, ps);                                                        \
                else {                                                                                              \
                    memcpy(r + b * R, r0 + b * R, R * sizeof(REAL));                                                \
                    latent_prior_##SUFFIX(1, m, Z, K, R, M, lb, Cb * O, O, pb, Cb * M, M, ub, span * Z, temp + b,   \
                                          prior, eps_prior, r + b * R, zs + b * Cb * Z, Cb * Z, ps);                \
                }                                                                                                   \
            }                                                                                                       \
            dec_inputs_##SUFFIX(B, m, Cb * Z, H, Z, K, zs, w_dec, b_dec, x);                                        \
            /* where the decoder state generation continues from is the absorbed one (at a block start, unless \
               a call of another block size left it), E, the state after z of block 0, may stand for D after z' \
               in round 1 */                                                                                    \
            f = memcmp(dec_gen, dec_in, one * sizeof(REAL)) == 0 ? 1 : -1;                                          \
            if (f < 0) /* else slot 0 is its planar copy already */                                                 \
                ssm_states_layout_##SUFFIX(B, Ld, H, N, dec_gen, sd, dg, sd, 1);                                    \
            ssm_net_laid_##SUFFIX(B, H, N, m, Ld, V, m, x, pack_dec, eps_dec, f < 0 ? dg : dec, sd, dec + one, g,  \
                                  ld, 1);                                                                           \
            for (long b = 0; b < B; ++b)                                                                            \
                for (long t = 0; t < m; ++t)                                                                        \
                    categorical_##SUFFIX(1, V, ld + (b * m + t) * V, u_tok + b * span + t, temp_tok[b],             \
                                         tokens + b * span + t);                                                    \
            if (seen)                                                                                               \
                for (long b = 0; b < B; ++b)                                                                        \
                    memcpy(seen + b * span * V, ld + b * m * V, m * V * sizeof(REAL));                              \
        }                                                                                                           \
        if (memcmp(y_gen, y, B * H * sizeof(REAL))) /* its z' read the absorbed patches' head */                   \
            ssm_net_head_##SUFFIX(B, H, N, Lp, Q * O, pack_par, eps_par, y, g, head0);                              \
        for (long i = 1; i <= total; ++i) {                                                                         \
            const long whole = i == 1 ? m0 : Cb; /* block i-1's length, where the span does not cut it */          \
            const long m = span - start < whole ? span - start : whole; /* shorter: absorb 2's part block */         \
            const long nx = span - start - m < Cb ? span - start - m : Cb;                                          \
            int same = f >= 0; /* whether every row's z' of block i-1 equals its z */                               \
            const int open_round = absorb == 2 && i == total; /* it reads the part block the call stops inside */  \
            for (long j0 = 0; j0 < m;) { /* block i-1 a patch at a time (one where blocks are patches, Cb = P) */  \
                const long a0 = (pp + start + j0) % P; /* the patch's first position read here */                   \
                const long len = m - j0 < P - a0 ? m - j0 : P - a0;                                                 \
                /* 1. z' of the patch's positions from head0 + A[c, x] */                                           \
                for (long b = 0; b < B; ++b)                                                                        \
                    for (long t = j0; t < j0 + len; ++t) {                                                          \
                        const int64_t tok = tokens[b * span + start + t];                                           \
                        REAL *l = lp + (b * Cb + t) * O;                                                            \
                        const long c = (pos0[b] + start + t) % Q;                                                   \
                        const REAL *h = head0 + (b * Q + c) * O, *a = A + (c * V1 + tok) * O;                       \
                        for (long o = 0; o < ZK; ++o) l[o] = h[o] + a[o];                                           \
                        int64_t *zt = za + (b * Cb + t) * Z;                                                        \
                        categorical_##SUFFIX(Z, K, l, u_abs + (b * span + start + t) * Z, 1.0, zt);                 \
                        for (long j = 0; j < Z && same; ++j) same = zt[j] == zs[(b * Cb + t) * Z + j];              \
                    }                                                                                               \
                /* 2. the patch's sum so far, dsum (D[c, x] over its tokens one at a time in order from 0, the  \
                   pending ones' sum acc where they came in: model/patch.py, PatchNet.table), gains the segment's \
                   tokens; where the segment ends its patch one step of the network over b_in + dsum (the states \
                   after it, the next patch's head) and dsum starts anew; else its tokens are pending (a block   \
                   inside a patch; the last part of a block the call stops inside) */                               \
                const int ends = a0 + len == P; /* the segment ends its patch */                                     \
                if (!ends) /* generation's pending sum: the patch's tokens before this last part (its EMPTYs add 0) */ \
                    memcpy(gin0, dsum, B * H * sizeof(REAL));                                                       \
                for (long b = 0; b < B; ++b)                                                                        \
                    for (long t = j0; t < j0 + len; ++t) {                                                          \
                        const long c = (pos0[b] + start + t) % Q;                                                   \
                        const REAL *w = w_in + (c * V1 + tokens[b * span + start + t]) * H;                         \
                        for (long k = 0; k < H; ++k) dsum[b * H + k] += w[k];                                       \
                    }                                                                                               \
                if (!ends) {                                                                                        \
                    pending = a0 + len, part = len;                                                                 \
                } else {                                                                                            \
                    ++stepped, pending = 0;                                                                         \
                    for (long b = 0; b < B; ++b)                                                                    \
                        for (long k = 0; k < H; ++k) x[b * H + k] = b_in[k] + dsum[b * H + k];                     \
                    ssm_net_laid_##SUFFIX(B, H, N, 1, Lp, Q * O, 1, x, pack_par, eps_par, pe, sp, pe, g, head0, 1);  \
                    memcpy(y, x, B * H * sizeof(REAL)); /* the residual stream after the step */                    \
                    memset(dsum, 0, B * H * sizeof(REAL));                                                          \
                }                                                                                                   \
                j0 += len;                                                                                          \
            }                                                                                                       \
            /* 3. z of block i through the latent prior, from head + A[c, EMPTY] (none after absorb's round); a  \
               block of several patches reads its later patches' heads from generation's steps over EMPTYs */    \
            if (nx) {                                                                                               \
                const int close = absorb == 2 && i == rounds; /* block i is the one the call stops inside */       \
                const long first = P - (pp + start + m) % P; /* block i's positions in the patch it starts in */   \
                if (nx > first || close) { /* generation's steps (and states) from the absorbed ones */             \
                    memcpy(pg, pe, B * sp * sizeof(REAL));                                                          \
                    memcpy(yg, y, B * H * sizeof(REAL));                                                            \
                    own = 1;                                                                                        \
                }                                                                                                   \
                block_inputs_##SUFFIX(B, nx, start + m, first, dsum, close, pos0, P, Cb, Q, O, ZK, M, V, H, N, Lp, sp, \
                                      head0, hg, A, Gt, 0, b_in, pack_par, eps_par, pg, yg, x, g, lp, pre,    \
                                      cxz);                                                                         \
                latent_prior_table_##SUFFIX(B, nx, Z, K, R, M, Cb, lp, Cb * O, O, F ? pre : 0, Cb * M, M,           \
                                            u_lat + (start + m) * Z, span * Z, temp, prior, eps_prior, ptab, r, zs, \
                                            Cb * Z, ps);                                                            \
            }                                                                                                       \
            /* 4. the decoder: D after z' (E of the last round when every z' is its z), then z from there */        \
            if (open_round) /* E stays generation's decoder state (block 0's in slot 1): D after z' to slot 2 */  \
                dgen = i == 1 ? 1 : f;                                                                              \
            if (!same) {                                                                                            \
                const long to = open_round ? 2 : f >= 0 ? f : 1 - d;                                                \
                dec_inputs_##SUFFIX(B, m, Cb * Z, H, Z, K, za, w_dec, b_dec, x);                                    \
                ssm_net_laid_##SUFFIX(B, H, N, m, Ld, V, m, x, pack_dec, eps_dec, dec + d * one, sd,                \
                                      dec + to * one, g, ld, 1);                                                    \
                f = to;                                                                                             \
            } else                                                                                                  \
                ++skipped;                                                                                          \
            const long dnew = f, fnew = d; /* the old D is read no more: E goes there */                            \
            if (nx) {                                                                                               \
                dec_inputs_##SUFFIX(B, nx, Cb * Z, H, Z, K, zs, w_dec, b_dec, x);                                   \
                ssm_net_laid_##SUFFIX(B, H, N, nx, Ld, V, nx, x, pack_dec, eps_dec, dec + dnew * one, sd,           \
                                      dec + fnew * one, g, ld, 1);                                                  \
            }                                                                                                       \
            d = dnew;                                                                                               \
            f = fnew;                                                                                               \
            /* 5. block i's tokens */                                                                               \
            for (long b = 0; b < B; ++b)                                                                            \
                for (long t = 0; t < nx; ++t)                                                                       \
                    categorical_##SUFFIX(1, V, ld + (b * nx + t) * V, u_tok + b * span + start + m + t,             \
                                         temp_tok[b], tokens + b * span + start + m + t);                           \
            if (seen && nx)                                                                                         \
                for (long b = 0; b < B; ++b)                                                                        \
                    memcpy(seen + (b * span + start + m) * V, ld + b * nx * V, nx * V * sizeof(REAL));              \
            start += m;                                                                                             \
        }                                                                                                           \
        const int open = absorb == 2;                                                                               \
        if (par_out && open && !rounds && !stepped) { /* block 0 left open inside its patch: the states as they   \
                                                         came in, the part added */                                \
            memcpy(par_out, par, B * packed * sizeof(REAL));                                                        \
            if (gen_out)                                                                                            \
                memcpy(gen_out, gen, B * packed * sizeof(REAL));                                                    \
            for (long b = 0; b < B; ++b) {                                                                          \
                REAL *o = par_out + b * packed;                                                                     \
                for (long h = 0; h < H; ++h) o[slot + h * N * 2] = dsum[b * H + h]; /* acc and the part's sum */    \
                o[slot + 2] = (REAL)pending; /* [Lp, 0, 1]: the pending patch's token count */                      \
                if (gen_out && observed[b]) /* the part read as EMPTYs (they add 0) where the row had observed */  \
                    gen_out[b * packed + slot + 2] += (REAL)part;                                                   \
            }                                                                                                       \
        } else if (par_out) { /* packed: the SSM states, then acc + i y (acc 0 at a boundary) and the count */        \
            for (int which = 0; which < (open && gen_out ? 2 : 1); ++which) { /* par_out, then gen_out */          \
                REAL *out = which ? gen_out : par_out;                                                              \
                const int mine = which && own; /* generation's own steps over the block's EMPTYs */                 \
                ssm_states_layout_##SUFFIX(B, Lp, H, N, mine ? pg : pe, sp, out, packed, 0);                        \
                for (long b = 0; b < B; ++b) {                                                                      \
                    REAL *o = out + b * packed;                                                                     \
                    memset(o + slot, 0, NH * 2 * sizeof(REAL));                                                     \
                    for (long h = 0; h < H; ++h) {                                                                  \
                        o[slot + h * N * 2] = !pending ? 0 : which ? gin0[b * H + h] : dsum[b * H + h];             \
                        o[slot + h * N * 2 + 1] = mine ? yg[b * H + h] : y[b * H + h];                              \
                    }                                                                                               \
                    o[slot + 2] = (REAL)pending; /* [Lp, 0, 1]: the pending patch's token count */                 \
                    if (cycle > 1) /* that patch's index modulo the cycle: [Lp, 1, 1], its real part */             \
                        o[slot + (N + 1) * 2] = (REAL)(((pos0[b] + start) / P) % cycle);                           \
                    if (mine && !rounds && !observed[b]) /* block 0: generation moves where a token was observed */ \
                        memcpy(o, gen + b * packed, packed * sizeof(REAL));                                         \
                }                                                                                                   \
            }                                                                                                       \
        }                                                                                                           \
        if (dec_out)                                                                                                \
            ssm_states_layout_##SUFFIX(B, Ld, H, N, dec + d * one, sd, dec_out, sd, 0);                             \
        if (open && dgen_out)                                                                                       \
            ssm_states_layout_##SUFFIX(B, Ld, H, N, dec + dgen * one, sd, dgen_out, sd, 0);                         \
        if (open && r_out)                                                                                          \
            memcpy(r_out, r, B * R * sizeof(REAL));                                                                 \
        free(block);                                                                                                \
        return skipped;                                                                                             \
    }

PATCH_ROUNDS(float, f32)
PATCH_ROUNDS(double, f64)

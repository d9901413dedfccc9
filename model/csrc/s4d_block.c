/* An S4D block's LayerNorm, recurrence and GELU in one call, for short passes at small batch
(model/native.py).

Glossary of axis letters:
    B  batch      H  channels      N  complex modes per channel      T  steps

Per channel c and mode n, from the state g_0 before the first input (model/ssm.py: the state is h / B_bar,
read out through W = C B_bar):
    g_t = Lambda g_(t-1) + u_t,      y_t = Re(sum_n W_n g_t[n]) + D u_t
in real arithmetic: a complex multiply, the input's add and two multiply-adds of the readout a mode and step.
A short pass at batch 1 as one matrix per channel (S4D.short) reads a
(T + 2N) x T matrix per channel from memory for one multiply-add per element read; this loop reads
the input and the state once, and the weights once per row.  The vector lanes run over channels,
not modes: the sum over modes is then a plain add per lane, with no horizontal reduction at every
step.  From
MODES_MIN_T steps four modes run through every step with their states and weights in registers
(GCC/Clang vector types as wide as the machine's registers: 2.0x at 56 steps with AVX-512, 1.2x
built for AVX2, 1.5x for SSE2, on one Xeon); below it, steps run outer and a block of LANES
channels' states stays in cache.  Around it, optionally, the block's LayerNorm before
(u = LN(x)) and its exact GELU after (model/network.py, SSMBlock): at a few steps each of those
is one more PyTorch call whose fixed cost is many times its arithmetic.

Layouts: x is (B, T, H) with strides x_sb, x_st (channels contiguous); out is (B, T, H) contiguous
and receives y, or GELU(y) when gelu is set; w is (4, N, H), the planes Re Lambda, Im Lambda,
Re W, Im W; d is (H,); ln_w, ln_b (H,) both or neither (no LayerNorm); states are
(B, H, N) complex, interleaved (real, imaginary) pairs as torch.view_as_real lays them out, h0 with
batch stride h0_sb (NULL: zeros), h_out with batch stride ho_sb (NULL: not wanted), after `at` steps
(0 <= at <= T).  A loop that keeps its own states between passes may hold them planar instead, (B, 2, N, H)
reals, the real parts then the imaginary ones, lanes over channels as the recurrence reads them
(BLOCK_LAID and NET_LAID with planar set; STATES_LAYOUT converts): a pass of MODES_MIN_T steps or more
then reads and writes them as whole vectors where the channels fill whole vectors (and, for the reads,
the modes groups of four), where interleaved pairs are gathered and scattered a lane at a time.  Nothing here
checks a shape: the caller does (model/native.py).

A whole network pass (NET, model/network.py, SSMNet) runs every block in one call: per layer the
block above (LayerNorm, recurrence, GELU), then the H -> 2H output linear, GLU and the residual
add (LINEAR's tiles of rows, so that a weight read serves several rows); then the final
LayerNorm and the head.  At a few steps a block is otherwise five PyTorch calls
around the kernel, and a network pass of L blocks a few dozen: the calls, not their arithmetic,
were most of a short block round and of an autoregressive step (docs/experiments/rounds-and-serving.md).
Its weights come packed in one buffer (model/native.py, pack): per layer LayerNorm weight and bias
(H each), the four planes (4, N, H), D (H), the output linear transposed (H, 2H) and its bias (2H);
then the final LayerNorm's weight and bias (H each), the head transposed (H, O) and its bias (O). */

#include <math.h>
#include <string.h>

#include "kernels.h"

#include "vecmath.h" /* libmvec's vector exp and erf */

#ifndef REAL /* the file includes itself once per precision */
#define LANES 32
#define MODES_MIN_T SSM_MODES_MIN_T /* kernels.h: from this many steps the modes run outer (below: steps outer) */
#define MODES_MAX_T 1024 /* and up to this many, whose buffers stay on the stack (3 x 64 KB) */
/* vectors as wide as the machine's registers (-march=native): generic vectors wider than them are
   lowered to slow code (64-byte vectors built for AVX2 ran 2-7x slower than the steps-outer loop) */
#if defined(__AVX512F__)
#define VEC_BYTES 64
#define ROW_NV 16 /* a row's outputs in one sweep: up to 16 vectors of sums, of the 32 registers */
#define TILE_R 6  /* LINEAR's tiles: 6 rows by 4 vectors of sums, 24 of the 32 registers */
#define TILE_V 4
#elif defined(__AVX__)
#define VEC_BYTES 32
#define ROW_NV 8 /* of 16 registers */
#define TILE_R 6 /* 6 rows by 2 vectors: 12 of 16, with 2 weight vectors and a row's value beside them */
#define TILE_V 2
#else
#define VEC_BYTES 16
#define ROW_NV 8
#define TILE_R 4
#define TILE_V 2
#endif
/* where channel h, mode n of a layer's state is, in reals from the layer's start: its real part here, its
   imaginary part STATE_IM(planar, NH) further on (planar (2, N, H), or interleaved (H, N) pairs) */
static inline long state_at(int planar, long H, long N, long h, long n) { return planar ? n * H + h : (h * N + n) * 2; }
/* reals of a layer's weights in a network's pack (NET_LAID's layout; model/native.py, _net_pack_size) */
static inline long pack_layer(long H, long N) { return 2 * H + 4 * N * H + H + 2 * H * H + 2 * H; }
#define STATE_IM(planar, NH) ((planar) ? (NH) : 1)
#define NET_ROWS (2 * TILE_R) /* rows a network layer's GLU linear takes at a time (NET_LAID) */
#define REAL float
#define VL (VEC_BYTES / 4)
#define VEC vf32
#define VECU vf32u
typedef float vf32 __attribute__((vector_size(VEC_BYTES)));
typedef float vf32u __attribute__((vector_size(VEC_BYTES), aligned(4), may_alias));
#define ERF erff
#define EXP expf
#define NAME s4d_block_f32
#define MODES_OUTER modes_outer_f32
#define STEPS_OUTER steps_outer_f32
#define NET ssm_net_f32
#define NET_LAID ssm_net_laid_f32
#define BLOCK_LAID s4d_block_laid_f32
#define STATES_LAYOUT ssm_states_layout_f32
#define NET_HEAD ssm_net_head_f32
#define LAYERNORM layernorm_f32
#define GELU_ROWS gelu_rows_f32
#define PADDED_GROUP padded_group_f32
#define LINEAR linear_f32
#define LINEAR_ROWS linear_rows_f32
#define LAYERNORM_ROWS layernorm_rows_f32
#define GELU_ROWS_OUT exact_gelu_rows_f32
#define ROW_CHUNK row_chunk_f32
#define ROW_REST row_rest_f32
#define TILE tile_f32
#define TILES tiles_f32
#define DOT_NARROW dot_narrow_f32
#include __FILE__
#undef REAL
#undef ERF
#undef EXP
#undef NAME
#undef MODES_OUTER
#undef STEPS_OUTER
#undef NET
#undef NET_LAID
#undef BLOCK_LAID
#undef STATES_LAYOUT
#undef NET_HEAD
#undef LAYERNORM
#undef GELU_ROWS
#undef PADDED_GROUP
#undef LINEAR
#undef LINEAR_ROWS
#undef LAYERNORM_ROWS
#undef GELU_ROWS_OUT
#undef ROW_CHUNK
#undef ROW_REST
#undef TILE
#undef TILES
#undef DOT_NARROW
#undef VL
#undef VEC
#undef VECU
#define VL (VEC_BYTES / 8)
#define VEC vf64
#define VECU vf64u
typedef double vf64 __attribute__((vector_size(VEC_BYTES)));
typedef double vf64u __attribute__((vector_size(VEC_BYTES), aligned(8), may_alias));
#define REAL double
#define ERF erf
#define EXP exp
#define NAME s4d_block_f64
#define MODES_OUTER modes_outer_f64
#define STEPS_OUTER steps_outer_f64
#define NET ssm_net_f64
#define NET_LAID ssm_net_laid_f64
#define BLOCK_LAID s4d_block_laid_f64
#define STATES_LAYOUT ssm_states_layout_f64
#define NET_HEAD ssm_net_head_f64
#define LAYERNORM layernorm_f64
#define GELU_ROWS gelu_rows_f64
#define PADDED_GROUP padded_group_f64
#define LINEAR linear_f64
#define LINEAR_ROWS linear_rows_f64
#define LAYERNORM_ROWS layernorm_rows_f64
#define GELU_ROWS_OUT exact_gelu_rows_f64
#define ROW_CHUNK row_chunk_f64
#define ROW_REST row_rest_f64
#define TILE tile_f64
#define TILES tiles_f64
#define DOT_NARROW dot_narrow_f64
#include __FILE__

/* the width of the vectors this build uses, in bytes (model/native.py: the short-pass threshold) */
long s4d_vector_bytes(void) { return VEC_BYTES; }
#else

static void LAYERNORM(long H, const REAL *xr, const REAL *w, const REAL *bias, double eps, REAL *o) {
    REAL mean = 0, var = 0; /* sums in vector lanes, then across them */
#pragma omp simd reduction(+ : mean)
    for (long h = 0; h < H; ++h) mean += xr[h];
    mean /= H;
#pragma omp simd reduction(+ : var)
    for (long h = 0; h < H; ++h) var += (xr[h] - mean) * (xr[h] - mean);
    const REAL inv = 1 / sqrt(var / H + eps);
    for (long h = 0; h < H; ++h) o[h] = (xr[h] - mean) * inv * w[h] + bias[h];
}

/* the exact GELU, x Phi(x), of rows (rows, H) in place, vectorised through libmvec's erf.  Where H is not a
   multiple of the vector, a row at a time: over a call's rows at once, the elements left to the loop's scalar
   tail (libm's erf, whose last bit may differ from libmvec's) were the call's last ones, so a token's row came
   out otherwise in a call cut elsewhere and chunks of a session changed its state; a row at a time, which
   elements the tail takes follows from H alone, as in NET_LAID's GLU (docs/experiments/rounds-and-serving.md,
   fortieth session) */
static void GELU_ROWS(long rows, long H, REAL *x) {
    const long whole = H % VL == 0; /* no row has a tail: one loop over them all (the vectors no wider than VL) */
    for (long r = 0; r < (whole ? 1 : rows); ++r) {
        REAL *xr = x + r * H;
        const long n = whole ? rows * H : H;
#pragma omp simd
        for (long h = 0; h < n; ++h) xr[h] = (REAL)0.5 * xr[h] * (1 + ERF(xr[h] * (REAL)0.70710678118654752440));
    }
}

/* NAME's recurrence from MODES_MIN_T to MODES_MAX_T steps.  Each branch of NAME is a function of its own:
   in one body, a change to this branch alone left the other, which an autoregressive step takes, at
   0.90-0.92 of its speed (docs/experiments/rounds-and-serving.md, twenty-fifth session) */
static __attribute__((noinline)) void MODES_OUTER(long Bsz, long H, long N, long T, long at, const REAL *u, long u_sb,
                                                  long u_st, const REAL *h0, long h0_sb, const REAL *w, const REAL *d,
                                                  REAL *out, REAL *h_out, long ho_sb, int planar) {
    const long NH = N * H;
    const REAL *lr = w, *li = w + NH, *wr = w + 2 * NH, *wi = w + 3 * NH;
    /* Modes outer, steps inner: four modes keep their states and weights in registers for the
       whole pass, four independent chains of multiply-adds a step, so a step is arithmetic only
       (steps outer, every mode's state was loaded and stored at every step: 1.5-2.2x slower
       from 16 steps on, docs/experiments/rounds-and-serving.md); the sums over modes accumulate
       in yb, a vector per step, the even groups of four modes in yb[0] and the odd ones in yb[1] (STEPS_OUTER
       sums in this order too, with two chains where one made the autoregressive step 3% slower), and the
       input's lanes are read once into ub */
    VEC ub[T], yb[2][T];
    REAL tr[2][N][VL]; /* a block of VL channels' state, lanes over channels (below) */
    for (long b = 0; b < Bsz; ++b) {
        for (long h0c = 0; h0c < H; h0c += VL) {
            const long J = H - h0c < VL ? H - h0c : VL;
            for (long t = 0; t < T; ++t) {
                const REAL *ut = u + b * u_sb + t * u_st + h0c;
                if (J == VL) {
                    ub[t] = *(const VECU *)ut;
                } else {
                    REAL tmp[VL];
                    for (long j = 0; j < VL; ++j) tmp[j] = j < J ? ut[j] : 0;
                    memcpy(&ub[t], tmp, sizeof(VEC));
                }
                yb[0][t] = yb[1][t] = (VEC){0};
            }
            /* a planar state of whole vectors in groups of four modes is read straight from h0 below (lanes
               over channels already); any other is turned to lanes over channels here first, before any of
               it is read as a vector, modes outer so that the first modes read were the first written
               (gathered a vector at a time, each vector's reload of its lanes' scalar stores waited on
               store forwarding) */
            const int direct = planar && J == VL && N % 4 == 0;
            const REAL *hb = h0 ? h0 + b * h0_sb : 0;
            const long im = STATE_IM(planar, NH);
            if (!direct)
                for (long n = 0; n < N; ++n)
                    for (long j = 0; j < VL; ++j) {
                        const REAL *s0 = hb && j < J ? hb + state_at(planar, H, N, h0c + j, n) : 0;
                        tr[0][n][j] = s0 ? s0[0] : 0, tr[1][n][j] = s0 ? s0[im] : 0;
                    }
            for (long n = 0; n < N; n += 4) {
                const long G = N - n < 4 ? N - n : 4;
                VEC wv[4][4], sv[4][2];
                if (J == VL && G == 4) /* whole vectors: loaded straight into registers (no copy through the stack,
                                          whose halves a vector read back would wait on) */
                    for (long g = 0; g < 4; ++g) {
                        const long o = (n + g) * H + h0c;
                        wv[g][0] = *(const VECU *)(lr + o), wv[g][1] = *(const VECU *)(li + o);
                        wv[g][2] = *(const VECU *)(wr + o), wv[g][3] = *(const VECU *)(wi + o);
                        if (!direct)
                            sv[g][0] = *(const VECU *)tr[0][n + g], sv[g][1] = *(const VECU *)tr[1][n + g];
                        else if (hb)
                            sv[g][0] = *(const VECU *)(hb + o), sv[g][1] = *(const VECU *)(hb + NH + o);
                        else
                            sv[g][0] = sv[g][1] = (VEC){0};
                    }
                else /* a group of fewer modes or a block of fewer channels: padded with zeros */
                    for (long g = 0; g < 4; ++g) {
                        const long m = n + (g < G ? g : 0), o = m * H + h0c;
                        const REAL *src[4] = {lr + o, li + o, wr + o, wi + o};
                        REAL pad[VL];
                        for (long k = 0; k < 4; ++k) {
                            if (J == VL && g < G) {
                                memcpy(&wv[g][k], src[k], sizeof(VEC));
                                continue;
                            }
                            for (long j = 0; j < VL; ++j) pad[j] = j < J && g < G ? src[k][j] : 0;
                            memcpy(&wv[g][k], pad, sizeof(VEC));
                        }
                        for (long k = 0; k < 2; ++k) {
                            if (g < G)
                                memcpy(&sv[g][k], tr[k][m], sizeof(VEC));
                            else
                                sv[g][k] = (VEC){0};
                        }
                    }
/* four modes' weights and states as plain variables, not arrays: they stay in registers across steps */
#define W(g) const VEC lr##g = wv[g][0], li##g = wv[g][1], wr##g = wv[g][2], wi##g = wv[g][3]; VEC sr##g = sv[g][0], si##g = sv[g][1];
                W(0) W(1) W(2) W(3)
#undef W
                const long stop = h_out ? at : T;
                for (int half = 0; half < 2; ++half) {
                    for (long t = half ? stop : 0; t < (half ? T : stop); ++t) {
                        const VEC x_t = ub[t];
/* the input first: off the state's chain of dependent multiply-adds; the sum over modes in two chains of
   multiply-adds, not a tree of products and adds (a step is bound by its arithmetic) */
#define S(g) const VEC r##g = x_t - li##g * si##g + lr##g * sr##g, i##g = li##g * sr##g + lr##g * si##g; sr##g = r##g, si##g = i##g;
                        S(0) S(1) S(2) S(3)
#undef S
                        VEC y0 = yb[n >> 2 & 1][t] + wr0 * r0, y1 = wr2 * r2;
                        y0 -= wi0 * i0, y1 -= wi2 * i2;
                        y0 += wr1 * r1, y1 += wr3 * r3;
                        y0 -= wi1 * i1, y1 -= wi3 * i3;
                        yb[n >> 2 & 1][t] = y0 + y1;
                    }
                    if (half == 0 && h_out) { /* the state after `at` steps */
                        const VEC s[4][2] = {{sr0, si0}, {sr1, si1}, {sr2, si2}, {sr3, si3}};
                        REAL *hob = h_out + b * ho_sb;
                        for (long g = 0; g < G && planar && J == VL; ++g) /* planar: (2, N, H), whole vectors */
                            for (long k = 0; k < 2; ++k) *(VECU *)(hob + k * NH + (n + g) * H + h0c) = s[g][k];
                        for (long g = 0; g < G && !(planar && J == VL); ++g) {
                            REAL re[VL], imag[VL];
                            memcpy(re, &s[g][0], sizeof(VEC)), memcpy(imag, &s[g][1], sizeof(VEC));
                            for (long j = 0; j < J; ++j) {
                                REAL *so = hob + state_at(planar, H, N, h0c + j, n + g);
                                so[0] = re[j], so[im] = imag[j];
                            }
                        }
                    }
                }
            }
            if (J == VL) { /* y + D u as whole vectors */
                const VEC dv = *(const VECU *)(d + h0c);
                for (long t = 0; t < T; ++t)
                    *(VECU *)(out + (b * T + t) * H + h0c) = (yb[0][t] + yb[1][t]) + dv * ub[t];
            } else {
                for (long t = 0; t < T; ++t) {
                    REAL y[VL], xin[VL];
                    const VEC sum = yb[0][t] + yb[1][t];
                    memcpy(y, &sum, sizeof(VEC)), memcpy(xin, &ub[t], sizeof(VEC));
                    REAL *yt = out + (b * T + t) * H + h0c; /* may be u itself: every lane was copied into ub */
                    for (long j = 0; j < J; ++j) yt[j] = y[j] + d[h0c + j] * xin[j];
                }
            }
        }
    }
}

/* the sum over a group of four modes' outputs, lane j, into acc's even or odd row: MODES_OUTER's order */
#define GROUP_SUM(j)                                                                                            \
    REAL y0 = acc[n >> 2 & 1][j] + wr0 * r0, y1 = wr2 * r2;                                                     \
    y0 -= wi0 * i0, y1 -= wi2 * i2;                                                                             \
    y0 += wr1 * r1, y1 += wr3 * r3;                                                                             \
    y0 -= wi1 * i1, y1 -= wi3 * i3;                                                                             \
    acc[n >> 2 & 1][j] = y0 + y1;
/* STEPS_OUTER's step of modes n..n+G-1 (G <= 4) of J lanes (J <= LANES), the states sr, si of mode n on, where a
   group has fewer channels or modes than a whole one: zero-padded copies through the whole group's loop, so that a
   short pass (1-3 steps; the autoregressive loop's sum in their own order) gives MODES_OUTER's bits (its padded
   vectors) and chunks of a session never change them (a loop over the J lanes alone came out otherwise:
   docs/experiments/rounds-and-serving.md, fortieth session).  A function of its own: in STEPS_OUTER's body its
   buffers took the autoregressive step, which never comes here, to 0.8-0.85 of its speed */
static __attribute__((noinline)) void PADDED_GROUP(long n, long G, long J, long N, long H, long o, const REAL *xv,
                                                   const REAL *w, REAL (*sr)[LANES], REAL (*si)[LANES],
                                                   REAL (*acc)[LANES]) {
    const long NH = N * H;
    const REAL *planes[4] = {w, w + NH, w + 2 * NH, w + 3 * NH}; /* Lambda's real, imaginary parts; W's */
    REAL pw[4][4][LANES], pr[4][LANES], pi[4][LANES];
    for (long g = 0; g < 4; ++g)
        for (long j = 0; j < LANES; ++j) {
            const int in = g < G && j < J;
            for (long k = 0; k < 4; ++k) pw[g][k][j] = in ? planes[k][o + g * H + j] : 0;
            pr[g][j] = in ? sr[g][j] : 0, pi[g][j] = in ? si[g][j] : 0;
        }
/* mode g of the padded copies, lane j, as MODE's step */
#define PADDED_MODE(g)                                                                                          \
    const REAL r##g = xv[j] - pw[g][1][j] * pi[g][j] + pw[g][0][j] * pr[g][j];                                  \
    const REAL i##g = pw[g][1][j] * pr[g][j] + pw[g][0][j] * pi[g][j];                                          \
    const REAL wr##g = pw[g][2][j], wi##g = pw[g][3][j];                                                        \
    pr[g][j] = r##g, pi[g][j] = i##g;
#pragma omp simd
    for (long j = 0; j < LANES; ++j) {
        PADDED_MODE(0) PADDED_MODE(1) PADDED_MODE(2) PADDED_MODE(3) GROUP_SUM(j)
    }
#undef PADDED_MODE
    for (long g = 0; g < G; ++g)
        for (long j = 0; j < J; ++j) sr[g][j] = pr[g][j], si[g][j] = pi[g][j];
}

/* NAME's recurrence for a few steps (an autoregressive step's one): steps outer, every mode's state in a
   cache-resident block of LANES channels */
static __attribute__((noinline)) void STEPS_OUTER(long Bsz, long H, long N, long T, long at, const REAL *u, long u_sb,
                                                  long u_st, const REAL *h0, long h0_sb, const REAL *w, const REAL *d,
                                                  REAL *out, REAL *h_out, long ho_sb, int planar, int any_order) {
    const long NH = N * H;
    const REAL *lr = w, *li = w + NH, *wr = w + 2 * NH, *wi = w + 3 * NH;
    REAL sr[N][LANES], si[N][LANES], xv[LANES], acc[4][LANES]; /* the sums over modes: two, or four in any order */
/* modes n..n+3 of lane j, in MODES_OUTER's operations and order, the even groups into acc[0] and the odd ones into
   acc[1]: a pass of any length gives the same bits, so chunks of a session never change them (a part group:
   PADDED_GROUP) */
#define MODE(g)                                                                                                 \
    const long q##g = o + g * H;                                                                               \
    const REAL r##g = xv[j] - li[q##g + j] * si[n + g][j] + lr[q##g + j] * sr[n + g][j];                       \
    const REAL i##g = li[q##g + j] * sr[n + g][j] + lr[q##g + j] * si[n + g][j];                               \
    const REAL wr##g = wr[q##g + j], wi##g = wi[q##g + j];                                                     \
    sr[n + g][j] = r##g, si[n + g][j] = i##g;
#define GROUP_STEP(j) MODE(0) MODE(1) MODE(2) MODE(3) GROUP_SUM(j)
    for (long b = 0; b < Bsz; ++b) {
        for (long h0c = 0; h0c < H; h0c += LANES) {
            const long J = H - h0c < LANES ? H - h0c : LANES;
            if (planar) /* (2, N, H): a mode's channels are contiguous */
                for (long n = 0; n < N; ++n)
                    for (long j = 0; j < LANES; ++j) {
                        const REAL *s0 = h0 && j < J ? h0 + b * h0_sb + state_at(1, H, N, h0c + j, n) : 0;
                        sr[n][j] = s0 ? s0[0] : 0, si[n][j] = s0 ? s0[STATE_IM(1, NH)] : 0;
                    }
            else
                for (long j = 0; j < LANES; ++j) { /* each channel's N modes are contiguous in the state */
                    const REAL *s0 = h0 && j < J ? h0 + b * h0_sb + (h0c + j) * N * 2 : 0;
                    for (long n = 0; n < N; ++n) sr[n][j] = s0 ? s0[2 * n] : 0, si[n][j] = s0 ? s0[2 * n + 1] : 0;
                }
            for (long t = 0; t <= T; ++t) {
                if (h_out && t == at && planar) /* the state after `at` steps */
                    for (long n = 0; n < N; ++n)
                        for (long j = 0; j < J; ++j) {
                            REAL *so = h_out + b * ho_sb + state_at(1, H, N, h0c + j, n);
                            so[0] = sr[n][j], so[STATE_IM(1, NH)] = si[n][j];
                        }
                else if (h_out && t == at) {
                    for (long j = 0; j < J; ++j) {
                        REAL *so = h_out + b * ho_sb + (h0c + j) * N * 2;
                        for (long n = 0; n < N; ++n) so[2 * n] = sr[n][j], so[2 * n + 1] = si[n][j];
                    }
                }
                if (t == T) break;
                const REAL *ut = u + b * u_sb + t * u_st + h0c;
                for (long j = 0; j < LANES; ++j) {
                    xv[j] = j < J ? ut[j] : 0;
                    acc[0][j] = acc[1][j] = acc[2][j] = acc[3][j] = 0;
                }
#define MODE_STEP(j)                                                                                            \
    const REAL r = xv[j] - li[o + j] * si[n][j] + lr[o + j] * sr[n][j];                                         \
    const REAL i = li[o + j] * sr[n][j] + lr[o + j] * si[n][j];                                                 \
    sr[n][j] = r, si[n][j] = i;                                                                                 \
    acc[n & 3][j] += wr[o + j] * r;                                                                             \
    acc[n & 3][j] -= wi[o + j] * i;
                for (long n = 0; n < N && any_order; ++n) { /* a mode at a time, four sums by turns */
                    const long o = n * H + h0c;
                    if (J == LANES) {
#pragma omp simd
                        for (long j = 0; j < LANES; ++j) {
                            MODE_STEP(j)
                        }
                    } else {
                        for (long j = 0; j < J; ++j) {
                            MODE_STEP(j)
                        }
                    }
                }
                for (long n = 0; n < N && !any_order; n += 4) {
                    const long G = N - n < 4 ? N - n : 4;
                    const long o = n * H + h0c;
                    if (J == LANES && G == 4) {
#pragma omp simd
                        for (long j = 0; j < LANES; ++j) {
                            GROUP_STEP(j)
                        }
                    } else {
                        PADDED_GROUP(n, G, J, N, H, o, xv, w, sr + n, si + n, acc);
                    }
                }
                REAL *yt = out + (b * T + t) * H + h0c; /* may be ut itself: every lane was read into xv */
                if (any_order)
                    for (long j = 0; j < J; ++j)
                        yt[j] = (acc[0][j] + acc[1][j]) + (acc[2][j] + acc[3][j]) + d[h0c + j] * xv[j];
                else
                    for (long j = 0; j < J; ++j) yt[j] = (acc[0][j] + acc[1][j]) + d[h0c + j] * xv[j];
            }
        }
    }
}

#undef MODE
#undef GROUP_STEP
#undef GROUP_SUM
#undef MODE_STEP

/* NAME with the states' layout chosen: planar (2, N, H) reals a layer, the real parts then the imaginary ones,
   lanes over channels as the kernels read them (a loop's own states between its passes: ssm_net_laid,
   ssm_states_layout), else interleaved (H, N) complex pairs */
static void BLOCK_LAID(long Bsz, long H, long N, long T, long at, const REAL *x, long x_sb, long x_st,
                       const REAL *ln_w, const REAL *ln_b, double eps, const REAL *h0, long h0_sb, const REAL *w,
                       const REAL *d, int gelu, REAL *out, REAL *h_out, long ho_sb, int planar) {
    const REAL *u = x;
    long u_sb = x_sb, u_st = x_st;
    const int any_order = planar & SSM_ANY_ORDER;
    planar &= 1;
    if (ln_w) { /* LayerNorm of every row into out; the recurrence then reads and overwrites it in place */
        for (long b = 0; b < Bsz; ++b)
            for (long t = 0; t < T; ++t) LAYERNORM(H, x + b * x_sb + t * x_st, ln_w, ln_b, eps, out + (b * T + t) * H);
        u = out, u_sb = T * H, u_st = H;
    }
    if (T >= MODES_MIN_T && T <= MODES_MAX_T)
        MODES_OUTER(Bsz, H, N, T, at, u, u_sb, u_st, h0, h0_sb, w, d, out, h_out, ho_sb, planar);
    else
        STEPS_OUTER(Bsz, H, N, T, at, u, u_sb, u_st, h0, h0_sb, w, d, out, h_out, ho_sb, planar, any_order);
    if (gelu)
        GELU_ROWS(Bsz * T, H, out);
}

void NAME(long Bsz, long H, long N, long T, long at, const REAL *x, long x_sb, long x_st, const REAL *ln_w,
          const REAL *ln_b, double eps, const REAL *h0, long h0_sb, const REAL *w, const REAL *d, int gelu,
          REAL *out, REAL *h_out, long ho_sb) {
    BLOCK_LAID(Bsz, H, N, T, at, x, x_sb, x_st, ln_w, ln_b, eps, h0, h0_sb, w, d, gelu, out, h_out, ho_sb, 0);
}

/* A network's states (B, L, H, N) complex, interleaved, to the planar layout (to_planar) or back, rows of
   in_sb reals in and out_sb out (a packed state may carry more than its layers' states): what a loop that
   keeps its states planar between passes converts once a call.  A transpose of (H, N) pairs to (N, H), by
   tiles of LAYOUT_TM modes x LAYOUT_TH channels through a buffer on the stack: the pairs move whole (one
   8- or 16-byte move each, the tile's reads or writes contiguous in a channel) and a mode's row is split
   into its two planes (or joined) contiguously, where a pair at a time, one plane's write 4H bytes from
   the last, took 1.5x the time (7 layers of 64 channels x 32 modes in and out: 18 us against 12,
   docs/experiments/rounds-and-serving.md, thirty-seventh session).  Only copies: the result is exact. */
#ifndef LAYOUT_TM
#define LAYOUT_TM 16
#define LAYOUT_TH 64
#endif
void STATES_LAYOUT(long Bsz, long L, long H, long N, const REAL *in, long in_sb, REAL *out, long out_sb,
                   int to_planar) {
    typedef struct {
        REAL re, im;
    } pair;
    const long NH = N * H;
    pair tile[LAYOUT_TM * LAYOUT_TH]; /* (mode, channel) */
    for (long b = 0; b < Bsz; ++b)
        for (long l = 0; l < L; ++l) {
            const REAL *i = in + b * in_sb + l * NH * 2;
            REAL *o = out + b * out_sb + l * NH * 2;
            for (long n0 = 0; n0 < N; n0 += LAYOUT_TM)
                for (long h0 = 0; h0 < H; h0 += LAYOUT_TH) {
                    const long nm = N - n0 < LAYOUT_TM ? N - n0 : LAYOUT_TM;
                    const long hm = H - h0 < LAYOUT_TH ? H - h0 : LAYOUT_TH;
                    if (to_planar) {
                        const pair *s = (const pair *)i + h0 * N + n0; /* channel h0's pair of mode n0 */
                        for (long h = 0; h < hm; ++h)
                            for (long n = 0; n < nm; ++n) tile[n * LAYOUT_TH + h] = s[h * N + n];
                        for (long n = 0; n < nm; ++n) {
                            REAL *re = o + (n0 + n) * H + h0, *im = re + NH;
                            const pair *t = tile + n * LAYOUT_TH;
                            for (long h = 0; h < hm; ++h) re[h] = t[h].re, im[h] = t[h].im;
                        }
                    } else {
                        for (long n = 0; n < nm; ++n) {
                            const REAL *re = i + (n0 + n) * H + h0, *im = re + NH;
                            pair *t = tile + n * LAYOUT_TH;
                            for (long h = 0; h < hm; ++h) t[h].re = re[h], t[h].im = im[h];
                        }
                        pair *d = (pair *)o + h0 * N + n0;
                        for (long h = 0; h < hm; ++h)
                            for (long n = 0; n < nm; ++n) d[h * N + n] = tile[n * LAYOUT_TH + h];
                    }
                }
        }
}

/* out (R, M) = bias + a (R, K) wt (K, M), W^T given as wt.  Tiles of TILE_R rows by TILE_V vectors of outputs
   (TILE; a tile of 4 rows for 4 or 5 left over) stay in registers over k, so each weight vector loaded serves
   several rows (a row at a time, each multiply-add also loaded its weight and its running sum).  Rows left over (all of them in a
   matrix-vector product) run as one row by up to ROW_NV vectors (ROW_REST): independent chains of
   multiply-adds where 2 left each waiting on the last (a step's products at batch 1 were latency-bound: see
   ROW_CHUNK).  Either way an output's sum runs over k in order, each step one FMA (model/native.py, FMA: GCC's
   tuning for some CPUs would otherwise leave a lone chain unfused), so a row's result does not depend on
   the rows beside it.  A narrow output (M < VL, e.g. a binary head) runs as dot products over a row
   of a repeated M times (DOT_NARROW).  Always inlined: once LINEAR_ROWS also called it, GCC stopped
   inlining it into NET, and an autoregressive step took about 12% longer
   (docs/experiments/rounds-and-serving.md, nineteenth session) */
static inline __attribute__((always_inline)) void ROW_CHUNK(long NV, long K, long M, const REAL *ar, const REAL *wt,
                                                            const REAL *bias, REAL *o) {
    VEC acc[ROW_NV];
    for (long q = 0; q < NV; ++q) memcpy(&acc[q], bias + q * VL, sizeof(VEC));
    for (long k = 0; k < K; ++k) {
        const REAL v = ar[k];
        for (long q = 0; q < NV; ++q) {
            VEC w;
            memcpy(&w, wt + k * M + q * VL, sizeof(VEC));
            acc[q] += v * w;
        }
    }
    for (long q = 0; q < NV; ++q) memcpy(o + q * VL, &acc[q], sizeof(VEC));
}

/* out (R, M) for M < VL dividing VL: wt is (K, M) contiguous, so lane i of a vector read at k M holds
   output i mod M; a row's a, each element repeated M times, lines up with it, and the product is
   4 chains of vector multiply-adds over the K M weights, each output's lanes summed at the end */
#ifndef NARROW_MAX
#define NARROW_MAX 2048 /* K M up to which the repeated row fits the stack */
#endif
static inline __attribute__((always_inline)) void DOT_NARROW(long R, long K, long M, const REAL *a, const REAL *wt,
                                                             const REAL *bias, REAL *out) {
    REAL rep[NARROW_MAX];
    const long KM = K * M, whole = KM / (4 * VL) * (4 * VL);
    for (long r = 0; r < R; ++r) {
        const REAL *ar = a + r * K;
        for (long k = 0; k < K; ++k)
            for (long j = 0; j < M; ++j) rep[k * M + j] = ar[k];
        VEC acc[4] = {{0}, {0}, {0}, {0}};
        for (long i = 0; i < whole; i += 4 * VL)
            for (long q = 0; q < 4; ++q) {
                VEC x, w;
                memcpy(&x, rep + i + q * VL, sizeof(VEC)), memcpy(&w, wt + i + q * VL, sizeof(VEC));
                acc[q] += x * w;
            }
        REAL lanes[VL], sum[VL];
        const VEC total = (acc[0] + acc[1]) + (acc[2] + acc[3]);
        memcpy(lanes, &total, sizeof(VEC));
        for (long j = 0; j < M; ++j) sum[j] = bias[j];
        for (long i = 0; i < VL; ++i) sum[i % M] += lanes[i];
        for (long i = whole; i < KM; ++i) sum[i % M] += rep[i] * wt[i];
        for (long j = 0; j < M; ++j) out[r * M + j] = sum[j];
    }
}

/* One row's outputs from output `from` on (LINEAR's rows left over): the whole vectors in sweeps over k of
   ROW_NV vectors, the last sweep as wide as what is left, so a row of up to ROW_NV vectors reads its weights once,
   in order (a 320 x 256 product at batch 1, the text latent prior's second layer, took 1.7-2.1 us in one sweep,
   2.5-2.8 in the chunks of 8, 4, 2 and 1 vectors that read it in two: docs/experiments/rounds-and-serving.md,
   forty-first session); then the outputs short of a vector.  Each output's sum runs over k in order, however the row is cut.
   Not inlined: its cases would be copied into every LINEAR */
#define ROW_CASE(NV)                                                                                         \
    case NV:                                                                                                 \
        ROW_CHUNK(NV, K, M, ar, wt + d, bias + d, o + d);                                                     \
        break;
static __attribute__((noinline)) void ROW_REST(long K, long M, long from, const REAL *ar, const REAL *wt,
                                               const REAL *bias, REAL *o) {
    long d = from;
    for (; d + ROW_NV * VL <= M; d += ROW_NV * VL) ROW_CHUNK(ROW_NV, K, M, ar, wt + d, bias + d, o + d);
    const long nv = (M - d) / VL; /* whole vectors left: fewer than ROW_NV */
    switch (nv) {
        ROW_CASE(1)
        ROW_CASE(2)
        ROW_CASE(3)
        ROW_CASE(4)
        ROW_CASE(5)
        ROW_CASE(6)
        ROW_CASE(7)
#if ROW_NV > 8
        ROW_CASE(8)
        ROW_CASE(9)
        ROW_CASE(10)
        ROW_CASE(11)
        ROW_CASE(12)
        ROW_CASE(13)
        ROW_CASE(14)
        ROW_CASE(15)
#endif
    default:
        break;
    }
    d += nv * VL;
    if (d < M) { /* the last outputs, fewer than a vector */
        const long Mc = M - d;
        for (long j = 0; j < Mc; ++j) o[d + j] = bias[d + j];
        for (long k = 0; k < K; ++k) {
            const REAL v = ar[k];
            const REAL *wk = wt + k * M + d;
#pragma omp simd
            for (long j = 0; j < Mc; ++j) o[d + j] += v * wk[j];
        }
    }
}
#undef ROW_CASE
_Static_assert(ROW_NV == 8 || ROW_NV == 16, "ROW_REST's cases cover up to ROW_NV - 1 vectors");

/* RR rows of a (rows K apart) by NV vectors of outputs, the sums in registers over k: each weight vector
   loaded serves RR rows.  6 rows by 4 vectors ran a 264 x 96 x 192 product at 250-262 GFLOP/s where 4 by 2
   ran it at 178 (24 chains of multiply-adds in flight where 8 kept two pipes of 4 cycles' latency barely fed;
   AMD EPYC family 26, whose multiply-adds are a whole 512 bits wide: docs/experiments/rounds-and-serving.md,
   forty-first session).  With 16 registers (AVX2), 6 rows by 2 vectors ran it at 79 GFLOP/s where 4 by 2 ran it
   at 59 (medians of six processes; 3 by 4 and 4 by 3: 15), a batch-32 image of the one pass 1.04-1.16x and of the
   VRNN 1.3x as fast (AMD EPYC family 25 model 1, forty-fourth session) */
static inline __attribute__((always_inline)) void TILE(long RR, long NV, long K, long M, const REAL *a0,
                                                       const REAL *wt, const REAL *bias, REAL *out) {
    VEC acc[TILE_R][TILE_V];
    for (long v = 0; v < NV; ++v) {
        VEC b;
        memcpy(&b, bias + v * VL, sizeof(VEC));
        for (long q = 0; q < RR; ++q) acc[q][v] = b;
    }
    for (long k = 0; k < K; ++k) {
        VEC w[TILE_V];
        for (long v = 0; v < NV; ++v) memcpy(&w[v], wt + k * M + v * VL, sizeof(VEC));
        for (long q = 0; q < RR; ++q) {
            const REAL x = a0[q * K + k];
            for (long v = 0; v < NV; ++v) acc[q][v] += x * w[v];
        }
    }
    for (long q = 0; q < RR; ++q)
        for (long v = 0; v < NV; ++v) memcpy(out + q * M + v * VL, &acc[q][v], sizeof(VEC));
}

/* Rows [r0, r1) in tiles of RR rows: tiles TILE_V vectors wide, then narrower ones over the vectors left; the
   outputs they cover (the same for any rows) */
static inline __attribute__((always_inline)) long TILES(long RR, long r0, long r1, long K, long M, const REAL *a,
                                                        const REAL *wt, const REAL *bias, REAL *out) {
    long c = 0;
    for (; c + TILE_V * VL <= M; c += TILE_V * VL)
        for (long r = r0; r < r1; r += RR) TILE(RR, TILE_V, K, M, a + r * K, wt + c, bias + c, out + r * M + c);
#if TILE_V > 2
    if (c + 2 * VL <= M) {
        for (long r = r0; r < r1; r += RR) TILE(RR, 2, K, M, a + r * K, wt + c, bias + c, out + r * M + c);
        c += 2 * VL;
    }
#endif
    if (c + VL <= M) {
        for (long r = r0; r < r1; r += RR) TILE(RR, 1, K, M, a + r * K, wt + c, bias + c, out + r * M + c);
        c += VL;
    }
    return c;
}

static inline __attribute__((always_inline)) void LINEAR(long R, long K, long M, const REAL *a, const REAL *wt,
                                                         const REAL *bias, REAL *out) {
    if (M < VL && VL % M == 0 && K * M <= NARROW_MAX) { /* M a constant in each: the repeat vectorises */
        if (M == 1)
            DOT_NARROW(R, K, 1, a, wt, bias, out);
        else if (M == 2)
            DOT_NARROW(R, K, 2, a, wt, bias, out);
        else if (M == 4)
            DOT_NARROW(R, K, 4, a, wt, bias, out);
        else
            DOT_NARROW(R, K, M, a, wt, bias, out);
        return;
    }
    const long R6 = R / TILE_R * TILE_R;                        /* rows in whole tiles */
    const long RT = TILE_R > 4 && R - R6 >= 4 ? R6 + 4 : R6; /* and, of 4 or 5 rows left, a tile of 4 */
    long tiled = 0; /* outputs the tiles covered, in rows below RT */
    if (R6)
        tiled = TILES(TILE_R, 0, R6, K, M, a, wt, bias, out);
    if (RT > R6)
        tiled = TILES(4, R6, RT, K, M, a, wt, bias, out);
    for (long r = 0; r < R; ++r) ROW_REST(K, M, r < RT ? tiled : 0, a + r * K, wt, bias, out + r * M);
}

/* LINEAR for other files: the latent prior's step (csrc/latent_prior.c) runs its matrix-vector products
   through the same row sweeps (ROW_REST) as a network step at batch 1, as the autoregressive SSM's loop does */
void LINEAR_ROWS(long R, long K, long M, const REAL *a, const REAL *wt, const REAL *bias, REAL *out) {
    LINEAR(R, K, M, a, wt, bias, out);
}

/* LAYERNORM of rows (rows, H) into o, and GELU_ROWS in place, for other files: the autoregressive Transformer's
   loop (csrc/transformer_loop.c) normalises and activates as a network pass here does */
void LAYERNORM_ROWS(long rows, long H, const REAL *x, const REAL *w, const REAL *bias, double eps, REAL *o) {
    for (long r = 0; r < rows; ++r) LAYERNORM(H, x + r * H, w, bias, eps, o + r * H);
}

void GELU_ROWS_OUT(long rows, long H, REAL *x) { GELU_ROWS(rows, H, x); }

/* A network's final LayerNorm and head over `rows` residual rows x (rows, H) into logits (rows, O), g
   (rows, H) scratch: the end of NET, and what a round that steps the network elsewhere reads
   (csrc/patch_rounds.c); the pack as NET's (L layers of N modes) */
void NET_HEAD(long rows, long H, long N, long L, long O, const REAL *pack, double eps, const REAL *x, REAL *g,
              REAL *logits) {
    const REAL *p = pack + L * pack_layer(H, N);
    const REAL *nw = p, *nb = p + H, *hw = p + 2 * H, *hb = hw + H * O;
    for (long r = 0; r < rows; ++r) LAYERNORM(H, x + r * H, nw, nb, eps, g + r * H);
    LINEAR(rows, H, O, g, hw, hb, logits); /* logits = LayerNorm(x) W_head^T + b_head */
}

/* NET with the states' layout chosen (BLOCK_LAID).  With planar states h_out may be h0 itself (and ho_sb,
   fixed at L N H 2 reals a row, then h0_sb too), the states updated in place: both recurrences read a
   block of channels' states (all of its modes, or a group of four) before they write them, and no block
   reads another's.  A loop's one-step passes do that
   (csrc/ar_loop.c, csrc/patch_rounds.c), and so do the block rounds' passes (csrc/rounds.c): a second buffer taken by turns was another copy of the states in a
   working set that outgrows a 512 kB second-level cache (docs/experiments/rounds-and-serving.md,
   thirty-first session) */
void NET_LAID(long Bsz, long H, long N, long T, long L, long O, long at, REAL *x, const REAL *pack, double eps,
              const REAL *h0, long h0_sb, REAL *h_out, REAL *g, REAL *logits, int planar) {
    const long rows = Bsz * T, H2 = 2 * H, NH = N * H, LH = L * NH * 2;
    const long layer = pack_layer(H, N);
    REAL z[NET_ROWS * H2]; /* (NET_ROWS, 2H): rows' GLU inputs, a few of LINEAR's tiles */
    for (long l = 0; l < L; ++l) {
        const REAL *p = pack + l * layer;
        const REAL *ln_w = p, *ln_b = p + H, *planes = p + 2 * H, *d = planes + 4 * NH;
        const REAL *wt = d + H, *bias = wt + H * H2;
        /* g = GELU(S4D(LayerNorm(x))), the layer's state into h_out's row l */
        BLOCK_LAID(Bsz, H, N, T, at, x, T * H, H, ln_w, ln_b, eps, h0 ? h0 + l * NH * 2 : 0, h0_sb, planes, d, 1,
                   g, h_out ? h_out + l * NH * 2 : 0, LH, planar);
        for (long r0 = 0; r0 < rows; r0 += NET_ROWS) { /* x += GLU(g W^T + bias), NET_ROWS rows at a time */
            const long R = rows - r0 < NET_ROWS ? rows - r0 : NET_ROWS;
            LINEAR(R, H, H2, g + r0 * H, wt, bias, z);
            for (long r = 0; r < R; ++r) {
                REAL *xr = x + (r0 + r) * H;
                const REAL *zr = z + r * H2;
#pragma omp simd
                for (long j = 0; j < H; ++j) xr[j] += zr[j] / (1 + EXP(-zr[H + j]));
            }
        }
    }
    NET_HEAD(rows, H, N, L, O, pack, eps, x, g, logits); /* g: the scratch again */
}

/* NET_LAID with interleaved states: the layout every caller outside a loop's own buffers holds */
void NET(long Bsz, long H, long N, long T, long L, long O, long at, REAL *x, const REAL *pack, double eps,
         const REAL *h0, long h0_sb, REAL *h_out, REAL *g, REAL *logits) {
    NET_LAID(Bsz, H, N, T, L, O, at, x, pack, eps, h0, h0_sb, h_out, g, logits, 0);
}

#endif

/* An S4D block's LayerNorm, recurrence and GELU in one call, for short passes at small batch
(model/native.py).

Glossary of axis letters:
    B  batch      H  channels      N  complex modes per channel      T  steps

Per channel h and mode n, from the state h_0 before the first input (model/ssm.py):
    h_t = Lambda h_(t-1) + B_bar u_t,      y_t = Re(sum_n C_n h_t[n]) + D u_t
in real arithmetic.  A short pass at batch 1 as one matrix per channel (S4D.short) reads a
(T + 2N) x T matrix per channel from memory for one multiply-add per element read; this loop reads
the input, the state and the weights once and keeps a block of LANES channels' state in cache.
The vector lanes run over channels, not modes: the sum over modes is then a plain add per lane,
with no horizontal reduction at every step.  Around it, optionally, the block's LayerNorm before
(u = LN(x)) and its exact GELU after (model/network.py, SSMBlock): at a few steps each of those
is one more PyTorch call whose fixed cost is many times its arithmetic.

Layouts: x is (B, T, H) with strides x_sb, x_st (channels contiguous); out is (B, T, H) contiguous
and receives y, or GELU(y) when gelu is set; w is (6, N, H), the planes Re Lambda, Im Lambda,
Re B_bar, Im B_bar, Re C, Im C; d is (H,); ln_w, ln_b (H,) both or neither (no LayerNorm); states are
(B, H, N) complex, interleaved (real, imaginary) pairs as torch.view_as_real lays them out, h0 with
batch stride h0_sb (NULL: zeros), h_out with batch stride ho_sb (NULL: not wanted), after `at` steps
(0 <= at <= T).  Nothing here checks a shape: the caller does (model/native.py).

A whole network pass (NET, model/network.py, SSMNet) runs every block in one call: per layer the
block above (LayerNorm, recurrence, GELU), then the H -> 2H output linear, GLU and the residual
add; then the final LayerNorm and the head.  At a few steps a block is otherwise five PyTorch calls
around the kernel, and a network pass of L blocks a few dozen: the calls, not their arithmetic,
were most of a short block round and of an autoregressive step (docs/experiments/rounds-and-serving.md).
Its weights come packed in one buffer (model/native.py, pack): per layer LayerNorm weight and bias
(H each), the six planes (6, N, H), D (H), the output linear transposed (H, 2H) and its bias (2H);
then the final LayerNorm's weight and bias (H each), the head transposed (H, O) and its bias (O). */

#include <math.h>

#ifndef VSSM_NO_MVEC /* glibc's libmvec has vector erf and erff; math.h declares them only under -ffast-math */
__attribute__((__simd__("notinbranch"))) extern float erff(float);
__attribute__((__simd__("notinbranch"))) extern double erf(double);
__attribute__((__simd__("notinbranch"))) extern float expf(float);
__attribute__((__simd__("notinbranch"))) extern double exp(double);
#endif

#ifndef REAL /* the file includes itself once per precision */
#define LANES 32
#define REAL float
#define ERF erff
#define EXP expf
#define NAME s4d_block_f32
#define NET ssm_net_f32
#define LAYERNORM layernorm_f32
#define LINEAR linear_f32
#include __FILE__
#undef REAL
#undef ERF
#undef EXP
#undef NAME
#undef NET
#undef LAYERNORM
#undef LINEAR
#define REAL double
#define ERF erf
#define EXP exp
#define NAME s4d_block_f64
#define NET ssm_net_f64
#define LAYERNORM layernorm_f64
#define LINEAR linear_f64
#include __FILE__
#else

static void LAYERNORM(long H, const REAL *xr, const REAL *w, const REAL *bias, double eps, REAL *o) {
    REAL mean = 0, var = 0;
    for (long h = 0; h < H; ++h) mean += xr[h];
    mean /= H;
    for (long h = 0; h < H; ++h) var += (xr[h] - mean) * (xr[h] - mean);
    const REAL inv = 1 / sqrt(var / H + eps);
    for (long h = 0; h < H; ++h) o[h] = (xr[h] - mean) * inv * w[h] + bias[h];
}

void NAME(long Bsz, long H, long N, long T, long at, const REAL *x, long x_sb, long x_st, const REAL *ln_w,
          const REAL *ln_b, double eps, const REAL *h0, long h0_sb, const REAL *w, const REAL *d, int gelu,
          REAL *out, REAL *h_out, long ho_sb) {
    const REAL *u = x;
    long u_sb = x_sb, u_st = x_st;
    if (ln_w) { /* LayerNorm of every row into out; the recurrence then reads and overwrites it in place */
        for (long b = 0; b < Bsz; ++b)
            for (long t = 0; t < T; ++t) LAYERNORM(H, x + b * x_sb + t * x_st, ln_w, ln_b, eps, out + (b * T + t) * H);
        u = out, u_sb = T * H, u_st = H;
    }
    const long NH = N * H;
    const REAL *lr = w, *li = w + NH, *br = w + 2 * NH, *bi = w + 3 * NH, *cr = w + 4 * NH, *ci = w + 5 * NH;
    REAL sr[N][LANES], si[N][LANES], xv[LANES], acc[4][LANES]; /* 4 partial sums: a shorter chain */
    for (long b = 0; b < Bsz; ++b) {
        for (long h0c = 0; h0c < H; h0c += LANES) {
            const long J = H - h0c < LANES ? H - h0c : LANES;
            for (long j = 0; j < LANES; ++j) { /* each channel's N modes are contiguous in the state */
                const REAL *s0 = h0 && j < J ? h0 + b * h0_sb + (h0c + j) * N * 2 : 0;
                for (long n = 0; n < N; ++n) sr[n][j] = s0 ? s0[2 * n] : 0, si[n][j] = s0 ? s0[2 * n + 1] : 0;
            }
            for (long t = 0; t <= T; ++t) {
                if (h_out && t == at) { /* the state after `at` steps */
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
                for (long n = 0; n < N; ++n) {
                    const long o = n * H + h0c;
                    if (J == LANES) {
#pragma omp simd
                        for (long j = 0; j < LANES; ++j) {
                            const REAL r = lr[o + j] * sr[n][j] - li[o + j] * si[n][j] + br[o + j] * xv[j];
                            const REAL i = lr[o + j] * si[n][j] + li[o + j] * sr[n][j] + bi[o + j] * xv[j];
                            sr[n][j] = r, si[n][j] = i;
                            acc[n & 3][j] += cr[o + j] * r - ci[o + j] * i;
                        }
                    } else {
                        for (long j = 0; j < J; ++j) {
                            const REAL r = lr[o + j] * sr[n][j] - li[o + j] * si[n][j] + br[o + j] * xv[j];
                            const REAL i = lr[o + j] * si[n][j] + li[o + j] * sr[n][j] + bi[o + j] * xv[j];
                            sr[n][j] = r, si[n][j] = i;
                            acc[n & 3][j] += cr[o + j] * r - ci[o + j] * i;
                        }
                    }
                }
                REAL *yt = out + (b * T + t) * H + h0c; /* may be ut itself: every lane was read into xv */
                for (long j = 0; j < J; ++j) {
                    yt[j] = (acc[0][j] + acc[1][j]) + (acc[2][j] + acc[3][j]) + d[h0c + j] * xv[j];
                }
            }
        }
    }
    if (gelu) { /* exact GELU, x Phi(x), vectorised through libmvec's erf */
        const long n = Bsz * T * H;
#pragma omp simd
        for (long k = 0; k < n; ++k) out[k] = (REAL)0.5 * out[k] * (1 + ERF(out[k] * (REAL)0.70710678118654752440));
    }
}

/* out (M) = bias + v (K) W^T, W^T given as wt (K, M): the lanes run over the outputs */
static inline void LINEAR(long K, long M, const REAL *v, const REAL *wt, const REAL *bias, REAL *out) {
    for (long j = 0; j < M; ++j) out[j] = bias[j];
    for (long k = 0; k < K; ++k) {
        const REAL vk = v[k];
        const REAL *wk = wt + k * M;
#pragma omp simd
        for (long j = 0; j < M; ++j) out[j] += vk * wk[j];
    }
}

void NET(long Bsz, long H, long N, long T, long L, long O, long at, REAL *x, const REAL *pack, double eps,
         const REAL *h0, long h0_sb, REAL *h_out, REAL *g, REAL *logits) {
    const long rows = Bsz * T, H2 = 2 * H, NH = N * H, LH = L * NH * 2;
    const long layer = 2 * H + 6 * NH + H + H * H2 + H2; /* a layer's weights in the pack */
    REAL z[H2], v[H];
    for (long l = 0; l < L; ++l) {
        const REAL *p = pack + l * layer;
        const REAL *ln_w = p, *ln_b = p + H, *planes = p + 2 * H, *d = planes + 6 * NH;
        const REAL *wt = d + H, *bias = wt + H * H2;
        /* g = GELU(S4D(LayerNorm(x))), the layer's state into h_out's row l */
        NAME(Bsz, H, N, T, at, x, T * H, H, ln_w, ln_b, eps, h0 ? h0 + l * NH * 2 : 0, h0_sb, planes, d, 1, g,
             h_out ? h_out + l * NH * 2 : 0, LH);
        for (long r = 0; r < rows; ++r) { /* x += GLU(g W^T + bias) */
            LINEAR(H, H2, g + r * H, wt, bias, z);
            REAL *xr = x + r * H;
#pragma omp simd
            for (long j = 0; j < H; ++j) xr[j] += z[j] / (1 + EXP(-z[H + j]));
        }
    }
    const REAL *p = pack + L * layer;
    const REAL *nw = p, *nb = p + H, *hw = p + 2 * H, *hb = hw + H * O;
    for (long r = 0; r < rows; ++r) { /* logits = LayerNorm(x) W_head^T + b_head */
        LAYERNORM(H, x + r * H, nw, nb, eps, v);
        LINEAR(H, O, v, hw, hb, logits + r * O);
    }
}

#endif

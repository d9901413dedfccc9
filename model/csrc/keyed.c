/* Counter-based uniforms keyed by (seed, absolute position, stream, index) (model/sampling.py).

Glossary of axis letters:
    B  batch      S  streams      T  positions in one call      W  draws per position

The same 32-bit mixer and the same key schedule as keyed_uniforms in model/sampling.py, bit for
bit: there it is int64 tensor arithmetic whose products stay below 2**63 and are masked to 32 bits,
which is exactly uint32 multiplication here.  In PyTorch the hash is about forty small integer
kernels a call (some 200 us whatever the size), paid once per step by the autoregressive families
and once per round by block sampling; here it is a few nanoseconds a number.

Layouts: seed is (B,) contiguous; pos is (B, T) with element strides pos_sb, pos_st (0 for a
broadcast axis); streams is (S,); out is (B, S, T, W) contiguous. */

#include <stdint.h>

static inline uint32_t mix(uint32_t x) {
    x ^= x >> 16;
    x *= 0x7FEB352Du;
    x ^= x >> 15;
    x *= 0x346CA68Bu;
    return x ^ (x >> 16);
}

/* the key of (seed, stream) for a row, then of a position in it */
static inline uint32_t row_key(int64_t seed, int64_t stream) {
    const uint64_t sd = (uint64_t)seed;
    return mix(mix((uint32_t)sd + (uint32_t)stream) ^ (uint32_t)(sd >> 32));
}

static inline uint32_t position_key(uint32_t row, int64_t pos) { return mix(row ^ (uint32_t)(uint64_t)pos); }

/* draw i of a position's key: 24 random bits as a uniform in (0, 1) */
static inline double uniform(uint32_t key, long i) {
    const uint32_t bits = mix(mix(key ^ (uint32_t)i)) >> 8;
    return ((double)bits + 0.5) / 16777216.0;
}

/* NAME: the layout above.  SPAN: a compiled call's span of T positions from each row's first,
   pos0[b] + t (csrc/rounds.c, csrc/patch_rounds.c, csrc/prior_piece.c): for each of S outputs, stream
   streams[s] with W[s] draws a position into out[s] (B, T, W[s]); the numbers NAME gives those
   positions, without a table of them */
#define KEYED(NAME, SPAN, REAL)                                                                              \
    void NAME(long Bsz, long S, long T, long W, const int64_t *seed, const int64_t *pos, long pos_sb,         \
              long pos_st, const int64_t *streams, REAL *out) {                                               \
        for (long b = 0; b < Bsz; ++b)                                                                        \
            for (long s = 0; s < S; ++s) {                                                                     \
                const uint32_t row = row_key(seed[b], streams[s]);                                             \
                for (long t = 0; t < T; ++t) {                                                                 \
                    const uint32_t key = position_key(row, pos[b * pos_sb + t * pos_st]);                      \
                    REAL *o = out + ((b * S + s) * T + t) * W;                                                 \
                    for (long i = 0; i < W; ++i) o[i] = (REAL)uniform(key, i);                                 \
                }                                                                                              \
            }                                                                                                  \
    }                                                                                                          \
    void SPAN(long Bsz, long T, const int64_t *seed, const int64_t *pos0, long S, const int64_t *streams,     \
              const long *W, REAL *const *out) {                                                              \
        for (long s = 0; s < S; ++s)                                                                           \
            for (long b = 0; b < Bsz; ++b) {                                                                   \
                const uint32_t row = row_key(seed[b], streams[s]);                                             \
                for (long t = 0; t < T; ++t) {                                                                 \
                    const uint32_t key = position_key(row, pos0[b] + t);                                       \
                    REAL *o = out[s] + (b * T + t) * W[s];                                                     \
                    for (long i = 0; i < W[s]; ++i) o[i] = (REAL)uniform(key, i);                              \
                }                                                                                              \
            }                                                                                                  \
    }

KEYED(keyed_uniforms_f32, span_uniforms_f32, float)
KEYED(keyed_uniforms_f64, span_uniforms_f64, double)

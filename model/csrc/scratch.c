/* A compiled call's scratch in one allocation (csrc/rounds.c, csrc/patch_rounds.c, csrc/prior_piece.c):
a call allocates its buffers itself, rather than receiving a dozen tensors from Python, each a PyTorch
call and an argument (docs/experiments/blocks.md, twenty-fourth session).

scratch_block(nr, reals, real_bytes, ni, ints, out): one 64-byte-aligned block holding nr arrays of
reals[k] reals of real_bytes each, then ni arrays of ints[k] int64s, each array starting on a 64-byte
boundary; their addresses go to out[0 .. nr + ni - 1].  Returns the block (free() it), or NULL where
it cannot be allocated. */

#include <stdint.h>
#include <stdlib.h>

static long rounded(long bytes) { return (bytes + 63) / 64 * 64; }

char *scratch_block(long nr, const long *reals, long real_bytes, long ni, const long *ints, char **out) {
    long total = 64; /* never a zero-byte request */
    for (long k = 0; k < nr; ++k) total += rounded(reals[k] * real_bytes);
    for (long k = 0; k < ni; ++k) total += rounded(ints[k] * (long)sizeof(int64_t));
    char *block = aligned_alloc(64, total), *at = block;
    if (!block)
        return 0;
    for (long k = 0; k < nr; ++k) out[k] = at, at += rounded(reals[k] * real_bytes);
    for (long k = 0; k < ni; ++k) out[nr + k] = at, at += rounded(ints[k] * (long)sizeof(int64_t));
    return block;
}

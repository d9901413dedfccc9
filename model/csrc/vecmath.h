/* glibc's libmvec has vector exp, expf, erf and erff, but math.h declares them only under -ffast-math: declared here,
   so that a loop over them vectorises, in every file that calls them (csrc/s4d_block.c, csrc/latent_prior.c,
   csrc/categorical.c and the loops).  model/native.py links libmvec where it can, else builds with VSSM_NO_MVEC
   (scalar calls); it hashes this file with the sources. */

#ifndef VSSM_VECMATH_H
#define VSSM_VECMATH_H

#include <math.h>

#ifndef VSSM_NO_MVEC
__attribute__((__simd__("notinbranch"))) extern float expf(float);
__attribute__((__simd__("notinbranch"))) extern double exp(double);
__attribute__((__simd__("notinbranch"))) extern float erff(float);
__attribute__((__simd__("notinbranch"))) extern double erf(double);
#endif

#endif

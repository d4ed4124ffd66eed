// Epipolar kernels (docs/design.md 3.6): the per-match Sampson math shared by the CUDA kernels
// (epipolar.cu) and their C++ CPU twin (epipolar.cpp). The expression and its order are those
// of vgpa/reference/epipolar.py; every operation is rounded on its own (the sources are built
// without FMA contraction), so the distances and the inlier decisions agree bitwise with the
// reference and between backends.
#pragma once

#include <cmath>

#include "common.h"

namespace vgpa {

struct EpipolarArgs {
  int dtype;            // Float32 or Float64: F, points, distances and gradients
  int64_t pairs;        // P
  int64_t hypotheses;   // H (1 for the Sampson distance)
  int64_t rows;         // N rows of x1 and x2
  int64_t max_count;    // largest per-pair match count
  int64_t chunk, chunks;  // matches per partial of the backward's dF, partials per pair
  bool squared;
  double threshold_squared;  // rounded once to the working dtype by the kernels
  uintptr_t fundamental;     // (P, H, 9)
  uintptr_t x1, x2;          // (N, 2)
  uintptr_t offsets, counts; // (P,) int64: pair p owns rows offsets[p] .. offsets[p] + counts[p]
  uintptr_t distance;        // (N,) forward output; rows outside every pair are left as they are
  uintptr_t inliers;         // (P, H) int64
  uintptr_t grad_distance;   // (N,) upstream gradient
  uintptr_t grad_partials;   // (P, chunks, 9) dF per chunk of a pair's matches
  uintptr_t grad_x1, grad_x2;  // (N, 2), zero-filled; only the pairs' rows are written
};

// a = F x1, b = F^T x2 (first two entries), r = x2^T F x1 and den = |a_12|^2 + |b_12|^2.
template <typename A>
struct SampsonTerms {
  A a0, a1, b0, b1, r, den;

  VGPA_HD static SampsonTerms at(const A* f, A u1, A v1, A u2, A v2) {
    SampsonTerms t;
    t.a0 = (f[0] * u1 + f[1] * v1) + f[2];
    t.a1 = (f[3] * u1 + f[4] * v1) + f[5];
    const A a2 = (f[6] * u1 + f[7] * v1) + f[8];
    t.b0 = (f[0] * u2 + f[3] * v2) + f[6];
    t.b1 = (f[1] * u2 + f[4] * v2) + f[7];
    t.r = (u2 * t.a0 + v2 * t.a1) + a2;
    t.den = ((t.a0 * t.a0 + t.a1 * t.a1) + t.b0 * t.b0) + t.b1 * t.b1;
    return t;
  }

  // d2 = r r / den; inf where den == 0, as kornia's sampson_epipolar_distance.
  VGPA_HD A squared() const { return den == A(0) ? A(INFINITY) : (r * r) / den; }
};

template <typename A>
VGPA_HD A sampson_squared(const A* f, A u1, A v1, A u2, A v2) {
  return SampsonTerms<A>::at(f, u1, v1, u2, v2).squared();
}

template <typename A>
VGPA_HD A square_root(A x) {
#ifdef __CUDA_ARCH__
  return sqrt(x);  // IEEE without --use_fast_math, which vgpa never uses
#else
  return std::sqrt(x);
#endif
}

// Gradients of g * d2 (squared) or g * d of one match: adds into grad_f[9], writes gx1[2] and
// gx2[2]. False, and nothing written, when the match contributes nothing (g == 0, den == 0, or
// d == 0 for the distance): see vgpa/reference/epipolar.py.
template <typename A>
VGPA_HD bool sampson_backward(const A* f, A u1, A v1, A u2, A v2, A g, bool squared, A* grad_f, A* gx1, A* gx2) {
  const SampsonTerms<A> t = SampsonTerms<A>::at(f, u1, v1, u2, v2);
  if (g == A(0) || t.den == A(0)) return false;
  const A d2 = t.squared();
  if (!squared) {
    const A d = square_root(d2);
    if (d == A(0)) return false;
    g = g / (A(2) * d);
  }
  const A c_r = A(2) * g * t.r / t.den, c_d = -g * d2 / t.den;
  const A x1h[3] = {u1, v1, A(1)}, x2h[3] = {u2, v2, A(1)}, a[2] = {t.a0, t.a1}, b[2] = {t.b0, t.b1};
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) {
      A term = c_r * x2h[i] * x1h[j];
      if (i < 2) term += A(2) * c_d * a[i] * x1h[j];
      if (j < 2) term += A(2) * c_d * b[j] * x2h[i];
      grad_f[3 * i + j] += term;
    }
  for (int k = 0; k < 2; ++k) {
    gx1[k] = c_r * b[k] + A(2) * c_d * (t.a0 * f[k] + t.a1 * f[3 + k]);
    gx2[k] = c_r * a[k] + A(2) * c_d * (t.b0 * f[3 * k] + t.b1 * f[3 * k + 1]);
  }
  return true;
}

template <typename F>
void dispatch_epipolar_dtype(int dtype, F&& f) {
  switch (static_cast<Dtype>(dtype)) {
    case Dtype::Float32: f(static_cast<float*>(nullptr)); break;
    case Dtype::Float64: f(static_cast<double*>(nullptr)); break;
    default: throw std::invalid_argument("epipolar: F and the points must be float32 or float64");
  }
}

void sampson_distance_forward_cpu(const EpipolarArgs& args);
void sampson_distance_backward_cpu(const EpipolarArgs& args);
void ransac_inlier_count_cpu(const EpipolarArgs& args);
#ifdef VGPA_WITH_CUDA
void sampson_distance_forward_cuda(const EpipolarArgs& args, uintptr_t stream);
void sampson_distance_backward_cuda(const EpipolarArgs& args, uintptr_t stream);
void ransac_inlier_count_cuda(const EpipolarArgs& args, uintptr_t stream);
#endif

}  // namespace vgpa

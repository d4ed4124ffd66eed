// C++ CPU twin of the CUDA kernels in epipolar.cu (OpenMP).
//
// The Sampson distance must round once per operation like the reference, or an inlier on the
// threshold is decided differently: no floating-point contraction into FMA in this file.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <type_traits>

#include "epipolar.h"

namespace vgpa {

namespace {

constexpr int64_t kMatchBlock = 4096;   // matches per forward job
constexpr int64_t kHypothesisTile = 16;  // hypotheses per inlier-count job, kept in registers
constexpr int64_t kCountBlock = 256;     // matches staged (as columns) per step of an inlier-count job

template <typename A>
void forward(const EpipolarArgs& a) {
  const A* fundamental = reinterpret_cast<const A*>(a.fundamental);
  const A* x1 = reinterpret_cast<const A*>(a.x1);
  const A* x2 = reinterpret_cast<const A*>(a.x2);
  const int64_t* offsets = reinterpret_cast<const int64_t*>(a.offsets);
  const int64_t* counts = reinterpret_cast<const int64_t*>(a.counts);
  A* out = reinterpret_cast<A*>(a.distance);
  const int64_t blocks = (a.max_count + kMatchBlock - 1) / kMatchBlock, jobs = a.pairs * blocks;

#pragma omp parallel for schedule(dynamic, 1) if (jobs > 1)
  for (int64_t job = 0; job < jobs; ++job) {
    const int64_t p = job / blocks, begin = (job % blocks) * kMatchBlock;
    const int64_t end = begin + kMatchBlock < counts[p] ? begin + kMatchBlock : counts[p];
    const A* f = fundamental + p * 9;
    for (int64_t m = offsets[p] + begin, last = offsets[p] + end; m < last; ++m) {
      const A d2 = sampson_squared(f, x1[2 * m], x1[2 * m + 1], x2[2 * m], x2[2 * m + 1]);
      out[m] = a.squared ? d2 : square_root(d2);
    }
  }
}

// One job = one fixed chunk of one pair's matches: its dF partial does not depend on threading.
template <typename A>
void backward(const EpipolarArgs& a) {
  const A* fundamental = reinterpret_cast<const A*>(a.fundamental);
  const A* x1 = reinterpret_cast<const A*>(a.x1);
  const A* x2 = reinterpret_cast<const A*>(a.x2);
  const int64_t* offsets = reinterpret_cast<const int64_t*>(a.offsets);
  const int64_t* counts = reinterpret_cast<const int64_t*>(a.counts);
  const A* grad = reinterpret_cast<const A*>(a.grad_distance);
  A* partials = reinterpret_cast<A*>(a.grad_partials);
  A* gx1 = reinterpret_cast<A*>(a.grad_x1);
  A* gx2 = reinterpret_cast<A*>(a.grad_x2);
  const int64_t jobs = a.pairs * a.chunks;

#pragma omp parallel for schedule(dynamic, 1) if (jobs > 1)
  for (int64_t job = 0; job < jobs; ++job) {
    const int64_t p = job / a.chunks, begin = (job % a.chunks) * a.chunk;
    const int64_t end = begin + a.chunk < counts[p] ? begin + a.chunk : counts[p];
    const A* f = fundamental + p * 9;
    A grad_f[9] = {};
    for (int64_t m = offsets[p] + begin, last = offsets[p] + end; m < last; ++m)
      sampson_backward(f, x1[2 * m], x1[2 * m + 1], x2[2 * m], x2[2 * m + 1], grad[m], a.squared, grad_f,
                       gx1 + 2 * m, gx2 + 2 * m);
    for (int k = 0; k < 9; ++k) partials[job * 9 + k] = grad_f[k];
  }
}

// One job = one pair and a tile of its hypotheses. The pair's matches pass in blocks, staged as
// columns (u1, v1, u2, v2) so that the loop over a block vectorises; each block is read once
// per tile. Integer counts: any order gives the same result.
template <typename A>
void inlier_count(const EpipolarArgs& a) {
  const A* hypotheses = reinterpret_cast<const A*>(a.fundamental);
  const A* x1 = reinterpret_cast<const A*>(a.x1);
  const A* x2 = reinterpret_cast<const A*>(a.x2);
  const int64_t* offsets = reinterpret_cast<const int64_t*>(a.offsets);
  const int64_t* counts = reinterpret_cast<const int64_t*>(a.counts);
  int64_t* inliers = reinterpret_cast<int64_t*>(a.inliers);
  const A limit = A(a.threshold_squared);
  const int64_t tiles = (a.hypotheses + kHypothesisTile - 1) / kHypothesisTile, jobs = a.pairs * tiles;

#pragma omp parallel for schedule(dynamic, 1) if (jobs > 1)
  for (int64_t job = 0; job < jobs; ++job) {
    const int64_t p = job / tiles, h0 = (job % tiles) * kHypothesisTile;
    const int64_t tile = a.hypotheses - h0 < kHypothesisTile ? a.hypotheses - h0 : kHypothesisTile;
    const A* f = hypotheses + (p * a.hypotheses + h0) * 9;
    int64_t found[kHypothesisTile] = {};
    A u1[kCountBlock], v1[kCountBlock], u2[kCountBlock], v2[kCountBlock];
    for (int64_t begin = 0; begin < counts[p]; begin += kCountBlock) {
      const int64_t n = counts[p] - begin < kCountBlock ? counts[p] - begin : kCountBlock;
      const int64_t row = offsets[p] + begin;
      for (int64_t i = 0; i < n; ++i) {
        u1[i] = x1[2 * (row + i)];
        v1[i] = x1[2 * (row + i) + 1];
        u2[i] = x2[2 * (row + i)];
        v2[i] = x2[2 * (row + i) + 1];
      }
      for (int64_t h = 0; h < tile; ++h) {
        const A* fh = f + h * 9;
        int64_t k = 0;
        for (int64_t i = 0; i < n; ++i) k += sampson_squared(fh, u1[i], v1[i], u2[i], v2[i]) <= limit;
        found[h] += k;
      }
    }
    for (int64_t h = 0; h < tile; ++h) inliers[p * a.hypotheses + h0 + h] = found[h];
  }
}

}  // namespace

void sampson_distance_forward_cpu(const EpipolarArgs& args) {
  dispatch_epipolar_dtype(args.dtype, [&](auto* tag) { forward<std::remove_pointer_t<decltype(tag)>>(args); });
}

void sampson_distance_backward_cpu(const EpipolarArgs& args) {
  dispatch_epipolar_dtype(args.dtype, [&](auto* tag) { backward<std::remove_pointer_t<decltype(tag)>>(args); });
}

void ransac_inlier_count_cpu(const EpipolarArgs& args) {
  dispatch_epipolar_dtype(args.dtype, [&](auto* tag) { inlier_count<std::remove_pointer_t<decltype(tag)>>(args); });
}

}  // namespace vgpa

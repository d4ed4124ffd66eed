// CUDA kernels of the epipolar ops; the per-match Sampson math is in epipolar.h. Built with
// --fmad=false (vgpa/_build_config.py DECISION_SOURCES): the inlier decisions must be taken
// exactly as the C++ twin takes them.
#include <cuda_runtime.h>

#include "cuda_utils.cuh"
#include "epipolar.h"

namespace vgpa {

namespace {

constexpr int kThreads = 256;         // matches per block of the Sampson kernels
constexpr int kHypothesisTile = 128;  // hypotheses per block of the inlier count: one per thread
constexpr int kStage = 256;           // matches staged in shared memory per step of the inlier count

// One thread per match; blocks (pair, block of its matches) folded into grid axis x.
template <typename A>
__global__ void __launch_bounds__(kThreads) sampson_distance_forward_kernel(EpipolarArgs a, int64_t blocks) {
  const int64_t p = blockIdx.x / blocks;
  const int64_t i = (blockIdx.x % blocks) * kThreads + threadIdx.x;
  if (i >= reinterpret_cast<const int64_t*>(a.counts)[p]) return;
  const int64_t m = reinterpret_cast<const int64_t*>(a.offsets)[p] + i;
  const A* x1 = reinterpret_cast<const A*>(a.x1) + 2 * m;
  const A* x2 = reinterpret_cast<const A*>(a.x2) + 2 * m;
  const A d2 = sampson_squared(reinterpret_cast<const A*>(a.fundamental) + p * 9, x1[0], x1[1], x2[0], x2[1]);
  reinterpret_cast<A*>(a.distance)[m] = a.squared ? d2 : square_root(d2);
}

// One block per fixed chunk of one pair's matches: the match gradients are written directly and
// the chunk's dF is reduced in a fixed order (block_sum) into its partial: deterministic.
template <typename A>
__global__ void __launch_bounds__(kThreads) sampson_distance_backward_kernel(EpipolarArgs a) {
  const int64_t p = blockIdx.x / a.chunks, chunk = blockIdx.x % a.chunks;
  const int64_t count = reinterpret_cast<const int64_t*>(a.counts)[p];
  const int64_t offset = reinterpret_cast<const int64_t*>(a.offsets)[p];
  const int64_t begin = chunk * a.chunk, end = min(begin + a.chunk, count);
  const A* f = reinterpret_cast<const A*>(a.fundamental) + p * 9;
  const A* x1 = reinterpret_cast<const A*>(a.x1);
  const A* x2 = reinterpret_cast<const A*>(a.x2);
  const A* grad = reinterpret_cast<const A*>(a.grad_distance);
  A* gx1 = reinterpret_cast<A*>(a.grad_x1);
  A* gx2 = reinterpret_cast<A*>(a.grad_x2);
  A grad_f[9] = {};
  for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) {
    const int64_t m = offset + i;
    sampson_backward(f, x1[2 * m], x1[2 * m + 1], x2[2 * m], x2[2 * m + 1], grad[m], a.squared, grad_f, gx1 + 2 * m,
                     gx2 + 2 * m);
  }
  A* out = reinterpret_cast<A*>(a.grad_partials) + blockIdx.x * int64_t(9);
  for (int k = 0; k < 9; ++k) {
    const A total = block_sum<kThreads>(grad_f[k]);
    if (threadIdx.x == 0) out[k] = total;
  }
}

// One block per (pair, tile of hypotheses), one hypothesis per thread with its F in registers.
// The pair's matches pass through shared memory in stages, read from global memory once per
// tile; every thread then reads the same staged match (a broadcast). Nothing of size
// hypotheses x matches is written: each thread counts in a register.
template <typename A>
__global__ void __launch_bounds__(kHypothesisTile) ransac_inlier_count_kernel(EpipolarArgs a, int64_t tiles) {
  __shared__ A staged[4][kStage];
  const int64_t p = blockIdx.x / tiles;
  const int64_t h = (blockIdx.x % tiles) * kHypothesisTile + threadIdx.x;
  const bool active = h < a.hypotheses;
  A f[9];
  const A* source = reinterpret_cast<const A*>(a.fundamental) + (p * a.hypotheses + (active ? h : 0)) * 9;
  for (int k = 0; k < 9; ++k) f[k] = source[k];
  const int64_t count = reinterpret_cast<const int64_t*>(a.counts)[p];
  const int64_t offset = reinterpret_cast<const int64_t*>(a.offsets)[p];
  const A* x1 = reinterpret_cast<const A*>(a.x1);
  const A* x2 = reinterpret_cast<const A*>(a.x2);
  const A limit = A(a.threshold_squared);
  long long found = 0;
  for (int64_t begin = 0; begin < count; begin += kStage) {
    const int n = static_cast<int>(min(int64_t(kStage), count - begin));
    __syncthreads();  // the previous stage has been read by every thread
    for (int i = threadIdx.x; i < n; i += kHypothesisTile) {
      const int64_t m = offset + begin + i;
      staged[0][i] = x1[2 * m];
      staged[1][i] = x1[2 * m + 1];
      staged[2][i] = x2[2 * m];
      staged[3][i] = x2[2 * m + 1];
    }
    __syncthreads();
    for (int i = 0; i < n; ++i)
      found += sampson_squared(f, staged[0][i], staged[1][i], staged[2][i], staged[3][i]) <= limit;
  }
  if (active) reinterpret_cast<int64_t*>(a.inliers)[p * a.hypotheses + h] = found;
}

// launch(tag, blocks) with the float type of dtype; nothing when there are no blocks.
template <typename Launch>
void launch_epipolar(int dtype, int64_t blocks, const char* what, Launch&& launch) {
  if (blocks == 0) return;
  check_blocks(blocks, what);
  dispatch_epipolar_dtype(dtype, [&](auto* tag) { launch(tag, static_cast<unsigned>(blocks)); });
}

}  // namespace

void sampson_distance_forward_cuda(const EpipolarArgs& args, uintptr_t stream) {
  const int64_t blocks = (args.max_count + kThreads - 1) / kThreads;
  launch_epipolar(args.dtype, args.pairs * blocks, "sampson_distance", [&](auto* tag, unsigned grid) {
    using A = std::remove_pointer_t<decltype(tag)>;
    launch_kernel("sampson_distance_forward", sampson_distance_forward_kernel<A>, grid, kThreads,
                  as_stream(stream), args, blocks);
  });
}

void sampson_distance_backward_cuda(const EpipolarArgs& args, uintptr_t stream) {
  launch_epipolar(args.dtype, args.pairs * args.chunks, "sampson_distance", [&](auto* tag, unsigned grid) {
    using A = std::remove_pointer_t<decltype(tag)>;
    launch_kernel("sampson_distance_backward", sampson_distance_backward_kernel<A>, grid, kThreads,
                  as_stream(stream), args);
  });
}

void ransac_inlier_count_cuda(const EpipolarArgs& args, uintptr_t stream) {
  const int64_t tiles = (args.hypotheses + kHypothesisTile - 1) / kHypothesisTile;
  launch_epipolar(args.dtype, args.pairs * tiles, "ransac_inlier_count", [&](auto* tag, unsigned grid) {
    using A = std::remove_pointer_t<decltype(tag)>;
    launch_kernel("ransac_inlier_count", ransac_inlier_count_kernel<A>, grid, kHypothesisTile, as_stream(stream),
                  args, tiles);
  });
}

}  // namespace vgpa

// CUDA kernels of the paired Diffusion-DPO loss; the per-element math is in diffusion_dpo_loss.h.
#include <cuda_runtime.h>

#include "cuda_utils.cuh"
#include "diffusion_dpo_loss.h"

namespace vgpa {

namespace {

constexpr int kThreads = 256;

// One block reduces one chunk of one (sample, segment) into one partial; the block reduction
// runs in a fixed order, so the sums are bitwise reproducible.
template <typename T>
__global__ void __launch_bounds__(kThreads) diffusion_dpo_loss_forward_kernel(DiffusionDPOLossArgs args) {
  using A = typename Acc<T>::type;
  const T* model = reinterpret_cast<const T*>(args.ptr[0]);
  const T* ref = reinterpret_cast<const T*>(args.ptr[1]);
  const T* target = reinterpret_cast<const T*>(args.ptr[2]);
  const A* weight = reinterpret_cast<const A*>(args.ptr[3]);
  A* partials = reinterpret_cast<A*>(args.ptr[4]);
  const int64_t chunk = blockIdx.x, ns = blockIdx.y;
  int64_t n, f0, count;
  args.shape.span(ns, n, f0, count);
  const int64_t begin = chunk * args.chunk;
  const int64_t end = min(begin + args.chunk, count);

  DpoPartial<A> acc;
  for (int64_t e = begin + threadIdx.x; e < end; e += kThreads) {
    SegmentCursor cur;
    cur.seek(args.shape, f0, e);
    const A w = weight ? weight[cur.offset(args.strides[3], n)] : A(1);
    acc.add(load_as<A>(model + cur.offset(args.strides[0], n)), load_as<A>(ref + cur.offset(args.strides[1], n)),
            load_as<A>(target + cur.offset(args.strides[2], n)), w);
  }
  acc.model = block_sum<kThreads>(acc.model);
  acc.ref = block_sum<kThreads>(acc.ref);
  acc.weight = block_sum<kThreads>(acc.weight);
  if (threadIdx.x == 0) {
    A* out = partials + (ns * args.chunks + chunk) * 3;
    out[0] = acc.model;
    out[1] = acc.ref;
    out[2] = acc.weight;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) diffusion_dpo_loss_backward_kernel(DiffusionDPOLossArgs args) {
  using A = typename Acc<T>::type;
  const T* model = reinterpret_cast<const T*>(args.ptr[0]);
  T* grad = reinterpret_cast<T*>(args.ptr[1]);
  const T* target = reinterpret_cast<const T*>(args.ptr[2]);
  const A* weight = reinterpret_cast<const A*>(args.ptr[3]);
  const A* scale = reinterpret_cast<const A*>(args.ptr[4]);
  const int64_t ns = blockIdx.y;
  int64_t n, f0, count;
  args.shape.span(ns, n, f0, count);
  const A s = scale[ns];
  const int64_t stride = int64_t(gridDim.x) * kThreads;
  for (int64_t e = int64_t(blockIdx.x) * kThreads + threadIdx.x; e < count; e += stride) {
    SegmentCursor cur;
    cur.seek(args.shape, f0, e);
    const A w = weight ? weight[cur.offset(args.strides[3], n)] : A(1);
    const A g = dpo_grad(s, load_as<A>(model + cur.offset(args.strides[0], n)),
                         load_as<A>(target + cur.offset(args.strides[2], n)), w);
    store_from(grad + cur.offset(args.strides[1], n), g);
  }
}

}  // namespace

void diffusion_dpo_loss_forward_cuda(const DiffusionDPOLossArgs& args, uintptr_t stream) {
  const int64_t rows = args.samples * args.shape.segments;
  check_grid_y(rows, "diffusion_dpo_loss");
  const dim3 grid(static_cast<unsigned>(args.chunks), static_cast<unsigned>(rows));
  dispatch_dtype(args.dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    diffusion_dpo_loss_forward_kernel<T><<<grid, kThreads, 0, reinterpret_cast<cudaStream_t>(stream)>>>(args);
  });
  check_launch("diffusion_dpo_loss_forward");
}

void diffusion_dpo_loss_backward_cuda(const DiffusionDPOLossArgs& args, uintptr_t stream) {
  const int64_t rows = args.samples * args.shape.segments;
  check_grid_y(rows, "diffusion_dpo_loss");
  const int64_t blocks = (args.shape.longest_segment() + kThreads - 1) / kThreads;
  const dim3 grid(static_cast<unsigned>(blocks < 65535 ? blocks : 65535), static_cast<unsigned>(rows));
  dispatch_dtype(args.dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    diffusion_dpo_loss_backward_kernel<T><<<grid, kThreads, 0, reinterpret_cast<cudaStream_t>(stream)>>>(args);
  });
  check_launch("diffusion_dpo_loss_backward");
}

}  // namespace vgpa

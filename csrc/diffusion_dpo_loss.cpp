// C++ CPU twin of the CUDA kernels in diffusion_dpo_loss.cu (OpenMP over chunks).
#include "diffusion_dpo_loss.h"

namespace vgpa {

namespace {

template <typename T>
void forward(const DiffusionDPOLossArgs& args) {
  using A = typename Acc<T>::type;
  const T* model = reinterpret_cast<const T*>(args.ptr[0]);
  const T* ref = reinterpret_cast<const T*>(args.ptr[1]);
  const T* target = reinterpret_cast<const T*>(args.ptr[2]);
  const A* weight = reinterpret_cast<const A*>(args.ptr[3]);
  A* partials = reinterpret_cast<A*>(args.ptr[4]);
  const SegmentedShape& shape = args.shape;
  const int64_t rows = args.samples * shape.segments, jobs = rows * args.chunks;

#pragma omp parallel for schedule(static)
  for (int64_t job = 0; job < jobs; ++job) {
    const int64_t ns = job / args.chunks, chunk = job % args.chunks;
    int64_t n, f0, count;
    shape.span(ns, n, f0, count);
    const int64_t begin = chunk * args.chunk;
    const int64_t end = begin + args.chunk < count ? begin + args.chunk : count;
    DpoPartial<A> acc;
    if (begin < end) {
      SegmentCursor cur;
      cur.seek(shape, f0, begin);
      for (int64_t e = begin; e < end; ++e, cur.next(shape)) {
        const A w = weight ? weight[cur.offset(args.strides[3], n)] : A(1);
        acc.add(load_as<A>(model + cur.offset(args.strides[0], n)), load_as<A>(ref + cur.offset(args.strides[1], n)),
                load_as<A>(target + cur.offset(args.strides[2], n)), w);
      }
    }
    A* out = partials + job * 3;
    out[0] = acc.model;
    out[1] = acc.ref;
    out[2] = acc.weight;
  }
}

template <typename T>
void backward(const DiffusionDPOLossArgs& args) {
  using A = typename Acc<T>::type;
  const T* model = reinterpret_cast<const T*>(args.ptr[0]);
  T* grad = reinterpret_cast<T*>(args.ptr[1]);
  const T* target = reinterpret_cast<const T*>(args.ptr[2]);
  const A* weight = reinterpret_cast<const A*>(args.ptr[3]);
  const A* scale = reinterpret_cast<const A*>(args.ptr[4]);
  const SegmentedShape& shape = args.shape;
  const int64_t block = 16384;
  const int64_t blocks = (shape.longest_segment() + block - 1) / block;
  const int64_t jobs = args.samples * shape.segments * blocks;

#pragma omp parallel for schedule(static)
  for (int64_t job = 0; job < jobs; ++job) {
    const int64_t ns = job / blocks, begin = (job % blocks) * block;
    int64_t n, f0, count;
    shape.span(ns, n, f0, count);
    const int64_t end = begin + block < count ? begin + block : count;
    if (begin >= end) continue;
    const A s = scale[ns];
    SegmentCursor cur;
    cur.seek(shape, f0, begin);
    for (int64_t e = begin; e < end; ++e, cur.next(shape)) {
      const A w = weight ? weight[cur.offset(args.strides[3], n)] : A(1);
      const A g = dpo_grad(s, load_as<A>(model + cur.offset(args.strides[0], n)),
                           load_as<A>(target + cur.offset(args.strides[2], n)), w);
      store_from(grad + cur.offset(args.strides[1], n), g);
    }
  }
}

}  // namespace

void diffusion_dpo_loss_forward_cpu(const DiffusionDPOLossArgs& args) {
  dispatch_dtype(args.dtype, [&](auto* tag) { forward<std::remove_pointer_t<decltype(tag)>>(args); });
}

void diffusion_dpo_loss_backward_cpu(const DiffusionDPOLossArgs& args) {
  dispatch_dtype(args.dtype, [&](auto* tag) { backward<std::remove_pointer_t<decltype(tag)>>(args); });
}

}  // namespace vgpa

// C++ CPU twin of the CUDA kernels in normal_stability.cu (OpenMP). Every sum has a fixed
// order, so every result, the gradients included, is bitwise reproducible.
#include <type_traits>

#include "normal_stability.h"

namespace vgpa {

namespace {

template <typename T>
void normals(const NormalStabilityArgs& a) {
  using A = typename Acc<T>::type;
  const int64_t rows = a.batch * a.frames * a.height;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t x = 0; x < a.width; ++x) depth_to_normals_pixel<T, A>(a, r / a.height, r % a.height, x);
}

template <typename T>
void normals_backward(const NormalStabilityArgs& a) {
  using A = typename Acc<T>::type;
  const int64_t rows = a.batch * a.frames * a.height;
  A* grad_depth = reinterpret_cast<A*>(a.grad_depth);
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t frame = r / a.height, y = r % a.height;
    for (int64_t x = 0; x < a.width; ++x)
      grad_depth[r * a.width + x] =
          depth_to_normals_grad_pixel<T, A>(a, frame / a.frames, frame % a.frames, x, y);
  }
}

template <typename T>
void forward(const NormalStabilityArgs& a) {
  using A = typename Acc<T>::type;
  const int64_t rows = a.batch * a.pairs, jobs = rows * a.chunks, pixels = a.pixels();
  const int64_t* pair_frames = reinterpret_cast<const int64_t*>(a.pair_frames);
  A* partials = reinterpret_cast<A*>(a.partials);
  A* error_map = reinterpret_cast<A*>(a.error_map);
  uint8_t* valid_mask = reinterpret_cast<uint8_t*>(a.valid_mask);

#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t job = 0; job < jobs; ++job) {
    const int64_t row = job / a.chunks, begin = (job % a.chunks) * a.chunk;
    const int64_t end = begin + a.chunk < pixels ? begin + a.chunk : pixels;
    const int64_t b = row / a.pairs, p = row % a.pairs;
    const int64_t i = pair_frames[2 * p], j = pair_frames[2 * p + 1];
    const A* rot = reinterpret_cast<const A*>(a.rotations) + row * 9;
    const A* pm = reinterpret_cast<const A*>(a.pair_matrices) + row * 12;
    A sum = 0, count = 0;
    NormalPairPixel<A> px;
    for (int64_t e = begin; e < end; ++e) {
      const bool valid = normal_stability_pixel<T, A>(a, b, i, j, rot, pm, e / a.width, e % a.width, px);
      if (valid) {
        sum += px.error;
        count += A(1);
      }
      if (error_map) {
        error_map[row * pixels + e] = valid ? px.error : A(0);
        valid_mask[row * pixels + e] = valid;
      }
    }
    partials[job * 2] = sum;
    partials[job * 2 + 1] = count;
  }
}

// d loss / d normal of every frame. Each thread owns whole frames and visits, in a fixed order,
// every pair that has its frame as source or target: no two threads write one element.
template <typename T>
void backward(const NormalStabilityArgs& a) {
  using A = typename Acc<T>::type;
  const int64_t pixels = a.pixels(), frames_total = a.batch * a.frames;
  const int64_t* pair_frames = reinterpret_cast<const int64_t*>(a.pair_frames);
  const A* grad_error = reinterpret_cast<const A*>(a.grad_error);
  const A* grad_map = reinterpret_cast<const A*>(a.grad_map);

#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t frame = 0; frame < frames_total; ++frame) {
    const int64_t b = frame / a.frames, t = frame % a.frames;
    A* out = reinterpret_cast<A*>(a.grad_normals) + frame * 3 * pixels;
    NormalPairPixel<A> px;
    for (int64_t p = 0; p < a.pairs; ++p) {
      const int64_t i = pair_frames[2 * p], j = pair_frames[2 * p + 1];
      if (i != t && j != t) continue;
      const int64_t row = b * a.pairs + p;
      const A* rot = reinterpret_cast<const A*>(a.rotations) + row * 9;
      const A* pm = reinterpret_cast<const A*>(a.pair_matrices) + row * 12;
      for (int64_t e = 0; e < pixels; ++e) {
        const A g = grad_error[row] + (grad_map ? grad_map[row * pixels + e] : A(0));
        if (g == A(0)) continue;
        if (!normal_stability_pixel<T, A>(a, b, i, j, rot, pm, e / a.width, e % a.width, px)) continue;
        Vec3<A> gs, gt;
        normal_stability_pixel_grad(a, rot, px, g, gs, gt);
        if (i == t) {
          out[e] += gs.x;
          out[pixels + e] += gs.y;
          out[2 * pixels + e] += gs.z;
        }
        if (j == t) {
          const int64_t q = px.qy * a.width + px.qx;
          out[q] += gt.x;
          out[pixels + q] += gt.y;
          out[2 * pixels + q] += gt.z;
        }
      }
    }
  }
}

}  // namespace

void depth_to_normals_cpu(const NormalStabilityArgs& args) {
  dispatch_dtype(args.dtype, [&](auto* tag) { normals<std::remove_pointer_t<decltype(tag)>>(args); });
}

void depth_to_normals_backward_cpu(const NormalStabilityArgs& args) {
  dispatch_dtype(args.dtype, [&](auto* tag) { normals_backward<std::remove_pointer_t<decltype(tag)>>(args); });
}

void normal_stability_forward_cpu(const NormalStabilityArgs& args) {
  dispatch_dtype(args.dtype, [&](auto* tag) { forward<std::remove_pointer_t<decltype(tag)>>(args); });
}

void normal_stability_backward_cpu(const NormalStabilityArgs& args) {
  dispatch_dtype(args.dtype, [&](auto* tag) { backward<std::remove_pointer_t<decltype(tag)>>(args); });
}

}  // namespace vgpa

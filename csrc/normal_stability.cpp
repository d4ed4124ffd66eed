// C++ CPU twin of the CUDA kernels in normal_stability.cu (OpenMP). Every sum has a fixed
// order, so every result, the gradients included, is bitwise reproducible.
#include <type_traits>
#include <vector>

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

// Two passes: each pixel's normal is pulled back once into a, b = d loss / d d_u, d loss / d d_v
// (6 values a pixel), then every depth pixel gathers from its four neighbours' entries. The
// recomputing gather of the GPU builds each normal four times, which costs more than the
// buffer on a CPU. Results are bitwise those of depth_to_normals_grad_pixel.
template <typename T>
void normals_backward(const NormalStabilityArgs& a) {
  using A = typename Acc<T>::type;
  const int64_t rows = a.batch * a.frames * a.height, width = a.width;
  std::vector<A> grads(static_cast<size_t>(rows * width * 6));
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t frame = r / a.height, y = r % a.height;
    for (int64_t x = 0; x < width; ++x) {
      Vec3<A> da, db;
      normal_difference_grads<T, A>(a, frame / a.frames, frame % a.frames, x, y, da, db);
      A* out = grads.data() + (r * width + x) * 6;
      out[0] = da.x, out[1] = da.y, out[2] = da.z, out[3] = db.x, out[4] = db.y, out[5] = db.z;
    }
  }
  A* grad_depth = reinterpret_cast<A*>(a.grad_depth);
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t frame = r / a.height, y = r % a.height;
    const A* frame_grads = grads.data() + frame * a.pixels() * 6;
    for (int64_t x = 0; x < width; ++x)
      grad_depth[r * width + x] =
          gather_depth_grad<A>(a, frame, x, y, [&](int64_t nx, int64_t ny, Vec3<A>& da, Vec3<A>& db) {
            const A* in = frame_grads + (ny * width + nx) * 6;
            da = {in[0], in[1], in[2]};
            db = {in[3], in[4], in[5]};
          });
  }
}

template <typename T>
void forward(const NormalStabilityArgs& a) {
  using A = typename Acc<T>::type;
  const int64_t jobs = a.batch * a.pairs * a.chunks, pixels = a.pixels();
  A* partials = reinterpret_cast<A*>(a.partials);

#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t job = 0; job < jobs; ++job) {
    const PairChunk c = PairChunk::at(job, a.chunks, a.chunk, a.pairs, pixels,
                                      reinterpret_cast<const int64_t*>(a.pair_frames));
    const A* rot = reinterpret_cast<const A*>(a.rotations) + c.pair.row * 9;
    const A* pm = reinterpret_cast<const A*>(a.pair_matrices) + c.pair.row * 12;
    NormalPairPixel<A> px;
    A sum, count;
    score_chunk(c, 0, 1, pixels, reinterpret_cast<A*>(a.error_map), reinterpret_cast<uint8_t*>(a.valid_mask),
                [&](int64_t e, A& error) {
                  const bool valid = normal_stability_pixel<T, A>(a, c.pair.b, c.pair.i, c.pair.j, rot, pm,
                                                                  e / a.width, e % a.width, px);
                  error = valid ? px.error : A(0);
                  return valid;
                }, sum, count);
    partials[job * 2] = sum;  // locals, not the buffer: the loop keeps them in registers
    partials[job * 2 + 1] = count;
  }
}

// d loss / d normal of every frame. Each thread owns whole frames and visits, in a fixed order,
// every pair that has its frame as source or target: no two threads write one element.
template <typename T>
void backward(const NormalStabilityArgs& a) {
  using A = typename Acc<T>::type;
  const int64_t pixels = a.pixels(), frames_total = a.batch * a.frames;

#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t frame = 0; frame < frames_total; ++frame) {
    const int64_t b = frame / a.frames, t = frame % a.frames;
    A* out = reinterpret_cast<A*>(a.grad_normals) + frame * 3 * pixels;
    NormalPairPixel<A> px;
    for_each_pixel_touching_frame(
        b, t, a.pairs, pixels, reinterpret_cast<const int64_t*>(a.pair_frames),
        reinterpret_cast<const A*>(a.grad_error), reinterpret_cast<const A*>(a.grad_map),
        [&](const PairRow& pair, int64_t e, A g) {
          const A* rot = reinterpret_cast<const A*>(a.rotations) + pair.row * 9;
          const A* pm = reinterpret_cast<const A*>(a.pair_matrices) + pair.row * 12;
          if (!normal_stability_pixel<T, A>(a, b, pair.i, pair.j, rot, pm, e / a.width, e % a.width, px)) return;
          Vec3<A> gs, gt;
          normal_stability_pixel_grad(a, rot, px, g, gs, gt);
          if (pair.i == t) {
            out[e] += gs.x;
            out[pixels + e] += gs.y;
            out[2 * pixels + e] += gs.z;
          }
          if (pair.j == t) {
            const int64_t q = px.qy * a.width + px.qx;
            out[q] += gt.x;
            out[pixels + q] += gt.y;
            out[2 * pixels + q] += gt.z;
          }
        });
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

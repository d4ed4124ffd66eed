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

// What one (row, pixel) of the backward adds: d loss / d n_i(p) at the source pixel and
// d loss / d n_j(q) at the target pixel q; q = -1 when the pixel adds nothing (no upstream
// gradient or not valid).
template <typename A>
struct PairPixelGrad {
  Vec3<A> source, target;
  int64_t q;
};

// Work items (row, pixel) scored per group, in the order item = row * pixels + e: a bounded
// buffer (about 2 MB for float32) that the gradients of a group pass through. A thread scores
// a block of consecutive items at a time, stepping through rows without a division per item.
constexpr int64_t kBackwardGroup = int64_t(1) << 16;
constexpr int64_t kBackwardBlock = 256;

// d loss / d normal of every frame, in groups of consecutive items. First every item of the
// group is scored once (a row touches two frames; scoring it per frame did the work twice),
// then replay_group_by_frame lets each thread add the group's results into the frames it owns,
// rows and pixels ascending, source before target: every element receives its additions in one
// fixed order whatever the thread count, and no two threads write one element.
template <typename T>
void backward(const NormalStabilityArgs& a) {
  using A = typename Acc<T>::type;
  const int64_t pixels = a.pixels(), frames_total = a.batch * a.frames, items = a.batch * a.pairs * pixels;
  const int64_t* pair_frames = reinterpret_cast<const int64_t*>(a.pair_frames);
  const A* grad_error = reinterpret_cast<const A*>(a.grad_error);
  const A* grad_map = reinterpret_cast<const A*>(a.grad_map);
  std::vector<PairPixelGrad<A>> buffer(static_cast<size_t>(items < kBackwardGroup ? items : kBackwardGroup));

  for (int64_t begin = 0; begin < items; begin += kBackwardGroup) {
    const int64_t end = begin + kBackwardGroup < items ? begin + kBackwardGroup : items;
    const int64_t blocks = (end - begin + kBackwardBlock - 1) / kBackwardBlock;
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t block = 0; block < blocks; ++block) {
      const int64_t first = begin + block * kBackwardBlock;
      const int64_t last = first + kBackwardBlock < end ? first + kBackwardBlock : end;
      PairRow pair = PairRow::at(first / pixels, a.pairs, pair_frames);
      NormalPairPixel<A> px;
      for (int64_t item = first, e = first % pixels; item < last; ++item, ++e) {
        if (e == pixels) {
          e = 0;
          pair = PairRow::at(pair.row + 1, a.pairs, pair_frames);
        }
        PairPixelGrad<A>& out = buffer[item - begin];
        out.q = -1;
        const A g = pixel_grad(grad_error, grad_map, pair.row, pixels, e);
        if (g == A(0)) continue;
        const A* rot = reinterpret_cast<const A*>(a.rotations) + pair.row * 9;
        const A* pm = reinterpret_cast<const A*>(a.pair_matrices) + pair.row * 12;
        if (!normal_stability_pixel<T, A>(a, pair.b, pair.i, pair.j, rot, pm, e / a.width, e % a.width, px)) continue;
        normal_stability_pixel_grad(a, rot, px, g, out.source, out.target);
        out.q = px.qy * a.width + px.qx;
      }
    }
    replay_group_by_frame(begin, end, a.frames, frames_total, a.pairs, pixels, pair_frames,
                          [&](int64_t frame, int64_t t, const PairRow& pair, int64_t first, int64_t last) {
      A* out = reinterpret_cast<A*>(a.grad_normals) + frame * 3 * pixels;
      for (int64_t item = first; item < last; ++item) {
        const PairPixelGrad<A>& in = buffer[item - begin];
        if (in.q < 0) continue;
        if (pair.i == t) {
          const int64_t e = item - pair.row * pixels;
          out[e] += in.source.x;
          out[pixels + e] += in.source.y;
          out[2 * pixels + e] += in.source.z;
        }
        if (pair.j == t) {
          out[in.q] += in.target.x;
          out[pixels + in.q] += in.target.y;
          out[2 * pixels + in.q] += in.target.z;
        }
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

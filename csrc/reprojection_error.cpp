// C++ CPU twin of the CUDA kernels in reprojection_error.cu (OpenMP).
#include "reprojection_error.h"

namespace vgpa {

namespace {

template <typename T>
void forward(const ReprojectionErrorArgs& a) {
  using A = typename Acc<T>::type;
  const int64_t jobs = a.batch * a.pairs * a.chunks, pixels = a.pixels();
  A* partials = reinterpret_cast<A*>(a.partials);

  // One job = one fixed chunk of one (video, pair): the partials do not depend on threading.
#pragma omp parallel for schedule(static)
  for (int64_t job = 0; job < jobs; ++job) {
    const PairChunk c = PairChunk::at(job, a.chunks, a.chunk, a.pairs, pixels,
                                      reinterpret_cast<const int64_t*>(a.pair_frames));
    const A* pm = reinterpret_cast<const A*>(a.pair_matrices) + c.pair.row * 12;
    ReprojectedPixel<A> px;
    A sum, count;
    score_chunk(c, 0, 1, pixels, reinterpret_cast<A*>(a.error_map), reinterpret_cast<uint8_t*>(a.valid_mask),
                [&](int64_t e, A& error) {
                  const bool valid = reproject_pixel<T, A>(a, c.pair.b, c.pair.i, c.pair.j, pm, e / a.width,
                                                           e % a.width, px);
                  error = valid ? px.error : A(0);
                  return valid;
                }, sum, count);
    partials[job * 2] = sum;  // locals, not the buffer: the loop keeps them in registers
    partials[job * 2 + 1] = count;
  }
}

// Adds only into the frame that this thread owns, so no two threads write one element and
// every element is summed in a fixed order (pairs ascending, pixels ascending).
template <typename A>
struct OwnedFrameSink {
  const ReprojectionErrorArgs& a;
  int64_t owner;  // frame index t inside video b
  A* depth_grad;  // frame (b, owner) of grad_depth, or nullptr
  A* image_grad;  // frame (b, owner) of grad_image, or nullptr

  bool wants_depth() const { return depth_grad != nullptr; }
  bool wants_image() const { return image_grad != nullptr; }
  void depth(int64_t t, int64_t y, int64_t x, A v) {
    if (t == owner) depth_grad[y * a.width + x] += v;
  }
  void image(int64_t t, int64_t c, int64_t y, int64_t x, A v) {
    if (t == owner) image_grad[(c * a.height + y) * a.width + x] += v;
  }
};

template <typename T>
void backward(const ReprojectionErrorArgs& a) {
  using A = typename Acc<T>::type;
  const int64_t pixels = a.pixels(), frames_total = a.batch * a.frames;
  const A* pair_matrices = reinterpret_cast<const A*>(a.pair_matrices);
  A* grad_depth = reinterpret_cast<A*>(a.grad_depth);
  A* grad_image = reinterpret_cast<A*>(a.grad_image);

  // Deterministic: each thread owns whole frames of the gradient and visits every pair that
  // touches its frame (as source or as target), recomputing the warp.
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t frame = 0; frame < frames_total; ++frame) {
    const int64_t b = frame / a.frames, t = frame % a.frames;
    OwnedFrameSink<A> sink{a, t, grad_depth ? grad_depth + frame * pixels : nullptr,
                           grad_image ? grad_image + frame * a.channels * pixels : nullptr};
    ReprojectedPixel<A> px;
    for_each_pixel_touching_frame(
        b, t, a.pairs, pixels, reinterpret_cast<const int64_t*>(a.pair_frames),
        reinterpret_cast<const A*>(a.grad_error), reinterpret_cast<const A*>(a.grad_map),
        [&](const PairRow& pair, int64_t e, A g) {
          const int64_t y = e / a.width, x = e % a.width;
          if (reproject_pixel<T, A>(a, b, pair.i, pair.j, pair_matrices + pair.row * 12, y, x, px))
            reproject_pixel_backward<T, A>(a, b, pair.i, pair.j, y, x, px, g, sink);
        });
  }
}

template <typename T>
void unproject(const UnprojectDepthArgs& a) {
  using A = typename Acc<T>::type;
  const int64_t rows = a.frames_total * a.height;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t x = 0; x < a.width; ++x) unproject_depth_pixel<T, A>(a, r / a.height, r % a.height, x);
}

}  // namespace

void reprojection_error_forward_cpu(const ReprojectionErrorArgs& args) {
  dispatch_dtype(args.dtype, [&](auto* tag) { forward<std::remove_pointer_t<decltype(tag)>>(args); });
}

void reprojection_error_backward_cpu(const ReprojectionErrorArgs& args) {
  dispatch_dtype(args.dtype, [&](auto* tag) { backward<std::remove_pointer_t<decltype(tag)>>(args); });
}

void unproject_depth_cpu(const UnprojectDepthArgs& args) {
  dispatch_dtype(args.dtype, [&](auto* tag) { unproject<std::remove_pointer_t<decltype(tag)>>(args); });
}

}  // namespace vgpa

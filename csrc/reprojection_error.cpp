// C++ CPU twin of the CUDA kernels in reprojection_error.cu (OpenMP).
#include <type_traits>
#include <vector>

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
    score_chunk_rows(c, a.width, pixels, reinterpret_cast<A*>(a.error_map), reinterpret_cast<uint8_t*>(a.valid_mask),
                [&](int64_t, int64_t y, int64_t x, A& error) {
                  const bool valid = reproject_pixel<T, A>(a, c.pair.b, c.pair.i, c.pair.j, pm, y, x, px);
                  error = valid ? px.error : A(0);
                  return valid;
                }, sum, count);
    partials[job * 2] = sum;  // locals, not the buffer: the loop keeps them in registers
    partials[job * 2 + 1] = count;
  }
}

// One addition of the backward: value into element where >> 2 of the pair's source (bit 0
// clear) or target (bit 0 set) frame, of the depth (bit 1 clear) or image (bit 1 set) gradient.
template <typename A>
struct GradRecord {
  int64_t where;
  A value;
};

// Records the additions of one (pair, pixel) in the order reproject_pixel_backward makes them.
template <typename A>
struct RecordingSink {
  const ReprojectionErrorArgs& a;
  int64_t source;  // the pair's source frame i
  bool depth_wanted, image_wanted;
  GradRecord<A>* out;
  int count;

  bool wants_depth() const { return depth_wanted; }
  bool wants_image() const { return image_wanted; }
  void depth(int64_t t, int64_t y, int64_t x, A v) {
    out[count++] = {(y * a.width + x) << 2 | (t == source ? 0 : 1), v};
  }
  void image(int64_t t, int64_t c, int64_t y, int64_t x, A v) {
    out[count++] = {((c * a.height + y) * a.width + x) << 2 | 2 | (t == source ? 0 : 1), v};
  }
};

// Work items (row, pixel), item = row * pixels + e, are scored in groups into a bounded buffer
// of records (about 1 MB); a thread scores a block of consecutive items at a time, stepping
// through rows and columns without a division per item.
constexpr int64_t kBackwardRecords = int64_t(1) << 16;
constexpr int64_t kBackwardBlock = 256;

// Two passes per group, as in normal_stability.cpp: every item is scored once (a pair touches
// two frames; scoring it per frame did the work twice) and its additions recorded; then
// replay_group_by_frame lets each thread replay the group's records into the frames it owns,
// rows and pixels ascending, each pixel's records in their order. Every element receives its
// additions in one fixed order whatever the thread count, and no two threads write one element.
template <typename T>
void backward(const ReprojectionErrorArgs& a) {
  using A = typename Acc<T>::type;
  const int64_t pixels = a.pixels(), frames_total = a.batch * a.frames, items = a.batch * a.pairs * pixels;
  const bool photometric = a.error == static_cast<int>(ReprojectionErrorKind::Photometric);
  const int64_t per_item = photometric ? 5 * a.channels + 1 : 5;  // most additions of one pixel
  int64_t group = kBackwardRecords / per_item / kBackwardBlock * kBackwardBlock;
  group = group > kBackwardBlock ? group : kBackwardBlock;
  group = group < items ? group : items;
  const A* pair_matrices = reinterpret_cast<const A*>(a.pair_matrices);
  const int64_t* pair_frames = reinterpret_cast<const int64_t*>(a.pair_frames);
  const A* grad_error = reinterpret_cast<const A*>(a.grad_error);
  const A* grad_map = reinterpret_cast<const A*>(a.grad_map);
  A* grad_depth = reinterpret_cast<A*>(a.grad_depth);
  A* grad_image = reinterpret_cast<A*>(a.grad_image);
  std::vector<GradRecord<A>> records(static_cast<size_t>(group * per_item));
  std::vector<int> counts(static_cast<size_t>(group));

  for (int64_t begin = 0; begin < items; begin += group) {
    const int64_t end = begin + group < items ? begin + group : items;
    const int64_t blocks = (end - begin + kBackwardBlock - 1) / kBackwardBlock;
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t block = 0; block < blocks; ++block) {
      const int64_t first = begin + block * kBackwardBlock;
      const int64_t last = first + kBackwardBlock < end ? first + kBackwardBlock : end;
      PairRow pair = PairRow::at(first / pixels, a.pairs, pair_frames);
      int64_t e = first % pixels, y = e / a.width, x = e % a.width;
      ReprojectedPixel<A> px;
      for (int64_t item = first; item < last; ++item) {
        if (e == pixels) {
          e = y = x = 0;
          pair = PairRow::at(pair.row + 1, a.pairs, pair_frames);
        }
        RecordingSink<A> sink{a, pair.i, grad_depth != nullptr, grad_image != nullptr,
                              records.data() + (item - begin) * per_item, 0};
        const A g = pixel_grad(grad_error, grad_map, pair.row, pixels, e);
        if (g != A(0) && reproject_pixel<T, A>(a, pair.b, pair.i, pair.j, pair_matrices + pair.row * 12, y, x, px))
          reproject_pixel_backward<T, A>(a, pair.b, pair.i, pair.j, y, x, px, g, sink);
        counts[item - begin] = sink.count;
        ++e;
        if (++x == a.width) {
          x = 0;
          ++y;
        }
      }
    }
    replay_group_by_frame(begin, end, a.frames, frames_total, a.pairs, pixels, pair_frames,
                          [&](int64_t frame, int64_t t, const PairRow& pair, int64_t first, int64_t last) {
      A* depth_out = grad_depth ? grad_depth + frame * pixels : nullptr;
      A* image_out = grad_image ? grad_image + frame * a.channels * pixels : nullptr;
      // Bit 0 of a record picks the frame: keep the records whose frame is t.
      const int keep = (pair.i == t ? 1 : 0) | (pair.j == t ? 2 : 0);
      for (int64_t item = first; item < last; ++item) {
        const GradRecord<A>* in = records.data() + (item - begin) * per_item;
        for (int r = 0, n = counts[item - begin]; r < n; ++r) {
          if (!((keep >> (in[r].where & 1)) & 1)) continue;
          A* out = (in[r].where & 2) ? image_out : depth_out;
          out[in[r].where >> 2] += in[r].value;
        }
      }
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

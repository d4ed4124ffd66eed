// C++ CPU twin of the CUDA kernels in reprojection_error.cu (OpenMP).
#include <climits>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "reprojection_error.h"

namespace vgpa {

namespace {

// Pixels of one lane loop (a multiple of kSimdLanes): one pair, consecutive pixels of a chunk.
constexpr int kBlock = 64;

// Structure-of-arrays state of one block of pixels.
template <typename A>
struct BlockLanes {
  A x[kBlock], y[kBlock], z[kBlock];  // source pixel and depth
  A warped[kBlock], sampled[kBlock], u[kBlock], v[kBlock], error[kBlock];
  int64_t source[kBlock];             // source depth offsets (strided depth)
  int32_t ok[kBlock];                  // bool (a bool array does not vectorise)
  // Kept for the backward only (warp_block<Strict, true>).
  A ddepth_dz[kBlock], du_dz[kBlock], dv_dz[kBlock], wx[kBlock], wy[kBlock];
  A weight[4][kBlock], tap[4][kBlock];
  int64_t tap0[kBlock];   // element y0 * width + x0 of a contiguous frame
  int32_t used[kBlock];   // bit k: tap k used
};

// Per-launch constants of the lane loops; I: the tap offset type (int32_t for contiguous frames).
template <typename T, typename A, typename I>
struct BlockGeometry {
  A pm[12];  // a copy: stores to the lanes cannot alias it
  const T* target;  // depth frame j
  I sh, sw;         // depth row and column strides
  int64_t height, width;
  bool strict, occlusion;
  A occlusion_scale;
};

// Lanes [0, n) of the block: the source depths, pixel coordinates stepped from (x, y).
template <typename T, typename A>
VGPA_ALWAYS_INLINE void load_block(const T* source, int64_t sh, int64_t sw, bool contiguous, int64_t e, int64_t y,
                                   int64_t x, int64_t width, int n, BlockLanes<A>& L) {
  for (int l = 0; l < n; ++l) {
    L.x[l] = A(x);
    L.y[l] = A(y);
    L.source[l] = y * sh + x * sw;
    if (++x == width) {
      x = 0;
      ++y;
    }
  }
  for (int l = n; l < kBlock; ++l) {
    L.x[l] = L.y[l] = A(0);
    L.source[l] = 0;
  }
  if (contiguous && n == kBlock) {
    for (int l = 0; l < kBlock; ++l) L.z[l] = load_as<A>(source + e + l);
  } else {
    for (int l = 0; l < kBlock; ++l) L.z[l] = load_as<A>(source + L.source[l]);
  }
}

// reproject_pixel up to the sampled depth and the occlusion test, lane by lane with the same
// header functions: lanes past n, invalid pixels and unused taps read in-image addresses and
// are masked out afterwards.
// The validity flags are int32_t 0/1 combined with & and |: mixed bool masks do not vectorise.
template <bool Strict, bool Keep, typename T, typename A, typename I>
VGPA_ALWAYS_INLINE void warp_block(const BlockGeometry<T, A, I>& g, int n, BlockLanes<A>& L) {
  const I height = I(g.height), width = I(g.width), last_x = width - 1, last_y = height - 1;
  const T* target = g.target;
  for (int l = 0; l < kBlock; ++l) {
    const A z = L.z[l];
    int32_t ok = int32_t(l < n) & int32_t(depth_is_valid(z));
    const PixelWarp<A> w = warp_pixel(g.pm, L.x[l], L.y[l], ok ? z : A(1));
    ok &= int32_t(w.depth > A(0)) & int32_t(inside_image(w.u, w.v, g.height, g.width, Strict));
    const A u = ok ? w.u : A(0), v = ok ? w.v : A(0);
    I x0, y0;
    int32_t used[4];
    A wx, wy, weight[4];
    bilinear_taps(u, v, height, width, x0, y0, wx, wy, weight, used);
    const I x1 = x0 < last_x ? x0 + 1 : last_x, y1 = y0 < last_y ? y0 + 1 : last_y;
    const I offset[4] = {y0 * g.sh + x0 * g.sw, y0 * g.sh + x1 * g.sw, y1 * g.sh + x0 * g.sw, y1 * g.sh + x1 * g.sw};
    A tap[4];
    for (int k = 0; k < 4; ++k) {
      const A d = load_as<A>(target + offset[k]);
      tap[k] = used[k] ? d : A(0);
      if (Strict) ok &= ~used[k] | int32_t(depth_is_valid(d));
    }
    const A sampled = bilinear_value(weight, tap);
    ok &= ~(int32_t(g.occlusion) & int32_t(w.depth > g.occlusion_scale * sampled));
    L.warped[l] = w.depth;
    L.sampled[l] = sampled;
    L.u[l] = u;
    L.v[l] = v;
    L.ok[l] = ok;
    if (Keep) {
      L.ddepth_dz[l] = w.ddepth_dz;
      L.du_dz[l] = w.du_dz;
      L.dv_dz[l] = w.dv_dz;
      L.wx[l] = wx;
      L.wy[l] = wy;
      L.weight[0][l] = weight[0];
      L.weight[1][l] = weight[1];
      L.weight[2][l] = weight[2];
      L.weight[3][l] = weight[3];
      L.tap[0][l] = tap[0];
      L.tap[1][l] = tap[1];
      L.tap[2][l] = tap[2];
      L.tap[3][l] = tap[3];
      L.tap0[l] = int64_t(y0) * g.width + int64_t(x0);
      L.used[l] = used[0] | used[1] << 1 | used[2] << 2 | used[3] << 3;
    }
  }
}

// The depth error of every lane (0 and not ok where invalid or not finite).
template <int Kind, typename A>
VGPA_ALWAYS_INLINE void depth_error_block(BlockLanes<A>& L) {
  for (int l = 0; l < kBlock; ++l) {
    const A e = depth_error(Kind, L.warped[l], L.sampled[l]);
    const bool ok = L.ok[l] & (e - e == A(0));
    L.error[l] = ok ? e : A(0);
    L.ok[l] = int32_t(ok);
  }
}

template <typename T, typename A>
VGPA_ALWAYS_INLINE void photometric_error_block(const ReprojectionErrorArgs& a, const PairRow& pair,
                                                BlockLanes<A>& L) {
  for (int l = 0; l < kBlock; ++l) {
    bool ok = L.ok[l] != 0;
    A e = A(0);
    if (ok) {
      const BilinearTaps<A> taps = BilinearTaps<A>::at(L.u[l], L.v[l], a.height, a.width);
      e = photometric_error<T, A>(a, pair.b, pair.i, pair.j, taps, int64_t(L.y[l]), int64_t(L.x[l]));
      ok = e - e == A(0);
    }
    L.error[l] = ok ? e : A(0);
    L.ok[l] = int32_t(ok);
  }
}

template <typename T, typename A>
VGPA_ALWAYS_INLINE void error_block(const ReprojectionErrorArgs& a, const PairRow& pair, BlockLanes<A>& L) {
  switch (static_cast<ReprojectionErrorKind>(a.error)) {
    case ReprojectionErrorKind::AbsRel: depth_error_block<0>(L); break;
    case ReprojectionErrorKind::Abs: depth_error_block<1>(L); break;
    case ReprojectionErrorKind::Sq: depth_error_block<2>(L); break;
    case ReprojectionErrorKind::Log: depth_error_block<3>(L); break;
    default: photometric_error_block<T, A>(a, pair, L);
  }
}

// Scores the pixels [first, last) of one pair in blocks; block(e, n, lanes) gets each.
template <typename T, typename A, typename I, bool Keep = false, typename Visit>
VGPA_ALWAYS_INLINE void score_blocks(const ReprojectionErrorArgs& a, const PairRow& pair, int64_t first,
                                     int64_t last, Visit&& visit) {
  const T* source = depth_frame<T>(a, pair.b, pair.i);
  const int64_t sh = a.depth_strides[2], sw = a.depth_strides[3];
  const bool contiguous = sw == 1 && sh == a.width;
  BlockGeometry<T, A, I> g{{}, depth_frame<T>(a, pair.b, pair.j), I(sh), I(sw), a.height, a.width, a.strict,
                           a.occlusion, A(1.0 + a.occlusion_tol)};
  const A* pm = reinterpret_cast<const A*>(a.pair_matrices) + pair.row * 12;
  for (int k = 0; k < 12; ++k) g.pm[k] = pm[k];
  BlockLanes<A> L;
  for (int64_t e = first; e < last; e += kBlock) {
    const int n = int(last - e < kBlock ? last - e : kBlock);
    load_block<T, A>(source, sh, sw, contiguous, e, e / a.width, e % a.width, a.width, n, L);
    if (a.strict)
      warp_block<true, Keep>(g, n, L);
    else
      warp_block<false, Keep>(g, n, L);
    error_block<T, A>(a, pair, L);
    visit(e, n, L);
  }
}

// One forward job. Blocks start at the chunk's start plus a multiple of kBlock, so LaneSums
// puts every pixel in the lane of its position in the chunk, whatever the vector width.
template <typename T, typename I>
VGPA_ALWAYS_INLINE void forward_job(const ReprojectionErrorArgs& a, int64_t job) {
  using A = typename Acc<T>::type;
  const int64_t pixels = a.pixels();
  const PairChunk c = PairChunk::at(job, a.chunks, a.chunk, a.pairs, pixels,
                                    reinterpret_cast<const int64_t*>(a.pair_frames));
  A* error_map = reinterpret_cast<A*>(a.error_map);
  uint8_t* valid_mask = reinterpret_cast<uint8_t*>(a.valid_mask);
  LaneSums<A> lanes;
  score_blocks<T, A, I>(a, c.pair, c.begin, c.end, [&](int64_t e, int n, const BlockLanes<A>& L) {
    lanes.template add_block<kBlock>(L.error, L.ok, n, c.pair.row * pixels + e, error_map, valid_mask);
  });
  lanes.total(reinterpret_cast<A*>(a.partials) + job * 2);
}

// Tap offsets fit int32 (full-width gathers) when every offset of a frame does.
bool small_offsets(const ReprojectionErrorArgs& a) {
  const int64_t reach = (a.height - 1) * a.depth_strides[2] + (a.width - 1) * a.depth_strides[3];
  return a.depth_strides[2] >= 0 && a.depth_strides[3] >= 0 && reach <= INT32_MAX;
}

// The SIMD clones: one plain function per dtype (target_clones takes no templates).
#define VGPA_FORWARD_JOB(T, name)                                                                   \
  VGPA_CPU_SIMD_ENTRY void name(const ReprojectionErrorArgs& a, int64_t job, bool small) { \
    if (small)                                                                                      \
      forward_job<T, int32_t>(a, job);                                                              \
    else                                                                                            \
      forward_job<T, int64_t>(a, job);                                                              \
  }
VGPA_FORWARD_JOB(float, forward_job_float)
VGPA_FORWARD_JOB(double, forward_job_double)
VGPA_FORWARD_JOB(Half, forward_job_half)
VGPA_FORWARD_JOB(BFloat16, forward_job_bfloat16)

void forward_job_of(float*, const ReprojectionErrorArgs& a, int64_t job, bool s) { forward_job_float(a, job, s); }
void forward_job_of(double*, const ReprojectionErrorArgs& a, int64_t job, bool s) { forward_job_double(a, job, s); }
void forward_job_of(Half*, const ReprojectionErrorArgs& a, int64_t job, bool s) { forward_job_half(a, job, s); }
void forward_job_of(BFloat16*, const ReprojectionErrorArgs& a, int64_t job, bool s) {
  forward_job_bfloat16(a, job, s);
}

template <typename T>
void forward(const ReprojectionErrorArgs& a) {
  const int64_t jobs = a.batch * a.pairs * a.chunks;
  const bool small = small_offsets(a);
  // One job = one fixed chunk of one (video, pair): the partials do not depend on threading.
#pragma omp parallel for schedule(static)
  for (int64_t job = 0; job < jobs; ++job) forward_job_of(static_cast<T*>(nullptr), a, job, small);
}

// Backward of the depth errors: per scored item (row, pixel), the additions
// reproject_pixel_backward makes, densely: the four tap additions to the target frame at
// tap0 + {0, 1, width, width + 1} (those whose bit is set in used), then the source addition at
// the pixel. where = tap0 << 4 | used, or -1 when the item adds nothing.
template <typename A>
struct DepthGradRecords {
  A* tap[4];
  A* source;
  int64_t* where;
};

// The records of items [first, last) of one pair row, pixels e = first - row * pixels ...; the
// values and validity are reproject_pixel / reproject_pixel_backward's, lane by lane.
template <typename T, typename I, int Kind>
VGPA_ALWAYS_INLINE void depth_backward_items(const ReprojectionErrorArgs& a, const PairRow& pair, int64_t first,
                                             int64_t last, const DepthGradRecords<typename Acc<T>::type>& out) {
  using A = typename Acc<T>::type;
  const int64_t pixels = a.pixels();
  const A* grad_error = reinterpret_cast<const A*>(a.grad_error);
  const A* grad_map = reinterpret_cast<const A*>(a.grad_map);
  const A g_row = grad_error[pair.row];
  const int64_t e0 = first;
  score_blocks<T, A, I, true>(a, pair, first, last, [&](int64_t e, int n, BlockLanes<A>& L) {
    A g[kBlock];
    if (grad_map) {
      const A* m = grad_map + pair.row * pixels + e;
      for (int l = 0; l < n; ++l) g[l] = g_row + m[l];
      for (int l = n; l < kBlock; ++l) g[l] = A(0);
    } else {
      for (int l = 0; l < kBlock; ++l) g[l] = g_row;
    }
    A tap_out[4][kBlock], source_out[kBlock];
    int64_t where[kBlock];
    for (int l = 0; l < kBlock; ++l) {
      const int32_t rec = L.ok[l] & int32_t(g[l] != A(0)) & int32_t(l < n);
      A d_warped, d_sampled;
      depth_error_grad(Kind, L.warped[l], L.sampled[l], d_warped, d_sampled);
      const A t[4] = {L.tap[0][l], L.tap[1][l], L.tap[2][l], L.tap[3][l]};
      const A d_z = d_warped * L.ddepth_dz[l];
      const A d_u = d_sampled * bilinear_d_du(L.wx[l], L.wy[l], t);
      const A d_v = d_sampled * bilinear_d_dv(L.wx[l], L.wy[l], t);
      const A gs = g[l] * d_sampled;
      tap_out[0][l] = gs * L.weight[0][l];
      tap_out[1][l] = gs * L.weight[1][l];
      tap_out[2][l] = gs * L.weight[2][l];
      tap_out[3][l] = gs * L.weight[3][l];
      source_out[l] = g[l] * (d_z + d_u * L.du_dz[l] + d_v * L.dv_dz[l]);
      where[l] = rec ? (L.tap0[l] << 4 | int64_t(L.used[l])) : int64_t(-1);
    }
    const int64_t o = e - e0;
    for (int k = 0; k < 4; ++k)
      for (int l = 0; l < n; ++l) out.tap[k][o + l] = tap_out[k][l];
    for (int l = 0; l < n; ++l) out.source[o + l] = source_out[l];
    for (int l = 0; l < n; ++l) out.where[o + l] = where[l];
  });
}

template <typename T, typename I>
VGPA_ALWAYS_INLINE void depth_backward_job(const ReprojectionErrorArgs& a, const PairRow& pair, int64_t first,
                                           int64_t last, const DepthGradRecords<typename Acc<T>::type>& out) {
  switch (static_cast<ReprojectionErrorKind>(a.error)) {
    case ReprojectionErrorKind::AbsRel: depth_backward_items<T, I, 0>(a, pair, first, last, out); break;
    case ReprojectionErrorKind::Abs: depth_backward_items<T, I, 1>(a, pair, first, last, out); break;
    case ReprojectionErrorKind::Sq: depth_backward_items<T, I, 2>(a, pair, first, last, out); break;
    default: depth_backward_items<T, I, 3>(a, pair, first, last, out);
  }
}

#define VGPA_DEPTH_BACKWARD_JOB(T, name)                                                           \
  VGPA_CPU_SIMD_ENTRY void name(const ReprojectionErrorArgs& a, const PairRow& pair,    \
                                                          int64_t first, int64_t last,                 \
                                                          const DepthGradRecords<Acc<T>::type>& out, bool small) { \
    if (small)                                                                                      \
      depth_backward_job<T, int32_t>(a, pair, first, last, out);                                    \
    else                                                                                            \
      depth_backward_job<T, int64_t>(a, pair, first, last, out);                                    \
  }
VGPA_DEPTH_BACKWARD_JOB(float, depth_backward_job_float)
VGPA_DEPTH_BACKWARD_JOB(double, depth_backward_job_double)
VGPA_DEPTH_BACKWARD_JOB(Half, depth_backward_job_half)
VGPA_DEPTH_BACKWARD_JOB(BFloat16, depth_backward_job_bfloat16)

#define VGPA_DEPTH_BACKWARD_OF(T, name)                                                             \
  void depth_backward_job_of(T*, const ReprojectionErrorArgs& a, const PairRow& pair, int64_t first, int64_t last, \
                             const DepthGradRecords<Acc<T>::type>& out, bool small) {               \
    name(a, pair, first, last, out, small);                                                         \
  }
VGPA_DEPTH_BACKWARD_OF(float, depth_backward_job_float)
VGPA_DEPTH_BACKWARD_OF(double, depth_backward_job_double)
VGPA_DEPTH_BACKWARD_OF(Half, depth_backward_job_half)
VGPA_DEPTH_BACKWARD_OF(BFloat16, depth_backward_job_bfloat16)

// Groups of items as in backward below (dense records: one item's additions are 6 values).
constexpr int64_t kDepthBackwardGroup = int64_t(1) << 15;
constexpr int64_t kDepthBackwardBlock = 1024;

template <typename T>
void depth_backward(const ReprojectionErrorArgs& a) {
  using A = typename Acc<T>::type;
  A* grad_depth = reinterpret_cast<A*>(a.grad_depth);
  if (!grad_depth) return;  // the depth errors add to the depth gradient only
  const int64_t pixels = a.pixels(), frames_total = a.batch * a.frames, items = a.batch * a.pairs * pixels;
  const int64_t group = kDepthBackwardGroup < items ? kDepthBackwardGroup : items;
  const int64_t* pair_frames = reinterpret_cast<const int64_t*>(a.pair_frames);
  const bool small = small_offsets(a);
  std::vector<A> values(static_cast<size_t>(5 * group));
  std::vector<int64_t> where(static_cast<size_t>(group));
  const DepthGradRecords<A> records{{values.data(), values.data() + group, values.data() + 2 * group,
                                     values.data() + 3 * group}, values.data() + 4 * group, where.data()};
  const int64_t width = a.width;
  for (int64_t begin = 0; begin < items; begin += group) {
    const int64_t end = begin + group < items ? begin + group : items;
    const int64_t blocks = (end - begin + kDepthBackwardBlock - 1) / kDepthBackwardBlock;
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t block = 0; block < blocks; ++block) {
      const int64_t first = begin + block * kDepthBackwardBlock;
      const int64_t last = first + kDepthBackwardBlock < end ? first + kDepthBackwardBlock : end;
      for (int64_t s = first; s < last;) {
        const int64_t row = s / pixels, stop = (row + 1) * pixels < last ? (row + 1) * pixels : last;
        const PairRow pair = PairRow::at(row, a.pairs, pair_frames);
        const DepthGradRecords<A> out{{records.tap[0] + (s - begin), records.tap[1] + (s - begin),
                                       records.tap[2] + (s - begin), records.tap[3] + (s - begin)},
                                      records.source + (s - begin), records.where + (s - begin)};
        depth_backward_job_of(static_cast<T*>(nullptr), a, pair, s - row * pixels, stop - row * pixels, out, small);
        s = stop;
      }
    }
    replay_group_by_frame(begin, end, a.frames, frames_total, a.pairs, pixels, pair_frames,
                          [&](int64_t frame, int64_t t, const PairRow& pair, int64_t first, int64_t last) {
      A* out = grad_depth + frame * pixels;
      const bool target = pair.j == t, source = pair.i == t;
      const int64_t e0 = first - pair.row * pixels;
      for (int64_t item = first; item < last; ++item) {
        const int64_t r = item - begin, w = records.where[r];
        if (w < 0) continue;
        if (target) {
          A* base = out + (w >> 4);
          if (w & 1) base[0] += records.tap[0][r];
          if (w & 2) base[1] += records.tap[1][r];
          if (w & 4) base[width] += records.tap[2][r];
          if (w & 8) base[width + 1] += records.tap[3][r];
        }
        if (source) out[e0 + (item - first)] += records.source[r];
      }
    });
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
  if (a.error != static_cast<int>(ReprojectionErrorKind::Photometric)) return depth_backward<T>(a);
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

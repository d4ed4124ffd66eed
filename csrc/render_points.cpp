// C++ CPU twin of the CUDA kernels in render_points.cu (OpenMP).
//
// The projection must round once per operation like the reference, so floating-point
// contraction into FMA is switched off for this file (it matters on hosts with FMA units).
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "render_points.h"

namespace vgpa {

namespace {

constexpr int64_t kPointBlock = 4096;
constexpr int64_t kSerialPixels = 16384;  // below this, waking the thread team costs more than it saves

// Integer minimum by compare-and-swap: the final value is the minimum of all offers whatever
// the interleaving, so the z-buffer is exact with any number of threads.
inline void atomic_min(int64_t* slot, int64_t value) {
  int64_t current = __atomic_load_n(slot, __ATOMIC_RELAXED);
  while (value < current &&
         !__atomic_compare_exchange_n(slot, &current, value, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
  }
}

// Points projected per step of the lane loop: enough for full SIMD vectors, few enough that
// the lanes' results stay in L1.
constexpr int kLaneBlock = 64;

// Points [first, first + n) of one cloud (n <= kLaneBlock) projected with one frame's rows,
// lane by lane (a SIMD loop: the landing rules as masks, not branches), then offered to the
// z-buffer in index order. Decides exactly as project_point: the same functions, the same
// rounding.
template <typename S>
inline void zbuffer_lanes(const S* frame_rows, const S* cloud, int64_t first, int n, int64_t height, int64_t width,
                          int64_t* frame_keys) {
  S depth[kLaneBlock];
  int32_t col[kLaneBlock], row[kLaneBlock], landed[kLaneBlock];
  for (int k = 0; k < n; ++k) {
    const S* q = cloud + 3 * (first + k);
    const S x = q[0], y = q[1], z = q[2];
    const S d = camera_depth(frame_rows, x, y, z);
    const S u = pixel_coordinate(frame_rows, x, y, z, d);
    const S v = pixel_coordinate(frame_rows + 4, x, y, z, d);
    const int32_t in = int32_t(point_is_finite(x, y, z)) & int32_t(depth_in_front(d)) &
                       int32_t(pixel_in_image(u, v, height, width));
    depth[k] = d;
    landed[k] = in;
    col[k] = in ? int32_t(u) : 0;  // image sides are < 2^22: a landed pixel's coordinates fit
    row[k] = in ? int32_t(v) : 0;
  }
  for (int k = 0; k < n; ++k)
    if (landed[k]) atomic_min(frame_keys + int64_t(row[k]) * width + col[k], depth_key(depth[k], first + k));
}

// One job: one block of one video's points, rendered into every frame of the video.
template <typename S>
inline void zbuffer_job(const RenderPointsArgs& a, int64_t job) {
  const S* points = reinterpret_cast<const S*>(a.points);
  const S* rows = reinterpret_cast<const S*>(a.rows);
  const int64_t* offsets = reinterpret_cast<const int64_t*>(a.offsets);
  const int64_t* counts = reinterpret_cast<const int64_t*>(a.counts);
  int64_t* keys = reinterpret_cast<int64_t*>(a.keys);
  const int64_t hw = a.height * a.width;
  const int64_t blocks = (a.max_count + kPointBlock - 1) / kPointBlock;
  const int64_t b = job / blocks, begin = (job % blocks) * kPointBlock;
  const int64_t end = begin + kPointBlock < counts[b] ? begin + kPointBlock : counts[b];
  const S* cloud = points + offsets[b] * 3;
  // Frame-major inside a block: the block's points stay in cache while one z-buffer is hit.
  for (int64_t t = 0; t < a.frames; ++t) {
    const S* frame_rows = rows + (b * a.frames + t) * kRowsPerFrame;
    int64_t* frame_keys = keys + (b * a.frames + t) * hw;
    for (int64_t i = begin; i < end; i += kLaneBlock)
      zbuffer_lanes(frame_rows, cloud, i, int(end - i < kLaneBlock ? end - i : kLaneBlock), a.height, a.width,
                    frame_keys);
  }
}

// The SIMD clones: one plain function per dtype (target_clones takes no templates).
VGPA_CPU_SIMD_ENTRY void zbuffer_job_float(const RenderPointsArgs& a, int64_t job) {
  zbuffer_job<float>(a, job);
}
VGPA_CPU_SIMD_ENTRY void zbuffer_job_double(const RenderPointsArgs& a, int64_t job) {
  zbuffer_job<double>(a, job);
}
void zbuffer_job_of(float*, const RenderPointsArgs& a, int64_t job) { zbuffer_job_float(a, job); }
void zbuffer_job_of(double*, const RenderPointsArgs& a, int64_t job) { zbuffer_job_double(a, job); }

template <typename S>
void zbuffer(const RenderPointsArgs& a) {
  const int64_t blocks = (a.max_count + kPointBlock - 1) / kPointBlock;
  const int64_t jobs = a.videos * blocks;
#pragma omp parallel for schedule(dynamic, 1) if (jobs > 1)
  for (int64_t job = 0; job < jobs; ++job) zbuffer_job_of(static_cast<S*>(nullptr), a, job);
}

template <typename S, typename T>
void resolve(const RenderPointsArgs& a) {
  const S* points = reinterpret_cast<const S*>(a.points);
  const S* rows = reinterpret_cast<const S*>(a.rows);
  const T* colors = reinterpret_cast<const T*>(a.colors);
  const T* background = reinterpret_cast<const T*>(a.background);
  const int64_t* offsets = reinterpret_cast<const int64_t*>(a.offsets);
  const int64_t* keys = reinterpret_cast<const int64_t*>(a.keys);
  T* image = reinterpret_cast<T*>(a.image);
  S* depth = reinterpret_cast<S*>(a.depth);
  uint8_t* coverage = reinterpret_cast<uint8_t*>(a.coverage);
  const int64_t hw = a.height * a.width, total = a.videos * a.frames * hw;

#pragma omp parallel for schedule(static) if (total > kSerialPixels)
  for (int64_t e = 0; e < total; ++e) {
    const int64_t bt = e / hw, p = e % hw, b = bt / a.frames;
    const int64_t key = keys[e];
    const bool covered = key != kEmptyKey;
    const int64_t winner = covered ? offsets[b] + (key & kIndexMask) : 0;
    S z = S(0);
    if (covered) {
      const S* q = points + winner * 3;
      z = camera_depth(rows + bt * kRowsPerFrame, q[0], q[1], q[2]);
    }
    depth[e] = z;
    coverage[e] = covered;
    const T* color = pixel_color(covered, colors, winner, a.channels, background);
    T* out = image + bt * a.channels * hw + p;
    for (int64_t c = 0; c < a.channels; ++c) out[c * hw] = color[c];
  }
}

template <typename T>
void consistency(const RenderPointsArgs& a) {
  using A = typename Acc<T>::type;
  const T* colors = reinterpret_cast<const T*>(a.colors);
  const T* background = reinterpret_cast<const T*>(a.background);
  const T* target = reinterpret_cast<const T*>(a.target);
  const int64_t* offsets = reinterpret_cast<const int64_t*>(a.offsets);
  const int64_t* keys = reinterpret_cast<const int64_t*>(a.keys);
  A* squared = reinterpret_cast<A*>(a.squared_partials);
  int64_t* covered_out = reinterpret_cast<int64_t*>(a.covered_partials);
  const int64_t hw = a.height * a.width, jobs = a.videos * a.frames * a.chunks;

#pragma omp parallel for schedule(static) if (jobs > 1)
  for (int64_t job = 0; job < jobs; ++job) {
    const int64_t bt = job / a.chunks, b = bt / a.frames;
    const int64_t begin = (job % a.chunks) * a.chunk;
    const int64_t end = begin + a.chunk < hw ? begin + a.chunk : hw;
    A sum = 0;
    int64_t n_covered = 0;
    for (int64_t p = begin; p < end; ++p) {
      const int64_t key = keys[bt * hw + p];
      const bool covered = key != kEmptyKey;
      n_covered += covered;
      if (a.masked && !covered) continue;
      const int64_t winner = covered ? offsets[b] + (key & kIndexMask) : 0;
      const T* color = pixel_color(covered, colors, winner, a.channels, background);
      const T* frame = target + bt * a.channels * hw + p;
      for (int64_t c = 0; c < a.channels; ++c) {
        const A d = load_as<A>(color + c) - load_as<A>(frame + c * hw);
        sum += d * d;
      }
    }
    squared[job] = sum;
    covered_out[job] = n_covered;
  }
}

}  // namespace

void render_points_zbuffer_cpu(const RenderPointsArgs& args) {
  dispatch_points_dtype(args.points_dtype, [&](auto* s) { zbuffer<std::remove_pointer_t<decltype(s)>>(args); });
}

void render_points_resolve_cpu(const RenderPointsArgs& args) {
  dispatch_points_dtype(args.points_dtype, [&](auto* s) {
    dispatch_dtype(args.colors_dtype, [&](auto* t) {
      resolve<std::remove_pointer_t<decltype(s)>, std::remove_pointer_t<decltype(t)>>(args);
    });
  });
}

void render_consistency_cpu(const RenderPointsArgs& args) {
  dispatch_dtype(args.colors_dtype, [&](auto* t) { consistency<std::remove_pointer_t<decltype(t)>>(args); });
}

}  // namespace vgpa

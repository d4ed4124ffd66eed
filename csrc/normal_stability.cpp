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

// ---------------------------------------------------------------------------------------------
// SIMD lane loops: kSimdLanes pixels at a time, every step run on every lane and the validity
// kept as a mask, so the loops vectorise. Loads use indices clamped into the image (invalid
// lanes read a safe pixel and are masked out); the decisions and values are those of the
// per-pixel header functions, which the lanes call. They need an image of at least 3 x 3 (a
// smaller one has no normal at all and takes the per-pixel path).

inline int64_t clamp_index(int64_t i, int64_t lo, int64_t hi) { return i < lo ? lo : (i > hi ? hi : i); }

template <typename T, typename A>
struct DepthFrame {
  const T* p;
  int64_t sh, sw, height, width;
  const A* kinv;
  A at(int64_t x, int64_t y) const { return load_as<A>(p + y * sh + x * sw); }
};

// surface_normal of pixel (x, y), any (x, y): the mask instead of early returns.
template <typename T, typename A>
inline bool lane_normal(const DepthFrame<T, A>& f, int64_t x, int64_t y, SurfaceNormal<A>& s) {
  const bool inside = (x >= 1) & (y >= 1) & (x <= f.width - 2) & (y <= f.height - 2);
  const int64_t cx = clamp_index(x, 1, f.width - 2), cy = clamp_index(y, 1, f.height - 2);
  const A zc = f.at(cx, cy), zl = f.at(cx - 1, cy), zr = f.at(cx + 1, cy);
  const A zu = f.at(cx, cy - 1), zd = f.at(cx, cy + 1);
  const bool depths = depth_is_valid(zc) & depth_is_valid(zl) & depth_is_valid(zr) & depth_is_valid(zu) &
                      depth_is_valid(zd);
  const A u = A(cx), v = A(cy);
  const Vec3<A> c = surface_normal_cross(f.kinv, u, v, zl, zr, zu, zd, s);
  const bool length_ok = surface_normal_length_ok(s);
  surface_normal_orient(f.kinv, u, v, zc, c, s);
  return inside & depths & length_ok;
}

template <typename T, typename A>
struct PairLanes {
  DepthFrame<T, A> source, target;
  const A *rot, *pm;
  bool warp, occlusion;
  A occlusion_factor;  // 1 + tol, rounded as normal_stability_pixel does

  PairLanes(const NormalStabilityArgs& a, const PairRow& pair) {
    const int64_t sh = a.depth_strides[2], sw = a.depth_strides[3];
    const A* kinv = reinterpret_cast<const A*>(a.inverse_intrinsics);
    source = {normal_depth_frame<T>(a, pair.b, pair.i), sh, sw, a.height, a.width, kinv + (pair.b * a.frames + pair.i) * 9};
    target = {normal_depth_frame<T>(a, pair.b, pair.j), sh, sw, a.height, a.width, kinv + (pair.b * a.frames + pair.j) * 9};
    rot = reinterpret_cast<const A*>(a.rotations) + pair.row * 9;
    pm = reinterpret_cast<const A*>(a.pair_matrices) + pair.row * 12;
    warp = a.warp;
    occlusion = a.occlusion;
    occlusion_factor = A(1.0 + a.occlusion_tol);
  }

  // normal_stability_pixel of source pixel (x, y), any (x, y).
  template <bool Warp, bool Occlusion>
  bool score(int64_t x, int64_t y, NormalPairPixel<A>& px) const {
    bool ok = lane_normal(source, x, y, px.source);
    const A z = px.source.depth;
    const int64_t height = source.height, width = source.width;
    int64_t qx = clamp_index(x, 0, width - 1), qy = clamp_index(y, 0, height - 1);
    if (Warp) {
      const PixelWarp<A> w = warp_pixel(pm, A(x), A(y), z);
      ok &= (w.depth > A(0)) & inside_image(w.u, w.v, height, width, true);
      const A u = ok ? w.u : A(0), v = ok ? w.v : A(0);  // finite and in the image on every lane
      const BilinearTaps<A> taps = BilinearTaps<A>::at(u, v, height, width);
      A tap_depth[4];
#pragma GCC unroll 4
      for (int k = 0; k < 4; ++k) {
        const A d = target.at(clamp_index(taps.x(k), 0, width - 1), clamp_index(taps.y(k), 0, height - 1));
        const bool used = taps.used(k);
        ok &= !used | depth_is_valid(d);
        tap_depth[k] = used ? d : A(0);
      }
      if (Occlusion) ok &= !(w.depth > occlusion_factor * taps.value(tap_depth));
      qx = round_half_even_index(u);
      qy = round_half_even_index(v);
    } else if (Occlusion) {
      ok &= !(z > occlusion_factor * target.at(qx, qy));
    }
    ok &= lane_normal(target, qx, qy, px.target);
    px.qx = qx;
    px.qy = qy;
    px.rotated = Warp ? matvec3(rot, px.source.n) : px.source.n;
    px.cosine = dot3(px.rotated, px.target.n);
    const A clamped = px.cosine < A(-1) ? A(-1) : (px.cosine > A(1) ? A(1) : px.cosine);
    px.error = A(1) - clamped;
    return ok;
  }
};

// Pixel coordinates of items e0, e0 + 1, ... (kSimdLanes of them), stepping along the rows.
inline void lane_pixels(int64_t e0, int64_t width, int64_t* xs, int64_t* ys) {
  int64_t y = e0 / width, x = e0 % width;
  for (int k = 0; k < kSimdLanes; ++k) {
    xs[k] = x;
    ys[k] = y;
    if (++x == width) x = 0, ++y;
  }
}

// One forward job: pixels [begin, end) of one row; partial sums per lane (item - begin) %
// kSimdLanes, added up in lane order at the end.
template <typename T, bool Warp, bool Occlusion>
inline void forward_chunk_lanes(const NormalStabilityArgs& a, const PairChunk& c, typename Acc<T>::type* partial) {
  using A = typename Acc<T>::type;
  const PairLanes<T, A> lanes(a, c.pair);
  const int64_t pixels = a.pixels();
  A* error_map = reinterpret_cast<A*>(a.error_map);
  uint8_t* valid_mask = reinterpret_cast<uint8_t*>(a.valid_mask);
  A sums[kSimdLanes] = {}, counts[kSimdLanes] = {};
  for (int64_t e0 = c.begin; e0 < c.end; e0 += kSimdLanes) {
    int64_t xs[kSimdLanes], ys[kSimdLanes];
    lane_pixels(e0, a.width, xs, ys);
    const int64_t n = c.end - e0 < kSimdLanes ? c.end - e0 : kSimdLanes;
    A errors[kSimdLanes];
    bool valid[kSimdLanes];
    for (int k = 0; k < kSimdLanes; ++k) {
      NormalPairPixel<A> px;
      const bool ok = lanes.template score<Warp, Occlusion>(xs[k], ys[k], px) & (k < n);
      errors[k] = ok ? px.error : A(0);
      valid[k] = ok;
      sums[k] += errors[k];
      counts[k] += ok ? A(1) : A(0);
    }
    if (error_map) {
      for (int64_t k = 0; k < n; ++k) {
        error_map[c.pair.row * pixels + e0 + k] = errors[k];
        valid_mask[c.pair.row * pixels + e0 + k] = valid[k];
      }
    }
  }
  A sum = A(0), count = A(0);
  for (int k = 0; k < kSimdLanes; ++k) sum += sums[k], count += counts[k];
  partial[0] = sum;
  partial[1] = count;
}

template <typename T>
inline void forward_chunk_any(const NormalStabilityArgs& a, const PairChunk& c, typename Acc<T>::type* partial) {
  if (a.warp)
    a.occlusion ? forward_chunk_lanes<T, true, true>(a, c, partial) : forward_chunk_lanes<T, true, false>(a, c, partial);
  else
    a.occlusion ? forward_chunk_lanes<T, false, true>(a, c, partial) : forward_chunk_lanes<T, false, false>(a, c, partial);
}

// What one (row, pixel) of the backward adds: d loss / d n_i(p) at the source pixel and
// d loss / d n_j(q) at the target pixel q; q = -1 when the pixel adds nothing (no upstream
// gradient or not valid).
template <typename A>
struct PairPixelGrad {
  Vec3<A> source, target;
  int64_t q;
};

// Backward items [first, first + n) (n <= kSimdLanes) of one row, from pixel e0.
template <typename T, bool Warp, bool Occlusion>
inline void backward_lanes(const NormalStabilityArgs& a, const PairRow& pair, int64_t e0, int64_t n,
                           PairPixelGrad<typename Acc<T>::type>* out) {
  using A = typename Acc<T>::type;
  const PairLanes<T, A> lanes(a, pair);
  const A* grad_error = reinterpret_cast<const A*>(a.grad_error);
  const A* grad_map = reinterpret_cast<const A*>(a.grad_map);
  const int64_t pixels = a.pixels();
  int64_t xs[kSimdLanes], ys[kSimdLanes];
  lane_pixels(e0, a.width, xs, ys);
  A gs[kSimdLanes];
  for (int k = 0; k < kSimdLanes; ++k) gs[k] = grad_map ? pixel_grad(grad_error, grad_map, pair.row, pixels, e0 + (k < n ? k : 0)) : grad_error[pair.row];
  Vec3<A> src[kSimdLanes], tgt[kSimdLanes];
  int64_t qs[kSimdLanes];
  for (int k = 0; k < kSimdLanes; ++k) {
    NormalPairPixel<A> px;
    const bool ok = lanes.template score<Warp, Occlusion>(xs[k], ys[k], px) & (gs[k] != A(0));
    normal_stability_pixel_grad(a, lanes.rot, px, gs[k], src[k], tgt[k]);
    qs[k] = ok ? px.qy * a.width + px.qx : -1;
  }
  for (int64_t k = 0; k < n; ++k) out[k] = {src[k], tgt[k], qs[k]};
}

template <typename T>
inline void backward_lanes_any(const NormalStabilityArgs& a, const PairRow& pair, int64_t e0, int64_t n,
                               PairPixelGrad<typename Acc<T>::type>* out) {
  if (a.warp)
    a.occlusion ? backward_lanes<T, true, true>(a, pair, e0, n, out) : backward_lanes<T, true, false>(a, pair, e0, n, out);
  else
    a.occlusion ? backward_lanes<T, false, true>(a, pair, e0, n, out) : backward_lanes<T, false, false>(a, pair, e0, n, out);
}

// depth_to_normals backward, first pass over kSimdLanes pixels of frame from pixel e0 (n of
// them): normal_difference_grads into six planes (d_u xyz, d_v xyz) of pixels elements.
template <typename T>
inline void difference_grads_lanes(const NormalStabilityArgs& a, int64_t frame, int64_t e0, int64_t n,
                                   typename Acc<T>::type* planes) {
  using A = typename Acc<T>::type;
  const int64_t pixels = a.pixels(), b = frame / a.frames, t = frame % a.frames;
  const DepthFrame<T, A> f = {normal_depth_frame<T>(a, b, t), a.depth_strides[2], a.depth_strides[3], a.height,
                              a.width, reinterpret_cast<const A*>(a.inverse_intrinsics) + frame * 9};
  const A* g = reinterpret_cast<const A*>(a.grad_normals) + frame * 3 * pixels;
  int64_t xs[kSimdLanes], ys[kSimdLanes];
  lane_pixels(e0, a.width, xs, ys);
  A out[6][kSimdLanes];
  for (int k = 0; k < kSimdLanes; ++k) {
    const int64_t e = e0 + (k < n ? k : 0);
    const Vec3<A> up = {g[e], g[pixels + e], g[2 * pixels + e]};
    SurfaceNormal<A> s;
    const bool ok = lane_normal(f, xs[k], ys[k], s) & !((up.x == A(0)) & (up.y == A(0)) & (up.z == A(0)));
    Vec3<A> da, db;
    surface_normal_pullback(s, up, da, db);
    out[0][k] = ok ? da.x : A(0);
    out[1][k] = ok ? da.y : A(0);
    out[2][k] = ok ? da.z : A(0);
    out[3][k] = ok ? db.x : A(0);
    out[4][k] = ok ? db.y : A(0);
    out[5][k] = ok ? db.z : A(0);
  }
  for (int c = 0; c < 6; ++c)
    for (int64_t k = 0; k < n; ++k) planes[c * pixels + e0 + k] = out[c][k];
}

// Second pass: gather_depth_grad over the planes. A neighbour outside the image adds an exact
// 0: the total starts at +0 and can never become -0, so adding or subtracting a zero part
// changes no bit, as skipping it does.
template <typename A>
inline void gather_lanes(const NormalStabilityArgs& a, int64_t frame, int64_t e0, int64_t n, const A* planes,
                         A* grad_depth) {
  const int64_t pixels = a.pixels(), width = a.width, height = a.height;
  const A* kinv = reinterpret_cast<const A*>(a.inverse_intrinsics) + frame * 9;
  int64_t xs[kSimdLanes], ys[kSimdLanes];
  lane_pixels(e0, width, xs, ys);
  A out[kSimdLanes];
  for (int k = 0; k < kSimdLanes; ++k) {
    const int64_t x = xs[k], y = ys[k];
    const int64_t nx[4] = {x - 1, x + 1, x, x};
    const int64_t ny[4] = {y, y, y - 1, y + 1};
    Vec3<A> total = {A(0), A(0), A(0)};
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) {
      const bool inside = (nx[j] >= 0) & (nx[j] < width) & (ny[j] >= 0) & (ny[j] < height);
      const int64_t e = clamp_index(ny[j], 0, height - 1) * width + clamp_index(nx[j], 0, width - 1);
      const A* p = planes + (j < 2 ? 0 : 3) * pixels + e;
      const A px = p[0], py = p[pixels], pz = p[2 * pixels];  // always in the buffer: loaded, then selected
      const Vec3<A> part = {inside ? px : A(0), inside ? py : A(0), inside ? pz : A(0)};
      total = (j & 1) ? sub3(total, part) : Vec3<A>{total.x + part.x, total.y + part.y, total.z + part.z};
    }
    out[k] = dot3(unproject(kinv, A(x), A(y), A(1)), total);
  }
  for (int64_t k = 0; k < n; ++k) grad_depth[e0 + k] = out[k];
}

// The cloned entry points, one per storage type; flatten inlines the per-lane header functions
// (else too large to inline), without which the lane loops cannot vectorise.
#define VGPA_LANE_ENTRY VGPA_CPU_SIMD_CLONES __attribute__((flatten))
#define VGPA_NORMAL_LANES(T)                                                                                       \
  VGPA_LANE_ENTRY void forward_chunk(const NormalStabilityArgs& a, const PairChunk& c, Acc<T>::type* partial, \
                                          T*) {                                                                    \
    forward_chunk_any<T>(a, c, partial);                                                                           \
  }                                                                                                                \
  VGPA_LANE_ENTRY void backward_block(const NormalStabilityArgs& a, PairRow pair, int64_t e, int64_t n,       \
                                           PairPixelGrad<Acc<T>::type>* out, T*) {                                 \
    for (int64_t k = 0; k < n; k += kSimdLanes) {                                                                  \
      const int64_t m = n - k < kSimdLanes ? n - k : kSimdLanes;                                                   \
      backward_lanes_any<T>(a, pair, e + k, m, out + k);                                                           \
    }                                                                                                              \
  }                                                                                                                \
  VGPA_LANE_ENTRY void difference_grads_rows(const NormalStabilityArgs& a, int64_t frame, int64_t begin,      \
                                                  int64_t end, Acc<T>::type* planes, T*) {                         \
    for (int64_t e = begin; e < end; e += kSimdLanes)                                                              \
      difference_grads_lanes<T>(a, frame, e, end - e < kSimdLanes ? end - e : kSimdLanes, planes);                 \
  }
VGPA_NORMAL_LANES(float)
VGPA_NORMAL_LANES(double)
VGPA_NORMAL_LANES(Half)
VGPA_NORMAL_LANES(BFloat16)
#undef VGPA_NORMAL_LANES

#define VGPA_GATHER_LANES(A)                                                                                      \
  VGPA_LANE_ENTRY void gather_rows(const NormalStabilityArgs& a, int64_t frame, int64_t begin, int64_t end,  \
                                        const A* planes, A* grad_depth) {                                         \
    for (int64_t e = begin; e < end; e += kSimdLanes)                                                             \
      gather_lanes<A>(a, frame, e, end - e < kSimdLanes ? end - e : kSimdLanes, planes, grad_depth);              \
  }
VGPA_GATHER_LANES(float)
VGPA_GATHER_LANES(double)
#undef VGPA_GATHER_LANES
#undef VGPA_LANE_ENTRY

bool has_normals(const NormalStabilityArgs& a) { return a.height >= 3 && a.width >= 3; }

// Pixels of one frame per job of the lane passes.
constexpr int64_t kNormalsJob = 4096;

// normals_backward's two passes as lane loops, the pulled-back gradients in six planes a frame.
template <typename T>
void normals_backward_lanes(const NormalStabilityArgs& a) {
  using A = typename Acc<T>::type;
  const int64_t pixels = a.pixels(), frames = a.batch * a.frames;
  const int64_t per_frame = (pixels + kNormalsJob - 1) / kNormalsJob, jobs = frames * per_frame;
  std::vector<A> planes(static_cast<size_t>(frames * 6 * pixels));
  A* grad_depth = reinterpret_cast<A*>(a.grad_depth);
#pragma omp parallel for schedule(static)
  for (int64_t job = 0; job < jobs; ++job) {
    const int64_t frame = job / per_frame, begin = (job % per_frame) * kNormalsJob;
    const int64_t end = begin + kNormalsJob < pixels ? begin + kNormalsJob : pixels;
    difference_grads_rows(a, frame, begin, end, planes.data() + frame * 6 * pixels, static_cast<T*>(nullptr));
  }
#pragma omp parallel for schedule(static)
  for (int64_t job = 0; job < jobs; ++job) {
    const int64_t frame = job / per_frame, begin = (job % per_frame) * kNormalsJob;
    const int64_t end = begin + kNormalsJob < pixels ? begin + kNormalsJob : pixels;
    gather_rows(a, frame, begin, end, planes.data() + frame * 6 * pixels, grad_depth + frame * pixels);
  }
}

// Two passes: each pixel's normal is pulled back once into a, b = d loss / d d_u, d loss / d d_v
// (6 values a pixel), then every depth pixel gathers from its four neighbours' entries. The
// recomputing gather of the GPU builds each normal four times, which costs more than the
// buffer on a CPU. Results are bitwise those of depth_to_normals_grad_pixel.
template <typename T>
void normals_backward(const NormalStabilityArgs& a) {
  using A = typename Acc<T>::type;
  if (has_normals(a)) {
    normals_backward_lanes<T>(a);
    return;
  }
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
    if (has_normals(a)) {
      forward_chunk(a, c, partials + job * 2, static_cast<T*>(nullptr));
      continue;
    }
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
      if (has_normals(a)) {
        for (int64_t item = first; item < last;) {
          const int64_t e = item % pixels, n = last - item < pixels - e ? last - item : pixels - e;
          backward_block(a, PairRow::at(item / pixels, a.pairs, pair_frames), e, n, &buffer[item - begin],
                         static_cast<T*>(nullptr));
          item += n;
        }
        continue;
      }
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

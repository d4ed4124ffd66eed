// C++ CPU twin of the CUDA kernels in normal_stability.cu (OpenMP). Every sum has a fixed
// order, so every result, the gradients included, is bitwise reproducible.
#include <climits>
#include <cstdint>
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
// SIMD lane loops. Every step runs on every lane with the validity kept as int32_t 0/1 masks
// (bool masks do not vectorise), and every load uses an index inside the buffer (invalid lanes
// are masked out afterwards); the decisions and values are those of the per-pixel header
// functions, which the lanes call. They need an image of at least 3 x 3 (a smaller one has no
// normal at all and takes the per-pixel path) with pixel indices that fit int32_t.

// Pixels of one lane loop of the pair passes, a multiple of kSimdLanes.
constexpr int kBlock = 64;

bool has_normals(const NormalStabilityArgs& a) { return a.height >= 3 && a.width >= 3; }
bool lane_shape(const NormalStabilityArgs& a) { return has_normals(a) && a.pixels() + kBlock <= INT32_MAX; }

// Depth row y of a frame as seen by the normal of each pixel x in [1, W-2] of interior row y:
// zc, zl, zr, zu, zd; Unit: column stride 1 (contiguous loads).
template <typename T, typename A, bool Unit>
struct NormalRow {
  const T* c;
  int64_t sh, sw;
  VGPA_ALWAYS_INLINE int64_t at(int32_t x) const { return Unit ? int64_t(x) : x * sw; }
  // surface_normal of interior pixel (x, y): the mask instead of the early returns.
  VGPA_ALWAYS_INLINE int32_t normal(const A* kinv, int32_t x, A v, SurfaceNormal<A>& s) const {
    const int64_t o = at(x);
    const A zc = load_as<A>(c + o), zl = load_as<A>(c + o - (Unit ? 1 : sw)), zr = load_as<A>(c + o + (Unit ? 1 : sw));
    const A zu = load_as<A>(c + o - sh), zd = load_as<A>(c + o + sh);
    int32_t ok = int32_t(depth_is_valid(zc)) & int32_t(depth_is_valid(zl)) & int32_t(depth_is_valid(zr)) &
                 int32_t(depth_is_valid(zu)) & int32_t(depth_is_valid(zd));
    const A u = A(x);
    const Vec3<A> cr = surface_normal_cross(kinv, u, v, zl, zr, zu, zd, s);
    ok &= int32_t(surface_normal_length_ok(s));
    surface_normal_orient(kinv, u, v, zc, cr, s);
    return ok;
  }
};

// The normals of one frame once, for every pair that reads it: planes of pixels + kBlock
// elements (the tail lets a block load past its last pixel): depth, n.x, n.y, n.z as A, and
// the validity.
template <typename A>
struct FramePlanes {
  A *z, *nx, *ny, *nz;
  int32_t* ok;
};

template <typename A>
struct NormalBuffers {
  std::vector<A> values;
  std::vector<int32_t> valid;
  int64_t stride;
  explicit NormalBuffers(int64_t frames, int64_t pixels)
      : values(static_cast<size_t>(frames * 4 * (pixels + kBlock))),
        valid(static_cast<size_t>(frames * (pixels + kBlock))),
        stride(pixels + kBlock) {}
  FramePlanes<A> frame(int64_t f) {
    A* v = values.data() + f * 4 * stride;
    return {v, v + stride, v + 2 * stride, v + 3 * stride, valid.data() + f * stride};
  }
};

template <typename T, typename A, bool Unit>
VGPA_ALWAYS_INLINE void normals_row(const NormalStabilityArgs& a, int64_t frame, int64_t y, FramePlanes<A> p) {
  const int64_t b = frame / a.frames, t = frame % a.frames, width = a.width, e = y * width;
  const int64_t sh = a.depth_strides[2], sw = a.depth_strides[3];
  const T* row = normal_depth_frame<T>(a, b, t) + y * sh;
  for (int64_t x = 0; x < width; ++x) p.z[e + x] = load_as<A>(row + x * sw);
  A kinv[9];
  for (int k = 0; k < 9; ++k) kinv[k] = reinterpret_cast<const A*>(a.inverse_intrinsics)[frame * 9 + k];
  if (y == 0 || y == a.height - 1) {
    for (int64_t x = 0; x < width; ++x) p.nx[e + x] = p.ny[e + x] = p.nz[e + x] = A(0), p.ok[e + x] = 0;
    return;
  }
  const NormalRow<T, A, Unit> r{row, sh, sw};
  const A v = A(y);
  const int32_t last = int32_t(width - 1);
  A *nx = p.nx + e, *ny = p.ny + e, *nz = p.nz + e;
  int32_t* ok = p.ok + e;
  // ivdep: the planes and the depth are distinct buffers (else more alias checks than GCC tries).
#pragma GCC ivdep
  for (int32_t x = 1; x < last; ++x) {
    SurfaceNormal<A> s;
    const int32_t valid = r.normal(kinv, x, v, s);
    nx[x] = s.n.x;
    ny[x] = s.n.y;
    nz[x] = s.n.z;
    ok[x] = valid;
  }
  nx[0] = ny[0] = nz[0] = nx[last] = ny[last] = nz[last] = A(0);
  ok[0] = ok[last] = 0;
}

// Pair constants of the block loops (copies: the lanes' stores cannot alias them).
template <typename A>
struct PairConsts {
  A rot[9], pm[12];
  A occlusion_factor;  // 1 + tol, rounded as normal_stability_pixel does
  int32_t height, width;
  FramePlanes<A> source, target;
};

template <typename A>
struct PairLanes {
  A x[kBlock], y[kBlock], error[kBlock], cosine[kBlock];
  A rx[kBlock], ry[kBlock], rz[kBlock], tx[kBlock], ty[kBlock], tz[kBlock];  // rotated, n_target: backward only
  int32_t q[kBlock], ok[kBlock];
};

// normal_stability_pixel of the pixels e .. e + n - 1 (n <= kBlock) of one pair, (x, y) the
// first one's column and row.
template <typename A, bool Warp, bool Occlusion, bool Grad>
VGPA_ALWAYS_INLINE void score_block(const PairConsts<A>& g, int32_t e, int32_t x, int32_t y, int n, PairLanes<A>& L) {
  for (int l = 0; l < kBlock; ++l) {
    L.x[l] = A(x);
    L.y[l] = A(y);
    if (++x == g.width) x = 0, ++y;
  }
  const int32_t height = g.height, width = g.width, last_x = width - 1, last_y = height - 1;
  const FramePlanes<A> s = g.source, t = g.target;
  for (int l = 0; l < kBlock; ++l) {
    const int32_t p = e + l;  // < pixels + kBlock: in the planes
    int32_t ok = int32_t(l < n) & s.ok[p];
    const A z = s.z[p];
    const Vec3<A> n_source = {s.nx[p], s.ny[p], s.nz[p]};
    int32_t q = p & -ok;  // ok ? p : 0, as arithmetic: a select would become one of two pointers (no gather)
    if (Warp) {
      const PixelWarp<A> w = warp_pixel(g.pm, L.x[l], L.y[l], ok ? z : A(1));
      ok &= int32_t(w.depth > A(0)) & int32_t(inside_image(w.u, w.v, g.height, g.width, true));
      const A u = ok ? w.u : A(0), v = ok ? w.v : A(0);
      int32_t x0, y0, used[4];
      A wx, wy, weight[4];
      bilinear_taps(u, v, height, width, x0, y0, wx, wy, weight, used);
      const int32_t x1 = x0 < last_x ? x0 + 1 : last_x, y1 = y0 < last_y ? y0 + 1 : last_y;
      const A d0 = t.z[y0 * width + x0], d1 = t.z[y0 * width + x1], d2 = t.z[y1 * width + x0], d3 = t.z[y1 * width + x1];
      ok &= (~used[0] | int32_t(depth_is_valid(d0))) & (~used[1] | int32_t(depth_is_valid(d1))) &
            (~used[2] | int32_t(depth_is_valid(d2))) & (~used[3] | int32_t(depth_is_valid(d3)));
      const A tap[4] = {used[0] ? d0 : A(0), used[1] ? d1 : A(0), used[2] ? d2 : A(0), used[3] ? d3 : A(0)};
      if (Occlusion) ok &= ~int32_t(w.depth > g.occlusion_factor * bilinear_value(weight, tap));
      q = round_half_even_index<A, int32_t>(v) * width + round_half_even_index<A, int32_t>(u);
    } else if (Occlusion) {
      ok &= ~int32_t(z > g.occlusion_factor * t.z[q]);
    }
    ok &= t.ok[q];
    const Vec3<A> n_target = {t.nx[q], t.ny[q], t.nz[q]};
    const Vec3<A> rotated = Warp ? matvec3(g.rot, n_source) : n_source;
    const A cosine = dot3(rotated, n_target);
    const A error = cosine_error(cosine);
    L.error[l] = ok ? error : A(0);
    L.ok[l] = ok;
    if (Grad) {
      L.q[l] = q;
      L.cosine[l] = cosine;
      L.rx[l] = rotated.x, L.ry[l] = rotated.y, L.rz[l] = rotated.z;
      L.tx[l] = n_target.x, L.ty[l] = n_target.y, L.tz[l] = n_target.z;
    }
  }
}

template <typename A>
PairConsts<A> pair_consts(const NormalStabilityArgs& a, const PairRow& pair, NormalBuffers<A>& buffers) {
  PairConsts<A> g;
  const A* rot = reinterpret_cast<const A*>(a.rotations) + pair.row * 9;
  const A* pm = reinterpret_cast<const A*>(a.pair_matrices) + pair.row * 12;
  for (int k = 0; k < 9; ++k) g.rot[k] = rot[k];
  for (int k = 0; k < 12; ++k) g.pm[k] = pm[k];
  g.occlusion_factor = A(1.0 + a.occlusion_tol);
  g.height = int32_t(a.height);
  g.width = int32_t(a.width);
  g.source = buffers.frame(pair.b * a.frames + pair.i);
  g.target = buffers.frame(pair.b * a.frames + pair.j);
  return g;
}

// One forward job. Blocks start at the chunk's start plus a multiple of kBlock, so LaneSums
// puts every pixel in the lane of its position in the chunk, whatever the vector width.
template <typename A, bool Warp, bool Occlusion>
VGPA_ALWAYS_INLINE void forward_chunk_blocks(const NormalStabilityArgs& a, const PairChunk& c, NormalBuffers<A>& buffers,
                                             A* partial) {
  const PairConsts<A> g = pair_consts(a, c.pair, buffers);
  const int64_t pixels = a.pixels();
  A* error_map = reinterpret_cast<A*>(a.error_map);
  uint8_t* valid_mask = reinterpret_cast<uint8_t*>(a.valid_mask);
  LaneSums<A> lanes;
  PairLanes<A> L;
  for (int64_t e = c.begin; e < c.end; e += kBlock) {
    const int n = int(c.end - e < kBlock ? c.end - e : kBlock);
    score_block<A, Warp, Occlusion, false>(g, int32_t(e), int32_t(e % a.width), int32_t(e / a.width), n, L);
    lanes.template add_block<kBlock>(L.error, L.ok, n, c.pair.row * pixels + e, error_map, valid_mask);
  }
  lanes.total(partial);
}

// The backward's work items, structure of arrays: d loss / d n_i(p) (source) and d loss /
// d n_j(q) (target) of each; q = -1 when the item adds nothing (no upstream gradient or not
// valid).
template <typename A>
struct PairGrads {
  std::vector<A> v;
  std::vector<int32_t> q;
  int64_t size;
  explicit PairGrads(int64_t n) : v(static_cast<size_t>(6 * n)), q(static_cast<size_t>(n)), size(n) {}
  A* plane(int c) { return v.data() + c * size; }
};

// Backward items of pixels e .. e + n - 1 of one pair into the buffer at out.
template <typename A, bool Warp, bool Occlusion>
VGPA_ALWAYS_INLINE void backward_blocks(const NormalStabilityArgs& a, const PairRow& pair, int64_t e, int64_t n,
                                        NormalBuffers<A>& buffers, PairGrads<A>& grads, int64_t out) {
  const PairConsts<A> g = pair_consts(a, pair, buffers);
  const A* grad_error = reinterpret_cast<const A*>(a.grad_error);
  const A* grad_map = reinterpret_cast<const A*>(a.grad_map);
  const int64_t pixels = a.pixels();
  A* sx = grads.plane(0), *sy = grads.plane(1), *sz = grads.plane(2);
  A* tx = grads.plane(3), *ty = grads.plane(4), *tz = grads.plane(5);
  int32_t* qs = grads.q.data();
  PairLanes<A> L;
  A gs[kBlock];
  for (int64_t k = 0; k < n; k += kBlock) {
    const int m = int(n - k < kBlock ? n - k : kBlock);
    const int64_t p = e + k;
    score_block<A, Warp, Occlusion, true>(g, int32_t(p), int32_t(p % a.width), int32_t(p / a.width), m, L);
    for (int l = 0; l < m; ++l) gs[l] = pixel_grad(grad_error, grad_map, pair.row, pixels, p + l);
    const int64_t o = out + k;
#pragma GCC ivdep  // the seven planes are distinct
    for (int l = 0; l < m; ++l) {
      Vec3<A> src, tgt;
      cosine_grad(Warp, g.rot, Vec3<A>{L.rx[l], L.ry[l], L.rz[l]}, Vec3<A>{L.tx[l], L.ty[l], L.tz[l]}, L.cosine[l], gs[l],
                  src, tgt);
      sx[o + l] = src.x, sy[o + l] = src.y, sz[o + l] = src.z;
      tx[o + l] = tgt.x, ty[o + l] = tgt.y, tz[o + l] = tgt.z;
      qs[o + l] = L.ok[l] & int32_t(gs[l] != A(0)) ? L.q[l] : -1;
    }
  }
}

// depth_to_normals backward, first pass over interior row y of a frame: normal_difference_grads
// into six planes (d_u xyz, d_v xyz) of pixels elements; the border pixels have no normal.
template <typename T, typename A, bool Unit>
VGPA_ALWAYS_INLINE void difference_grads_row(const NormalStabilityArgs& a, int64_t frame, int64_t y, A* planes) {
  const int64_t pixels = a.pixels(), width = a.width, e = y * width;
  A* out[6];
  for (int c = 0; c < 6; ++c) out[c] = planes + c * pixels + e;
  if (y == 0 || y == a.height - 1) {
    for (int c = 0; c < 6; ++c)
      for (int64_t x = 0; x < width; ++x) out[c][x] = A(0);
    return;
  }
  A kinv[9];
  for (int k = 0; k < 9; ++k) kinv[k] = reinterpret_cast<const A*>(a.inverse_intrinsics)[frame * 9 + k];
  const int64_t sh = a.depth_strides[2], sw = a.depth_strides[3];
  const NormalRow<T, A, Unit> r{normal_depth_frame<T>(a, frame / a.frames, frame % a.frames) + y * sh, sh, sw};
  const A* g = reinterpret_cast<const A*>(a.grad_normals) + frame * 3 * pixels + e;
  const A v = A(y);
  const int32_t last = int32_t(width - 1);
  A *o0 = out[0], *o1 = out[1], *o2 = out[2], *o3 = out[3], *o4 = out[4], *o5 = out[5];
#pragma GCC ivdep
  for (int32_t x = 1; x < last; ++x) {
    const Vec3<A> up = {g[x], g[pixels + x], g[2 * pixels + x]};
    SurfaceNormal<A> s;
    const int32_t ok = r.normal(kinv, x, v, s) & ~(int32_t(up.x == A(0)) & int32_t(up.y == A(0)) & int32_t(up.z == A(0)));
    Vec3<A> da, db;
    surface_normal_pullback(s, up, da, db);
    o0[x] = ok ? da.x : A(0);
    o1[x] = ok ? da.y : A(0);
    o2[x] = ok ? da.z : A(0);
    o3[x] = ok ? db.x : A(0);
    o4[x] = ok ? db.y : A(0);
    o5[x] = ok ? db.z : A(0);
  }
  for (int c = 0; c < 6; ++c) out[c][0] = out[c][last] = A(0);
}

// Second pass: gather_depth_grad over the planes. A neighbour outside the image adds an exact
// 0: the total starts at +0 and can never become -0, so adding or subtracting a zero part
// changes no bit, as skipping it does.
template <typename A>
VGPA_ALWAYS_INLINE A gather_pixel(const NormalStabilityArgs& a, const A* kinv, int64_t x, int64_t y, const A* planes) {
  const int64_t pixels = a.pixels(), width = a.width, height = a.height;
  const int64_t nx[4] = {x - 1, x + 1, x, x};
  const int64_t ny[4] = {y, y, y - 1, y + 1};
  Vec3<A> total = {A(0), A(0), A(0)};
  for (int j = 0; j < 4; ++j) {
    if (nx[j] < 0 || nx[j] >= width || ny[j] < 0 || ny[j] >= height) continue;
    const A* p = planes + (j < 2 ? 0 : 3) * pixels + ny[j] * width + nx[j];
    const Vec3<A> part = {p[0], p[pixels], p[2 * pixels]};
    total = (j & 1) ? sub3(total, part) : Vec3<A>{total.x + part.x, total.y + part.y, total.z + part.z};
  }
  return dot3(unproject(kinv, A(x), A(y), A(1)), total);
}

// Row y; the columns 1 .. W-2 as a lane loop (rows above and below the image are selected
// away whole).
template <typename A>
VGPA_ALWAYS_INLINE void gather_row(const NormalStabilityArgs& a, int64_t frame, int64_t y, const A* planes,
                                   A* grad_depth) {
  const int64_t pixels = a.pixels(), width = a.width, e = y * width;
  A kinv[9];
  for (int k = 0; k < 9; ++k) kinv[k] = reinterpret_cast<const A*>(a.inverse_intrinsics)[frame * 9 + k];
  A* out = grad_depth + e;
  const bool has_up = y > 0, has_down = y < a.height - 1;
  const A *ax = planes + e, *ay = ax + pixels, *az = ay + pixels;
  const A *ux = planes + 3 * pixels + (has_up ? e - width : e), *uy = ux + pixels, *uz = uy + pixels;
  const A *dx = planes + 3 * pixels + (has_down ? e + width : e), *dy = dx + pixels, *dz = dy + pixels;
  const A v = A(y);
  const int32_t last = int32_t(width - 1);
  for (int32_t x = 1; x < last; ++x) {
    Vec3<A> total = {A(0) + ax[x - 1], A(0) + ay[x - 1], A(0) + az[x - 1]};
    total = sub3(total, Vec3<A>{ax[x + 1], ay[x + 1], az[x + 1]});
    const Vec3<A> up = {has_up ? ux[x] : A(0), has_up ? uy[x] : A(0), has_up ? uz[x] : A(0)};
    total = Vec3<A>{total.x + up.x, total.y + up.y, total.z + up.z};
    const Vec3<A> down = {has_down ? dx[x] : A(0), has_down ? dy[x] : A(0), has_down ? dz[x] : A(0)};
    total = sub3(total, down);
    out[x] = dot3(unproject(kinv, A(x), v, A(1)), total);
  }
  out[0] = gather_pixel(a, kinv, 0, y, planes);
  out[last] = gather_pixel(a, kinv, last, y, planes);
}

// The cloned entry points (VGPA_CPU_SIMD_ENTRY), one per storage type.
#define VGPA_NORMAL_LANES(T)                                                                                       \
  VGPA_CPU_SIMD_ENTRY void normals_rows(const NormalStabilityArgs& a, int64_t frame, int64_t begin, int64_t end,       \
                                    FramePlanes<Acc<T>::type> p, T*) {                                             \
    const bool unit = a.depth_strides[3] == 1;                                                                     \
    for (int64_t y = begin; y < end; ++y)                                                                          \
      unit ? normals_row<T, Acc<T>::type, true>(a, frame, y, p) : normals_row<T, Acc<T>::type, false>(a, frame, y, p); \
  }                                                                                                                \
  VGPA_CPU_SIMD_ENTRY void difference_grads_rows(const NormalStabilityArgs& a, int64_t frame, int64_t begin,           \
                                             int64_t end, Acc<T>::type* planes, T*) {                              \
    const bool unit = a.depth_strides[3] == 1;                                                                     \
    for (int64_t y = begin; y < end; ++y)                                                                          \
      unit ? difference_grads_row<T, Acc<T>::type, true>(a, frame, y, planes)                                      \
           : difference_grads_row<T, Acc<T>::type, false>(a, frame, y, planes);                                    \
  }
VGPA_NORMAL_LANES(float)
VGPA_NORMAL_LANES(double)
VGPA_NORMAL_LANES(Half)
VGPA_NORMAL_LANES(BFloat16)
#undef VGPA_NORMAL_LANES

#define VGPA_PAIR_LANES(A)                                                                                         \
  VGPA_CPU_SIMD_ENTRY void forward_chunk(const NormalStabilityArgs& a, const PairChunk& c, NormalBuffers<A>& buffers,  \
                                     A* partial) {                                                                 \
    if (a.warp)                                                                                                    \
      a.occlusion ? forward_chunk_blocks<A, true, true>(a, c, buffers, partial)                                    \
                  : forward_chunk_blocks<A, true, false>(a, c, buffers, partial);                                  \
    else                                                                                                           \
      a.occlusion ? forward_chunk_blocks<A, false, true>(a, c, buffers, partial)                                   \
                  : forward_chunk_blocks<A, false, false>(a, c, buffers, partial);                                 \
  }                                                                                                                \
  VGPA_CPU_SIMD_ENTRY void backward_items(const NormalStabilityArgs& a, const PairRow& pair, int64_t e, int64_t n,     \
                                      NormalBuffers<A>& buffers, PairGrads<A>& grads, int64_t out) {               \
    if (a.warp)                                                                                                    \
      a.occlusion ? backward_blocks<A, true, true>(a, pair, e, n, buffers, grads, out)                             \
                  : backward_blocks<A, true, false>(a, pair, e, n, buffers, grads, out);                           \
    else                                                                                                           \
      a.occlusion ? backward_blocks<A, false, true>(a, pair, e, n, buffers, grads, out)                            \
                  : backward_blocks<A, false, false>(a, pair, e, n, buffers, grads, out);                          \
  }                                                                                                                \
  VGPA_CPU_SIMD_ENTRY void gather_rows(const NormalStabilityArgs& a, int64_t frame, int64_t begin, int64_t end,        \
                                   const A* planes, A* grad_depth) {                                               \
    for (int64_t y = begin; y < end; ++y) gather_row<A>(a, frame, y, planes, grad_depth);                          \
  }
VGPA_PAIR_LANES(float)
VGPA_PAIR_LANES(double)
#undef VGPA_PAIR_LANES

// Rows of one frame per job of the row passes.
int64_t rows_per_job(int64_t width) { return width >= 4096 ? 1 : 4096 / width; }

// The normals of every frame into the buffers.
template <typename T>
void normals_pass(const NormalStabilityArgs& a, NormalBuffers<typename Acc<T>::type>& buffers) {
  const int64_t frames = a.batch * a.frames, rows = rows_per_job(a.width);
  const int64_t per_frame = (a.height + rows - 1) / rows, jobs = frames * per_frame;
#pragma omp parallel for schedule(static)
  for (int64_t job = 0; job < jobs; ++job) {
    const int64_t frame = job / per_frame, begin = (job % per_frame) * rows;
    const int64_t end = begin + rows < a.height ? begin + rows : a.height;
    normals_rows(a, frame, begin, end, buffers.frame(frame), static_cast<T*>(nullptr));
  }
}

// normals_backward's two passes as lane loops, the pulled-back gradients in six planes a frame.
template <typename T>
void normals_backward_lanes(const NormalStabilityArgs& a) {
  using A = typename Acc<T>::type;
  const int64_t pixels = a.pixels(), frames = a.batch * a.frames, rows = rows_per_job(a.width);
  const int64_t per_frame = (a.height + rows - 1) / rows, jobs = frames * per_frame;
  std::vector<A> planes(static_cast<size_t>(frames * 6 * pixels));
  A* grad_depth = reinterpret_cast<A*>(a.grad_depth);
#pragma omp parallel for schedule(static)
  for (int64_t job = 0; job < jobs; ++job) {
    const int64_t frame = job / per_frame, begin = (job % per_frame) * rows;
    const int64_t end = begin + rows < a.height ? begin + rows : a.height;
    difference_grads_rows(a, frame, begin, end, planes.data() + frame * 6 * pixels, static_cast<T*>(nullptr));
  }
#pragma omp parallel for schedule(static)
  for (int64_t job = 0; job < jobs; ++job) {
    const int64_t frame = job / per_frame, begin = (job % per_frame) * rows;
    const int64_t end = begin + rows < a.height ? begin + rows : a.height;
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
  if (lane_shape(a)) {
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
  if (lane_shape(a)) {
    NormalBuffers<A> buffers(a.batch * a.frames, pixels);
    normals_pass<T>(a, buffers);
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t job = 0; job < jobs; ++job)
      forward_chunk(a, PairChunk::at(job, a.chunks, a.chunk, a.pairs, pixels, reinterpret_cast<const int64_t*>(a.pair_frames)),
                    buffers, partials + job * 2);
    return;
  }
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
  const bool lanes = lane_shape(a);
  NormalBuffers<A> buffers(lanes ? frames_total : 0, pixels);
  if (lanes) normals_pass<T>(a, buffers);
  PairGrads<A> grads(items < kBackwardGroup ? items : kBackwardGroup);
  A *sx = grads.plane(0), *sy = grads.plane(1), *sz = grads.plane(2);
  A *tx = grads.plane(3), *ty = grads.plane(4), *tz = grads.plane(5);
  int32_t* qs = grads.q.data();

  for (int64_t begin = 0; begin < items; begin += kBackwardGroup) {
    const int64_t end = begin + kBackwardGroup < items ? begin + kBackwardGroup : items;
    const int64_t blocks = (end - begin + kBackwardBlock - 1) / kBackwardBlock;
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t block = 0; block < blocks; ++block) {
      const int64_t first = begin + block * kBackwardBlock;
      const int64_t last = first + kBackwardBlock < end ? first + kBackwardBlock : end;
      if (lanes) {
        for (int64_t item = first; item < last;) {
          const int64_t e = item % pixels, n = last - item < pixels - e ? last - item : pixels - e;
          backward_items(a, PairRow::at(item / pixels, a.pairs, pair_frames), e, n, buffers, grads, item - begin);
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
        const int64_t o = item - begin;
        qs[o] = -1;
        const A g = pixel_grad(grad_error, grad_map, pair.row, pixels, e);
        if (g == A(0)) continue;
        const A* rot = reinterpret_cast<const A*>(a.rotations) + pair.row * 9;
        const A* pm = reinterpret_cast<const A*>(a.pair_matrices) + pair.row * 12;
        if (!normal_stability_pixel<T, A>(a, pair.b, pair.i, pair.j, rot, pm, e / a.width, e % a.width, px)) continue;
        Vec3<A> src, tgt;
        normal_stability_pixel_grad(a, rot, px, g, src, tgt);
        sx[o] = src.x, sy[o] = src.y, sz[o] = src.z, tx[o] = tgt.x, ty[o] = tgt.y, tz[o] = tgt.z;
        qs[o] = int32_t(px.qy * a.width + px.qx);
      }
    }
    replay_group_by_frame(begin, end, a.frames, frames_total, a.pairs, pixels, pair_frames,
                          [&](int64_t frame, int64_t t, const PairRow& pair, int64_t first, int64_t last) {
      A* out = reinterpret_cast<A*>(a.grad_normals) + frame * 3 * pixels;
      for (int64_t item = first; item < last; ++item) {
        const int64_t o = item - begin, q = qs[o];
        if (q < 0) continue;
        if (pair.i == t) {
          const int64_t e = item - pair.row * pixels;
          out[e] += sx[o];
          out[pixels + e] += sy[o];
          out[2 * pixels + e] += sz[o];
        }
        if (pair.j == t) {
          out[q] += tx[o];
          out[pixels + q] += ty[o];
          out[2 * pixels + q] += tz[o];
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

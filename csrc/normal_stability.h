// Surface normals from depth and the normal-stability error (docs/design.md 3.2): the per-pixel
// math shared by the CUDA kernels (normal_stability.cu) and their C++ CPU twin
// (normal_stability.cpp). The warp itself (unproject, pair matrix, strict validity, bilinear
// taps) is geometry.h's.
#pragma once

#include <cmath>

#include "geometry.h"

namespace vgpa {

struct NormalStabilityArgs {
  int dtype;
  int64_t batch, frames, pairs, height, width;  // depth_to_normals: batch = N frames, frames = 1
  bool warp, occlusion;
  double occlusion_tol;
  uintptr_t depth;  // (B, T, H, W) in the input dtype, any strides
  int64_t depth_strides[4];
  uintptr_t inverse_intrinsics;  // (B * T, 9) accumulation dtype, K^-1 per frame
  uintptr_t rotations;           // (B * P, 9) accumulation dtype, R_ji per (video, pair)
  uintptr_t pair_matrices;       // (B * P, 12) accumulation dtype, see warp_pixel
  uintptr_t pair_frames;         // (P, 2) int64 (source, target)
  // depth_to_normals forward
  uintptr_t normals;        // (B * T, 3, H, W) input dtype
  uintptr_t normals_valid;  // (B * T, H, W) uint8
  // normal_stability forward
  uintptr_t partials;    // (B * P, chunks, 2) accumulation dtype: error sum, valid count
  uintptr_t error_map;   // (B, P, H, W) accumulation dtype, or 0
  uintptr_t valid_mask;  // (B, P, H, W) uint8, or 0
  int64_t chunks, chunk;
  // backward (contiguous accumulation-dtype buffers)
  uintptr_t grad_error;    // (B * P,) d loss / d mean error, already divided by max(count, 1)
  uintptr_t grad_map;      // (B, P, H, W), or 0
  uintptr_t grad_normals;  // (B * T, 3, H, W): d loss / d normal; filled by normal_stability_backward
  uintptr_t grad_depth;    // (B * T, H, W): filled by depth_to_normals_backward

  VGPA_HD int64_t pixels() const { return height * width; }
};

template <typename A>
VGPA_HD A dot3(Vec3<A> a, Vec3<A> b) { return a.x * b.x + a.y * b.y + a.z * b.z; }

template <typename A>
VGPA_HD Vec3<A> cross3(Vec3<A> a, Vec3<A> b) {
  return {a.y * b.z - a.z * b.y, a.z * b.x - a.x * b.z, a.x * b.y - a.y * b.x};
}

template <typename A>
VGPA_HD Vec3<A> sub3(Vec3<A> a, Vec3<A> b) { return {a.x - b.x, a.y - b.y, a.z - b.z}; }

template <typename A>
VGPA_HD Vec3<A> scale3(A s, Vec3<A> a) { return {s * a.x, s * a.y, s * a.z}; }

// M v with M 3x3 row-major; M^T v.
template <typename A>
VGPA_HD Vec3<A> matvec3(const A* m, Vec3<A> v) {
  return {m[0] * v.x + m[1] * v.y + m[2] * v.z, m[3] * v.x + m[4] * v.y + m[5] * v.z,
          m[6] * v.x + m[7] * v.y + m[8] * v.z};
}
template <typename A>
VGPA_HD Vec3<A> matvec3_transposed(const A* m, Vec3<A> v) {
  return {m[0] * v.x + m[3] * v.y + m[6] * v.z, m[1] * v.x + m[4] * v.y + m[7] * v.z,
          m[2] * v.x + m[5] * v.y + m[8] * v.z};
}

template <typename A>
VGPA_HD A sqrt_of(A x) {
#ifdef __CUDA_ARCH__
  return sqrt(x);
#else
  return std::sqrt(x);
#endif
}

// Nearest integer of x >= 0, ties to even. Written with floor and an exact fraction (x - floor(x)
// is exact for x >= 0), unlike floor(x + 0.5), which rounds 0.49999997f up.
// I: the index type (int32_t in the host's lane loops, where it vectorises).
template <typename A, typename I = int64_t>
VGPA_HD I round_half_even_index(A x) {
  const A f = floor_of(x);
  const A frac = x - f;
  const I i = static_cast<I>(f);
  return frac > A(0.5) ? i + 1 : (frac < A(0.5) ? i : i + (i & 1));
}

// The normal of one pixel by central differences of the unprojected points (docs/design.md 3.2):
// d_u = X(u+1, v) - X(u-1, v), d_v = X(u, v+1) - X(u, v-1), c = d_u x d_v,
// n = sign * c / |c| with sign = -1 when c . X(u, v) > 0 (oriented toward the camera).
template <typename A>
struct SurfaceNormal {
  Vec3<A> n;       // unit and oriented; only meaningful when valid
  Vec3<A> du, dv;  // the central differences (kept for the backward pass)
  A length, sign;  // |c| and the orientation flip
  A depth;         // the centre depth
};

// The steps of surface_normal once the five depths are loaded, shared with the host's SIMD
// lane loops (which run every step on every lane and combine the validity as masks).
template <typename A>
VGPA_HD Vec3<A> surface_normal_cross(const A* kinv, A u, A v, A zl, A zr, A zu, A zd, SurfaceNormal<A>& s) {
  s.du = sub3(unproject(kinv, u + A(1), v, zr), unproject(kinv, u - A(1), v, zl));
  s.dv = sub3(unproject(kinv, u, v + A(1), zd), unproject(kinv, u, v - A(1), zu));
  const Vec3<A> c = cross3(s.du, s.dv);
  s.length = sqrt_of(dot3(c, c));
  return c;
}

template <typename A>
VGPA_HD bool surface_normal_length_ok(const SurfaceNormal<A>& s) {
  return (s.length > A(0)) & (s.length - s.length == A(0));  // & as in depth_is_valid
}

template <typename A>
VGPA_HD void surface_normal_orient(const A* kinv, A u, A v, A zc, Vec3<A> c, SurfaceNormal<A>& s) {
  s.sign = dot3(c, unproject(kinv, u, v, zc)) > A(0) ? A(-1) : A(1);
  s.n = scale3(s.sign / s.length, c);
  s.depth = zc;
}

// False when the pixel has no normal: it or a 4-neighbour lies outside the image or holds an
// invalid depth, or |c| is 0 or not finite.
template <typename T, typename A>
VGPA_HD bool surface_normal(const T* frame, int64_t sh, int64_t sw, int64_t height, int64_t width, const A* kinv,
                            int64_t x, int64_t y, SurfaceNormal<A>& s) {
  if (x < 1 || y < 1 || x > width - 2 || y > height - 2) return false;
  const T* centre = frame + y * sh + x * sw;
  const A zc = load_as<A>(centre), zl = load_as<A>(centre - sw), zr = load_as<A>(centre + sw);
  const A zu = load_as<A>(centre - sh), zd = load_as<A>(centre + sh);
  if (!(depth_is_valid(zc) && depth_is_valid(zl) && depth_is_valid(zr) && depth_is_valid(zu) &&
        depth_is_valid(zd)))
    return false;
  const A u = A(x), v = A(y);
  const Vec3<A> c = surface_normal_cross(kinv, u, v, zl, zr, zu, zd, s);
  if (!surface_normal_length_ok(s)) return false;
  surface_normal_orient(kinv, u, v, zc, c, s);
  return true;
}

// Pull-back of an upstream gradient g = d loss / d n through a valid normal: returns
// a = d loss / d d_u and b = d loss / d d_v. With h = d loss / d c = sign (g - n (n . g)) / |c|:
// c . h = d_u . (d_v x h) = d_v . (h x d_u).
template <typename A>
VGPA_HD void surface_normal_pullback(const SurfaceNormal<A>& s, Vec3<A> g, Vec3<A>& a, Vec3<A>& b) {
  const Vec3<A> h = scale3(s.sign / s.length, sub3(g, scale3(dot3(s.n, g), s.n)));
  a = cross3(s.dv, h);
  b = cross3(h, s.du);
}

template <typename T>
VGPA_HD const T* normal_depth_frame(const NormalStabilityArgs& a, int64_t b, int64_t t) {
  return reinterpret_cast<const T*>(a.depth) + b * a.depth_strides[0] + t * a.depth_strides[1];
}

template <typename T, typename A>
VGPA_HD bool frame_normal(const NormalStabilityArgs& a, int64_t b, int64_t t, int64_t x, int64_t y,
                          SurfaceNormal<A>& s) {
  const A* kinv = reinterpret_cast<const A*>(a.inverse_intrinsics) + (b * a.frames + t) * 9;
  return surface_normal<T, A>(normal_depth_frame<T>(a, b, t), a.depth_strides[2], a.depth_strides[3], a.height, a.width,
                              kinv, x, y, s);
}

// a = d loss / d d_u and b = d loss / d d_v of the normal of pixel (x, y) of frame (b, t), from
// d loss / d normal of that frame (grad_normals, (3, H, W)); zeros where the pixel has no
// normal or no upstream gradient.
template <typename T, typename A>
VGPA_HD void normal_difference_grads(const NormalStabilityArgs& a, int64_t b, int64_t t, int64_t x, int64_t y,
                                     Vec3<A>& da, Vec3<A>& db) {
  const int64_t pixels = a.pixels(), e = y * a.width + x;
  const A* g = reinterpret_cast<const A*>(a.grad_normals) + (b * a.frames + t) * 3 * pixels;
  const Vec3<A> up = {g[e], g[pixels + e], g[2 * pixels + e]};
  da = db = Vec3<A>{A(0), A(0), A(0)};
  if (up.x == A(0) && up.y == A(0) && up.z == A(0)) return;
  SurfaceNormal<A> s;
  if (frame_normal<T, A>(a, b, t, x, y, s)) surface_normal_pullback(s, up, da, db);
}

// d loss / d depth at pixel (x, y) of frame (b, t) from a, b = d loss / d d_u, d loss / d d_v of
// its four neighbours' normals, fetched with grads(nx, ny, a, b): a gather, so no two threads
// write one element. With r = K^-1 [x, y, 1], pixel (x, y) is the right neighbour of (x-1, y),
// the left one of (x+1, y), the lower one of (x, y-1) and the upper one of (x, y+1):
// grad = r . (a(x-1, y) - a(x+1, y) + b(x, y-1) - b(x, y+1)), summed in this order. Zero parts
// are skipped (the sum starts at +0, so that changes no bit).
template <typename A, typename Grads>
VGPA_HD A gather_depth_grad(const NormalStabilityArgs& a, int64_t frame, int64_t x, int64_t y, Grads&& grads) {
  Vec3<A> total = {A(0), A(0), A(0)};
  const int64_t nx[4] = {x - 1, x + 1, x, x};
  const int64_t ny[4] = {y, y, y - 1, y + 1};
  for (int k = 0; k < 4; ++k) {
    if (nx[k] < 0 || nx[k] >= a.width || ny[k] < 0 || ny[k] >= a.height) continue;
    Vec3<A> da, db;
    grads(nx[k], ny[k], da, db);
    const Vec3<A> part = k < 2 ? da : db;
    if (part.x == A(0) && part.y == A(0) && part.z == A(0)) continue;
    total = (k & 1) ? sub3(total, part) : Vec3<A>{total.x + part.x, total.y + part.y, total.z + part.z};
  }
  const A* kinv = reinterpret_cast<const A*>(a.inverse_intrinsics) + frame * 9;
  return dot3(unproject(kinv, A(x), A(y), A(1)), total);
}

// The gather with every neighbour's normal recomputed (the GPU path: recomputing is cheaper
// than a round trip through memory there).
template <typename T, typename A>
VGPA_HD A depth_to_normals_grad_pixel(const NormalStabilityArgs& a, int64_t b, int64_t t, int64_t x, int64_t y) {
  return gather_depth_grad<A>(a, b * a.frames + t, x, y, [&](int64_t nx, int64_t ny, Vec3<A>& da, Vec3<A>& db) {
    normal_difference_grads<T, A>(a, b, t, nx, ny, da, db);
  });
}

template <typename T, typename A>
VGPA_HD void depth_to_normals_pixel(const NormalStabilityArgs& a, int64_t frame, int64_t y, int64_t x) {
  const int64_t b = frame / a.frames, t = frame % a.frames, pixels = a.pixels(), e = y * a.width + x;
  SurfaceNormal<A> s;
  const bool valid = frame_normal<T, A>(a, b, t, x, y, s);
  T* out = reinterpret_cast<T*>(a.normals) + frame * 3 * pixels + e;
  store_from(out, valid ? s.n.x : A(0));
  store_from(out + pixels, valid ? s.n.y : A(0));
  store_from(out + 2 * pixels, valid ? s.n.z : A(0));
  reinterpret_cast<uint8_t*>(a.normals_valid)[frame * pixels + e] = valid;
}

// One source pixel of one pair: both normals and the error.
template <typename A>
struct NormalPairPixel {
  SurfaceNormal<A> source, target;
  Vec3<A> rotated;   // R_ji n_i(p) (n_i(p) without warp)
  int64_t qx, qy;    // the target pixel
  A cosine, error;
};

template <typename A>
VGPA_HD A cosine_error(A cosine) {
  return A(1) - (cosine < A(-1) ? A(-1) : (cosine > A(1) ? A(1) : cosine));
}

// Scores source pixel (x, y) of frame i against frame j; false when it is not valid (no source
// normal, strict warp validity of docs/design.md 3.1 fails, occluded, or no target normal at q).
template <typename T, typename A>
VGPA_HD bool normal_stability_pixel(const NormalStabilityArgs& a, int64_t b, int64_t i, int64_t j, const A* rot,
                                    const A* pm, int64_t y, int64_t x, NormalPairPixel<A>& px) {
  if (!frame_normal<T, A>(a, b, i, x, y, px.source)) return false;
  const A z = px.source.depth;
  const int64_t sh = a.depth_strides[2], sw = a.depth_strides[3];
  const T* target = normal_depth_frame<T>(a, b, j);
  px.qx = x;
  px.qy = y;
  if (a.warp) {
    const PixelWarp<A> w = warp_pixel(pm, A(x), A(y), z);
    if (!(w.depth > A(0)) || !inside_image(w.u, w.v, a.height, a.width, true)) return false;
    const BilinearTaps<A> taps = BilinearTaps<A>::at(w.u, w.v, a.height, a.width);
    A tap_depth[4];
    for (int k = 0; k < 4; ++k) {
      tap_depth[k] = A(0);
      if (!taps.used(k)) continue;
      tap_depth[k] = load_as<A>(target + taps.y(k) * sh + taps.x(k) * sw);
      if (!depth_is_valid(tap_depth[k])) return false;
    }
    if (a.occlusion && w.depth > A(1.0 + a.occlusion_tol) * taps.value(tap_depth)) return false;
    px.qx = round_half_even_index(w.u);
    px.qy = round_half_even_index(w.v);
  } else if (a.occlusion) {  // the identity warp: z' = z, d = D_j(p)
    const A d = load_as<A>(target + y * sh + x * sw);
    if (z > A(1.0 + a.occlusion_tol) * d) return false;
  }
  if (!frame_normal<T, A>(a, b, j, px.qx, px.qy, px.target)) return false;
  px.rotated = a.warp ? matvec3(rot, px.source.n) : px.source.n;
  px.cosine = dot3(px.rotated, px.target.n);
  px.error = cosine_error(px.cosine);
  return true;
}

// d error / d n_i(p) and d error / d n_j(q), times g (the clamp passes the gradient on [-1, 1]).
template <typename A>
VGPA_HD void cosine_grad(bool warp, const A* rot, Vec3<A> rotated, Vec3<A> target, A cosine, A g, Vec3<A>& g_source,
                         Vec3<A>& g_target) {
  const A d = (cosine >= A(-1)) & (cosine <= A(1)) ? -g : A(0);
  g_target = scale3(d, rotated);
  g_source = scale3(d, warp ? matvec3_transposed(rot, target) : target);
}
template <typename A>
VGPA_HD void normal_stability_pixel_grad(const NormalStabilityArgs& a, const A* rot, const NormalPairPixel<A>& px,
                                         A g, Vec3<A>& g_source, Vec3<A>& g_target) {
  cosine_grad(a.warp, rot, px.rotated, px.target.n, px.cosine, g, g_source, g_target);
}

void depth_to_normals_cpu(const NormalStabilityArgs& args);
void depth_to_normals_backward_cpu(const NormalStabilityArgs& args);
void normal_stability_forward_cpu(const NormalStabilityArgs& args);
void normal_stability_backward_cpu(const NormalStabilityArgs& args);
#ifdef VGPA_WITH_CUDA
void depth_to_normals_cuda(const NormalStabilityArgs& args, uintptr_t stream);
void depth_to_normals_backward_cuda(const NormalStabilityArgs& args, uintptr_t stream);
void normal_stability_forward_cuda(const NormalStabilityArgs& args, uintptr_t stream);
void normal_stability_backward_cuda(const NormalStabilityArgs& args, uintptr_t stream);
#endif

}  // namespace vgpa

// Depth-warp reprojection error (docs/design.md 3.1) and depth unprojection: the per-pixel
// math shared by the CUDA kernels (reprojection_error.cu) and their C++ CPU twin
// (reprojection_error.cpp).
#pragma once

#include "geometry.h"

namespace vgpa {

// Mirrors vgpa.ops.reprojection_error.ERROR_CODES.
enum class ReprojectionErrorKind : int { AbsRel = 0, Abs = 1, Sq = 2, Log = 3, Photometric = 4 };

struct ReprojectionErrorArgs {
  int dtype;
  int64_t batch, pairs, frames, height, width, channels;
  int error;  // ReprojectionErrorKind
  bool strict, occlusion;
  double occlusion_tol;
  // depth (B, T, H, W) and image (B, T, C, H, W) in the input dtype, any strides
  uintptr_t depth, image;
  int64_t depth_strides[4], image_strides[5];
  uintptr_t pair_matrices;  // (B, P, 12) accumulation dtype, see warp_pixel
  uintptr_t pair_frames;    // (P, 2) int64 (source, target)
  // forward
  uintptr_t partials;   // (B * P, chunks, 2) accumulation dtype: error sum, valid count
  uintptr_t error_map;  // (B, P, H, W) accumulation dtype, or 0
  uintptr_t valid_mask; // (B, P, H, W) uint8, or 0
  int64_t chunks, chunk;
  // backward: upstream gradients and contiguous accumulation-dtype gradient buffers
  uintptr_t grad_error;  // (B, P) d loss / d mean error, already divided by max(count, 1)
  uintptr_t grad_map;    // (B, P, H, W), or 0
  uintptr_t grad_depth;  // (B, T, H, W), or 0
  uintptr_t grad_image;  // (B, T, C, H, W), or 0

  VGPA_HD int64_t pixels() const { return height * width; }
};

// Everything the backward pass needs about one warped source pixel.
template <typename A>
struct ReprojectedPixel {
  A source_depth, sampled_depth, error;
  PixelWarp<A> warp;
  BilinearTaps<A> taps;
  A tap_depth[4];  // 0 for unused taps
};

template <typename A>
VGPA_HD A sign_of(A x) {
  return A(x > A(0)) - A(x < A(0));
}

#ifdef __CUDA_ARCH__
// log_of's device path, kept out of line so that it is a function of its own in the PTX:
// libdevice's log holds fused multiply-adds and an approximate reciprocal, and the decision-path
// check (vgpa_tools/gpu_proof/cuda_kernels.py) exempts exactly this function. No decision reads it:
// it makes the "log" error after validity and occlusion are settled, where only the error's
// finiteness is tested, and it is finite for the positive finite depths it gets.
template <typename A>
__device__ __noinline__ A out_of_line_log(A x) {
  return log(x);
}
#endif

template <typename A>
VGPA_HD A log_of(A x) {
#ifdef __CUDA_ARCH__
  return out_of_line_log(x);
#else
  return std::log(x);
#endif
}

template <typename A>
VGPA_HD A depth_error(int kind, A warped, A sampled) {
  const A diff = warped - sampled;
  switch (static_cast<ReprojectionErrorKind>(kind)) {
    case ReprojectionErrorKind::AbsRel: return (diff < A(0) ? -diff : diff) / sampled;
    case ReprojectionErrorKind::Abs: return diff < A(0) ? -diff : diff;
    case ReprojectionErrorKind::Sq: return diff * diff;
    default: {
      const A l = log_of(warped) - log_of(sampled);
      return l < A(0) ? -l : l;
    }
  }
}

// d error / d warped depth and d error / d sampled depth (sign(0) = 0, as torch's abs).
template <typename A>
VGPA_HD void depth_error_grad(int kind, A warped, A sampled, A& d_warped, A& d_sampled) {
  const A diff = warped - sampled, s = sign_of(diff);
  switch (static_cast<ReprojectionErrorKind>(kind)) {
    case ReprojectionErrorKind::AbsRel:
      d_warped = s / sampled;
      d_sampled = -s / sampled - (diff < A(0) ? -diff : diff) / (sampled * sampled);
      break;
    case ReprojectionErrorKind::Abs:
      d_warped = s;
      d_sampled = -s;
      break;
    case ReprojectionErrorKind::Sq:
      d_warped = A(2) * diff;
      d_sampled = -A(2) * diff;
      break;
    default: {
      const A ls = sign_of(log_of(warped) - log_of(sampled));
      d_warped = ls / warped;
      d_sampled = -ls / sampled;
    }
  }
}

template <typename T>
VGPA_HD const T* depth_frame(const ReprojectionErrorArgs& a, int64_t b, int64_t t) {
  return reinterpret_cast<const T*>(a.depth) + b * a.depth_strides[0] + t * a.depth_strides[1];
}

template <typename T>
VGPA_HD const T* image_plane(const ReprojectionErrorArgs& a, int64_t b, int64_t t, int64_t c) {
  return reinterpret_cast<const T*>(a.image) + b * a.image_strides[0] + t * a.image_strides[1] +
         c * a.image_strides[2];
}

// Channel c of a warped pixel: I_i(x, y) - I_j bilinearly at (u', v'), the values of the used
// taps (0 for unused ones) left in tap.
template <typename T, typename A>
VGPA_HD A photometric_difference(const ReprojectionErrorArgs& a, int64_t b, int64_t i, int64_t j,
                                 const BilinearTaps<A>& taps, int64_t c, int64_t y, int64_t x, A* tap) {
  const int64_t ih = a.image_strides[3], iw = a.image_strides[4];
  const T* target = image_plane<T>(a, b, j, c);
  for (int k = 0; k < 4; ++k)
    tap[k] = taps.used(k) ? load_as<A>(target + taps.y(k) * ih + taps.x(k) * iw) : A(0);
  return load_as<A>(image_plane<T>(a, b, i, c) + y * ih + x * iw) - taps.value(tap);
}

// mean_c |I_i(x, y) - I_j(taps)| of a warped pixel whose taps are known.
template <typename T, typename A>
VGPA_HD A photometric_error(const ReprojectionErrorArgs& a, int64_t b, int64_t i, int64_t j,
                            const BilinearTaps<A>& taps, int64_t y, int64_t x) {
  A e = A(0);
  for (int64_t c = 0; c < a.channels; ++c) {
    A tap[4];
    const A diff = photometric_difference<T, A>(a, b, i, j, taps, c, y, x, tap);
    e += diff < A(0) ? -diff : diff;
  }
  return e / A(a.channels);
}

// Warps source pixel (x, y) of frame i into frame j and scores it; false when it is not valid
// (docs/design.md 3.1: validity, occlusion, and a non-finite error, e.g. abs_rel against a sampled
// depth of 0 under "zeros" validity).
template <typename T, typename A>
VGPA_HD bool reproject_pixel(const ReprojectionErrorArgs& a, int64_t b, int64_t i, int64_t j, const A* pm,
                             int64_t y, int64_t x, ReprojectedPixel<A>& px) {
  const int64_t sh = a.depth_strides[2], sw = a.depth_strides[3];
  const T* src = depth_frame<T>(a, b, i);
  const A z = load_as<A>(src + y * sh + x * sw);
  if (!depth_is_valid(z)) return false;
  px.source_depth = z;
  px.warp = warp_pixel(pm, A(x), A(y), z);
  if (!(px.warp.depth > A(0)) || !inside_image(px.warp.u, px.warp.v, a.height, a.width, a.strict)) return false;
  px.taps = BilinearTaps<A>::at(px.warp.u, px.warp.v, a.height, a.width);
  const T* dst = depth_frame<T>(a, b, j);
  for (int k = 0; k < 4; ++k) {
    px.tap_depth[k] = A(0);
    if (!px.taps.used(k)) continue;
    const A d = load_as<A>(dst + px.taps.y(k) * sh + px.taps.x(k) * sw);
    if (a.strict && !depth_is_valid(d)) return false;
    px.tap_depth[k] = d;
  }
  px.sampled_depth = px.taps.value(px.tap_depth);
  if (a.occlusion && px.warp.depth > A(1.0 + a.occlusion_tol) * px.sampled_depth) return false;
  const A e = a.error == static_cast<int>(ReprojectionErrorKind::Photometric)
                  ? photometric_error<T, A>(a, b, i, j, px.taps, y, x)
                  : depth_error(a.error, px.warp.depth, px.sampled_depth);
  if (!(e - e == A(0))) return false;
  px.error = e;
  return true;
}

// Adds g * d error(pixel) / d inputs through sink.depth(frame, y, x, value) and
// sink.image(frame, c, y, x, value); the caller has checked that the pixel is valid.
template <typename T, typename A, typename Sink>
VGPA_HD void reproject_pixel_backward(const ReprojectionErrorArgs& a, int64_t b, int64_t i, int64_t j, int64_t y,
                                      int64_t x, const ReprojectedPixel<A>& px, A g, Sink& sink) {
  const PixelWarp<A>& w = px.warp;
  const BilinearTaps<A>& taps = px.taps;
  A d_u = A(0), d_v = A(0), d_z = A(0);  // d error / d (u', v') and the direct d error / d z
  if (a.error == static_cast<int>(ReprojectionErrorKind::Photometric)) {
    const A inv_c = A(1) / A(a.channels);
    for (int64_t c = 0; c < a.channels; ++c) {
      A tap[4];
      const A diff = photometric_difference<T, A>(a, b, i, j, taps, c, y, x, tap);
      const A s = sign_of(diff) * inv_c;
      if (s == A(0)) continue;
      if (sink.wants_image()) {
        sink.image(i, c, y, x, g * s);
        for (int k = 0; k < 4; ++k)
          if (taps.used(k)) sink.image(j, c, taps.y(k), taps.x(k), -g * s * taps.weight(k));
      }
      d_u -= s * taps.d_du(tap);
      d_v -= s * taps.d_dv(tap);
    }
  } else {
    A d_warped, d_sampled;
    depth_error_grad(a.error, w.depth, px.sampled_depth, d_warped, d_sampled);
    d_z = d_warped * w.ddepth_dz;
    d_u = d_sampled * taps.d_du(px.tap_depth);
    d_v = d_sampled * taps.d_dv(px.tap_depth);
    if (sink.wants_depth())
      for (int k = 0; k < 4; ++k)
        if (taps.used(k)) sink.depth(j, taps.y(k), taps.x(k), g * d_sampled * taps.weight(k));
  }
  if (sink.wants_depth()) sink.depth(i, y, x, g * (d_z + d_u * w.du_dz + d_v * w.dv_dz));
}

// ---------------------------------------------------------------------------------------------
// World points from depth: X = z M [u, v, 1] + t with [M | t] = E^-1 diag(K^-1, 1), per frame.

struct UnprojectDepthArgs {
  int dtype;
  int64_t frames_total, height, width;  // B * T frames
  int64_t frames_per_video;
  uintptr_t depth;                      // (B, T, H, W), any strides
  int64_t depth_strides[4];
  uintptr_t ray_maps;                   // (B * T, 12) accumulation dtype
  uintptr_t points;                     // (B, T, H, W, 3) contiguous, input dtype
};

template <typename T, typename A>
VGPA_HD void unproject_depth_pixel(const UnprojectDepthArgs& a, int64_t frame, int64_t y, int64_t x) {
  const int64_t b = frame / a.frames_per_video, t = frame % a.frames_per_video;
  const T* depth = reinterpret_cast<const T*>(a.depth) + b * a.depth_strides[0] + t * a.depth_strides[1];
  const A z = load_as<A>(depth + y * a.depth_strides[2] + x * a.depth_strides[3]);
  const A* m = reinterpret_cast<const A*>(a.ray_maps) + frame * 12;
  const A kinv[9] = {m[0], m[1], m[2], m[4], m[5], m[6], m[8], m[9], m[10]};
  const Vec3<A> c = unproject(kinv, A(x), A(y), z);
  T* out = reinterpret_cast<T*>(a.points) + ((frame * a.height + y) * a.width + x) * 3;
  store_from(out + 0, c.x + m[3]);
  store_from(out + 1, c.y + m[7]);
  store_from(out + 2, c.z + m[11]);
}

void reprojection_error_forward_cpu(const ReprojectionErrorArgs& args);
void reprojection_error_backward_cpu(const ReprojectionErrorArgs& args);
void unproject_depth_cpu(const UnprojectDepthArgs& args);
#ifdef VGPA_WITH_CUDA
void reprojection_error_forward_cuda(const ReprojectionErrorArgs& args, uintptr_t stream);
void reprojection_error_backward_cuda(const ReprojectionErrorArgs& args, uintptr_t stream);
void unproject_depth_cuda(const UnprojectDepthArgs& args, uintptr_t stream);
#endif

}  // namespace vgpa

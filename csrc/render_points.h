// Point-cloud re-render with an exact z-buffer (docs/design.md 3.3): the per-point and per-pixel
// math shared by the CUDA kernels (render_points.cu) and their C++ CPU twin (render_points.cpp).
//
// Pass 1 (z-buffer): every landed point offers key = (float32 bits of z) << 32 | index to its
// pixel with an integer atomic minimum; finite z > 0 has bits that order like integers, so the
// minimum is the nearest point, equal depths going to the smallest index, whatever the order.
// Pass 2 (resolve): every pixel decodes its key into colour, depth and coverage, or (fused)
// into its squared error against the real frame.
#pragma once

#include <cmath>

#include "common.h"

namespace vgpa {

constexpr int64_t kEmptyKey = INT64_MAX;  // no point landed; every real key is smaller
constexpr int kIndexBits = 32;
constexpr int64_t kIndexMask = (int64_t(1) << kIndexBits) - 1;
constexpr int kRowsPerFrame = 12;  // [P0 | P1 | Z], see vgpa/reference/render_points.py

struct RenderPointsArgs {
  int points_dtype;  // Float32 or Float64: points, projection rows and depth
  int colors_dtype;  // colors, background, image and frames
  int64_t videos, frames, height, width, channels;
  int64_t max_count;  // largest per-video point count
  uintptr_t points;   // (M, 3)
  uintptr_t colors;   // (M, C)
  uintptr_t offsets;  // (B,) int64: first row of each video
  uintptr_t counts;   // (B,) int64
  uintptr_t rows;     // (B, T, 12)
  uintptr_t keys;     // (B, T, H, W) int64, EMPTY-filled before pass 1
  uintptr_t background;  // (C,)
  // resolve outputs
  uintptr_t image;     // (B, T, C, H, W)
  uintptr_t depth;     // (B, T, H, W)
  uintptr_t coverage;  // (B, T, H, W) uint8
  // fused consistency
  uintptr_t target;            // real frames (B, T, C, H, W)
  uintptr_t squared_partials;  // (B * T, chunks), accumulation dtype
  uintptr_t covered_partials;  // (B * T, chunks) int64
  int64_t chunks, chunk;
  bool masked;
};

// One rounding per operation, never contracted into an FMA: every backend (and the torch
// reference) must produce the same bits, or a point on a pixel boundary lands differently.
VGPA_HD float mul_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
VGPA_HD double mul_rn(double a, double b) {
#ifdef __CUDA_ARCH__
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
VGPA_HD float add_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
VGPA_HD double add_rn(double a, double b) {
#ifdef __CUDA_ARCH__
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}
VGPA_HD float div_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fdiv_rn(a, b);  // IEEE division even under --use_fast_math
#else
  return a / b;
#endif
}
VGPA_HD double div_rn(double a, double b) {
#ifdef __CUDA_ARCH__
  return __ddiv_rn(a, b);
#else
  return a / b;
#endif
}

template <typename S>
VGPA_HD bool is_finite(S v) {
#ifdef __CUDA_ARCH__
  return isfinite(v);
#else
  return std::isfinite(v);
#endif
}

// Nearest integer, ties to even. The host adds and subtracts 1.5 * 2^mantissa, which rounds
// in the default (to nearest even) mode without a libm call; it is exact for |v| < 2^22 and
// larger values are left as they are: they fall outside any image (sides <= 2^22) either way.
template <typename S>
struct RoundingMagic;
template <>
struct RoundingMagic<float> {
  static constexpr float value = 12582912.0f;  // 1.5 * 2^23
};
template <>
struct RoundingMagic<double> {
  static constexpr double value = 6755399441055744.0;  // 1.5 * 2^52
};

template <typename S>
VGPA_HD S round_half_even(S v) {
#ifdef __CUDA_ARCH__
  return rint(v);
#else
  if (!(v > S(-4194304) && v < S(4194304))) return v;  // |v| >= 2^22 or NaN
  return (v + RoundingMagic<S>::value) - RoundingMagic<S>::value;
#endif
}

// ((r0 x + r1 y) + r2 z) + r3
template <typename S>
VGPA_HD S row_dot(const S* r, S x, S y, S z) {
  return add_rn(add_rn(add_rn(mul_rn(r[0], x), mul_rn(r[1], y)), mul_rn(r[2], z)), r[3]);
}

template <typename S>
VGPA_HD S camera_depth(const S* rows, S x, S y, S z) { return row_dot(rows + 8, x, y, z); }

// Column (row 0) or row (row 4) of the pixel a point of camera depth `depth` lands on.
template <typename S>
VGPA_HD S pixel_coordinate(const S* row, S x, S y, S z, S depth) {
  return round_half_even(div_rn(row_dot(row, x, y, z), depth));
}

// The landing rules, also evaluated lane by lane by the host's SIMD loop (render_points.cpp):
// a finite point, a finite depth > 0, and a pixel (u, v) inside the image (NaN fails).
template <typename S>
VGPA_HD bool point_is_finite(S x, S y, S z) { return is_finite(x) & is_finite(y) & is_finite(z); }
template <typename S>
VGPA_HD bool depth_in_front(S depth) { return (depth > S(0)) & is_finite(depth); }
template <typename S>
VGPA_HD bool pixel_in_image(S u, S v, int64_t height, int64_t width) {
  return (u >= S(0)) & (u < S(width)) & (v >= S(0)) & (v < S(height));
}

// Projects one world point with one frame's rows; true iff it lands, with its depth and pixel.
template <typename S>
VGPA_HD bool project_point(const S* rows, S x, S y, S z, int64_t height, int64_t width, S& depth,
                           int64_t& pixel) {
  if (!point_is_finite(x, y, z)) return false;
  depth = camera_depth(rows, x, y, z);
  if (!depth_in_front(depth)) return false;
  const S u = pixel_coordinate(rows, x, y, z, depth);
  const S v = pixel_coordinate(rows + 4, x, y, z, depth);
  if (!pixel_in_image(u, v, height, width)) return false;
  pixel = int64_t(v) * width + int64_t(u);
  return true;
}

template <typename S>
VGPA_HD int64_t depth_key(S depth, int64_t index) {
  return (int64_t(bits_from_float(float(depth))) << kIndexBits) | index;
}

// The pixel's render in channel c: the winner's colour or the background.
template <typename T>
VGPA_HD const T* pixel_color(bool covered, const T* colors, int64_t winner, int64_t channels, const T* background) {
  return covered ? colors + winner * channels : background;
}

template <typename F>
void dispatch_points_dtype(int dtype, F&& f) {
  switch (static_cast<Dtype>(dtype)) {
    case Dtype::Float32: f(static_cast<float*>(nullptr)); break;
    case Dtype::Float64: f(static_cast<double*>(nullptr)); break;
    default: throw std::invalid_argument("render_points: points must be float32 or float64");
  }
}

void render_points_zbuffer_cpu(const RenderPointsArgs& args);
void render_points_resolve_cpu(const RenderPointsArgs& args);
void render_consistency_cpu(const RenderPointsArgs& args);
#ifdef VGPA_WITH_CUDA
void render_points_zbuffer_cuda(const RenderPointsArgs& args, uintptr_t stream);
void render_points_resolve_cuda(const RenderPointsArgs& args, uintptr_t stream);
void render_consistency_cuda(const RenderPointsArgs& args, uintptr_t stream);
#endif

}  // namespace vgpa

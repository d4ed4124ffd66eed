// Pinhole-camera warp math shared by the geometry ops (docs/design.md 2, 3.1, 3.2), on the host
// (C++/OpenMP twins) and on the device (CUDA). Conventions: pixel centres at integer (u, v),
// u = column, v = row; OpenCV camera (x right, y down, z forward); matrices row-major.
#pragma once

#include <cmath>

#include "common.h"

namespace vgpa {

template <typename A>
VGPA_HD A floor_of(A x) {
#ifdef __CUDA_ARCH__
  return floor(x);
#else
  return std::floor(x);
#endif
}

template <typename A>
struct Vec3 {
  A x, y, z;
};

// Finite and > 0. Written with comparisons only so it holds for NaN and +-inf on every
// compiler (no std::isfinite on the device); & rather than && keeps it free of branches, so
// that the host's lane loops can vectorise it.
template <typename A>
VGPA_HD bool depth_is_valid(A z) {
  return (z > A(0)) & (z - z == A(0));
}

// X = z K^-1 [u, v, 1]^T (kinv: 3x3).
template <typename A>
VGPA_HD Vec3<A> unproject(const A* kinv, A u, A v, A z) {
  return {z * (kinv[0] * u + kinv[1] * v + kinv[2]), z * (kinv[3] * u + kinv[4] * v + kinv[5]),
          z * (kinv[6] * u + kinv[7] * v + kinv[8])};
}

// Y = R X + t (rt: 3x4 [R | t]).
template <typename A>
VGPA_HD Vec3<A> rigid_transform(const A* rt, Vec3<A> p) {
  return {rt[0] * p.x + rt[1] * p.y + rt[2] * p.z + rt[3], rt[4] * p.x + rt[5] * p.y + rt[6] * p.z + rt[7],
          rt[8] * p.x + rt[9] * p.y + rt[10] * p.z + rt[11]};
}

// (u, v) = (K Y)_xy / Y_z (k: 3x3); the caller checks Y_z > 0.
template <typename A>
VGPA_HD void project(const A* k, Vec3<A> y, A& u, A& v) {
  u = (k[0] * y.x + k[1] * y.y + k[2] * y.z) / y.z;
  v = (k[3] * y.x + k[4] * y.y + k[5] * y.z) / y.z;
}

// A source pixel (u, v) with depth z warped into the target camera, and the derivatives of
// the target depth and coordinates with respect to z.
template <typename A>
struct PixelWarp {
  A depth, u, v;                 // z' and (u', v')
  A ddepth_dz, du_dz, dv_dz;
};

// The pair matrix pm (3x4, built by vgpa.reference.geometry.pair_projection) folds
// K_j [R_ji | t_ji] diag(K_i^-1, 1): rows 0-1 give the target pixel numerators, row 2 the
// target depth. With q = pm [u, v, 1, 1/z]: z' = z q_z, (u', v') = q_xy / q_z. Dividing by z
// first keeps identical cameras exact: pm = [I | 0] maps every pixel onto itself.
template <typename A>
VGPA_HD PixelWarp<A> warp_pixel(const A* pm, A u, A v, A z) {
  const A inv_z = A(1) / z;
  const A qx = pm[0] * u + pm[1] * v + pm[2] + pm[3] * inv_z;
  const A qy = pm[4] * u + pm[5] * v + pm[6] + pm[7] * inv_z;
  const A qz = pm[8] * u + pm[9] * v + pm[10] + pm[11] * inv_z;
  PixelWarp<A> w;
  w.depth = z * qz;
  w.u = qx / qz;
  w.v = qy / qz;
  // dq/dz = -pm[:, 3] / z^2
  const A inv_z2 = inv_z * inv_z;
  const A dqx = -pm[3] * inv_z2, dqy = -pm[7] * inv_z2, dqz = -pm[11] * inv_z2;
  w.ddepth_dz = pm[8] * u + pm[9] * v + pm[10];
  w.du_dz = (dqx - w.u * dqz) / qz;
  w.dv_dz = (dqy - w.v * dqz) / qz;
  return w;
}

// Target pixel inside the image: "strict" 0 <= u <= W-1 (every used tap in the image),
// "zeros" 0 <= u < W (grid_sample, align_corners=True, zero padding). False for NaN.
// & rather than && for the lane loops, as in depth_is_valid.
template <typename A>
VGPA_HD bool inside_image(A u, A v, int64_t height, int64_t width, bool strict) {
  if (strict) return (u >= A(0)) & (u <= A(width - 1)) & (v >= A(0)) & (v <= A(height - 1));
  return (u >= A(0)) & (u < A(width)) & (v >= A(0)) & (v < A(height));
}

// floor(x) for x >= 0 (or -0). The host build has no SSE4.1 round instruction, so std::floor
// is a long emulation there; truncation is the floor for x >= 0, and copysign keeps
// floor(-0) = -0, so the result is bitwise std::floor's.
template <typename A>
VGPA_HD A floor_of_nonnegative(A x) {
#ifdef __CUDA_ARCH__
  return floor(x);
#else
  return std::copysign(A(static_cast<int64_t>(x)), x);
#endif
}

// BilinearTaps::at, also called lane by lane by the host's SIMD loops: I is the coordinate
// type (int64_t; int32_t where the image's offsets fit), U the flag type of used[k] (0 or 1),
// both chosen so that the loops vectorise.
template <typename A, typename I, typename U>
VGPA_HD void bilinear_taps(A u, A v, I height, I width, I& x0, I& y0, A& wx, A& wy, A* w, U* used) {
  const A fu = floor_of_nonnegative(u), fv = floor_of_nonnegative(v);
  x0 = static_cast<I>(fu);
  y0 = static_cast<I>(fv);
  wx = u - fu;
  wy = v - fv;
  // Column x0 + 1 (row y0 + 1) in the image; x0 and y0 are (inside_image). & rather than &&
  // keeps the tests free of branches.
  const U col1 = U(x0 + 1 < width), row1 = U(y0 + 1 < height);
  for (int k = 0; k < 4; ++k) {
    w[k] = ((k & 1) ? wx : A(1) - wx) * ((k >> 1) ? wy : A(1) - wy);
    used[k] = ((k & 1) ? col1 : U(1)) & ((k >> 1) ? row1 : U(1)) & U(w[k] != A(0));
  }
}

// The bilinear value from four weights and tap values (0 for unused taps).
template <typename A>
VGPA_HD A bilinear_value(const A* w, const A* t) {
  return w[0] * t[0] + w[1] * t[1] + w[2] * t[2] + w[3] * t[3];
}

// d bilinear / d u and d v from the fractions (wx, wy) and four tap values (0 when unused).
template <typename A>
VGPA_HD A bilinear_d_du(A wx, A wy, const A* t) {
  return (A(1) - wy) * (t[1] - t[0]) + wy * (t[3] - t[2]);
}
template <typename A>
VGPA_HD A bilinear_d_dv(A wx, A wy, const A* t) {
  return (A(1) - wx) * (t[2] - t[0]) + wx * (t[3] - t[1]);
}

// The four bilinear taps around (u, v), tap k = (x0 + (k & 1), y0 + (k >> 1)). A tap is used
// when it lies in the image and has a non-zero weight: unused taps are never read, so a
// NaN next to the sample point cannot leak in through a zero weight. The weights and the used
// taps are worked out once here (a pixel asks for them up to three times).
template <typename A>
struct BilinearTaps {
  int64_t x0, y0;
  A wx, wy;
  A w[4];
  unsigned used_mask;

  // (u, v) must be inside the image (checked with inside_image first): finite and >= 0.
  VGPA_HD static BilinearTaps at(A u, A v, int64_t height, int64_t width) {
    BilinearTaps t;
    unsigned used[4];
    bilinear_taps(u, v, height, width, t.x0, t.y0, t.wx, t.wy, t.w, used);
    t.used_mask = used[0] | used[1] << 1 | used[2] << 2 | used[3] << 3;
    return t;
  }
  VGPA_HD int64_t x(int k) const { return x0 + (k & 1); }
  VGPA_HD int64_t y(int k) const { return y0 + (k >> 1); }
  VGPA_HD A weight(int k) const { return w[k]; }
  VGPA_HD bool used(int k) const { return (used_mask >> k) & 1u; }
  // Bilinear value and its derivatives in u and v from the four tap values (0 when unused).
  VGPA_HD A value(const A* t) const { return bilinear_value(w, t); }
  VGPA_HD A d_du(const A* t) const { return bilinear_d_du(wx, wy, t); }
  VGPA_HD A d_dv(const A* t) const { return bilinear_d_dv(wx, wy, t); }
};

// ---------------------------------------------------------------------------------------------
// Work split of the pairwise ops (reprojection error, normal stability): a row is one
// (video, pair), row = b * pairs + p; pair_frames (P, 2) holds (source i, target j).

struct PairRow {
  int64_t row, b, i, j;

  VGPA_HD static PairRow at(int64_t row, int64_t pairs, const int64_t* pair_frames) {
    const int64_t p = row % pairs;
    return {row, row / pairs, pair_frames[2 * p], pair_frames[2 * p + 1]};
  }
};

// Adds one scored pixel to its chunk's sums and, when maps are wanted, writes its map entries
// (error 0 where invalid) at index.
template <typename A>
VGPA_HD void record_score(bool valid, A error, int64_t index, A* error_map, uint8_t* valid_mask, A& sum, A& count) {
  if (valid) {
    sum += error;
    count += A(1);
  }
  if (error_map) {
    error_map[index] = valid ? error : A(0);
    valid_mask[index] = valid;
  }
}

// One forward job: pixels [begin, end) of one row, job = row * chunks + chunk. The chunks are a
// pure function of the shape, so the partial sums do not depend on threading.
struct PairChunk {
  PairRow pair;
  int64_t begin, end;

  VGPA_HD static PairChunk at(int64_t job, int64_t chunks, int64_t chunk, int64_t pairs, int64_t pixels,
                              const int64_t* pair_frames) {
    const int64_t begin = (job % chunks) * chunk;
    return {PairRow::at(job / chunks, pairs, pair_frames), begin, begin + chunk < pixels ? begin + chunk : pixels};
  }
};

// Scores pixels begin + first, begin + first + step, ... (< end) of one chunk with
// score(e, error) -> valid: sums the valid errors and counts them in that order, and writes
// the error map (0 where invalid) and the validity mask when they are wanted.
template <typename A, typename Score>
VGPA_HD void score_chunk(const PairChunk& c, int64_t first, int64_t step, int64_t pixels, A* error_map,
                         uint8_t* valid_mask, Score&& score, A& sum, A& count) {
  sum = A(0);
  count = A(0);
  for (int64_t e = c.begin + first; e < c.end; e += step) {
    A error;
    const bool valid = score(e, error);
    record_score(valid, error, c.pair.row * pixels + e, error_map, valid_mask, sum, count);
  }
}

// score_chunk for one thread walking the whole chunk on the host: the same sums in the same
// order, with score(e, y, x, error) given the pixel's row and column, which are stepped along
// instead of divided out of e for every pixel.
template <typename A, typename Score>
inline void score_chunk_rows(const PairChunk& c, int64_t width, int64_t pixels, A* error_map, uint8_t* valid_mask,
                             Score&& score, A& sum, A& count) {
  sum = A(0);
  count = A(0);
  int64_t y = c.begin / width, x = c.begin % width;
  for (int64_t e = c.begin; e < c.end; ++e) {
    A error;
    const bool valid = score(e, y, x, error);
    record_score(valid, error, c.pair.row * pixels + e, error_map, valid_mask, sum, count);
    if (++x == width) {
      x = 0;
      ++y;
    }
  }
}

// d loss / d e(pixel e) of one row: the mean's share (already divided by the count) plus the
// map's, when a map gradient is given.
template <typename A>
VGPA_HD A pixel_grad(const A* grad_error, const A* grad_map, int64_t row, int64_t pixels, int64_t e) {
  return grad_map ? grad_error[row] + grad_map[row * pixels + e] : grad_error[row];
}

#ifndef __CUDACC__
// The host lane loops' sums of one forward chunk: position k of every block of kBlock pixels
// adds into lane k % kSimdLanes, so the order (and the bits) is the same on every CPU.
template <typename A>
struct LaneSums {
  A sums[kSimdLanes] = {}, counts[kSimdLanes] = {};

  // One block: kBlock errors (0 where invalid, also past the n pixels of a short block) and
  // validity flags; the map entries of its n pixels go to index onwards when a map is wanted.
  template <int kBlock>
  void add_block(const A* error, const int32_t* ok, int n, int64_t index, A* error_map, uint8_t* valid_mask) {
    static_assert(kBlock % kSimdLanes == 0, "a block is whole lanes");
    for (int base = 0; base < kBlock; base += kSimdLanes)
      for (int k = 0; k < kSimdLanes; ++k) {
        sums[k] += error[base + k];
        counts[k] += ok[base + k] != 0 ? A(1) : A(0);
      }
    if (error_map)
      for (int l = 0; l < n; ++l) {
        error_map[index + l] = error[l];
        valid_mask[index + l] = uint8_t(ok[l]);
      }
  }

  // The chunk's error sum and valid count, lanes in order.
  void total(A* partial) const {
    A sum = A(0), count = A(0);
    for (int k = 0; k < kSimdLanes; ++k) {
      sum += sums[k];
      count += counts[k];
    }
    partial[0] = sum;
    partial[1] = count;
  }
};

// CPU backward of the pairwise ops, second pass over a group of items [begin, end) (item =
// row * pixels + e) that the first pass scored once each: the owner of frame (b, t) calls
// visit(frame, t, pair, first, last) for every row of the group whose pair has t as its source
// or target, rows ascending, with [first, last) the row's items inside the group. Each thread
// adds into its own frames, always in this order: gradients are bitwise reproducible whatever
// the thread count.
template <typename Visit>
inline void replay_group_by_frame(int64_t begin, int64_t end, int64_t frames, int64_t frames_total, int64_t pairs,
                                  int64_t pixels, const int64_t* pair_frames, Visit&& visit) {
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t frame = 0; frame < frames_total; ++frame) {
    const int64_t b = frame / frames, t = frame % frames;
    for (int64_t row = begin / pixels; row * pixels < end; ++row) {
      const PairRow pair = PairRow::at(row, pairs, pair_frames);
      if (pair.b != b || (pair.i != t && pair.j != t)) continue;
      const int64_t first = row * pixels > begin ? row * pixels : begin;
      const int64_t last = (row + 1) * pixels < end ? (row + 1) * pixels : end;
      visit(frame, t, pair, first, last);
    }
  }
}
#endif

}  // namespace vgpa

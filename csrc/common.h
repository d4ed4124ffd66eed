// Pieces shared by every vgpa kernel, on the host (C++/OpenMP) and on the device (CUDA).
#pragma once

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "float16_bits.h"

#ifdef __CUDACC__
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#define VGPA_HD __host__ __device__ __forceinline__
#else
#define VGPA_HD inline
#endif

// Hot host loops compiled three times (baseline x86-64, AVX2 + FMA, AVX-512) and picked at load
// time by the CPU (an ifunc), so one portable wheel runs full-width SIMD where the CPU has it.
// Results do not depend on the clone: the build never contracts into FMA
// (-ffp-contract=off), vector division and square root round as scalar ones, and the SIMD loops
// sum into a fixed number of lanes (kSimdLanes) rather than into the vector's width.
// GCC 11 is the first to know the x86-64-v3/v4 levels; other compilers build the baseline only.
// The sanitizer build defines VGPA_CPU_SIMD_ONE_CLONE and compiles for the level of the clone its
// CPU runs (vgpa/_build_config.py: sanitizer_flags): the other clones would never run there.
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11 && \
    !defined(__CUDACC__) && !defined(VGPA_CPU_SIMD_ONE_CLONE)
#define VGPA_CPU_SIMD_CLONES __attribute__((target_clones("default", "arch=x86-64-v3", "arch=x86-64-v4")))
#else
#define VGPA_CPU_SIMD_CLONES
#endif
// A host SIMD loop's entry point: cloned, with everything it calls inlined into each clone
// (left as calls, the shared per-element math keeps GCC from vectorising the loop).
#define VGPA_CPU_SIMD_ENTRY VGPA_CPU_SIMD_CLONES __attribute__((flatten))
// The lane loops' building blocks: inlined into their entry point whatever the size limits.
#define VGPA_ALWAYS_INLINE inline __attribute__((always_inline))

namespace vgpa {

// Lanes of the host SIMD loops' partial sums: a fixed count, not the vector width, so that the
// sum's order (and bits) is the same on every CPU.
constexpr int kSimdLanes = 16;

// Mirrors vgpa._backend.DTYPE_CODES.
enum class Dtype : int { Float32 = 0, Float16 = 1, BFloat16 = 2, Float64 = 3 };

// 16-bit storage types: plain bits, converted with round-to-nearest-even like torch.
struct Half {
  uint16_t bits;
};
struct BFloat16 {
  uint16_t bits;
};

VGPA_HD float float_from_bits(uint32_t u) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  return float16_bits::as_float(u);
#endif
}

VGPA_HD uint32_t bits_from_float(float f) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(f);
#else
  return float16_bits::as_bits(f);
#endif
}

VGPA_HD float to_float(Half h) {
#ifdef __CUDA_ARCH__
  return __half2float(__ushort_as_half(h.bits));
#else
  return float16_bits::half_to_float(h.bits);
#endif
}

VGPA_HD float to_float(BFloat16 b) { return float_from_bits(uint32_t(b.bits) << 16); }

VGPA_HD Half half_from_float(float f) {
#ifdef __CUDA_ARCH__
  return Half{__half_as_ushort(__float2half_rn(f))};
#else
  return Half{float16_bits::float_to_half(f)};
#endif
}

VGPA_HD BFloat16 bfloat16_from_float(float f) {
  const uint32_t u = bits_from_float(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return BFloat16{uint16_t((u >> 16) | 0x40u)};  // quiet nan
  return BFloat16{uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16)};
}

// Accumulation type: float, or double for double inputs.
template <typename T>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};

template <typename A>
VGPA_HD A load_as(const float* p) { return A(*p); }
template <typename A>
VGPA_HD A load_as(const double* p) { return A(*p); }
template <typename A>
VGPA_HD A load_as(const Half* p) { return A(to_float(*p)); }
template <typename A>
VGPA_HD A load_as(const BFloat16* p) { return A(to_float(*p)); }

template <typename A>
VGPA_HD void store_from(float* p, A v) { *p = float(v); }
template <typename A>
VGPA_HD void store_from(double* p, A v) { *p = double(v); }
template <typename A>
VGPA_HD void store_from(Half* p, A v) { *p = half_from_float(float(v)); }
template <typename A>
VGPA_HD void store_from(BFloat16* p, A v) { *p = bfloat16_from_float(float(v)); }

// ---------------------------------------------------------------------------------------------
// (N, F, A, B, C) strided operands, F split into S contiguous segments (see vgpa/_layout.py).

struct Strides {
  int64_t n, f, a, b, c;
};

struct SegmentedShape {
  int64_t frames, a, b, c;  // per-sample sizes
  int64_t segments;

  // Sample, first frame and element count of row ns = sample * segments + segment; the first
  // frames % segments segments hold one frame more (torch.tensor_split).
  VGPA_HD void span(int64_t ns, int64_t& n, int64_t& f0, int64_t& count) const {
    n = ns / segments;
    const int64_t k = ns % segments;
    const int64_t base = frames / segments, extra = frames % segments;
    f0 = k * base + (k < extra ? k : extra);
    count = (base + (k < extra ? 1 : 0)) * a * b * c;
  }
  VGPA_HD int64_t longest_segment() const { return (frames + segments - 1) / segments * a * b * c; }
};

// Position of one element inside a segment, advanced one element at a time on the CPU.
struct SegmentCursor {
  int64_t f, ia, ib, ic;

  VGPA_HD void seek(const SegmentedShape& s, int64_t f0, int64_t e) {
    const int64_t bc = s.b * s.c, inner = s.a * bc;
    f = f0 + e / inner;
    int64_t rem = e % inner;
    ia = rem / bc;
    rem %= bc;
    ib = rem / s.c;
    ic = rem % s.c;
  }
  // Elements from the cursor to the end of its innermost row.
  VGPA_HD int64_t row_remaining(const SegmentedShape& s) const { return s.c - ic; }
  // Moves count <= row_remaining() elements ahead.
  VGPA_HD void skip(const SegmentedShape& s, int64_t count) {
    ic += count;
    if (ic < s.c) return;
    ic = 0;
    if (++ib < s.b) return;
    ib = 0;
    if (++ia < s.a) return;
    ia = 0;
    ++f;
  }
  VGPA_HD int64_t offset(const Strides& st, int64_t n) const {
    return n * st.n + f * st.f + ia * st.a + ib * st.b + ic * st.c;
  }
};

inline Strides strides_from(const std::vector<int64_t>& v, const char* what) {
  if (v.size() != 5) throw std::invalid_argument(std::string(what) + ": expected 5 strides");
  return Strides{v[0], v[1], v[2], v[3], v[4]};
}

// Calls f(T*) with the storage type of dtype.
template <typename F>
void dispatch_dtype(int dtype, F&& f) {
  switch (static_cast<Dtype>(dtype)) {
    case Dtype::Float32: f(static_cast<float*>(nullptr)); break;
    case Dtype::Float16: f(static_cast<Half*>(nullptr)); break;
    case Dtype::BFloat16: f(static_cast<BFloat16*>(nullptr)); break;
    case Dtype::Float64: f(static_cast<double*>(nullptr)); break;
    default: throw std::invalid_argument("vgpa: unsupported dtype code " + std::to_string(dtype));
  }
}

#ifdef VGPA_WITH_CUDA
int cuda_runtime_version();       // CUDART_VERSION compiled in
std::string cuda_sass_archs();     // "80;90": the SASS compiled in
std::string cuda_ptx_arch();       // "90": the PTX compiled in
std::string cuda_driver_status();  // driver version and device count, or why CUDA is unusable
#endif

}  // namespace vgpa

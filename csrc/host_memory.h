// Host-side memory helpers of the C++ CPU kernels: output that streams past the caches, and
// huge pages for large fresh outputs. Neither changes a single bit of a result.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__linux__)
#include <sys/mman.h>
#endif
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace vgpa {

// Outputs at least this large are written with non-temporal stores: they do not fit in the
// caches with their inputs, so a normal store would first read each line from memory
// (read-for-ownership) only to overwrite it, and evict the inputs still being streamed.
constexpr int64_t kStreamingStoreBytes = int64_t(8) << 20;

// A fresh output of at least this size is backed by 2 MiB pages where the kernel allows it
// (transparent huge pages in "madvise" mode): a 36 MB gradient otherwise costs ~9000 page
// faults, each zeroing 4 KiB, which takes longer than the kernel writing it.
constexpr int64_t kHugePageBytes = int64_t(2) << 20;

// Hints huge pages for the 2 MiB-aligned part of [p, p + bytes): only whole huge pages inside
// the buffer are advised, so no memory outside it changes. Call before the first write.
inline void advise_huge_pages(void* p, int64_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (bytes < 2 * kHugePageBytes) return;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(p) + kHugePageBytes - 1) & ~uintptr_t(kHugePageBytes - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(p) + uintptr_t(bytes)) & ~uintptr_t(kHugePageBytes - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);  // a hint: errors ignored
#else
  (void)p;
  (void)bytes;
#endif
}

// Writes n elements, element i = value(i), to out: through the caches when streaming is false,
// otherwise 64-byte lines with non-temporal stores (the unaligned head and tail as usual).
// value must be cheap and free of side effects; it is called once per element in order.
template <typename T, typename Value>
inline void write_row(T* out, int64_t n, bool streaming, Value&& value) {
  int64_t i = 0;
#if defined(__SSE2__)
  if (streaming) {
    constexpr int64_t kLine = 64 / int64_t(sizeof(T));
    static_assert(64 % sizeof(T) == 0, "element size must divide a cache line");
    const int64_t head = int64_t((64 - reinterpret_cast<uintptr_t>(out) % 64) % 64);
    if (head % int64_t(sizeof(T)) == 0) {  // a misaligned element type never reaches line alignment
      const int64_t first = head / int64_t(sizeof(T)) < n ? head / int64_t(sizeof(T)) : n;
      for (; i < first; ++i) out[i] = value(i);
      alignas(64) T line[kLine];
      for (; i + kLine <= n; i += kLine) {
        for (int64_t k = 0; k < kLine; ++k) line[k] = value(i + k);
        const __m128i* src = reinterpret_cast<const __m128i*>(line);
        __m128i* dst = reinterpret_cast<__m128i*>(out + i);
        _mm_stream_si128(dst + 0, _mm_load_si128(src + 0));
        _mm_stream_si128(dst + 1, _mm_load_si128(src + 1));
        _mm_stream_si128(dst + 2, _mm_load_si128(src + 2));
        _mm_stream_si128(dst + 3, _mm_load_si128(src + 3));
      }
      _mm_sfence();  // streaming stores are weakly ordered: publish them before the thread moves on
    }
  }
#else
  (void)streaming;
#endif
  for (; i < n; ++i) out[i] = value(i);
}

}  // namespace vgpa

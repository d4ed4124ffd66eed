// C++ CPU twin of the CUDA kernels in diffusion_dpo_loss.cu: OpenMP over fixed chunks, each
// chunk walked row by row so that contiguous rows run as unit-stride SIMD loops.
#include "diffusion_dpo_loss.h"
#include "host_memory.h"

namespace vgpa {

namespace {

// Below this many elements per tensor the work is done on the calling thread: waking the
// thread team costs more than it saves, and far more when another process holds a core.
constexpr int64_t kSerialElements = 32768;

int64_t elements(const DiffusionDPOLossArgs& a) {
  return a.samples * a.shape.frames * a.shape.a * a.shape.b * a.shape.c;
}

// Adds one innermost row of `len` elements to acc. Stride 1 everywhere is the common case
// (contiguous latents); it gets its own loop so the compiler vectorises it. Without a
// reference (kHasRef false, r unused) only model_pred and target are read.
template <bool kHasRef, typename T, typename A>
void add_row(DpoPartial<A>& acc, const T* m, const T* r, const T* t, const A* w, const Strides* st, int64_t len) {
  A sm = 0, sr = 0, sw = 0;
  const int64_t cm = st[0].c, cr = st[1].c, ct = st[2].c, cw = st[3].c;
  if (cm == 1 && (!kHasRef || cr == 1) && ct == 1 && (w == nullptr || cw == 1)) {
    if (w == nullptr) {
#pragma omp simd reduction(+ : sm, sr)
      for (int64_t i = 0; i < len; ++i) {
        const A tt = load_as<A>(t + i), dm = load_as<A>(m + i) - tt;
        sm += dm * dm;
        if constexpr (kHasRef) {
          const A dr = load_as<A>(r + i) - tt;
          sr += dr * dr;
        }
      }
      sw = A(len);
    } else {
#pragma omp simd reduction(+ : sm, sr, sw)
      for (int64_t i = 0; i < len; ++i) {
        const A tt = load_as<A>(t + i), dm = load_as<A>(m + i) - tt, ww = w[i];
        sm += ww * dm * dm;
        if constexpr (kHasRef) {
          const A dr = load_as<A>(r + i) - tt;
          sr += ww * dr * dr;
        }
        sw += ww;
      }
    }
  } else {
    DpoPartial<A> row;
    for (int64_t i = 0; i < len; ++i) {
      const A ww = w ? w[i * cw] : A(1);
      if constexpr (kHasRef)
        row.add(load_as<A>(m + i * cm), load_as<A>(r + i * cr), load_as<A>(t + i * ct), ww);
      else
        row.add_model(load_as<A>(m + i * cm), load_as<A>(t + i * ct), ww);
    }
    sm = row.model;
    sr = row.ref;
    sw = row.weight;
  }
  acc.model += sm;
  acc.ref += sr;
  acc.weight += sw;
}

template <typename T, typename A>
void grad_row(T* g, const T* m, const T* t, const A* w, A scale, const Strides* st, int64_t len, bool streaming) {
  const int64_t cm = st[0].c, cg = st[1].c, ct = st[2].c, cw = st[3].c;
  if (cm == 1 && cg == 1 && ct == 1 && (w == nullptr || cw == 1)) {
    const auto element = [&](int64_t i) {
      T out;
      store_from(&out, dpo_grad(scale, load_as<A>(m + i), load_as<A>(t + i), w ? w[i] : A(1)));
      return out;
    };
    write_row(g, len, streaming, element);
  } else {
    for (int64_t i = 0; i < len; ++i)
      store_from(g + i * cg, dpo_grad(scale, load_as<A>(m + i * cm), load_as<A>(t + i * ct), w ? w[i * cw] : A(1)));
  }
}

template <typename T>
void forward(const DiffusionDPOLossArgs& args) {
  using A = typename Acc<T>::type;
  const T* model = reinterpret_cast<const T*>(args.ptr[0]);
  const T* ref = reinterpret_cast<const T*>(args.ptr[1]);
  const T* target = reinterpret_cast<const T*>(args.ptr[2]);
  const A* weight = reinterpret_cast<const A*>(args.ptr[3]);
  A* partials = reinterpret_cast<A*>(args.ptr[4]);
  const SegmentedShape& shape = args.shape;
  const Strides* st = args.strides;
  const int64_t rows = args.samples * shape.segments, jobs = rows * args.chunks;

#pragma omp parallel for schedule(static) if (elements(args) > kSerialElements)
  for (int64_t job = 0; job < jobs; ++job) {
    const int64_t ns = job / args.chunks, chunk = job % args.chunks;
    int64_t n, f0, count;
    shape.span(ns, n, f0, count);
    const int64_t begin = chunk * args.chunk;
    const int64_t end = begin + args.chunk < count ? begin + args.chunk : count;
    DpoPartial<A> acc;
    if (begin < end) {
      SegmentCursor cur;
      cur.seek(shape, f0, begin);
      for (int64_t e = begin; e < end;) {
        const int64_t len = cur.row_remaining(shape) < end - e ? cur.row_remaining(shape) : end - e;
        const T* m = model + cur.offset(st[0], n);
        const T* t = target + cur.offset(st[2], n);
        const A* w = weight ? weight + cur.offset(st[3], n) : nullptr;
        if (ref)
          add_row<true>(acc, m, ref + cur.offset(st[1], n), t, w, st, len);
        else
          add_row<false>(acc, m, static_cast<const T*>(nullptr), t, w, st, len);
        cur.skip(shape, len);
        e += len;
      }
    }
    A* out = partials + job * 3;
    out[0] = acc.model;
    out[1] = acc.ref;
    out[2] = acc.weight;
  }
}

template <typename T>
void backward(const DiffusionDPOLossArgs& args) {
  using A = typename Acc<T>::type;
  const T* model = reinterpret_cast<const T*>(args.ptr[0]);
  T* grad = reinterpret_cast<T*>(args.ptr[1]);
  const T* target = reinterpret_cast<const T*>(args.ptr[2]);
  const A* weight = reinterpret_cast<const A*>(args.ptr[3]);
  const A* scale = reinterpret_cast<const A*>(args.ptr[4]);
  const SegmentedShape& shape = args.shape;
  const Strides* st = args.strides;
  const int64_t block = args.chunk;
  const int64_t blocks = (shape.longest_segment() + block - 1) / block;
  const int64_t jobs = args.samples * shape.segments * blocks;
  // The gradient is a fresh buffer; its extent (strides are never negative) gets the huge-page
  // hint before anything touches it, and a large one is streamed out.
  const Strides& sg = st[1];
  const int64_t extent = 1 + (args.samples - 1) * sg.n + (shape.frames - 1) * sg.f + (shape.a - 1) * sg.a +
                         (shape.b - 1) * sg.b + (shape.c - 1) * sg.c;
  const int64_t grad_bytes = jobs > 0 ? extent * int64_t(sizeof(T)) : 0;
  const bool streaming = grad_bytes >= kStreamingStoreBytes;
  if (streaming) advise_huge_pages(grad, grad_bytes);

#pragma omp parallel for schedule(static) if (elements(args) > kSerialElements)
  for (int64_t job = 0; job < jobs; ++job) {
    const int64_t ns = job / blocks, begin = (job % blocks) * block;
    int64_t n, f0, count;
    shape.span(ns, n, f0, count);
    const int64_t end = begin + block < count ? begin + block : count;
    if (begin >= end) continue;
    SegmentCursor cur;
    cur.seek(shape, f0, begin);
    for (int64_t e = begin; e < end;) {
      const int64_t len = cur.row_remaining(shape) < end - e ? cur.row_remaining(shape) : end - e;
      grad_row(grad + cur.offset(st[1], n), model + cur.offset(st[0], n), target + cur.offset(st[2], n),
               weight ? weight + cur.offset(st[3], n) : nullptr, scale[ns], st, len, streaming);
      cur.skip(shape, len);
      e += len;
    }
  }
}

}  // namespace

void diffusion_dpo_loss_forward_cpu(const DiffusionDPOLossArgs& args) {
  dispatch_dtype(args.dtype, [&](auto* tag) { forward<std::remove_pointer_t<decltype(tag)>>(args); });
}

void diffusion_dpo_loss_backward_cpu(const DiffusionDPOLossArgs& args) {
  dispatch_dtype(args.dtype, [&](auto* tag) { backward<std::remove_pointer_t<decltype(tag)>>(args); });
}

}  // namespace vgpa

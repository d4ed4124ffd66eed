// Python bindings of the epipolar kernels (CPU always, CUDA when compiled in). Pointers are raw
// addresses; every tensor is laid out by the Python op (vgpa/ops/epipolar.py).
#include "bindings.h"
#include "epipolar.h"

namespace vgpa {

namespace {

// sizes: pairs, hypotheses, rows, max_count, chunk, chunks
// ptrs: fundamental, x1, x2, offsets, counts, distance, inliers, grad_distance, grad_partials,
//       grad_x1, grad_x2 (0 where unused)
EpipolarArgs epipolar_args(int dtype, const Sizes& sizes, bool squared, double threshold_squared,
                           const std::vector<uintptr_t>& ptrs) {
  if (sizes.size() != 6 || ptrs.size() != 11) throw std::invalid_argument("epipolar: bad argument layout");
  EpipolarArgs a{};
  a.dtype = dtype;
  a.pairs = sizes[0];
  a.hypotheses = sizes[1];
  a.rows = sizes[2];
  a.max_count = sizes[3];
  a.chunk = sizes[4];
  a.chunks = sizes[5];
  a.squared = squared;
  a.threshold_squared = threshold_squared;
  a.fundamental = ptrs[0];
  a.x1 = ptrs[1];
  a.x2 = ptrs[2];
  a.offsets = ptrs[3];
  a.counts = ptrs[4];
  a.distance = ptrs[5];
  a.inliers = ptrs[6];
  a.grad_distance = ptrs[7];
  a.grad_partials = ptrs[8];
  a.grad_x1 = ptrs[9];
  a.grad_x2 = ptrs[10];
  return a;
}

}  // namespace

void bind_epipolar(py::module_& m) {
#if VGPA_BIND_CPU
  m.def(
      "sampson_distance_forward_cpu",
      [](int dtype, const Sizes& sizes, bool squared, double t2, const std::vector<uintptr_t>& ptrs) {
        sampson_distance_forward_cpu(epipolar_args(dtype, sizes, squared, t2, ptrs));
      },
      py::call_guard<py::gil_scoped_release>());
  m.def(
      "sampson_distance_backward_cpu",
      [](int dtype, const Sizes& sizes, bool squared, double t2, const std::vector<uintptr_t>& ptrs) {
        sampson_distance_backward_cpu(epipolar_args(dtype, sizes, squared, t2, ptrs));
      },
      py::call_guard<py::gil_scoped_release>());
  m.def(
      "ransac_inlier_count_cpu",
      [](int dtype, const Sizes& sizes, bool squared, double t2, const std::vector<uintptr_t>& ptrs) {
        ransac_inlier_count_cpu(epipolar_args(dtype, sizes, squared, t2, ptrs));
      },
      py::call_guard<py::gil_scoped_release>());
#endif
#ifdef VGPA_WITH_CUDA
  m.def("sampson_distance_forward_cuda", [](int dtype, const Sizes& sizes, bool squared, double t2,
                                            const std::vector<uintptr_t>& ptrs, uintptr_t stream) {
    sampson_distance_forward_cuda(epipolar_args(dtype, sizes, squared, t2, ptrs), stream);
  });
  m.def("sampson_distance_backward_cuda", [](int dtype, const Sizes& sizes, bool squared, double t2,
                                             const std::vector<uintptr_t>& ptrs, uintptr_t stream) {
    sampson_distance_backward_cuda(epipolar_args(dtype, sizes, squared, t2, ptrs), stream);
  });
  m.def("ransac_inlier_count_cuda", [](int dtype, const Sizes& sizes, bool squared, double t2,
                                       const std::vector<uintptr_t>& ptrs, uintptr_t stream) {
    ransac_inlier_count_cuda(epipolar_args(dtype, sizes, squared, t2, ptrs), stream);
  });
#endif
}

}  // namespace vgpa

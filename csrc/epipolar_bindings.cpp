// Python bindings of the epipolar kernels (CPU always, CUDA when compiled in), with named fields
// (bindings.h). Every tensor is laid out by the Python op (vgpa/ops/epipolar.py).
#include "bindings.h"
#include "epipolar.h"

namespace vgpa {

void bind_epipolar(py::module_& m) {
  using A = EpipolarArgs;
  auto fields = std::make_shared<ArgFields<A>>();
  fields->add("dtype", &A::dtype).add("pairs", &A::pairs).add("hypotheses", &A::hypotheses).add("rows", &A::rows)
      .add("max_count", &A::max_count).add("chunk", &A::chunk).add("chunks", &A::chunks).add("squared", &A::squared)
      .add("threshold_squared", &A::threshold_squared).add("fundamental", &A::fundamental).add("x1", &A::x1)
      .add("x2", &A::x2).add("offsets", &A::offsets).add("counts", &A::counts).add("distance", &A::distance)
      .add("inliers", &A::inliers).add("grad_distance", &A::grad_distance).add("grad_partials", &A::grad_partials)
      .add("grad_x1", &A::grad_x1).add("grad_x2", &A::grad_x2);
  const std::string matches = "dtype pairs hypotheses rows max_count fundamental x1 x2 offsets counts ";
  VGPA_BIND_KERNEL(m, sampson_distance_forward, fields, matches + "squared distance");
  VGPA_BIND_KERNEL(m, sampson_distance_backward, fields,
                   matches + "squared chunk chunks grad_distance grad_partials grad_x1 grad_x2");
  VGPA_BIND_KERNEL(m, ransac_inlier_count, fields, matches + "threshold_squared inliers");
}

}  // namespace vgpa

// Python bindings of the depth-to-normals and normal-stability kernels (CPU always, CUDA when
// compiled in), with named fields (bindings.h). Every tensor is laid out by the Python op.
#include "bindings.h"
#include "normal_stability.h"

namespace vgpa {

void bind_normal_stability(py::module_& m) {
  using A = NormalStabilityArgs;
  auto fields = std::make_shared<ArgFields<A>>();
  fields->add("dtype", &A::dtype).add("batch", &A::batch).add("frames", &A::frames).add("pairs", &A::pairs)
      .add("height", &A::height).add("width", &A::width).add("warp", &A::warp).add("occlusion", &A::occlusion)
      .add("occlusion_tol", &A::occlusion_tol).add("depth", &A::depth).add("depth_strides", &A::depth_strides)
      .add("inverse_intrinsics", &A::inverse_intrinsics).add("rotations", &A::rotations)
      .add("pair_matrices", &A::pair_matrices).add("pair_frames", &A::pair_frames).add("normals", &A::normals)
      .add("normals_valid", &A::normals_valid).add("partials", &A::partials).add("error_map", &A::error_map)
      .add("valid_mask", &A::valid_mask).add("chunks", &A::chunks).add("chunk", &A::chunk)
      .add("grad_error", &A::grad_error).add("grad_map", &A::grad_map).add("grad_normals", &A::grad_normals)
      .add("grad_depth", &A::grad_depth);
  // depth_to_normals sees B * T frames as a batch of single frames (frames = 1).
  const std::string frames = "dtype batch frames height width depth depth_strides inverse_intrinsics ";
  const std::string pairs = frames + "pairs warp occlusion occlusion_tol rotations pair_matrices pair_frames ";
  VGPA_BIND_KERNEL(m, depth_to_normals, fields, frames + "normals normals_valid");
  VGPA_BIND_KERNEL(m, depth_to_normals_backward, fields, frames + "grad_normals grad_depth");
  VGPA_BIND_KERNEL(m, normal_stability_forward, fields, pairs + "partials error_map? valid_mask? chunks chunk");
  VGPA_BIND_KERNEL(m, normal_stability_backward, fields, pairs + "grad_error grad_map? grad_normals");
}

}  // namespace vgpa

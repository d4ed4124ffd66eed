// Python bindings of the reprojection-error and unprojection kernels (CPU always, CUDA when
// compiled in), with named fields (bindings.h). Every tensor is laid out by the Python op.
#include "bindings.h"
#include "reprojection_error.h"

namespace vgpa {

void bind_reprojection_error(py::module_& m) {
  using A = ReprojectionErrorArgs;
  auto fields = std::make_shared<ArgFields<A>>();
  fields->add("dtype", &A::dtype).add("batch", &A::batch).add("pairs", &A::pairs).add("frames", &A::frames)
      .add("height", &A::height).add("width", &A::width).add("channels", &A::channels).add("error", &A::error)
      .add("strict", &A::strict).add("occlusion", &A::occlusion).add("occlusion_tol", &A::occlusion_tol)
      .add("depth", &A::depth).add("image", &A::image).add("depth_strides", &A::depth_strides)
      .add("image_strides", &A::image_strides).add("pair_matrices", &A::pair_matrices)
      .add("pair_frames", &A::pair_frames).add("partials", &A::partials).add("error_map", &A::error_map)
      .add("valid_mask", &A::valid_mask).add("chunks", &A::chunks).add("chunk", &A::chunk)
      .add("grad_error", &A::grad_error).add("grad_map", &A::grad_map).add("grad_depth", &A::grad_depth)
      .add("grad_image", &A::grad_image);
  const std::string common =
      "dtype batch pairs frames height width channels error strict occlusion occlusion_tol depth image? "
      "depth_strides image_strides? pair_matrices pair_frames ";
  VGPA_BIND_KERNEL(m, reprojection_error_forward, fields, common + "partials error_map? valid_mask? chunks chunk");
  VGPA_BIND_KERNEL(m, reprojection_error_backward, fields, common + "grad_error grad_map? grad_depth? grad_image?");

  using U = UnprojectDepthArgs;
  auto unproject = std::make_shared<ArgFields<U>>();
  unproject->add("dtype", &U::dtype).add("frames_total", &U::frames_total).add("frames_per_video", &U::frames_per_video)
      .add("height", &U::height).add("width", &U::width).add("depth", &U::depth)
      .add("depth_strides", &U::depth_strides).add("ray_maps", &U::ray_maps).add("points", &U::points);
  VGPA_BIND_KERNEL(m, unproject_depth, unproject,
                   "dtype frames_total frames_per_video height width depth depth_strides ray_maps points");
}

}  // namespace vgpa

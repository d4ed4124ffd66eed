// Python bindings of the point-cloud re-render kernels (CPU always, CUDA when compiled in), with
// named fields (bindings.h). Every tensor is laid out by the Python op.
#include "bindings.h"
#include "render_points.h"

namespace vgpa {

void bind_render_points(py::module_& m) {
  using A = RenderPointsArgs;
  auto fields = std::make_shared<ArgFields<A>>();
  fields->add("points_dtype", &A::points_dtype).add("colors_dtype", &A::colors_dtype).add("videos", &A::videos)
      .add("frames", &A::frames).add("height", &A::height).add("width", &A::width).add("channels", &A::channels)
      .add("max_count", &A::max_count).add("points", &A::points).add("colors", &A::colors)
      .add("offsets", &A::offsets).add("counts", &A::counts).add("rows", &A::rows).add("keys", &A::keys)
      .add("background", &A::background).add("image", &A::image).add("depth", &A::depth)
      .add("coverage", &A::coverage).add("target", &A::target).add("squared_partials", &A::squared_partials)
      .add("covered_partials", &A::covered_partials).add("chunks", &A::chunks).add("chunk", &A::chunk)
      .add("masked", &A::masked);
  const std::string frames = "videos frames height width max_count ";
  VGPA_BIND_KERNEL(m, render_points_zbuffer, fields, frames + "points_dtype points offsets counts rows keys");
  VGPA_BIND_KERNEL(m, render_points_resolve, fields,
                   frames + "points_dtype colors_dtype channels keys points colors offsets rows background image "
                            "depth coverage");
  VGPA_BIND_KERNEL(m, render_consistency, fields,
                   frames + "colors_dtype channels keys colors offsets background target squared_partials "
                            "covered_partials chunks chunk masked");
}

}  // namespace vgpa

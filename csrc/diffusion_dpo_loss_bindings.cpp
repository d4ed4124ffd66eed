// Python bindings of the Diffusion-DPO loss kernels (CPU always, CUDA when compiled in), with named
// fields (bindings.h). The kernels address their five tensors and four stride sets through slots
// (DiffusionDPOLossArgs): the forward's (model, ref, target, weight, partials) and the backward's
// (model, grad, target, weight, scale) share one layout, so the names map onto the slots here.
#include "bindings.h"
#include "diffusion_dpo_loss.h"

namespace vgpa {

namespace {

using A = DiffusionDPOLossArgs;

ArgFields<A>::Setter pointer_slot(int slot) {
  return [slot](A& a, py::handle v) { a.ptr[slot] = py::cast<uintptr_t>(v); };
}

ArgFields<A>::Setter strides_slot(int slot) {
  return [slot](A& a, py::handle v) {
    const auto s = py::cast<std::vector<int64_t>>(v);
    if (s.size() != 5) throw py::type_error("stride fields take 5 values, got " + std::to_string(s.size()));
    a.strides[slot] = strides_from(s, "diffusion_dpo_loss");
  };
}

std::shared_ptr<ArgFields<A>> common_fields() {
  auto fields = std::make_shared<ArgFields<A>>();
  fields->add("dtype", &A::dtype).add("samples", &A::samples).add("chunks", &A::chunks).add("chunk", &A::chunk)
      .add("segments", [](A& a, py::handle v) { a.shape.segments = py::cast<int64_t>(v); })
      .add("sizes", [](A& a, py::handle v) {  // per-sample (frames, a, b, c)
        const auto s = py::cast<std::vector<int64_t>>(v);
        if (s.size() != 4) throw py::type_error("field 'sizes' takes 4 values, got " + std::to_string(s.size()));
        a.shape.frames = s[0], a.shape.a = s[1], a.shape.b = s[2], a.shape.c = s[3];
      })
      .add("model", pointer_slot(0)).add("target", pointer_slot(2)).add("weight", pointer_slot(3))
      .add("model_strides", strides_slot(0)).add("target_strides", strides_slot(2))
      .add("weight_strides", strides_slot(3));
  return fields;
}

}  // namespace

void bind_diffusion_dpo_loss(py::module_& m) {
  auto forward = common_fields();
  forward->add("ref", pointer_slot(1)).add("ref_strides", strides_slot(1)).add("partials", pointer_slot(4));
  auto backward = common_fields();
  backward->add("grad", pointer_slot(1)).add("grad_strides", strides_slot(1)).add("scale", pointer_slot(4));
  const std::string common = "dtype samples segments sizes chunk model model_strides target target_strides weight? "
                             "weight_strides ";
  // ref may be 0 (reference-free losses: the kernels read model and target only).
  VGPA_BIND_KERNEL(m, diffusion_dpo_loss_forward, forward, common + "chunks ref? ref_strides partials");
  VGPA_BIND_KERNEL(m, diffusion_dpo_loss_backward, backward, common + "grad grad_strides scale");
}

}  // namespace vgpa

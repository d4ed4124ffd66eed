// Paired Diffusion-DPO loss (docs/design.md 3.4): the per-element math shared by the CUDA kernels
// (diffusion_dpo_loss.cu) and their C++ CPU twin (diffusion_dpo_loss.cpp).
#pragma once

#include "common.h"

namespace vgpa {

struct DiffusionDPOLossArgs {
  int dtype;
  SegmentedShape shape;
  int64_t samples;
  // forward: model, ref (0: reference-free, never read), target, weight (0: unweighted),
  //          partial sums (rows, chunks, 3)
  // backward: model, grad (out), target, weight, scale (rows)
  uintptr_t ptr[5];
  Strides strides[4];
  int64_t chunks, chunk;
};

// Partial sums of one chunk of one (sample, segment).
template <typename A>
struct DpoPartial {
  A model = 0, ref = 0, weight = 0;

  VGPA_HD void add(A m, A r, A t, A w) {
    add_model(m, t, w);
    const A dr = r - t;
    ref += w * dr * dr;
  }

  // Reference-free losses ("dro"): the reference is not read and its sum stays 0.
  VGPA_HD void add_model(A m, A t, A w) {
    const A dm = m - t;
    model += w * dm * dm;
    weight += w;
  }
};

// d err / d pred for one element, scale = 2 * dL/derr / sum(w) of its (sample, segment).
template <typename A>
VGPA_HD A dpo_grad(A scale, A m, A t, A w) { return scale * w * (m - t); }

void diffusion_dpo_loss_forward_cpu(const DiffusionDPOLossArgs& args);
void diffusion_dpo_loss_backward_cpu(const DiffusionDPOLossArgs& args);
#ifdef VGPA_WITH_CUDA
void diffusion_dpo_loss_forward_cuda(const DiffusionDPOLossArgs& args, uintptr_t stream);
void diffusion_dpo_loss_backward_cuda(const DiffusionDPOLossArgs& args, uintptr_t stream);
#endif

}  // namespace vgpa

// Shared by the <op>_bindings.cpp files: pybind11 and one bind function per op.
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cstdint>
#include <vector>

#include "common.h"

// The CUDA emulation module (csrc/emulation, a test instrument) binds the *_cuda functions only.
#ifdef VGPA_CUDA_EMULATION_MODULE
#define VGPA_BIND_CPU 0
#else
#define VGPA_BIND_CPU 1
#endif

namespace vgpa {

namespace py = pybind11;

using Sizes = std::vector<int64_t>;
using StrideList = std::vector<std::vector<int64_t>>;

void bind_diffusion_dpo_loss(py::module_& m);
void bind_epipolar(py::module_& m);
void bind_normal_stability(py::module_& m);
void bind_render_points(py::module_& m);
void bind_reprojection_error(py::module_& m);

}  // namespace vgpa

// pybind11 bindings of vgpa._C. Every kernel takes raw pointers, sizes and a CUDA stream, so
// this module does not depend on torch's C++ ABI. Each op binds its functions in
// <op>_bindings.cpp; this file only assembles the module.
#include "bindings.h"

PYBIND11_MODULE(_C, m) {
  m.doc() = "vgpa compiled kernels (C++ CPU, and CUDA when built with nvcc)";
  m.def("with_cuda", [] {
#ifdef VGPA_WITH_CUDA
    return true;
#else
    return false;
#endif
  });
#ifdef VGPA_WITH_CUDA
  m.def("cuda_archs", &vgpa::cuda_sass_archs, "CUDA architectures compiled in as SASS, e.g. \"80;90\"");
  m.def("cuda_ptx_arch", &vgpa::cuda_ptx_arch, "CUDA architecture compiled in as PTX, e.g. \"90\"");
  m.def("cuda_runtime_version", &vgpa::cuda_runtime_version, "CUDA runtime version linked in");
  m.def("cuda_driver_status", &vgpa::cuda_driver_status, "driver version and devices, or the CUDA error");
#else
  m.def("cuda_archs", [] { return std::string(); }, "CUDA architectures compiled in as SASS: none");
#endif

  vgpa::bind_ops(m);  // every op of VGPA_OPS (bindings.h)
}

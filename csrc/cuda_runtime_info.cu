// What `vgpa info` reports about this build's CUDA code and the statically linked CUDA runtime.
#include <cuda_runtime.h>

#include <string>

#include "common.h"

// setup.py compiles the architectures of the build in (vgpa/_build_config.py:
// arch_report_defines), so the module reports what it holds. The GPU-proof checks compile this
// file on its own, for its PTX only, without them.
#ifndef VGPA_CUDA_SASS_ARCHS
#define VGPA_CUDA_SASS_ARCHS ""
#endif
#ifndef VGPA_CUDA_PTX_ARCH
#define VGPA_CUDA_PTX_ARCH ""
#endif

namespace vgpa {

int cuda_runtime_version() { return CUDART_VERSION; }

std::string cuda_sass_archs() { return VGPA_CUDA_SASS_ARCHS; }

std::string cuda_ptx_arch() { return VGPA_CUDA_PTX_ARCH; }

std::string cuda_driver_status() {
  int driver = 0, devices = 0;
  cudaError_t err = cudaDriverGetVersion(&driver);
  if (err == cudaSuccess) err = cudaGetDeviceCount(&devices);
  if (err != cudaSuccess) return std::string("unusable: ") + cudaGetErrorString(err);
  return "driver " + std::to_string(driver / 1000) + "." + std::to_string(driver % 1000 / 10) + ", " +
         std::to_string(devices) + " device(s)";
}

}  // namespace vgpa

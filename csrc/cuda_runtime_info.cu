// What `vgpa info` reports about the statically linked CUDA runtime.
#include <cuda_runtime.h>

#include <string>

#include "common.h"

namespace vgpa {

int cuda_runtime_version() { return CUDART_VERSION; }

std::string cuda_driver_status() {
  int driver = 0, devices = 0;
  cudaError_t err = cudaDriverGetVersion(&driver);
  if (err == cudaSuccess) err = cudaGetDeviceCount(&devices);
  if (err != cudaSuccess) return std::string("unusable: ") + cudaGetErrorString(err);
  return "driver " + std::to_string(driver / 1000) + "." + std::to_string(driver % 1000 / 10) + ", " +
         std::to_string(devices) + " device(s)";
}

}  // namespace vgpa

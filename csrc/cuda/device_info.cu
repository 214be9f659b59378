// What the CUDA runtime sees, without libtorch: used by `entropy-kernels info` and by the tests
// to tell "CUDA compiled in" from "a GPU present".
#include <cuda_runtime.h>

#include <string>

#include "device_info.h"

namespace ek {

int cuda_device_count() {
  int n = 0;
  // No driver / no GPU is not an error for us: it just means zero devices.
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error so later calls start clean
    return 0;
  }
  return n;
}

std::string cuda_device_name(int device) {
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, device) != cudaSuccess) {
    cudaGetLastError();
    return "";
  }
  return std::string(prop.name);
}

int cuda_runtime_version() { return CUDART_VERSION; }

int cuda_driver_version() {
  int v = 0;
  if (cudaDriverGetVersion(&v) != cudaSuccess) return 0;
  return v;
}

std::string cuda_error_string(int code) {
  return std::string(cudaGetErrorString(static_cast<cudaError_t>(code)));
}

}  // namespace ek

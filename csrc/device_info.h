// CUDA runtime queries used by `entropy-kernels info` (compiled only with EK_WITH_CUDA).
#pragma once
#include <string>

namespace ek {
int cuda_device_count();                // 0 when no driver or no GPU
std::string cuda_device_name(int device);
int cuda_runtime_version();             // CUDART_VERSION the module was built against
int cuda_driver_version();              // 0 when no driver
std::string cuda_error_string(int code);
}  // namespace ek

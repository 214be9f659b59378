// pybind11 module `entropy_kernels._C`.
//
// Convention for every launcher added here: arguments are raw addresses (uintptr_t), sizes and
// the CUDA stream as an integer (`torch.cuda.current_stream().cuda_stream`); all validation of
// shapes, dtypes and devices happens in Python before the call; a CUDA error code is turned into
// a RuntimeError here. No libtorch, so one .so works with any torch version.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "read_checksum.h"
#ifdef EK_WITH_CUDA
#include "device_info.h"
#endif

namespace py = pybind11;

namespace {

py::dict build_info() {
  py::dict info;
  info["compiler"] = EK_VERSION_INFO;
#ifdef EK_WITH_CUDA
  info["with_cuda"] = true;
  info["cuda_archs"] = EK_CUDA_ARCHS_STR;
  info["cuda_runtime_version"] = ek::cuda_runtime_version();
#else
  info["with_cuda"] = false;
  info["cuda_archs"] = "";
  info["cuda_runtime_version"] = 0;
#endif
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "entropy_kernels native extension (C++/CUDA launchers; no libtorch)";
  m.def("build_info", &build_info, "How this extension was built: compiler, CUDA, archs.");
  m.def(
      "read_checksum_cpu",
      [](uintptr_t ptr, int64_t nbytes) {
        py::gil_scoped_release release;
        return ek::read_checksum_cpu(reinterpret_cast<const void*>(ptr), nbytes);
      },
      py::arg("ptr"), py::arg("nbytes"),
      "XOR of the buffer's little-endian 32-bit words (last word zero-padded).");
#ifdef EK_WITH_CUDA
  m.def(
      "read_checksum_cuda",
      [](uintptr_t ptr, int64_t nbytes, uintptr_t out, uintptr_t stream) {
        const int err = ek::read_checksum_cuda(reinterpret_cast<const void*>(ptr), nbytes,
                                               reinterpret_cast<uint32_t*>(out), stream);
        if (err != 0) throw std::runtime_error("read_checksum_cuda: " + ek::cuda_error_string(err));
      },
      py::arg("ptr"), py::arg("nbytes"), py::arg("out"), py::arg("stream"),
      "Asynchronously write the XOR checksum of a device buffer to the device word `out`.");
  m.def("cuda_device_count", &ek::cuda_device_count, "CUDA devices visible (0 without driver).");
  m.def("cuda_device_name", &ek::cuda_device_name, py::arg("device"));
  m.def("cuda_driver_version", &ek::cuda_driver_version);
#endif
}

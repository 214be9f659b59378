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

#include "dfloat.h"
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

template <typename T>
T* ptr(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

void check_stream_values(int64_t s) {
  if (s < ek::dfloat::kGroup || s > ek::dfloat::kMaxStreamValues || s % ek::dfloat::kGroup != 0)
    throw std::invalid_argument("stream_values must be a multiple of 8 in [8, 4096]");
}

void bind_dfloat(py::module_& m) {
  namespace df = ek::dfloat;
  m.attr("DFLOAT_MAX_CODE_LEN") = df::kMaxCodeLen;
  m.attr("DFLOAT_MAX_STREAM_VALUES") = df::kMaxStreamValues;
  m.def(
      "dfloat_histogram",
      [](uintptr_t values, int64_t n, uintptr_t hist, int threads) {
        py::gil_scoped_release release;
        df::exponent_histogram(ptr<const uint16_t>(values), n, ptr<int64_t>(hist), threads);
      },
      py::arg("values"), py::arg("n"), py::arg("hist"), py::arg("threads") = 0,
      "int64[256] histogram of the exponents of n bf16 values (CPU).");
  m.def(
      "dfloat_code_lengths",
      [](uintptr_t hist, int max_len, uintptr_t lengths) {
        df::code_lengths(ptr<const int64_t>(hist), max_len, ptr<uint8_t>(lengths));
      },
      py::arg("hist"), py::arg("max_len"), py::arg("lengths"),
      "uint8[256] optimal prefix-code lengths limited to max_len (package-merge).");
  m.def(
      "dfloat_build_lut",
      [](uintptr_t lengths, uintptr_t lut) { df::build_lut(ptr<const uint8_t>(lengths), ptr<uint16_t>(lut)); },
      py::arg("lengths"), py::arg("lut"), "uint16[4096] decode table of the canonical code.");
  m.def(
      "dfloat_plan",
      [](uintptr_t values, int64_t n, int64_t s, uintptr_t lengths, uintptr_t lane_offsets,
         uintptr_t chunk_offsets, int threads) {
        check_stream_values(s);
        py::gil_scoped_release release;
        return df::plan_streams(ptr<const uint16_t>(values), n, s, ptr<const uint8_t>(lengths),
                                ptr<uint16_t>(lane_offsets), ptr<int64_t>(chunk_offsets), threads);
      },
      py::arg("values"), py::arg("n"), py::arg("stream_values"), py::arg("lengths"), py::arg("lane_offsets"),
      py::arg("chunk_offsets"), py::arg("threads") = 0,
      "Encoder pass 1: fills the index, returns the number of 32-bit stream words.");
  m.def(
      "dfloat_write",
      [](uintptr_t values, int64_t n, int64_t s, uintptr_t lengths, uintptr_t lane_offsets,
         uintptr_t chunk_offsets, uintptr_t words, uintptr_t raw, int threads) {
        check_stream_values(s);
        py::gil_scoped_release release;
        return df::write_streams(ptr<const uint16_t>(values), n, s, ptr<const uint8_t>(lengths),
                                 ptr<const uint16_t>(lane_offsets), ptr<const int64_t>(chunk_offsets),
                                 ptr<uint32_t>(words), ptr<uint8_t>(raw), threads);
      },
      py::arg("values"), py::arg("n"), py::arg("stream_values"), py::arg("lengths"), py::arg("lane_offsets"),
      py::arg("chunk_offsets"), py::arg("words"), py::arg("raw"), py::arg("threads") = 0,
      "Encoder pass 2: writes the streams and raw bytes; returns the XOR checksum of the input.");
  m.def(
      "dfloat_decode_cpu",
      [](uintptr_t words, int64_t num_words, uintptr_t chunk_offsets, uintptr_t lane_offsets, uintptr_t lut,
         uintptr_t raw, int64_t n, int64_t s, uintptr_t out, int threads) {
        check_stream_values(s);
        py::gil_scoped_release release;
        df::decode_cpu(ptr<const uint32_t>(words), num_words, ptr<const int64_t>(chunk_offsets),
                       ptr<const uint16_t>(lane_offsets), ptr<const uint16_t>(lut), ptr<const uint8_t>(raw), n, s,
                       ptr<uint16_t>(out), threads);
      },
      py::arg("words"), py::arg("num_words"), py::arg("chunk_offsets"), py::arg("lane_offsets"), py::arg("lut"),
      py::arg("raw"), py::arg("n"), py::arg("stream_values"), py::arg("out"), py::arg("threads") = 0,
      "Decode n bf16 values into out (CPU, multithreaded).");
#ifdef EK_WITH_CUDA
  m.def(
      "dfloat_decode_cuda",
      [](uintptr_t words, int64_t num_words, uintptr_t chunk_offsets, uintptr_t lane_offsets, uintptr_t lut,
         uintptr_t raw, int64_t n, int64_t s, uintptr_t out, uintptr_t stream) {
        check_stream_values(s);
        const int err = df::decode_cuda(ptr<const uint32_t>(words), num_words, ptr<const int64_t>(chunk_offsets),
                                        ptr<const uint16_t>(lane_offsets), ptr<const uint16_t>(lut),
                                        ptr<const uint8_t>(raw), n, s, ptr<uint16_t>(out), stream);
        if (err != 0) throw std::runtime_error("dfloat_decode_cuda: " + ek::cuda_error_string(err));
      },
      py::arg("words"), py::arg("num_words"), py::arg("chunk_offsets"), py::arg("lane_offsets"), py::arg("lut"),
      py::arg("raw"), py::arg("n"), py::arg("stream_values"), py::arg("out"), py::arg("stream"),
      "Asynchronously decode n bf16 values into the device buffer out on `stream`.");
#endif
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
  bind_dfloat(m);
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

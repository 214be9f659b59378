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
#include "dfloat_linear.h"
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

void bind_dfloat(py::module_& m) {
  namespace df = ek::dfloat;
  m.attr("DFLOAT_MAX_CODE_LEN") = df::kMaxCodeLen;
  m.attr("DFLOAT_SEGMENT_BITS") = df::kSegmentBits;
  m.attr("DFLOAT_BLOCK_BITS") = df::kBlockBits;
  m.attr("DFLOAT_MAX_THREADS") = df::kMaxThreads;
  m.attr("DFLOAT_UNDECODABLE") = df::kUndecodable;
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
      "dfloat_stream_bits",
      [](uintptr_t values, int64_t n, uintptr_t lengths, int threads) {
        py::gil_scoped_release release;
        return df::stream_bits(ptr<const uint16_t>(values), n, ptr<const uint8_t>(lengths), threads);
      },
      py::arg("values"), py::arg("n"), py::arg("lengths"), py::arg("threads") = 0,
      "Total bits of the exponent codes of n bf16 values.");
  m.def(
      "dfloat_encode",
      [](uintptr_t values, int64_t n, uintptr_t lengths, int64_t total_bits, uintptr_t words, uintptr_t gaps,
         uintptr_t block_starts, uintptr_t raw, int threads) {
        int64_t max_block_values = 0;
        uint32_t checksum;
        {
          py::gil_scoped_release release;
          checksum = df::encode(ptr<const uint16_t>(values), n, ptr<const uint8_t>(lengths), total_bits,
                                ptr<uint32_t>(words), ptr<uint8_t>(gaps), ptr<int64_t>(block_starts), ptr<uint8_t>(raw),
                                &max_block_values, threads);
        }
        return py::make_tuple(checksum, max_block_values);
      },
      py::arg("values"), py::arg("n"), py::arg("lengths"), py::arg("total_bits"), py::arg("words"), py::arg("gaps"),
      py::arg("block_starts"), py::arg("raw"), py::arg("threads") = 0,
      "Encode into zeroed words/gaps/block_starts/raw; returns (xor checksum of input, max values per block).");
  m.def(
      "dfloat_decode_cpu",
      [](uintptr_t words, int64_t num_words, uintptr_t block_starts, int64_t num_blocks, uintptr_t gaps,
         int64_t num_gap_bytes, uintptr_t lut, uintptr_t raw, int64_t n, int64_t total_bits, int64_t max_block_values,
         uintptr_t out, int64_t out_capacity, int threads) {
        py::gil_scoped_release release;
        return df::decode_cpu(ptr<const uint32_t>(words), num_words, ptr<const int64_t>(block_starts), num_blocks,
                              ptr<const uint8_t>(gaps), num_gap_bytes, ptr<const uint16_t>(lut),
                              ptr<const uint8_t>(raw), n, total_bits, max_block_values, ptr<uint16_t>(out),
                              out_capacity, threads);
      },
      py::arg("words"), py::arg("num_words"), py::arg("block_starts"), py::arg("num_blocks"), py::arg("gaps"),
      py::arg("num_gap_bytes"), py::arg("lut"), py::arg("raw"), py::arg("n"), py::arg("total_bits"),
      py::arg("max_block_values"), py::arg("out"), py::arg("out_capacity"), py::arg("threads") = 0,
      "Decode n bf16 values into out (CPU, multithreaded over blocks), checking the index against the stream; "
      "returns 0 or a DecodeStatus (csrc/dfloat.h) after filling out with NaN.");
  m.def(
      "dfloat_decode_emulated",
      [](uintptr_t words, int64_t num_words, uintptr_t block_starts, int64_t num_blocks, uintptr_t gaps,
         int64_t num_gap_bytes, uintptr_t lut, uintptr_t raw, int64_t n, int64_t total_bits, int64_t max_block_values,
         uintptr_t out, int64_t out_capacity) {
        py::gil_scoped_release release;
        return df::decode_block_emulated(ptr<const uint32_t>(words), num_words, ptr<const int64_t>(block_starts),
                                         num_blocks, ptr<const uint8_t>(gaps), num_gap_bytes, ptr<const uint16_t>(lut),
                                         ptr<const uint8_t>(raw), n, total_bits, max_block_values, ptr<uint16_t>(out),
                                         out_capacity);
      },
      py::arg("words"), py::arg("num_words"), py::arg("block_starts"), py::arg("num_blocks"), py::arg("gaps"),
      py::arg("num_gap_bytes"), py::arg("lut"), py::arg("raw"), py::arg("n"), py::arg("total_bits"),
      py::arg("max_block_values"), py::arg("out"), py::arg("out_capacity"),
      "CPU emulation of the GPU decoder's block algorithm (for tests); returns 0 or a DecodeStatus.");
  m.attr("DFLOAT_LINEAR_MAX_ROWS") = df::linear::kMaxRows;
  m.def(
      "dfloat_linear_emulated",
      [](uintptr_t words, int64_t num_words, uintptr_t block_starts, int64_t num_blocks, uintptr_t gaps,
         int64_t num_gap_bytes, uintptr_t lut, uintptr_t raw, int64_t n, int64_t total_bits, int64_t max_block_values,
         uintptr_t x, int M, int64_t N, int64_t K, uintptr_t bias, uintptr_t y, uintptr_t partial) {
        py::gil_scoped_release release;
        return df::linear::linear_emulated(
            ptr<const uint32_t>(words), num_words, ptr<const int64_t>(block_starts), num_blocks,
            ptr<const uint8_t>(gaps), num_gap_bytes, ptr<const uint16_t>(lut), ptr<const uint8_t>(raw), n, total_bits,
            max_block_values, ptr<const uint16_t>(x), M, N, K, ptr<const uint16_t>(bias), ptr<uint16_t>(y),
            ptr<float>(partial));
      },
      py::arg("words"), py::arg("num_words"), py::arg("block_starts"), py::arg("num_blocks"), py::arg("gaps"),
      py::arg("num_gap_bytes"), py::arg("lut"), py::arg("raw"), py::arg("n"), py::arg("total_bits"),
      py::arg("max_block_values"), py::arg("x"), py::arg("M"), py::arg("N"), py::arg("K"), py::arg("bias"),
      py::arg("y"), py::arg("partial"),
      "CPU emulation of the fused decode + matmul kernels (for tests): y[M, N] = x[M, K] @ W^T (+ bias, 0 = none); "
      "partial: 2 * blocks * M + 1 floats of scratch. Returns 0 or a DecodeStatus.");
#ifdef EK_WITH_CUDA
  m.def(
      "dfloat_linear_cuda",
      [](uintptr_t words, int64_t num_words, uintptr_t block_starts, int64_t num_blocks, uintptr_t gaps,
         int64_t num_gap_bytes, uintptr_t lut, uintptr_t raw, int64_t n, int64_t total_bits, int64_t max_block_values,
         uintptr_t x, int M, int64_t N, int64_t K, uintptr_t bias, uintptr_t y, uintptr_t partial, uintptr_t stream) {
        const int err = df::linear::linear_cuda(
            ptr<const uint32_t>(words), num_words, ptr<const int64_t>(block_starts), num_blocks,
            ptr<const uint8_t>(gaps), num_gap_bytes, ptr<const uint16_t>(lut), ptr<const uint8_t>(raw), n, total_bits,
            max_block_values, ptr<const uint16_t>(x), M, N, K, ptr<const uint16_t>(bias), ptr<uint16_t>(y),
            ptr<float>(partial), stream);
        if (err != 0) throw std::runtime_error("dfloat_linear_cuda: " + ek::cuda_error_string(err));
      },
      py::arg("words"), py::arg("num_words"), py::arg("block_starts"), py::arg("num_blocks"), py::arg("gaps"),
      py::arg("num_gap_bytes"), py::arg("lut"), py::arg("raw"), py::arg("n"), py::arg("total_bits"),
      py::arg("max_block_values"), py::arg("x"), py::arg("M"), py::arg("N"), py::arg("K"), py::arg("bias"),
      py::arg("y"), py::arg("partial"), py::arg("stream"),
      "Asynchronously compute y = x @ W^T (+ bias) from the EKDF payload of W on `stream` (M <= 16).");
  m.def(
      "dfloat_decode_cuda",
      [](uintptr_t words, int64_t num_words, uintptr_t block_starts, int64_t num_blocks, uintptr_t gaps,
         int64_t num_gap_bytes, uintptr_t lut, uintptr_t raw, int64_t n, int64_t total_bits, int64_t max_block_values,
         uintptr_t out, int64_t out_capacity, uintptr_t stream) {
        const int err = df::decode_cuda(ptr<const uint32_t>(words), num_words, ptr<const int64_t>(block_starts),
                                        num_blocks, ptr<const uint8_t>(gaps), num_gap_bytes, ptr<const uint16_t>(lut),
                                        ptr<const uint8_t>(raw), n, total_bits, max_block_values, ptr<uint16_t>(out),
                                        out_capacity, stream);
        if (err != 0) throw std::runtime_error("dfloat_decode_cuda: " + ek::cuda_error_string(err));
      },
      py::arg("words"), py::arg("num_words"), py::arg("block_starts"), py::arg("num_blocks"), py::arg("gaps"),
      py::arg("num_gap_bytes"), py::arg("lut"), py::arg("raw"), py::arg("n"), py::arg("total_bits"),
      py::arg("max_block_values"), py::arg("out"), py::arg("out_capacity"), py::arg("stream"),
      "Asynchronously decode n bf16 values into the device buffer out on `stream`.");
#endif
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "entropy_kernels native extension (C++/CUDA launchers; no libtorch)";
  m.def("build_info", &build_info, "How this extension was built: compiler, CUDA, archs.");
  m.def(
      "sanitizers", [] { return std::string(EK_SANITIZE_STR); },
      "The -fsanitize= list the host C++ code was built with (EK_SANITIZE; empty: none).");
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

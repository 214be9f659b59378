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
#include <utility>

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

// How a C++ argument of type T comes from Python: a pointer as its address, the rest as is.
template <typename T>
struct Arg {
  using type = T;
  static T get(T v) { return v; }
};
template <typename T>
struct Arg<T*> {
  using type = uintptr_t;
  static T* get(uintptr_t p) { return ptr<T>(p); }
};

// `f` as a Python function of addresses and sizes, run with the GIL released (CPU work).
template <typename R, typename... A>
auto by_address(R (*f)(A...)) {
  return [f](typename Arg<A>::type... a) {
    py::gil_scoped_release release;
    return f(Arg<A>::get(a)...);
  };
}

#ifdef EK_WITH_CUDA
// A CUDA launcher `f` (returns 0 or a cudaError_t) as a Python function of addresses and sizes
// that raises RuntimeError naming `name` on an error. The GIL is kept: a launch is short.
template <typename... A>
auto cuda_launcher(const char* name, int (*f)(A...)) {
  return [name, f](typename Arg<A>::type... a) {
    const int err = f(Arg<A>::get(a)...);
    if (err != 0) throw std::runtime_error(std::string(name) + ": " + ek::cuda_error_string(err));
  };
}
#endif

// m.def for a function whose first arguments are a payload, in the order of launch_args
// (entropy_kernels/ops/dfloat.py); `extra` names the arguments that follow.
template <typename F, typename... Extra>
void def_payload_function(py::module_& m, const char* name, F&& f, const char* doc, Extra&&... extra) {
  m.def(name, std::forward<F>(f), py::arg("words"), py::arg("num_words"), py::arg("block_starts"),
        py::arg("num_blocks"), py::arg("gaps"), py::arg("num_gap_bytes"), py::arg("lut"), py::arg("raw"), py::arg("n"),
        py::arg("total_bits"), py::arg("max_block_values"), std::forward<Extra>(extra)..., doc);
}

void bind_dfloat(py::module_& m) {
  namespace df = ek::dfloat;
  m.attr("DFLOAT_MAX_CODE_LEN") = df::kMaxCodeLen;
  m.attr("DFLOAT_SEGMENT_BITS") = df::kSegmentBits;
  m.attr("DFLOAT_BLOCK_BITS") = df::kBlockBits;
  m.attr("DFLOAT_MAX_THREADS") = df::kMaxThreads;
  m.attr("DFLOAT_UNDECODABLE") = df::kUndecodable;
  m.def("dfloat_histogram", by_address(&df::exponent_histogram), py::arg("values"), py::arg("n"), py::arg("hist"),
        py::arg("threads") = 0, "int64[256] histogram of the exponents of n bf16 values (CPU).");
  m.def("dfloat_code_lengths", by_address(&df::code_lengths), py::arg("hist"), py::arg("max_len"),
        py::arg("lengths"), "uint8[256] optimal prefix-code lengths limited to max_len (package-merge).");
  m.def("dfloat_build_lut", by_address(&df::build_lut), py::arg("lengths"), py::arg("lut"),
        "uint16[4096] decode table of the canonical code.");
  m.def("dfloat_stream_bits", by_address(&df::stream_bits), py::arg("values"), py::arg("n"), py::arg("lengths"),
        py::arg("threads") = 0, "Total bits of the exponent codes of n bf16 values.");
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
  def_payload_function(
      m, "dfloat_decode_cpu", by_address(&df::decode_cpu),
      "Decode n bf16 values into out (CPU, multithreaded over blocks), checking the index against the stream; "
      "returns 0 or a DecodeStatus (csrc/dfloat.h) after filling out with NaN.",
      py::arg("out"), py::arg("out_capacity"), py::arg("threads") = 0);
  def_payload_function(m, "dfloat_decode_emulated", by_address(&df::decode_block_emulated),
                       "CPU emulation of the GPU decoder's block algorithm (for tests); returns 0 or a DecodeStatus.",
                       py::arg("out"), py::arg("out_capacity"));
  m.attr("DFLOAT_LINEAR_MAX_ROWS") = df::linear::kMaxRows;
  def_payload_function(
      m, "dfloat_linear_emulated", by_address(&df::linear::linear_emulated),
      "CPU emulation of the fused decode + matmul kernels (for tests): y[M, N] = x[M, K] @ W^T (+ bias, 0 = none); "
      "partial: 2 * blocks * M + 1 floats of scratch. Returns 0 or a DecodeStatus.",
      py::arg("x"), py::arg("M"), py::arg("N"), py::arg("K"), py::arg("bias"), py::arg("y"), py::arg("partial"));
#ifdef EK_WITH_CUDA
  def_payload_function(
      m, "dfloat_linear_cuda", cuda_launcher("dfloat_linear_cuda", &df::linear::linear_cuda),
      "Asynchronously compute y = x @ W^T (+ bias) from the EKDF payload of W on `stream` (M <= 16).", py::arg("x"),
      py::arg("M"), py::arg("N"), py::arg("K"), py::arg("bias"), py::arg("y"), py::arg("partial"), py::arg("stream"));
  def_payload_function(m, "dfloat_decode_cuda", cuda_launcher("dfloat_decode_cuda", &df::decode_cuda),
                       "Asynchronously decode n bf16 values into the device buffer out on `stream`.", py::arg("out"),
                       py::arg("out_capacity"), py::arg("stream"));
#endif
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "entropy_kernels native extension (C++/CUDA launchers; no libtorch)";
  m.def("build_info", &build_info, "How this extension was built: compiler, CUDA, archs.");
  m.def(
      "sanitizers", [] { return std::string(EK_SANITIZE_STR); },
      "The -fsanitize= list the host C++ code was built with (EK_SANITIZE; empty: none).");
  m.def("read_checksum_cpu", by_address(&ek::read_checksum_cpu), py::arg("ptr"), py::arg("nbytes"),
        "XOR of the buffer's little-endian 32-bit words (last word zero-padded).");
  bind_dfloat(m);
#ifdef EK_WITH_CUDA
  m.def("read_checksum_cuda", cuda_launcher("read_checksum_cuda", &ek::read_checksum_cuda), py::arg("ptr"),
        py::arg("nbytes"), py::arg("out"), py::arg("stream"),
        "Asynchronously write the XOR checksum of a device buffer to the device word `out`.");
  m.def("cuda_device_count", &ek::cuda_device_count, "CUDA devices visible (0 without driver).");
  m.def("cuda_device_name", &ek::cuda_device_name, py::arg("device"));
  m.def("cuda_driver_version", &ek::cuda_driver_version);
#endif
}

// XOR checksum of a byte buffer, read exactly once.
//
// The checksum is the XOR of the buffer's little-endian 32-bit words, the last partial word
// zero-padded. It is a pure-read kernel: the benchmarks use the CUDA version as the "read-only"
// memory floor (bytes / time of a kernel that reads every byte once and writes 4 bytes), and the
// tests compare the CUDA and CPU versions with numpy, which exercises the raw-pointer launcher
// path that every `_C` kernel of this package uses.
#pragma once
#include <cstdint>

namespace ek {

// CPU: `ptr` must be 4-byte aligned (checked by the Python caller).
uint32_t read_checksum_cpu(const void* ptr, int64_t nbytes);

#ifdef EK_WITH_CUDA
// CUDA: writes the checksum to the device word `out`, on `stream` (a cudaStream_t as integer).
// Asynchronous; returns 0 on success or a cudaError_t code. `ptr` must be 4-byte aligned.
int read_checksum_cuda(const void* ptr, int64_t nbytes, uint32_t* out, uintptr_t stream);
#endif

}  // namespace ek

// Pure-read kernel: XOR of all 32-bit words of a buffer, 16-byte vector loads, one atomic per
// warp. Used as the read-only memory floor in benchmarks and as the smoke test of the CUDA
// build (raw pointers + torch's current stream, no libtorch).
#include <cuda_runtime.h>

#include "read_checksum.h"

namespace ek {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ uint32_t warp_xor(uint32_t v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v ^= __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// `head` = the words before the first 16-byte boundary, `vec` = the aligned uint4 body,
// `tail` = the words after it plus the zero-padded trailing bytes. The few head/tail words are
// folded in by one thread; the body is streamed by the whole grid.
__global__ void read_checksum_kernel(const uint32_t* __restrict__ head, int head_words,
                                     const uint4* __restrict__ vec, int64_t n_vec,
                                     const unsigned char* __restrict__ tail, int tail_bytes,
                                     uint32_t* __restrict__ out) {
  uint32_t acc = 0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n_vec;
       i += stride) {
    const uint4 v = __ldg(vec + i);
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    for (int w = 0; w < head_words; ++w) acc ^= head[w];
    for (int b = 0; b < tail_bytes; b += 4) {
      uint32_t word = 0;
      for (int k = 0; k < 4 && b + k < tail_bytes; ++k) word |= uint32_t(tail[b + k]) << (8 * k);
      acc ^= word;
    }
  }
  acc = warp_xor(acc);
  if ((threadIdx.x & 31) == 0 && acc != 0) atomicXor(out, acc);
}

}  // namespace

int read_checksum_cuda(const void* ptr, int64_t nbytes, uint32_t* out, uintptr_t stream_int) {
  auto stream = reinterpret_cast<cudaStream_t>(stream_int);
  cudaError_t err = cudaMemsetAsync(out, 0, sizeof(uint32_t), stream);
  if (err != cudaSuccess) return static_cast<int>(err);
  if (nbytes <= 0) return 0;

  const auto base = reinterpret_cast<uintptr_t>(ptr);
  const uintptr_t aligned = (base + 15) & ~uintptr_t(15);
  int64_t head_bytes = static_cast<int64_t>(aligned - base);
  if (head_bytes > nbytes) head_bytes = nbytes - nbytes % 4;
  const int64_t n_vec = (nbytes - head_bytes) / 16;
  const int64_t tail_start = head_bytes + 16 * n_vec;
  const auto* bytes = static_cast<const unsigned char*>(ptr);

  int device = 0, sms = 1;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  int64_t blocks = (n_vec + kThreads - 1) / kThreads;
  const int64_t max_blocks = static_cast<int64_t>(sms) * 8;  // enough loads in flight for HBM
  if (blocks > max_blocks) blocks = max_blocks;
  if (blocks < 1) blocks = 1;

  read_checksum_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      static_cast<const uint32_t*>(ptr), static_cast<int>(head_bytes / 4),
      reinterpret_cast<const uint4*>(bytes + head_bytes), n_vec, bytes + tail_start,
      static_cast<int>(nbytes - tail_start), out);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace ek

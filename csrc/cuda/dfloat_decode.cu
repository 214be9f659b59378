// EKDF GPU decoder (format: dfloat.h). One block of 256 threads per 65536-bit block of the
// exponent stream, one thread per 256-bit segment:
//   1. the block's 8 KB of stream words and the 8 KB decode table go to shared memory
//      (coalesced loads), so every later read is a shared-memory access; the words are padded
//      (conflict-free segment starts) and a 64-entry first-level table is built from the full one;
//   2. counting pass: each thread walks the codes starting in its segment (from its 4-bit gap)
//      with a 64-bit bit buffer (dfloat_block.h: one word read per ~12 codes);
//   3. block-wide exclusive prefix sum of the counts = each thread's first output slot;
//   4. decoding pass: the same walk writes one exponent byte per value to shared memory;
//   5. output pass: 8 values per thread-step -- an 8-byte load of raw sign|mantissa bytes, an
//      8-byte shared-memory load of exponents, one 16-byte store (a warp writes 512 contiguous B).
// Every output value is written whatever the index says (the op is public and reading the index
// on the host would be a sync): block b writes values [block_starts[b], block_starts[b + 1])
// clamped to [0, n), block 0 from 0 and the last block up to n, so the blocks cover [0, n) even
// when block_starts is not monotonic; a block whose range holds more values than its codes
// (or than max_block_values) writes kUndecodable there instead of stale shared memory.
// The chains are short (~100 codes per thread) and there are ~64 blocks per million values, so
// the latency of the dependent shared-memory lookups is hidden by many resident warps.
// Steps 1-4 are in dfloat_block.cuh (the fused linear kernel runs them too), their per-thread
// walks in dfloat_block.h, which the CPU emulation (decode_block_emulated, run by the tests)
// shares. On an H100 this walk took 0.55-0.58x the time of the earlier one (two unpadded stream
// words and a 4096-entry lookup per code: 8-way bank conflicts) from 16.8M values up, and ~5%
// more at 262k-1M values (benchmarks/results/nvidia-h100-80gb-hbm3_probe.md).
#include <cuda_runtime.h>

#include "dfloat.h"
#include "dfloat_block.cuh"

namespace ek {
namespace dfloat {
namespace {

using block::kThreads;
using block::max64;
using block::min64;

__device__ __forceinline__ uint32_t pack2(uint32_t raw4, uint32_t exp4, int k) {
  const uint32_t r0 = (raw4 >> (16 * k)) & 0xffu, r1 = (raw4 >> (16 * k + 8)) & 0xffu;
  const uint32_t e0 = (exp4 >> (16 * k)) & 0xffu, e1 = (exp4 >> (16 * k + 8)) & 0xffu;
  return block::bf16_bits(r0, e0) | (block::bf16_bits(r1, e1) << 16);
}

__global__ void __launch_bounds__(kThreads) decode_kernel(
    const uint32_t* __restrict__ words, int64_t num_words, const int64_t* __restrict__ block_starts,
    const uint8_t* __restrict__ gaps, int64_t num_gap_bytes, const uint16_t* __restrict__ lut,
    const uint8_t* __restrict__ raw, int64_t n, int64_t total_bits, int cap, uint16_t* __restrict__ out) {
  extern __shared__ __align__(16) unsigned char smem[];
  const block::SharedTables tables(smem);
  uint8_t* sexp = smem + block::kExponentSmem;

  const int t = threadIdx.x;
  const int64_t b = blockIdx.x;
  block::load_block(tables, lut, words, num_words, b, t);
  const block::SegmentWalk walk = block::count_codes(tables, gaps, num_gap_bytes, total_bits, b, t);
  const int codes = walk.codes;
  int64_t first, stop;
  block::block_range(block_starts, b, gridDim.x, n, &first, &stop);
  const int lead = static_cast<int>(first & 7);
  // decoding pass: exponent of block value j goes to sexp[lead + j] (lead aligns 8-value groups)
  block::write_exponents(t, walk.gap, walk.limit, tables.words, tables.lut, tables.lut6, sexp, lead + walk.offset,
                         lead + cap);
  __syncthreads();

  if (stop - first > cap || codes != stop - first) {  // the index disagrees with the stream
    for (int64_t i = first + t; i < stop; i += kThreads) out[i] = kUndecodable;
    return;
  }
  // output pass: [first, stop) with a scalar head/tail and 8-value vectors between
  const int64_t end = stop;
  const int64_t body_begin = min64((first + 7) & ~int64_t(7), end);
  const int64_t body_end = max64(body_begin, end & ~int64_t(7));
  const int64_t shift = first - lead;  // sexp index of value i is i - shift
  for (int64_t i = first + t; i < body_begin; i += kThreads)
    out[i] = static_cast<uint16_t>(block::bf16_bits(raw[i], sexp[i - shift]));
  for (int64_t v = body_begin / 8 + t; v < body_end / 8; v += kThreads) {
    const uint2 r = __ldg(reinterpret_cast<const uint2*>(raw) + v);
    const uint2 e = *reinterpret_cast<const uint2*>(sexp + (v * 8 - shift));
    reinterpret_cast<uint4*>(out)[v] = make_uint4(pack2(r.x, e.x, 0), pack2(r.x, e.x, 1), pack2(r.y, e.y, 0),
                                                  pack2(r.y, e.y, 1));
  }
  for (int64_t i = body_end + t; i < end; i += kThreads)
    out[i] = static_cast<uint16_t>(block::bf16_bits(raw[i], sexp[i - shift]));
}

}  // namespace

int decode_cuda(const uint32_t* words, int64_t num_words, const int64_t* block_starts, int64_t num_blocks,
                const uint8_t* gaps, int64_t num_gap_bytes, const uint16_t* lut, const uint8_t* raw, int64_t n,
                int64_t total_bits, int64_t max_block_values, uint16_t* out, int64_t out_capacity,
                uintptr_t stream_int) {
  if (n == 0) return 0;
  // n values need at least one block to write them, and room for them
  if (n < 0 || n > out_capacity || num_blocks <= 0 || num_blocks > 0x7fffffffLL)
    return static_cast<int>(cudaErrorInvalidValue);
  auto stream = reinterpret_cast<cudaStream_t>(stream_int);
  const int cap = block::exponent_capacity(max_block_values);
  const int smem = block::kExponentSmem + (cap + 8 + 15) / 16 * 16;
  if (smem > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(decode_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (err != cudaSuccess) return static_cast<int>(err);
  }
  decode_kernel<<<static_cast<unsigned>(num_blocks), kThreads, smem, stream>>>(
      words, num_words, block_starts, gaps, num_gap_bytes, lut, raw, n, total_bits, cap, out);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace dfloat
}  // namespace ek

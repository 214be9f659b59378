// The block decoder's exponent steps on the GPU, which both kernels run: the decoder
// (dfloat_decode.cu, steps 1-4) and the fused linear kernel (dfloat_linear.cu, step a): load_block,
// count_codes, then block::write_exponents (dfloat_block.h) and a barrier. The
// per-thread walks are in dfloat_block.h, shared with the CPU emulation (dfloat_block_emulated.h).
//
// Shared-memory layout at the start of the kernel's dynamic shared memory (kExponentSmem bytes;
// the kernel's own buffers follow): the 4096-entry table, the 64-entry first-level table, the
// block's padded stream words, then 64 bytes of warp sums and the block's code count.
#pragma once
#include <cuda_runtime.h>

#include "dfloat_block.h"

namespace ek {
namespace dfloat {
namespace block {

constexpr int kThreads = kBlockSegments;                             // 256: one thread per segment
constexpr int kWarps = kThreads / 32;
constexpr int kLutBytes = kLutSize * 2;                              // 8192
constexpr int kShortBytes = kShortSize * 2;                          // 128: first-level table
constexpr int kPaddedWordBytes = (kPaddedWords + 3) / 4 * 16;        // padded words, 16 B multiple
constexpr int kScanBytes = 64;                                       // warp sums + the block's total
constexpr int kExponentSmem = kLutBytes + kShortBytes + kPaddedWordBytes + kScanBytes;

__device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
__device__ __forceinline__ int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

// The layout's buffers, from the start of the dynamic shared memory.
struct SharedTables {
  uint16_t* lut;
  uint16_t* lut6;
  uint32_t* words;
  int* warp_sums;
  __device__ explicit SharedTables(unsigned char* smem)
      : lut(reinterpret_cast<uint16_t*>(smem)),
        lut6(reinterpret_cast<uint16_t*>(smem + kLutBytes)),
        words(reinterpret_cast<uint32_t*>(smem + kLutBytes + kShortBytes)),
        warp_sums(reinterpret_cast<int*>(smem + kLutBytes + kShortBytes + kPaddedWordBytes)) {}
};

// Step 1: the decode table (coalesced 16-byte loads) and block b's stream words. No barrier:
// the caller may issue loads of its own before decode_exponents, which starts with one.
__device__ __forceinline__ void load_block(const SharedTables& s, const uint16_t* __restrict__ lut,
                                           const uint32_t* __restrict__ words, int64_t num_words, int64_t b, int t) {
  for (int i = t; i < kLutBytes / 16; i += kThreads)
    reinterpret_cast<uint4*>(s.lut)[i] = __ldg(reinterpret_cast<const uint4*>(lut) + i);
  load_words(s.words, words, num_words, b, t, kThreads);
}

// What the counting pass leaves a thread for its decoding walk (write_exponents).
struct SegmentWalk {
  int gap, limit;  // its segment's codes start in [gap, limit)
  int offset;      // the block's codes before its own (exclusive prefix sum)
  int codes;       // codes starting in the block's segments
};

// Steps 2-3: the first-level table, the counting walk and the block-wide exclusive prefix sum of
// the counts. The decoding walk follows (write_exponents, then a barrier).
__device__ __forceinline__ SegmentWalk count_codes(const SharedTables& s, const uint8_t* __restrict__ gaps,
                                                   int64_t num_gap_bytes, int64_t total_bits, int64_t b, int t) {
  __syncthreads();
  if (t < kShortSize) s.lut6[t] = short_entry(s.lut, t);
  __syncthreads();

  // this thread's segment: codes starting in [gap, limit) relative to its first bit
  const int64_t seg = b * kBlockSegments + t;
  const int limit = segment_limit(total_bits, seg);
  const int gap = segment_gap(gaps, num_gap_bytes, seg);
  const int count = walk_segment(t, gap, limit, s.words, s.lut, s.lut6, [](uint32_t) {});

  // block-wide exclusive prefix sum of the counts
  const int lane = t & 31, warp = t >> 5;
  int incl = count;
#pragma unroll
  for (int d = 1; d < 32; d <<= 1) {
    const int v = __shfl_up_sync(0xffffffffu, incl, d);
    if (lane >= d) incl += v;
  }
  if (lane == 31) s.warp_sums[warp] = incl;
  __syncthreads();
  if (t == 0) {
    int run = 0;
    for (int w = 0; w < kWarps; ++w) {
      const int v = s.warp_sums[w];
      s.warp_sums[w] = run;
      run += v;
    }
    s.warp_sums[kWarps] = run;  // the block's number of codes
  }
  __syncthreads();
  return SegmentWalk{gap, limit, s.warp_sums[warp] + incl - count, s.warp_sums[kWarps]};
}

}  // namespace block
}  // namespace dfloat
}  // namespace ek

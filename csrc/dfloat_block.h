// The per-thread steps of the EKDF block decoder, written once for the CUDA kernel
// (csrc/cuda/dfloat_decode.cu; the fused kernels of dfloat_linear.h walk the same way) and for
// its CPU emulation (dfloat_cpu.cpp: decode_block_emulated), which runs the same steps thread by
// thread so the tests check this exact logic without a GPU.
//
// Shared-memory layout of one block (see dfloat.h for the format):
//   lut[4096]        the full decode table
//   lut6[64]         first-level table for codes of <= 6 bits (len 0 = "look in lut"): 32 words,
//                    one per bank, so a warp's lookups never conflict
//   words[]          the block's stream words, word i at padded(i) = i + i / 8: thread t's
//                    segment starts at padded(8t) = 9t, so a warp's 32 segments hit 32 banks
// Each thread keeps a 64-bit bit buffer and reads one word per ~12 codes.
#pragma once
#include <cstdint>

#include "dfloat.h"

#if defined(__CUDACC__)
#define EK_HD __host__ __device__ __forceinline__
#else
#define EK_HD inline
#endif

namespace ek {
namespace dfloat {
namespace block {

constexpr int kShortBits = 6;
constexpr int kShortSize = 1 << kShortBits;
constexpr int kLoadWords = static_cast<int>(kBlockBits / 32) + 4;  // a thread reads <= 3 words past its segment
constexpr int kPaddedWords = kLoadWords + kLoadWords / 8 + 1;

EK_HD int padded(int i) { return i + (i >> 3); }

// lut6[v] for v in [0, 64): the full entry when the code under prefix v is <= 6 bits, else 0.
EK_HD uint16_t short_entry(const uint16_t* lut, int v) {
  const uint16_t e = lut[v << (kMaxCodeLen - kShortBits)];
  return ((e >> 8) & 15) <= kShortBits ? e : 0;
}

struct BitReader {
  uint64_t buf;  // next bits, MSB-aligned
  int nbits;     // valid bits in buf (>= 33 after start, >= 32 before each lookup)
  int word;      // next (unpadded) word index to append

  // start at bit `pos` of the block's words
  EK_HD void start(const uint32_t* words, int pos) {
    const int w = pos >> 5, off = pos & 31;
    buf = ((static_cast<uint64_t>(words[padded(w)]) << 32) | words[padded(w + 1)]) << off;
    nbits = 64 - off;
    word = w + 2;
  }

  // decode one code: returns the table entry (len << 8 | exponent), consumes len >= 1 bits
  EK_HD uint32_t next(const uint32_t* words, const uint16_t* lut, const uint16_t* lut6) {
    if (nbits < 32) {
      buf |= static_cast<uint64_t>(words[padded(word)]) << (32 - nbits);
      ++word;
      nbits += 32;
    }
    uint32_t e = lut6[buf >> (64 - kShortBits)];
    if (e == 0) e = lut[buf >> (64 - kMaxCodeLen)];
    int len = (e >> 8) & 15;
    len = len < 1 ? 1 : len;  // a corrupted table cannot stall the walk
    buf <<= len;
    nbits -= len;
    return e;
  }
};

// Codes starting in [gap, limit) of the thread's 256-bit segment, `t` = thread index.
// `emit(exponent)` is called for each, in order; returns the count.
template <typename Emit>
EK_HD int walk_segment(int t, int gap, int limit, const uint32_t* words, const uint16_t* lut,
                       const uint16_t* lut6, Emit&& emit) {
  int count = 0;
  if (gap >= limit) return 0;
  BitReader r;
  r.start(words, t * kSegmentBits + gap);
  for (int p = gap; p < limit; ++count) {
    const uint32_t e = r.next(words, lut, lut6);
    const int len = (e >> 8) & 15;
    p += len < 1 ? 1 : len;
    emit(e & 0xffu);
  }
  return count;
}

}  // namespace block
}  // namespace dfloat
}  // namespace ek

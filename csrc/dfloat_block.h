// The per-thread steps of the EKDF block decoder, written once for the CUDA kernels
// (csrc/cuda/dfloat_block.cuh, which the decoder and the fused linear kernel run) and for their
// CPU emulations (dfloat_block_emulated.h), which run the same steps thread by thread so the
// tests check this exact logic without a GPU.
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
// A load of data the kernel never writes: through the read-only cache on the GPU.
#if defined(__CUDA_ARCH__)
#define EK_LDG(p) __ldg(p)
#else
#define EK_LDG(p) (*(p))
#endif

namespace ek {
namespace dfloat {
namespace block {

constexpr int kShortBits = 6;
constexpr int kShortSize = 1 << kShortBits;
constexpr int kLoadWords = static_cast<int>(kBlockBits / 32) + 4;  // a thread reads <= 3 words past its segment
constexpr int kPaddedWords = kLoadWords + kLoadWords / 8 + 1;

EK_HD int padded(int i) { return i + (i >> 3); }

// The bf16 bits of the value with raw byte `raw` (sign << 7 | mantissa) and exponent `exponent`.
EK_HD uint32_t bf16_bits(uint32_t raw, uint32_t exponent) {
  return ((raw & 0x80u) << 8) | (exponent << 7) | (raw & 0x7fu);
}

// Room for exponents a block gets: max_block_values clamped to [0, kBlockBits] (a block never
// holds more values than its bits, whatever the argument says).
EK_HD int exponent_capacity(int64_t max_block_values) {
  return static_cast<int>(max_block_values < 0 ? 0 : (max_block_values > kBlockBits ? kBlockBits : max_block_values));
}

// Block b's value range [*first, *stop): block_starts clamped to [0, n], the first block from 0
// and the last one to n whatever the index says, so the blocks' ranges cover [0, n).
EK_HD void block_range(const int64_t* block_starts, int64_t b, int64_t num_blocks, int64_t n, int64_t* first,
                       int64_t* stop) {
  const int64_t lo = block_starts[b] < 0 ? 0 : (block_starts[b] > n ? n : block_starts[b]);
  *first = b == 0 ? 0 : lo;
  int64_t hi = block_starts[b + 1] > n ? n : block_starts[b + 1];
  hi = hi < *first ? *first : hi;
  *stop = b + 1 == num_blocks ? n : hi;
}

// Thread t (of `stride` threads) of block b copies its share of the block's stream words to the
// padded layout `sw` (words past the stream read as 0).
EK_HD void load_words(uint32_t* sw, const uint32_t* words, int64_t num_words, int64_t b, int t, int stride) {
  const int64_t w0 = b * (kBlockBits / 32);
  for (int i = t; i < kLoadWords; i += stride) {
    const int64_t wi = w0 + i;
    sw[padded(i)] = wi < num_words ? EK_LDG(words + wi) : 0u;
  }
}

// Stream segment `seg`: its codes start in [segment_gap, segment_limit) relative to its first bit.
EK_HD int segment_limit(int64_t total_bits, int64_t seg) {
  const int64_t left = total_bits - seg * kSegmentBits;
  return static_cast<int>(left < 0 ? 0 : (left > kSegmentBits ? kSegmentBits : left));
}

EK_HD int segment_gap(const uint8_t* gaps, int64_t num_gap_bytes, int64_t seg) {
  return (seg >> 1) < num_gap_bytes ? (EK_LDG(gaps + (seg >> 1)) >> ((seg & 1) * 4)) & 15 : 15;
}

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

// The decoding walk: the exponents of the codes starting in [gap, limit) of thread t's segment go
// to sexp[q], sexp[q + 1], ... (those at or past q_end are dropped: the block holds too many).
EK_HD void write_exponents(int t, int gap, int limit, const uint32_t* words, const uint16_t* lut,
                           const uint16_t* lut6, uint8_t* sexp, int q, int q_end) {
  walk_segment(t, gap, limit, words, lut, lut6, [&](uint32_t e) {
    if (q < q_end) sexp[q] = static_cast<uint8_t>(e);
    ++q;
  });
}

}  // namespace block
}  // namespace dfloat
}  // namespace ek

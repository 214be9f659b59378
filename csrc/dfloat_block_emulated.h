// The GPU block decoder's exponent steps (dfloat_block.h; on the GPU csrc/cuda/dfloat_block.cuh)
// run one thread after another on the CPU, for the two emulations the tests run:
// decode_block_emulated (dfloat_cpu.cpp) and linear_emulated (dfloat_linear_cpu.cpp).
#pragma once
#include <cstdint>
#include <vector>

#include "dfloat_block.h"

namespace ek {
namespace dfloat {
namespace block {

class Emulator {
 public:
  Emulator(const uint32_t* words, int64_t num_words, const uint8_t* gaps, int64_t num_gap_bytes, const uint16_t* lut,
           int64_t total_bits, int64_t max_block_values)
      : words_(words), num_words_(num_words), gaps_(gaps), num_gap_bytes_(num_gap_bytes), lut_(lut),
        total_bits_(total_bits), cap_(exponent_capacity(max_block_values)), lut6_(kShortSize), sw_(kPaddedWords),
        offset_(kBlockSegments), sexp_(static_cast<size_t>(cap_) + 16) {
    for (int v = 0; v < kShortSize; ++v) lut6_[v] = short_entry(lut, v);
  }

  // Most values a block may hold (the kernels' shared-memory exponent buffer).
  int cap() const { return cap_; }

  // Block b, as the kernel's 256 threads: its words, the counting walks with an exclusive prefix
  // sum, the decoding walks. Block value j's exponent goes to exponents()[lead + j] for j < cap();
  // returns how many codes start in the block's segments.
  int decode(int64_t b, int lead) {
    load_words(sw_.data(), words_, num_words_, b, 0, 1);
    int codes = 0;
    for (int t = 0; t < kBlockSegments; ++t) {
      const int64_t seg = b * kBlockSegments + t;
      offset_[t] = codes;
      codes += walk_segment(t, segment_gap(gaps_, num_gap_bytes_, seg), segment_limit(total_bits_, seg), sw_.data(),
                            lut_, lut6_.data(), [](uint32_t) {});
    }
    for (int t = 0; t < kBlockSegments; ++t) {
      const int64_t seg = b * kBlockSegments + t;
      write_exponents(t, segment_gap(gaps_, num_gap_bytes_, seg), segment_limit(total_bits_, seg), sw_.data(), lut_,
                      lut6_.data(), sexp_.data(), lead + offset_[t], lead + cap_);
    }
    return codes;
  }

  const uint8_t* exponents() const { return sexp_.data(); }

 private:
  const uint32_t* words_;
  int64_t num_words_;
  const uint8_t* gaps_;
  int64_t num_gap_bytes_;
  const uint16_t* lut_;
  int64_t total_bits_;
  int cap_;
  std::vector<uint16_t> lut6_;  // first-level table
  std::vector<uint32_t> sw_;    // the block's words, padded
  std::vector<int> offset_;     // each thread's first exponent slot (the prefix sum)
  std::vector<uint8_t> sexp_;   // the block's exponents
};

}  // namespace block
}  // namespace dfloat
}  // namespace ek

// CPU emulation of the fused EKDF linear kernels (csrc/cuda/dfloat_linear.cu), thread by thread:
// the same blocks in block order, the same per-thread steps (dfloat_linear.h, dfloat_block.h),
// the same warp butterflies and the same order of every fp32 operation, so its output equals the
// kernel's bit for bit. The tests check it against F.linear; the GPU tests check the kernel
// against it and against F.linear. Steps "a".."d" and "pass 2" are those of the kernel.
#include <algorithm>
#include <vector>

#include "dfloat_linear.h"

namespace ek {
namespace dfloat {
namespace linear {

int linear_emulated(const uint32_t* words, int64_t num_words, const int64_t* block_starts, int64_t num_blocks,
                    const uint8_t* gaps, int64_t num_gap_bytes, const uint16_t* lut, const uint8_t* raw, int64_t n,
                    int64_t total_bits, int64_t max_block_values, const uint16_t* x, int M, int64_t N, int64_t K,
                    const uint16_t* bias, uint16_t* y, float* partial) {
  if (M < 1 || M > kMaxRows || N < 1 || K < 1 || K > n || n % K != 0 || n / K != N || num_blocks <= 0)
    return kBadSizes;
  const int cap = static_cast<int>(std::min<int64_t>(std::max<int64_t>(max_block_values, 0), kBlockBits));
  int* failed = reinterpret_cast<int*>(partial + 2 * num_blocks * M);
  *failed = 0;  // the launcher's memset
  std::vector<uint16_t> lut6(block::kShortSize);
  for (int v = 0; v < block::kShortSize; ++v) lut6[v] = block::short_entry(lut, v);
  std::vector<uint32_t> sw(block::kPaddedWords);
  std::vector<int> offset(kThreads);
  std::vector<uint8_t> sexp(static_cast<size_t>(cap) + 16);
  std::vector<float> acc(static_cast<size_t>(kThreads) * kMaxRows);  // acc[t * kMaxRows + m]
  std::vector<float> red(static_cast<size_t>(kWarps) * kMaxRows);
  auto xv = [&](int m, int64_t col) -> float { return bf16_to_float(x[m * K + col]); };

  for (int64_t b = 0; b < num_blocks; ++b) {
    // step a: the block's words, counting walk + exclusive prefix sum, decoding walk
    const int64_t w0 = b * (kBlockBits / 32);
    for (int i = 0; i < block::kLoadWords; ++i) sw[block::padded(i)] = w0 + i < num_words ? words[w0 + i] : 0u;
    auto segment = [&](int t, int* gap, int* limit) {
      const int64_t seg = b * kBlockSegments + t;
      *limit = static_cast<int>(std::max<int64_t>(0, std::min<int64_t>(kSegmentBits, total_bits - seg * kSegmentBits)));
      *gap = (seg >> 1) < num_gap_bytes ? (gaps[seg >> 1] >> ((seg & 1) * 4)) & 15 : 15;
    };
    int codes = 0;
    for (int t = 0; t < kThreads; ++t) {
      int gap, limit;
      segment(t, &gap, &limit);
      offset[t] = codes;
      codes += block::walk_segment(t, gap, limit, sw.data(), lut, lut6.data(), [](uint32_t) {});
    }
    int64_t first, stop;
    block_range(block_starts, b, num_blocks, n, &first, &stop);
    const int lead = static_cast<int>(first & 7);
    for (int t = 0; t < kThreads; ++t) {
      int gap, limit;
      segment(t, &gap, &limit);
      int q = lead + offset[t];
      block::walk_segment(t, gap, limit, sw.data(), lut, lut6.data(), [&](uint32_t e) {
        if (q < lead + cap) sexp[q] = static_cast<uint8_t>(e);
        ++q;
      });
    }
    // step b
    if (!index_ok(block_starts, b, num_blocks, n, first, stop, codes, cap)) {
      *failed = 1;
      continue;
    }
    // steps c and d
    const int64_t shift = first - lead;
    const int64_t r_end = first < stop ? (stop - 1) / K + 1 : first / K;
    for (int64_t r = first / K; r < r_end; ++r) {
      const int64_t row_begin = r * K;
      const int64_t lo = std::max(first, row_begin), hi = std::min(stop, row_begin + K);
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int t = 0; t < kThreads; ++t)
        thread_row_dot<kMaxRows>(t, lo, hi, row_begin, M, raw, sexp.data(), shift, xv, &acc[t * kMaxRows]);
      for (int w = 0; w < kWarps; ++w) {
        for (int m = 0; m < M; ++m) {  // acc[m] += __shfl_xor_sync(acc[m], o) in every lane at once
          float v[32], u[32];
          for (int l = 0; l < 32; ++l) v[l] = acc[(w * 32 + l) * kMaxRows + m];
          for (int o = 16; o >= 1; o >>= 1) {
            for (int l = 0; l < 32; ++l) u[l] = v[l] + v[l ^ o];
            std::copy(u, u + 32, v);
          }
          red[w * kMaxRows + m] = v[0];  // lane 0's
        }
      }
      for (int m = 0; m < M; ++m) {  // threads t < M
        float s = red[m];
        for (int w = 1; w < kWarps; ++w) s += red[w * kMaxRows + m];
        if (lo == row_begin && hi == row_begin + K) y[m * N + r] = output_value(s, bias, r);
        else partial[(b * 2 + row_slot(r, first, K)) * M + m] = s;
      }
    }
  }

  // pass 2
  for (int64_t i = 0; i < N * M; ++i) {
    const int64_t r = i / M;
    const int m = static_cast<int>(i - r * M);
    if (*failed) {
      y[m * N + r] = kUndecodable;
      continue;
    }
    float s;
    if (cut_row_sum(block_starts, num_blocks, K, partial, M, r, m, &s)) y[m * N + r] = output_value(s, bias, r);
  }
  return kDecodeOk;
}

}  // namespace linear
}  // namespace dfloat
}  // namespace ek

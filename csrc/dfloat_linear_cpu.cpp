// CPU emulation of the fused EKDF linear kernels (csrc/cuda/dfloat_linear.cu), thread by thread:
// the same blocks in block order, the same per-thread steps (dfloat_linear.h, dfloat_block.h),
// the same warp butterflies and the same order of every fp32 operation, so its output equals the
// kernel's bit for bit. The tests check it against F.linear; the GPU tests check the kernel
// against it and against F.linear. Steps "a".."d" and "pass 2" are those of the kernel.
#include <algorithm>
#include <vector>

#include "dfloat_block_emulated.h"
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
  block::Emulator emulator(words, num_words, gaps, num_gap_bytes, lut, total_bits, max_block_values);
  const int cap = emulator.cap();
  int* failed = reinterpret_cast<int*>(partial + 2 * num_blocks * M);
  *failed = 0;  // the launcher's memset
  std::vector<float> acc(static_cast<size_t>(kThreads) * kMaxRows);  // acc[t * kMaxRows + m]
  std::vector<float> red(static_cast<size_t>(kWarps) * kMaxRows);
  auto xv = [&](int m, int64_t col) -> float { return bf16_to_float(x[m * K + col]); };

  for (int64_t b = 0; b < num_blocks; ++b) {
    // step a: the block's words, counting walk + exclusive prefix sum, decoding walk
    int64_t first, stop;
    block::block_range(block_starts, b, num_blocks, n, &first, &stop);
    const int lead = static_cast<int>(first & 7);
    const int codes = emulator.decode(b, lead);
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
        thread_row_dot<kMaxRows>(t, lo, hi, row_begin, M, raw, emulator.exponents(), shift, xv, &acc[t * kMaxRows]);
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

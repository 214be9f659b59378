// Fused EKDF decode + matmul for small batches: y[M, N] = x[M, K] @ W[N, K]^T (+ bias), bf16 in
// and out, fp32 accumulation, W never written to global memory decoded.
//
// The algorithm, shared by the CUDA kernels (csrc/cuda/dfloat_linear.cu) and their thread-by-
// thread CPU emulation (dfloat_linear_cpu.cpp: linear_emulated), which the tests run:
//
// Pass 1, one 256-thread block per EKDF block b (grid = the payload's blocks):
//   a. decode the block's exponents into shared memory exactly as the decoder does
//      (dfloat_block.h: counting walk, block prefix sum, decoding walk); the block holds the
//      values [first, stop) of W flattened row-major, i.e. value i is W[i / K][i % K];
//   b. if the index disagrees with the stream (index_ok below is false), set the call's error
//      flag and stop; the block writes nothing else;
//   c. for each row r of W the range touches, in order: thread t sums, in fp32 with fused
//      multiply-adds, w_j * x[m][j - rK] over its values j = lo + t, lo + t + 256, ... of the
//      row's part [lo, hi) of the range, for each of the M rows of x; the 256 partial sums are
//      reduced by a warp butterfly (xor 16, 8, 4, 2, 1) and then over the 8 warps in order;
//   d. a row entirely inside [first, stop) is "owned": its y[m][r] = bf16(sum + bias[r]) is
//      written here, by this block only. A row cut by a block boundary gets its partial sum
//      stored in partial[b][slot][m], slot 0 for the block's first row, 1 for its last.
// Pass 2, one thread per (row r, m): if the error flag is set, y[m][r] = NaN (bf16 0x7fc0) --
// every value of y is written, whatever the payload; else a cut row sums the partials of the
// blocks it spans, in block order, adds the bias and writes y[m][r]; owned rows are skipped.
//
// Every sum is in a fixed order, so y is deterministic (no atomics), and the emulation computes
// the same fp32 operations in the same order: its y equals the kernel's bit for bit.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "dfloat.h"
#include "dfloat_block.h"

namespace ek {
namespace dfloat {
namespace linear {

constexpr int kThreads = kBlockSegments;  // 256: one thread per segment, as in the decoder
constexpr int kWarps = kThreads / 32;
constexpr int kMaxRows = 16;              // the most rows of x the fused kernels take
// x goes to shared memory when it takes at most this many bytes (M * K * 2) and the block then
// needs at most 99 KB, else it is read through the read-only cache: more shared memory per block
// would cost resident blocks, and the decoding walk needs many of them to hide its dependent
// lookups. (Not measured yet: the threshold is a guess to revisit on a GPU.)
constexpr int64_t kSharedXBytes = 32 * 1024;

// A float's bits and back: the intrinsics on the GPU, memcpy (the defined way) on the host.
#if defined(__CUDA_ARCH__)
EK_HD float bits_to_float(uint32_t u) { return __uint_as_float(u); }
EK_HD uint32_t float_to_bits(float f) { return __float_as_uint(f); }
#else
EK_HD float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
EK_HD uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
#endif

EK_HD float bf16_to_float(uint32_t bits) { return bits_to_float((bits & 0xffffu) << 16); }

// Round to nearest even, NaN kept quiet -- written out (not an intrinsic) so that the kernel and
// the emulation round identically.
EK_HD uint16_t float_to_bf16(float f) {
  uint32_t u = float_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

// The value of W (flattened) whose raw byte is r and exponent e.
EK_HD float weight_value(uint32_t r, uint32_t e) {
  return bf16_to_float(block::bf16_bits(r, e & 0xffu));
}

// Whether block b may contribute: its codes are exactly its values, at most `cap` of them, and its
// own index entries are ordered (block 0 from 0, the last block to n). When every block passes,
// block_starts rises from 0 to n, so the blocks' ranges partition [0, n) and pass 2 may search it.
EK_HD bool index_ok(const int64_t* block_starts, int64_t b, int64_t num_blocks, int64_t n, int64_t first,
                    int64_t stop, int codes, int cap) {
  return block_starts[b] <= block_starts[b + 1] && (b != 0 || block_starts[0] == 0) &&
         (b + 1 != num_blocks || block_starts[num_blocks] == n) && stop - first <= cap && codes == stop - first;
}

// The partial slot of block (first value `first`) for its cut row r: 0 if r is its first row, else 1.
EK_HD int row_slot(int64_t r, int64_t first, int64_t K) { return first / K == r ? 0 : 1; }

// The last block whose first value is <= v (block_starts rising from 0; v in [0, n)).
EK_HD int64_t block_of(const int64_t* block_starts, int64_t num_blocks, int64_t v) {
  int64_t lo = 0, hi = num_blocks - 1;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo + 1) / 2;
    if (block_starts[mid] <= v) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

// Pass 2 for (row r, x row m) of a payload whose blocks all passed index_ok: false when the row is
// owned by one block (pass 1 wrote it); else *sum = the partials of the blocks it spans, in order.
EK_HD bool cut_row_sum(const int64_t* block_starts, int64_t num_blocks, int64_t K, const float* partial, int M,
                       int64_t r, int m, float* sum) {
  const int64_t b_lo = block_of(block_starts, num_blocks, r * K);
  const int64_t b_hi = block_of(block_starts, num_blocks, r * K + K - 1);
  if (b_lo == b_hi) return false;
  float s = 0.0f;
  for (int64_t b = b_lo; b <= b_hi; ++b) {
    if (block_starts[b] == block_starts[b + 1]) continue;  // an empty block holds no part of the row
    s += partial[(b * 2 + row_slot(r, block_starts[b], K)) * M + m];
  }
  *sum = s;
  return true;
}

// What y[m][r] holds: the row's sum plus the bias (no addition without one: -0 stays -0).
EK_HD uint16_t output_value(float sum, const uint16_t* bias, int64_t r) {
  return float_to_bf16(bias ? sum + bf16_to_float(bias[r]) : sum);
}

// Step c for one thread: acc[m] += w_j * x[m][j - rK] over j = lo + t, lo + t + kThreads, ... < hi.
// `xv(m, col)` reads x (shared memory or global in the kernel, an array in the emulation).
template <int MT, typename XV>
EK_HD void thread_row_dot(int t, int64_t lo, int64_t hi, int64_t row_begin, int M, const uint8_t* raw,
                          const uint8_t* sexp, int64_t shift, XV&& xv, float* acc) {
  for (int64_t j = lo + t; j < hi; j += kThreads) {
    const float w = weight_value(raw[j], sexp[j - shift]);
    const int64_t col = j - row_begin;
#pragma unroll
    for (int m = 0; m < MT; ++m)
      if (m < M) acc[m] = fmaf(w, xv(m, col), acc[m]);
  }
}

// Entry points.
//
// x: M x K bf16 (row-major, as uint16 bits), bias: N bf16 or null, y: M x N bf16 (row-major).
// partial: 2 * num_blocks * M floats + 1 (the last one is the error flag, as an int), scratch.
// Both return kDecodeOk, or kBadSizes when nothing could be launched or computed: M outside
// [1, kMaxRows], N * K != n, n > 0 without blocks, K or N below 1.
int linear_emulated(const uint32_t* words, int64_t num_words, const int64_t* block_starts, int64_t num_blocks,
                    const uint8_t* gaps, int64_t num_gap_bytes, const uint16_t* lut, const uint8_t* raw, int64_t n,
                    int64_t total_bits, int64_t max_block_values, const uint16_t* x, int M, int64_t N, int64_t K,
                    const uint16_t* bias, uint16_t* y, float* partial);

#ifdef EK_WITH_CUDA
// Asynchronous on `stream`; returns 0 or a cudaError_t (cudaErrorInvalidValue for the cases
// above, nothing launched). Two kernel launches and one 4-byte memset, no host sync.
int linear_cuda(const uint32_t* words, int64_t num_words, const int64_t* block_starts, int64_t num_blocks,
                const uint8_t* gaps, int64_t num_gap_bytes, const uint16_t* lut, const uint8_t* raw, int64_t n,
                int64_t total_bits, int64_t max_block_values, const uint16_t* x, int M, int64_t N, int64_t K,
                const uint16_t* bias, uint16_t* y, float* partial, uintptr_t stream);
#endif

}  // namespace linear
}  // namespace dfloat
}  // namespace ek

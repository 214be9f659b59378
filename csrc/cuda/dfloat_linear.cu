// Fused EKDF decode + matmul for small batches (M <= 16): y = x @ W^T (+ bias) without writing
// the decoded W anywhere but shared memory. The algorithm and its two passes are described in
// dfloat_linear.h, whose per-thread steps both this file and the CPU emulation
// (dfloat_linear_cpu.cpp, run by tests/test_dfloat_linear.py) call; the comments "step a".."d"
// and "pass 2" mark the same steps in both.
//
// Why this shape: at batch 1 a linear layer only streams its weight, so reading the EKDF payload
// (~66.5% of the bf16 bytes) and decoding in shared memory can beat a bf16 GEMV, where decoding
// into a buffer first (write + read of the bf16 weight) cannot. One block per EKDF block keeps the
// decoder's structure (its 256 threads each walk one 256-bit segment); the block then owns the
// rows of W inside its value range and leaves fp32 partial sums for the two rows cut by its ends,
// which a tiny second pass adds up in block order -- deterministic, no atomics.
#include <cuda_runtime.h>

#include <algorithm>

#include "dfloat_block.cuh"
#include "dfloat_linear.h"

namespace ek {
namespace dfloat {
namespace linear {
namespace {

constexpr int kRedBytes = kWarps * kMaxRows * 4;                       // per-warp row sums
constexpr int kFixedSmem = block::kExponentSmem + kRedBytes;           // the decoder's tables, then these

__host__ __device__ constexpr int round16(int64_t v) { return static_cast<int>((v + 15) / 16 * 16); }
__host__ __device__ constexpr int exponent_bytes(int cap) { return round16(cap + 8); }

using block::max64;
using block::min64;

// MT: rows of x rounded up to a power of two (accumulators per thread); XS: x in shared memory.
template <int MT, bool XS>
__global__ void __launch_bounds__(kThreads) linear_kernel(
    const uint32_t* __restrict__ words, int64_t num_words, const int64_t* __restrict__ block_starts,
    int64_t num_blocks, const uint8_t* __restrict__ gaps, int64_t num_gap_bytes, const uint16_t* __restrict__ lut,
    const uint8_t* __restrict__ raw, int64_t n, int64_t total_bits, int cap, const uint16_t* __restrict__ x, int M,
    int64_t N, int64_t K, const uint16_t* __restrict__ bias, uint16_t* __restrict__ y, float* __restrict__ partial) {
  extern __shared__ __align__(16) unsigned char smem[];
  const block::SharedTables tables(smem);
  float* red = reinterpret_cast<float*>(smem + block::kExponentSmem);
  uint8_t* sexp = smem + kFixedSmem;
  uint16_t* xs = reinterpret_cast<uint16_t*>(smem + kFixedSmem + exponent_bytes(cap));

  const int t = threadIdx.x, lane = t & 31, warp = t >> 5;
  const int64_t b = blockIdx.x;
  // step a: table, the block's stream words (padded as in the decoder), x
  block::load_block(tables, lut, words, num_words, b, t);
  if (XS) {
    for (int64_t i = t; i < int64_t(M) * K; i += kThreads) xs[i] = __ldg(x + i);
  }
  // step a: counting walk, block prefix sum, decoding walk (as dfloat_decode.cu)
  const block::SegmentWalk walk = block::count_codes(tables, gaps, num_gap_bytes, total_bits, b, t);
  const int codes = walk.codes;
  int64_t first, stop;
  block::block_range(block_starts, b, num_blocks, n, &first, &stop);
  const int lead = static_cast<int>(first & 7);
  // decoding pass: exponent of block value j goes to sexp[lead + j] (lead aligns 8-value groups)
  block::write_exponents(t, walk.gap, walk.limit, tables.words, tables.lut, tables.lut6, sexp, lead + walk.offset,
                         lead + cap);
  __syncthreads();

  // step b
  if (!index_ok(block_starts, b, num_blocks, n, first, stop, codes, cap)) {
    if (t == 0) *reinterpret_cast<int*>(partial + 2 * num_blocks * M) = 1;
    return;
  }

  // steps c and d, row by row
  const int64_t shift = first - lead;  // sexp index of value i is i - shift
  auto xv = [&](int m, int64_t col) -> float {
    if (XS) return bf16_to_float(xs[m * K + col]);
    return bf16_to_float(__ldg(x + m * K + col));
  };
  const int64_t r_end = first < stop ? (stop - 1) / K + 1 : first / K;
  for (int64_t r = first / K; r < r_end; ++r) {
    const int64_t row_begin = r * K;
    const int64_t lo = max64(first, row_begin), hi = min64(stop, row_begin + K);
    float acc[MT];
#pragma unroll
    for (int m = 0; m < MT; ++m) acc[m] = 0.0f;
    thread_row_dot<MT>(t, lo, hi, row_begin, M, raw, sexp, shift, xv, acc);
#pragma unroll
    for (int m = 0; m < MT; ++m) {
#pragma unroll
      for (int o = 16; o >= 1; o >>= 1) acc[m] += __shfl_xor_sync(0xffffffffu, acc[m], o);
    }
    if (lane == 0) {
#pragma unroll
      for (int m = 0; m < MT; ++m) red[warp * kMaxRows + m] = acc[m];
    }
    __syncthreads();
    if (t < M) {
      float s = red[t];
      for (int w = 1; w < kWarps; ++w) s += red[w * kMaxRows + t];
      if (lo == row_begin && hi == row_begin + K) y[t * N + r] = output_value(s, bias, r);
      else partial[(b * 2 + row_slot(r, first, K)) * M + t] = s;
    }
    __syncthreads();
  }
}

// pass 2: one thread per (row, x row), grid-stride
__global__ void __launch_bounds__(kThreads) cut_rows_kernel(const int64_t* __restrict__ block_starts,
                                                            int64_t num_blocks, int M, int64_t N, int64_t K,
                                                            const uint16_t* __restrict__ bias,
                                                            uint16_t* __restrict__ y,
                                                            const float* __restrict__ partial) {
  const bool failed = *reinterpret_cast<const int*>(partial + 2 * num_blocks * M) != 0;
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < N * M; i += int64_t(gridDim.x) * kThreads) {
    const int64_t r = i / M;
    const int m = static_cast<int>(i - r * M);
    if (failed) {
      y[m * N + r] = kUndecodable;
      continue;
    }
    float s;
    if (cut_row_sum(block_starts, num_blocks, K, partial, M, r, m, &s)) y[m * N + r] = output_value(s, bias, r);
  }
}

using Kernel = void (*)(const uint32_t*, int64_t, const int64_t*, int64_t, const uint8_t*, int64_t, const uint16_t*,
                        const uint8_t*, int64_t, int64_t, int, const uint16_t*, int, int64_t, int64_t,
                        const uint16_t*, uint16_t*, float*);

template <bool XS>
Kernel pick(int M) {
  if (M <= 1) return linear_kernel<1, XS>;
  if (M <= 2) return linear_kernel<2, XS>;
  if (M <= 4) return linear_kernel<4, XS>;
  if (M <= 8) return linear_kernel<8, XS>;
  return linear_kernel<16, XS>;
}

}  // namespace

int linear_cuda(const uint32_t* words, int64_t num_words, const int64_t* block_starts, int64_t num_blocks,
                const uint8_t* gaps, int64_t num_gap_bytes, const uint16_t* lut, const uint8_t* raw, int64_t n,
                int64_t total_bits, int64_t max_block_values, const uint16_t* x, int M, int64_t N, int64_t K,
                const uint16_t* bias, uint16_t* y, float* partial, uintptr_t stream_int) {
  if (M < 1 || M > kMaxRows || N < 1 || K < 1 || K > n || n % K != 0 || n / K != N || num_blocks <= 0 ||
      num_blocks > 0x7fffffffLL)
    return static_cast<int>(cudaErrorInvalidValue);
  auto stream = reinterpret_cast<cudaStream_t>(stream_int);
  const int cap = block::exponent_capacity(max_block_values);
  // x in shared memory only while the block stays within 99 KB, the most any sm_80+ GPU grants
  // (sm_86/89); without x it needs at most 18 KB + 64 KB of exponents, so it always launches
  const int64_t x_bytes = int64_t(M) * K * 2;
  const bool shared_x = x_bytes <= kSharedXBytes && kFixedSmem + exponent_bytes(cap) + round16(x_bytes) <= 99 * 1024;
  const int smem = kFixedSmem + exponent_bytes(cap) + (shared_x ? round16(x_bytes) : 0);
  const Kernel kernel = shared_x ? pick<true>(M) : pick<false>(M);
  cudaError_t err = cudaMemsetAsync(partial + 2 * num_blocks * M, 0, sizeof(int), stream);  // the error flag
  if (err != cudaSuccess) return static_cast<int>(err);
  if (smem > 48 * 1024) {
    err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (err != cudaSuccess) return static_cast<int>(err);
  }
  kernel<<<static_cast<unsigned>(num_blocks), kThreads, smem, stream>>>(words, num_words, block_starts, num_blocks,
                                                                         gaps, num_gap_bytes, lut, raw, n, total_bits,
                                                                         cap, x, M, N, K, bias, y, partial);
  err = cudaGetLastError();
  if (err != cudaSuccess) return static_cast<int>(err);
  const int64_t grid = std::min<int64_t>((N * M + kThreads - 1) / kThreads, int64_t(1) << 20);
  cut_rows_kernel<<<static_cast<unsigned>(grid), kThreads, 0, stream>>>(block_starts, num_blocks, M, N, K, bias, y,
                                                                         partial);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace linear
}  // namespace dfloat
}  // namespace ek

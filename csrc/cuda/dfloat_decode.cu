// EKDF GPU decoder: one warp per chunk, each lane decodes its two code streams (see dfloat.h).
//
// Per block: the 8 KB decode table is copied to shared memory once; every code is then one
// shared-memory lookup. Per lane and group of 8 values: one 8-byte load of the raw
// sign|mantissa bytes (prefetched a group ahead), 4 codes from the forward stream and 4 from the
// backward stream (two independent dependency chains), one 16-byte store -- a warp writes 512
// contiguous bytes per group. Stream words are prefetched one refill ahead, so the global-load
// latency overlaps ~10 decodes.
#include <cuda_runtime.h>

#include "dfloat.h"

namespace ek {
namespace dfloat {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * kLanes;

__device__ __forceinline__ uint32_t load_word(const uint32_t* __restrict__ words, int64_t i, int64_t last) {
  i = i < 0 ? 0 : (i > last ? last : i);  // clamped: corrupted offsets never read out of bounds
  return __ldg(words + i);
}

// One code stream read in direction STEP (+1 forward, -1 backward).
template <int STEP>
struct Stream {
  uint64_t buf;   // next bits, MSB-aligned
  int nbits;      // valid bits in buf (>= 32 between decodes)
  int64_t pos;    // next word to prefetch
  uint32_t next;  // prefetched word

  __device__ __forceinline__ void start(const uint32_t* __restrict__ words, int64_t first, int64_t last) {
    buf = (static_cast<uint64_t>(load_word(words, first, last)) << 32) | load_word(words, first + STEP, last);
    next = load_word(words, first + 2 * STEP, last);
    pos = first + 3 * STEP;
    nbits = 64;
  }

  __device__ __forceinline__ uint32_t decode(const uint16_t* __restrict__ lut, const uint32_t* __restrict__ words,
                                             int64_t last) {
    const uint32_t e = lut[buf >> (64 - kMaxCodeLen)];
    const int len = (e >> 8) & 15;  // <= 15 even for a corrupted table: no shift >= 64
    buf <<= len;
    nbits -= len;
    if (nbits < 32) {
      buf |= static_cast<uint64_t>(next) << (32 - nbits);
      nbits += 32;
      next = load_word(words, pos, last);
      pos += STEP;
    }
    return e & 0xffu;
  }
};

__device__ __forceinline__ uint32_t bf16_bits(uint32_t raw, uint32_t exponent) {
  return ((raw & 0x80u) << 8) | (exponent << 7) | (raw & 0x7fu);
}

__device__ __forceinline__ uint32_t pack2(uint32_t raw_word, int byte, uint32_t e0, uint32_t e1) {
  const uint32_t r0 = (raw_word >> (8 * byte)) & 0xffu, r1 = (raw_word >> (8 * byte + 8)) & 0xffu;
  return bf16_bits(r0, e0) | (bf16_bits(r1, e1) << 16);
}

__global__ void __launch_bounds__(kThreads) decode_kernel(
    const uint32_t* __restrict__ words, int64_t last_word, const int64_t* __restrict__ chunk_offsets,
    const uint16_t* __restrict__ lane_offsets, const uint16_t* __restrict__ lut,
    const uint8_t* __restrict__ raw, int64_t n, int64_t s, uint16_t* __restrict__ out, int64_t chunks) {
  __shared__ __align__(16) uint16_t slut[kLutSize];
  for (int i = threadIdx.x; i < kLutSize * 2 / 16; i += kThreads)
    reinterpret_cast<uint4*>(slut)[i] = __ldg(reinterpret_cast<const uint4*>(lut) + i);
  __syncthreads();

  const int lane = threadIdx.x & (kLanes - 1);
  const int64_t groups = s / kGroup;
  for (int64_t c = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / kLanes; c < chunks;
       c += static_cast<int64_t>(gridDim.x) * kWarps) {
    const int64_t base_word = chunk_offsets[c];
    const int64_t begin = base_word + lane_offsets[c * kLanes + lane];
    const int64_t end = lane + 1 < kLanes ? base_word + lane_offsets[c * kLanes + lane + 1] : chunk_offsets[c + 1];
    Stream<1> fwd;
    Stream<-1> bwd;
    fwd.start(words, begin, last_word);
    bwd.start(words, end - 1, last_word);

    const int64_t first = c * kLanes * s + lane * kGroup;  // this lane's first value
    if (c * kLanes * s + kLanes * s <= n) {
      // full chunk: 16-byte stores, raw bytes prefetched one group ahead
      const uint2* raw_p = reinterpret_cast<const uint2*>(raw + first);
      uint4* out_p = reinterpret_cast<uint4*>(out + first);
      constexpr int64_t kStride = kLanes * kGroup / 8;  // uint2 / uint4 elements per group
      uint2 r = __ldg(raw_p);
      for (int64_t k = 0; k < groups; ++k) {
        const uint2 r_next = k + 1 < groups ? __ldg(raw_p + (k + 1) * kStride) : r;
        uint32_t ea[4], eb[4];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          ea[j] = fwd.decode(slut, words, last_word);
          eb[j] = bwd.decode(slut, words, last_word);
        }
        out_p[k * kStride] = make_uint4(pack2(r.x, 0, ea[0], ea[1]), pack2(r.x, 2, ea[2], ea[3]),
                                        pack2(r.y, 0, eb[0], eb[1]), pack2(r.y, 2, eb[2], eb[3]));
        r = r_next;
      }
    } else {
      // the last, partial chunk: the same order, guarded scalar accesses
      for (int64_t k = 0; k < groups; ++k) {
        const int64_t g = first + k * kLanes * kGroup;
        if (g >= n) break;
        for (int j = 0; j < kGroup; ++j) {
          const int64_t i = g + j;
          if (i >= n) break;
          const uint32_t e = j < 4 ? fwd.decode(slut, words, last_word) : bwd.decode(slut, words, last_word);
          out[i] = static_cast<uint16_t>(bf16_bits(raw[i], e));
        }
      }
    }
  }
}

}  // namespace

int decode_cuda(const uint32_t* words, int64_t num_words, const int64_t* chunk_offsets,
                const uint16_t* lane_offsets, const uint16_t* lut, const uint8_t* raw, int64_t n,
                int64_t stream_values, uint16_t* out, uintptr_t stream_int) {
  if (n <= 0) return 0;
  auto stream = reinterpret_cast<cudaStream_t>(stream_int);
  const int64_t chunks = (n + kLanes * stream_values - 1) / (kLanes * stream_values);
  const int64_t blocks = (chunks + kWarps - 1) / kWarps;
  const unsigned grid = static_cast<unsigned>(blocks < (1LL << 30) ? blocks : (1LL << 30));
  decode_kernel<<<grid, kThreads, 0, stream>>>(words, num_words - 1, chunk_offsets, lane_offsets, lut, raw, n,
                                               stream_values, out, chunks);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace dfloat
}  // namespace ek

// DFloat-style lossless compression of BF16 tensors ("EKDF" format, version 1).
//
// A BF16 value is sign(1) | exponent(8) | mantissa(7). The exponent of trained weights carries
// ~2.6 bits of entropy, sign+mantissa ~8. So the exponent is Huffman-coded (canonical code,
// lengths <= kMaxCodeLen so one 2^kMaxCodeLen-entry table decodes any code with one lookup) and
// sign+mantissa are stored raw, one byte per value (`raw[i] = sign << 7 | mantissa`).
//
// Layout. All exponent codes form ONE bit stream, in value order, MSB-first inside little-endian
// 32-bit `words` (plus one zero pad word). For parallel decoding the stream is cut into
// segments of kSegmentBits bits: one GPU thread per segment decodes the codes that START in it.
// The index is
//   gaps[k]          (4 bits, two per byte, low nibble first): offset of the first code start in
//                    segment k (codes are <= 12 bits, so < 12)
//   block_starts[b]  (int64, blocks + 1 entries): index of the first value whose code starts in
//                    block b = segments [256 b, 256 b + 256); the last entry is n
// -- about 4 bits per 256 stream bits (~0.04 bits per value). A GPU block (256 threads) decodes
// its segments twice: a counting pass, a block-wide prefix sum of the counts, then a decoding
// pass into shared memory, followed by a coalesced 16-byte-vector pass that merges the exponents
// with the raw bytes into the output.
//
// Decoding one code at bit position p: e = lut[next 12 bits at p], len = e >> 8 (1..12),
// exponent = e & 0xff. Every decoder bounds every read and write by the array sizes and writes
// every one of the n output values, so a corrupted payload can decode to wrong values (or to
// kUndecodable) but never reads or writes out of bounds nor leaves an output value unwritten.
// The CPU decoder also checks that the index agrees with the stream (see decode_cpu): a payload
// it accepts decodes to the same values on every decoder.
#pragma once
#include <cstdint>

namespace ek {
namespace dfloat {

constexpr int kMaxCodeLen = 12;  // decode table: 4096 uint16 entries
constexpr int kLutSize = 1 << kMaxCodeLen;
constexpr int kSegmentBits = 256;
constexpr int kBlockSegments = 256;
constexpr int64_t kBlockBits = int64_t(kSegmentBits) * kBlockSegments;
// The value a decoder writes where it cannot decode (a bf16 quiet NaN): a block whose index
// disagrees with its stream on the GPU, every value after a failed check on the CPU.
constexpr uint16_t kUndecodable = 0x7fc0;
// More threads than this is a caller's mistake, not a speed-up; the encoder and decoder use at
// most this many (and fewer, down to the calling thread alone, when the system cannot start them).
constexpr int kMaxThreads = 1024;

// What decode_cpu / decode_block_emulated return (0: every value decoded).
enum DecodeStatus : int {
  kDecodeOk = 0,
  kBadSizes = 1,         // array sizes disagree with n / total_bits, or the output is too small
  kBadBlockStarts = 2,   // block_starts is not a non-decreasing range from 0 to n
  kBlockTooLarge = 3,    // a block holds more than max_block_values values
  kBadLut = 4,           // the decode table is not a prefix-code table
  kStreamMismatch = 5,   // the codes do not start where gaps / block_starts / total_bits say
};

// Histogram of the 256 exponent values of `n` BF16 words (multithreaded).
void exponent_histogram(const uint16_t* values, int64_t n, int64_t* hist, int threads);

// Length-limited (<= max_len) optimal prefix-code lengths for `hist` (package-merge).
// Symbols with count 0 get length 0; a single used symbol gets length 1.
void code_lengths(const int64_t* hist, int max_len, uint8_t* lengths);

// Decode table from code lengths: lut[prefix] = (len << 8) | symbol for every kMaxCodeLen-bit
// prefix; prefixes no code matches get (1 << 8) | first used symbol.
void build_lut(const uint8_t* lengths, uint16_t* lut);

// Total stream bits of the codes of `values` (multithreaded).
int64_t stream_bits(const uint16_t* values, int64_t n, const uint8_t* lengths, int threads);

// Encoder: writes words (ceil(total_bits / 32) + 1, zero-initialised by the caller), gaps
// (ceil(segments / 2) bytes), block_starts (blocks + 1) and raw (n). Returns the XOR checksum of
// the input's 32-bit words (as read_checksum computes it); *max_block_values receives the
// largest number of values in one block.
uint32_t encode(const uint16_t* values, int64_t n, const uint8_t* lengths, int64_t total_bits, uint32_t* words,
                uint8_t* gaps, int64_t* block_starts, uint8_t* raw, int64_t* max_block_values, int threads);

// CPU decoder (multithreaded over blocks) of n values into out[0, n) (out_capacity elements).
// It decodes the stream sequentially from each block's first code and checks on the way that the
// index describes that stream exactly: block_starts rises from 0 to n with at most
// max_block_values values per block, each segment's gap is where its first code starts (or no
// code starts in it), each block ends where the next one's first code starts, the last code ends
// at total_bits, and the table gives the same entries to the GPU's two lookup paths. Those are
// the facts the GPU decoder relies on, so a payload accepted here decodes identically there.
// Returns kDecodeOk, or a DecodeStatus after filling out[0, n) with kUndecodable (nothing is
// written when n > out_capacity).
int decode_cpu(const uint32_t* words, int64_t num_words, const int64_t* block_starts, int64_t num_blocks,
               const uint8_t* gaps, int64_t num_gap_bytes, const uint16_t* lut, const uint8_t* raw, int64_t n,
               int64_t total_bits, int64_t max_block_values, uint16_t* out, int64_t out_capacity, int threads);

// The GPU decoder's block algorithm (dfloat_block.h) run thread by thread on the CPU,
// for tests: same shared-memory layout, same per-thread steps, sequentially, and the same rule
// for an index that disagrees with the stream (the block's values become kUndecodable).
// Returns kDecodeOk, or kBadSizes (nothing written) when out_capacity < n or n > 0 without blocks.
int decode_block_emulated(const uint32_t* words, int64_t num_words, const int64_t* block_starts,
                          int64_t num_blocks, const uint8_t* gaps, int64_t num_gap_bytes, const uint16_t* lut,
                          const uint8_t* raw, int64_t n, int64_t total_bits, int64_t max_block_values,
                          uint16_t* out, int64_t out_capacity);

#ifdef EK_WITH_CUDA
// GPU decoder on `stream` (cudaStream_t as integer). Asynchronous; returns 0 or a cudaError_t
// (cudaErrorInvalidValue, nothing launched, when n > out_capacity or n > 0 without blocks).
// `max_block_values` sizes the shared-memory exponent buffer. Reading the index would need a
// host sync, so the kernel checks what it can on the device: a block whose value range (from
// block_starts, the first block starting at 0 and the last ending at n) holds more values than
// max_block_values or than the codes starting in its segments writes kUndecodable over that
// range. Every one of the n values is written.
int decode_cuda(const uint32_t* words, int64_t num_words, const int64_t* block_starts, int64_t num_blocks,
                const uint8_t* gaps, int64_t num_gap_bytes, const uint16_t* lut, const uint8_t* raw, int64_t n,
                int64_t total_bits, int64_t max_block_values, uint16_t* out, int64_t out_capacity,
                uintptr_t stream);
#endif

}  // namespace dfloat
}  // namespace ek

// DFloat-style lossless compression of BF16 tensors ("EKDF" format, version 1).
//
// A BF16 value is sign(1) | exponent(8) | mantissa(7). The exponent of trained weights carries
// ~2.6 bits of entropy, sign+mantissa ~8. So the exponent is Huffman-coded (canonical code,
// lengths <= kMaxCodeLen so one 2^kMaxCodeLen-entry table decodes any code with a single lookup)
// and sign+mantissa are stored raw as one byte per value.
//
// Parallel layout. Values are cut into chunks of 32 * S values (S = `stream_values`, a multiple
// of 8). Inside chunk c, "lane" l (0..31) owns the values
//     c*32*S + k*256 + l*8 + j        (k = 0 .. S/8-1, j = 0..7, only those < n)
// so that a warp decoding a chunk writes 256 consecutive values (512 bytes, one 16-byte store per
// lane) per group k. Each lane's exponent codes form one bit stream (MSB first inside
// little-endian 32-bit words, padded to a whole word). Streams are stored chunk by chunk, lane
// by lane, in `words`; a lane's codes are split in two streams -- values 0-3 of each group read
// forward from the lane's first word, values 4-7 read backward from its last word -- so a lane
// decodes two independent dependency chains with no extra index entry. The index is
//     chunk_offsets[c]    (int64, num_chunks + 1 entries): first word of chunk c; last = total
//     lane_offsets[c*32+l] (uint16): first word of lane l's stream relative to chunk_offsets[c]
// A lane holds at most S * kMaxCodeLen bits + 2 pad words, so S <= kMaxStreamValues keeps every
// in-chunk offset below 2^16.
//
// Decoding a stream (CPU and GPU do exactly this): a 64-bit buffer holds the next `nbits` stream
// bits MSB-aligned; it starts with the stream's first two words; each code is decoded by one lookup
//     e = lut[buf >> (64 - kMaxCodeLen)],  len = e >> 8, symbol = e & 0xff
// then `buf <<= len`; whenever fewer than 32 bits remain the next word is appended. Word reads
// past the end of `words` are clamped to its last word, so corrupted input can give wrong values
// but never an out-of-bounds access.
#pragma once
#include <cstdint>

namespace ek {
namespace dfloat {

constexpr int kMaxCodeLen = 12;          // decode table: 4096 entries of uint16
constexpr int kLutSize = 1 << kMaxCodeLen;
constexpr int kLanes = 32;
constexpr int kGroup = 8;                // values per lane per group (one 16-byte store)
constexpr int64_t kMaxStreamValues = 4096;

// Histogram of the 256 exponent values of `n` BF16 words (multithreaded).
void exponent_histogram(const uint16_t* values, int64_t n, int64_t* hist, int threads);

// Length-limited (<= max_len) optimal prefix-code lengths for `hist` (package-merge).
// Symbols with count 0 get length 0; a single used symbol gets length 1.
void code_lengths(const int64_t* hist, int max_len, uint8_t* lengths);

// Decode table from code lengths: lut[prefix] = (len << 8) | symbol for every kMaxCodeLen-bit
// prefix; prefixes no code matches get (1 << 8) | first used symbol.
void build_lut(const uint8_t* lengths, uint16_t* lut);

// Pass 1 of the encoder: words per lane stream -> lane_offsets (uint16, num_chunks*32) and
// chunk_offsets (num_chunks + 1). Returns the total number of words.
int64_t plan_streams(const uint16_t* values, int64_t n, int64_t stream_values,
                     const uint8_t* lengths, uint16_t* lane_offsets, int64_t* chunk_offsets,
                     int threads);

// Pass 2: writes the streams into `words` (size from plan_streams) and the raw sign|mantissa
// bytes into `raw` (n). Returns the XOR checksum of the input (as read_checksum computes it).
uint32_t write_streams(const uint16_t* values, int64_t n, int64_t stream_values,
                       const uint8_t* lengths, const uint16_t* lane_offsets,
                       const int64_t* chunk_offsets, uint32_t* words, uint8_t* raw, int threads);

// CPU decoder (multithreaded over chunks). `num_words` >= 1 when n > 0.
void decode_cpu(const uint32_t* words, int64_t num_words, const int64_t* chunk_offsets,
                const uint16_t* lane_offsets, const uint16_t* lut, const uint8_t* raw, int64_t n,
                int64_t stream_values, uint16_t* out, int threads);

#ifdef EK_WITH_CUDA
// GPU decoder on `stream` (cudaStream_t as integer). Asynchronous; returns 0 or a cudaError_t.
int decode_cuda(const uint32_t* words, int64_t num_words, const int64_t* chunk_offsets,
                const uint16_t* lane_offsets, const uint16_t* lut, const uint8_t* raw, int64_t n,
                int64_t stream_values, uint16_t* out, uintptr_t stream);
#endif

}  // namespace dfloat
}  // namespace ek

// EKDF encoder and CPU decoder. Format and decoding rule: dfloat.h.
#include <algorithm>
#include <cstring>
#include <functional>
#include <atomic>
#include <new>
#include <stdexcept>
#include <system_error>
#include <thread>
#include <vector>

#include "dfloat.h"
#include "dfloat_block.h"
#include "dfloat_block_emulated.h"

namespace ek {
namespace dfloat {
namespace {

int resolve_threads(int threads) {
  if (threads > 0) return std::min(threads, kMaxThreads);
  const unsigned hw = std::thread::hardware_concurrency();
  return hw == 0 ? 1 : static_cast<int>(std::min<unsigned>(hw, kMaxThreads));
}

// Runs fn(begin, end) over [0, count) split into `threads` contiguous ranges. When the system
// refuses a thread (std::system_error: no memory for its stack, a process limit), the ranges that
// did not get one run on the calling thread: fewer threads, same result, never std::terminate.
void parallel_for(int64_t count, int threads, const std::function<void(int64_t, int64_t)>& fn) {
  threads = static_cast<int>(std::min<int64_t>(resolve_threads(threads), std::max<int64_t>(count, 1)));
  if (threads <= 1) {
    fn(0, count);
    return;
  }
  std::vector<std::thread> pool;
  int started = 0;
  try {
    pool.reserve(threads);
    for (; started < threads; ++started) {
      const int64_t b = count * started / threads, e = count * (started + 1) / threads;
      pool.emplace_back([&fn, b, e] { fn(b, e); });
    }
  } catch (const std::system_error&) {
  } catch (const std::bad_alloc&) {
  }
  for (int t = started; t < threads; ++t) fn(count * t / threads, count * (t + 1) / threads);
  for (auto& th : pool) th.join();
}

inline uint32_t exponent_of(uint16_t v) { return (v >> 7) & 0xffu; }
inline uint8_t raw_of(uint16_t v) { return static_cast<uint8_t>(((v >> 8) & 0x80u) | (v & 0x7fu)); }

struct Code {
  uint32_t bits[256];
  uint8_t len[256];
};

Code canonical_codes(const uint8_t* lengths) {
  Code code{};
  std::vector<int> order;
  for (int s = 0; s < 256; ++s)
    if (lengths[s] > 0) order.push_back(s);
  std::stable_sort(order.begin(), order.end(),
                   [&](int a, int b) { return lengths[a] < lengths[b]; });
  uint32_t next = 0;
  int prev_len = 0;
  for (int s : order) {
    next <<= (lengths[s] - prev_len);
    prev_len = lengths[s];
    code.bits[s] = next++;
    code.len[s] = lengths[s];
  }
  return code;
}

}  // namespace

void exponent_histogram(const uint16_t* values, int64_t n, int64_t* hist, int threads) {
  const int nt = resolve_threads(threads);
  std::vector<std::vector<int64_t>> partial(nt, std::vector<int64_t>(256, 0));
  parallel_for(nt, nt, [&](int64_t tb, int64_t te) {
    for (int64_t t = tb; t < te; ++t) {
      int64_t* h = partial[t].data();
      const int64_t b = n * t / nt, e = n * (t + 1) / nt;
      for (int64_t i = b; i < e; ++i) ++h[exponent_of(values[i])];
    }
  });
  std::fill(hist, hist + 256, 0);
  for (const auto& h : partial)
    for (int s = 0; s < 256; ++s) hist[s] += h[s];
}

void code_lengths(const int64_t* hist, int max_len, uint8_t* lengths) {
  std::fill(lengths, lengths + 256, 0);
  std::vector<int> used;
  for (int s = 0; s < 256; ++s)
    if (hist[s] > 0) used.push_back(s);
  const int m = static_cast<int>(used.size());
  if (m == 0) return;
  if (m == 1) {
    lengths[used[0]] = 1;
    return;
  }
  if ((1 << max_len) < m) throw std::invalid_argument("code_lengths: max_len too small");
  std::stable_sort(used.begin(), used.end(), [&](int a, int b) { return hist[a] < hist[b]; });

  // Package-merge: an item is a weight plus how often each leaf occurs in it. The lengths are the
  // leaf counts over the first 2m-2 items of the list after max_len - 1 package/merge rounds.
  struct Item {
    int64_t weight;
    std::vector<uint8_t> count;  // per position in `used`
  };
  std::vector<Item> leaves(m);
  for (int i = 0; i < m; ++i) {
    leaves[i].weight = hist[used[i]];
    leaves[i].count.assign(m, 0);
    leaves[i].count[i] = 1;
  }
  std::vector<Item> list = leaves;
  for (int level = 1; level < max_len; ++level) {
    std::vector<Item> packages;
    for (size_t i = 0; i + 1 < list.size(); i += 2) {
      Item p{list[i].weight + list[i + 1].weight, list[i].count};
      for (int j = 0; j < m; ++j) p.count[j] += list[i + 1].count[j];
      packages.push_back(std::move(p));
    }
    std::vector<Item> merged;
    merged.reserve(leaves.size() + packages.size());
    size_t a = 0, b = 0;
    while (a < leaves.size() || b < packages.size()) {
      // leaves first on equal weight: keeps the result deterministic
      if (b >= packages.size() || (a < leaves.size() && leaves[a].weight <= packages[b].weight))
        merged.push_back(leaves[a++]);
      else
        merged.push_back(packages[b++]);
    }
    list = std::move(merged);
  }
  std::vector<int> len(m, 0);
  for (int i = 0; i < 2 * m - 2; ++i)
    for (int j = 0; j < m; ++j) len[j] += list[i].count[j];
  for (int j = 0; j < m; ++j) lengths[used[j]] = static_cast<uint8_t>(len[j]);
}

void build_lut(const uint8_t* lengths, uint16_t* lut) {
  int first = -1;
  for (int s = 0; s < 256 && first < 0; ++s)
    if (lengths[s] > 0) first = s;
  const uint16_t filler = static_cast<uint16_t>((1 << 8) | (first < 0 ? 0 : first));
  std::fill(lut, lut + kLutSize, filler);
  const Code code = canonical_codes(lengths);
  for (int s = 0; s < 256; ++s) {
    const int len = code.len[s];
    if (len == 0) continue;
    if (len > kMaxCodeLen) throw std::invalid_argument("build_lut: code longer than kMaxCodeLen");
    const uint32_t lo = code.bits[s] << (kMaxCodeLen - len), hi = (code.bits[s] + 1) << (kMaxCodeLen - len);
    for (uint32_t p = lo; p < hi; ++p) lut[p] = static_cast<uint16_t>((len << 8) | s);
  }
}

int64_t stream_bits(const uint16_t* values, int64_t n, const uint8_t* lengths, int threads) {
  const int nt = resolve_threads(threads);
  std::vector<int64_t> partial(nt, 0);
  parallel_for(nt, nt, [&](int64_t tb, int64_t te) {
    for (int64_t t = tb; t < te; ++t) {
      int64_t bits = 0;
      for (int64_t i = n * t / nt; i < n * (t + 1) / nt; ++i) bits += lengths[exponent_of(values[i])];
      partial[t] = bits;
    }
  });
  int64_t total = 0;
  for (int64_t b : partial) total += b;
  return total;
}

uint32_t encode(const uint16_t* values, int64_t n, const uint8_t* lengths, int64_t total_bits, uint32_t* words,
                uint8_t* gaps, int64_t* block_starts, uint8_t* raw, int64_t* max_block_values, int threads) {
  const Code code = canonical_codes(lengths);
  const int64_t segments = (total_bits + kSegmentBits - 1) / kSegmentBits;
  const int64_t blocks = (total_bits + kBlockBits - 1) / kBlockBits;
  // 15 = "no code starts here" (only possible in the last segment): the decoder's bound < 12.
  std::vector<uint8_t> gap(segments, 15);
  std::fill(block_starts, block_starts + blocks + 1, n);

  // Each of `parts` threads encodes a contiguous range of values at its bit offset; the words
  // it shares with its neighbours (its first and last) are OR-ed atomically.
  const int parts = static_cast<int>(std::min<int64_t>(resolve_threads(threads), std::max<int64_t>(n, 1)));
  std::vector<int64_t> part_bits(parts + 1, 0);
  parallel_for(parts, parts, [&](int64_t pb, int64_t pe) {
    for (int64_t p = pb; p < pe; ++p) {
      int64_t bits = 0;
      for (int64_t i = n * p / parts; i < n * (p + 1) / parts; ++i) bits += code.len[exponent_of(values[i])];
      part_bits[p + 1] = bits;
    }
  });
  for (int p = 0; p < parts; ++p) part_bits[p + 1] += part_bits[p];

  std::vector<uint32_t> checksums(parts, 0);
  parallel_for(parts, parts, [&](int64_t pb, int64_t pe) {
    for (int64_t p = pb; p < pe; ++p) {
      const int64_t begin = n * p / parts, end = n * (p + 1) / parts;
      int64_t pos = part_bits[p];
      int64_t prev_start = begin > 0 ? pos - code.len[exponent_of(values[begin - 1])] : -1;
      int64_t w = pos >> 5;
      int used = static_cast<int>(pos & 31);
      uint64_t acc = 0;  // pending bits, MSB-aligned; the first `used` belong to the previous part
      bool first_word = true;
      uint32_t xr = 0;
      for (int64_t i = begin; i < end; ++i) {
        const uint16_t v = values[i];
        const uint32_t e = exponent_of(v);
        const int len = code.len[e];
        const int64_t seg = pos / kSegmentBits;
        if (seg * kSegmentBits > prev_start) {  // first code starting in segment `seg`
          gap[seg] = static_cast<uint8_t>(pos - seg * kSegmentBits);
          if (seg % kBlockSegments == 0) block_starts[seg / kBlockSegments] = i;
        }
        prev_start = pos;
        acc |= static_cast<uint64_t>(code.bits[e]) << (64 - used - len);
        used += len;
        pos += len;
        if (used >= 32) {
          const uint32_t word = static_cast<uint32_t>(acc >> 32);
          if (first_word) __atomic_fetch_or(words + w, word, __ATOMIC_RELAXED);
          else words[w] = word;
          first_word = false;
          ++w;
          acc <<= 32;
          used -= 32;
        }
        raw[i] = raw_of(v);
        xr ^= (i & 1) ? (static_cast<uint32_t>(v) << 16) : v;
      }
      if (used > 0 && end > begin) __atomic_fetch_or(words + w, static_cast<uint32_t>(acc >> 32), __ATOMIC_RELAXED);
      checksums[p] = xr;
    }
  });
  for (int64_t k = 0; k < segments; k += 2)
    gaps[k / 2] = static_cast<uint8_t>(gap[k] | ((k + 1 < segments ? gap[k + 1] : 0) << 4));
  int64_t most = 0;
  for (int64_t b = 0; b < blocks; ++b) most = std::max(most, block_starts[b + 1] - block_starts[b]);
  *max_block_values = most;
  uint32_t xr = 0;
  for (uint32_t c : checksums) xr ^= c;
  return xr;
}

namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The array sizes every decoder assumes for n values in total_bits stream bits (dfloat.h).
bool sizes_agree(int64_t num_words, int64_t num_blocks, int64_t num_gap_bytes, int64_t n, int64_t total_bits) {
  if (n < 0 || total_bits < 0) return false;
  if (n == 0) return total_bits == 0 && num_blocks == 0;
  return total_bits >= n && total_bits <= int64_t(kMaxCodeLen) * n && num_words == ceil_div(total_bits, 32) + 1 &&
         num_blocks == ceil_div(total_bits, kBlockBits) &&
         num_gap_bytes == ceil_div(ceil_div(total_bits, kSegmentBits), 2);
}

// The GPU decoder reads codes of <= 6 bits from a 64-entry table (block::short_entry) and the
// rest from the full table; both paths give the same entry only if every 64-entry run under a
// short code repeats that code's entry -- true of any table build_lut makes from a complete code.
bool lut_paths_agree(const uint16_t* lut) {
  for (int v = 0; v < block::kShortSize; ++v) {
    const uint16_t e = block::short_entry(lut, v);
    if (e == 0) continue;
    for (int r = 0; r < (1 << (kMaxCodeLen - block::kShortBits)); ++r)
      if (lut[(v << (kMaxCodeLen - block::kShortBits)) | r] != e) return false;
  }
  return true;
}

}  // namespace

int decode_cpu(const uint32_t* words, int64_t num_words, const int64_t* block_starts, int64_t num_blocks,
               const uint8_t* gaps, int64_t num_gap_bytes, const uint16_t* lut, const uint8_t* raw, int64_t n,
               int64_t total_bits, int64_t max_block_values, uint16_t* out, int64_t out_capacity, int threads) {
  if (n < 0 || out_capacity < n) return kBadSizes;
  auto fail = [&](int status) {
    std::fill(out, out + n, kUndecodable);
    return status;
  };
  if (!sizes_agree(num_words, num_blocks, num_gap_bytes, n, total_bits)) return fail(kBadSizes);
  if (n == 0) return kDecodeOk;
  // the index, serially (one entry per 65536 stream bits)
  if (block_starts[0] != 0 || block_starts[num_blocks] != n) return fail(kBadBlockStarts);
  for (int64_t b = 0; b < num_blocks; ++b) {
    if (block_starts[b + 1] < block_starts[b]) return fail(kBadBlockStarts);
    if (block_starts[b + 1] - block_starts[b] > max_block_values) return fail(kBlockTooLarge);
  }
  if (!lut_paths_agree(lut)) return fail(kBadLut);

  const int64_t segments = ceil_div(total_bits, kSegmentBits);
  auto gap_of = [&](int64_t s) { return static_cast<int64_t>((gaps[s >> 1] >> ((s & 1) * 4)) & 15); };
  auto limit_of = [&](int64_t s) { return std::min<int64_t>(kSegmentBits, total_bits - s * kSegmentBits); };
  // segments [lo, hi) in which no code may start: the GPU must find nothing to decode there
  auto all_empty = [&](int64_t lo, int64_t hi) {
    for (int64_t s = lo; s < hi; ++s)
      if (gap_of(s) < limit_of(s)) return false;
    return true;
  };
  const int64_t last = num_words - 1;
  auto word = [&](int64_t i) -> uint64_t { return words[std::min(std::max<int64_t>(i, 0), last)]; };
  if (gap_of(0) != 0) return fail(kStreamMismatch);  // the first code starts at bit 0
  std::atomic<int> status{kDecodeOk};
  parallel_for(num_blocks, threads, [&](int64_t bb, int64_t be) {
    for (int64_t b = bb; b < be && status.load(std::memory_order_relaxed) == kDecodeOk; ++b) {
      const int64_t first = block_starts[b], stop = block_starts[b + 1];
      const int64_t seg_lo = b * kBlockSegments, seg_hi = std::min(seg_lo + kBlockSegments, segments);
      if (first == stop) {  // no code may start in this block (its bits end a code of the last one)
        if (!all_empty(seg_lo, seg_hi)) status.store(kStreamMismatch);
        continue;
      }
      int64_t pos = seg_lo * kSegmentBits + gap_of(seg_lo);
      if (gap_of(seg_lo) >= limit_of(seg_lo)) {
        status.store(kStreamMismatch);
        continue;
      }
      int64_t w = pos >> 5;
      const int off = static_cast<int>(pos & 31);
      uint64_t buf = ((word(w) << 32) | word(w + 1)) << off;
      int nbits = 64 - off;
      w += 2;
      int64_t next_seg = seg_lo + 1, boundary = next_seg * kSegmentBits;  // next segment to enter
      bool ok = true;
      for (int64_t i = first; i < stop; ++i) {
        if (pos >= boundary) {  // the first code starting in segment next_seg: must be at its gap
          if (next_seg >= seg_hi || pos - boundary != gap_of(next_seg)) {
            ok = false;
            break;
          }
          boundary = ++next_seg * kSegmentBits;
        }
        if (pos >= total_bits) {
          ok = false;
          break;
        }
        if (nbits < 32) {
          buf |= word(w++) << (32 - nbits);
          nbits += 32;
        }
        const uint16_t e = lut[buf >> (64 - kMaxCodeLen)];
        const int len = std::max(1, (e >> 8) & 15);  // 1..15 even for a corrupted table
        buf <<= len;
        nbits -= len;
        pos += len;
        out[i] = static_cast<uint16_t>(block::bf16_bits(raw[i], e & 0xffu));
      }
      // where the next code starts: at the next block's first gap, or the stream ends exactly
      if (ok) {
        if (pos < total_bits)
          ok = pos >= boundary && next_seg == seg_lo + kBlockSegments && next_seg < segments &&
               pos - boundary == gap_of(next_seg);
        else
          ok = pos == total_bits && all_empty(next_seg, seg_hi);
      }
      if (!ok) status.store(kStreamMismatch);
    }
  });
  return status.load() == kDecodeOk ? kDecodeOk : fail(status.load());
}

int decode_block_emulated(const uint32_t* words, int64_t num_words, const int64_t* block_starts,
                          int64_t num_blocks, const uint8_t* gaps, int64_t num_gap_bytes, const uint16_t* lut,
                          const uint8_t* raw, int64_t n, int64_t total_bits, int64_t max_block_values,
                          uint16_t* out, int64_t out_capacity) {
  if (n <= 0) return n == 0 ? kDecodeOk : kBadSizes;
  if (out_capacity < n || num_blocks <= 0) return kBadSizes;
  block::Emulator emulator(words, num_words, gaps, num_gap_bytes, lut, total_bits, max_block_values);
  const int cap = emulator.cap();
  for (int64_t b = 0; b < num_blocks; ++b) {
    int64_t first, stop;
    block::block_range(block_starts, b, num_blocks, n, &first, &stop);
    const int lead = static_cast<int>(first & 7);
    const int codes = emulator.decode(b, lead);
    if (stop - first > cap || codes != stop - first) {  // the index disagrees with the stream
      std::fill(out + first, out + stop, kUndecodable);
      continue;
    }
    const uint8_t* sexp = emulator.exponents();
    for (int64_t i = first; i < stop; ++i)
      out[i] = static_cast<uint16_t>(block::bf16_bits(raw[i], sexp[i - first + lead]));
  }
  return kDecodeOk;
}

}  // namespace dfloat
}  // namespace ek

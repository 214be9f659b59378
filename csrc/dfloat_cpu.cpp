// EKDF encoder and CPU decoder. Format and decoding rule: dfloat.h.
#include <algorithm>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <thread>
#include <vector>

#include "dfloat.h"

namespace ek {
namespace dfloat {
namespace {

int resolve_threads(int threads) {
  if (threads > 0) return threads;
  const unsigned hw = std::thread::hardware_concurrency();
  return hw == 0 ? 1 : static_cast<int>(hw);
}

// Runs fn(begin, end) over [0, count) split into `threads` contiguous ranges.
void parallel_for(int64_t count, int threads, const std::function<void(int64_t, int64_t)>& fn) {
  threads = static_cast<int>(std::min<int64_t>(resolve_threads(threads), std::max<int64_t>(count, 1)));
  if (threads <= 1) {
    fn(0, count);
    return;
  }
  std::vector<std::thread> pool;
  pool.reserve(threads);
  for (int t = 0; t < threads; ++t) {
    const int64_t b = count * t / threads, e = count * (t + 1) / threads;
    pool.emplace_back([&fn, b, e] { fn(b, e); });
  }
  for (auto& th : pool) th.join();
}

inline uint32_t exponent_of(uint16_t v) { return (v >> 7) & 0xffu; }
// Which of a lane's two code streams value i belongs to: values 0-3 of each group of 8 go to the
// stream read forward from the lane's first word, values 4-7 to the one read backward from its
// last word, so a lane decodes two independent streams (twice the instruction-level parallelism)
// with no extra index entry.
inline int half_of(int64_t i) { return static_cast<int>((i >> 2) & 1); }
inline uint8_t raw_of(uint16_t v) { return static_cast<uint8_t>(((v >> 8) & 0x80u) | (v & 0x7fu)); }

int64_t num_chunks_of(int64_t n, int64_t s) { return (n + kLanes * s - 1) / (kLanes * s); }

// Calls visit(index) for every value index lane `lane` of chunk `chunk` owns, in stream order.
template <typename Visit>
inline void for_lane_values(int64_t chunk, int lane, int64_t n, int64_t s, Visit&& visit) {
  const int64_t chunk_base = chunk * kLanes * s;
  for (int64_t k = 0; k < s / kGroup; ++k) {
    const int64_t base = chunk_base + k * kLanes * kGroup + static_cast<int64_t>(lane) * kGroup;
    if (base >= n) return;
    const int64_t end = std::min<int64_t>(base + kGroup, n);
    for (int64_t i = base; i < end; ++i) visit(i);
  }
}

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

int64_t plan_streams(const uint16_t* values, int64_t n, int64_t s, const uint8_t* lengths,
                     uint16_t* lane_offsets, int64_t* chunk_offsets, int threads) {
  const int64_t chunks = num_chunks_of(n, s);
  std::vector<int64_t> chunk_words(chunks, 0);
  parallel_for(chunks, threads, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) {
      int64_t offset = 0;  // < 2^16: s <= kMaxStreamValues is checked by the caller
      for (int lane = 0; lane < kLanes; ++lane) {
        lane_offsets[c * kLanes + lane] = static_cast<uint16_t>(offset);
        int64_t bits[2] = {0, 0};
        for_lane_values(c, lane, n, s, [&](int64_t i) { bits[half_of(i)] += lengths[exponent_of(values[i])]; });
        offset += (bits[0] + 31) / 32 + (bits[1] + 31) / 32;
      }
      chunk_words[c] = offset;
    }
  });
  chunk_offsets[0] = 0;
  for (int64_t c = 0; c < chunks; ++c) chunk_offsets[c + 1] = chunk_offsets[c] + chunk_words[c];
  return chunk_offsets[chunks];
}

uint32_t write_streams(const uint16_t* values, int64_t n, int64_t s, const uint8_t* lengths,
                       const uint16_t* lane_offsets, const int64_t* chunk_offsets, uint32_t* words,
                       uint8_t* raw, int threads) {
  const Code code = canonical_codes(lengths);
  const int64_t chunks = num_chunks_of(n, s);
  const int nt = static_cast<int>(std::min<int64_t>(resolve_threads(threads), std::max<int64_t>(chunks, 1)));
  std::vector<uint32_t> checksums(nt, 0);
  parallel_for(nt, nt, [&](int64_t tb, int64_t te) {
    for (int64_t t = tb; t < te; ++t) {
      uint32_t xr = 0;
      for (int64_t c = chunks * t / nt; c < chunks * (t + 1) / nt; ++c) {
        for (int lane = 0; lane < kLanes; ++lane) {
          const int64_t begin = chunk_offsets[c] + lane_offsets[c * kLanes + lane];
          const int64_t end = lane + 1 < kLanes ? chunk_offsets[c] + lane_offsets[c * kLanes + lane + 1]
                                                : chunk_offsets[c + 1];
          // half 0 fills words forward from `begin`, half 1 backward from `end - 1`
          int64_t pos[2] = {begin, end - 1};
          const int64_t step[2] = {1, -1};
          uint64_t acc[2] = {0, 0};  // pending bits, MSB-aligned
          int used[2] = {0, 0};
          for_lane_values(c, lane, n, s, [&](int64_t i) {
            const uint16_t v = values[i];
            const uint32_t e = exponent_of(v);
            const int h = half_of(i);
            acc[h] |= static_cast<uint64_t>(code.bits[e]) << (64 - used[h] - code.len[e]);
            used[h] += code.len[e];
            if (used[h] >= 32) {
              words[pos[h]] = static_cast<uint32_t>(acc[h] >> 32);
              pos[h] += step[h];
              acc[h] <<= 32;
              used[h] -= 32;
            }
            raw[i] = raw_of(v);
            xr ^= (i & 1) ? (static_cast<uint32_t>(v) << 16) : v;
          });
          for (int h = 0; h < 2; ++h)
            if (used[h] > 0) words[pos[h]] = static_cast<uint32_t>(acc[h] >> 32);
        }
      }
      checksums[t] = xr;
    }
  });
  uint32_t xr = 0;
  for (uint32_t c : checksums) xr ^= c;
  return xr;
}

void decode_cpu(const uint32_t* words, int64_t num_words, const int64_t* chunk_offsets,
                const uint16_t* lane_offsets, const uint16_t* lut, const uint8_t* raw, int64_t n,
                int64_t s, uint16_t* out, int threads) {
  if (n <= 0) return;
  const int64_t chunks = num_chunks_of(n, s);
  const int64_t last = num_words - 1;
  parallel_for(chunks, threads, [&](int64_t cb, int64_t ce) {
    auto word = [&](int64_t i) -> uint64_t { return words[std::min(std::max<int64_t>(i, 0), last)]; };
    for (int64_t c = cb; c < ce; ++c) {
      for (int lane = 0; lane < kLanes; ++lane) {
        const int64_t begin = chunk_offsets[c] + lane_offsets[c * kLanes + lane];
        const int64_t end = lane + 1 < kLanes ? chunk_offsets[c] + lane_offsets[c * kLanes + lane + 1]
                                              : chunk_offsets[c + 1];
        int64_t pos[2] = {begin, end - 1};
        const int64_t step[2] = {1, -1};
        uint64_t buf[2];
        int nbits[2] = {64, 64};
        for (int h = 0; h < 2; ++h) {
          buf[h] = (word(pos[h]) << 32) | word(pos[h] + step[h]);
          pos[h] += 2 * step[h];
        }
        for_lane_values(c, lane, n, s, [&](int64_t i) {
          const int h = half_of(i);
          const uint16_t e = lut[buf[h] >> (64 - kMaxCodeLen)];
          const int len = (e >> 8) & 15;  // <= 15 even for a corrupted table: no shift >= 64
          buf[h] <<= len;
          nbits[h] -= len;
          if (nbits[h] < 32) {
            buf[h] |= word(pos[h]) << (32 - nbits[h]);
            pos[h] += step[h];
            nbits[h] += 32;
          }
          const uint16_t r = raw[i];
          out[i] = static_cast<uint16_t>(((r & 0x80u) << 8) | ((e & 0xffu) << 7) | (r & 0x7fu));
        });
      }
    }
  });
}

}  // namespace dfloat
}  // namespace ek

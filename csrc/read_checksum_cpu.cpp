#include <cstring>

#include "read_checksum.h"

namespace ek {

uint32_t read_checksum_cpu(const void* ptr, int64_t nbytes) {
  const auto* bytes = static_cast<const unsigned char*>(ptr);
  const int64_t n_words = nbytes / 4;
  const auto* words = static_cast<const uint32_t*>(ptr);
  uint32_t acc = 0;
  for (int64_t i = 0; i < n_words; ++i) acc ^= words[i];
  const int64_t tail = nbytes - 4 * n_words;
  if (tail > 0) {
    uint32_t last = 0;
    std::memcpy(&last, bytes + 4 * n_words, static_cast<size_t>(tail));
    acc ^= last;
  }
  return acc;
}

}  // namespace ek

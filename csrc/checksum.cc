#include "checksum.h"

#include <algorithm>
#include <array>
#include <cstring>

namespace cachelink {
namespace {

constexpr uint32_t kPoly = 0x82F63B78u;  // reflected Castagnoli polynomial

std::array<uint32_t, 256> make_table() {
  std::array<uint32_t, 256> table{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) != 0 ? (c >> 1) ^ kPoly : c >> 1;
    table[i] = c;
  }
  return table;
}

uint32_t update_soft(uint32_t crc, const uint8_t* data, uint64_t len) {
  static const std::array<uint32_t, 256> table = make_table();
  for (uint64_t i = 0; i < len; ++i) crc = table[(crc ^ data[i]) & 0xFF] ^ (crc >> 8);
  return crc;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) uint32_t update_hw(uint32_t crc, const uint8_t* data, uint64_t len) {
  uint64_t c = crc;
  while (len >= 8) {
    uint64_t word;
    std::memcpy(&word, data, 8);
    c = __builtin_ia32_crc32di(c, word);
    data += 8;
    len -= 8;
  }
  auto c32 = static_cast<uint32_t>(c);
  while (len-- > 0) c32 = __builtin_ia32_crc32qi(c32, *data++);
  return c32;
}

bool has_hw() {
  static const bool supported = __builtin_cpu_supports("sse4.2");
  return supported;
}
#endif

}  // namespace

void Crc32c::update(const uint8_t* data, uint64_t len) {
#if defined(__x86_64__)
  if (has_hw()) {
    crc_ = update_hw(crc_, data, len);
    return;
  }
#endif
  crc_ = update_soft(crc_, data, len);
}

void Crc32c::update(const std::vector<Segment>& segs, uint64_t total) {
  for (const Segment& s : segs) {
    if (total == 0) break;
    uint64_t n = std::min(total, s.len);
    update(s.addr, n);
    total -= n;
  }
}

}  // namespace cachelink

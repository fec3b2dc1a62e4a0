// CRC32C (Castagnoli) over a byte stream cut into segments: the value depends only on the bytes and
// their order, never on where the segments are cut, so sender and receiver agree.
#pragma once

#include <cstdint>
#include <vector>

#include "cache_store.h"

namespace cachelink {

class Crc32c {
 public:
  void update(const uint8_t* data, uint64_t len);
  void update(const std::vector<Segment>& segs, uint64_t total);
  uint32_t value() const { return ~crc_; }

 private:
  uint32_t crc_ = 0xFFFFFFFFu;
};

}  // namespace cachelink

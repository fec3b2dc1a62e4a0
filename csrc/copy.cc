#include "copy.h"

#include <algorithm>
#include <cstring>

namespace cachelink {

void copy_segments(const std::vector<Segment>& dst, const std::vector<Segment>& src, uint64_t total) {
  size_t di = 0;
  size_t si = 0;
  uint64_t doff = 0;
  uint64_t soff = 0;
  while (total > 0 && di < dst.size() && si < src.size()) {
    uint64_t n = std::min({total, dst[di].len - doff, src[si].len - soff});
    std::memcpy(dst[di].addr + doff, src[si].addr + soff, n);
    total -= n;
    doff += n;
    soff += n;
    if (doff == dst[di].len) {
      ++di;
      doff = 0;
    }
    if (soff == src[si].len) {
      ++si;
      soff = 0;
    }
  }
}

}  // namespace cachelink

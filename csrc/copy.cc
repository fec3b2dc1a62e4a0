#include "copy.h"

#include <algorithm>
#include <cstring>
#include <thread>

namespace cachelink {
namespace {

/// Copies stream bytes [begin, end) of `src` into the same stream positions of `dst`.
void copy_range(const std::vector<Segment>& dst, const std::vector<Segment>& src, uint64_t begin, uint64_t end) {
  size_t di = 0;
  size_t si = 0;
  uint64_t doff = begin;
  uint64_t soff = begin;
  while (di < dst.size() && doff >= dst[di].len) doff -= dst[di++].len;
  while (si < src.size() && soff >= src[si].len) soff -= src[si++].len;
  uint64_t left = end - begin;
  while (left > 0 && di < dst.size() && si < src.size()) {
    uint64_t n = std::min({left, dst[di].len - doff, src[si].len - soff});
    std::memcpy(dst[di].addr + doff, src[si].addr + soff, n);
    left -= n;
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

}  // namespace

void copy_segments(const std::vector<Segment>& dst, const std::vector<Segment>& src, uint64_t total,
                   unsigned threads) {
  // Large batches are split by bytes across threads: on two cores a second copier raises bandwidth,
  // below kParallelCopyMin the thread start costs more than it saves.
  threads = std::max(1u, threads);
  if (threads == 1 || total < kParallelCopyMin) {
    copy_range(dst, src, 0, total);
    return;
  }
  uint64_t share = (total / threads + 4095) / 4096 * 4096;
  std::vector<std::thread> helpers;
  for (unsigned i = 1; i < threads; ++i) {
    uint64_t begin = std::min(total, share * i);
    uint64_t end = std::min(total, share * (i + 1));
    if (begin < end) helpers.emplace_back(copy_range, std::cref(dst), std::cref(src), begin, end);
  }
  copy_range(dst, src, 0, std::min(total, share));
  for (auto& t : helpers) t.join();
}

}  // namespace cachelink

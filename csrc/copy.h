// Copies between segment lists whose boundaries differ (the same byte stream, cut differently).
#pragma once

#include <cstdint>
#include <vector>

#include "cache_store.h"

namespace cachelink {

/// Below this many bytes a copy stays on the calling thread.
constexpr uint64_t kParallelCopyMin = 8u << 20;

/// Copies the first `total` bytes of the `src` stream into the `dst` stream, on up to `threads` threads.
void copy_segments(const std::vector<Segment>& dst, const std::vector<Segment>& src, uint64_t total,
                   unsigned threads = 1);

}  // namespace cachelink

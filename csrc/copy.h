// Copies between segment lists whose boundaries differ (the same byte stream, cut differently).
#pragma once

#include <cstdint>
#include <vector>

#include "cache_store.h"

namespace cachelink {

/// Copies the first `total` bytes of the `src` stream into the `dst` stream.
void copy_segments(const std::vector<Segment>& dst, const std::vector<Segment>& src, uint64_t total);

}  // namespace cachelink

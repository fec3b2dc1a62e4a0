// Page-granular best-fit allocator over one pool (offsets only; it never touches memory).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <utility>
#include <vector>

namespace cachelink {

/// Best-fit allocator with immediate coalescing of neighbouring free ranges.
/// Free ranges are indexed both by offset (for coalescing) and by (size, offset) (for best fit),
/// so allocate and free are O(log n) and freed space is reused.
class Allocator {
 public:
  Allocator(uint64_t capacity, uint32_t page_shift);

  /// Reserves at least `size` bytes (rounded up to whole pages); nullopt when no free range fits.
  std::optional<uint64_t> allocate(uint64_t size);
  /// Releases the allocation starting at `offset`; returns false if no allocation starts there.
  bool release(uint64_t offset);
  /// Marks [offset, offset+size) as allocated (pool adoption); false if it overlaps free-space rules.
  bool reserve(uint64_t offset, uint64_t size);

  uint64_t capacity() const { return capacity_; }
  uint64_t used() const { return used_; }
  uint64_t largest_free() const;
  uint64_t page_size() const { return page_size_; }
  /// (offset, size) of every live allocation, by offset.
  std::vector<std::pair<uint64_t, uint64_t>> allocations() const;

 private:
  void insert_free(uint64_t offset, uint64_t size);
  void erase_free(std::map<uint64_t, uint64_t>::iterator it);
  uint64_t round_up(uint64_t size) const;

  uint64_t capacity_;
  uint64_t page_size_;
  uint64_t used_ = 0;
  std::map<uint64_t, uint64_t> free_by_offset_;
  std::set<std::pair<uint64_t, uint64_t>> free_by_size_;  // (size, offset)
  std::map<uint64_t, uint64_t> live_;                     // offset -> size
};

}  // namespace cachelink

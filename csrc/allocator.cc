#include "allocator.h"

#include <iterator>

namespace cachelink {

Allocator::Allocator(uint64_t capacity, uint32_t page_shift)
    : capacity_(capacity), page_size_(uint64_t{1} << page_shift) {
  // Only whole pages are handed out; a tail smaller than a page is never used.
  uint64_t usable = capacity_ - capacity_ % page_size_;
  if (usable > 0) insert_free(0, usable);
}

uint64_t Allocator::round_up(uint64_t size) const {
  if (size == 0) size = 1;
  return (size + page_size_ - 1) / page_size_ * page_size_;
}

void Allocator::insert_free(uint64_t offset, uint64_t size) {
  free_by_offset_.emplace(offset, size);
  free_by_size_.emplace(size, offset);
}

void Allocator::erase_free(std::map<uint64_t, uint64_t>::iterator it) {
  free_by_size_.erase({it->second, it->first});
  free_by_offset_.erase(it);
}

std::optional<uint64_t> Allocator::allocate(uint64_t size) {
  if (size > capacity_) return std::nullopt;
  uint64_t need = round_up(size);
  auto fit = free_by_size_.lower_bound({need, 0});
  if (fit == free_by_size_.end()) return std::nullopt;
  uint64_t offset = fit->second;
  uint64_t have = fit->first;
  erase_free(free_by_offset_.find(offset));
  if (have > need) insert_free(offset + need, have - need);
  live_.emplace(offset, need);
  used_ += need;
  return offset;
}

bool Allocator::release(uint64_t offset) {
  auto live = live_.find(offset);
  if (live == live_.end()) return false;
  uint64_t size = live->second;
  live_.erase(live);
  used_ -= size;
  // Coalesce with the free neighbours on both sides.
  auto next = free_by_offset_.lower_bound(offset);
  if (next != free_by_offset_.end() && offset + size == next->first) {
    size += next->second;
    erase_free(next);
  }
  auto after = free_by_offset_.lower_bound(offset);
  if (after != free_by_offset_.begin()) {
    auto prev = std::prev(after);
    if (prev->first + prev->second == offset) {
      offset = prev->first;
      size += prev->second;
      erase_free(prev);
    }
  }
  insert_free(offset, size);
  return true;
}

bool Allocator::reserve(uint64_t offset, uint64_t size) {
  if (offset % page_size_ != 0) return false;
  uint64_t need = round_up(size);
  auto it = free_by_offset_.upper_bound(offset);
  if (it == free_by_offset_.begin()) return false;
  it = std::prev(it);
  uint64_t start = it->first;
  uint64_t len = it->second;
  if (offset + need > start + len) return false;
  erase_free(it);
  if (offset > start) insert_free(start, offset - start);
  if (start + len > offset + need) insert_free(offset + need, start + len - offset - need);
  live_.emplace(offset, need);
  used_ += need;
  return true;
}

uint64_t Allocator::largest_free() const { return free_by_size_.empty() ? 0 : free_by_size_.rbegin()->first; }

std::vector<std::pair<uint64_t, uint64_t>> Allocator::allocations() const { return {live_.begin(), live_.end()}; }

}  // namespace cachelink

#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "allocator.h"

namespace cachelink {
namespace {

TEST(Allocator, RoundsToPagesAndReusesFreedSpace) {
  Allocator a(1 << 20, 12);  // 1 MiB, 4 KiB pages
  auto x = a.allocate(1);
  auto y = a.allocate(5000);
  ASSERT_TRUE(x && y);
  EXPECT_EQ(*x, 0u);
  EXPECT_EQ(*y, 4096u);
  EXPECT_EQ(a.used(), 3u * 4096);
  EXPECT_TRUE(a.release(*x));
  auto z = a.allocate(4096);
  ASSERT_TRUE(z);
  EXPECT_EQ(*z, 0u) << "the freed first page is reused";
  EXPECT_FALSE(a.release(12345)) << "no allocation starts there";
}

TEST(Allocator, BestFitAndCoalescing) {
  Allocator a(64 * 4096, 12);
  std::vector<uint64_t> offs;
  for (int i = 0; i < 8; ++i) offs.push_back(*a.allocate(8 * 4096));
  EXPECT_FALSE(a.allocate(1)) << "pool is full";
  a.release(offs[1]);  // hole of 8 pages at page 8
  a.release(offs[4]);  // hole at page 32 ...
  a.release(offs[5]);  // ... coalesced with page 40: 16 pages
  EXPECT_EQ(a.largest_free(), 16u * 4096);
  EXPECT_EQ(*a.allocate(8 * 4096), offs[1]) << "best fit takes the exact hole";
  EXPECT_EQ(*a.allocate(16 * 4096), offs[4]) << "coalesced neighbours form one range";
  for (uint64_t o : {offs[0], offs[1], offs[2], offs[3], offs[4], offs[6], offs[7]}) a.release(o);
  EXPECT_EQ(a.used(), 0u);
  EXPECT_EQ(a.largest_free(), 64u * 4096) << "everything coalesces back into one range";
}

TEST(Allocator, ReserveForAdoption) {
  Allocator a(16 * 4096, 12);
  EXPECT_TRUE(a.reserve(4 * 4096, 4096));
  EXPECT_FALSE(a.reserve(4 * 4096, 4096)) << "already taken";
  EXPECT_FALSE(a.reserve(100, 4096)) << "not page aligned";
  EXPECT_EQ(*a.allocate(4 * 4096), 0u);
  EXPECT_EQ(*a.allocate(4096), 5u * 4096);
}

TEST(Allocator, RandomWorkloadNeverOverlaps) {
  Allocator a(1 << 24, 12);
  std::mt19937_64 rng(42);
  std::vector<std::pair<uint64_t, uint64_t>> live;
  for (int step = 0; step < 20000; ++step) {
    if (live.empty() || rng() % 3 != 0) {
      uint64_t size = 1 + rng() % (256 * 1024);
      auto off = a.allocate(size);
      if (off) live.emplace_back(*off, (size + 4095) / 4096 * 4096);
    } else {
      size_t i = rng() % live.size();
      ASSERT_TRUE(a.release(live[i].first));
      live.erase(live.begin() + static_cast<long>(i));
    }
  }
  std::sort(live.begin(), live.end());
  uint64_t used = 0;
  for (size_t i = 0; i < live.size(); ++i) {
    used += live[i].second;
    ASSERT_LE(live[i].first + live[i].second, a.capacity());
    if (i > 0) ASSERT_LE(live[i - 1].first + live[i - 1].second, live[i].first);
  }
  EXPECT_EQ(used, a.used());
}

}  // namespace
}  // namespace cachelink

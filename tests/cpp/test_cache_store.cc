#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>

#include "cache_store.h"

namespace cachelink {
namespace {

class CacheStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / ("kvcore-test-" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string base() const { return (dir_ / "pool").string(); }
  std::filesystem::path dir_;
};

wire::Extent blocks_extent(uint32_t tensors, std::vector<uint64_t> blocks, uint64_t block_bytes) {
  wire::Extent e;
  e.tensor_count = tensors;
  e.unit = wire::Unit::kBlocks;
  e.blocks = std::move(blocks);
  e.block_bytes = block_bytes;
  return e;
}

TEST_F(CacheStoreTest, SegmentsCoalesceContiguousBlocks) {
  CacheStore store;
  ASSERT_TRUE(store.open_pools(base(), {1 << 20, 12}, {}, false, "").ok());
  CacheInfo info;
  ASSERT_TRUE(store.allocate(PoolKind::kDevice, true, 2, 16 * 1024, 16, "{}", &info).ok());
  std::vector<Segment> segs;
  Pin pin;
  ASSERT_TRUE(store.acquire_local(info.id, blocks_extent(2, {3, 4, 5, 9}, 1024), &segs, &pin).ok());
  ASSERT_EQ(segs.size(), 4u) << "blocks 3-5 merge into one range per tensor";
  EXPECT_EQ(segs[0].len, 3u * 1024);
  EXPECT_EQ(segs[1].len, 1024u);
}

TEST_F(CacheStoreTest, KeyReleasedAfterAllTensorsPulledAndMemoryFreedAfterPins) {
  CacheStore store;
  ASSERT_TRUE(store.open_pools(base(), {1 << 20, 12}, {}, false, "").ok());
  CacheInfo info;
  ASSERT_TRUE(store.allocate(PoolKind::kDevice, false, 2, 2048, 2, "{}", &info).ok());
  SlotKey key{7, 0, kInvalidId};
  ASSERT_TRUE(store.bind_slot_key(info.id, 1, key).ok());
  EXPECT_EQ(store.bind_slot_key(info.id, 0, key).code(), Code::kParamInvalid) << "a key binds once";
  ASSERT_TRUE(store.deallocate(info.id, false).ok());  // id reference gone, key still holds memory
  EXPECT_GT(store.usage(PoolKind::kDevice).used, 0u);
  wire::CacheRef ref{wire::RefKind::kSlotKey, 7, 0, kInvalidId};
  wire::Extent layer0;
  layer0.tensor_count = 1;
  layer0.length = wire::kWholeSlot;
  {
    std::vector<Segment> segs;
    Pin pin;
    SlotKey resolved;
    ASSERT_TRUE(store.acquire(ref, layer0, true, &segs, &pin, &resolved).ok());
    pin.set_key_release(resolved, 0, 1);
    pin.commit();
  }
  EXPECT_GT(store.usage(PoolKind::kDevice).used, 0u) << "only half the tensors were pulled";
  wire::Extent layer1 = layer0;
  layer1.tensor_start = 1;
  std::vector<Segment> segs;
  Pin pin;
  SlotKey resolved;
  ASSERT_TRUE(store.acquire(ref, layer1, true, &segs, &pin, &resolved).ok());
  pin.set_key_release(resolved, 1, 1);
  pin.commit();
  EXPECT_GT(store.usage(PoolKind::kDevice).used, 0u) << "pinned while the transfer runs";
  pin.reset();
  EXPECT_EQ(store.usage(PoolKind::kDevice).used, 0u) << "last key and last pin gone: memory freed";
  EXPECT_EQ(store.acquire(ref, layer0, true, &segs, &pin, &resolved).code(), Code::kKvCacheNotExist);
}

TEST_F(CacheStoreTest, PersistentIndexIsAdopted) {
  std::string index = base() + ".index";
  CacheInfo info;
  {
    CacheStore store;
    ASSERT_TRUE(store.open_pools(base(), {1 << 20, 12}, {}, true, index).ok());
    ASSERT_TRUE(store.allocate(PoolKind::kDevice, true, 1, 8192, 2, "meta", &info).ok());
    ASSERT_TRUE(store.bind_blocks_key(info.id, 3).ok());
    std::memset(reinterpret_cast<void*>(info.addrs[0]), 0x5a, 8192);
    store.close(false);
  }
  CacheStore adopted;
  ASSERT_TRUE(adopted.open_pools(base(), {1 << 20, 12}, {}, true, index).ok());
  auto list = adopted.list();
  ASSERT_EQ(list.size(), 1u);
  EXPECT_EQ(list[0].meta, "meta");
  EXPECT_EQ(list[0].blocks_model_id.value_or(0), 3u);
  EXPECT_EQ(reinterpret_cast<uint8_t*>(list[0].addrs[0])[100], 0x5a);
  CacheInfo next;
  ASSERT_TRUE(adopted.allocate(PoolKind::kDevice, false, 1, 4096, 1, "", &next).ok());
  EXPECT_GT(next.id, info.id);
  EXPECT_NE(next.addrs[0], list[0].addrs[0]) << "adopted regions stay reserved";
  adopted.close(true);
  EXPECT_FALSE(std::filesystem::exists(index));
}

}  // namespace
}  // namespace cachelink

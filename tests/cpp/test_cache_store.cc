#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

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

TEST_F(CacheStoreTest, IndexWriteNeverFollowsAPlantedSymlink) {
  // The old fixed temporary name, planted as a symlink to a file the engine must not clobber.
  const std::string index = base() + ".index";
  const std::string victim = (dir_ / "state.json").string();
  {
    std::ofstream(victim) << "precious";
  }
  std::filesystem::create_symlink(victim, index + ".tmp");
  CacheStore store;
  ASSERT_TRUE(store.open_pools(base(), {1 << 20, 12}, {}, false, index).ok());
  CacheInfo info;
  ASSERT_TRUE(store.allocate(PoolKind::kDevice, true, 1, 4096, 1, "", &info).ok());
  std::ifstream in(victim);
  std::string text;
  in >> text;
  EXPECT_EQ(text, "precious");
  EXPECT_TRUE(std::filesystem::is_regular_file(std::filesystem::symlink_status(index)));
  for (const auto& entry : std::filesystem::directory_iterator(dir_)) {
    const std::string name = entry.path().filename().string();
    EXPECT_TRUE(name.find(".index.tmp.") == std::string::npos) << "temporary left behind: " << name;
  }
  // and an index that is itself a symlink is not read when adopting
  store.close(false);
  std::filesystem::remove(index);
  std::filesystem::create_symlink(victim, index);
  CacheStore adopter;
  EXPECT_TRUE(adopter.open_pools(base() + "2", {1 << 20, 12}, {}, true, index).ok());
  EXPECT_TRUE(adopter.list().empty());
  adopter.close(true);
}

TEST_F(CacheStoreTest, PeerPoolsAreCheckedBeforeTheyAreMapped) {
  std::shared_ptr<SharedMapping> pool;
  ASSERT_TRUE(SharedMapping::create(base() + ".device", 1 << 20, &pool).ok());
  std::shared_ptr<SharedMapping> peer;
  const std::string dir = dir_.string();
  EXPECT_TRUE(SharedMapping::open_peer(dir, "pool.device", 1 << 20, &peer).ok());
  EXPECT_FALSE(SharedMapping::open_peer(dir, "pool.device", 1 << 19, &peer).ok()) << "exact size only";
  EXPECT_FALSE(SharedMapping::open_peer(dir, "pool.device", 0, &peer).ok());
  EXPECT_FALSE(SharedMapping::open_peer(dir, base() + ".device", 1 << 20, &peer).ok()) << "names, never paths";
  EXPECT_FALSE(SharedMapping::open_peer(dir, "../" + dir_.filename().string() + "/pool.device", 1 << 20, &peer).ok());
  EXPECT_FALSE(SharedMapping::open_peer(dir, "..", 1 << 20, &peer).ok());
  EXPECT_FALSE(SharedMapping::open_peer(dir, "", 1 << 20, &peer).ok());
  std::filesystem::create_symlink(base() + ".device", dir_ / "link.device");
  EXPECT_FALSE(SharedMapping::open_peer(dir, "link.device", 1 << 20, &peer).ok()) << "no symlinks";
  std::filesystem::create_directory(dir_ / "folder");
  EXPECT_FALSE(SharedMapping::open_peer(dir, "folder", 4096, &peer).ok()) << "regular files only";
  ASSERT_EQ(::mkfifo((dir_ / "fifo").c_str(), 0600), 0);
  EXPECT_FALSE(SharedMapping::open_peer(dir, "fifo", 4096, &peer).ok());
  pool->unlink_file();
}

}  // namespace
}  // namespace cachelink

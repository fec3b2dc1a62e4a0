// The caches of one instance: its memory pools, their allocators and the index of caches and keys.
//
// All state is guarded by one mutex held only for bookkeeping, never while bytes move. A transfer
// resolves its extent into segments and holds a Pin, so a cache that is deallocated mid-transfer is
// freed when the last pin goes, never under a copy.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "allocator.h"
#include "shm.h"
#include "status.h"
#include "wire.h"

namespace cachelink {

enum class PoolKind : int32_t { kRegistered = -1, kDevice = 0, kHost = 1 };

struct Segment {
  uint8_t* addr;
  uint64_t len;
};

constexpr uint64_t kInvalidId = ~uint64_t{0};

struct SlotKey {
  uint64_t req_id = kInvalidId;
  uint64_t model_id = 0;
  uint64_t prefix_id = kInvalidId;
};

/// The geometry of one cache: enough to turn an extent into segments, in any process that maps its pool.
struct CacheGeometry {
  int64_t id = 0;
  bool blocks = false;
  uint32_t num_tensors = 0;
  uint64_t tensor_bytes = 0;
  uint64_t units = 0;  // batch slots or blocks
  std::vector<uint8_t*> addrs;
  uint64_t unit_bytes() const { return units == 0 ? 0 : tensor_bytes / units; }
};

/// Validates extent `e` against the geometry `r` and appends its segments (contiguous ones merged).
Status segments_for(const CacheGeometry& r, const wire::Extent& e, std::vector<Segment>* segs);

/// A peer-visible cache as a same-host peer sees it: pool index and pool-relative tensor offsets.
struct SharedLayout {
  int32_t pool = -1;       // -1: not in a shared pool (caller memory)
  CacheGeometry geometry;  // addrs hold pool-relative offsets here
  wire::Extent extent;     // the extent with the slot the reference resolved to
};

/// What the Python layer needs to rebuild a Cache object (pool adoption, attach).
struct CacheInfo {
  int64_t id = 0;
  bool blocks = false;
  uint32_t num_tensors = 0;
  uint64_t tensor_bytes = 0;
  uint64_t units = 0;
  int32_t pool = 0;
  bool remote_accessible = true;
  std::string meta;
  std::vector<uint64_t> addrs;
  std::vector<std::tuple<uint64_t, uint64_t, uint64_t, uint64_t>> slot_keys;  // slot, req, model, prefix
  std::optional<uint64_t> blocks_model_id;
};

struct PoolUsage {
  uint64_t capacity = 0;
  uint64_t used = 0;
};

class CacheStore;

/// Keeps a cache alive while bytes move; on commit it releases the pulled key's reference.
class Pin {
 public:
  Pin() = default;
  Pin(CacheStore* store, int64_t id, std::shared_ptr<SharedMapping> mapping)
      : store_(store), id_(id), mapping_(std::move(mapping)) {}
  Pin(const Pin&) = delete;
  Pin& operator=(const Pin&) = delete;
  Pin(Pin&& other) noexcept { *this = std::move(other); }
  Pin& operator=(Pin&& other) noexcept;
  ~Pin() { reset(); }
  void reset();
  int64_t id() const { return id_; }
  /// Marks the pinned slot's key as pulled for the tensor range (releases the key once all were pulled).
  void set_key_release(const SlotKey& key, uint32_t tensor_start, uint32_t tensor_count);
  void commit();

 private:
  CacheStore* store_ = nullptr;
  int64_t id_ = 0;
  std::shared_ptr<SharedMapping> mapping_;  // keeps the pool mapped while bytes move, even past close()
  bool has_key_ = false;
  bool release_key_ = false;
  SlotKey key_{};
  uint32_t tensor_start_ = 0;
  uint32_t tensor_count_ = 0;
};

struct PoolConfig {
  uint64_t size = 0;
  uint32_t page_shift = 16;
};

class CacheStore {
 public:
  CacheStore();
  ~CacheStore();
  CacheStore(const CacheStore&) = delete;
  CacheStore& operator=(const CacheStore&) = delete;

  /// Creates or adopts the pools. `index_path` empty = not persistent.
  Status open_pools(const std::string& base_path, const PoolConfig& device, const PoolConfig& host, bool adopt,
                    const std::string& index_path);
  /// Unmaps the pools; `remove_files` also deletes them and the index (finalize).
  void close(bool remove_files);

  Status allocate(PoolKind pool, bool blocks, uint32_t num_tensors, uint64_t tensor_bytes, uint64_t units,
                  const std::string& meta, CacheInfo* out);
  Status register_memory(bool blocks, uint32_t num_tensors, uint64_t tensor_bytes, uint64_t units,
                         const std::vector<uint64_t>& addrs, bool remote_accessible, const std::string& meta,
                         CacheInfo* out);
  /// Binds a key to a batch slot; `lease_ms` > 0 releases the key if nobody pulled it in time.
  Status bind_slot_key(int64_t id, uint64_t slot, const SlotKey& key, int64_t lease_ms = 0);
  /// When the next key lease runs out (nullopt: none pending).
  std::optional<std::chrono::steady_clock::time_point> next_lease() const;
  /// Releases every key whose lease ran out by `now`; returns how many.
  size_t expire_leases(std::chrono::steady_clock::time_point now);
  Status bind_blocks_key(int64_t id, uint64_t model_id);
  /// Drops the id reference; the memory goes once no key or pin holds it. Unknown ids are a no-op.
  Status deallocate(int64_t id, bool expect_blocks);
  void remove_slot_key(const SlotKey& key);
  void remove_blocks_key(uint64_t model_id);

  /// Resolves a peer's request into local segments and pins the cache.
  Status acquire(const wire::CacheRef& ref, const wire::Extent& extent, bool for_peer, std::vector<Segment>* segs,
                 Pin* pin, SlotKey* resolved_key, SharedLayout* layout = nullptr);
  /// Resolves an extent of one of this instance's own caches.
  Status acquire_local(int64_t id, const wire::Extent& extent, std::vector<Segment>* segs, Pin* pin);

  std::vector<CacheInfo> list() const;
  std::optional<CacheInfo> find(int64_t id) const;
  PoolUsage usage(PoolKind pool) const;
  /// Address where the pool is mapped in this process (0 when not configured).
  uint64_t pool_base(PoolKind pool) const;
  /// (path, size) of each shared pool, in pool-index order; empty paths for pools not configured.
  std::vector<std::pair<std::string, uint64_t>> pool_files() const;
  std::shared_ptr<SharedMapping> mapping_of(int64_t id) const;

 private:
  friend class Pin;
  struct Record;
  struct Pool {
    std::shared_ptr<SharedMapping> mapping;
    std::unique_ptr<Allocator> allocator;
  };

  Record* find_locked(int64_t id);
  const Record* find_locked(int64_t id) const;
  static std::tuple<bool, uint64_t, uint64_t> key_of(const SlotKey& key);
  void unpin(int64_t id, bool release_key, const SlotKey& key, uint32_t start, uint32_t count);
  void maybe_free_locked(int64_t id);
  void release_key_locked(const std::tuple<bool, uint64_t, uint64_t>& key);
  CacheInfo info_locked(const Record& r) const;
  void persist_locked() const;
  Status restore_locked(const std::vector<uint8_t>& bytes);
  static CacheGeometry geometry_of(const Record& r);
  Status acquire_address_locked(uint64_t address, const wire::Extent& extent, std::vector<Segment>* segs, Pin* pin);

  mutable std::mutex mu_;
  Pool pools_[2];
  std::map<int64_t, std::unique_ptr<Record>> records_;
  std::map<std::tuple<bool, uint64_t, uint64_t>, std::pair<int64_t, uint64_t>> slot_keys_;  // -> (id, slot)
  std::map<uint64_t, int64_t> blocks_keys_;                                                 // model -> id
  int64_t next_id_ = 1;
  std::string index_path_;
};

}  // namespace cachelink

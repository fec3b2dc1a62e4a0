#include "cache_store.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>
#include <random>
#include <sstream>

namespace cachelink {
namespace {

constexpr uint32_t kIndexVersion = 1;
constexpr uint64_t kTensorAlign = 64;

const char* pool_name(PoolKind pool) { return pool == PoolKind::kHost ? "host" : "device"; }

void append_segment(std::vector<Segment>* segs, uint8_t* addr, uint64_t len) {
  if (!segs->empty() && segs->back().addr + segs->back().len == addr) {
    segs->back().len += len;  // contiguous with the previous one: one copy or frame instead of two
    return;
  }
  segs->push_back({addr, len});
}

Status write_file_atomically(const std::string& path, const std::vector<uint8_t>& bytes) {
  // A unique temporary name, created exclusively and never through a symlink: nothing planted at a guessable
  // name can redirect the write.
  static std::atomic<uint64_t> counter{0};
  std::string tmp = path + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(counter.fetch_add(1)) + "." +
                    std::to_string(std::random_device{}());
  int fd = open_nofollow(tmp, O_WRONLY | O_CREAT | O_EXCL, 0600);
  if (fd < 0) return {Code::kFailed, "cannot write " + tmp + ": " + std::strerror(errno)};
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      ::close(fd);
      ::unlink(tmp.c_str());
      return {Code::kFailed, "cannot write " + tmp + ": " + std::strerror(errno)};
    }
    done += static_cast<size_t>(n);
  }
  ::fsync(fd);
  ::close(fd);
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    std::string why = std::strerror(errno);
    ::unlink(tmp.c_str());
    return {Code::kFailed, "cannot rename " + tmp + ": " + why};
  }
  return Status::Ok();
}

}  // namespace

struct CacheStore::Record {
  int64_t id = 0;
  bool blocks = false;
  uint32_t num_tensors = 0;
  uint64_t tensor_bytes = 0;
  uint64_t units = 0;
  PoolKind pool = PoolKind::kDevice;
  uint64_t region_offset = 0;
  uint64_t stride = 0;
  std::vector<uint8_t*> addrs;
  bool remote_accessible = true;
  std::string meta;
  bool id_ref = true;
  int pins = 0;
  std::map<uint64_t, std::pair<SlotKey, std::vector<bool>>> slot_keys;  // slot -> key, tensors pulled
  std::map<uint64_t, std::chrono::steady_clock::time_point> leases;     // slot -> key lease deadline
  std::optional<uint64_t> blocks_model;

  uint64_t unit_bytes() const { return units == 0 ? 0 : tensor_bytes / units; }
};

CacheStore::CacheStore() = default;
CacheStore::~CacheStore() = default;

// ---------------------------------------------------------------------------------------------- Pin

Pin& Pin::operator=(Pin&& other) noexcept {
  if (this != &other) {
    reset();
    store_ = other.store_;
    id_ = other.id_;
    mapping_ = std::move(other.mapping_);
    has_key_ = other.has_key_;
    release_key_ = other.release_key_;
    key_ = other.key_;
    tensor_start_ = other.tensor_start_;
    tensor_count_ = other.tensor_count_;
    other.store_ = nullptr;
  }
  return *this;
}

void Pin::set_key_release(const SlotKey& key, uint32_t tensor_start, uint32_t tensor_count) {
  has_key_ = true;
  key_ = key;
  tensor_start_ = tensor_start;
  tensor_count_ = tensor_count;
}

void Pin::commit() { release_key_ = has_key_; }

void Pin::reset() {
  if (store_ != nullptr) store_->unpin(id_, release_key_, key_, tensor_start_, tensor_count_);
  store_ = nullptr;
  mapping_.reset();
  has_key_ = false;
  release_key_ = false;
}

// ------------------------------------------------------------------------------------------- pools

Status CacheStore::open_pools(const std::string& base_path, const PoolConfig& device, const PoolConfig& host,
                              bool adopt, const std::string& index_path) {
  std::lock_guard<std::mutex> lock(mu_);
  const PoolConfig* configs[2] = {&device, &host};
  const char* suffixes[2] = {".device", ".host"};
  for (int i = 0; i < 2; ++i) {
    if (configs[i]->size == 0) continue;
    std::string path = base_path + suffixes[i];
    std::shared_ptr<SharedMapping> mapping;
    bool adopted = false;
    if (adopt && ::access(path.c_str(), F_OK) == 0) {
      CL_RETURN_IF_ERROR(SharedMapping::open(path, configs[i]->size, &mapping));
      adopted = true;
    } else {
      CL_RETURN_IF_ERROR(SharedMapping::create(path, configs[i]->size, &mapping));
    }
    (void)adopted;
    pools_[i].mapping = std::move(mapping);
    pools_[i].allocator = std::make_unique<Allocator>(configs[i]->size, configs[i]->page_shift);
  }
  index_path_ = index_path;
  if (adopt && !index_path_.empty()) {
    int fd = open_nofollow(index_path_, O_RDONLY);
    if (fd >= 0) {
      std::vector<uint8_t> bytes;
      uint8_t chunk[65536];
      ssize_t n = 0;
      while ((n = ::read(fd, chunk, sizeof(chunk))) > 0 || (n < 0 && errno == EINTR)) {
        if (n > 0) bytes.insert(bytes.end(), chunk, chunk + n);
      }
      ::close(fd);
      CL_RETURN_IF_ERROR(restore_locked(bytes));
    }
  }
  persist_locked();
  return Status::Ok();
}

void CacheStore::close(bool remove_files) {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& pool : pools_) {
    if (pool.mapping && remove_files) pool.mapping->unlink_file();
    pool.mapping.reset();
    pool.allocator.reset();
  }
  if (remove_files && !index_path_.empty()) ::unlink(index_path_.c_str());
  records_.clear();
  slot_keys_.clear();
  blocks_keys_.clear();
}

std::vector<std::pair<std::string, uint64_t>> CacheStore::pool_files() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::pair<std::string, uint64_t>> out;
  for (const auto& pool : pools_) {
    if (pool.mapping) {
      out.emplace_back(pool.mapping->path(), pool.mapping->size());
    } else {
      out.emplace_back("", 0);
    }
  }
  return out;
}

PoolUsage CacheStore::usage(PoolKind pool) const {
  std::lock_guard<std::mutex> lock(mu_);
  const Pool& p = pools_[pool == PoolKind::kHost ? 1 : 0];
  if (!p.allocator) return {};
  return {p.allocator->capacity(), p.allocator->used()};
}

uint64_t CacheStore::pool_base(PoolKind pool) const {
  std::lock_guard<std::mutex> lock(mu_);
  const Pool& p = pools_[pool == PoolKind::kHost ? 1 : 0];
  return p.mapping ? reinterpret_cast<uint64_t>(p.mapping->data()) : 0;
}

std::shared_ptr<SharedMapping> CacheStore::mapping_of(int64_t id) const {
  std::lock_guard<std::mutex> lock(mu_);
  const Record* r = find_locked(id);
  if (r == nullptr || r->pool == PoolKind::kRegistered) return nullptr;
  return pools_[static_cast<int>(r->pool)].mapping;
}

// ---------------------------------------------------------------------------------------- records

CacheStore::Record* CacheStore::find_locked(int64_t id) {
  auto it = records_.find(id);
  return it == records_.end() ? nullptr : it->second.get();
}

const CacheStore::Record* CacheStore::find_locked(int64_t id) const {
  auto it = records_.find(id);
  return it == records_.end() ? nullptr : it->second.get();
}

Status CacheStore::allocate(PoolKind pool, bool blocks, uint32_t num_tensors, uint64_t tensor_bytes, uint64_t units,
                            const std::string& meta, CacheInfo* out) {
  std::lock_guard<std::mutex> lock(mu_);
  Pool& p = pools_[pool == PoolKind::kHost ? 1 : 0];
  if (!p.allocator) {
    return {Code::kParamInvalid, std::string(pool_name(pool)) + " memory pool is not configured"};
  }
  if (num_tensors == 0 || tensor_bytes == 0) return {Code::kParamInvalid, "cache has no bytes"};
  uint64_t stride = (tensor_bytes + kTensorAlign - 1) / kTensorAlign * kTensorAlign;
  if (stride > p.allocator->capacity() / num_tensors) {
    return {Code::kOutOfMemory, "cache of " + std::to_string(num_tensors) + " x " + std::to_string(tensor_bytes) +
                                    " bytes exceeds the " + pool_name(pool) + " pool"};
  }
  auto offset = p.allocator->allocate(stride * num_tensors);
  if (!offset) {
    return {Code::kOutOfMemory, std::string(pool_name(pool)) + " pool has no free range of " +
                                    std::to_string(stride * num_tensors) + " bytes (used " +
                                    std::to_string(p.allocator->used()) + " of " +
                                    std::to_string(p.allocator->capacity()) + ")"};
  }
  auto rec = std::make_unique<Record>();
  rec->id = next_id_++;
  rec->blocks = blocks;
  rec->num_tensors = num_tensors;
  rec->tensor_bytes = tensor_bytes;
  rec->units = units;
  rec->pool = pool;
  rec->region_offset = *offset;
  rec->stride = stride;
  rec->meta = meta;
  for (uint32_t t = 0; t < num_tensors; ++t) rec->addrs.push_back(p.mapping->data() + *offset + t * stride);
  *out = info_locked(*rec);
  records_.emplace(rec->id, std::move(rec));
  persist_locked();
  return Status::Ok();
}

Status CacheStore::register_memory(bool blocks, uint32_t num_tensors, uint64_t tensor_bytes, uint64_t units,
                                   const std::vector<uint64_t>& addrs, bool remote_accessible, const std::string& meta,
                                   CacheInfo* out) {
  std::lock_guard<std::mutex> lock(mu_);
  if (addrs.size() != num_tensors) {
    return {Code::kParamInvalid,
            "got " + std::to_string(addrs.size()) + " addresses for " + std::to_string(num_tensors) + " tensors"};
  }
  auto rec = std::make_unique<Record>();
  rec->id = next_id_++;
  rec->blocks = blocks;
  rec->num_tensors = num_tensors;
  rec->tensor_bytes = tensor_bytes;
  rec->units = units;
  rec->pool = PoolKind::kRegistered;
  rec->remote_accessible = remote_accessible;
  rec->meta = meta;
  for (uint64_t a : addrs) rec->addrs.push_back(reinterpret_cast<uint8_t*>(a));
  *out = info_locked(*rec);
  records_.emplace(rec->id, std::move(rec));
  return Status::Ok();
}

std::tuple<bool, uint64_t, uint64_t> CacheStore::key_of(const SlotKey& key) {
  if (key.prefix_id != kInvalidId) return {true, key.prefix_id, key.model_id};
  return {false, key.req_id, key.model_id};
}

Status CacheStore::bind_slot_key(int64_t id, uint64_t slot, const SlotKey& key, int64_t lease_ms) {
  std::lock_guard<std::mutex> lock(mu_);
  Record* r = find_locked(id);
  if (r == nullptr) return {Code::kKvCacheNotExist, "cache " + std::to_string(id) + " does not exist"};
  if (slot >= r->units) return {Code::kParamInvalid, "batch slot " + std::to_string(slot) + " out of range"};
  auto k = key_of(key);
  if (slot_keys_.count(k) != 0 || r->slot_keys.count(slot) != 0) {
    return {Code::kParamInvalid, "cache key (req_id=" + std::to_string(key.req_id) +
                                     ", model_id=" + std::to_string(key.model_id) + ") is already bound to a cache"};
  }
  slot_keys_[k] = {id, slot};
  r->slot_keys[slot] = {key, std::vector<bool>(r->num_tensors, false)};
  if (lease_ms > 0) r->leases[slot] = std::chrono::steady_clock::now() + std::chrono::milliseconds(lease_ms);
  persist_locked();
  return Status::Ok();
}

std::optional<std::chrono::steady_clock::time_point> CacheStore::next_lease() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::optional<std::chrono::steady_clock::time_point> next;
  for (const auto& [id, rec] : records_) {
    for (const auto& [slot, deadline] : rec->leases) {
      if (!next || deadline < *next) next = deadline;
    }
  }
  return next;
}

size_t CacheStore::expire_leases(std::chrono::steady_clock::time_point now) {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::tuple<bool, uint64_t, uint64_t>> expired;
  for (auto& [id, rec] : records_) {
    for (auto it = rec->leases.begin(); it != rec->leases.end();) {
      if (it->second <= now) {
        auto key = rec->slot_keys.find(it->first);
        if (key != rec->slot_keys.end()) expired.push_back(key_of(key->second.first));
        it = rec->leases.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (const auto& k : expired) release_key_locked(k);
  if (!expired.empty()) persist_locked();
  return expired.size();
}

Status CacheStore::bind_blocks_key(int64_t id, uint64_t model_id) {
  std::lock_guard<std::mutex> lock(mu_);
  Record* r = find_locked(id);
  if (r == nullptr) return {Code::kKvCacheNotExist, "cache " + std::to_string(id) + " does not exist"};
  if (blocks_keys_.count(model_id) != 0) {
    return {Code::kParamInvalid,
            "blocks cache key with model_id=" + std::to_string(model_id) + " is already bound to a cache"};
  }
  blocks_keys_[model_id] = id;
  r->blocks_model = model_id;
  persist_locked();
  return Status::Ok();
}

Status CacheStore::deallocate(int64_t id, bool expect_blocks) {
  std::lock_guard<std::mutex> lock(mu_);
  Record* r = find_locked(id);
  if (r == nullptr) return Status::Ok();
  if (r->blocks != expect_blocks) {
    return {Code::kParamInvalid, expect_blocks ? "cache is not a blocks cache, use deallocate_cache"
                                               : "cache is a blocks cache, use deallocate_blocks_cache"};
  }
  r->id_ref = false;
  if (r->blocks_model) {
    blocks_keys_.erase(*r->blocks_model);
    r->blocks_model.reset();
  }
  maybe_free_locked(id);
  persist_locked();
  return Status::Ok();
}

void CacheStore::release_key_locked(const std::tuple<bool, uint64_t, uint64_t>& key) {
  auto it = slot_keys_.find(key);
  if (it == slot_keys_.end()) return;
  auto [id, slot] = it->second;
  slot_keys_.erase(it);
  Record* r = find_locked(id);
  if (r != nullptr) {
    r->slot_keys.erase(slot);
    r->leases.erase(slot);
    maybe_free_locked(id);
  }
}

void CacheStore::remove_slot_key(const SlotKey& key) {
  std::lock_guard<std::mutex> lock(mu_);
  release_key_locked(key_of(key));
  persist_locked();
}

void CacheStore::remove_blocks_key(uint64_t model_id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = blocks_keys_.find(model_id);
  if (it == blocks_keys_.end()) return;
  Record* r = find_locked(it->second);
  if (r != nullptr) r->blocks_model.reset();
  blocks_keys_.erase(it);
  persist_locked();
}

void CacheStore::maybe_free_locked(int64_t id) {
  Record* r = find_locked(id);
  if (r == nullptr || r->id_ref || !r->slot_keys.empty() || r->pins > 0) return;
  if (r->pool != PoolKind::kRegistered) {
    Pool& p = pools_[static_cast<int>(r->pool)];
    if (p.allocator) p.allocator->release(r->region_offset);
  }
  if (r->blocks_model) blocks_keys_.erase(*r->blocks_model);
  records_.erase(id);
}

void CacheStore::unpin(int64_t id, bool release_key, const SlotKey& key, uint32_t start, uint32_t count) {
  std::lock_guard<std::mutex> lock(mu_);
  Record* r = find_locked(id);
  if (r == nullptr) return;
  r->pins -= 1;
  if (release_key) {
    auto k = key_of(key);
    auto it = slot_keys_.find(k);
    if (it != slot_keys_.end() && it->second.first == id) {
      auto& pulled = r->slot_keys[it->second.second].second;
      for (uint32_t t = start; t < start + count && t < pulled.size(); ++t) pulled[t] = true;
      bool all = true;
      for (bool b : pulled) all = all && b;
      if (all) release_key_locked(k);
      persist_locked();
    }
  }
  maybe_free_locked(id);
}

// ------------------------------------------------------------------------------------- resolution

Status segments_for(const CacheGeometry& r, const wire::Extent& e, std::vector<Segment>* segs) {
  if (e.tensor_count == 0) return {Code::kParamInvalid, "transfer names no tensor"};
  if (e.tensor_start >= r.num_tensors || e.tensor_count > r.num_tensors - e.tensor_start) {
    return {Code::kParamInvalid, "tensors [" + std::to_string(e.tensor_start) + ", " +
                                     std::to_string(e.tensor_start + e.tensor_count) + ") out of range: cache " +
                                     std::to_string(r.id) + " has " + std::to_string(r.num_tensors) + " tensors"};
  }
  const uint64_t unit = r.unit_bytes();
  segs->clear();
  if (e.unit == wire::Unit::kSlot) {
    if (r.blocks) return {Code::kParamInvalid, "cache " + std::to_string(r.id) + " is a blocks cache"};
    if (e.slot >= r.units) {
      return {Code::kParamInvalid, "batch index " + std::to_string(e.slot) + " out of range: cache " +
                                       std::to_string(r.id) + " has batch size " + std::to_string(r.units)};
    }
    if (e.offset >= unit) return {Code::kParamInvalid, "offset " + std::to_string(e.offset) + " out of range"};
    uint64_t len = e.length == wire::kWholeSlot ? unit - e.offset : e.length;
    if (len == 0 || len > unit - e.offset) {
      return {Code::kParamInvalid,
              "size " + std::to_string(len) + " exceeds the batch slot of " + std::to_string(unit) + " bytes"};
    }
    for (uint32_t t = e.tensor_start; t < e.tensor_start + e.tensor_count; ++t) {
      append_segment(segs, r.addrs[t] + e.slot * unit + e.offset, len);
    }
    return Status::Ok();
  }
  if (!r.blocks) return {Code::kParamInvalid, "cache " + std::to_string(r.id) + " is not a blocks cache"};
  if (e.blocks.empty()) return {Code::kParamInvalid, "block list is empty"};
  if (e.block_bytes != 0 && e.block_bytes != unit) {
    return {Code::kParamInvalid, "block size mismatch: " + std::to_string(e.block_bytes) + " bytes requested, cache " +
                                     std::to_string(r.id) + " has " + std::to_string(unit) + " bytes per block"};
  }
  for (uint64_t b : e.blocks) {
    if (b >= r.units) {
      return {Code::kParamInvalid, "block index " + std::to_string(b) + " out of range: cache " + std::to_string(r.id) +
                                       " has " + std::to_string(r.units) + " blocks"};
    }
  }
  segs->reserve(static_cast<size_t>(e.tensor_count) * e.blocks.size());
  for (uint32_t t = e.tensor_start; t < e.tensor_start + e.tensor_count; ++t) {
    for (uint64_t b : e.blocks) append_segment(segs, r.addrs[t] + b * unit, unit);
  }
  return Status::Ok();
}

CacheGeometry CacheStore::geometry_of(const Record& r) {
  CacheGeometry g;
  g.id = r.id;
  g.blocks = r.blocks;
  g.num_tensors = r.num_tensors;
  g.tensor_bytes = r.tensor_bytes;
  g.units = r.units;
  g.addrs = r.addrs;
  return g;
}

Status CacheStore::acquire(const wire::CacheRef& ref, const wire::Extent& extent, bool for_peer,
                           std::vector<Segment>* segs, Pin* pin, SlotKey* resolved_key, SharedLayout* layout) {
  std::lock_guard<std::mutex> lock(mu_);
  if (ref.kind == wire::RefKind::kAddress) {
    if (layout != nullptr) layout->pool = -1;  // raw-address transfers always go over the socket
    return acquire_address_locked(ref.a, extent, segs, pin);
  }
  wire::Extent e = extent;
  int64_t id = 0;
  switch (ref.kind) {
    case wire::RefKind::kAddress:
      break;
    case wire::RefKind::kSlotKey: {
      SlotKey key{ref.a, ref.b, ref.c};
      auto it = slot_keys_.find(key_of(key));
      if (it == slot_keys_.end()) {
        return {Code::kKvCacheNotExist, key.prefix_id != kInvalidId
                                            ? "no cache holds prefix_id=" + std::to_string(key.prefix_id) +
                                                  ", model_id=" + std::to_string(key.model_id)
                                            : "no cache holds req_id=" + std::to_string(key.req_id) +
                                                  ", model_id=" + std::to_string(key.model_id)};
      }
      id = it->second.first;
      if (e.unit == wire::Unit::kSlot) e.slot = it->second.second;
      if (resolved_key != nullptr) *resolved_key = key;
      break;
    }
    case wire::RefKind::kIdAndIndex:
      id = static_cast<int64_t>(ref.a);
      if (e.unit == wire::Unit::kSlot) e.slot = ref.b;
      break;
    case wire::RefKind::kBlocksKey: {
      auto it = blocks_keys_.find(ref.b);
      if (it == blocks_keys_.end()) {
        return {Code::kKvCacheNotExist, "no blocks cache holds model_id=" + std::to_string(ref.b)};
      }
      id = it->second;
      break;
    }
  }
  Record* r = find_locked(id);
  if (r == nullptr || (for_peer && !r->id_ref && r->slot_keys.empty())) {
    return {Code::kKvCacheNotExist, "cache " + std::to_string(id) + " does not exist"};
  }
  if (for_peer && !r->remote_accessible) {
    return {Code::kKvCacheNotExist, "cache " + std::to_string(id) + " is not remote accessible"};
  }
  CacheGeometry geometry = geometry_of(*r);
  CL_RETURN_IF_ERROR(segments_for(geometry, e, segs));
  if (layout != nullptr) {
    layout->extent = e;
    layout->pool = -1;
    if (r->pool != PoolKind::kRegistered && pools_[static_cast<int>(r->pool)].mapping) {
      uint8_t* base = pools_[static_cast<int>(r->pool)].mapping->data();
      layout->pool = static_cast<int32_t>(r->pool);
      for (auto& a : geometry.addrs) a = reinterpret_cast<uint8_t*>(a - base);  // pool-relative offsets
    }
    layout->geometry = std::move(geometry);
  }
  r->pins += 1;
  *pin = Pin(this, id, r->pool == PoolKind::kRegistered ? nullptr : pools_[static_cast<int>(r->pool)].mapping);
  return Status::Ok();
}

Status CacheStore::acquire_address_locked(uint64_t address, const wire::Extent& e, std::vector<Segment>* segs,
                                          Pin* pin) {
  // Find the live, peer-visible tensor that contains the address.
  const auto* addr = reinterpret_cast<const uint8_t*>(address);
  for (auto& [id, rec] : records_) {
    Record& r = *rec;
    if (!r.remote_accessible || (!r.id_ref && r.slot_keys.empty())) continue;
    for (uint8_t* base : r.addrs) {
      if (addr < base || addr >= base + r.tensor_bytes) continue;
      const uint64_t room = r.tensor_bytes - static_cast<uint64_t>(addr - base);
      segs->clear();
      if (e.unit == wire::Unit::kSlot) {
        if (e.length == 0 || e.length == wire::kWholeSlot || e.length > room) {
          return {Code::kParamInvalid, std::to_string(e.length) + " bytes at address " + std::to_string(address) +
                                           " exceed tensor of cache " + std::to_string(id)};
        }
        segs->push_back({base + (addr - base), e.length});
      } else {
        if (e.block_bytes == 0 || e.blocks.empty()) return {Code::kParamInvalid, "block list or size missing"};
        for (uint64_t b : e.blocks) {
          if (b >= room / e.block_bytes) {
            return {Code::kParamInvalid, "block " + std::to_string(b) + " of " + std::to_string(e.block_bytes) +
                                             " bytes lies outside the tensor at address " + std::to_string(address)};
          }
          append_segment(segs, base + (addr - base) + b * e.block_bytes, e.block_bytes);
        }
      }
      r.pins += 1;
      *pin = Pin(this, id, r.pool == PoolKind::kRegistered ? nullptr : pools_[static_cast<int>(r.pool)].mapping);
      return Status::Ok();
    }
  }
  return {Code::kKvCacheNotExist, "no remote-accessible cache holds address " + std::to_string(address)};
}

Status CacheStore::acquire_local(int64_t id, const wire::Extent& extent, std::vector<Segment>* segs, Pin* pin) {
  std::lock_guard<std::mutex> lock(mu_);
  Record* r = find_locked(id);
  if (r == nullptr || (!r->id_ref && r->slot_keys.empty())) {
    return {Code::kParamInvalid, "cache " + std::to_string(id) + " was deallocated or never allocated"};
  }
  CL_RETURN_IF_ERROR(segments_for(geometry_of(*r), extent, segs));
  r->pins += 1;
  *pin = Pin(this, id, r->pool == PoolKind::kRegistered ? nullptr : pools_[static_cast<int>(r->pool)].mapping);
  return Status::Ok();
}

// ------------------------------------------------------------------------------------ inspection

CacheInfo CacheStore::info_locked(const Record& r) const {
  CacheInfo info;
  info.id = r.id;
  info.blocks = r.blocks;
  info.num_tensors = r.num_tensors;
  info.tensor_bytes = r.tensor_bytes;
  info.units = r.units;
  info.pool = static_cast<int32_t>(r.pool);
  info.remote_accessible = r.remote_accessible;
  info.meta = r.meta;
  for (uint8_t* a : r.addrs) info.addrs.push_back(reinterpret_cast<uint64_t>(a));
  for (const auto& [slot, entry] : r.slot_keys) {
    info.slot_keys.emplace_back(slot, entry.first.req_id, entry.first.model_id, entry.first.prefix_id);
  }
  info.blocks_model_id = r.blocks_model;
  return info;
}

std::vector<CacheInfo> CacheStore::list() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<CacheInfo> out;
  for (const auto& [id, rec] : records_) {
    if (rec->id_ref) out.push_back(info_locked(*rec));
  }
  return out;
}

std::optional<CacheInfo> CacheStore::find(int64_t id) const {
  std::lock_guard<std::mutex> lock(mu_);
  const Record* r = find_locked(id);
  if (r == nullptr) return std::nullopt;
  return info_locked(*r);
}

// ----------------------------------------------------------------------------------- persistence

void CacheStore::persist_locked() const {
  if (index_path_.empty()) return;
  wire::Writer w;
  w.u32(kIndexVersion);
  w.u64(static_cast<uint64_t>(next_id_));
  uint32_t count = 0;
  for (const auto& [id, rec] : records_) count += rec->pool == PoolKind::kRegistered ? 0 : 1;
  w.u32(count);
  for (const auto& [id, rec] : records_) {
    const Record& r = *rec;
    if (r.pool == PoolKind::kRegistered) continue;  // caller memory dies with its process
    w.u64(static_cast<uint64_t>(r.id));
    w.u8(r.blocks ? 1 : 0);
    w.u32(r.num_tensors);
    w.u64(r.tensor_bytes);
    w.u64(r.units);
    w.u32(static_cast<uint32_t>(r.pool));
    w.u64(r.region_offset);
    w.u64(r.stride);
    w.u8(r.id_ref ? 1 : 0);
    w.str(r.meta);
    w.u32(static_cast<uint32_t>(r.slot_keys.size()));
    for (const auto& [slot, entry] : r.slot_keys) {
      w.u64(slot);
      w.u64(entry.first.req_id);
      w.u64(entry.first.model_id);
      w.u64(entry.first.prefix_id);
      std::vector<uint64_t> pulled(entry.second.begin(), entry.second.end());
      w.u64s(pulled);
    }
    w.u8(r.blocks_model ? 1 : 0);
    w.u64(r.blocks_model.value_or(0));
  }
  // Best effort: a failed index write only loses adoption of caches created since the last good write.
  (void)write_file_atomically(index_path_, w.bytes());
}

Status CacheStore::restore_locked(const std::vector<uint8_t>& bytes) {
  wire::Reader rd(bytes);
  if (rd.u32() != kIndexVersion) return {Code::kParamInvalid, "cache index " + index_path_ + " has an unknown version"};
  next_id_ = static_cast<int64_t>(rd.u64());
  uint32_t count = rd.u32();
  for (uint32_t i = 0; i < count && rd.ok(); ++i) {
    auto rec = std::make_unique<Record>();
    rec->id = static_cast<int64_t>(rd.u64());
    rec->blocks = rd.u8() != 0;
    rec->num_tensors = rd.u32();
    rec->tensor_bytes = rd.u64();
    rec->units = rd.u64();
    rec->pool = static_cast<PoolKind>(static_cast<int32_t>(rd.u32()));
    rec->region_offset = rd.u64();
    rec->stride = rd.u64();
    rec->id_ref = rd.u8() != 0;
    rec->meta = rd.str();
    uint32_t keys = rd.u32();
    for (uint32_t k = 0; k < keys && rd.ok(); ++k) {
      uint64_t slot = rd.u64();
      SlotKey key{};
      key.req_id = rd.u64();
      key.model_id = rd.u64();
      key.prefix_id = rd.u64();
      std::vector<uint64_t> pulled = rd.u64s();
      rec->slot_keys[slot] = {key, std::vector<bool>(pulled.begin(), pulled.end())};
      slot_keys_[key_of(key)] = {rec->id, slot};
    }
    bool has_blocks_key = rd.u8() != 0;
    uint64_t model = rd.u64();
    if (!rd.ok()) break;
    int pool_index = static_cast<int>(rec->pool);
    if (pool_index < 0 || pool_index > 1 || !pools_[pool_index].allocator ||
        !pools_[pool_index].allocator->reserve(rec->region_offset, rec->stride * rec->num_tensors)) {
      return {Code::kParamInvalid, "cache index " + index_path_ + " does not match its pool"};
    }
    if (has_blocks_key) {
      rec->blocks_model = model;
      blocks_keys_[model] = rec->id;
    }
    for (uint32_t t = 0; t < rec->num_tensors; ++t) {
      rec->addrs.push_back(pools_[pool_index].mapping->data() + rec->region_offset + t * rec->stride);
    }
    records_.emplace(rec->id, std::move(rec));
  }
  return rd.finish("cache index");
}

}  // namespace cachelink

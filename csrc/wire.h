// The versioned, length-checked wire format of CacheLink links.
//
// Every message is a 16-byte header (magic, version, type, payload length) followed by a payload
// encoded with Writer/Reader. Bulk data never goes through a payload: it follows a READ response or a
// WRITE request as raw bytes whose length was announced and validated before. A Reader never reads
// past its buffer: a malformed or hostile frame yields an error status, never a wild access.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "status.h"

namespace cachelink::wire {

constexpr uint32_t kMagic = 0x4B4E4C43;  // "CLNK" little-endian
constexpr uint16_t kVersion = 1;
constexpr uint32_t kHeaderSize = 16;
constexpr uint32_t kMaxPayload = 16u << 20;  // control payloads only; bulk data is streamed separately
constexpr uint32_t kMaxListItems = 1u << 22;

enum class Type : uint16_t {
  kHello = 1,
  kHelloAck = 2,
  kRead = 3,
  kReadResp = 4,
  kWrite = 5,
  kWriteResp = 6,
  kResolve = 7,
  kResolveResp = 8,
  kRelease = 9,
  kGoodbye = 10,
  kAuth = 11,
  kAuthResult = 12,  // a refusal of AUTH, always in clear
  kSession = 13,     // protocol 2: the server's half of the authenticated handshake
};

struct Header {
  uint32_t magic = kMagic;
  uint16_t version = kVersion;
  uint16_t type = 0;
  uint64_t payload_len = 0;
};

void encode_header(const Header& h, uint8_t out[kHeaderSize]);
/// Validates magic, version, type range and payload length.
Status decode_header(const uint8_t in[kHeaderSize], Header* out);

/// Appends little-endian values to a byte buffer.
class Writer {
 public:
  void u8(uint8_t v) { buf_.push_back(v); }
  void u16(uint16_t v) { raw(&v, sizeof(v)); }
  void u32(uint32_t v) { raw(&v, sizeof(v)); }
  void u64(uint64_t v) { raw(&v, sizeof(v)); }
  void str(const std::string& s) {
    u32(static_cast<uint32_t>(s.size()));
    raw(s.data(), s.size());
  }
  void u64s(const std::vector<uint64_t>& v) {
    u32(static_cast<uint32_t>(v.size()));
    raw(v.data(), v.size() * sizeof(uint64_t));
  }
  const std::vector<uint8_t>& bytes() const { return buf_; }
  std::vector<uint8_t> take() { return std::move(buf_); }

 private:
  void raw(const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    buf_.insert(buf_.end(), b, b + n);
  }
  std::vector<uint8_t> buf_;
};

/// Reads little-endian values; any overrun sets a sticky error and yields zeros.
class Reader {
 public:
  Reader(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  explicit Reader(const std::vector<uint8_t>& v) : Reader(v.data(), v.size()) {}
  uint8_t u8() { return get<uint8_t>(); }
  uint16_t u16() { return get<uint16_t>(); }
  uint32_t u32() { return get<uint32_t>(); }
  uint64_t u64() { return get<uint64_t>(); }
  std::string str();
  std::vector<uint64_t> u64s();
  bool ok() const { return ok_; }
  bool at_end() const { return pos_ == size_; }
  /// Ok only if everything was read without overrun and nothing is left over.
  Status finish(const char* what) const;

 private:
  template <typename T>
  T get() {
    T v{};
    if (!ok_ || size_ - pos_ < sizeof(T)) {
      ok_ = false;
      return v;
    }
    std::memcpy(&v, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
  bool ok_ = true;
};

/// Which peer cache a transfer names.
enum class RefKind : uint8_t {
  kSlotKey = 1,     // CacheKey: (req_id | prefix_id, model_id) -> (cache, batch slot)
  kIdAndIndex = 2,  // CacheKeyByIdAndIndex: (cache_id, batch_index)
  kBlocksKey = 3,   // BlocksCacheKey: model_id -> blocks cache
  kAddress = 4,     // a raw tensor address in the peer's process (TransferConfig.dst_addrs)
};

struct CacheRef {
  RefKind kind = RefKind::kSlotKey;
  uint64_t a = 0;  // req_id | cache_id | (unused)
  uint64_t b = 0;  // model_id | batch_index | model_id
  uint64_t c = 0;  // prefix_id | - | -
};

/// How a transfer addresses bytes inside a cache's tensors.
enum class Unit : uint8_t { kSlot = 0, kBlocks = 1 };

/// One side of a transfer, as the peer that owns the cache resolves it.
struct Extent {
  uint32_t tensor_start = 0;
  uint32_t tensor_count = 0;
  Unit unit = Unit::kSlot;
  uint64_t slot = 0;         // kSlot: batch slot (ignored for refs that carry their own slot)
  uint64_t offset = 0;       // kSlot: byte offset inside the slot
  uint64_t length = 0;       // kSlot: bytes; kWholeSlot = the rest of the slot
  uint64_t block_bytes = 0;  // kBlocks: expected bytes per block (must match the cache's)
  std::vector<uint64_t> blocks;
};
constexpr uint64_t kWholeSlot = ~uint64_t{0};

enum RequestFlags : uint8_t {
  kFlagReleaseKey = 1,  // a successful pull by CacheKey releases that key's reference
  kFlagAllowShort = 2,  // the source may be shorter than expected_total (slot scattered into blocks)
  kFlagChecksum = 4,    // a checksum of the bulk bytes follows them
};

struct TransferRequest {
  CacheRef ref;
  Extent extent;
  uint64_t expected_total = 0;
  uint8_t flags = 0;
};

void encode(Writer& w, const TransferRequest& r);
Status decode(Reader& r, TransferRequest* out);

}  // namespace cachelink::wire

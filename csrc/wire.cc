#include "wire.h"

namespace cachelink::wire {

void encode_header(const Header& h, uint8_t out[kHeaderSize]) {
  std::memcpy(out, &h.magic, 4);
  std::memcpy(out + 4, &h.version, 2);
  std::memcpy(out + 6, &h.type, 2);
  std::memcpy(out + 8, &h.payload_len, 8);
}

Status decode_header(const uint8_t in[kHeaderSize], Header* out) {
  std::memcpy(&out->magic, in, 4);
  std::memcpy(&out->version, in + 4, 2);
  std::memcpy(&out->type, in + 6, 2);
  std::memcpy(&out->payload_len, in + 8, 8);
  if (out->magic != kMagic) return {Code::kFailed, "bad frame: wrong magic (not a CacheLink peer)"};
  if (out->version != kVersion) {
    return {Code::kFailed, "bad frame: wire version " + std::to_string(out->version) + ", this engine speaks " +
                               std::to_string(kVersion)};
  }
  if (out->type < static_cast<uint16_t>(Type::kHello) || out->type > static_cast<uint16_t>(Type::kSession)) {
    return {Code::kFailed, "bad frame: unknown type " + std::to_string(out->type)};
  }
  if (out->payload_len > kMaxPayload) {
    return {Code::kFailed, "bad frame: payload of " + std::to_string(out->payload_len) + " bytes exceeds the limit"};
  }
  return Status::Ok();
}

std::string Reader::str() {
  uint32_t n = u32();
  if (!ok_ || size_ - pos_ < n) {
    ok_ = false;
    return {};
  }
  std::string s(reinterpret_cast<const char*>(data_ + pos_), n);
  pos_ += n;
  return s;
}

std::vector<uint64_t> Reader::u64s() {
  uint32_t n = u32();
  if (!ok_ || n > kMaxListItems || (size_ - pos_) / sizeof(uint64_t) < n) {
    ok_ = false;
    return {};
  }
  std::vector<uint64_t> v(n);
  if (n > 0) std::memcpy(v.data(), data_ + pos_, n * sizeof(uint64_t));  // an empty vector has no buffer
  pos_ += n * sizeof(uint64_t);
  return v;
}

Status Reader::finish(const char* what) const {
  if (!ok_) return {Code::kFailed, std::string("bad frame: truncated ") + what};
  if (!at_end()) return {Code::kFailed, std::string("bad frame: trailing bytes after ") + what};
  return Status::Ok();
}

void encode(Writer& w, const TransferRequest& r) {
  w.u8(static_cast<uint8_t>(r.ref.kind));
  w.u64(r.ref.a);
  w.u64(r.ref.b);
  w.u64(r.ref.c);
  w.u32(r.extent.tensor_start);
  w.u32(r.extent.tensor_count);
  w.u8(static_cast<uint8_t>(r.extent.unit));
  w.u64(r.extent.slot);
  w.u64(r.extent.offset);
  w.u64(r.extent.length);
  w.u64(r.extent.block_bytes);
  w.u64s(r.extent.blocks);
  w.u64(r.expected_total);
  w.u8(r.flags);
}

Status decode(Reader& r, TransferRequest* out) {
  uint8_t kind = r.u8();
  out->ref.a = r.u64();
  out->ref.b = r.u64();
  out->ref.c = r.u64();
  out->extent.tensor_start = r.u32();
  out->extent.tensor_count = r.u32();
  uint8_t unit = r.u8();
  out->extent.slot = r.u64();
  out->extent.offset = r.u64();
  out->extent.length = r.u64();
  out->extent.block_bytes = r.u64();
  out->extent.blocks = r.u64s();
  out->expected_total = r.u64();
  out->flags = r.u8();
  if (!r.ok()) return {Code::kFailed, "bad frame: truncated transfer request"};
  if (kind < 1 || kind > 4) return {Code::kFailed, "bad frame: unknown cache reference kind"};
  if (unit > 1) return {Code::kFailed, "bad frame: unknown transfer unit"};
  out->ref.kind = static_cast<RefKind>(kind);
  out->extent.unit = static_cast<Unit>(unit);
  return Status::Ok();
}

}  // namespace cachelink::wire

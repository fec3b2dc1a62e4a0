#include <sys/uio.h>

#include <algorithm>
#include <array>
#include <cstring>

#include "checksum.h"
#include "engine_internal.h"

namespace cachelink {

uint64_t total_bytes(const std::vector<Segment>& segs) {
  uint64_t total = 0;
  for (const Segment& s : segs) total += s.len;
  return total;
}

namespace {

constexpr uint64_t kPayloadStep = 64u << 10;  // a control payload grows by this much as its bytes arrive
constexpr uint64_t kSendBatch = 1u << 20;     // bulk bytes sealed per send call (a multiple of the record size)

IoResult tampered(const char* what) {
  return {IoError::kTampered,
          std::string(what) + " failed authentication: changed, replayed, reordered or injected on the way"};
}

/// The iovecs of `segs` between byte `from` and `from + len` of their concatenation.
std::vector<iovec> slice(const std::vector<Segment>& segs, uint64_t from, uint64_t len) {
  std::vector<iovec> out;
  for (const Segment& s : segs) {
    if (len == 0) break;
    if (from >= s.len) {
      from -= s.len;
      continue;
    }
    uint64_t n = std::min(len, s.len - from);
    out.push_back({s.addr + from, n});
    len -= n;
    from = 0;
  }
  return out;
}

/// Zeroes the bytes of a record received in place that did not authenticate (or was cut short).
void wipe(const std::vector<iovec>& record) {
  for (const iovec& v : record) std::memset(v.iov_base, 0, v.iov_len);
}

/// Receives and checks `total` sealed bulk bytes that have no destination (a refused write), record by record
/// through a scratch buffer.
IoResult discard_sealed(int fd, channel::Channel& ch, uint64_t total, Deadline deadline) {
  constexpr uint64_t kStride = channel::kRecordBytes + channel::kTagBytes;
  thread_local std::vector<uint8_t> scratch;
  if (scratch.size() < kStride) scratch.resize(kStride);
  for (uint64_t at = 0; at < total; at += channel::kRecordBytes) {
    const uint64_t n = std::min(channel::kRecordBytes, total - at);
    IoResult io = recv_all(fd, scratch.data(), n + channel::kTagBytes, deadline);
    if (!io.ok()) return io;
    if (!ch.recv.open(nullptr, 0, scratch.data(), n, scratch.data() + n)) return tampered("transferred data");
  }
  return {};
}

/// Sends `iov` (the control part), then the authenticated bulk bytes record by record, each followed by its
/// tag. A record is handed to the kernel first and hashed after, while the kernel's copy has left it in the
/// CPU's cache: the hash reads cached bytes instead of making a second pass over pool memory. Its tag goes out
/// with the next record. The bytes on the wire are the same as sealing first; a record changed in the pool
/// while it is sent fails at the receiver, as before.
IoResult send_authenticated(int fd, channel::Channel& ch, std::vector<iovec> iov, const std::vector<Segment>& data,
                            uint64_t total, Deadline deadline) {
  uint8_t tag[channel::kTagBytes];
  for (uint64_t at = 0; at < total;) {
    const uint64_t n = std::min(channel::kRecordBytes, total - at);
    std::vector<iovec> piece = slice(data, at, n);
    iov.insert(iov.end(), piece.begin(), piece.end());
    IoResult io = sendv_all(fd, std::move(iov), deadline);
    if (!io.ok()) return io;
    if (!ch.send.seal(nullptr, 0, piece, nullptr, tag).ok()) return {IoError::kClosed, "cannot seal"};
    iov = {{tag, sizeof(tag)}};
    at += n;
  }
  return sendv_all(fd, std::move(iov), deadline);
}

}  // namespace

IoResult send_frame(int fd, channel::Channel& ch, wire::Type type, const std::vector<uint8_t>& payload,
                    const std::vector<Segment>& data, Deadline deadline) {
  wire::Header h;
  h.type = static_cast<uint16_t>(type);
  h.payload_len = payload.size();
  uint8_t head[wire::kHeaderSize];
  wire::encode_header(h, head);
  const channel::Mode mode = ch.mode();
  if (mode == channel::Mode::kNone) {
    std::vector<iovec> iov;
    iov.reserve(2 + data.size());
    iov.push_back({head, sizeof(head)});
    iov.push_back({const_cast<uint8_t*>(payload.data()), payload.size()});
    for (const Segment& s : data) iov.push_back({s.addr, s.len});
    return sendv_all(fd, std::move(iov), deadline);
  }
  // The control part: header (authenticated, in clear), payload (authenticated or encrypted), tag.
  const uint64_t total = total_bytes(data);
  const bool encrypt = mode == channel::Mode::kAead;
  std::vector<uint8_t> sealed(encrypt ? payload.size() : 0);
  uint8_t tag[channel::kTagBytes];
  std::vector<iovec> in{{const_cast<uint8_t*>(payload.data()), payload.size()}};
  if (!ch.send.seal(head, sizeof(head), in, sealed.data(), tag).ok()) return {IoError::kClosed, "cannot seal a frame"};
  std::vector<iovec> iov{{head, sizeof(head)},
                         {encrypt ? sealed.data() : const_cast<uint8_t*>(payload.data()), payload.size()},
                         {tag, sizeof(tag)}};
  if (!encrypt) return send_authenticated(fd, ch, std::move(iov), data, total, deadline);
  // Then the encrypted bulk bytes, record by record, sealed into a bounce buffer of one batch and sent a batch
  // at a time so that the receiver checks one batch while this end seals the next.
  const uint64_t batch_records = kSendBatch / channel::kRecordBytes;
  std::vector<uint8_t> bounce(std::min(total, kSendBatch));
  std::vector<std::array<uint8_t, channel::kTagBytes>> tags(batch_records);
  uint64_t at = 0;
  while (at < total) {
    for (uint64_t i = 0; i < batch_records && at < total; ++i) {
      const uint64_t n = std::min(channel::kRecordBytes, total - at);
      uint8_t* out = bounce.data() + i * channel::kRecordBytes;
      if (!ch.send.seal(nullptr, 0, slice(data, at, n), out, tags[i].data()).ok()) {
        return {IoError::kClosed, "cannot seal"};
      }
      iov.push_back({out, n});
      iov.push_back({tags[i].data(), channel::kTagBytes});
      at += n;
    }
    IoResult io = sendv_all(fd, std::move(iov), deadline);
    if (!io.ok()) return io;
    iov.clear();
  }
  return iov.empty() ? IoResult{} : sendv_all(fd, std::move(iov), deadline);
}

IoResult recv_frame(int fd, channel::Channel& ch, uint64_t max_payload, Deadline deadline, wire::Header* header,
                    std::vector<uint8_t>* payload, Status* st, bool refusal_in_clear) {
  uint8_t head[wire::kHeaderSize];
  IoResult io = recv_all(fd, head, sizeof(head), deadline);
  if (!io.ok()) return io;
  *st = wire::decode_header(head, header);
  if (!st->ok()) return {};
  if (header->payload_len > max_payload) {
    *st = {Code::kFailed, "bad frame: payload of " + std::to_string(header->payload_len) + " bytes exceeds the " +
                              std::to_string(max_payload) + "-byte limit here"};
    return {};
  }
  // Grown as the bytes arrive: an announced length reserves nothing until the peer has sent that much.
  payload->clear();
  while (payload->size() < header->payload_len) {
    const size_t have = payload->size();
    const size_t next = static_cast<size_t>(std::min<uint64_t>(header->payload_len, have + kPayloadStep));
    payload->resize(next);
    io = recv_all(fd, payload->data() + have, next - have, deadline);
    if (!io.ok()) return io;
  }
  if (ch.mode() == channel::Mode::kNone) return {};
  if (refusal_in_clear && header->type == static_cast<uint16_t>(wire::Type::kAuthResult)) return {};
  uint8_t tag[channel::kTagBytes];
  io = recv_all(fd, tag, sizeof(tag), deadline);
  if (!io.ok()) return io;
  if (!ch.recv.open(head, sizeof(head), payload->data(), payload->size(), tag)) return tampered("a frame");
  return {};
}

IoResult recv_bulk(int fd, channel::Channel& ch, const std::vector<Segment>& segs, uint64_t total, Deadline deadline) {
  if (ch.mode() == channel::Mode::kNone) {
    std::vector<iovec> iov = slice(segs, 0, total);
    return recvv_all(fd, std::move(iov), deadline);
  }
  if (segs.empty()) return discard_sealed(fd, ch, total, deadline);
  // Each record lands where it belongs, with its tag, in one receive call, and is then opened where it lies:
  // checked (kMac) or checked and decrypted (kAead) while the kernel's copy has left it in the CPU's cache (a
  // record of 256 KiB still is; a batch of four was not). No bounce buffer and no copy. A record that fails to open,
  // or is cut short by a transport error, is wiped (zeroed) before the error returns, so no byte that did not
  // authenticate stays in the destination; no record after it is received.
  uint8_t tag[channel::kTagBytes];
  for (uint64_t at = 0; at < total;) {
    const uint64_t n = std::min(channel::kRecordBytes, total - at);
    std::vector<iovec> record = slice(segs, at, n);
    std::vector<iovec> iov = record;
    iov.push_back({tag, sizeof(tag)});
    IoResult io = recvv_all(fd, std::move(iov), deadline);
    if (!io.ok()) {
      wipe(record);
      return io;
    }
    if (!ch.recv.open(nullptr, 0, record, tag)) {
      wipe(record);
      return tampered("transferred data");
    }
    at += n;
  }
  return {};
}

IoResult discard_bulk(int fd, channel::Channel& ch, uint64_t total, Deadline deadline) {
  if (ch.mode() == channel::Mode::kNone) return discard(fd, total, deadline);
  return recv_bulk(fd, ch, {}, total, deadline);
}

std::vector<Segment> with_trailer(const std::vector<Segment>& segs, uint64_t total, uint32_t* trailer) {
  std::vector<Segment> out;
  for (const iovec& v : slice(segs, 0, total)) out.push_back({static_cast<uint8_t*>(v.iov_base), v.iov_len});
  out.push_back({reinterpret_cast<uint8_t*>(trailer), sizeof(*trailer)});
  return out;
}

uint32_t crc_of(const std::vector<Segment>& segs, uint64_t total) {
  Crc32c crc;
  crc.update(segs, total);
  return crc.value();
}

std::vector<uint8_t> status_payload(const Status& st) {
  wire::Writer w;
  w.u32(static_cast<uint32_t>(st.code()));
  w.str(st.message());
  return w.take();
}

Status read_status(wire::Reader& r) {
  auto code = static_cast<Code>(r.u32());
  std::string message = r.str();
  return {code, message};
}

}  // namespace cachelink

#include <sys/uio.h>

#include <algorithm>

#include "checksum.h"
#include "engine_internal.h"

namespace cachelink {

uint64_t total_bytes(const std::vector<Segment>& segs) {
  uint64_t total = 0;
  for (const Segment& s : segs) total += s.len;
  return total;
}

IoResult send_frame(int fd, wire::Type type, const std::vector<uint8_t>& payload, const std::vector<Segment>& data,
                    Deadline deadline) {
  wire::Header h;
  h.type = static_cast<uint16_t>(type);
  h.payload_len = payload.size();
  uint8_t head[wire::kHeaderSize];
  wire::encode_header(h, head);
  std::vector<iovec> iov;
  iov.reserve(2 + data.size());
  iov.push_back({head, sizeof(head)});
  iov.push_back({const_cast<uint8_t*>(payload.data()), payload.size()});
  for (const Segment& s : data) iov.push_back({s.addr, s.len});
  return sendv_all(fd, std::move(iov), deadline);
}

/// Receives one frame; `st` carries a protocol error (bad header), the IoResult a transport error.
IoResult recv_frame(int fd, Deadline deadline, wire::Header* header, std::vector<uint8_t>* payload, Status* st) {
  uint8_t head[wire::kHeaderSize];
  IoResult io = recv_all(fd, head, sizeof(head), deadline);
  if (!io.ok()) return io;
  *st = wire::decode_header(head, header);
  if (!st->ok()) return {};
  payload->resize(header->payload_len);
  return recv_all(fd, payload->data(), payload->size(), deadline);
}

/// Receives `total` bytes of a stream into consecutive segments (scatter reads, many segments a call).
IoResult recv_into(int fd, const std::vector<Segment>& segs, uint64_t total, Deadline deadline) {
  std::vector<iovec> iov;
  iov.reserve(segs.size());
  for (const Segment& s : segs) {
    if (total == 0) break;
    uint64_t n = std::min(total, s.len);
    iov.push_back({s.addr, n});
    total -= n;
  }
  return recvv_all(fd, std::move(iov), deadline);
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

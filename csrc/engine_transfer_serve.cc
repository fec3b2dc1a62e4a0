#include "engine_internal.h"

namespace cachelink {
namespace {

constexpr size_t kMaxPinsPerConnection = 1024;  // a peer that never releases cannot pin memory forever

}  // namespace

// ------------------------------------------------------------------------------- serving transfers

Status Engine::handle_read(ServerConn* conn, const std::vector<uint8_t>& payload) {
  wire::Reader r(payload);
  wire::TransferRequest req;
  CL_RETURN_IF_ERROR(wire::decode(r, &req));
  CL_RETURN_IF_ERROR(r.finish("read request"));
  std::vector<Segment> segs;
  Pin pin;
  SlotKey key;
  Status st = store_.acquire(req.ref, req.extent, true, &segs, &pin, &key);
  uint64_t total = st.ok() ? total_bytes(segs) : 0;
  if (st.ok() && total != req.expected_total &&
      !((req.flags & wire::kFlagAllowShort) != 0 && total <= req.expected_total)) {
    st = {Code::kParamInvalid, "size mismatch: the source holds " + std::to_string(total) +
                                   " bytes, the destination expects " + std::to_string(req.expected_total)};
  }
  wire::Writer w;
  w.u32(static_cast<uint32_t>(st.code()));
  w.str(st.message());
  w.u64(st.ok() ? total : 0);
  Deadline deadline = deadline_in_ms(config_.sync_timeout_ms * 10 + 30000);
  std::vector<Segment> outgoing = st.ok() ? segs : std::vector<Segment>{};
  uint32_t crc = 0;
  if (st.ok() && (req.flags & wire::kFlagChecksum) != 0) {
    crc = crc_of(segs, total);
    outgoing.push_back({reinterpret_cast<uint8_t*>(&crc), sizeof(crc)});
  }
  IoResult io = send_frame(conn->fd.get(), conn->ch, wire::Type::kReadResp, w.bytes(), outgoing, deadline);
  if (!io.ok()) return {Code::kFailed, io.message};
  if (st.ok()) {
    counters_.bytes_served += total;
    if ((req.flags & wire::kFlagReleaseKey) != 0 && req.ref.kind == wire::RefKind::kSlotKey) {
      pin.set_key_release(key, req.extent.tensor_start, req.extent.tensor_count);
      pin.commit();
    }
  }
  return Status::Ok();
}

Status Engine::handle_write(ServerConn* conn, const std::vector<uint8_t>& payload) {
  wire::Reader r(payload);
  wire::TransferRequest req;
  CL_RETURN_IF_ERROR(wire::decode(r, &req));
  CL_RETURN_IF_ERROR(r.finish("write request"));
  std::vector<Segment> segs;
  Pin pin;
  Status st = store_.acquire(req.ref, req.extent, true, &segs, &pin, nullptr);
  if (st.ok() && total_bytes(segs) != req.expected_total) {
    st = {Code::kParamInvalid, "size mismatch: the destination holds " + std::to_string(total_bytes(segs)) +
                                   " bytes, the source sends " + std::to_string(req.expected_total)};
  }
  Deadline deadline = deadline_in_ms(config_.sync_timeout_ms * 10 + 30000);
  const bool checksum = (req.flags & wire::kFlagChecksum) != 0;
  const uint64_t trailer = checksum ? sizeof(uint32_t) : 0;
  uint32_t sent = 0;
  IoResult io;
  if (!st.ok()) {
    io = discard_bulk(conn->fd.get(), conn->ch, req.expected_total + trailer, deadline);
  } else if (checksum) {
    io = recv_bulk(conn->fd.get(), conn->ch, with_trailer(segs, req.expected_total, &sent),
                   req.expected_total + trailer, deadline);
  } else {
    io = recv_bulk(conn->fd.get(), conn->ch, segs, req.expected_total, deadline);
  }
  if (io.error == IoError::kTampered) counters_.tampered_frames += 1;
  if (!io.ok()) return {Code::kFailed, io.message};
  if (st.ok() && checksum) {
    if (sent != crc_of(segs, req.expected_total)) {
      st = {Code::kFailed, "checksum mismatch on data pushed by cluster " + std::to_string(conn->peer_cluster_id) +
                               ": the bytes were corrupted in transit"};
    }
  }
  io = send_frame(conn->fd.get(), conn->ch, wire::Type::kWriteResp, status_payload(st), {}, deadline);
  if (!io.ok()) return {Code::kFailed, io.message};
  return Status::Ok();
}

Status Engine::handle_resolve(ServerConn* conn, const std::vector<uint8_t>& payload) {
  wire::Reader r(payload);
  bool is_write = r.u8() != 0;
  wire::TransferRequest req;
  CL_RETURN_IF_ERROR(wire::decode(r, &req));
  CL_RETURN_IF_ERROR(r.finish("resolve request"));
  std::vector<Segment> segs;
  Pin pin;
  SlotKey key;
  SharedLayout layout;
  Status st = store_.acquire(req.ref, req.extent, true, &segs, &pin, &key, &layout);
  uint64_t total = st.ok() ? total_bytes(segs) : 0;
  if (st.ok() && total != req.expected_total &&
      !(!is_write && (req.flags & wire::kFlagAllowShort) != 0 && total <= req.expected_total)) {
    st = {Code::kParamInvalid, "size mismatch: the peer cache holds " + std::to_string(total) +
                                   " bytes, the transfer expects " + std::to_string(req.expected_total)};
  }
  // The reply describes the cache's geometry (O(tensors)), never its segments: the peer rebuilds them
  // from the extent it sent, with the same rules, inside the pool it mapped.
  if (st.ok() && conn->pins.size() >= kMaxPinsPerConnection) {
    st = {Code::kFailed, "too many same-host transfers in flight on one connection"};
  }
  const bool shareable = st.ok() && layout.pool >= 0;
  wire::Writer w;
  w.u32(static_cast<uint32_t>(st.code()));
  w.str(st.message());
  w.u8(shareable ? 1 : 0);
  uint64_t token = 0;
  if (shareable) {
    token = conn->next_token++;
    if (!is_write && (req.flags & wire::kFlagReleaseKey) != 0 && req.ref.kind == wire::RefKind::kSlotKey) {
      pin.set_key_release(key, req.extent.tensor_start, req.extent.tensor_count);
    }
    conn->pins.emplace(token, std::move(pin));
  }
  w.u64(token);
  if (shareable) {
    const CacheGeometry& g = layout.geometry;
    w.u32(static_cast<uint32_t>(layout.pool));
    w.u64(static_cast<uint64_t>(g.id));
    w.u8(g.blocks ? 1 : 0);
    w.u64(g.tensor_bytes);
    w.u64(g.units);
    std::vector<uint64_t> offsets;
    offsets.reserve(g.addrs.size());
    for (uint8_t* a : g.addrs) offsets.push_back(reinterpret_cast<uint64_t>(a));
    w.u64s(offsets);
    w.u64(layout.extent.slot);
  }
  IoResult io = send_frame(conn->fd.get(), conn->ch, wire::Type::kResolveResp, w.bytes(), {}, deadline_in_ms(30000));
  if (!io.ok()) return {Code::kFailed, io.message};
  if (shareable) counters_.bytes_served += total;
  return Status::Ok();
}

Status Engine::handle_release(ServerConn* conn, const std::vector<uint8_t>& payload) {
  wire::Reader r(payload);
  uint64_t token = r.u64();
  bool success = r.u8() != 0;
  CL_RETURN_IF_ERROR(r.finish("release"));
  auto it = conn->pins.find(token);
  if (it == conn->pins.end()) return {Code::kFailed, "release of an unknown transfer"};
  if (success) it->second.commit();
  conn->pins.erase(it);
  return Status::Ok();
}

}  // namespace cachelink

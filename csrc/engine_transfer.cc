#include <algorithm>

#include "copy.h"
#include "engine_internal.h"

namespace cachelink {
namespace {

constexpr uint64_t kStripeMin = 8u << 20;  // smaller transfers stay on one connection

/// Splits a block list into `parts` contiguous chunks.
std::vector<std::vector<uint64_t>> chunks(const std::vector<uint64_t>& blocks, size_t parts) {
  std::vector<std::vector<uint64_t>> out;
  size_t per = (blocks.size() + parts - 1) / parts;
  for (size_t i = 0; i < blocks.size(); i += per) {
    out.emplace_back(blocks.begin() + static_cast<long>(i),
                     blocks.begin() + static_cast<long>(std::min(blocks.size(), i + per)));
  }
  return out;
}

}  // namespace

// -------------------------------------------------------------------------------------- transfers

Status Engine::pull(uint64_t remote_cluster_id, const wire::TransferRequest& remote, int64_t local_cache,
                    const wire::Extent& local, int64_t timeout_ms) {
  return transfer(true, remote_cluster_id, remote, local_cache, local, timeout_ms);
}

Status Engine::push(uint64_t remote_cluster_id, const wire::TransferRequest& remote, int64_t local_cache,
                    const wire::Extent& local, int64_t timeout_ms) {
  return transfer(false, remote_cluster_id, remote, local_cache, local, timeout_ms);
}

Status Engine::io_failure(Link& link, const IoResult& io, int64_t timeout_ms) {
  const std::string who = "cluster " + std::to_string(link.remote_cluster_id) + " at " + link.address();
  // Either way the connection's state is unknown and the peer may be gone: the link is broken until
  // unlinked and linked again (LLM-DataDist's documented recovery after LLM_TIMEOUT).
  if (io.error == IoError::kTampered) {
    // An on-path attacker (or a broken middlebox): this connection is dropped (its lease is marked bad), the
    // link stays up and the next transfer opens a fresh, freshly keyed connection.
    counters_.tampered_frames += 1;
    return {Code::kLinkFailed, "data from " + who + " " + io.message + "; the connection was dropped"};
  }
  const bool timed_out = io.error == IoError::kTimeout;
  std::string what = timed_out ? "transfer with " + who + " did not finish within " + std::to_string(timeout_ms) + " ms"
                               : "lost " + who + " mid-transfer: " + io.message;
  {
    std::lock_guard<std::mutex> lock(link.mu);
    link.broken = true;
    link.last_error = timed_out ? "transfer timed out" : "peer lost: " + io.message;
  }
  return {Code::kTimeout, what};
}

Status Engine::transfer(bool is_pull, uint64_t remote_cluster_id, const wire::TransferRequest& remote,
                        int64_t local_cache, const wire::Extent& local, int64_t timeout_ms) {
  CL_RETURN_IF_ERROR(check_owner());
  if (!initialized_) return {Code::kEngineFinalized, "instance is not initialized"};
  std::shared_ptr<Link> link;
  CL_RETURN_IF_ERROR(get_link(remote_cluster_id, &link));
  std::vector<Segment> segs;
  Pin pin;  // keeps the local cache alive for the whole transfer, every stripe included
  CL_RETURN_IF_ERROR(store_.acquire_local(local_cache, local, &segs, &pin));
  const uint64_t total = total_bytes(segs);
  Deadline deadline = deadline_in_ms(timeout_ms);
  wire::TransferRequest req = remote;
  if (config_.checksum) req.flags |= wire::kFlagChecksum;

  // One large TCP transfer is striped over several connections: by block chunks when both sides
  // name blocks, else by tensors. Same-host copies are parallelised inside copy_segments instead.
  std::vector<std::pair<wire::TransferRequest, wire::Extent>> parts;
  const auto stripes = static_cast<size_t>(std::max<int64_t>(1, config_.tcp_stripes));
  const bool blocks_both = req.extent.unit == wire::Unit::kBlocks && local.unit == wire::Unit::kBlocks;
  if (!link->same_host && stripes > 1 && total >= kStripeMin) {
    if (blocks_both && local.blocks.size() >= stripes && req.extent.blocks.size() == local.blocks.size()) {
      auto remote_chunks = chunks(req.extent.blocks, stripes);
      auto local_chunks = chunks(local.blocks, stripes);
      for (size_t i = 0; i < remote_chunks.size(); ++i) {
        parts.emplace_back(req, local);
        parts.back().first.extent.blocks = std::move(remote_chunks[i]);
        parts.back().second.blocks = std::move(local_chunks[i]);
      }
    } else if ((req.flags & wire::kFlagAllowShort) == 0 && local.tensor_count >= stripes &&
               req.extent.tensor_count == local.tensor_count) {
      uint32_t per = (local.tensor_count + static_cast<uint32_t>(stripes) - 1) / static_cast<uint32_t>(stripes);
      for (uint32_t first = 0; first < local.tensor_count; first += per) {
        uint32_t count = std::min(per, local.tensor_count - first);
        parts.emplace_back(req, local);
        parts.back().first.extent.tensor_start += first;
        parts.back().first.extent.tensor_count = count;
        parts.back().second.tensor_start += first;
        parts.back().second.tensor_count = count;
      }
    }
  }
  Status st;
  if (parts.size() <= 1) {
    st = transfer_part(is_pull, link, req, segs, deadline);
  } else {
    std::vector<Status> results(parts.size());
    std::vector<std::vector<Segment>> part_segs(parts.size());
    for (size_t i = 0; i < parts.size(); ++i) {
      Pin part_pin;
      results[i] = store_.acquire_local(local_cache, parts[i].second, &part_segs[i], &part_pin);
    }
    std::vector<std::thread> helpers;
    for (size_t i = 1; i < parts.size(); ++i) {
      if (!results[i].ok()) continue;
      helpers.emplace_back(
          [&, i] { results[i] = transfer_part(is_pull, link, parts[i].first, part_segs[i], deadline); });
    }
    if (results[0].ok()) results[0] = transfer_part(is_pull, link, parts[0].first, part_segs[0], deadline);
    for (auto& t : helpers) t.join();
    for (const Status& r : results) {
      if (!r.ok()) {
        st = r;
        break;
      }
    }
  }
  counters_.transfers += 1;
  if (st.ok()) {
    (is_pull ? counters_.bytes_pulled : counters_.bytes_pushed) += total;
  } else {
    counters_.transfer_errors += 1;
  }
  return st;
}

Status Engine::transfer_part(bool is_pull, const std::shared_ptr<Link>& link, wire::TransferRequest req,
                             const std::vector<Segment>& local, Deadline deadline) {
  req.expected_total = total_bytes(local);
  ConnLease conn;
  CL_RETURN_IF_ERROR(lease(link, deadline, &conn));
  Status st;
  bool fallback = true;
  if (link->same_host) st = transfer_shm(is_pull, *link, conn.conn(), req, local, deadline, &fallback);
  if (st.ok() && fallback) st = transfer_tcp(is_pull, *link, conn.conn(), req, local, deadline);
  if (!st.ok() && (st.code() == Code::kTimeout || st.code() == Code::kFailed || st.code() == Code::kLinkFailed)) {
    conn.mark_bad();
  }
  return st;
}

Status Engine::transfer_tcp(bool is_pull, Link& link, Conn& conn, const wire::TransferRequest& req,
                            const std::vector<Segment>& local, Deadline deadline) {
  const int64_t timeout_ms = config_.sync_timeout_ms;
  const bool checksum = (req.flags & wire::kFlagChecksum) != 0;
  wire::Writer w;
  wire::encode(w, req);
  std::vector<Segment> outgoing;
  uint32_t crc = 0;
  if (!is_pull) {
    outgoing = local;
    if (checksum) {
      crc = crc_of(local, req.expected_total);
      outgoing.push_back({reinterpret_cast<uint8_t*>(&crc), sizeof(crc)});
    }
  }
  IoResult io = send_frame(conn.fd.get(), conn.ch, is_pull ? wire::Type::kRead : wire::Type::kWrite, w.bytes(),
                           outgoing, deadline);
  if (!io.ok()) return io_failure(link, io, timeout_ms);
  wire::Header header;
  std::vector<uint8_t> payload;
  Status proto;
  io = recv_frame(conn.fd.get(), conn.ch, wire::kMaxPayload, deadline, &header, &payload, &proto);
  if (!io.ok()) return io_failure(link, io, timeout_ms);
  if (!proto.ok()) return {Code::kFailed, "cluster " + std::to_string(link.remote_cluster_id) + ": " + proto.message()};
  wire::Reader r(payload);
  Status st = read_status(r);
  if (!is_pull) {
    CL_RETURN_IF_ERROR(r.finish("write response"));
    return st;
  }
  uint64_t total = r.u64();
  CL_RETURN_IF_ERROR(r.finish("read response"));
  if (!st.ok()) return st;
  if (total > req.expected_total) return {Code::kFailed, "peer announced more bytes than requested"};
  uint32_t sent = 0;
  io = checksum ? recv_bulk(conn.fd.get(), conn.ch, with_trailer(local, total, &sent), total + sizeof(sent), deadline)
                : recv_bulk(conn.fd.get(), conn.ch, local, total, deadline);
  if (!io.ok()) return io_failure(link, io, timeout_ms);
  if (checksum) {
    if (sent != crc_of(local, total)) {
      return {Code::kFailed, "checksum mismatch on data from cluster " + std::to_string(link.remote_cluster_id) +
                                 " at " + link.address() + ": the bytes were corrupted in transit"};
    }
  }
  return Status::Ok();
}

Status Engine::transfer_shm(bool is_pull, Link& link, Conn& conn, const wire::TransferRequest& req,
                            const std::vector<Segment>& local, Deadline deadline, bool* fallback) {
  const int64_t timeout_ms = config_.sync_timeout_ms;
  wire::Writer w;
  w.u8(is_pull ? 0 : 1);
  wire::encode(w, req);
  IoResult io = send_frame(conn.fd.get(), conn.ch, wire::Type::kResolve, w.bytes(), {}, deadline);
  if (!io.ok()) return io_failure(link, io, timeout_ms);
  wire::Header header;
  std::vector<uint8_t> payload;
  Status proto;
  io = recv_frame(conn.fd.get(), conn.ch, wire::kMaxPayload, deadline, &header, &payload, &proto);
  if (!io.ok()) return io_failure(link, io, timeout_ms);
  if (!proto.ok()) return {Code::kFailed, proto.message()};
  wire::Reader r(payload);
  Status st = read_status(r);
  bool shareable = r.u8() != 0;
  uint64_t token = r.u64();
  CacheGeometry geometry;
  uint32_t pool = 0;
  wire::Extent extent = req.extent;
  if (shareable) {
    pool = r.u32();
    geometry.id = static_cast<int64_t>(r.u64());
    geometry.blocks = r.u8() != 0;
    geometry.tensor_bytes = r.u64();
    geometry.units = r.u64();
    std::vector<uint64_t> offsets = r.u64s();
    extent.slot = r.u64();
    geometry.num_tensors = static_cast<uint32_t>(offsets.size());
    const SharedMapping* m = pool < link.peer_pools.size() ? link.peer_pools[pool].get() : nullptr;
    bool inside = m != nullptr;
    for (uint64_t off : offsets) {
      inside = inside && off <= m->size() && geometry.tensor_bytes <= m->size() - off;
      geometry.addrs.push_back(inside ? m->data() + off : nullptr);
    }
    if (!inside) shareable = false;  // a layout outside the mapped pool is never trusted: use TCP
  }
  CL_RETURN_IF_ERROR(r.finish("resolve response"));
  if (!st.ok()) return st;
  std::vector<Segment> remote;
  Status layout_ok = shareable ? segments_for(geometry, extent, &remote) : Status::Ok();
  bool copied = false;
  bool intact = true;
  uint64_t remote_total = total_bytes(remote);
  if (shareable && layout_ok.ok() && remote_total <= req.expected_total) {
    *fallback = false;
    const auto threads = static_cast<unsigned>(std::max<int64_t>(1, config_.copy_threads));
    const std::vector<Segment>& from = is_pull ? remote : local;
    const std::vector<Segment>& to = is_pull ? local : remote;
    copy_segments(to, from, remote_total, threads);
    if ((req.flags & wire::kFlagChecksum) != 0) intact = crc_of(from, remote_total) == crc_of(to, remote_total);
    copied = true;
  }
  if (token != 0) {
    wire::Writer release;
    release.u64(token);
    release.u8(copied && intact ? 1 : 0);
    io = send_frame(conn.fd.get(), conn.ch, wire::Type::kRelease, release.bytes(), {}, deadline);
    if (!io.ok()) return io_failure(link, io, timeout_ms);
  }
  if (!copied) return Status::Ok();  // caller memory or an unmappable layout: TCP it is
  if (!intact) {
    return {Code::kFailed, "checksum mismatch after the same-host copy with cluster " +
                               std::to_string(link.remote_cluster_id) + ": the memory changed during the copy"};
  }
  return Status::Ok();
}

}  // namespace cachelink

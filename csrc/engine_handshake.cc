#include "auth.h"
#include "engine_internal.h"

namespace cachelink {

// ---------------------------------------------------------------------------------------- handshake
// Server side: HELLO (versions, ids, pools, nonces), then AUTH when a link secret is configured.

Status Engine::handle_hello(ServerConn* conn, const std::vector<uint8_t>& payload) {
  wire::Reader r(payload);
  uint32_t protocol = r.u32();
  uint64_t peer_id = r.u64();
  std::string peer_role = r.str();
  std::string peer_host = r.str();
  uint64_t peer_incarnation = r.u64();
  uint64_t expected_id = r.u64();
  bool peer_has_secret = r.u8() != 0;
  conn->client_nonce = r.str();
  CL_RETURN_IF_ERROR(r.finish("hello"));
  (void)peer_role;
  (void)peer_host;
  (void)peer_incarnation;
  const bool secret = !config_.link_secret.empty();
  Status verdict;
  if (protocol != kProtocol) {
    verdict = {Code::kLinkFailed, "protocol version mismatch: peer speaks " + std::to_string(protocol) +
                                      ", this engine " + std::to_string(kProtocol)};
  } else if (expected_id != kInvalidId && expected_id != config_.cluster_id) {
    verdict = {Code::kLinkFailed, "cluster id mismatch: the peer asked for cluster " + std::to_string(expected_id) +
                                      " but this instance is cluster " + std::to_string(config_.cluster_id)};
  } else if (secret && !peer_has_secret) {
    verdict = {Code::kLinkFailed, "cluster " + std::to_string(config_.cluster_id) +
                                      " requires link authentication (cachelink.link_secret)"};
  } else if (secret && conn->client_nonce.size() != auth::kNonceBytes) {
    verdict = {Code::kLinkFailed, "malformed authentication nonce"};
  }
  if (!verdict.ok() && secret) counters_.auth_failures += 1;
  if (secret && verdict.ok()) {
    Status nonce = auth::random_nonce(&conn->server_nonce);
    if (!nonce.ok()) verdict = {Code::kLinkFailed, nonce.message()};
  }
  wire::Writer w;
  w.u32(static_cast<uint32_t>(verdict.code()));
  w.str(verdict.message());
  w.u64(config_.cluster_id);
  w.str(current_role());
  w.str(host_id_);
  w.u64(incarnation_);
  auto pools = store_.pool_files();
  w.u32(static_cast<uint32_t>(pools.size()));
  for (const auto& [path, size] : pools) {
    w.str(path);
    w.u64(size);
  }
  w.u8(secret ? 1 : 0);
  if (secret && verdict.ok()) {
    w.str(conn->server_nonce);
    w.str(auth::proof(config_.link_secret, auth::kServerLabel, conn->client_nonce, conn->server_nonce,
                      config_.cluster_id));
  } else {
    w.str("");
    w.str("");
  }
  conn->peer_cluster_id = peer_id;
  IoResult io = send_frame(conn->fd.get(), wire::Type::kHelloAck, w.bytes(), {}, deadline_in_ms(30000));
  if (!io.ok()) return {Code::kFailed, io.message};
  conn->greeted = verdict.ok();
  conn->authenticated = verdict.ok() && !secret;
  return verdict;
}

Status Engine::handle_auth(ServerConn* conn, const std::vector<uint8_t>& payload) {
  wire::Reader r(payload);
  std::string client_proof = r.str();
  CL_RETURN_IF_ERROR(r.finish("auth"));
  std::string expected = auth::proof(config_.link_secret, auth::kClientLabel, conn->server_nonce, conn->client_nonce,
                                     conn->peer_cluster_id);
  Status verdict;
  if (!auth::same(client_proof, expected)) {
    counters_.auth_failures += 1;
    verdict = {Code::kLinkFailed,
               "cluster " + std::to_string(config_.cluster_id) + " refused the link: wrong link secret"};
  }
  IoResult io = send_frame(conn->fd.get(), wire::Type::kAuthResult, status_payload(verdict), {}, deadline_in_ms(30000));
  if (!io.ok()) return {Code::kFailed, io.message};
  conn->authenticated = verdict.ok();
  return verdict;
}

// Client side: one connection of a link, handshaken and, with a link secret, authenticated.

Status Engine::open_conn(Link* link, Deadline deadline, std::unique_ptr<Conn>* out, uint64_t* incarnation,
                         std::vector<std::pair<std::string, uint64_t>>* pools) {
  auto conn = std::make_unique<Conn>();
  CL_RETURN_IF_ERROR(connect_tcp(link->ip, link->port, deadline, &conn->fd));
  wire::Writer w;
  w.u32(kProtocol);
  w.u64(config_.cluster_id);
  w.str(current_role());
  w.str(host_id_);
  w.u64(incarnation_);
  w.u64(link->remote_cluster_id);
  const bool secret = !config_.link_secret.empty();
  const std::string where = "cluster " + std::to_string(link->remote_cluster_id) + " at " + link->address();
  std::string client_nonce;
  if (secret) {
    Status nonce = auth::random_nonce(&client_nonce);
    if (!nonce.ok()) return {Code::kLinkFailed, "handshake with " + where + " failed: " + nonce.message()};
  }
  w.u8(secret ? 1 : 0);
  w.str(client_nonce);
  IoResult io = send_frame(conn->fd.get(), wire::Type::kHello, w.bytes(), {}, deadline);
  if (!io.ok()) return {Code::kLinkFailed, "handshake with " + where + " failed: " + io.message};
  wire::Header header;
  std::vector<uint8_t> payload;
  Status st;
  io = recv_frame(conn->fd.get(), deadline, &header, &payload, &st);
  if (!io.ok()) return {Code::kLinkFailed, "handshake with " + where + " failed: " + io.message};
  if (!st.ok()) return {Code::kLinkFailed, "handshake with " + where + " failed: " + st.message()};
  if (header.type != static_cast<uint16_t>(wire::Type::kHelloAck)) {
    return {Code::kLinkFailed, "handshake with " + where + " failed: unexpected reply"};
  }
  wire::Reader r(payload);
  Status verdict = read_status(r);
  uint64_t peer_id = r.u64();
  std::string peer_role = r.str();
  std::string peer_host = r.str();
  *incarnation = r.u64();
  uint32_t npools = r.u32();
  pools->clear();
  for (uint32_t i = 0; i < npools && i < 16 && r.ok(); ++i) {
    std::string path = r.str();
    uint64_t size = r.u64();
    pools->emplace_back(path, size);
  }
  bool peer_has_secret = r.u8() != 0;
  std::string server_nonce = r.str();
  std::string server_proof = r.str();
  CL_RETURN_IF_ERROR(r.finish("hello ack"));
  if (!verdict.ok()) return {Code::kLinkFailed, "link to " + where + " refused: " + verdict.message()};
  if (secret) {
    std::string expected = auth::proof(config_.link_secret, auth::kServerLabel, client_nonce, server_nonce, peer_id);
    if (!peer_has_secret || !auth::same(server_proof, expected)) {
      counters_.auth_failures += 1;
      return {Code::kLinkFailed, "link to " + where + " refused: the peer did not prove the link secret"};
    }
    wire::Writer a;
    a.str(auth::proof(config_.link_secret, auth::kClientLabel, server_nonce, client_nonce, config_.cluster_id));
    io = send_frame(conn->fd.get(), wire::Type::kAuth, a.bytes(), {}, deadline);
    if (!io.ok()) return {Code::kLinkFailed, "authentication with " + where + " failed: " + io.message};
    io = recv_frame(conn->fd.get(), deadline, &header, &payload, &st);
    if (!io.ok() || !st.ok() || header.type != static_cast<uint16_t>(wire::Type::kAuthResult)) {
      return {Code::kLinkFailed, "authentication with " + where + " failed: " + (io.ok() ? st.message() : io.message)};
    }
    wire::Reader ar(payload);
    Status accepted = read_status(ar);
    CL_RETURN_IF_ERROR(ar.finish("auth result"));
    if (!accepted.ok()) return {Code::kLinkFailed, "link to " + where + " refused: " + accepted.message()};
  }
  if (peer_id != link->remote_cluster_id) {
    return {Code::kLinkFailed, "link to " + where + " refused: it is cluster " + std::to_string(peer_id)};
  }
  if (peer_host != host_id_) pools->clear();  // another host: its pool paths mean nothing here
  (void)peer_role;
  *out = std::move(conn);
  return Status::Ok();
}

}  // namespace cachelink

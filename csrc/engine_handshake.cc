#include "auth.h"
#include "engine_internal.h"

namespace cachelink {
namespace {

constexpr const char* kTranscriptLabel = "cachelink/2 transcript";

enum HelloFlags : uint8_t {
  kHelloSecret = 1,   // the sender has a link secret (and, in HELLO, a nonce follows)
  kHelloEncrypt = 2,  // HELLO: the client asks for encryption; HELLO_ACK: the link is encrypted
};

/// The final path component (the server advertises pool file names, never paths).
std::string basename_of(const std::string& path) {
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

std::string version_mismatch(uint32_t peer) {
  return "protocol version mismatch: the peer speaks protocol " + std::to_string(peer) +
         ", this engine speaks protocol " + std::to_string(kProtocol);
}

}  // namespace

// ---------------------------------------------------------------------------------------- handshake
// Protocol 2, in order (frames after HELLO_ACK sealed when a link secret is configured):
//   HELLO      client -> server  protocol, client id, expected server id, flags, client nonce   (in clear)
//   HELLO_ACK  server -> client  verdict, protocol, server id, flags, server nonce            (in clear)
//   AUTH       client -> server  role, host id, incarnation                 (sealed: proves the secret)
//   SESSION    server -> client  verdict, role, host id, incarnation, pool files  (sealed), then traffic keys
// HELLO keeps protocol 1's layout (its role, host and incarnation fields go empty) so that an engine of either
// version reads the other's protocol number and answers a refusal naming both versions.
// A refusal (a HELLO_ACK with an error, or AUTH_RESULT) is always in clear, in protocol 1's HELLO_ACK layout.

Status Engine::handle_hello(ServerConn* conn, const std::vector<uint8_t>& payload) {
  wire::Reader r(payload);
  uint32_t protocol = r.u32();
  uint64_t peer_id = r.u64();
  (void)r.str();  // protocol 1's role, host id and incarnation: empty since protocol 2 (sent after AUTH)
  (void)r.str();
  (void)r.u64();
  uint64_t expected_id = r.u64();
  uint8_t flags = r.u8();
  std::string client_nonce = r.str();
  const bool secret = !config_.link_secret.empty();
  if (!r.ok()) return r.finish("hello");
  Status verdict;
  if (protocol != kProtocol) {  // checked before trailing bytes: another version may append fields
    verdict = {Code::kLinkFailed, version_mismatch(protocol)};
  } else if (!r.at_end()) {
    return r.finish("hello");
  } else if (expected_id != kInvalidId && expected_id != config_.cluster_id) {
    verdict = {Code::kLinkFailed, "cluster id mismatch: the peer asked for cluster " + std::to_string(expected_id) +
                                      " but this instance is cluster " + std::to_string(config_.cluster_id)};
  } else if (secret && (flags & kHelloSecret) == 0) {
    verdict = {Code::kLinkFailed, "cluster " + std::to_string(config_.cluster_id) +
                                      " requires link authentication (cachelink.link_secret)"};
  } else if (secret && client_nonce.size() != auth::kNonceBytes) {
    verdict = {Code::kLinkFailed, "malformed authentication nonce"};
  }
  if (!verdict.ok() && secret) counters_.auth_failures += 1;
  std::string server_nonce;
  if (secret && verdict.ok()) {
    Status nonce = auth::random_nonce(&server_nonce);
    if (!nonce.ok()) verdict = {Code::kLinkFailed, nonce.message()};
  }
  channel::Channel plain;
  if (!verdict.ok()) {
    // Protocol 1's HELLO_ACK layout: every version reads the verdict first and reports it.
    wire::Writer w;
    w.u32(static_cast<uint32_t>(verdict.code()));
    w.str(verdict.message());
    w.u64(config_.cluster_id);
    w.str("");
    w.str("");
    w.u64(0);
    w.u32(0);
    w.u8(0);
    w.str("");
    w.str("");
    IoResult io = send_frame(conn->fd.get(), plain, wire::Type::kHelloAck, w.bytes(), {}, deadline_in_ms(5000));
    if (!io.ok()) return {Code::kFailed, io.message};
    return verdict;
  }
  const bool encrypt = secret && (config_.link_encryption || (flags & kHelloEncrypt) != 0);
  const uint8_t ack_flags = (secret ? kHelloSecret : 0) | (encrypt ? kHelloEncrypt : 0);
  wire::Writer w;
  w.u32(static_cast<uint32_t>(Code::kSuccess));
  w.str("");
  w.u32(kProtocol);
  w.u64(config_.cluster_id);
  w.u8(ack_flags);
  w.str(server_nonce);
  IoResult io = send_frame(conn->fd.get(), plain, wire::Type::kHelloAck, w.bytes(), {}, deadline_in_ms(5000));
  if (!io.ok()) return {Code::kFailed, io.message};
  conn->peer_cluster_id = peer_id;
  conn->transcript = std::string(kTranscriptLabel);
  conn->transcript.append(payload.begin(), payload.end());
  conn->transcript.append(w.bytes().begin(), w.bytes().end());
  if (secret) {
    const channel::Mode mode = encrypt ? channel::Mode::kAead : channel::Mode::kMac;
    conn->ch.key(mode, channel::derive(config_.link_secret, channel::sha256(conn->transcript), "handshake"), false);
  }
  conn->greeted = true;
  return Status::Ok();
}

Status Engine::refuse_auth(ServerConn* conn, const std::string& why) {
  counters_.auth_failures += 1;
  Status verdict{Code::kLinkFailed, "cluster " + std::to_string(config_.cluster_id) + " refused the link: " + why};
  channel::Channel plain;
  (void)send_frame(conn->fd.get(), plain, wire::Type::kAuthResult, status_payload(verdict), {}, deadline_in_ms(1000));
  return verdict;
}

Status Engine::handle_auth(ServerConn* conn, const std::vector<uint8_t>& payload) {
  // With a secret, this frame already opened under the handshake key: the peer proved the secret and saw the
  // same HELLO and HELLO_ACK as this end.
  wire::Reader r(payload);
  (void)r.str();  // the client's role, host id and incarnation (covered by the transcript; not needed here)
  (void)r.str();
  (void)r.u64();
  CL_RETURN_IF_ERROR(r.finish("auth"));
  conn->transcript.append(payload.begin(), payload.end());
  wire::Writer w;
  w.u32(static_cast<uint32_t>(Code::kSuccess));
  w.str("");
  w.str(current_role());
  w.str(host_id_);
  w.u64(incarnation_);
  auto pools = store_.pool_files();
  w.u32(static_cast<uint32_t>(pools.size()));
  for (const auto& [path, size] : pools) {
    w.str(path.empty() ? "" : basename_of(path));
    w.u64(size);
  }
  conn->transcript.append(w.bytes().begin(), w.bytes().end());
  IoResult io = send_frame(conn->fd.get(), conn->ch, wire::Type::kSession, w.bytes(), {}, deadline_in_ms(5000));
  if (!io.ok()) return {Code::kFailed, io.message};
  if (conn->ch.mode() != channel::Mode::kNone) {
    conn->ch.key(conn->ch.mode(), channel::derive(config_.link_secret, channel::sha256(conn->transcript), "traffic"),
                 false);
  }
  conn->transcript.clear();
  conn->authenticated = true;
  return Status::Ok();
}

// Client side: one connection of a link, handshaken and, with a link secret, authenticated and sealed.

Status Engine::open_conn(Link* link, Deadline deadline, std::unique_ptr<Conn>* out, uint64_t* incarnation,
                         std::vector<std::pair<std::string, uint64_t>>* pools) {
  auto conn = std::make_unique<Conn>();
  CL_RETURN_IF_ERROR(connect_tcp(link->ip, link->port, deadline, &conn->fd));
  const bool secret = !config_.link_secret.empty();
  const std::string where = "cluster " + std::to_string(link->remote_cluster_id) + " at " + link->address();
  auto failed = [&where](const std::string& why) { return Status{Code::kLinkFailed, "link to " + where + ": " + why}; };
  std::string client_nonce;
  if (secret) {
    Status nonce = auth::random_nonce(&client_nonce);
    if (!nonce.ok()) return failed(nonce.message());
  }
  wire::Writer w;
  w.u32(kProtocol);
  w.u64(config_.cluster_id);
  w.str("");
  w.str("");
  w.u64(0);
  w.u64(link->remote_cluster_id);
  w.u8((secret ? kHelloSecret : 0) | (secret && config_.link_encryption ? kHelloEncrypt : 0));
  w.str(client_nonce);
  IoResult io = send_frame(conn->fd.get(), conn->ch, wire::Type::kHello, w.bytes(), {}, deadline);
  if (!io.ok()) return failed("handshake failed: " + io.message);
  wire::Header header;
  std::vector<uint8_t> payload;
  Status st;
  io = recv_frame(conn->fd.get(), conn->ch, kMaxHandshakePayload, deadline, &header, &payload, &st);
  if (!io.ok()) return failed("handshake failed: " + io.message);
  if (!st.ok()) return failed("handshake failed: " + st.message());
  if (header.type != static_cast<uint16_t>(wire::Type::kHelloAck)) return failed("handshake failed: unexpected reply");
  wire::Reader r(payload);
  Status verdict = read_status(r);
  if (!verdict.ok()) return failed("refused: " + verdict.message());
  uint32_t protocol = r.u32();
  uint64_t peer_id = r.u64();
  uint8_t flags = r.u8();
  std::string server_nonce = r.str();
  if (protocol != kProtocol) return failed(version_mismatch(protocol));
  if (Status done = r.finish("hello ack"); !done.ok()) return failed(done.message());
  if (peer_id != link->remote_cluster_id) return failed("refused: it is cluster " + std::to_string(peer_id));
  std::string transcript(kTranscriptLabel);
  transcript.append(w.bytes().begin(), w.bytes().end());
  transcript.append(payload.begin(), payload.end());
  if (secret) {
    if ((flags & kHelloSecret) == 0 || server_nonce.size() != auth::kNonceBytes) {
      counters_.auth_failures += 1;
      return failed("refused: the peer did not prove the link secret (it has none)");
    }
    if (config_.link_encryption && (flags & kHelloEncrypt) == 0) {
      return failed("refused: the peer did not agree to encrypt the link (cachelink.link_encryption)");
    }
    const channel::Mode mode = (flags & kHelloEncrypt) != 0 ? channel::Mode::kAead : channel::Mode::kMac;
    conn->ch.key(mode, channel::derive(config_.link_secret, channel::sha256(transcript), "handshake"), true);
  }
  wire::Writer a;
  a.str(current_role());
  a.str(host_id_);
  a.u64(incarnation_);
  transcript.append(a.bytes().begin(), a.bytes().end());
  io = send_frame(conn->fd.get(), conn->ch, wire::Type::kAuth, a.bytes(), {}, deadline);
  if (!io.ok()) return failed("authentication failed: " + io.message);
  io = recv_frame(conn->fd.get(), conn->ch, kMaxHandshakePayload, deadline, &header, &payload, &st, true);
  if (io.error == IoError::kTampered) {
    counters_.auth_failures += 1;
    return failed("refused: the peer did not prove the link secret, or the handshake was changed on the way");
  }
  if (!io.ok()) return failed("authentication failed: " + io.message);
  if (!st.ok()) return failed("authentication failed: " + st.message());
  if (header.type == static_cast<uint16_t>(wire::Type::kAuthResult)) {
    wire::Reader ar(payload);
    Status refused = read_status(ar);
    return failed("refused: " + (refused.ok() ? std::string("no reason given") : refused.message()));
  }
  if (header.type != static_cast<uint16_t>(wire::Type::kSession)) return failed("unexpected reply to AUTH");
  wire::Reader s(payload);
  Status accepted = read_status(s);
  (void)s.str();  // the peer's role
  std::string peer_host = s.str();
  *incarnation = s.u64();
  uint32_t npools = s.u32();
  pools->clear();
  for (uint32_t i = 0; i < npools && i < 16 && s.ok(); ++i) {
    std::string name = s.str();
    uint64_t size = s.u64();
    pools->emplace_back(name, size);
  }
  if (Status done = s.finish("session"); !done.ok()) return failed(done.message());
  if (!accepted.ok()) return failed("refused: " + accepted.message());
  transcript.append(payload.begin(), payload.end());
  if (secret) {
    conn->ch.key(conn->ch.mode(), channel::derive(config_.link_secret, channel::sha256(transcript), "traffic"), true);
  }
  if (peer_host != host_id_) pools->clear();  // another host: its pool files mean nothing here
  *out = std::move(conn);
  return Status::Ok();
}

}  // namespace cachelink

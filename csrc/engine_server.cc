#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>

#include "engine_internal.h"

namespace cachelink {

// ------------------------------------------------------------------------------------------ server

Status Engine::start_listener(const std::string& ip, uint16_t port, Listener** out) {
  auto listener = std::make_unique<Listener>();
  CL_RETURN_IF_ERROR(listen_tcp(ip, port, &listener->fd, &listener->port));
  listener->ip = ip;
  Listener* raw = listener.get();
  listener->thread = std::thread([this, raw] { accept_loop(raw); });
  std::lock_guard<std::mutex> lock(mu_);
  listeners_.push_back(std::move(listener));
  *out = raw;
  return Status::Ok();
}

// One thread per listener accepts connections and runs every handshake on them, polling them all: a
// connection gets a thread of its own only once it is authenticated. Pre-AUTH frames are small (at most
// kMaxHandshakePayload) and are gathered without blocking, so a flood of silent or slow connections costs one
// buffer each, no thread, and each is closed at its handshake deadline.
void Engine::accept_loop(Listener* listener) {
  std::vector<std::unique_ptr<ServerConn>> pending;  // accepted, not yet authenticated
  std::vector<pollfd> fds;
  while (!stopping_) {
    fds.assign({{listener->fd.get(), POLLIN, 0}, {wake_.get(), POLLIN, 0}});
    Deadline next = Deadline::max();
    for (const auto& c : pending) {
      fds.push_back({c->fd.get(), POLLIN, 0});
      next = std::min(next, c->handshake_deadline);
    }
    int timeout = -1;
    if (next != Deadline::max()) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(next - Clock::now()).count() + 1;
      timeout = static_cast<int>(std::clamp<int64_t>(left, 0, 1 << 30));
    }
    const int rc = ::poll(fds.data(), fds.size(), timeout);
    if (rc < 0 && errno != EINTR) return;
    if (stopping_ || (fds[1].revents & POLLIN) != 0) return;
    // Handshakes first (the indexes of `fds` match `pending` before anything is accepted).
    const Clock::time_point now = Clock::now();
    std::vector<std::unique_ptr<ServerConn>> still;
    for (size_t i = 0; i < pending.size(); ++i) {
      std::unique_ptr<ServerConn>& conn = pending[i];
      bool keep = true;
      if (rc > 0 && fds[i + 2].revents != 0) keep = advance_handshake(conn.get());
      if (keep && conn->authenticated) {
        std::lock_guard<std::mutex> lock(mu_);
        if (stopping_) return;
        ServerConn* raw = conn.get();
        conn->thread = std::thread([this, raw] { serve(raw); });
        server_conns_.push_back(std::move(conn));
        continue;
      }
      if (keep && now < conn->handshake_deadline) still.push_back(std::move(conn));
      // otherwise dropped here: a broken handshake, or past its deadline
    }
    pending.swap(still);
    if (rc > 0 && fds[0].revents != 0 && !accept_one(listener, &pending)) return;
  }
}

bool Engine::accept_one(Listener* listener, std::vector<std::unique_ptr<ServerConn>>* pending) {
  sockaddr_in peer{};
  socklen_t peer_len = sizeof(peer);
  int fd = ::accept4(listener->fd.get(), reinterpret_cast<sockaddr*>(&peer), &peer_len, SOCK_NONBLOCK | SOCK_CLOEXEC);
  if (fd < 0) {
    if (errno == EAGAIN || errno == EINTR || errno == ECONNABORTED) return true;
    if (errno == EMFILE || errno == ENFILE) {
      ::poll(nullptr, 0, 100);  // out of descriptors: back off instead of spinning
      return true;
    }
    return false;  // the listener was shut down (relisten, finalize)
  }
  Fd accepted(fd);
  char text[INET_ADDRSTRLEN] = "?";
  ::inet_ntop(AF_INET, &peer.sin_addr, text, sizeof(text));
  reap_server_conns(false);
  std::lock_guard<std::mutex> lock(mu_);
  // Caps, checked before a byte of buffer is spent on the connection: closed at once when full.
  int64_t from_source = 0;
  for (const auto& c : server_conns_) from_source += c->source == text ? 1 : 0;
  for (const auto& c : *pending) from_source += c->source == text ? 1 : 0;
  if (static_cast<int64_t>(server_conns_.size() + pending->size()) >= config_.max_server_connections ||
      from_source >= config_.max_connections_per_source) {
    counters_.connections_refused += 1;
    return true;  // `accepted` closes here
  }
  tune_socket(fd);
  auto conn = std::make_unique<ServerConn>();
  conn->fd = std::move(accepted);
  conn->source = text;
  conn->handshake_deadline = deadline_in_ms(config_.handshake_timeout_ms);
  pending->push_back(std::move(conn));
  return true;
}

bool Engine::advance_handshake(ServerConn* conn) {
  uint8_t chunk[kMaxHandshakePayload];
  const ssize_t n = ::recv(conn->fd.get(), chunk, sizeof(chunk), MSG_DONTWAIT);
  if (n == 0) return false;
  if (n < 0) return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
  conn->inbox.insert(conn->inbox.end(), chunk, chunk + n);
  while (conn->inbox.size() >= wire::kHeaderSize) {
    wire::Header header;
    if (!wire::decode_header(conn->inbox.data(), &header).ok()) return false;
    if (header.payload_len > kMaxHandshakePayload) return false;  // a few KiB at most before AUTH
    const bool sealed = conn->ch.mode() != channel::Mode::kNone;
    const size_t need = wire::kHeaderSize + header.payload_len + (sealed ? channel::kTagBytes : 0);
    if (conn->inbox.size() < need) return true;  // the rest has not arrived yet
    const uint8_t* body = conn->inbox.data() + wire::kHeaderSize;
    std::vector<uint8_t> payload(body, body + header.payload_len);
    if (sealed && !conn->ch.recv.open(conn->inbox.data(), wire::kHeaderSize, payload.data(), payload.size(),
                                      body + header.payload_len)) {
      (void)refuse_auth(conn, "wrong link secret, or the handshake was changed on the way");
      return false;
    }
    conn->inbox.erase(conn->inbox.begin(), conn->inbox.begin() + static_cast<std::ptrdiff_t>(need));
    if (header.type == static_cast<uint16_t>(wire::Type::kGoodbye)) return false;
    if (!serve_one(conn, header, payload).ok()) return false;
    // A client sends nothing after AUTH until it has SESSION: bytes already here are not a client's.
    if (conn->authenticated) return conn->inbox.empty();
  }
  return true;
}

void Engine::reap_server_conns(bool all) {
  std::list<std::unique_ptr<ServerConn>> finished;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = server_conns_.begin(); it != server_conns_.end();) {
      if (all || (*it)->done) {
        finished.push_back(std::move(*it));
        it = server_conns_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (auto& c : finished) {
    if (c->thread.joinable()) c->thread.join();
  }
}

void Engine::serve(ServerConn* conn) {
  // An authenticated connection (accept_loop ran its handshake): a thread of its own, idle up to idle_timeout_ms.
  std::vector<uint8_t> payload;
  const int64_t wait_ms = config_.idle_timeout_ms > 0 ? config_.idle_timeout_ms : -1;
  while (!stopping_) {
    IoResult ready = wait_readable(conn->fd.get(), wake_.get(), wait_ms);
    if (!ready.ok() || stopping_) break;  // woken, closed, or idle past the timeout
    wire::Header header;
    Status st;
    IoResult io = recv_frame(conn->fd.get(), conn->ch, wire::kMaxPayload,
                             deadline_in_ms(config_.sync_timeout_ms * 10 + 30000), &header, &payload, &st);
    if (io.error == IoError::kTampered) counters_.tampered_frames += 1;
    if (!io.ok() || !st.ok()) break;  // malformed, hostile or tampered frame: drop this connection only
    if (header.type == static_cast<uint16_t>(wire::Type::kGoodbye)) break;
    if (!serve_one(conn, header, payload).ok()) break;
  }
  conn->pins.clear();
  conn->fd.shutdown_both();
  conn->done = true;
}

Status Engine::serve_one(ServerConn* conn, const wire::Header& header, const std::vector<uint8_t>& payload) {
  const auto type = static_cast<wire::Type>(header.type);
  if (!conn->greeted && type != wire::Type::kHello) {
    return {Code::kFailed, "request before the handshake"};
  }
  if (conn->greeted && !conn->authenticated && type != wire::Type::kAuth) {
    return {Code::kFailed, "request before link authentication"};
  }
  switch (type) {
    case wire::Type::kHello:
      if (conn->greeted) return {Code::kFailed, "second handshake on one connection"};
      return handle_hello(conn, payload);
    case wire::Type::kAuth:
      if (conn->authenticated) return {Code::kFailed, "unexpected authentication"};
      return handle_auth(conn, payload);
    case wire::Type::kRead:
      return handle_read(conn, payload);
    case wire::Type::kWrite:
      return handle_write(conn, payload);
    case wire::Type::kResolve:
      return handle_resolve(conn, payload);
    case wire::Type::kRelease:
      return handle_release(conn, payload);
    default:
      return {Code::kFailed, "unexpected frame type " + std::to_string(header.type)};
  }
}

std::vector<uint64_t> Engine::clients() const {
  std::vector<uint64_t> out;
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& c : server_conns_) {
    // Only authenticated peers are clients: a greeted stranger does not hold switch_role back.
    if (!c->done && c->authenticated && c->peer_cluster_id != kInvalidId) out.push_back(c->peer_cluster_id);
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

}  // namespace cachelink

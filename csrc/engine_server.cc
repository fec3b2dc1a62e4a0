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

void Engine::accept_loop(Listener* listener) {
  while (!stopping_) {
    IoResult ready = wait_readable(listener->fd.get(), wake_.get());
    if (!ready.ok() || stopping_) return;
    sockaddr_in peer{};
    socklen_t peer_len = sizeof(peer);
    int fd = ::accept4(listener->fd.get(), reinterpret_cast<sockaddr*>(&peer), &peer_len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EAGAIN || errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EMFILE || errno == ENFILE) {
        ::poll(nullptr, 0, 100);  // out of descriptors: back off instead of spinning
        continue;
      }
      return;
    }
    Fd accepted(fd);
    char text[INET_ADDRSTRLEN] = "?";
    ::inet_ntop(AF_INET, &peer.sin_addr, text, sizeof(text));
    reap_server_conns(false);
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return;
    // Caps, checked before a thread or a byte of buffer is spent on the connection: closed at once when full.
    int64_t from_source = 0;
    for (const auto& c : server_conns_) from_source += c->source == text ? 1 : 0;
    if (static_cast<int64_t>(server_conns_.size()) >= config_.max_server_connections ||
        from_source >= config_.max_connections_per_source) {
      counters_.connections_refused += 1;
      continue;  // `accepted` closes here
    }
    tune_socket(fd);
    auto conn = std::make_unique<ServerConn>();
    conn->fd = std::move(accepted);
    conn->source = text;
    ServerConn* raw = conn.get();
    conn->thread = std::thread([this, raw] { serve(raw); });
    server_conns_.push_back(std::move(conn));
  }
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
  std::vector<uint8_t> payload;
  // Until AUTH, the whole handshake has one deadline; after it, a connection may idle up to idle_timeout_ms.
  const Deadline handshake_deadline = deadline_in_ms(config_.handshake_timeout_ms);
  while (!stopping_) {
    const bool authenticated = conn->authenticated;
    int64_t wait_ms = -1;
    if (!authenticated) {
      wait_ms = std::max<int64_t>(
          0, std::chrono::duration_cast<std::chrono::milliseconds>(handshake_deadline - Clock::now()).count());
    } else if (config_.idle_timeout_ms > 0) {
      wait_ms = config_.idle_timeout_ms;
    }
    IoResult ready = wait_readable(conn->fd.get(), wake_.get(), wait_ms);
    if (!ready.ok() || stopping_) break;  // woken, closed, or past the handshake deadline / idle timeout
    wire::Header header;
    Status st;
    const Deadline deadline = authenticated ? deadline_in_ms(config_.sync_timeout_ms * 10 + 30000) : handshake_deadline;
    IoResult io = recv_frame(conn->fd.get(), conn->ch, authenticated ? wire::kMaxPayload : kMaxHandshakePayload,
                             deadline, &header, &payload, &st);
    if (io.error == IoError::kTampered) {
      // Before AUTH completes, a frame that does not open means the wrong secret (or a changed handshake).
      if (!authenticated) (void)refuse_auth(conn, "wrong link secret, or the handshake was changed on the way");
      if (authenticated) counters_.tampered_frames += 1;
      break;
    }
    if (!io.ok() || !st.ok()) break;  // malformed or hostile frame: drop this connection only
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

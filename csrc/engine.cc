#include "engine.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <random>

#include "auth.h"
#include "checksum.h"
#include "copy.h"

namespace cachelink {
namespace {

constexpr uint32_t kProtocol = 1;
constexpr uint64_t kStripeMin = 8u << 20;  // smaller transfers stay on one connection
constexpr size_t kMaxPinsPerConnection = 1024;  // a peer that never releases cannot pin memory forever

std::string read_boot_id() {
  std::ifstream in("/proc/sys/kernel/random/boot_id");
  std::string id;
  std::getline(in, id);
  return id.empty() ? "unknown-host" : id;
}

uint64_t random_u64() {
  std::random_device rd;
  return (static_cast<uint64_t>(rd()) << 32) ^ rd();
}

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

}  // namespace

// ----------------------------------------------------------------------------------- inner types

struct Engine::Conn {
  Fd fd;
};

struct Engine::Link {
  uint64_t remote_cluster_id = 0;
  std::string ip;
  uint16_t port = 0;
  uint64_t comm_id = 0;
  uint64_t peer_incarnation = 0;
  bool same_host = false;
  std::vector<std::shared_ptr<SharedMapping>> peer_pools;  // by pool index; null where not mapped

  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::unique_ptr<Conn>> idle;
  int64_t open = 0;
  std::atomic<bool> broken{false};
  std::string last_error;

  std::string address() const { return ip + ":" + std::to_string(port); }
};

struct Engine::Listener {
  Fd fd;
  std::string ip;
  uint16_t port = 0;
  std::thread thread;
};

struct Engine::ServerConn {
  Fd fd;
  std::thread thread;
  std::atomic<bool> done{false};
  uint64_t peer_cluster_id = kInvalidId;
  bool greeted = false;        // HELLO accepted
  bool authenticated = false;  // link secret proven (or none configured)
  std::string client_nonce;
  std::string server_nonce;
  std::map<uint64_t, Pin> pins;  // same-host transfers in flight, released by RELEASE or on close
  uint64_t next_token = 1;
};

struct Engine::Domain {
  uint64_t id = 0;
  std::string name;
  Listener* listener = nullptr;  // null when the domain shares the main listener
  std::vector<uint64_t> peers;
  std::thread thread;
  std::atomic<int> state{1};  // RegisterMemStatus: 0 OK, 1 PREPARING, 2 FAILED
  std::atomic<bool> stop{false};
  std::mutex mu;
  std::condition_variable cv;
};

/// A connection borrowed from a link; returned to the idle list unless marked bad.
class Engine::ConnLease {
 public:
  ConnLease() = default;
  ConnLease(const ConnLease&) = delete;
  ConnLease& operator=(const ConnLease&) = delete;
  ~ConnLease() { reset(); }
  void assign(std::shared_ptr<Link> link, std::unique_ptr<Conn> conn) {
    reset();
    link_ = std::move(link);
    conn_ = std::move(conn);
    bad_ = false;
  }
  Conn& conn() { return *conn_; }
  void mark_bad() { bad_ = true; }
  void reset() {
    if (!link_) return;
    std::lock_guard<std::mutex> lock(link_->mu);
    if (bad_ || link_->broken) {
      link_->open -= 1;
    } else {
      link_->idle.push_back(std::move(conn_));
    }
    link_->cv.notify_one();
    conn_.reset();
    link_.reset();
  }

 private:
  std::shared_ptr<Link> link_;
  std::unique_ptr<Conn> conn_;
  bool bad_ = false;
};

// --------------------------------------------------------------------------------------- lifecycle

Engine::Engine(EngineConfig config) : config_(std::move(config)) {}

Engine::~Engine() { finalize(false); }

Status Engine::check_owner() const {
  if (owner_pid_ != 0 && ::getpid() != owner_pid_) {
    return {Code::kFailed, "this instance was initialized in process " + std::to_string(owner_pid_) +
                               " and cannot be used in a forked child; create and init a new one there"};
  }
  return Status::Ok();
}

Status Engine::init() {
  if (initialized_) return Status::Ok();
  host_id_ = config_.host_id.empty() ? read_boot_id() : config_.host_id;
  incarnation_ = random_u64() | 1;
  owner_pid_ = ::getpid();
  std::string stem = config_.pool_name.empty()
                         ? "cachelink-" + std::to_string(config_.cluster_id) + "-" + std::to_string(owner_pid_)
                         : config_.pool_name;
  std::string base = config_.pool_dir + "/" + stem;
  std::string index_path = config_.persistent_pool ? base + ".index" : "";
  if (config_.device_pool.size > 0 || config_.host_pool.size > 0) {
    CL_RETURN_IF_ERROR(
        store_.open_pools(base, config_.device_pool, config_.host_pool, config_.adopt_pool, index_path));
  }
  wake_ = Fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!wake_.valid()) {
    store_.close(!config_.persistent_pool);
    return {Code::kFailed, std::string("eventfd(): ") + std::strerror(errno)};
  }
  stopping_ = false;
  if (!config_.listen_ip.empty()) {
    Status st = start_listener(config_.listen_ip, config_.listen_port, &main_listener_);
    if (!st.ok()) {
      stopping_ = true;
      store_.close(!config_.persistent_pool);
      wake_.reset();
      return st;
    }
  }
  initialized_ = true;
  lease_thread_ = std::thread([this] { lease_loop(); });
  return Status::Ok();
}

void Engine::lease_loop() {
  std::unique_lock<std::mutex> lock(lease_mu_);
  while (!stopping_) {
    auto next = store_.next_lease();
    if (next) {
      lease_cv_.wait_until(lock, *next);
    } else {
      lease_cv_.wait(lock);  // idle: no timer, no polling
    }
    if (stopping_) break;
    counters_.leases_expired += store_.expire_leases(std::chrono::steady_clock::now());
  }
}

Status Engine::bind_slot_key(int64_t cache_id, uint64_t slot, const SlotKey& key, int64_t lease_ms) {
  CL_RETURN_IF_ERROR(check_owner());
  int64_t lease = lease_ms >= 0 ? lease_ms : config_.key_lease_ms;
  CL_RETURN_IF_ERROR(store_.bind_slot_key(cache_id, slot, key, lease));
  if (lease > 0) {
    std::lock_guard<std::mutex> lock(lease_mu_);
    lease_cv_.notify_all();
  }
  return Status::Ok();
}

void Engine::finalize(bool release_pool) {
  if (!initialized_.exchange(false)) return;
  const bool forked_child = ::getpid() != owner_pid_;
  stopping_ = true;
  if (wake_.valid()) {
    uint64_t one = 1;
    ssize_t ignored = ::write(wake_.get(), &one, sizeof(one));
    (void)ignored;
  }
  std::map<uint64_t, std::shared_ptr<Link>> links;
  std::map<uint64_t, std::unique_ptr<Domain>> domains;
  {
    std::lock_guard<std::mutex> lock(mu_);
    links.swap(links_);
    domains.swap(domains_);
    for (auto& l : listeners_) l->fd.shutdown_both();
    for (auto& c : server_conns_) c->fd.shutdown_both();
  }
  for (auto& [id, link] : links) {
    std::lock_guard<std::mutex> lock(link->mu);
    link->broken = true;
    for (auto& c : link->idle) c->fd.shutdown_both();
    link->idle.clear();
    link->cv.notify_all();
  }
  for (auto& [id, d] : domains) {
    d->stop = true;
    d->cv.notify_all();
  }
  // A forked child has copies of these thread objects but not the threads: never join there.
  auto finish = [forked_child](std::thread& t) {
    if (!t.joinable()) return;
    if (forked_child) {
      t.detach();
    } else {
      t.join();
    }
  };
  for (auto& [id, d] : domains) finish(d->thread);
  {
    std::lock_guard<std::mutex> lock(lease_mu_);
    lease_cv_.notify_all();
  }
  finish(lease_thread_);
  std::list<std::unique_ptr<Listener>> listeners;
  std::list<std::unique_ptr<ServerConn>> conns;
  {
    std::lock_guard<std::mutex> lock(mu_);
    listeners.swap(listeners_);
    main_listener_ = nullptr;
  }
  for (auto& l : listeners) finish(l->thread);
  {
    std::lock_guard<std::mutex> lock(mu_);
    conns.swap(server_conns_);
  }
  for (auto& c : conns) finish(c->thread);
  conns.clear();
  store_.close(!forked_child && (release_pool || !config_.persistent_pool));
  wake_.reset();
}

std::string Engine::listen_address() const {
  std::lock_guard<std::mutex> lock(mu_);
  if (main_listener_ == nullptr) return "";
  return main_listener_->ip + ":" + std::to_string(main_listener_->port);
}

Status Engine::relisten(const std::string& ip, uint16_t port) {
  CL_RETURN_IF_ERROR(check_owner());
  if (!initialized_) return {Code::kEngineFinalized, "instance is not initialized"};
  Listener* fresh = nullptr;
  if (!ip.empty()) CL_RETURN_IF_ERROR(start_listener(ip, port, &fresh));
  std::unique_ptr<Listener> old;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = listeners_.begin(); it != listeners_.end(); ++it) {
      if (it->get() == main_listener_) {
        old = std::move(*it);
        listeners_.erase(it);
        break;
      }
    }
    main_listener_ = fresh;
    config_.listen_ip = ip;
    config_.listen_port = fresh != nullptr ? fresh->port : 0;
  }
  if (old) {
    old->fd.shutdown_both();  // wakes its accept thread
    if (old->thread.joinable()) old->thread.join();
  }
  return Status::Ok();
}

std::string Engine::current_role() const {
  std::lock_guard<std::mutex> lock(mu_);
  return config_.role;
}

void Engine::set_role(const std::string& role) {
  std::lock_guard<std::mutex> lock(mu_);
  config_.role = role;
}

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
    int fd = ::accept4(listener->fd.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EAGAIN || errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EMFILE || errno == ENFILE) {
        ::poll(nullptr, 0, 100);  // out of descriptors: back off instead of spinning
        continue;
      }
      return;
    }
    tune_socket(fd);
    auto conn = std::make_unique<ServerConn>();
    conn->fd = Fd(fd);
    ServerConn* raw = conn.get();
    reap_server_conns(false);
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return;
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
  while (!stopping_) {
    IoResult ready = wait_readable(conn->fd.get(), wake_.get());
    if (!ready.ok() || stopping_) break;
    wire::Header header;
    Status st;
    IoResult io = recv_frame(conn->fd.get(), deadline_in_ms(config_.sync_timeout_ms * 10 + 30000), &header,
                             &payload, &st);
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
  if (!conn->greeted && type != wire::Type::kHello) return {Code::kFailed, "request before the handshake"};
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
    conn->server_nonce = auth::random_nonce();
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
    verdict = {Code::kLinkFailed, "cluster " + std::to_string(config_.cluster_id) + " refused the link: wrong link secret"};
  }
  IoResult io = send_frame(conn->fd.get(), wire::Type::kAuthResult, status_payload(verdict), {}, deadline_in_ms(30000));
  if (!io.ok()) return {Code::kFailed, io.message};
  conn->authenticated = verdict.ok();
  return verdict;
}

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
  IoResult io = send_frame(conn->fd.get(), wire::Type::kReadResp, w.bytes(), outgoing, deadline);
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
  IoResult io = st.ok() ? recv_into(conn->fd.get(), segs, req.expected_total, deadline)
                        : discard(conn->fd.get(), req.expected_total + trailer, deadline);
  if (!io.ok()) return {Code::kFailed, io.message};
  if (st.ok() && checksum) {
    uint32_t sent = 0;
    io = recv_all(conn->fd.get(), &sent, sizeof(sent), deadline);
    if (!io.ok()) return {Code::kFailed, io.message};
    if (sent != crc_of(segs, req.expected_total)) {
      st = {Code::kFailed, "checksum mismatch on data pushed by cluster " + std::to_string(conn->peer_cluster_id) +
                               ": the bytes were corrupted in transit"};
    }
  }
  io = send_frame(conn->fd.get(), wire::Type::kWriteResp, status_payload(st), {}, deadline);
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
  IoResult io = send_frame(conn->fd.get(), wire::Type::kResolveResp, w.bytes(), {}, deadline_in_ms(30000));
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

// ------------------------------------------------------------------------------------------- links

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
  const std::string client_nonce = secret ? auth::random_nonce() : "";
  w.u8(secret ? 1 : 0);
  w.str(client_nonce);
  const std::string where = "cluster " + std::to_string(link->remote_cluster_id) + " at " + link->address();
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

Status Engine::link(uint64_t remote_cluster_id, const std::string& ip, uint16_t port, int64_t timeout_ms) {
  CL_RETURN_IF_ERROR(check_owner());
  if (!initialized_) return {Code::kEngineFinalized, "instance is not initialized"};
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = links_.find(remote_cluster_id);
    if (it != links_.end() && !it->second->broken) {
      return {Code::kAlreadyLink, "cluster " + std::to_string(remote_cluster_id) + " is already linked"};
    }
  }
  auto link = std::make_shared<Link>();
  link->remote_cluster_id = remote_cluster_id;
  link->ip = ip;
  link->port = port;
  Status st;
  std::unique_ptr<Conn> conn;
  std::vector<std::pair<std::string, uint64_t>> pools;
  int64_t attempts = std::max<int64_t>(1, config_.link_retry_count);
  for (int64_t i = 0; i < attempts; ++i) {
    st = open_conn(link.get(), deadline_in_ms(timeout_ms), &conn, &link->peer_incarnation, &pools);
    if (st.ok() || stopping_) break;
  }
  if (!st.ok()) return st;
  if (!config_.force_tcp && !pools.empty()) {
    bool mapped_any = false;
    for (const auto& [path, size] : pools) {
      std::shared_ptr<SharedMapping> mapping;
      if (!path.empty() && SharedMapping::open(path, size, &mapping).ok()) mapped_any = true;
      link->peer_pools.push_back(std::move(mapping));
    }
    link->same_host = mapped_any;
  }
  link->idle.push_back(std::move(conn));
  link->open = 1;
  std::lock_guard<std::mutex> lock(mu_);
  if (stopping_) return {Code::kEngineFinalized, "instance is finalizing"};
  links_[remote_cluster_id] = std::move(link);
  return Status::Ok();
}

Status Engine::unlink(uint64_t remote_cluster_id, bool force) {
  CL_RETURN_IF_ERROR(check_owner());
  (void)force;  // a forced unlink drops only the local end; ours always does, and tells the peer when it can
  std::shared_ptr<Link> link;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = links_.find(remote_cluster_id);
    if (it == links_.end()) {
      return {Code::kNotYetLink, "cluster " + std::to_string(remote_cluster_id) + " is not linked"};
    }
    link = it->second;
    links_.erase(it);
  }
  std::lock_guard<std::mutex> lock(link->mu);
  link->broken = true;
  for (auto& c : link->idle) {
    (void)send_frame(c->fd.get(), wire::Type::kGoodbye, {}, {}, deadline_in_ms(100));
  }
  link->idle.clear();
  link->cv.notify_all();
  return Status::Ok();
}

std::vector<LinkInfo> Engine::links() const {
  std::vector<LinkInfo> out;
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [id, link] : links_) {
    LinkInfo info;
    info.remote_cluster_id = id;
    info.address = link->address();
    info.state = link->broken ? "broken" : "linked";
    info.data_path = link->same_host ? "shm" : "tcp";
    info.peer_incarnation = link->peer_incarnation;
    info.comm_id = link->comm_id;
    {
      std::lock_guard<std::mutex> link_lock(link->mu);
      info.last_error = link->last_error;
    }
    out.push_back(std::move(info));
  }
  return out;
}

std::vector<uint64_t> Engine::clients() const {
  std::vector<uint64_t> out;
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& c : server_conns_) {
    if (!c->done && c->peer_cluster_id != kInvalidId) out.push_back(c->peer_cluster_id);
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

Status Engine::get_link(uint64_t remote_cluster_id, std::shared_ptr<Link>* out) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = links_.find(remote_cluster_id);
  if (it == links_.end()) {
    return {Code::kNotYetLink, "cluster " + std::to_string(remote_cluster_id) + " is not linked"};
  }
  *out = it->second;
  return Status::Ok();
}

Status Engine::lease(const std::shared_ptr<Link>& link, Deadline deadline, ConnLease* out) {
  std::unique_lock<std::mutex> lock(link->mu);
  for (;;) {
    if (link->broken) {
      return {Code::kNotYetLink, "link to cluster " + std::to_string(link->remote_cluster_id) +
                                     " is broken (" + link->last_error + "); unlink and link again"};
    }
    if (!link->idle.empty()) {
      std::unique_ptr<Conn> conn = std::move(link->idle.back());
      link->idle.pop_back();
      // An idle connection that became readable was closed by the peer (it sends nothing unasked).
      pollfd pfd{conn->fd.get(), POLLIN, 0};
      if (::poll(&pfd, 1, 0) != 0) {
        link->open -= 1;
        continue;
      }
      out->assign(link, std::move(conn));
      return Status::Ok();
    }
    if (link->open < config_.max_connections_per_link) {
      link->open += 1;
      lock.unlock();
      std::unique_ptr<Conn> conn;
      uint64_t incarnation = 0;
      std::vector<std::pair<std::string, uint64_t>> pools;
      Status st = open_conn(link.get(), deadline, &conn, &incarnation, &pools);
      lock.lock();
      if (st.ok() && incarnation != link->peer_incarnation) {
        st = {Code::kNotYetLink, "cluster " + std::to_string(link->remote_cluster_id) +
                                     " restarted (new incarnation); unlink and link again"};
      }
      if (!st.ok()) {
        link->open -= 1;
        link->broken = true;
        link->last_error = st.message();
        if (st.code() != Code::kNotYetLink) {
          // the peer of a live link is lost while this transfer opens a connection to it: the same
          // outcome as losing it on an open connection (io_failure), so LLM_TIMEOUT, then NOT_YET_LINK
          st = {Code::kTimeout, "lost cluster " + std::to_string(link->remote_cluster_id) + " at " +
                                    link->address() + " mid-transfer: " + st.message()};
        }
        return st;
      }
      lock.unlock();
      out->assign(link, std::move(conn));
      return Status::Ok();
    }
    if (link->cv.wait_until(lock, deadline) == std::cv_status::timeout) {
      return {Code::kTimeout, "all " + std::to_string(link->open) + " connections to cluster " +
                                  std::to_string(link->remote_cluster_id) + " stayed busy until the timeout"};
    }
  }
}

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
      helpers.emplace_back([&, i] { results[i] = transfer_part(is_pull, link, parts[i].first, part_segs[i], deadline); });
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
  if (!st.ok() && (st.code() == Code::kTimeout || st.code() == Code::kFailed)) conn.mark_bad();
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
  IoResult io = send_frame(conn.fd.get(), is_pull ? wire::Type::kRead : wire::Type::kWrite, w.bytes(), outgoing,
                           deadline);
  if (!io.ok()) return io_failure(link, io, timeout_ms);
  wire::Header header;
  std::vector<uint8_t> payload;
  Status proto;
  io = recv_frame(conn.fd.get(), deadline, &header, &payload, &proto);
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
  io = recv_into(conn.fd.get(), local, total, deadline);
  if (!io.ok()) return io_failure(link, io, timeout_ms);
  if (checksum) {
    uint32_t sent = 0;
    io = recv_all(conn.fd.get(), &sent, sizeof(sent), deadline);
    if (!io.ok()) return io_failure(link, io, timeout_ms);
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
  IoResult io = send_frame(conn.fd.get(), wire::Type::kResolve, w.bytes(), {}, deadline);
  if (!io.ok()) return io_failure(link, io, timeout_ms);
  wire::Header header;
  std::vector<uint8_t> payload;
  Status proto;
  io = recv_frame(conn.fd.get(), deadline, &header, &payload, &proto);
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
    io = send_frame(conn.fd.get(), wire::Type::kRelease, release.bytes(), {}, deadline);
    if (!io.ok()) return io_failure(link, io, timeout_ms);
  }
  if (!copied) return Status::Ok();  // caller memory or an unmappable layout: TCP it is
  if (!intact) {
    return {Code::kFailed, "checksum mismatch after the same-host copy with cluster " +
                               std::to_string(link.remote_cluster_id) + ": the memory changed during the copy"};
  }
  return Status::Ok();
}

// -------------------------------------------------------------------------- communication domains

Status Engine::comm_link(const std::string& name, const CommPeer& self, const std::vector<CommPeer>& peers,
                         int64_t total_timeout_ms, uint64_t* comm_id) {
  CL_RETURN_IF_ERROR(check_owner());
  if (!initialized_) return {Code::kEngineFinalized, "instance is not initialized"};
  auto domain = std::make_unique<Domain>();
  domain->name = name;
  bool shares_main = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    shares_main = main_listener_ != nullptr && main_listener_->ip == self.ip && main_listener_->port == self.port;
    for (const auto& [id, d] : domains_) {
      if (d->name == name) return {Code::kParamInvalid, "communication domain '" + name + "' already exists"};
    }
  }
  if (!shares_main) CL_RETURN_IF_ERROR(start_listener(self.ip, self.port, &domain->listener));
  for (const CommPeer& p : peers) domain->peers.push_back(p.cluster_id);
  Domain* raw = domain.get();
  std::lock_guard<std::mutex> lock(mu_);
  domain->id = next_comm_id_++;
  *comm_id = domain->id;
  Deadline deadline = deadline_in_ms(total_timeout_ms);
  domain->thread = std::thread([this, raw, peers, deadline] { domain_loop(raw, peers, deadline); });
  domains_[domain->id] = std::move(domain);
  return Status::Ok();
}

void Engine::domain_loop(Domain* domain, std::vector<CommPeer> peers, Deadline deadline) {
  std::vector<bool> linked(peers.size(), false);
  size_t remaining = peers.size();
  while (remaining > 0 && !domain->stop && Clock::now() < deadline) {
    for (size_t i = 0; i < peers.size() && !domain->stop; ++i) {
      if (linked[i]) continue;
      Deadline attempt = std::min(deadline, deadline_in_ms(1000));
      int64_t ms = std::max<int64_t>(
          1, std::chrono::duration_cast<std::chrono::milliseconds>(attempt - Clock::now()).count());
      Status st = link(peers[i].cluster_id, peers[i].ip, peers[i].port, ms);
      if (st.ok() || st.code() == Code::kAlreadyLink) {
        std::lock_guard<std::mutex> lock(mu_);
        auto it = links_.find(peers[i].cluster_id);
        if (it != links_.end()) it->second->comm_id = domain->id;
        linked[i] = true;
        remaining -= 1;
      }
    }
    if (remaining > 0) {
      std::unique_lock<std::mutex> lock(domain->mu);
      domain->cv.wait_for(lock, std::chrono::milliseconds(100), [domain] { return domain->stop.load(); });
    }
  }
  domain->state = remaining == 0 ? 0 : 2;
}

Status Engine::comm_unlink(uint64_t comm_id) {
  CL_RETURN_IF_ERROR(check_owner());
  std::unique_ptr<Domain> domain;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = domains_.find(comm_id);
    if (it == domains_.end()) return {Code::kParamInvalid, "comm id " + std::to_string(comm_id) + " is unknown"};
    domain = std::move(it->second);
    domains_.erase(it);
  }
  domain->stop = true;
  domain->cv.notify_all();
  if (domain->thread.joinable()) domain->thread.join();
  for (uint64_t peer : domain->peers) {
    std::shared_ptr<Link> link;
    if (get_link(peer, &link).ok() && link->comm_id == comm_id) (void)unlink(peer, true);
  }
  if (domain->listener != nullptr) {
    std::unique_ptr<Listener> owned;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (auto it = listeners_.begin(); it != listeners_.end(); ++it) {
        if (it->get() == domain->listener) {
          owned = std::move(*it);
          listeners_.erase(it);
          break;
        }
      }
    }
    if (owned) {
      owned->fd.shutdown_both();
      // The accept thread waits on the listener and the wake fd; shutting the listener down wakes it.
      if (owned->thread.joinable()) owned->thread.join();
    }
  }
  return Status::Ok();
}

Status Engine::comm_status(uint64_t comm_id, int* state) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = domains_.find(comm_id);
  if (it == domains_.end()) return {Code::kParamInvalid, "comm id " + std::to_string(comm_id) + " is unknown"};
  *state = it->second->state;
  return Status::Ok();
}

}  // namespace cachelink

// Internals of Engine shared by its source files (engine*.cc), not part of the public interface (engine.h):
// the inner types (links, listeners, server connections, domains) and the frame helpers both ends use.
//
// Where each job lives:
//   engine.cc                  lifecycle: init, finalize, the key-lease timer, role and listen address
//   engine_server.cc           listeners, the accept loop (and every handshake in it), a thread per
//                              authenticated connection, frame dispatch
//   engine_handshake.cc        HELLO / AUTH, both ends (server: handle_hello, handle_auth; client: open_conn)
//   engine_link.cc             link, unlink, the link table and its connection pool (lease)
//   engine_transfer.cc         pull / push from the caller's side: striping, TCP and same-host paths
//   engine_transfer_serve.cc   the serving side of transfers: READ, WRITE, RESOLVE, RELEASE
//   engine_domain.cc           communication domains (comm_link, comm_unlink, comm_status)
//   engine_frames.cc           frame helpers below (send, receive, scatter, checksum, status payloads)
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "channel.h"
#include "engine.h"

namespace cachelink {

/// The link protocol (in HELLO). 2: authenticated, optionally encrypted frames; nothing but the version and the
/// handshake's own fields before AUTH. The frame header's wire version stays 1 so that either version reads the
/// other's HELLO and answers with a refusal naming both.
constexpr uint32_t kProtocol = 2;
/// Largest frame payload accepted before a peer is authenticated (HELLO, AUTH, and their answers).
constexpr uint64_t kMaxHandshakePayload = 4096;

uint64_t total_bytes(const std::vector<Segment>& segs);
/// Sends one frame: header, payload and `data` (bulk bytes), sealed by the channel when it has a key.
IoResult send_frame(int fd, channel::Channel& ch, wire::Type type, const std::vector<uint8_t>& payload,
                    const std::vector<Segment>& data, Deadline deadline);
/// Receives one frame's header and payload (at most `max_payload` bytes, grown as they arrive); `st` carries a
/// protocol error (bad header), the IoResult a transport error or kTampered.
/// `refusal_in_clear`: an AUTH_RESULT frame (a refusal, sent in clear) is read without a tag (handshake only).
IoResult recv_frame(int fd, channel::Channel& ch, uint64_t max_payload, Deadline deadline, wire::Header* header,
                    std::vector<uint8_t>* payload, Status* st, bool refusal_in_clear = false);
/// Receives the `total` bulk bytes that follow a frame into consecutive segments; with a key, record by record,
/// each checked before it is copied to its place.
IoResult recv_bulk(int fd, channel::Channel& ch, const std::vector<Segment>& segs, uint64_t total, Deadline deadline);
/// Receives and drops `total` bulk bytes (a refused write), still checking every record.
IoResult discard_bulk(int fd, channel::Channel& ch, uint64_t total, Deadline deadline);
/// The first `total` bytes of `segs`, then the 4-byte checksum trailer.
std::vector<Segment> with_trailer(const std::vector<Segment>& segs, uint64_t total, uint32_t* trailer);
uint32_t crc_of(const std::vector<Segment>& segs, uint64_t total);
std::vector<uint8_t> status_payload(const Status& st);
Status read_status(wire::Reader& r);

// ----------------------------------------------------------------------------------- inner types

struct Engine::Conn {
  Fd fd;
  channel::Channel ch;
  Clock::time_point last_used = Clock::now();  // a connection idle past half the idle timeout is not reused
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
  channel::Channel ch;
  std::string source;  // the peer's address (per-source connection cap)
  std::thread thread;
  std::atomic<bool> done{false};
  uint64_t peer_cluster_id = kInvalidId;
  bool greeted = false;                           // HELLO accepted
  std::atomic<bool> authenticated{false};         // AUTH done: link secret proven (or none configured)
  std::string transcript;                         // the handshake so far (keys are derived from its hash)
  std::vector<uint8_t> inbox;                     // handshake bytes received, not yet a whole frame
  Deadline handshake_deadline = Deadline::max();  // HELLO and AUTH must be done by then
  std::map<uint64_t, Pin> pins;                   // same-host transfers in flight, released by RELEASE or on close
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
      conn_->last_used = Clock::now();
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

}  // namespace cachelink

// One CacheLink instance: its pools and caches, its listeners, its links, and the transfers over them.
//
// Threads: an instance starts none before init(). It then runs one accept thread per listener, which also
// runs the handshake of every connection not yet authenticated (no thread of their own), and one thread per
// authenticated connection, each blocked in poll() while idle (no busy polling). Client-side
// transfers run on the caller's thread with the GIL released. finalize() wakes and joins every thread.
//
// Implementation: engine*.cc, one source file per job; engine_internal.h maps them and holds the inner types.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "cache_store.h"
#include "net.h"
#include "status.h"
#include "wire.h"

namespace cachelink {

struct EngineConfig {
  uint64_t cluster_id = 0;
  std::string role = "Prompt";
  std::string listen_ip;  // empty: no listener (client only)
  uint16_t listen_port = 0;
  PoolConfig device_pool;
  PoolConfig host_pool;
  std::string pool_dir = "/dev/shm";
  std::string pool_name;  // file name stem; empty: generated from cluster id and pid
  bool persistent_pool = false;
  bool adopt_pool = false;
  std::string host_id;  // empty: the machine's boot id
  bool force_tcp = false;
  bool checksum = false;
  int64_t sync_timeout_ms = 1000;
  int64_t link_retry_count = 1;
  int64_t max_connections_per_link = 8;
  int64_t tcp_stripes = 2;       // connections one large TCP transfer is split across
  int64_t copy_threads = 2;      // threads of one large same-host copy
  std::string link_secret;       // non-empty: peers must prove it, and every frame after AUTH is authenticated
  bool link_encryption = false;  // with a secret: encrypt frames and bytes (AES-256-GCM), not only authenticate
  int64_t max_server_connections = 2048;     // accepted connections open at once, all peers together
  int64_t max_connections_per_source = 256;  // accepted connections open at once from one source address
  int64_t handshake_timeout_ms = 10000;      // an accepted connection must finish HELLO and AUTH within this
  int64_t idle_timeout_ms = 600000;          // an authenticated connection idle this long is closed (0: never)
  int64_t key_lease_ms = 0;                  // > 0: a CacheKey not pulled within this time is released
};

struct LinkInfo {
  uint64_t remote_cluster_id = 0;
  std::string address;
  std::string state;      // "linked" | "broken" | "preparing"
  std::string data_path;  // "shm" | "tcp"
  uint64_t peer_incarnation = 0;
  uint64_t comm_id = 0;  // 0: link_clusters style
  std::string last_error;
};

struct CommPeer {
  uint64_t cluster_id = 0;
  std::string ip;
  uint16_t port = 0;
};

/// Per-process counters of what moved (read by the agent's metrics).
struct Counters {
  std::atomic<uint64_t> bytes_pulled{0};
  std::atomic<uint64_t> bytes_pushed{0};
  std::atomic<uint64_t> bytes_served{0};
  std::atomic<uint64_t> transfers{0};
  std::atomic<uint64_t> transfer_errors{0};
  std::atomic<uint64_t> leases_expired{0};
  std::atomic<uint64_t> auth_failures{0};
  std::atomic<uint64_t> tampered_frames{0};      // authenticated frames that failed to open (both ends)
  std::atomic<uint64_t> connections_refused{0};  // accepted connections closed at once by the connection caps
};

class Engine {
 public:
  explicit Engine(EngineConfig config);
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;
  ~Engine();

  Status init();
  /// Stops every thread and closes every link. `release_pool`: also delete the pool files (finalize());
  /// false keeps a persistent pool for adoption (process exit without finalize).
  void finalize(bool release_pool);
  bool initialized() const { return initialized_; }

  CacheStore& store() { return store_; }
  const EngineConfig& config() const { return config_; }
  uint64_t incarnation() const { return incarnation_; }
  const std::string& host_id() const { return host_id_; }
  std::string listen_address() const;
  /// Moves the main listener to ip:port (empty ip: stop listening); links this side made stay up.
  Status relisten(const std::string& ip, uint16_t port);
  /// The role label sent in handshakes (switch_role).
  void set_role(const std::string& role);
  std::string current_role() const;
  Counters& counters() { return counters_; }
  /// Ok when called from the process that ran init(); a forked child gets a clear error.
  Status check_owner() const;

  Status link(uint64_t remote_cluster_id, const std::string& ip, uint16_t port, int64_t timeout_ms);
  Status unlink(uint64_t remote_cluster_id, bool force);
  std::vector<LinkInfo> links() const;
  std::vector<uint64_t> clients() const;

  /// Starts a communication domain: listens on `self` and links to every peer in the background.
  Status comm_link(const std::string& name, const CommPeer& self, const std::vector<CommPeer>& peers,
                   int64_t total_timeout_ms, uint64_t* comm_id);
  Status comm_unlink(uint64_t comm_id);
  /// 0 = OK, 1 = PREPARING, 2 = FAILED (RegisterMemStatus values).
  Status comm_status(uint64_t comm_id, int* state) const;

  /// Binds a CacheKey to a slot, with the instance's key lease (or `lease_ms` when >= 0).
  Status bind_slot_key(int64_t cache_id, uint64_t slot, const SlotKey& key, int64_t lease_ms = -1);

  /// Pulls the peer's extent named by `remote` into the local cache's extent.
  Status pull(uint64_t remote_cluster_id, const wire::TransferRequest& remote, int64_t local_cache,
              const wire::Extent& local, int64_t timeout_ms);
  /// Pushes the local cache's extent into the peer's extent named by `remote`.
  Status push(uint64_t remote_cluster_id, const wire::TransferRequest& remote, int64_t local_cache,
              const wire::Extent& local, int64_t timeout_ms);

 private:
  // Inner types, defined in engine_internal.h (which also maps each job to its source file).
  struct Conn;
  struct Link;
  struct Listener;
  struct Domain;
  struct ServerConn;
  class ConnLease;

  // engine.cc: lifecycle.
  void lease_loop();

  // engine_server.cc: listeners, accepted connections and the dispatch of their frames.
  Status start_listener(const std::string& ip, uint16_t port, Listener** out);
  void accept_loop(Listener* listener);
  /// Accepts one connection into `pending` (or closes it at once, over a cap); false when the listener is gone.
  bool accept_one(Listener* listener, std::vector<std::unique_ptr<ServerConn>>* pending);
  /// Reads what a pending connection sent and runs any whole handshake frame; false to drop the connection.
  bool advance_handshake(ServerConn* conn);
  void serve(ServerConn* conn);
  Status serve_one(ServerConn* conn, const wire::Header& header, const std::vector<uint8_t>& payload);
  void reap_server_conns(bool all);

  // engine_handshake.cc: HELLO and AUTH, the server's handlers and the client's connection opener.
  Status handle_hello(ServerConn* conn, const std::vector<uint8_t>& payload);
  Status handle_auth(ServerConn* conn, const std::vector<uint8_t>& payload);
  Status refuse_auth(ServerConn* conn, const std::string& why);
  Status open_conn(Link* link, Deadline deadline, std::unique_ptr<Conn>* out, uint64_t* incarnation,
                   std::vector<std::pair<std::string, uint64_t>>* pools);

  // engine_link.cc: the link table and each link's connection pool.
  Status get_link(uint64_t remote_cluster_id, std::shared_ptr<Link>* out) const;
  Status lease(const std::shared_ptr<Link>& link, Deadline deadline, ConnLease* out);

  // engine_transfer.cc: pull and push from the caller's side.
  Status transfer(bool is_pull, uint64_t remote_cluster_id, const wire::TransferRequest& remote, int64_t local_cache,
                  const wire::Extent& local, int64_t timeout_ms);
  Status transfer_part(bool is_pull, const std::shared_ptr<Link>& link, wire::TransferRequest req,
                       const std::vector<Segment>& local, Deadline deadline);
  Status transfer_tcp(bool is_pull, Link& link, Conn& conn, const wire::TransferRequest& req,
                      const std::vector<Segment>& local, Deadline deadline);
  Status transfer_shm(bool is_pull, Link& link, Conn& conn, const wire::TransferRequest& req,
                      const std::vector<Segment>& local, Deadline deadline, bool* fallback);
  Status io_failure(Link& link, const IoResult& io, int64_t timeout_ms);

  // engine_transfer_serve.cc: the serving side of transfers.
  Status handle_read(ServerConn* conn, const std::vector<uint8_t>& payload);
  Status handle_write(ServerConn* conn, const std::vector<uint8_t>& payload);
  Status handle_resolve(ServerConn* conn, const std::vector<uint8_t>& payload);
  Status handle_release(ServerConn* conn, const std::vector<uint8_t>& payload);

  // engine_domain.cc: communication domains.
  void domain_loop(Domain* domain, std::vector<CommPeer> peers, Deadline deadline);

  EngineConfig config_;
  std::string host_id_;
  uint64_t incarnation_ = 0;
  int owner_pid_ = 0;
  std::atomic<bool> initialized_{false};
  std::atomic<bool> stopping_{false};
  Fd wake_;  // eventfd: wakes every idle server thread at finalize

  CacheStore store_;
  Counters counters_;

  mutable std::mutex mu_;  // guards the containers below (never held across I/O)
  std::list<std::unique_ptr<Listener>> listeners_;
  Listener* main_listener_ = nullptr;
  std::list<std::unique_ptr<ServerConn>> server_conns_;
  std::map<uint64_t, std::shared_ptr<Link>> links_;
  std::map<uint64_t, std::unique_ptr<Domain>> domains_;
  uint64_t next_comm_id_ = 1;

  std::thread lease_thread_;
  std::mutex lease_mu_;
  std::condition_variable lease_cv_;
};

}  // namespace cachelink
